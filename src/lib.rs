//! Kiln: a declarative model-definition compiler.
#![deny(missing_docs)]

pub mod autodiff;
pub mod check;
pub mod diag;
pub mod interp;
pub mod ir;
pub mod jit;
pub mod lower;
pub mod runtime;
pub mod span;
pub mod summary;
pub mod syntax;
