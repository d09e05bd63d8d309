//! The training runtime: data, parameters, optimizers, the training loop, metrics,
//! checkpoints and NaN tracing. Execution itself is a backend's job ([`crate::exec`]).

pub mod checkpoint;
pub mod cluster;
pub mod data;
pub mod error;
pub mod eval;
pub mod health;
pub mod identity;
pub mod init;
pub mod metrics;
pub mod plot;
pub mod program;
pub mod sanity;
pub mod schedule;
pub mod shard;
pub mod trace;
pub mod train;
pub mod verdict;
pub mod weights;
