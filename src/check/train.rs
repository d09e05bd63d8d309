//! Validation of `train` blocks into a [`TrainConfig`] (E04xx).

use super::args::{bind, bind_call, eval, every, Bound, CVal, Const};
use super::catalog::Def::{self, *};
use super::graph::{CheckedModel, LossKind, Op, ParamSpec, Ty};
use crate::diag::{did_you_mean, Code, Diagnostic};
use crate::ir::{Clip, Optimizer};
use crate::span::Span;
use crate::syntax::ast::{Ident, Setting, TrainDecl};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A learning-rate schedule, stepped once per epoch.
#[derive(Clone, Debug, PartialEq)]
pub enum Schedule {
    /// The base rate throughout.
    Constant,
    /// Multiply by `gamma` every `every` epochs.
    Step {
        /// Epochs between decays.
        every: u64,
        /// Factor.
        gamma: f64,
    },
    /// Multiply by `gamma` every epoch.
    Exponential {
        /// Factor.
        gamma: f64,
    },
    /// Half a cosine from the base rate down to `min_lr` over the run.
    Cosine {
        /// Final rate.
        min_lr: f64,
    },
    /// Linear warm-up over `epochs`, then another schedule.
    Warmup {
        /// Warm-up length.
        epochs: u64,
        /// What follows.
        then: Box<Schedule>,
    },
}

/// Early stopping.
#[derive(Clone, Debug, PartialEq)]
pub struct EarlyStop {
    /// `val_loss`, `val_accuracy`, `loss`, `accuracy`.
    pub monitor: String,
    /// Epochs without improvement before stopping.
    pub patience: u64,
    /// Smallest change that counts as improvement.
    pub min_delta: f64,
    /// Restore the best weights at the end.
    pub restore_best: bool,
}

/// Metrics to report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// Fraction correct.
    Accuracy,
    /// Per class and macro.
    Precision,
    /// Per class and macro.
    Recall,
    /// Per class and macro.
    F1,
    /// Confusion matrix.
    Confusion,
    /// Mean absolute error (regression).
    Mae,
    /// Root mean squared error (regression).
    Rmse,
    /// Coefficient of determination R² (regression).
    R2,
}

/// The metrics' names in the DSL, with the task they measure.
const METRICS: &[(&str, Metric, Task)] = &[
    ("accuracy", Metric::Accuracy, Task::Classification),
    ("precision", Metric::Precision, Task::Classification),
    ("recall", Metric::Recall, Task::Classification),
    ("f1", Metric::F1, Task::Classification),
    ("confusion", Metric::Confusion, Task::Classification),
    ("mae", Metric::Mae, Task::Regression),
    ("rmse", Metric::Rmse, Task::Regression),
    ("r2", Metric::R2, Task::Regression),
];

impl Metric {
    /// True for `mae`, `rmse` and `r2`.
    pub fn is_regression(self) -> bool {
        matches!(self, Metric::Mae | Metric::Rmse | Metric::R2)
    }
}

/// What a model's loss makes of it, which decides the metrics it can report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Task {
    /// Its loss compares scores with class labels (or `bce` / `focal` with 0/1 targets).
    Classification,
    /// Its loss compares predictions with float targets by `mse`, `mae` or `huber`.
    Regression,
}

impl Task {
    /// The first loss of the model's loss expression (depth first, left to right), as the
    /// runtime reads it: what it compares decides the task; any other loss decides none.
    pub fn of(m: &CheckedModel) -> Option<Task> {
        let mut stack = vec![m.loss?];
        while let Some(n) = stack.pop() {
            let node = &m.nodes[n];
            if let Op::Loss(kind) = node.op {
                let target = &m.nodes[*node.inputs.get(1)?];
                if !matches!(target.op, Op::Target(_)) {
                    return None;
                }
                return match (&target.ty, kind) {
                    (Ty::Labels { .. }, _)
                    | (Ty::Tensor(_), LossKind::Bce | LossKind::Focal(..)) => {
                        Some(Task::Classification)
                    }
                    (Ty::Tensor(_), LossKind::Mse | LossKind::Mae | LossKind::Huber(_)) => {
                        Some(Task::Regression)
                    }
                    _ => None,
                };
            }
            stack.extend(node.inputs.iter().rev());
        }
        None
    }

    /// The metrics of this task, for help lines.
    fn metrics(self) -> String {
        let names: Vec<String> = METRICS
            .iter()
            .filter(|(_, _, t)| *t == self)
            .map(|(n, _, _)| format!("`{n}`"))
            .collect();
        match names.split_last() {
            Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
            _ => names.concat(),
        }
    }
}

/// A validated `train` block, with defaults filled in.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    /// The model it trains.
    pub model: String,
    /// The `train NAME` span.
    pub span: Span,
    /// Default training data (resolved against the model file's folder).
    pub train_data: Option<PathBuf>,
    /// Default test data.
    pub test_data: Option<PathBuf>,
    /// The optimizer (default `adam(lr: 0.001)`).
    pub optimizer: Optimizer,
    /// The schedule (default constant).
    pub schedule: Schedule,
    /// Batch size (default 32).
    pub batch: u64,
    /// Epochs (default 10).
    pub epochs: u64,
    /// Clipping.
    pub clip: Option<Clip>,
    /// Early stopping.
    pub early_stop: Option<EarlyStop>,
    /// Fraction of the training data held out for validation (default 0).
    pub validation: f64,
    /// Metrics (empty: all of the model's task, chosen at run time).
    pub metrics: Vec<Metric>,
    /// Seed of all randomness (default 0).
    pub seed: u64,
    /// Standardize inputs with the training set's statistics.
    pub standardize: bool,
    /// The shards each training step is split into (a power of two), or None for the
    /// automatic choice (docs/SCALING.md).
    pub shards: Option<u64>,
    /// Weights a fresh run starts from, where their names and shapes match the model's
    /// (`pretrained "FILE"`, resolved against the model file's folder).
    pub pretrained: Option<PathBuf>,
    /// The parameters `freeze` names, in the model's order: never changed by training.
    pub freeze: Vec<String>,
}

impl TrainConfig {
    /// The settings of a `train` block that sets nothing (docs/LANGUAGE.md §13).
    pub fn defaults(model: &str, span: Span) -> TrainConfig {
        TrainConfig {
            model: model.to_string(),
            span,
            train_data: None,
            test_data: None,
            optimizer: Optimizer::Adam {
                lr: 0.001,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.0,
                decoupled: false,
            },
            schedule: Schedule::Constant,
            batch: 32,
            epochs: 10,
            clip: None,
            early_stop: None,
            validation: 0.0,
            metrics: vec![],
            seed: 0,
            standardize: false,
            shards: None,
            pretrained: None,
            freeze: Vec::new(),
        }
    }
}

const SETTINGS: &[&str] = &[
    "data",
    "optimizer",
    "schedule",
    "batch",
    "epochs",
    "clip",
    "early_stop",
    "validation",
    "metrics",
    "seed",
    "standardize",
    "pretrained",
    "freeze",
];

/// Validates one train block. `base` is the model file's folder, for `data` paths; `task`
/// is the trained model's ([`Task::of`]), against which the `metrics` are checked, and
/// `params` its parameters, which `freeze` names.
pub fn check_train(
    decl: &TrainDecl,
    base: Option<&Path>,
    task: Option<Task>,
    params: &[ParamSpec],
    diags: &mut Vec<Diagnostic>,
) -> TrainConfig {
    let mut cfg = TrainConfig::defaults(&decl.model.name, decl.model.span);
    let mut seen: HashMap<&str, Span> = HashMap::new();
    for s in &decl.settings {
        let key = s.key.name.as_str();
        let Some(&known) = SETTINGS.iter().find(|k| **k == key) else {
            let mut d = Diagnostic::error(
                Code::E0401,
                format!("unknown train setting `{key}`"),
                s.key.span,
            )
            .primary_label("not a train setting");
            d = match did_you_mean(key, SETTINGS.iter().copied()) {
                Some(k) => d.with_help(format!("did you mean `{k}`?")),
                None => d.with_note(format!("settings: {}", SETTINGS.join(", "))),
            };
            diags.push(d);
            continue;
        };
        if let Some(prev) = seen.insert(known, s.key.span) {
            diags.push(
                Diagnostic::error(Code::E0204, format!("`{key}` is set twice"), s.key.span)
                    .primary_label("second setting")
                    .with_label(prev, "first set here"),
            );
            continue;
        }
        if known == "metrics" {
            metrics(&mut cfg, s, task, diags);
        } else if known == "freeze" {
            freeze(&mut cfg, s, params, diags);
        } else if let Err(d) = apply(&mut cfg, known, s, base, diags) {
            diags.push(d);
        }
    }
    if let (Some(es), Some(at)) = (&cfg.early_stop, seen.get("early_stop")) {
        if es.monitor.starts_with("val_") && cfg.validation == 0.0 {
            diags.push(
                Diagnostic::error(Code::E0403, format!("early stopping on `{}` needs a validation split", es.monitor), *at)
                    .primary_label("monitors validation data")
                    .with_note("validation rows come from the training data; the test set never steers training")
                    .with_help("hold out a fraction of the training rows: `validation 0.1`"),
            );
        }
    }
    cfg
}

/// Positional and named constant arguments.
type Consts = (Vec<Const>, Vec<(Ident, Const)>);

fn consts(s: &Setting) -> Result<Consts, Diagnostic> {
    let none = HashMap::new();
    let mut pos = Vec::new();
    let mut named = Vec::new();
    for a in &s.args {
        let c = eval(&a.value, &none)?;
        match &a.name {
            Some(n) => named.push((n.clone(), c)),
            None => pos.push(c),
        }
    }
    Ok((pos, named))
}

fn single(s: &Setting, what: &str) -> Result<Const, Diagnostic> {
    let (pos, named) = consts(s)?;
    if pos.len() != 1 || !named.is_empty() {
        return Err(Diagnostic::error(
            Code::E0205,
            format!("`{}` takes one value: {what}", s.key.name),
            s.span,
        )
        .primary_label(format!(
            "{} value{}",
            pos.len() + named.len(),
            if pos.len() + named.len() == 1 {
                ""
            } else {
                "s"
            }
        )));
    }
    Ok(pos.into_iter().next().expect("one value"))
}

fn bound_one(key: &str, c: Const) -> Result<Bound, Diagnostic> {
    let params: &'static [(&'static str, Def)] = &[("value", Required)];
    let span = c.span;
    bind(key, params, vec![c], vec![], span)
}

fn apply(
    cfg: &mut TrainConfig,
    key: &str,
    s: &Setting,
    base: Option<&Path>,
    diags: &mut Vec<Diagnostic>,
) -> Result<(), Diagnostic> {
    match key {
        "batch" | "epochs" | "seed" => {
            let b = bound_one(key, single(s, "an integer")?)?;
            let min = if key == "seed" { 0 } else { 1 };
            let v = b.int("value", min).map_err(|d| rename(d, key))? as u64;
            match key {
                "batch" => cfg.batch = v,
                "epochs" => cfg.epochs = v,
                _ => cfg.seed = v,
            }
        }
        "validation" => {
            let b = bound_one(key, single(s, "a fraction in [0, 1)")?)?;
            cfg.validation = b
                .float_in("value", |v| (0.0..1.0).contains(&v), "must be in [0, 1)")
                .map_err(|d| range(rename(d, key)))?;
        }
        "standardize" => {
            let b = bound_one(key, single(s, "`true` or `false`")?)?;
            cfg.standardize = b.boolean("value").map_err(|d| rename(d, key))?;
        }
        "pretrained" => {
            let c = single(s, "a path in quotes")?;
            let example = "pretrained \"weights.safetensors\"";
            cfg.pretrained = Some(file(&c, base, "pretrained", example, "weights file")?);
        }
        "data" => {
            let (pos, named) = consts(s)?;
            let params: &'static [(&'static str, Def)] = &[("train", Required), ("test", Optional)];
            let b = bind("data", params, pos, named, s.span)?;
            for (slot, name) in [(&mut cfg.train_data, "train"), (&mut cfg.test_data, "test")] {
                let Some(c) = b.get(name) else { continue };
                let example = format!("data {name}: \"data/file.csv\"");
                *slot = Some(file(c, base, name, &example, "data file")?);
            }
        }
        "optimizer" => {
            cfg.optimizer = optimizer(&single(s, "an optimizer like `sgd(lr: 0.1)`")?, diags)?
        }
        "schedule" => {
            cfg.schedule = schedule(
                &single(s, "a schedule like `step(every: 5, gamma: 0.5)`")?,
                diags,
            )?
        }
        "clip" => {
            let c = single(s, "`norm(x)` or `value(x)`")?;
            let (name, b) = call(
                &c,
                &[
                    ("norm", &[("max", Required)]),
                    ("value", &[("max", Required)]),
                ],
                "clipping",
            )?;
            let v = b
                .float_in("max", |v| v > 0.0, "must be positive")
                .map_err(range)?;
            cfg.clip = Some(if name == "norm" {
                Clip::Norm(v)
            } else {
                Clip::Value(v)
            });
        }
        _ => {
            // early_stop
            let (pos, named) = consts(s)?;
            let params: &'static [(&'static str, Def)] = &[
                ("monitor", Word("val_loss")),
                ("patience", Int(5)),
                ("min_delta", Float(0.0)),
                ("restore_best", Bool(true)),
            ];
            let b = bind("early_stop", params, pos, named, s.span)?;
            let reads = (
                b.choice("monitor", &["val_loss", "val_accuracy", "loss", "accuracy"])
                    .map_err(unknown_choice),
                b.int("patience", 0).map_err(range),
                b.float_in("min_delta", |v| v >= 0.0, "must be at least 0")
                    .map_err(range),
                b.boolean("restore_best"),
            );
            let (monitor, patience, min_delta, restore_best) = every(reads, diags)?;
            cfg.early_stop = Some(EarlyStop {
                monitor: monitor.to_string(),
                patience: patience as u64,
                min_delta,
                restore_best,
            });
        }
    }
    Ok(())
}

/// The values of a setting that takes a list of names (`key`: at least one `what`, none
/// of them named): E0206 for a named value, E0205 for none.
fn names(s: &Setting, key: &str, what: &str) -> Result<Vec<Const>, Diagnostic> {
    let (pos, named) = consts(s)?;
    if let Some((n, _)) = named.first() {
        return Err(Diagnostic::error(
            Code::E0206,
            format!("`{key}` takes a list of names"),
            n.span,
        ));
    }
    if pos.is_empty() {
        return Err(Diagnostic::error(
            Code::E0205,
            format!("`{key}` needs at least one {what}"),
            s.span,
        ));
    }
    Ok(pos)
}

/// Reads `freeze name, ...` into `cfg.freeze`: each name a parameter's, or a prefix of
/// parameters' names up to a dot (a binding, a layer); one that matches none is E0407,
/// with a guess among the names and prefixes, and so is freezing every trainable one.
fn freeze(cfg: &mut TrainConfig, s: &Setting, params: &[ParamSpec], diags: &mut Vec<Diagnostic>) {
    let pos = match names(s, "freeze", "name") {
        Ok(pos) => pos,
        Err(d) => return diags.push(d),
    };
    let under = |p: &str, w: &str| p == w || p.strip_prefix(w).is_some_and(|r| r.starts_with('.'));
    let mut frozen = vec![false; params.len()];
    for c in pos {
        let w = match &c.v {
            CVal::Word(w) | CVal::Str(w) => w.as_str(),
            _ => "",
        };
        let mut any = false;
        for (f, p) in frozen.iter_mut().zip(params) {
            if under(&p.name, w) {
                *f = true;
                any = true;
            }
        }
        if !any {
            let names: Vec<&str> = params
                .iter()
                .flat_map(|p| {
                    p.name
                        .match_indices('.')
                        .map(|(i, _)| &p.name[..i])
                        .chain([p.name.as_str()])
                })
                .collect();
            let d = Diagnostic::error(
                Code::E0407,
                format!("`{w}` names no parameter of `{}`", cfg.model),
                c.span,
            )
            .primary_label("no parameter is named so or under it");
            diags.push(match did_you_mean(w, names.iter().copied()) {
                Some(m) => d.with_help(format!("did you mean `{m}`?")),
                None => d.with_note("`kiln summary` lists the layers; a parameter's name is its layer's and `.weight`, `.bias`, …"),
            });
        }
    }
    let left = params.iter().zip(&frozen).any(|(p, &f)| p.trainable && !f);
    if !left && params.iter().any(|p| p.trainable) {
        diags.push(
            Diagnostic::error(Code::E0407, "`freeze` leaves no parameter to train", s.span)
                .primary_label("every trainable parameter is named here"),
        );
    }
    cfg.freeze = params
        .iter()
        .zip(&frozen)
        .filter(|(_, &f)| f)
        .map(|(p, _)| p.name.clone())
        .collect();
}

/// Reads `metrics m, ...` into `cfg.metrics`: every unknown name is reported in one
/// diagnostic (E0402), every metric of the other task in its own (E0406).
fn metrics(cfg: &mut TrainConfig, s: &Setting, task: Option<Task>, diags: &mut Vec<Diagnostic>) {
    let pos = match names(s, "metrics", "metric") {
        Ok(pos) => pos,
        Err(d) => return diags.push(d),
    };
    let names = METRICS.iter().map(|(n, _, _)| *n);
    let mut unknown: Vec<(String, Span)> = Vec::new();
    let mut chosen = Vec::new();
    for c in pos {
        let w = match &c.v {
            CVal::Word(w) => w.clone(),
            _ => String::new(),
        };
        match METRICS.iter().find(|(n, _, _)| *n == w) {
            Some(&(_, m, t)) => chosen.push((w, m, t, c.span)),
            None => unknown.push((w, c.span)),
        }
    }
    match unknown.as_slice() {
        [] => {}
        [(w, at)] => {
            let d = Diagnostic::error(Code::E0402, format!("unknown metric `{w}`"), *at)
                .primary_label("not a metric");
            diags.push(match did_you_mean(w, names.clone()) {
                Some(m) => d.with_help(format!("did you mean `{m}`?")),
                None => d.with_note(format!("metrics: {}", metric_list())),
            });
        }
        [(_, first), ..] => {
            let list: Vec<String> = unknown.iter().map(|(w, _)| format!("`{w}`")).collect();
            let mut d = Diagnostic::error(
                Code::E0402,
                format!("unknown metrics {}", list.join(", ")),
                *first,
            );
            let mut guesses = Vec::new();
            for (i, (w, at)) in unknown.iter().enumerate() {
                let label = match did_you_mean(w, names.clone()) {
                    Some(m) => {
                        guesses.push(format!("`{m}` for `{w}`"));
                        format!("did you mean `{m}`?")
                    }
                    None => "not a metric".to_string(),
                };
                d = if i == 0 {
                    d.primary_label(label)
                } else {
                    d.with_label(*at, label)
                };
            }
            if !guesses.is_empty() {
                d = d.with_help(format!("did you mean {}?", guesses.join(", ")));
            }
            if guesses.len() < unknown.len() {
                d = d.with_note(format!("metrics: {}", metric_list()));
            }
            diags.push(d);
        }
    }
    for (w, m, t, at) in chosen {
        match task {
            Some(own) if own != t => {
                let (what, model) = match t {
                    Task::Classification => ("a classification metric", "a regression model"),
                    Task::Regression => ("a regression metric", "a classifier"),
                };
                diags.push(
                    Diagnostic::error(
                        Code::E0406,
                        format!("`{w}` is {what}, but `{}` is {model}", cfg.model),
                        at,
                    )
                    .primary_label(format!("not measurable on {model}"))
                    .with_help(format!("{model} reports {}", own.metrics())),
                );
            }
            _ if !cfg.metrics.contains(&m) => cfg.metrics.push(m),
            _ => {}
        }
    }
}

/// Every metric name, for notes.
fn metric_list() -> String {
    METRICS
        .iter()
        .map(|(n, _, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Rewrites a message about the placeholder parameter `value` to name the setting.
fn rename(mut d: Diagnostic, key: &str) -> Diagnostic {
    d.message = d.message.replace("`value`", &format!("`{key}`"));
    range(d)
}

/// Out-of-range settings are training-configuration errors.
fn range(mut d: Diagnostic) -> Diagnostic {
    if d.code == Code::E0313 {
        d.code = Code::E0403;
    }
    d
}

fn unknown_choice(mut d: Diagnostic) -> Diagnostic {
    if d.code == Code::E0206 && d.message.contains("must be one of") {
        d.code = Code::E0402;
    }
    d
}

type Table<'a> = &'a [(&'static str, &'static [(&'static str, Def)])];

/// Binds a call (or bare word) against one of several signatures.
fn call(c: &Const, table: Table, what: &str) -> Result<(&'static str, Bound), Diagnostic> {
    let (name, args) = match &c.v {
        CVal::Word(w) => (w.as_str(), vec![]),
        CVal::Call(n, args) => (n.as_str(), args.clone()),
        other => {
            let names: Vec<&str> = table.iter().map(|(n, _)| *n).collect();
            return Err(Diagnostic::error(
                Code::E0206,
                format!("expected {what}, found {}", super::args::describe(other)),
                c.span,
            )
            .with_note(format!("choices: {}", names.join(", "))));
        }
    };
    let Some((known, params)) = table.iter().find(|(n, _)| *n == name) else {
        let names: Vec<&str> = table.iter().map(|(n, _)| *n).collect();
        let mut d = Diagnostic::error(Code::E0402, format!("unknown {what} `{name}`"), c.span)
            .primary_label(format!("not a known {what}"));
        d = match did_you_mean(name, names.iter().copied()) {
            Some(s) => d.with_help(format!("did you mean `{s}`?")),
            None => d.with_note(format!("choices: {}", names.join(", "))),
        };
        return Err(d);
    };
    Ok((known, bind_call(known, params, args, c.span)?))
}

const SGD: &[(&str, Def)] = &[
    ("lr", Required),
    ("momentum", Float(0.0)),
    ("nesterov", Bool(false)),
    ("weight_decay", Float(0.0)),
];
const ADAM: &[(&str, Def)] = &[
    ("lr", Float(0.001)),
    ("beta1", Float(0.9)),
    ("beta2", Float(0.999)),
    ("eps", Float(1e-8)),
    ("weight_decay", Float(0.0)),
];
const ADAMW: &[(&str, Def)] = &[
    ("lr", Float(0.001)),
    ("beta1", Float(0.9)),
    ("beta2", Float(0.999)),
    ("eps", Float(1e-8)),
    ("weight_decay", Float(0.01)),
];
const RMSPROP: &[(&str, Def)] = &[
    ("lr", Float(0.01)),
    ("alpha", Float(0.99)),
    ("eps", Float(1e-8)),
    ("momentum", Float(0.0)),
];

/// The optimizers with their arguments, for docs and completion.
pub const OPTIMIZERS: Table<'static> = &[
    ("sgd", SGD),
    ("adam", ADAM),
    ("adamw", ADAMW),
    ("rmsprop", RMSPROP),
];

fn optimizer(c: &Const, diags: &mut Vec<Diagnostic>) -> Result<Optimizer, Diagnostic> {
    let (name, b) = call(c, OPTIMIZERS, "optimizer")?;
    let unit = |v: f64| (0.0..1.0).contains(&v);
    let lr = || {
        b.float_in("lr", |v| v > 0.0, "must be positive")
            .map_err(range)
    };
    let weight_decay = || {
        b.float_in("weight_decay", |v| v >= 0.0, "must be at least 0")
            .map_err(range)
    };
    let eps = || {
        b.float_in("eps", |v| v > 0.0, "must be positive")
            .map_err(range)
    };
    let fraction = |name: &str| b.float_in(name, unit, "must be in [0, 1)").map_err(range);
    Ok(match name {
        "sgd" => {
            let reads = (
                lr(),
                fraction("momentum"),
                b.boolean("nesterov"),
                weight_decay(),
            );
            let (lr, momentum, nesterov, weight_decay) = every(reads, diags)?;
            if nesterov && momentum == 0.0 {
                return Err(Diagnostic::error(
                    Code::E0403,
                    "nesterov momentum needs a momentum above 0",
                    b.span_of("nesterov"),
                )
                .with_help("set `momentum: 0.9`"));
            }
            Optimizer::Sgd {
                lr,
                momentum,
                nesterov,
                weight_decay,
            }
        }
        "adam" | "adamw" => {
            let reads = (
                lr(),
                fraction("beta1"),
                fraction("beta2"),
                eps(),
                weight_decay(),
            );
            let (lr, beta1, beta2, eps, weight_decay) = every(reads, diags)?;
            Optimizer::Adam {
                lr,
                beta1,
                beta2,
                eps,
                weight_decay,
                decoupled: name == "adamw",
            }
        }
        _ => {
            let reads = (lr(), fraction("alpha"), eps(), fraction("momentum"));
            let (lr, alpha, eps, momentum) = every(reads, diags)?;
            Optimizer::Rmsprop {
                lr,
                alpha,
                eps,
                momentum,
            }
        }
    })
}

/// The schedules with their arguments.
pub const SCHEDULES: Table<'static> = &[
    ("constant", &[]),
    ("step", &[("every", Required), ("gamma", Float(0.1))]),
    ("exponential", &[("gamma", Required)]),
    ("cosine", &[("min_lr", Float(0.0))]),
    ("warmup", &[("epochs", Required)]),
];

fn schedule(c: &Const, diags: &mut Vec<Diagnostic>) -> Result<Schedule, Diagnostic> {
    let parts: Vec<Const> = match &c.v {
        CVal::Then(parts) => parts.clone(),
        _ => vec![c.clone()],
    };
    if parts.len() > 2 {
        return Err(Diagnostic::error(
            Code::E0402,
            "a schedule has at most one `then`",
            parts[2].span,
        )
        .primary_label("second `then`")
        .with_help("for example `warmup(2) then cosine(min_lr: 0)`"));
    }
    let mut out: Option<Schedule> = None;
    let last = parts.len() - 1;
    for p in &parts[..last] {
        let name = match &p.v {
            CVal::Call(n, _) | CVal::Word(n) => n.as_str(),
            _ => "",
        };
        if name != "warmup" {
            return Err(Diagnostic::error(
                Code::E0402,
                "only `warmup(...)` can come before `then`",
                p.span,
            )
            .primary_label(format!("`{name}` runs to the end of training"))
            .with_help("for example `warmup(2) then cosine(min_lr: 0)`"));
        }
    }
    for p in parts.iter().rev() {
        let (name, b) = call(p, SCHEDULES, "schedule")?;
        let gamma = |b: &Bound| {
            b.float_in("gamma", |v| v > 0.0 && v <= 1.0, "must be in (0, 1]")
                .map_err(range)
        };
        let s = match name {
            "constant" => Schedule::Constant,
            "step" => {
                let reads = (b.int("every", 1).map_err(range), gamma(&b));
                let (epochs, gamma) = every(reads, diags)?;
                Schedule::Step {
                    every: epochs as u64,
                    gamma,
                }
            }
            "exponential" => Schedule::Exponential { gamma: gamma(&b)? },
            "cosine" => Schedule::Cosine {
                min_lr: b
                    .float_in("min_lr", |v| v >= 0.0, "must be at least 0")
                    .map_err(range)?,
            },
            _ => {
                let epochs = b.int("epochs", 1).map_err(range)? as u64;
                let Some(then) = out.take() else {
                    return Err(Diagnostic::error(
                        Code::E0402,
                        "`warmup` must be followed by `then <schedule>`",
                        p.span,
                    )
                    .with_help("for example `warmup(2) then cosine(min_lr: 0)`"));
                };
                Schedule::Warmup {
                    epochs,
                    then: Box::new(then),
                }
            }
        };
        out = Some(s);
    }
    Ok(out.unwrap_or(Schedule::Constant))
}

/// The file a setting's value `c` names, relative to `base` (the model file's folder):
/// E0206 unless a string (`name` and an `example` in the message), E0405 when it does not
/// exist (`what` it is).
fn file(
    c: &Const,
    base: Option<&Path>,
    name: &str,
    example: &str,
    what: &str,
) -> Result<PathBuf, Diagnostic> {
    let CVal::Str(p) = &c.v else {
        return Err(Diagnostic::error(
            Code::E0206,
            format!("`{name}` must be a path in quotes"),
            c.span,
        )
        .with_help(example.to_string()));
    };
    let path = base.map_or_else(|| PathBuf::from(p), |b| b.join(p));
    if let (Some(b), false) = (base, path.exists()) {
        return Err(Diagnostic::error(
            Code::E0405,
            format!("{what} `{}` does not exist", resolve(b, p).display()),
            c.span,
        )
        .primary_label("this path, relative to the model file")
        .with_note("paths in a train block are relative to the model file"));
    }
    Ok(path)
}

/// `path` joined to `base` with `.` and `..` resolved in the text (`examples/../d.csv` is
/// `d.csv`), so a message names the file as the user would look for it (the file itself is
/// opened by the joined path, which a symbolic link may resolve differently).
fn resolve(base: &std::path::Path, path: &str) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in base.join(path).components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod resolve_tests {
    use super::resolve;
    use std::path::{Path, PathBuf};

    #[test]
    fn dots_are_resolved_in_the_text() {
        assert_eq!(
            resolve(Path::new("examples"), "data/x.csv"),
            PathBuf::from("examples/data/x.csv")
        );
        assert_eq!(
            resolve(Path::new("examples"), "../x.csv"),
            PathBuf::from("x.csv")
        );
        assert_eq!(
            resolve(Path::new("a/./b"), "../../../x.csv"),
            PathBuf::from("../x.csv")
        );
        assert_eq!(
            resolve(Path::new("/m"), "/abs/x.csv"),
            PathBuf::from("/abs/x.csv")
        );
    }
}
