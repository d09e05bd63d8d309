//! The training runtime: data, randomness, parameters, optimizers, the training loop,
//! metrics and checkpoints. Execution itself is a backend's job (the interpreter today).

pub mod checkpoint;
pub mod data;
pub mod exec;
pub mod init;
pub mod metrics;
pub mod rng;
pub mod schedule;
pub mod train;
