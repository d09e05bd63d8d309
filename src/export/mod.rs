//! Export: a checked model with its weights, written for other runtimes. [`onnx`] writes
//! the evaluation graph as an ONNX model.

pub mod native;
pub mod onnx;
