//! `kiln build`'s object file: a graph's function compiled ahead of time by the same code
//! generator as the JIT ([`super::emit::define`]), the data the runtime needs beside it,
//! and the C entry point that hands both to the runtime.
//!
//! Symbols (all local but the entry point):
//! - `kiln_<name>_step`: the compiled function, `extern "C" fn(*const Ctx)`;
//! - `kiln_<name>_meta`, `kiln_<name>_weights`: the bytes the runtime is given;
//! - `kiln_<name>_desc`: the [`Descriptor`] pointing at the three;
//! - `<name>_predict`: `int32_t (int64_t batch, const void *const inputs[], void *const
//!   outputs[])`, which returns `kiln_rt_predict(&desc, batch, inputs, outputs)`.

use super::emit::{self, define};
use super::plan;
use crate::exec::Bug;
use crate::ir::{Graph, NodeId};
use cranelift_codegen::ir::{types, AbiParam, InstBuilder, UserFuncName};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_module::{default_libcall_names, DataDescription, Linkage, Module};
use cranelift_object::{ObjectBuilder, ObjectModule};

/// The version of the descriptor's layout, its first word: the runtime refuses another.
pub const DESCRIPTOR_VERSION: u64 = 1;

/// The descriptor a library's entry point passes to the runtime, as the runtime reads
/// it: six pointer-sized words.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct Descriptor {
    /// [`DESCRIPTOR_VERSION`].
    pub version: u64,
    /// The compiled function.
    pub step: *const u8,
    /// The metadata (JSON) and its length in bytes.
    pub meta: *const u8,
    /// Length of `meta`.
    pub meta_len: u64,
    /// The weights (little-endian f32, parameters in order) and their length in bytes.
    pub weights: *const u8,
    /// Length of `weights`.
    pub weights_len: u64,
}

/// What goes into a model's object file.
pub struct ObjectSpec<'a> {
    /// The model's name: a C identifier, the prefix of every symbol.
    pub name: &'a str,
    /// The graph and the roots its function computes.
    pub graph: &'a Graph,
    /// The roots.
    pub roots: &'a [NodeId],
    /// The runtime's metadata.
    pub meta: &'a [u8],
    /// The weights.
    pub weights: &'a [u8],
}

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
    let plan = plan::plan(spec.graph, spec.roots);
    let step = define(
        &mut module,
        spec.graph,
        &plan,
        &format!("kiln_{name}_step"),
        Linkage::Local,
    )?;

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
    let mut bytes = vec![0u8; 6 * word];
    bytes[..word].copy_from_slice(&DESCRIPTOR_VERSION.to_ne_bytes());
    bytes[3 * word..4 * word].copy_from_slice(&(spec.meta.len() as u64).to_ne_bytes());
    bytes[5 * word..].copy_from_slice(&(spec.weights.len() as u64).to_ne_bytes());
    d.define(bytes.into_boxed_slice());
    d.set_align(word as u64);
    let f = module.declare_func_in_data(step, &mut d);
    d.write_function_addr(word as u32, f);
    let m = module.declare_data_in_data(meta, &mut d);
    d.write_data_addr(2 * word as u32, m, 0);
    let w = module.declare_data_in_data(weights, &mut d);
    d.write_data_addr(4 * word as u32, w, 0);
    module.define_data(desc, &d).map_err(err)?;

    // The entry point: int32_t <name>_predict(int64_t, const void *const *, void *const *).
    let ptr = module.target_config().pointer_type();
    let mut sig = module.make_signature();
    sig.params.extend([types::I64, ptr, ptr].map(AbiParam::new));
    sig.returns.push(AbiParam::new(types::I32));
    let mut rt_sig = module.make_signature();
    rt_sig
        .params
        .extend([ptr, types::I64, ptr, ptr].map(AbiParam::new));
    rt_sig.returns.push(AbiParam::new(types::I32));
    let rt = module
        .declare_function("kiln_rt_predict", Linkage::Import, &rt_sig)
        .map_err(err)?;
    let entry = module
        .declare_function(&format!("{name}_predict"), Linkage::Export, &sig)
        .map_err(err)?;
    let mut ctx = module.make_context();
    ctx.func.signature = sig;
    ctx.func.name = UserFuncName::user(0, entry.as_u32());
    let mut fctx = FunctionBuilderContext::new();
    {
        let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
        let block = b.create_block();
        b.append_block_params_for_function_params(block);
        b.switch_to_block(block);
        let params = b.block_params(block).to_vec();
        let gv = module.declare_data_in_func(desc, b.func);
        let at = b.ins().symbol_value(ptr, gv);
        let callee = module.declare_func_in_func(rt, b.func);
        let call = b.ins().call(callee, &[at, params[0], params[1], params[2]]);
        let result = b.inst_results(call)[0];
        b.ins().return_(&[result]);
        b.seal_all_blocks();
        b.finalize(module.target_config());
    }
    module.define_function(entry, &mut ctx).map_err(err)?;
    module.finish().emit().map_err(err)
}
