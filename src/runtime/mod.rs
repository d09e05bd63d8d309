//! The training runtime: data, randomness, parameters, optimizers, the training loop,
//! metrics, checkpoints and NaN tracing. Execution itself is a backend's job.

pub mod checkpoint;
pub mod data;
pub mod exec;
pub mod health;
pub mod identity;
pub mod init;
pub mod metrics;
pub mod plot;
pub mod rng;
pub mod sanity;
pub mod schedule;
pub mod trace;
pub mod train;
