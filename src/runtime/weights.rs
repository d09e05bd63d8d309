//! A program's weights in checkpoints: loading them (refusing another model's), and
//! the standardization stored beside them.

use super::checkpoint::{self, Checkpoint, CheckpointError};
use super::data::{Standardizer, TargetScale};
use super::error::RuntimeError;
use super::identity;
use super::program::Program;
use crate::exec::State;
use ndarray::ArrayD;
use std::path::Path;

/// The standardization stored in a checkpoint, if any: the inputs' statistics, and a
/// regression model's target's when the checkpoint holds them.
pub fn get_standardizer(c: &Checkpoint, p: &Program) -> Option<Standardizer> {
    let stat = |name: &str, what: &str| -> Option<Vec<f32>> {
        let key = format!("standardize.{name}.{what}");
        Some(c.tensors.get(&key)?.iter().copied().collect())
    };
    let g = &p.forward;
    let mut mean = Vec::new();
    let mut std = Vec::new();
    for t in &g.inputs {
        mean.push(stat(&t.name, "mean")?);
        std.push(stat(&t.name, "std")?);
    }
    let target = p.regressor.as_ref().and_then(|r| {
        let name = &g.targets.get(r.target)?.name;
        Some(TargetScale {
            target: r.target,
            mean: stat(name, "mean")?,
            std: stat(name, "std")?,
        })
    });
    Some(Standardizer { mean, std, target })
}

/// Reads a safetensors file: one that cannot be read is an I/O error (exit 2), one Kiln
/// cannot load the input's fault (exit 1).
fn read(path: &Path) -> Result<Checkpoint, RuntimeError> {
    Checkpoint::load(path).map_err(|e| match e {
        CheckpointError::Io { .. } => RuntimeError::Io(e.to_string()),
        CheckpointError::Format { .. } => RuntimeError::Checkpoint(e.to_string()),
    })
}

/// Loads a checkpoint and refuses one written for another model (the input's fault).
pub fn load_for(p: &Program, path: &Path) -> Result<Checkpoint, RuntimeError> {
    let c = read(path)?;
    if identity::names_another_model(&c.meta, &p.hash) {
        let other = c
            .meta
            .get("model")
            .map_or(String::new(), |m| format!(" (model `{m}`)"));
        return Err(RuntimeError::Checkpoint(format!(
            "`{}` is a checkpoint of a different model{other}: its layers, shapes or names differ from `{}`",
            path.display(),
            p.model.name
        )));
    }
    Ok(c)
}

/// The parameters of `p` from a checkpoint (keys prefixed by `prefix`), or a message
/// naming every missing, extra and mis-shaped tensor.
pub fn params_from(
    p: &Program,
    c: &Checkpoint,
    path: &Path,
    prefix: &str,
) -> Result<Vec<ArrayD<f32>>, RuntimeError> {
    let expected: Vec<(String, Vec<usize>)> = p
        .forward
        .params
        .iter()
        .map(|t| {
            (
                format!("{prefix}{}", t.tensor.name),
                crate::interp::dims(&t.tensor.shape, 1),
            )
        })
        .collect();
    // A Kiln checkpoint also holds optimizer state and more; a plain file only parameters.
    let kiln = c.meta.contains_key(identity::DIGEST_KEY);
    let view = if kiln || !prefix.is_empty() {
        let mut only = Checkpoint::new();
        for (k, v) in &c.tensors {
            if expected.iter().any(|(n, _)| n == k) {
                only.tensors.insert(k.clone(), v.clone());
            }
        }
        for (n, _) in &expected {
            if !c.tensors.contains_key(n) {
                only.tensors.remove(n);
            }
        }
        only
    } else {
        c.clone()
    };
    let problems = checkpoint::compare(&expected, &view);
    if !problems.is_empty() {
        return Err(RuntimeError::Checkpoint(format!(
            "`{}` does not fit model `{}`:\n  {}",
            path.display(),
            p.model.name,
            problems.join("\n  ")
        )));
    }
    Ok(expected
        .iter()
        .map(|(n, _)| view.tensors[n].clone())
        .collect())
}

/// What starting from pretrained weights did ([`pretrained`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Pretrained {
    /// The parameters read from the file, in the model's order.
    pub loaded: Vec<String>,
    /// How many values they hold.
    pub values: u64,
    /// The model's parameters the file does not hold: initialized as a fresh run's.
    pub fresh: Vec<String>,
    /// The file's tensors that name none of the model's parameters (a renamed layer?),
    /// leaving out a Kiln checkpoint's optimizer state, standardization and best weights.
    pub unused: Vec<String>,
}

/// Replaces the parameters of `p` in `params` by the tensors of the safetensors file at
/// `path` of the same names (a Kiln checkpoint of any model, or a file written elsewhere
/// under Kiln's names): a tensor of another shape is an error naming it and both
/// shapes, and so is a file that holds none of the parameters.
pub fn pretrained(
    p: &Program,
    params: &mut [ArrayD<f32>],
    path: &Path,
) -> Result<Pretrained, RuntimeError> {
    let c = read(path)?;
    let mut out = Pretrained::default();
    let mut wrong = Vec::new();
    for (t, slot) in p.forward.params.iter().zip(params.iter_mut()) {
        let name = &t.tensor.name;
        match c.tensors.get(name) {
            Some(v) if v.shape() == slot.shape() => {
                *slot = v.clone();
                out.values += v.len() as u64;
                out.loaded.push(name.clone());
            }
            Some(v) => wrong.push(format!(
                "`{name}`: {:?} in the file, {:?} in the model",
                v.shape(),
                slot.shape()
            )),
            None => out.fresh.push(name.clone()),
        }
    }
    if !wrong.is_empty() {
        return Err(RuntimeError::Checkpoint(format!(
            "`{}` has tensors of other shapes than model `{}`'s parameters:\n  {}",
            path.display(),
            p.model.name,
            wrong.join("\n  ")
        )));
    }
    if out.loaded.is_empty() {
        return Err(RuntimeError::Checkpoint(format!(
            "`{}` holds none of model `{}`'s parameters (its first: `{}`)",
            path.display(),
            p.model.name,
            out.fresh.first().map_or("", String::as_str)
        )));
    }
    let kiln = c.meta.contains_key(identity::DIGEST_KEY);
    let bookkeeping = |k: &str| {
        kiln && ["optimizer.", "standardize.", "best."]
            .iter()
            .any(|prefix| k.starts_with(prefix))
    };
    out.unused = c
        .tensors
        .keys()
        .filter(|k| !bookkeeping(k) && !out.loaded.contains(k))
        .cloned()
        .collect();
    Ok(out)
}

/// Parameters (and standardization) for evaluation or prediction from `--weights`.
pub fn load_weights(
    p: &Program,
    path: &Path,
) -> Result<(State, Option<Standardizer>), RuntimeError> {
    let c = load_for(p, path)?;
    let params = params_from(p, &c, path, "")?;
    Ok((
        State {
            params,
            states: vec![],
        },
        get_standardizer(&c, p),
    ))
}
