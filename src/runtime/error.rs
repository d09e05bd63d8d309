//! The runtime's error type.

use super::data;
use crate::diag::Diagnostic;
use crate::exec::RunError;

/// Runtime failures: bad data, a checkpoint that does not fit, a diverging run.
#[derive(Debug)]
pub enum RuntimeError {
    /// A data file is wrong.
    Data(data::DataError),
    /// A checkpoint is unreadable or belongs to another model.
    Checkpoint(String),
    /// Writing an output failed.
    Io(String),
    /// The loss became NaN or infinite: the diagnostic names the operation.
    Diverged(Box<Diagnostic>),
    /// The backend refused the values it was given, or Kiln has a bug.
    Run(RunError),
}

impl std::fmt::Display for RuntimeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RuntimeError::Data(e) => write!(f, "{e}"),
            RuntimeError::Checkpoint(m) | RuntimeError::Io(m) => write!(f, "{m}"),
            RuntimeError::Diverged(d) => write!(f, "{}", d.message),
            RuntimeError::Run(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for RuntimeError {}

impl From<RunError> for RuntimeError {
    fn from(e: RunError) -> Self {
        RuntimeError::Run(e)
    }
}

impl From<data::DataError> for RuntimeError {
    fn from(e: data::DataError) -> Self {
        RuntimeError::Data(e)
    }
}
