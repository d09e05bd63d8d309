//! Running a model without training it: evaluation (loss and metrics), prediction,
//! and the loss, gradients and gradient health of one batch.

use super::checkpoint::Checkpoint;
use super::data::{Dataset, Standardizer};
use super::error::RuntimeError;
use super::health::{self, Health};
use super::metrics::{self, Classification, Regression};
use super::program::{Classifier, Program};
use super::schedule::hyper;
use super::verdict::number;
use crate::autodiff::training_graph;
use crate::check::train::{Metric, TrainConfig};
use crate::exec::{Backend, RunError, State};
use crate::ir::{Graph, Hyper, NodeId};
use ndarray::{ArrayD, Axis};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Loss and metrics of a model on a data set.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Evaluation {
    /// Rows evaluated.
    pub rows: usize,
    /// Mean loss (when the data has targets and the model a loss).
    pub loss: Option<f64>,
    /// Classification metrics (classifiers only).
    pub classification: Option<Classification>,
    /// Regression metrics (regression models only).
    pub regression: Option<Regression>,
}

impl Evaluation {
    /// One line: `what: R rows  loss L`, the accuracy of a classifier, and a regression
    /// model's metrics among `metrics` (all of them when it names none).
    pub fn line(&self, what: &str, metrics: &[Metric]) -> String {
        let mut line = format!("{what}: {} rows", self.rows);
        if let Some(l) = self.loss {
            line += &format!("  loss {}", number(l));
        }
        if let Some(c) = &self.classification {
            line += &format!("  accuracy {:.2}%", c.accuracy * 100.0);
        }
        if let Some(r) = &self.regression {
            for (m, name, v) in [
                (Metric::Mae, "mae", number(r.mae)),
                (Metric::Rmse, "rmse", number(r.rmse)),
                (Metric::R2, "r2", format!("{:.4}", r.r2)),
            ] {
                if metrics.is_empty() || metrics.contains(&m) {
                    line += &format!("  {name} {v}");
                }
            }
        }
        line
    }

    /// What `kiln eval` prints for the data at `path`: rows, the loss, then a classifier's
    /// metrics or a regression model's, one per line.
    pub fn report(&self, path: &Path) -> String {
        let mut text = format!("{}: {} rows\n", path.display(), self.rows);
        if let Some(l) = self.loss {
            text += &format!("loss: {l:.6}\n");
        }
        if let Some(c) = &self.classification {
            text += &c.render();
        }
        if let Some(r) = &self.regression {
            text += &format!("mae: {:.6}\nrmse: {:.6}\nr2: {:.4}\n", r.mae, r.rmse, r.r2);
        }
        text
    }
}

/// Evaluates `state` on `data` (standardized by `st`, when given) in batches of `batch`
/// rows. The loss is on the data's scale; regression metrics are on the target's
/// original scale: predictions and targets are un-standardized first.
pub fn evaluate(
    p: &Program,
    backend: &mut dyn Backend,
    state: &State,
    st: Option<&Standardizer>,
    d: &Dataset,
    batch: usize,
) -> Result<Evaluation, RuntimeError> {
    let mut roots = Vec::new();
    let loss = p.forward.loss.filter(|_| !d.targets.is_empty());
    roots.extend(loss);
    let cls = p.classifier.as_ref().filter(|_| !d.targets.is_empty());
    roots.extend(cls.map(|c| c.scores));
    let reg = p.regressor.as_ref().filter(|_| !d.targets.is_empty());
    roots.extend(reg.map(|r| r.predictions));
    let mut total = 0.0;
    let (mut predicted, mut truth) = (Vec::new(), Vec::new());
    let (mut values, mut targets) = (Vec::new(), Vec::new());
    let idx: Vec<usize> = (0..d.rows).collect();
    for chunk in idx.chunks(batch.max(1)) {
        let b = d.select(chunk);
        let vals = backend.forward(&p.forward, state, &b.inputs, &b.targets, &roots)?;
        let mut k = 0;
        if loss.is_some() {
            total +=
                f64::from(vals[0].iter().next().copied().unwrap_or(f32::NAN)) * chunk.len() as f64;
            k = 1;
        }
        if let Some(c) = cls {
            predicted.extend(classes_of(&vals[k], c));
            truth.extend(truth_of(&b.targets[c.target], c));
            k += 1;
        }
        if let Some(r) = reg {
            let mut predicted = vals[k].clone();
            let mut target = b.targets[r.target].clone();
            if let Some(s) = st {
                s.unstandardize_target(&mut predicted);
                s.unstandardize_target(&mut target);
            }
            values.extend(predicted.iter().copied());
            targets.extend(target.iter().copied());
        }
    }
    let outputs = targets.len() / d.rows.max(1);
    Ok(Evaluation {
        rows: d.rows,
        loss: loss.map(|_| total / d.rows.max(1) as f64),
        classification: cls.map(|c| metrics::classify(&predicted, &truth, c.classes)),
        regression: reg.map(|_| metrics::regress(&values, &targets, outputs)),
    })
}

/// Predicted classes from a batch of scores.
pub fn classes_of(scores: &ArrayD<f32>, c: &Classifier) -> Vec<usize> {
    let k = if c.binary { 1 } else { c.classes };
    let rows = scores.len() / k.max(1);
    match scores.to_shape((rows, k)) {
        Ok(view) => metrics::predicted_classes(&view.view()),
        Err(_) => vec![0; rows],
    }
}

fn truth_of(target: &ArrayD<f32>, c: &Classifier) -> Vec<usize> {
    target
        .iter()
        .map(|&v| {
            if c.binary {
                usize::from(v > 0.5)
            } else {
                v.max(0.0) as usize
            }
        })
        .collect()
}

/// Outputs in output order, and the predicted classes of a classifier.
pub type Predictions = (Vec<ArrayD<f32>>, Option<Vec<usize>>);

/// The model's outputs on `d` (concatenated over batches, in output order) and, for
/// classifiers, the predicted class of every row. With `st` standardizing a regression
/// model's target, the output the loss compares with it is un-standardized: it comes
/// out in the target's units.
pub fn predict(
    p: &Program,
    backend: &mut dyn Backend,
    state: &State,
    st: Option<&Standardizer>,
    d: &Dataset,
    batch: usize,
) -> Result<Predictions, RuntimeError> {
    let mut roots: Vec<NodeId> = p.forward.outputs.iter().map(|(_, n)| *n).collect();
    let outputs = roots.len();
    roots.extend(p.classifier.as_ref().map(|c| c.scores));
    let mut parts: Vec<Vec<ArrayD<f32>>> = vec![Vec::new(); outputs];
    let mut classes = p.classifier.as_ref().map(|_| Vec::new());
    let idx: Vec<usize> = (0..d.rows).collect();
    for chunk in idx.chunks(batch.max(1)) {
        let b = d.select(chunk);
        let vals = backend.forward(&p.forward, state, &b.inputs, &[], &roots)?;
        for (k, v) in vals.into_iter().enumerate() {
            match (k < outputs, &mut classes, &p.classifier) {
                (true, _, _) => parts[k].push(v),
                (false, Some(cs), Some(c)) => cs.extend(classes_of(&v, c)),
                _ => {}
            }
        }
    }
    let outs = parts
        .into_iter()
        .map(|vs| {
            let views: Vec<_> = vs.iter().map(|v| v.view()).collect();
            ndarray::concatenate(Axis(0), &views)
                .map_err(|e| RuntimeError::Run(RunError::bug(e.to_string())))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((unstandardize_outputs(p, st, outs), classes))
}

/// Un-standardizes, in `outs` (one array per output of `p`, in output order), the
/// output that a regression model's loss compares with its standardized target.
pub fn unstandardize_outputs(
    p: &Program,
    st: Option<&Standardizer>,
    mut outs: Vec<ArrayD<f32>>,
) -> Vec<ArrayD<f32>> {
    if let (Some(s), Some(r)) = (st, &p.regressor) {
        for ((_, node), out) in p.forward.outputs.iter().zip(&mut outs) {
            if *node == r.predictions {
                s.unstandardize_target(out);
            }
        }
    }
    outs
}

/// Gradients of one batch: the loss, and per trainable parameter its name, gradient and norm.
pub type Gradients = (f64, Vec<(String, ArrayD<f32>, f64)>);

/// The training graph (without clipping), the first `batch` rows of `d`, and the
/// hyperparameters of a first step: what `gradients` and `gradient_health` look at.
fn first_batch(
    p: &Program,
    cfg: &TrainConfig,
    d: &Dataset,
    batch: usize,
) -> (Graph, Dataset, HashMap<Hyper, f64>) {
    let g = training_graph(&p.train_forward(cfg.seed), &cfg.optimizer, None);
    let rows: Vec<usize> = (0..d.rows.min(batch.max(1))).collect();
    let h = hyper(&cfg.optimizer, None, cfg.optimizer.lr(), 1);
    (g, d.select(&rows), h)
}

/// The gradient health of `state` on the first `batch` rows of `d`.
pub fn gradient_health(
    p: &Program,
    cfg: &TrainConfig,
    backend: &mut dyn Backend,
    state: &State,
    d: &Dataset,
    batch: usize,
) -> Result<Health, RuntimeError> {
    let (g, b, h) = first_batch(p, cfg, d, batch);
    Ok(health::measure(
        p, &g, backend, state, None, &b.inputs, &b.targets, &h,
    )?)
}

/// The loss and gradients of the first `batch` rows of `d`.
pub fn gradients(
    p: &Program,
    cfg: &TrainConfig,
    backend: &mut dyn Backend,
    state: &State,
    d: &Dataset,
    batch: usize,
) -> Result<Gradients, RuntimeError> {
    let (g, b, h) = first_batch(p, cfg, d, batch);
    let (loss, grads) = backend.gradients(&g, state, &b.inputs, &b.targets, &h)?;
    Ok((
        loss,
        grads
            .into_iter()
            .map(|(i, a)| {
                let norm = a.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
                (p.forward.params[i].tensor.name.clone(), a, norm)
            })
            .collect(),
    ))
}

/// Writes named arrays as a safetensors file (gradients).
pub fn save_tensors(
    path: &Path,
    tensors: BTreeMap<String, ArrayD<f32>>,
) -> Result<(), RuntimeError> {
    let mut c = Checkpoint::new();
    c.tensors = tensors;
    c.save(path)
        .map_err(|e| RuntimeError::Io(format!("cannot write `{}`: {e}", path.display())))
}
