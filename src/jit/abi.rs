//! The boundary between Rust and generated code: the context the generated function
//! reads, the functions it calls, and the call itself. All of the JIT's `unsafe` is here,
//! except the GEMM dispatch's own (in [`super::gemm`]).

use super::kernel;
use crate::exec::RunError;
use crate::ir::Graph;
use crate::ops::elementwise::{prim, Prim};
use cranelift_jit::JITModule;
use smallvec::SmallVec;
use std::cell::RefCell;

/// What a generated function receives (one pointer to this).
#[repr(C)]
pub struct Ctx {
    /// One buffer pointer per graph node (null where the node has none).
    pub bufs: *const *mut f32,
    /// The batch size.
    pub batch: i64,
    /// The kernels' view of the run.
    pub env: *const KernelEnv<'static>,
}

/// Byte offsets of [`Ctx`] fields, for the code generator.
pub const CTX_BUFS: i32 = 0;
/// Offset of `batch`.
pub const CTX_BATCH: i32 = 8;

/// What a kernel needs besides the buffers.
pub struct KernelEnv<'g> {
    /// The graph being run.
    pub graph: &'g Graph,
    /// Element counts of every node's buffer.
    pub sizes: &'g [usize],
    /// Dimensions of every node for this batch size.
    pub dims: &'g [Vec<usize>],
    /// The first error a kernel met (reported after the call returns).
    pub error: RefCell<Option<RunError>>,
    /// Threads a kernel may use.
    pub threads: usize,
}

/// Runs kernel node `node` (called from generated code; a built library's runtime
/// exports it under this name).
///
/// # Safety
///
/// `ctx` is the context [`call`] passes to the generated function, during that call.
pub unsafe extern "C" fn kiln_kernel(ctx: *const Ctx, node: i64) {
    // SAFETY: generated code passes the `Ctx` that `call` built, which outlives the call;
    // `bufs` has one entry per node, and every buffer a kernel reads or writes was
    // allocated by `call` with `sizes[n]` elements. The output buffer is an arena slot no
    // argument aliases (kernels never write external or aliased buffers).
    let (env, bufs, batch) = unsafe {
        let ctx = &*ctx;
        let env = &*ctx.env;
        (
            env,
            std::slice::from_raw_parts(ctx.bufs, env.sizes.len()),
            ctx.batch as usize,
        )
    };
    let n = node as usize;
    let node_ref = &env.graph.nodes[n];
    // SAFETY: see above; argument slices are only read while the output is written, and
    // the output never overlaps them.
    let args: SmallVec<[&[f32]; 4]> = node_ref
        .args
        .iter()
        .map(|&a| unsafe { std::slice::from_raw_parts(bufs[a], env.sizes[a]) })
        .collect();
    let out = unsafe { std::slice::from_raw_parts_mut(bufs[n], env.sizes[n]) };
    if let Err(e) = kernel::run(env.graph, n, &args, out, (batch, env.dims), env.threads) {
        env.error.borrow_mut().get_or_insert(e);
    }
}

/// The number by which generated code asks [`kiln_prim`] for a primitive, for those it
/// does not compute inline (None).
pub fn prim_code(f: Prim) -> Option<i32> {
    match f {
        Prim::Exp => Some(0),
        Prim::Expm1 => Some(1),
        Prim::Log => Some(2),
        Prim::Log1p => Some(3),
        Prim::Erf => Some(4),
        Prim::Neg | Prim::Abs | Prim::Sqrt | Prim::Recip | Prim::Tanh | Prim::Sigmoid => None,
    }
}

/// A primitive the generated code calls, computed in f64 as the interpreter does (a built
/// library's runtime exports it under this name).
pub extern "C" fn kiln_prim(code: i32, x: f32) -> f32 {
    let f = match code {
        0 => Prim::Exp,
        1 => Prim::Expm1,
        2 => Prim::Log,
        3 => Prim::Log1p,
        _ => Prim::Erf,
    };
    prim(f, f64::from(x)) as f32
}

/// The symbols generated code calls, to register with the JIT builder.
pub fn symbols() -> [(&'static str, *const u8); 2] {
    [
        ("kiln_kernel", kiln_kernel as *const u8),
        ("kiln_prim", kiln_prim as *const u8),
    ]
}

/// A compiled function and the module that owns its code (none for a function linked
/// into the program: a built library's).
pub struct Compiled {
    /// Keeps the machine code alive.
    _module: Option<JITModule>,
    /// `extern "C" fn(*const Ctx)`.
    pub func: *const u8,
}

impl Compiled {
    /// The finalized function `func` of `module`.
    pub fn new(module: JITModule, func: *const u8) -> Compiled {
        Compiled {
            _module: Some(module),
            func,
        }
    }

    /// A function compiled ahead of time and linked into the program.
    pub fn linked(f: Precompiled) -> Compiled {
        Compiled {
            _module: None,
            func: f.0,
        }
    }
}

/// A function `kiln build` compiled ahead of time, linked into the running program.
#[derive(Clone, Copy, Debug)]
pub struct Precompiled(*const u8);

impl Precompiled {
    /// The function at `func`.
    ///
    /// # Safety
    ///
    /// `func` is the function `emit::define` wrote into an object file for the graph and
    /// roots it will be run with (`Jit::precompiled`), with the plan `plan::plan` makes
    /// for them, compiled for this CPU, and linked into this program (so it lives as long
    /// as the program).
    pub unsafe fn new(func: *const u8) -> Precompiled {
        Precompiled(func)
    }
}

// SAFETY: the function is code in the program's read-only, executable image, which any
// thread may run; it keeps no state between calls (every call gets its own `Ctx`).
unsafe impl Send for Precompiled {}
// SAFETY: as for `Send`: nothing in it is ever written.
unsafe impl Sync for Precompiled {}

// SAFETY: after `finalize_definitions` the module's code and data are immutable, and
// nothing calls the module again: it only keeps the memory mapped (dropping it does not
// unmap). `func` points into that read-only, executable memory, which any thread may run;
// the function itself keeps no state between calls (every call gets its own `Ctx`).
unsafe impl Send for Compiled {}
// SAFETY: as for `Send`: neither the code nor `func` is ever written after finalizing, so
// back ends on several threads may share one compiled function.
unsafe impl Sync for Compiled {}

/// The buffer pointers of a call, kept between calls only to reuse their allocation.
#[derive(Default)]
pub struct Pointers(pub Vec<*mut f32>);

// SAFETY: the pointers are only dereferenced (by generated code and kernels) during the
// call that filled them, on the calling thread; between calls they are stale values that
// are cleared, never read, before the vector is filled again.
unsafe impl Send for Pointers {}

/// Calls a generated function.
pub fn call(func: *const u8, bufs: &[*mut f32], batch: usize, env: &KernelEnv) {
    let ctx = Ctx {
        bufs: bufs.as_ptr(),
        batch: batch as i64,
        // The generated code only passes this pointer back to `kiln_kernel` during the call.
        env: (env as *const KernelEnv).cast::<KernelEnv<'static>>(),
    };
    // SAFETY: `func` was produced by `emit` for a graph whose every node has an entry in
    // `bufs` with a buffer of `env.sizes[n]` elements (checked by the caller), with the
    // signature `extern "C" fn(*const Ctx)`; the module that owns the code is alive for
    // the duration of the call.
    unsafe {
        let f: extern "C" fn(*const Ctx) = std::mem::transmute(func);
        f(&ctx);
    }
}
