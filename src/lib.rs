//! Kiln: a declarative model-definition compiler.
//!
//! A model is written in Kiln's language (docs/LANGUAGE.md); Kiln checks every shape,
//! lowers it to an IR, differentiates it and compiles the forward pass and the whole
//! training step to native code with Cranelift. Embedded in Rust:
//!
//! ```
//! use ndarray::{array, ArrayD};
//!
//! let model = kiln::compile_str(
//!     "model xor {
//!        input  x: [N, 2]
//!        target y: [N, 1]
//!        h   = x |> dense(8) |> tanh
//!        out = h |> dense(1)
//!        output out
//!        loss mse(out, y)
//!      }
//!      train xor { optimizer sgd(lr: 0.1, momentum: 0.9) }",
//! )?;
//! let mut session = model.session(7)?;
//! let x: ArrayD<f32> = array![[0., 0.], [0., 1.], [1., 0.], [1., 1.]].into_dyn();
//! let y: ArrayD<f32> = array![[0.], [1.], [1.], [0.]].into_dyn();
//! let first = session.train_step(&[("x", &x)], &[("y", &y)])?;
//! for _ in 0..300 {
//!     session.train_step(&[("x", &x)], &[("y", &y)])?;
//! }
//! let last = session.train_step(&[("x", &x)], &[("y", &y)])?;
//! assert!(last < first / 10.0);
//! let out = session.predict(&[("x", &x)])?;
//! assert_eq!(out.shape(), &[4, 1]);
//! assert!(out[[1, 0]] > 0.5 && out[[0, 0]] < 0.5);
//!
//! // A model with a shape error is a `Diagnostics` error rendered like `kiln check`.
//! let err = kiln::compile_str("model m {\n  input x: [N, 2]\n  y = x + dense(x, 3)\n  output y\n}\n");
//! let text = err.err().expect("a shape error").to_string();
//! assert!(text.contains("error[E0301]: cannot add tensors of shapes [N, 2] and [N, 3]"));
//! assert!(text.contains("<string>:3:"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]
#![deny(unsafe_code)]

mod api;
pub use api::{compile_file, compile_str, Diagnostics, Error, Model, Named, Pretrained, Session};

pub mod autodiff;
pub mod check;
pub mod diag;
pub mod exec;
pub mod export;
pub mod interp;
pub mod ir;
pub mod jit;
pub mod lower;
pub mod ops;
pub mod repl;
pub mod runtime;
pub mod span;
pub mod summary;
pub mod syntax;
