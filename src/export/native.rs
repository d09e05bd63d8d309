//! `kiln build`: a model compiled ahead of time into a static library with a C API
//! (docs/BUILD.md): its evaluation graph, and its training step when it has a loss.
//!
//! The build side ([`build`]) writes the model's object file ([`crate::jit::object`]: the
//! functions the JIT would compile, the [`Meta`] and the weights as data, and the C entry
//! points), its header, and the archive that joins the object to the runtime's
//! (`libkiln_rt.a`, the `rt` crate). The run side ([`Library`], [`Trainer`]) is what the
//! runtime does when an entry point is called: it reads the metadata once, and runs each
//! call through the JIT back end's call machinery with the linked functions instead of
//! compiled ones, exactly as `kiln predict` and `kiln train` run the model (the same
//! graphs, roots, plans and kernels, the same standardization and hyperparameters), so
//! the results are the same.

use crate::check::train::TrainConfig;
use crate::exec::{step_roots, update_roots, Backend, RunError, State};
use crate::interp::dims;
use crate::ir::{Clip, DType, Graph, GraphData, NodeId, Optimizer, Tensor};
use crate::jit::object::{self, Function, ObjectSpec};
use crate::jit::{Jit, Precompiled};
use crate::runtime::data::{Dataset, Standardizer, TargetScale};
use crate::runtime::program::Program;
use crate::runtime::schedule::hyper;
use crate::runtime::shard::Sharded;
use ndarray::{ArrayD, IxDyn};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

/// The version of the metadata's layout: a library whose runtime expects another is
/// refused ([`Status::Mismatch`]).
pub const META_VERSION: u32 = 3;

/// An input, output or target of the C API.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Port {
    /// Its name in the model.
    pub name: String,
    /// One sample's shape (without the batch).
    pub shape: Vec<usize>,
    /// The number of classes of a class-id input or target (int64 in the C API), else
    /// None (float).
    pub classes: Option<u64>,
}

impl Port {
    /// Elements of one sample.
    pub fn size(&self) -> usize {
        self.shape.iter().product()
    }

    /// The port of a graph's input or target.
    fn of(t: &Tensor) -> Port {
        Port {
            name: t.name.clone(),
            shape: dims(&t.shape, 1)[1..].to_vec(),
            classes: match t.dtype {
                DType::Class(k) => Some(k),
                DType::F32 => None,
            },
        }
    }
}

/// A parameter of the model (batch normalization's running statistics included).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ParamMeta {
    /// Its name (`layer.weight`).
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Whether training updates it by its gradient (running statistics are not).
    pub trainable: bool,
}

/// What the runtime reads from a library: the graphs, what to run and how to read it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Meta {
    /// [`META_VERSION`].
    pub version: u32,
    /// The Kiln version that built the library (the runtime must be the same).
    pub kiln: String,
    /// The model's name.
    pub model: String,
    /// The evaluation graph.
    pub graph: GraphData,
    /// The roots the compiled function computes: the outputs, then (for a classifier)
    /// its scores, as `kiln predict` asks for them.
    pub roots: Vec<NodeId>,
    /// The digest of the plan the code was generated for (`jit::object::plan_digest`).
    pub plan: String,
    /// The CPU features the code uses (`jit::object::cpu_features`).
    pub cpu: Vec<String>,
    /// The inputs, in declaration order.
    pub inputs: Vec<Port>,
    /// The outputs, in declaration order (the first `outputs.len()` roots).
    pub outputs: Vec<Port>,
    /// The parameters, in order (their values begin the weights' data).
    pub params: Vec<ParamMeta>,
    /// The inputs' standardization, when the checkpoint has one: per input, the mean and
    /// deviation of each sample element, as f32 bits (exact in JSON).
    pub standardize: Option<Vec<(Vec<u32>, Vec<u32>)>>,
    /// The standardized target, when training standardized one: its index among the
    /// targets, its mean and deviation as f32 bits.
    pub target_scale: Option<(usize, Vec<u32>, Vec<u32>)>,
    /// The output the runtime un-standardizes (a regression model's prediction of the
    /// standardized target).
    pub unstandardize: Option<usize>,
    /// The training step, for a model with a loss.
    pub train: Option<TrainMeta>,
}

/// A library's training step.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainMeta {
    /// The shards a step is split into, as `kiln train` splits it (docs/SCALING.md).
    pub shards: usize,
    /// One shard: the training graph (training behaviour, backward pass, clipping,
    /// update); more: the gradient graph each shard runs.
    pub graph: GraphData,
    /// The roots its compiled function computes ([`step_roots`], or
    /// [`Sharded::roots`]).
    pub roots: Vec<NodeId>,
    /// The digest of the plan its code was generated for.
    pub plan: String,
    /// The targets, in declaration order.
    pub targets: Vec<Port>,
    /// The optimizer state's shapes (their values follow the parameters' in the weights).
    pub states: Vec<Vec<usize>>,
    /// The train block's optimizer and clipping.
    pub optimizer: Optimizer,
    /// The gradient clipping.
    pub clip: Option<Clip>,
    /// The learning rate the steps start at (the schedule's at the checkpoint's epoch).
    pub lr: f64,
    /// Steps taken before the first (the checkpoint's, when it holds optimizer state).
    pub step: u64,
    /// A split step's update graph, its roots (its updates) and plan digest.
    pub update: Option<(GraphData, Vec<NodeId>, String)>,
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn floats(v: &[u32]) -> Vec<f32> {
    v.iter().map(|&x| f32::from_bits(x)).collect()
}

/// What [`build`] writes.
pub struct Built {
    /// The model's object file.
    pub object: Vec<u8>,
    /// The C header.
    pub header: String,
}

/// Why a model cannot be built.
#[derive(Debug)]
pub enum BuildError {
    /// The model's name is no C identifier (or is a C keyword).
    Name(String),
    /// Kiln's bug.
    Bug(String),
}

impl std::fmt::Display for BuildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BuildError::Name(m) | BuildError::Bug(m) => f.write_str(m),
        }
    }
}

const C_KEYWORDS: &[&str] = &[
    "auto", "break", "case", "char", "const", "continue", "default", "do", "double", "else",
    "enum", "extern", "float", "for", "goto", "if", "inline", "int", "long", "register",
    "restrict", "return", "short", "signed", "sizeof", "static", "struct", "switch", "typedef",
    "union", "unsigned", "void", "volatile", "while", "bool", "true", "false",
];

/// Whether `name` can prefix the library's C symbols.
fn c_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !C_KEYWORDS.contains(&name)
}

/// The roots `kiln predict` computes: the outputs, then a classifier's scores.
pub fn predict_roots(p: &Program) -> Vec<NodeId> {
    let mut roots: Vec<NodeId> = p.forward.outputs.iter().map(|(_, n)| *n).collect();
    roots.extend(p.classifier.as_ref().map(|c| c.scores));
    roots
}

/// Where training starts in a library: the training graph of the train block `cfg` and
/// the run's state at the start (its optimizer state and step from the checkpoint, or
/// fresh), with the learning rate of the checkpoint's epoch.
pub struct TrainStart<'a> {
    /// `Program::training_graph(cfg)`.
    pub graph: &'a Graph,
    /// The train block.
    pub cfg: &'a TrainConfig,
    /// The learning rate of the first step.
    pub lr: f64,
    /// Steps taken before.
    pub step: u64,
    /// The step split into shards, when the run splits it.
    pub split: Option<&'a Sharded>,
}

/// The graph a library's training function computes, and its roots: the training graph,
/// or a split step's gradient graph.
fn train_function<'a>(t: &TrainStart<'a>) -> Result<(&'a Graph, Vec<NodeId>), BuildError> {
    Ok(match t.split {
        Some(s) => {
            let g = s.graphs().0;
            let roots = Sharded::roots(g).ok_or_else(|| bug("a gradient graph without a loss"))?;
            (g, roots)
        }
        None => (t.graph, step_roots(t.graph).map_err(bug)?.to_vec()),
    })
}

fn bug(e: impl std::fmt::Display) -> BuildError {
    BuildError::Bug(e.to_string())
}

/// The metadata of `p` with its standardization and training step, for code generated
/// here.
fn meta(
    p: &Program,
    st: Option<&Standardizer>,
    train: Option<&TrainStart>,
) -> Result<Meta, BuildError> {
    let g = &p.forward;
    let roots = predict_roots(p);
    let outputs = g
        .outputs
        .iter()
        .map(|(name, n)| Port {
            name: name.clone(),
            shape: dims(&g.nodes[*n].shape, 1)[1..].to_vec(),
            classes: None,
        })
        .collect();
    let target = st.and_then(|s| s.target.as_ref());
    let unstandardize = match (target, &p.regressor) {
        (Some(_), Some(r)) => g.outputs.iter().position(|(_, n)| *n == r.predictions),
        _ => None,
    };
    let train = match train {
        Some(t) => {
            let (graph, roots) = train_function(t)?;
            Some(TrainMeta {
                shards: t.split.map_or(1, Sharded::shards),
                graph: (**graph).clone(),
                plan: object::plan_digest(graph, &roots),
                roots,
                targets: g.targets.iter().map(Port::of).collect(),
                states: t.graph.states.iter().map(|s| dims(&s.shape, 1)).collect(),
                optimizer: t.cfg.optimizer.clone(),
                clip: t.cfg.clip,
                lr: t.lr,
                step: t.step,
                update: t.split.map(|s| {
                    let u = s.graphs().1;
                    let roots = update_roots(u);
                    (
                        (**u).clone(),
                        roots.to_vec(),
                        object::plan_digest(u, &roots),
                    )
                }),
            })
        }
        None => None,
    };
    Ok(Meta {
        version: META_VERSION,
        kiln: env!("CARGO_PKG_VERSION").to_string(),
        model: p.model.name.clone(),
        graph: (**g).clone(),
        plan: object::plan_digest(g, &roots),
        cpu: object::cpu_features().map_err(bug)?,
        roots,
        inputs: g.inputs.iter().map(Port::of).collect(),
        outputs,
        params: g
            .params
            .iter()
            .map(|t| ParamMeta {
                name: t.tensor.name.clone(),
                shape: dims(&t.tensor.shape, 1),
                trainable: t.trainable,
            })
            .collect(),
        standardize: st.map(|s| {
            s.mean
                .iter()
                .zip(&s.std)
                .map(|(m, d)| (bits(m), bits(d)))
                .collect()
        }),
        target_scale: target.map(|t| (t.target, bits(&t.mean), bits(&t.std))),
        unstandardize,
        train,
    })
}

/// Compiles `p` with `state` (its parameters, and the optimizer state training starts
/// from) and the checkpoint's standardization `st` into its object file and header; with
/// the training step when `train` is given.
pub fn build(
    p: &Program,
    state: &State,
    st: Option<&Standardizer>,
    train: Option<&TrainStart>,
) -> Result<Built, BuildError> {
    let name = &p.model.name;
    if !c_identifier(name) {
        return Err(BuildError::Name(format!(
            "the model's name `{name}` cannot name C functions (a C keyword); rename the model"
        )));
    }
    let meta = meta(p, st, train)?;
    let json = serde_json::to_vec(&meta).map_err(bug)?;
    // The runtime reads the graphs back: they must be these graphs, exactly.
    let back: Meta = serde_json::from_slice(&json)
        .map_err(|e| BuildError::Bug(format!("the graphs do not survive JSON: {e}")))?;
    let same_train = match (&back.train, train) {
        (Some(b), Some(t)) => {
            let same_update = match (&b.update, t.split) {
                (Some((u, _, _)), Some(s)) => *u == **s.graphs().1,
                (None, None) => true,
                _ => false,
            };
            b.graph == **train_function(t)?.0 && same_update
        }
        (None, None) => true,
        _ => false,
    };
    if back.graph != *p.forward || !same_train {
        return Err(BuildError::Bug(
            "the graphs do not survive JSON unchanged".into(),
        ));
    }
    let mut weights = Vec::new();
    let states = if train.is_some() {
        &state.states[..]
    } else {
        &[]
    };
    for a in state.params.iter().chain(states) {
        weights.extend(a.iter().flat_map(|v| v.to_le_bytes()));
    }
    let train_fn = match (train, &meta.train) {
        (Some(t), Some(m)) => Some(Function {
            graph: train_function(t)?.0,
            roots: &m.roots,
        }),
        _ => None,
    };
    let update_fn = match (train.and_then(|t| t.split), &meta.train) {
        (
            Some(s),
            Some(TrainMeta {
                update: Some((_, roots, _)),
                ..
            }),
        ) => Some(Function {
            graph: s.graphs().1,
            roots,
        }),
        _ => None,
    };
    let object = object::write(&ObjectSpec {
        name,
        predict: Function {
            graph: &p.forward,
            roots: &meta.roots,
        },
        train: train_fn,
        update: update_fn,
        meta: &json,
        weights: &weights,
    })
    .map_err(bug)?;
    Ok(Built {
        object,
        header: header(&meta),
    })
}

/// `[batch, d1, d2]`.
fn c_shape(s: &[usize]) -> String {
    let mut out = String::from("[batch");
    for d in s {
        out += &format!(", {d}");
    }
    out + "]"
}

/// The header's lines for ports (`INPUT`, `TARGET`) of a model whose macros start `up`.
fn port_macros(up: &str, what: &str, ports: &[Port]) -> String {
    let mut h = String::new();
    for (k, port) in ports.iter().enumerate() {
        let (ty, values) = match port.classes {
            Some(c) => ("int64_t", format!("class ids in 0..{}", c - 1)),
            None => ("float", "float32".to_string()),
        };
        h += &format!(
            "/* {} {k}: `{}` {} {ty}, {values} */\n#define {up}_{what}_{k}_NAME \"{}\"\n#define {up}_{what}_{k}_SIZE {}\n",
            what.to_ascii_lowercase(),
            port.name,
            c_shape(&port.shape),
            port.name,
            port.size()
        );
    }
    h
}

/// The C header of a library.
pub fn header(m: &Meta) -> String {
    let name = &m.model;
    let up = name.to_ascii_uppercase();
    let mut h = format!(
        "/* {name}.h: the C API of model `{name}`, written by `kiln build` (Kiln {}).\n \
         * Link: cc app.c -I DIR DIR/lib{name}.a -lm -lpthread -ldl\n \
         * docs/BUILD.md describes the API. */\n\
         #ifndef KILN_{up}_H\n#define KILN_{up}_H\n\n#include <stdint.h>\n\n\
         #ifdef __cplusplus\nextern \"C\" {{\n#endif\n\n",
        m.kiln
    );
    h += &format!("#define {up}_NUM_INPUTS {}\n", m.inputs.len());
    h += &format!("#define {up}_NUM_OUTPUTS {}\n\n", m.outputs.len());
    h += &port_macros(&up, "INPUT", &m.inputs);
    h += "\n";
    for (k, port) in m.outputs.iter().enumerate() {
        h += &format!(
            "/* output {k}: `{}` {} float */\n#define {up}_OUTPUT_{k}_NAME \"{}\"\n#define {up}_OUTPUT_{k}_SIZE {}\n",
            port.name,
            c_shape(&port.shape),
            port.name,
            port.size()
        );
    }
    h += &format!(
        "\n/* Return values of the functions returning int. */\n\
         #define {up}_OK 0\n\
         #define {up}_ERR_BATCH {}\n\
         #define {up}_ERR_POINTER {}\n\
         #define {up}_ERR_CLASS {}\n\
         #define {up}_ERR_RUNTIME {}\n\
         #define {up}_ERR_INTERNAL {}\n\
         #define {up}_ERR_DIVERGED {}\n\
         #define {up}_ERR_VALUE {}\n\n",
        Status::Batch as i32,
        Status::Pointer as i32,
        Status::Class as i32,
        Status::Mismatch as i32,
        Status::Internal as i32,
        Status::Diverged as i32,
        Status::Value as i32,
    );
    h += &format!(
        "/* The model's outputs for `batch` samples: inputs[k] points to batch x INPUT_k_SIZE\n \
         * values (row-major), outputs[k] to room for batch x OUTPUT_k_SIZE floats, which\n \
         * are written. Returns {up}_OK, or an error code (then outputs are unspecified).\n \
         * Thread-safe: several threads may call it at once. */\n\
         int {name}_predict(int64_t batch, const void *const inputs[], void *const outputs[]);\n"
    );
    if let Some(t) = &m.train {
        h += &train_header(m, t, &up);
    }
    h += &format!("\n#ifdef __cplusplus\n}}\n#endif\n\n#endif /* KILN_{up}_H */\n");
    h
}

/// The training part of a library's header.
fn train_header(m: &Meta, t: &TrainMeta, up: &str) -> String {
    let name = &m.model;
    let mut h = format!(
        "\n/* Training (docs/BUILD.md): the train block's step, as `kiln train` runs it. */\n\
         #define {up}_NUM_TARGETS {}\n\
         #define {up}_NUM_PARAMS {}\n\n",
        t.targets.len(),
        m.params.len()
    );
    h += &port_macros(up, "TARGET", &t.targets);
    h += "\n";
    for (k, p) in m.params.iter().enumerate() {
        let dims: Vec<String> = p.shape.iter().map(usize::to_string).collect();
        h += &format!(
            "/* parameter {k}: `{}` [{}]{} */\n#define {up}_PARAM_{k}_NAME \"{}\"\n#define {up}_PARAM_{k}_SIZE {}\n",
            p.name,
            dims.join(", "),
            if p.trainable { "" } else { ", not trained by gradient" },
            p.name,
            p.shape.iter().product::<usize>()
        );
    }
    let start = if t.step == 0 {
        "fresh optimizer state".to_string()
    } else {
        format!("the checkpoint's optimizer state after step {}", t.step)
    };
    h += &format!(
        "\n/* A training context: the parameters and optimizer state, from the built weights\n \
         * and {start}; the learning rate starts at {:e}. */\n\
         typedef struct {name}_train {name}_train;\n\n\
         /* A new context, or NULL when the library cannot run here ({up}_ERR_RUNTIME). */\n\
         {name}_train *{name}_train_new(void);\n\n\
         /* One training step on `batch` samples: inputs as for {name}_predict, targets[k]\n \
         * points to batch x TARGET_k_SIZE values. Writes the batch's loss (before the\n \
         * update) to *loss. {up}_ERR_DIVERGED when the loss is not finite: the step is\n \
         * undone. Steps on one context are serialized. */\n\
         int {name}_train_step({name}_train *ctx, int64_t batch, const void *const inputs[],\n                  \
         const void *const targets[], float *loss);\n\n\
         /* Copies each parameter into params[k] (room for PARAM_k_SIZE floats). */\n\
         int {name}_train_params({name}_train *ctx, float *const params[]);\n\n\
         /* The outputs, as {name}_predict, with the context's current parameters. */\n\
         int {name}_predict_ctx({name}_train *ctx, int64_t batch, const void *const inputs[],\n                  \
         void *const outputs[]);\n\n\
         /* Sets the learning rate of the following steps, finite and at least 0, else\n \
         * {up}_ERR_VALUE (the train block's schedule is per epoch: a program that wants\n \
         * one sets the rate itself). */\n\
         int {name}_train_set_lr({name}_train *ctx, double lr);\n\n\
         /* Frees the context (NULL is ignored). */\n\
         void {name}_train_free({name}_train *ctx);\n",
        t.lr
    );
    h
}

/// Why a call of a library's entry point failed: its return value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum Status {
    /// Success.
    Ok = 0,
    /// `batch < 1` (or too large to address).
    Batch = 1,
    /// A null or misaligned pointer (or a context of another model).
    Pointer = 2,
    /// A class id outside `0..classes`.
    Class = 3,
    /// The library's data does not fit this runtime (another Kiln version built it), or
    /// this CPU lacks a feature its code uses.
    Mismatch = 4,
    /// Kiln's bug.
    Internal = 5,
    /// A training step's loss was not finite; the step was undone.
    Diverged = 6,
    /// A value out of its range (a learning rate that is negative or not finite).
    Value = 7,
}

/// An input's or target's values as the caller gives them.
pub enum Input<'a> {
    /// Floats.
    F32(&'a [f32]),
    /// Class ids.
    Class(&'a [i64]),
}

/// Reads the `given` values for `ports`, `batch` samples each, into `arrays` (reusing
/// their buffers when the batch is the same as the last call's).
fn fill(
    ports: &[Port],
    given: &[Input],
    batch: usize,
    arrays: &mut Vec<ArrayD<f32>>,
) -> Result<(), Status> {
    if given.len() != ports.len() {
        return Err(Status::Internal);
    }
    arrays.truncate(ports.len());
    for (k, (port, input)) in ports.iter().zip(given).enumerate() {
        let n = batch.checked_mul(port.size()).ok_or(Status::Batch)?;
        if arrays
            .get(k)
            .is_none_or(|a| a.len() != n || a.shape().first() != Some(&batch))
        {
            let mut shape = vec![batch];
            shape.extend(&port.shape);
            let a = ArrayD::zeros(IxDyn(&shape));
            match arrays.get_mut(k) {
                Some(old) => *old = a,
                None => arrays.push(a),
            }
        }
        let dst = arrays[k].as_slice_mut().ok_or(Status::Internal)?;
        match (input, port.classes) {
            (Input::F32(v), None) if v.len() == n => dst.copy_from_slice(v),
            (Input::Class(v), Some(classes)) if v.len() == n => {
                for (d, &c) in dst.iter_mut().zip(*v) {
                    if c < 0 || c as u64 >= classes {
                        return Err(Status::Class);
                    }
                    *d = c as f32;
                }
            }
            _ => return Err(Status::Internal),
        }
    }
    Ok(())
}

/// What one call needs besides the library: a back end (its buffers reused) and the
/// arrays the inputs and targets are read into.
struct Scratch {
    jit: Jit,
    inputs: Vec<ArrayD<f32>>,
    targets: Vec<ArrayD<f32>>,
}

impl Scratch {
    fn new(jit: Jit) -> Scratch {
        Scratch {
            jit,
            inputs: Vec::new(),
            targets: Vec::new(),
        }
    }
}

fn run_error(e: RunError) -> Status {
    match e {
        RunError::Input(_) => Status::Class,
        RunError::Internal(_) => Status::Internal,
    }
}

/// A library's training step, loaded.
struct TrainPart {
    meta: TrainMeta,
    graph: Graph,
    func: Precompiled,
    /// A split step's update graph and function.
    update: Option<(Graph, Precompiled)>,
    states: Vec<ArrayD<f32>>,
}

/// A built library, loaded by the runtime: what each call needs.
pub struct Library {
    meta: Meta,
    graph: Graph,
    state: State,
    func: Precompiled,
    train: Option<TrainPart>,
    standardizer: Option<Standardizer>,
    /// What calls need, ready to reuse: one per concurrent call.
    pool: Mutex<Vec<Scratch>>,
    threads: usize,
}

/// `shapes`' arrays, read from `values` in order.
fn read_arrays(
    shapes: &[Vec<usize>],
    values: &mut impl Iterator<Item = f32>,
) -> Result<Vec<ArrayD<f32>>, Status> {
    shapes
        .iter()
        .map(|s| {
            let n = s.iter().product();
            ArrayD::from_shape_vec(IxDyn(s), values.take(n).collect()).map_err(|_| Status::Mismatch)
        })
        .collect()
}

impl Library {
    /// Reads a library's metadata and weights; `func` is its compiled evaluation
    /// function, `train` its training step's (when it has one: a split step's gradient
    /// function, with `update` its update function).
    pub fn load(
        meta: &[u8],
        weights: &[u8],
        func: Precompiled,
        train: Option<Precompiled>,
        update: Option<Precompiled>,
    ) -> Result<Library, Status> {
        let meta: Meta = serde_json::from_slice(meta).map_err(|_| Status::Mismatch)?;
        if meta.version != META_VERSION || meta.kiln != env!("CARGO_PKG_VERSION") {
            return Err(Status::Mismatch);
        }
        let shapes: Vec<Vec<usize>> = meta.params.iter().map(|p| p.shape.clone()).collect();
        let state_shapes = meta.train.as_ref().map_or(&[][..], |t| &t.states);
        let total: usize = shapes
            .iter()
            .chain(state_shapes)
            .map(|s| s.iter().product::<usize>())
            .sum();
        if weights.len() != total * 4 {
            return Err(Status::Mismatch);
        }
        let mut values = weights
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        let params = read_arrays(&shapes, &mut values)?;
        let states = read_arrays(state_shapes, &mut values)?;
        let standardizer = meta.standardize.as_ref().map(|s| Standardizer {
            mean: s.iter().map(|(m, _)| floats(m)).collect(),
            std: s.iter().map(|(_, d)| floats(d)).collect(),
            target: meta
                .target_scale
                .as_ref()
                .map(|(target, m, d)| TargetScale {
                    target: *target,
                    mean: floats(m),
                    std: floats(d),
                }),
        });
        let graph = Graph::from(meta.graph.clone());
        // The code was generated for these plans, on a CPU with these features.
        if object::plan_digest(&graph, &meta.roots) != meta.plan {
            return Err(Status::Mismatch);
        }
        let here = object::cpu_features().map_err(|_| Status::Mismatch)?;
        if !meta.cpu.iter().all(|f| here.contains(f)) {
            return Err(Status::Mismatch);
        }
        let train = match (&meta.train, train) {
            (Some(t), Some(func)) => {
                let graph = Graph::from(t.graph.clone());
                if object::plan_digest(&graph, &t.roots) != t.plan {
                    return Err(Status::Mismatch);
                }
                let update = match (&t.update, update) {
                    (Some((g, roots, plan)), Some(f)) => {
                        let g = Graph::from(g.clone());
                        if object::plan_digest(&g, roots) != *plan
                            || update_roots(&g)[..] != roots[..]
                        {
                            return Err(Status::Mismatch);
                        }
                        Some((g, f))
                    }
                    (None, None) => None,
                    _ => return Err(Status::Mismatch),
                };
                Some(TrainPart {
                    meta: t.clone(),
                    graph,
                    func,
                    update,
                    states,
                })
            }
            (None, None) => None,
            _ => return Err(Status::Mismatch),
        };
        Ok(Library {
            meta,
            graph,
            state: State {
                params,
                states: vec![],
            },
            func,
            train,
            standardizer,
            pool: Mutex::new(Vec::new()),
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        })
    }

    /// The metadata.
    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// What a call of the evaluation function needs.
    fn scratch(&self) -> Scratch {
        Scratch::new(Jit::precompiled(
            &self.graph,
            &self.meta.roots,
            self.func,
            self.threads,
        ))
    }

    /// Runs the model on `batch` samples of `inputs` (one per input, `batch` samples each)
    /// and writes its outputs into `outputs` (one per output, `batch` samples each).
    pub fn predict(
        &self,
        batch: usize,
        inputs: &[Input],
        outputs: &mut [&mut [f32]],
    ) -> Result<(), Status> {
        let taken = self
            .pool
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let mut scratch = taken.unwrap_or_else(|| self.scratch());
        let result = self.evaluate(&self.state, &mut scratch, batch, inputs, outputs);
        self.pool
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(scratch);
        result
    }

    /// [`Library::predict`] with the parameters of `state`.
    fn evaluate(
        &self,
        state: &State,
        sc: &mut Scratch,
        batch: usize,
        inputs: &[Input],
        outputs: &mut [&mut [f32]],
    ) -> Result<(), Status> {
        let m = &self.meta;
        if outputs.len() != m.outputs.len() {
            return Err(Status::Internal);
        }
        fill(&m.inputs, inputs, batch, &mut sc.inputs)?;
        if let Some(s) = &self.standardizer {
            let mut d = Dataset {
                inputs: std::mem::take(&mut sc.inputs),
                targets: Vec::new(),
                rows: batch,
            };
            s.apply(&mut d);
            sc.inputs = d.inputs;
        }
        sc.jit
            .evaluate_into(
                &self.graph,
                state,
                &sc.inputs,
                &[],
                &HashMap::new(),
                &m.roots,
                outputs,
            )
            .map_err(run_error)?;
        if let (Some(s), Some(k)) = (&self.standardizer, m.unstandardize) {
            s.unstandardize_rows(&mut outputs[k][..], m.outputs[k].size());
        }
        Ok(())
    }

    /// A training context starting from the library's weights and optimizer state;
    /// [`Status::Mismatch`] when the library has no training step.
    pub fn trainer(&self) -> Result<Trainer<'_>, Status> {
        let t = self.train.as_ref().ok_or(Status::Mismatch)?;
        let state = State {
            params: self.state.params.clone(),
            states: t.states.clone(),
        };
        let mut jit = Jit::precompiled(&t.graph, &t.meta.roots, t.func, self.threads);
        let split = match &t.update {
            Some((u, f)) => {
                jit.link(u, &update_roots(u), *f);
                let s = Sharded::from_graphs(t.graph.clone(), u.clone(), t.meta.shards);
                Some(s.ok_or(Status::Mismatch)?)
            }
            None => None,
        };
        Ok(Trainer {
            lib: self,
            inner: Mutex::new(Training {
                before: state.clone(),
                state,
                step: t.meta.step,
                lr: t.meta.lr,
                train: Scratch::new(jit),
                split,
                eval: self.scratch(),
            }),
        })
    }
}

/// A training context of a [`Library`]: its own parameters and optimizer state.
pub struct Trainer<'l> {
    lib: &'l Library,
    inner: Mutex<Training>,
}

/// A training context's state, used by one call at a time.
struct Training {
    state: State,
    /// The state before the last step (undone when its loss is not finite).
    before: State,
    step: u64,
    lr: f64,
    train: Scratch,
    /// The step split into shards, as `kiln train` splits it.
    split: Option<Sharded>,
    eval: Scratch,
}

impl Trainer<'_> {
    /// The library the context trains.
    pub fn library(&self) -> &Library {
        self.lib
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Training> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One training step on `batch` samples: forward, loss, backward, update, as `kiln
    /// train`'s step (the inputs and a standardized target standardized first). Returns
    /// the batch's loss; [`Status::Diverged`] (the step undone) when it is not finite.
    pub fn step(&self, batch: usize, inputs: &[Input], targets: &[Input]) -> Result<f32, Status> {
        let lib = self.lib;
        let t = lib.train.as_ref().ok_or(Status::Internal)?;
        let mut guard = self.inner();
        let tr = &mut *guard;
        let sc = &mut tr.train;
        fill(&lib.meta.inputs, inputs, batch, &mut sc.inputs)?;
        fill(&t.meta.targets, targets, batch, &mut sc.targets)?;
        if let Some(s) = &lib.standardizer {
            let mut d = Dataset {
                inputs: std::mem::take(&mut sc.inputs),
                targets: std::mem::take(&mut sc.targets),
                rows: batch,
            };
            s.apply(&mut d);
            (sc.inputs, sc.targets) = (d.inputs, d.targets);
        }
        tr.before.clone_from(&tr.state);
        let h = hyper(&t.meta.optimizer, t.meta.clip, tr.lr, tr.step + 1);
        let r = match &mut tr.split {
            Some(s) => s.step(
                &mut sc.jit,
                &mut tr.state,
                &sc.inputs,
                &sc.targets,
                batch,
                &h,
                None,
            ),
            None => sc
                .jit
                .step(&t.graph, &mut tr.state, &sc.inputs, &sc.targets, &h),
        }
        .map_err(run_error)?;
        if !r.objective.is_finite() {
            tr.state.clone_from(&tr.before);
            return Err(Status::Diverged);
        }
        tr.step += 1;
        Ok(r.loss as f32)
    }

    /// Copies each parameter's values into `params` (one per parameter, of its size).
    pub fn params(&self, params: &mut [&mut [f32]]) -> Result<(), Status> {
        let tr = self.inner();
        if params.len() != tr.state.params.len() {
            return Err(Status::Internal);
        }
        for (out, p) in params.iter_mut().zip(&tr.state.params) {
            let p = p.as_slice().ok_or(Status::Internal)?;
            if out.len() != p.len() {
                return Err(Status::Internal);
            }
            out.copy_from_slice(p);
        }
        Ok(())
    }

    /// The model's outputs with the context's parameters, as [`Library::predict`].
    pub fn predict(
        &self,
        batch: usize,
        inputs: &[Input],
        outputs: &mut [&mut [f32]],
    ) -> Result<(), Status> {
        let mut guard = self.inner();
        let tr = &mut *guard;
        self.lib
            .evaluate(&tr.state, &mut tr.eval, batch, inputs, outputs)
    }

    /// Sets the learning rate of the following steps: a finite rate, at least 0.
    pub fn set_lr(&self, lr: f64) -> Result<(), Status> {
        if !lr.is_finite() || lr < 0.0 {
            return Err(Status::Value);
        }
        self.inner().lr = lr;
        Ok(())
    }
}

/// The static library: the model's object file `object` (named `member`) and the members
/// of the runtime's archive `runtime` (libkiln_rt.a) that a linker would pull in for it
/// (the members defining the symbols it needs, and theirs, transitively: the rest of
/// the runtime's archive would never be linked), with a symbol table.
pub fn archive(runtime: &[u8], object: &[u8], member: &str) -> Result<Vec<u8>, String> {
    use ::object::read::archive::{ArchiveFile, ArchiveKind as Kind};
    use ::object::{Object, ObjectSymbol};
    use ar_archive_writer::{ArchiveKind, NewArchiveMember, DEFAULT_OBJECT_READER};
    use std::collections::{HashMap, HashSet};
    let rt = ArchiveFile::parse(runtime).map_err(|e| format!("not an archive: {e}"))?;
    let kind = match rt.kind() {
        Kind::Gnu64 => ArchiveKind::Gnu64,
        Kind::Bsd => ArchiveKind::Darwin,
        Kind::Bsd64 => ArchiveKind::Darwin64,
        Kind::Coff => ArchiveKind::Coff,
        _ => ArchiveKind::Gnu,
    };
    /// A member's name, bytes, and the global symbols it defines and needs.
    type Member<'a> = (String, &'a [u8], Vec<Vec<u8>>, Vec<Vec<u8>>);
    let symbols = |data: &[u8]| -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let (mut defined, mut needed) = (Vec::new(), Vec::new());
        if let Ok(file) = ::object::File::parse(data) {
            for sym in file.symbols() {
                let Ok(name) = sym.name_bytes() else { continue };
                if sym.is_undefined() {
                    needed.push(name.to_vec());
                } else if sym.is_global() {
                    defined.push(name.to_vec());
                }
            }
        }
        (defined, needed)
    };
    let mut members: Vec<Member> = Vec::new();
    for m in rt.members() {
        let m = m.map_err(|e| format!("a member cannot be read: {e}"))?;
        let name = String::from_utf8_lossy(m.name()).into_owned();
        let data = m
            .data(runtime)
            .map_err(|e| format!("member `{name}` cannot be read: {e}"))?;
        let (defined, needed) = symbols(data);
        members.push((name, data, defined, needed));
    }
    // The first member defining a symbol is the one a linker takes.
    let mut definer: HashMap<&[u8], usize> = HashMap::new();
    for (i, m) in members.iter().enumerate() {
        for s in &m.2 {
            definer.entry(s.as_slice()).or_insert(i);
        }
    }
    let mut keep = HashSet::new();
    let mut need: Vec<Vec<u8>> = symbols(object).1;
    while let Some(s) = need.pop() {
        if let Some(&i) = definer.get(s.as_slice()) {
            if keep.insert(i) {
                need.extend(members[i].3.iter().cloned());
            }
        }
    }
    let mut out_members: Vec<NewArchiveMember> = members
        .iter()
        .enumerate()
        .filter(|(i, _)| keep.contains(i))
        .map(|(_, m)| {
            let data = without_debug(m.1).unwrap_or_else(|| m.1.to_vec());
            NewArchiveMember::new(data, &DEFAULT_OBJECT_READER, m.0.clone())
        })
        .collect();
    out_members.push(NewArchiveMember::new(
        object,
        &DEFAULT_OBJECT_READER,
        member.to_string(),
    ));
    let mut out = std::io::Cursor::new(Vec::new());
    ar_archive_writer::write_archive_to_stream(&mut out, &out_members, kind, false, None)
        .map_err(|e| e.to_string())?;
    Ok(out.into_inner())
}

/// A 64-bit little-endian ELF relocatable object without the contents of its debug
/// sections (`.debug_*`, not loaded, and the relocations applying to them), as `strip
/// --strip-debug` leaves it but keeping every section header (emptied), so that no
/// section index changes (symbols, groups and relocations keep theirs). None for other
/// files, which are copied as they are.
fn without_debug(data: &[u8]) -> Option<Vec<u8>> {
    const HEADER: usize = 64;
    const SHDR: usize = 64;
    const SHF_ALLOC: u64 = 2;
    const SHT_RELA: u32 = 4;
    const SHT_NOBITS: u32 = 8;
    const SHT_REL: u32 = 9;
    let u16_at = |b: &[u8], o: usize| Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |b: &[u8], o: usize| Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |b: &[u8], o: usize| Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?));
    // ELF, 64-bit, little-endian, relocatable, with 64-byte section headers.
    if data.get(..6)? != b"\x7fELF\x02\x01" || u16_at(data, 16)? != 1 || u16_at(data, 0x3A)? != 64 {
        return None;
    }
    let shoff = usize::try_from(u64_at(data, 0x28)?).ok()?;
    let mut count = usize::from(u16_at(data, 0x3C)?);
    if count == 0 {
        count = usize::try_from(u64_at(data, shoff + 32)?).ok()?;
    }
    let mut strtab = usize::from(u16_at(data, 0x3E)?);
    if strtab == 0xffff {
        strtab = usize::try_from(u32_at(data, shoff + 40)?).ok()?;
    }
    let mut headers: Vec<Vec<u8>> = (0..count)
        .map(|i| {
            data.get(shoff + i * SHDR..shoff + (i + 1) * SHDR)
                .map(<[u8]>::to_vec)
        })
        .collect::<Option<_>>()?;
    let names_at = usize::try_from(u64_at(&headers[strtab], 24)?).ok()?;
    let name = |h: &[u8]| -> Option<&[u8]> {
        let start = names_at + usize::try_from(u32_at(h, 0)?).ok()?;
        let rest = data.get(start..)?;
        Some(&rest[..rest.iter().position(|&c| c == 0)?])
    };
    let mut strip = vec![false; count];
    for (i, h) in headers.iter().enumerate() {
        strip[i] = name(h)?.starts_with(b".debug") && u64_at(h, 8)? & SHF_ALLOC == 0;
    }
    for (i, h) in headers.iter().enumerate() {
        let t = u32_at(h, 4)?;
        if (t == SHT_RELA || t == SHT_REL)
            && strip.get(usize::try_from(u32_at(h, 44)?).ok()?) == Some(&true)
        {
            strip[i] = true;
        }
    }
    if !strip.contains(&true) {
        return None;
    }
    let mut out = data.get(..HEADER)?.to_vec();
    for (i, h) in headers.iter_mut().enumerate().skip(1) {
        if strip[i] {
            h[32..40].copy_from_slice(&0u64.to_le_bytes());
        }
        let (offset, size) = (u64_at(h, 24)?, u64_at(h, 32)?);
        let align = usize::try_from(u64_at(h, 48)?.max(1)).ok()?;
        out.resize(out.len().next_multiple_of(align), 0);
        h[24..32].copy_from_slice(&(out.len() as u64).to_le_bytes());
        if u32_at(h, 4)? != SHT_NOBITS && size > 0 {
            let (o, n) = (usize::try_from(offset).ok()?, usize::try_from(size).ok()?);
            out.extend_from_slice(data.get(o..o.checked_add(n)?)?);
        }
    }
    out.resize(out.len().next_multiple_of(8), 0);
    let new_shoff = out.len() as u64;
    out[0x28..0x30].copy_from_slice(&new_shoff.to_le_bytes());
    for h in &headers {
        out.extend_from_slice(h);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_must_be_c_identifiers() {
        assert!(c_identifier("digits_mlp"));
        assert!(c_identifier("_m2"));
        assert!(!c_identifier("int"));
        assert!(!c_identifier("2m"));
        assert!(!c_identifier(""));
    }

    #[test]
    fn only_elf_objects_are_stripped() {
        assert!(without_debug(b"not an object file").is_none());
        assert!(without_debug(&[]).is_none());
    }
}
