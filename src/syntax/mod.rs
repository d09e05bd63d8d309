//! The surface syntax: the AST and the parser (the only module that names pest).

pub mod ast;
mod parse;

pub use parse::{parse_source, MAX_NESTING, MAX_OPERATORS};
