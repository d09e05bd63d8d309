//! `kiln build`'s object file: a graph's functions compiled ahead of time by the same code
//! generator as the JIT ([`super::emit::define`]), the data the runtime needs beside them,
//! and the C entry points that hand both to the runtime.
//!
//! Symbols (all local but the entry points):
//! - `kiln_<name>_step`, `kiln_<name>_train`, `kiln_<name>_update`: the compiled
//!   functions of the evaluation graph, of the training step (or of a split step's
//!   gradient graph) and of a split step's update graph, `extern "C" fn(*const Ctx)`;
//! - `kiln_<name>_meta`, `kiln_<name>_weights`: the bytes the runtime is given;
//! - `kiln_<name>_desc`: the [`Descriptor`] pointing at them;
//! - the C API ([`ENTRIES`]): each `<name>_<entry>(args…)` returns
//!   `kiln_rt_<entry>(&desc, args…)`.

use super::emit::{self, define};
use super::plan;
use crate::exec::Bug;
use crate::ir::{Graph, NodeId};
use cranelift_codegen::ir::{types, AbiParam, InstBuilder, Type, UserFuncName};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_module::{default_libcall_names, DataDescription, DataId, Linkage, Module};
use cranelift_object::{ObjectBuilder, ObjectModule};

/// The version of the descriptor's layout, its first word: the runtime refuses another.
pub const DESCRIPTOR_VERSION: u64 = 3;

/// The descriptor a library's entry points pass to the runtime, as the runtime reads
/// it: eight pointer-sized words.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct Descriptor {
    /// [`DESCRIPTOR_VERSION`].
    pub version: u64,
    /// The compiled evaluation function.
    pub step: *const u8,
    /// The metadata (JSON) and its length in bytes.
    pub meta: *const u8,
    /// Length of `meta`.
    pub meta_len: u64,
    /// The weights (little-endian f32: parameters, then optimizer state, in order) and
    /// their length in bytes.
    pub weights: *const u8,
    /// Length of `weights`.
    pub weights_len: u64,
    /// The compiled training step (a split step's gradient function), or null for a
    /// model without one.
    pub train: *const u8,
    /// A split step's compiled update function, or null.
    pub update: *const u8,
}

/// A function to compile: the roots of a graph.
#[derive(Clone, Copy)]
pub struct Function<'a> {
    /// The graph.
    pub graph: &'a Graph,
    /// The roots its function computes.
    pub roots: &'a [NodeId],
}

/// What goes into a model's object file.
pub struct ObjectSpec<'a> {
    /// The model's name: a C identifier, the prefix of every symbol.
    pub name: &'a str,
    /// The evaluation function.
    pub predict: Function<'a>,
    /// The training step, when the model has a loss (a split step's gradient function).
    pub train: Option<Function<'a>>,
    /// A split step's update function.
    pub update: Option<Function<'a>>,
    /// The runtime's metadata.
    pub meta: &'a [u8],
    /// The weights.
    pub weights: &'a [u8],
}

/// An argument or result of an entry point.
#[derive(Clone, Copy)]
enum Arg {
    Ptr,
    I64,
    I32,
    F64,
}

/// The C API: each entry's name after the model's, its parameters, its result, and
/// whether it belongs to training. `<name>_<entry>` calls `kiln_rt_<entry>` with the
/// descriptor first.
const ENTRIES: &[(&str, &[Arg], Option<Arg>, bool)] = &[
    (
        "predict",
        &[Arg::I64, Arg::Ptr, Arg::Ptr],
        Some(Arg::I32),
        false,
    ),
    ("train_new", &[], Some(Arg::Ptr), true),
    (
        "train_step",
        &[Arg::Ptr, Arg::I64, Arg::Ptr, Arg::Ptr, Arg::Ptr],
        Some(Arg::I32),
        true,
    ),
    ("train_params", &[Arg::Ptr, Arg::Ptr], Some(Arg::I32), true),
    (
        "predict_ctx",
        &[Arg::Ptr, Arg::I64, Arg::Ptr, Arg::Ptr],
        Some(Arg::I32),
        true,
    ),
    ("train_set_lr", &[Arg::Ptr, Arg::F64], Some(Arg::I32), true),
    ("train_free", &[Arg::Ptr], None, true),
];

/// The CPU features the code generator uses on this machine (Cranelift's enabled ISA
/// flags, and whether products use fused multiply-add): code built here runs where all of
/// them are present.
pub fn cpu_features() -> Result<Vec<String>, Bug> {
    let mut features: Vec<String> = emit::isa(true)?
        .isa_flags()
        .iter()
        .filter(|v| v.as_bool() == Some(true))
        .map(|v| v.name.to_string())
        .collect();
    if emit::has_fma() {
        features.push("fused multiply-add".into());
    }
    Ok(features)
}

/// A digest of the plan of `roots` of `g`: the runtime checks that it plans the graph the
/// way the object file's code was generated for.
pub fn plan_digest(g: &Graph, roots: &[NodeId]) -> String {
    use sha2::{Digest, Sha256};
    let plan = plan::plan(g, roots);
    let digest = Sha256::digest(format!("{:?}|{:?}", plan.kinds, plan.epilogues));
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn err(e: impl std::fmt::Display) -> Bug {
    Bug::new(format!("writing the object file failed: {e}"))
}

/// The object file (in this machine's format, for its CPU).
pub fn write(spec: &ObjectSpec) -> Result<Vec<u8>, Bug> {
    let name = spec.name;
    let builder =
        ObjectBuilder::new(emit::isa(true)?, name, default_libcall_names()).map_err(err)?;
    let mut module = ObjectModule::new(builder);
    let mut function = |f: Function, what: &str| {
        let plan = plan::plan(f.graph, f.roots);
        define(
            &mut module,
            f.graph,
            &plan,
            &format!("kiln_{name}_{what}"),
            Linkage::Local,
        )
    };
    let step = function(spec.predict, "step")?;
    let train = spec.train.map(|f| function(f, "train")).transpose()?;
    let update = spec.update.map(|f| function(f, "update")).transpose()?;

    let mut blob = |what: &str, bytes: &[u8]| {
        let id = module
            .declare_data(&format!("kiln_{name}_{what}"), Linkage::Local, false, false)
            .map_err(err)?;
        let mut d = DataDescription::new();
        d.define(bytes.to_vec().into_boxed_slice());
        d.set_align(16);
        module.define_data(id, &d).map_err(err)?;
        Ok::<_, Bug>(id)
    };
    let meta = blob("meta", spec.meta)?;
    let weights = blob("weights", spec.weights)?;

    let desc = module
        .declare_data(&format!("kiln_{name}_desc"), Linkage::Local, false, false)
        .map_err(err)?;
    let mut d = DataDescription::new();
    let word = std::mem::size_of::<u64>();
    let mut bytes = vec![0u8; 8 * word];
    bytes[..word].copy_from_slice(&DESCRIPTOR_VERSION.to_ne_bytes());
    bytes[3 * word..4 * word].copy_from_slice(&(spec.meta.len() as u64).to_ne_bytes());
    bytes[5 * word..6 * word].copy_from_slice(&(spec.weights.len() as u64).to_ne_bytes());
    d.define(bytes.into_boxed_slice());
    d.set_align(word as u64);
    let f = module.declare_func_in_data(step, &mut d);
    d.write_function_addr(word as u32, f);
    let m = module.declare_data_in_data(meta, &mut d);
    d.write_data_addr(2 * word as u32, m, 0);
    let w = module.declare_data_in_data(weights, &mut d);
    d.write_data_addr(4 * word as u32, w, 0);
    for (at, f) in [(6, train), (7, update)] {
        if let Some(f) = f {
            let f = module.declare_func_in_data(f, &mut d);
            d.write_function_addr((at * word) as u32, f);
        }
    }
    module.define_data(desc, &d).map_err(err)?;

    for &(entry, params, result, training) in ENTRIES {
        if !training || train.is_some() {
            trampoline(&mut module, desc, name, entry, params, result)?;
        }
    }
    module.finish().emit().map_err(err)
}

/// Defines the entry point `<name>_<entry>(params…) -> result`, which returns
/// `kiln_rt_<entry>(&desc, params…)`.
fn trampoline(
    module: &mut ObjectModule,
    desc: DataId,
    name: &str,
    entry: &str,
    params: &[Arg],
    result: Option<Arg>,
) -> Result<(), Bug> {
    let ptr = module.target_config().pointer_type();
    let ty = |a: Arg| -> Type {
        match a {
            Arg::Ptr => ptr,
            Arg::I64 => types::I64,
            Arg::I32 => types::I32,
            Arg::F64 => types::F64,
        }
    };
    let mut sig = module.make_signature();
    sig.params
        .extend(params.iter().map(|&a| AbiParam::new(ty(a))));
    sig.returns.extend(result.map(|a| AbiParam::new(ty(a))));
    let mut rt_sig = sig.clone();
    rt_sig.params.insert(0, AbiParam::new(ptr));
    let rt = module
        .declare_function(&format!("kiln_rt_{entry}"), Linkage::Import, &rt_sig)
        .map_err(err)?;
    let id = module
        .declare_function(&format!("{name}_{entry}"), Linkage::Export, &sig)
        .map_err(err)?;
    let mut ctx = module.make_context();
    ctx.func.signature = sig;
    ctx.func.name = UserFuncName::user(0, id.as_u32());
    let mut fctx = FunctionBuilderContext::new();
    {
        let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
        let block = b.create_block();
        b.append_block_params_for_function_params(block);
        b.switch_to_block(block);
        let mut args = b.block_params(block).to_vec();
        let gv = module.declare_data_in_func(desc, b.func);
        args.insert(0, b.ins().symbol_value(ptr, gv));
        let callee = module.declare_func_in_func(rt, b.func);
        let call = b.ins().call(callee, &args);
        let results = b.inst_results(call).to_vec();
        b.ins().return_(&results);
        b.seal_all_blocks();
        b.finalize(module.target_config());
    }
    module.define_function(id, &mut ctx).map_err(err)
}
