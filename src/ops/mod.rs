//! The registry of builtins: every function, activation, layer, loss and regularizer of
//! the model language is declared here once. This module is a leaf: the stages above
//! (check, lower, autodiff, the back ends) read it, and each matches exhaustively over its
//! enums, so a new entry fails to compile until every stage handles it.

pub mod catalog;
pub mod elementwise;

pub use elementwise::{Elem, Func};
