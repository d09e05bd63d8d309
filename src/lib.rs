//! Kiln: a declarative model-definition compiler.
#![deny(missing_docs)]

pub mod check;
pub mod diag;
pub mod span;
pub mod summary;
pub mod syntax;
pub mod runtime;
