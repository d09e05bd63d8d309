//! `.safetensors` data files: tensors named like the inputs and targets.

use std::path::Path;

use super::{assemble, DataError, DataSpec, Dataset, E_FORMAT};

/// A `.safetensors` data file: tensors named like the inputs and targets.
pub(super) fn load_safetensors(
    path: &Path,
    spec: &DataSpec,
    with_targets: bool,
) -> Result<Dataset, DataError> {
    let file = super::super::checkpoint::Checkpoint::load(path).map_err(|e| {
        DataError::new(
            E_FORMAT,
            path,
            format!("not a valid .safetensors file: {e}"),
        )
    })?;
    let keys: Vec<String> = file.tensors.keys().cloned().collect();
    assemble(path, spec, with_targets, &keys, |name, _| {
        let t = &file.tensors[name];
        Ok((t.shape().to_vec(), t.iter().copied().collect()))
    })
}
