//! A model ready to run: the checked model, its forward graph, its digest and how a
//! classifier's predictions are read; and what the data loader reads for it.

use super::data::{DataSpec, PortSpec};
use super::identity;
use crate::autodiff::training_graph;
use crate::check::graph::CheckedModel;
use crate::check::train::TrainConfig;
use crate::ir::{DType, Graph, LossKind, NodeId, Op, Slot};
use crate::lower::{lower_model, Mode};

/// How a classifier's predictions are read.
#[derive(Clone, Debug, PartialEq)]
pub struct Classifier {
    /// The forward-graph node holding scores `[rows.., K]` (or one logit for binary).
    pub scores: NodeId,
    /// The target holding the true classes.
    pub target: usize,
    /// Number of classes.
    pub classes: usize,
    /// One logit per row (bce): class 1 when it is positive.
    pub binary: bool,
}

/// How a regression model's predictions are read: a loss that compares predictions with
/// float targets (`mse`, `mae`, `huber`).
#[derive(Clone, Debug, PartialEq)]
pub struct Regressor {
    /// The forward-graph node holding the predictions, shaped like the target.
    pub predictions: NodeId,
    /// The target they are compared with.
    pub target: usize,
}

/// A model ready to run.
#[derive(Clone, Debug)]
pub struct Program {
    /// The checked model.
    pub model: CheckedModel,
    /// Its forward graph (evaluation behaviour).
    pub forward: Graph,
    /// The model's digest ([`identity::digest`]): checkpoints of another model are refused.
    pub hash: String,
    /// Set when the model is a classifier.
    pub classifier: Option<Classifier>,
    /// Set when the model is a regression model.
    pub regressor: Option<Regressor>,
}

/// Lowers a checked model.
pub fn prepare(model: &CheckedModel) -> Program {
    let forward = lower_model(model, Mode::Eval);
    let hash = identity::digest(model);
    let classifier = find_classifier(&forward);
    let regressor = find_regressor(&forward);
    Program {
        model: model.clone(),
        forward,
        hash,
        classifier,
        regressor,
    }
}

impl Program {
    /// The training graph for `cfg`: the forward pass with training behaviour (noise from
    /// the run's seed, batch statistics), backward pass, clipping and optimizer update.
    pub fn training_graph(&self, cfg: &TrainConfig) -> Graph {
        training_graph(&self.step_forward(cfg), &cfg.optimizer, cfg.clip)
    }

    /// The forward graph a training step of `cfg` differentiates: training behaviour,
    /// noise from its seed, its `freeze` applied.
    pub fn step_forward(&self, cfg: &TrainConfig) -> Graph {
        let mut forward = self.train_forward(cfg.seed);
        if !cfg.freeze.is_empty() {
            freeze(&mut forward, &cfg.freeze);
        }
        forward
    }

    /// The forward graph with training behaviour, its noise drawn from `seed`.
    pub fn train_forward(&self, seed: u64) -> Graph {
        lower_model(&self.model, Mode::Train { seed })
    }
}

/// Freezes the parameters of `g` named in `names` (a train block's `freeze`): not
/// trainable, so they get no gradient and no optimizer state and the backward pass stops
/// where nothing trainable needs it, and their running statistics (batch normalization's)
/// are not updated either.
fn freeze(g: &mut Graph, names: &[String]) {
    let frozen: Vec<bool> = g
        .params
        .iter()
        .map(|p| names.contains(&p.tensor.name))
        .collect();
    for (p, &f) in g.params.iter_mut().zip(&frozen) {
        p.trainable &= !f;
    }
    g.updates
        .retain(|(slot, _)| !matches!(slot, Slot::Param(i) if frozen[*i]));
}

/// The first loss of the graph in argument order, when it compares a prediction with a
/// target: (its kind, the prediction node, the target's index, the target node).
fn first_loss(g: &Graph) -> Option<(LossKind, NodeId, usize, NodeId)> {
    let mut stack = vec![g.loss?];
    while let Some(n) = stack.pop() {
        let node = &g.nodes[n];
        if let Op::Loss(kind) = node.op {
            let (pred, target) = (node.args[0], node.args[1]);
            let Op::Target(t) = g.nodes[target].op else {
                return None;
            };
            return Some((kind, pred, t, target));
        }
        stack.extend(node.args.iter().rev());
    }
    None
}

fn find_classifier(g: &Graph) -> Option<Classifier> {
    let (kind, pred, t, target) = first_loss(g)?;
    let last = g.nodes[pred].shape.last().unwrap_or(1) as usize;
    match (g.nodes[target].dtype, kind) {
        (DType::Class(k), _) if last == k as usize => Some(Classifier {
            scores: pred,
            target: t,
            classes: k as usize,
            binary: false,
        }),
        (DType::Class(2), _) | (DType::F32, LossKind::Bce | LossKind::Focal(..)) if last == 1 => {
            Some(Classifier {
                scores: pred,
                target: t,
                classes: 2,
                binary: true,
            })
        }
        _ => None,
    }
}

/// The first loss of the graph, when it compares predictions with a float target by
/// `mse`, `mae` or `huber`.
fn find_regressor(g: &Graph) -> Option<Regressor> {
    let (kind, pred, t, target) = first_loss(g)?;
    let regression = matches!(kind, LossKind::Mse | LossKind::Mae | LossKind::Huber(_));
    (regression && g.nodes[target].dtype == DType::F32).then_some(Regressor {
        predictions: pred,
        target: t,
    })
}

/// What the data loader needs to read for a model.
pub fn data_spec(g: &Graph) -> DataSpec {
    let port = |t: &crate::ir::Tensor| PortSpec {
        name: t.name.clone(),
        shape: t.shape.0[1..]
            .iter()
            .map(|d| d.size().unwrap_or(1) as usize)
            .collect(),
        classes: match t.dtype {
            DType::Class(k) => Some(k as usize),
            DType::F32 => None,
        },
    };
    DataSpec {
        inputs: g.inputs.iter().map(port).collect(),
        targets: g.targets.iter().map(port).collect(),
    }
}
