//! Cranelift code generation: one native function per graph and set of roots. Elementwise
//! chains become one loop each (their intermediate values stay in registers); other
//! operations are calls to kernels. Loops are top-tested and stay loops, so a network
//! compiles in milliseconds at `opt_level=none`.

use super::abi::{self, CTX_BATCH, CTX_BUFS};
use super::plan::{Kind, Plan};
use crate::exec::Bug;
use crate::ir::{Binary, Dim, Func, Graph, NodeId, Op, Shape};
use crate::ops::elementwise::{Expr, Prim};
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{
    types, AbiParam, Endianness, FuncRef, InstBuilder, MemFlagsData, Type, UserFuncName, Value,
};
use cranelift_codegen::isa::TargetIsa;
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, FuncId, Linkage, Module};
use std::collections::HashMap;

mod product;

pub use abi::Compiled;

/// A failed compilation: always Kiln's bug (a graph the checker accepted must compile).
fn err(e: impl std::fmt::Display) -> Bug {
    Bug::new(format!("JIT compilation failed: {e}"))
}

/// The target this machine compiles for, with its CPU's features (so code runs on the
/// CPU family that compiled it), without optimization passes. `pic`: position-independent
/// code, for an object file that links into any C program (PIE executables included);
/// the JIT's code lives at fixed addresses.
pub fn isa(pic: bool) -> Result<std::sync::Arc<dyn TargetIsa>, Bug> {
    let mut flags = settings::builder();
    flags.set("opt_level", "none").map_err(err)?;
    flags
        .set(
            "enable_verifier",
            if cfg!(debug_assertions) {
                "true"
            } else {
                "false"
            },
        )
        .map_err(err)?;
    flags.set("use_colocated_libcalls", "false").map_err(err)?;
    flags
        .set("is_pic", if pic { "true" } else { "false" })
        .map_err(err)?;
    cranelift_native::builder()
        .map_err(err)?
        .finish(settings::Flags::new(flags))
        .map_err(err)
}

/// A JIT module for this machine, with the runtime's symbols registered.
fn module() -> Result<JITModule, Bug> {
    let mut builder = JITBuilder::with_isa(isa(false)?, default_libcall_names());
    for (name, ptr) in abi::symbols() {
        builder.symbol(name, ptr);
    }
    Ok(JITModule::new(builder))
}

/// Compiles `g` as planned.
pub fn compile(g: &Graph, plan: &Plan) -> Result<Compiled, Bug> {
    let mut module = module()?;
    let id = define(&mut module, g, plan, "step", Linkage::Local)?;
    module.finalize_definitions().map_err(err)?;
    let func = module.get_finalized_function(id);
    Ok(Compiled::new(module, func))
}

/// Declares and defines in `module` the function `name` computing `g` as planned:
/// `extern "C" fn(*const Ctx)`, calling the runtime's `kiln_kernel` and `kiln_prim`
/// (imported). The JIT and `kiln build`'s object file share it.
pub fn define<M: Module>(
    module: &mut M,
    g: &Graph,
    plan: &Plan,
    name: &str,
    linkage: Linkage,
) -> Result<FuncId, Bug> {
    let ptr = module.target_config().pointer_type();
    let mut sig = module.make_signature();
    sig.params.push(AbiParam::new(ptr));
    let id = module.declare_function(name, linkage, &sig).map_err(err)?;
    let mut kernel_sig = module.make_signature();
    kernel_sig
        .params
        .extend([AbiParam::new(ptr), AbiParam::new(types::I64)]);
    let kernel = module
        .declare_function("kiln_kernel", Linkage::Import, &kernel_sig)
        .map_err(err)?;
    let mut f_sig = module.make_signature();
    f_sig
        .params
        .extend([AbiParam::new(types::I32), AbiParam::new(types::F32)]);
    f_sig.returns.push(AbiParam::new(types::F32));
    let prim = module
        .declare_function("kiln_prim", Linkage::Import, &f_sig)
        .map_err(err)?;

    let mut ctx = module.make_context();
    ctx.func.signature = sig;
    ctx.func.name = UserFuncName::user(0, id.as_u32());
    let mut fctx = FunctionBuilderContext::new();
    {
        let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
        let entry = b.create_block();
        b.append_block_params_for_function_params(entry);
        b.switch_to_block(entry);
        let c = b.block_params(entry)[0];
        let flags = MemFlagsData::trusted();
        let bufs = b.ins().load(ptr, flags, c, CTX_BUFS);
        let batch = b.ins().load(types::I64, flags, c, CTX_BATCH);
        let funcs = Funcs {
            kernel: module.declare_func_in_func(kernel, b.func),
            prim: module.declare_func_in_func(prim, b.func),
        };
        let mut e = Emitter {
            b,
            g,
            plan,
            bufs,
            batch,
            funcs,
            hoisted: HashMap::new(),
            stores: Vec::new(),
            pointers: HashMap::new(),
            loaded: HashMap::new(),
            split: 0,
            fma: has_fma(),
        };
        for n in 0..g.nodes.len() {
            match plan.kinds[n] {
                Kind::Kernel => {
                    let id = e.b.ins().iconst(types::I64, n as i64);
                    e.b.ins().call(e.funcs.kernel, &[c, id]);
                }
                Kind::Loop => e.emit_loop(n),
                Kind::Product => e.emit_product(n),
                Kind::Gemv => e.emit_gemv(n, c),
                Kind::ColumnSum => e.emit_column_sum(n),
                _ => {}
            }
        }
        e.b.ins().return_(&[]);
        e.b.seal_all_blocks();
        e.b.finalize(module.target_config());
    }
    module.define_function(id, &mut ctx).map_err(err)?;
    module.clear_context(&mut ctx);
    Ok(id)
}

struct Funcs {
    kernel: FuncRef,
    prim: FuncRef,
}

struct Emitter<'a, 'f> {
    b: FunctionBuilder<'f>,
    g: &'a Graph,
    plan: &'a Plan,
    bufs: Value,
    batch: Value,
    funcs: Funcs,
    /// Loop-invariant operands of the current loop: scalar value and its splat.
    hoisted: HashMap<NodeId, (Value, Option<Value>)>,
    /// Values of [`Kind::Stored`] nodes computed for the current element, to be stored
    /// once the loop's own value is.
    stores: Vec<(NodeId, Value)>,
    /// Buffer pointers of the current loop's row, loaded once per row.
    pointers: HashMap<NodeId, Value>,
    /// Operands already loaded for the current element (each is loaded once).
    loaded: HashMap<NodeId, Value>,
    /// The current loop's first column axis: rows are the axes before it.
    split: usize,
    /// The machine has fused multiply-add (generated products use it).
    fma: bool,
}

/// Whether this machine has fused multiply-add instructions (Cranelift's host flags
/// enable them when it does).
pub fn has_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        cfg!(target_arch = "aarch64")
    }
}

/// An elementwise loop being emitted: its node, shape, operands with how each is read,
/// the columns per row, whether it runs on vectors, and its first column axis.
struct LoopOf {
    n: NodeId,
    shape: Shape,
    leaves: Vec<(NodeId, Access)>,
    /// The [`Kind::Stored`] nodes computed in the loop.
    stored: Vec<NodeId>,
    cols: u64,
    simd: bool,
    split: usize,
}

/// A loop position: flat index, row (the axes before the split) and column (the rest).
#[derive(Clone, Copy)]
struct Ix {
    flat: Value,
    row: Value,
    col: Value,
}

/// Row-major strides of the fixed dimensions after each axis.
fn strides(s: &Shape) -> Vec<u64> {
    let mut st = vec![1u64; s.rank()];
    for d in (0..s.rank().saturating_sub(1)).rev() {
        st[d] = st[d + 1] * s.0[d + 1].size().unwrap_or(1);
    }
    st
}

impl Emitter<'_, '_> {
    fn flags() -> MemFlagsData {
        MemFlagsData::trusted()
    }

    /// The buffer pointer of node `n`.
    fn buffer(&mut self, n: NodeId) -> Value {
        if let Some(&p) = self.pointers.get(&n) {
            return p;
        }
        let ptr = self.b.func.dfg.value_type(self.bufs);
        self.b
            .ins()
            .load(ptr, Self::flags(), self.bufs, (n * 8) as i32)
    }

    /// Element count of `s` as a run-time value.
    fn count(&mut self, s: &Shape) -> Value {
        let fixed: u64 = s.0.iter().filter_map(|d| d.size()).product();
        let k = self.b.ins().iconst(types::I64, fixed as i64);
        if s.0.contains(&Dim::Batch) {
            self.b.ins().imul(k, self.batch)
        } else {
            k
        }
    }

    /// Emits `for i in lo..hi { body(i) }` (top-tested) and returns to the block after it.
    fn counted(&mut self, lo: Value, hi: Value, step: i64, body: impl FnOnce(&mut Self, Value)) {
        let header = self.b.create_block();
        let inner = self.b.create_block();
        let exit = self.b.create_block();
        self.b.append_block_param(header, types::I64);
        self.b.ins().jump(header, &[lo.into()]);
        self.b.switch_to_block(header);
        let i = self.b.block_params(header)[0];
        // The body needs `step` elements from i: i + step <= hi.
        let end = self.b.ins().iadd_imm_u(i, step);
        let more = self.b.ins().icmp(IntCC::SignedLessThanOrEqual, end, hi);
        self.b.ins().brif(more, inner, &[], exit, &[]);
        self.b.switch_to_block(inner);
        body(self, i);
        let next = self.b.ins().iadd_imm_u(i, step);
        self.b.ins().jump(header, &[next.into()]);
        self.b.switch_to_block(exit);
    }

    /// `out[i] = value(n, i)` over the shape, as rows × columns, split at the first axis
    /// where every operand is either the same as the result over the column axes or
    /// constant over them: so a bias `[F]` over `[N, F]` is indexed by the column, a
    /// channel bias `[C, 1, 1]` over `[N, C, H, W]` is loaded once per row of `H·W`, and
    /// no element needs a division. Loop-invariant operands are loaded once before the
    /// loops, per-row ones once per row; the inner loop runs on f32x4 vectors when every
    /// operation of the group has a vector form, with a scalar tail.
    fn emit_loop(&mut self, n: NodeId) {
        let shape = &self.g.nodes[n].shape;
        let ids = self.leaves(n);
        let split = split_axis(shape, ids.iter().map(|&a| &self.g.nodes[a].shape));
        let l = self.loop_setup(n, split);
        let count = self.count(&l.shape);
        let rows = self.b.ins().udiv_imm_u(count, l.cols as i64);
        let zero = self.b.ins().iconst(types::I64, 0);
        self.counted(zero, rows, 1, |e, row| e.loop_row(&l, row));
    }

    /// Prepares the loop of `n` with column axes from `split`: its operands and how it
    /// reads them; loads the loop-invariant ones.
    fn loop_setup(&mut self, n: NodeId, split: usize) -> LoopOf {
        let shape = self.g.nodes[n].shape.clone();
        let ids = self.leaves(n);
        self.split = split;
        let cols: u64 = shape.0[self.split.min(shape.rank())..]
            .iter()
            .map(|d| d.size().unwrap_or(1))
            .product::<u64>()
            .max(1);
        let leaves: Vec<(NodeId, Access)> = ids
            .iter()
            .map(|&a| (a, access(&self.g.nodes[a].shape, &shape, self.split)))
            .collect();
        let simd = cols >= LANES
            && self.vectorizable(n)
            && leaves.iter().all(|(_, a)| *a != Access::General);
        self.hoisted.clear();
        for &(leaf, access) in &leaves {
            if access == Access::Scalar {
                let zero = self.b.ins().iconst(types::I64, 0);
                let v = self.load_at(leaf, zero, types::F32);
                self.hoist(leaf, v, simd);
            }
        }
        let stored = self
            .plan
            .fused_into(self.g, n)
            .into_iter()
            .filter(|&m| self.plan.kinds[m] == Kind::Stored)
            .collect();
        LoopOf {
            n,
            shape,
            leaves,
            stored,
            cols,
            simd,
            split,
        }
    }

    /// One row of the loop `l`: per-row operands loaded once, then the columns in f32x4
    /// vectors and a scalar tail.
    fn loop_row(&mut self, l: &LoopOf, row: Value) {
        self.split = l.split;
        let (n, shape, cols, simd) = (l.n, &l.shape, l.cols, l.simd);
        for &(leaf, access) in &l.leaves {
            if access == Access::Row {
                let s = self.g.nodes[leaf].shape.clone();
                let offset = self.row_offset(&s, shape, row);
                let v = self.load_at(leaf, offset, types::F32);
                self.hoist(leaf, v, simd);
            }
        }
        // The pointers the columns use (scalar and per-row operands are hoisted).
        let out = self.buffer(n);
        let mut pointers = HashMap::from([(n, out)]);
        let per_column = l
            .leaves
            .iter()
            .filter(|(_, access)| !matches!(access, Access::Scalar | Access::Row))
            .map(|(m, _)| m);
        for &m in per_column.chain(&l.stored) {
            let p = self.buffer(m);
            pointers.insert(m, p);
        }
        self.pointers = pointers;
        let base = self.b.ins().imul_imm_u(row, cols as i64);
        let zero = self.b.ins().iconst(types::I64, 0);
        let width = self.b.ins().iconst(types::I64, cols as i64);
        let vec_end = self
            .b
            .ins()
            .iconst(types::I64, (cols - cols % LANES) as i64);
        let body = |e: &mut Self, col: Value, lanes: Type| {
            let flat = e.b.ins().iadd(base, col);
            let ix = Ix { flat, row, col };
            let v = e.value(n, ix, shape, true, lanes);
            // Stored after every load of the element: an update written in place may be
            // read by the same loop.
            let addr = e.address(out, flat);
            e.b.ins().store(unaligned(), v, addr, 0);
            for (s, v) in std::mem::take(&mut e.stores) {
                let base = e.buffer(s);
                let addr = e.address(base, flat);
                e.b.ins().store(unaligned(), v, addr, 0);
            }
            // (The next element, or code after the loop, loads afresh.)
            e.loaded.clear();
        };
        let tail_start = if simd {
            self.counted(zero, vec_end, LANES as i64, |e, col| {
                body(e, col, types::F32X4)
            });
            vec_end
        } else {
            zero
        };
        self.counted(tail_start, width, 1, |e, col| body(e, col, types::F32));
        self.pointers.clear();
    }

    fn hoist(&mut self, n: NodeId, v: Value, simd: bool) {
        let vector = simd.then(|| self.b.ins().splat(types::F32X4, v));
        self.hoisted.insert(n, (v, vector));
    }

    /// The operands a loop loads (through its fused nodes).
    fn leaves(&self, n: NodeId) -> Vec<NodeId> {
        let mut out: Vec<NodeId> = Vec::new();
        let mut stack = self.g.nodes[n].args.clone();
        while let Some(a) = stack.pop() {
            match &self.g.nodes[a].op {
                Op::Const(_) => {}
                _ if self.plan.inside(a) => stack.extend(&self.g.nodes[a].args),
                _ => {
                    if !out.contains(&a) {
                        out.push(a);
                    }
                }
            }
        }
        out
    }

    /// The offset in an operand of shape `s`, constant over the column axes, of row `row`
    /// of a loop over `shape`.
    fn row_offset(&mut self, s: &Shape, shape: &Shape, row: Value) -> Value {
        let lead = Shape::new(shape.0[..self.split].to_vec());
        let pad = shape.rank() - s.rank();
        let own = Shape::new(
            (0..self.split)
                .map(|d| d.checked_sub(pad).map_or(Dim::Fixed(1), |k| s.0[k]))
                .collect(),
        );
        if own == lead {
            return row;
        }
        self.general_offset(&own, &lead, row)
    }

    /// True when every operation computed in the loop of `n` has an f32x4 form.
    fn vectorizable(&self, n: NodeId) -> bool {
        let mut stack = vec![n];
        while let Some(m) = stack.pop() {
            let ok = match &self.g.nodes[m].op {
                Op::Map(f) => inline(&f.def().f),
                Op::MapGrad(f) => inline(&f.def().df),
                Op::Binary(_) => true,
                _ => true,
            };
            if !ok {
                return false;
            }
            for &a in &self.g.nodes[m].args {
                if self.plan.inside(a) {
                    stack.push(a);
                }
            }
        }
        true
    }

    fn address(&mut self, base: Value, index: Value) -> Value {
        let byte = self.b.ins().ishl_imm_u(index, 2);
        self.b.ins().iadd(base, byte)
    }

    /// Loads `lanes` values of node `n` from element `index` of its buffer.
    fn load_at(&mut self, n: NodeId, index: Value, lanes: Type) -> Value {
        let base = self.buffer(n);
        let addr = self.address(base, index);
        self.b.ins().load(lanes, unaligned(), addr, 0)
    }

    /// The value of node `n` at position `i` of a loop over `shape`. `compute` is true for
    /// the loop's own node (computed here even though it owns a buffer).
    fn value(&mut self, n: NodeId, i: Ix, shape: &Shape, compute: bool, lanes: Type) -> Value {
        let node = &self.g.nodes[n];
        match (&node.op, self.plan.kinds[n]) {
            (Op::Const(c), _) => {
                let v = self.b.ins().f32const(*c as f32);
                self.widen(v, lanes)
            }
            (_, Kind::Fused) => self.compute(n, i, shape, lanes),
            (_, Kind::Stored) => {
                let v = self.compute(n, i, shape, lanes);
                self.stores.push((n, v));
                v
            }
            (_, Kind::Loop | Kind::Epilogue) if compute => self.compute(n, i, shape, lanes),
            _ => self.load(n, i, shape, lanes),
        }
    }

    fn widen(&mut self, v: Value, lanes: Type) -> Value {
        if lanes == types::F32 {
            v
        } else {
            self.b.ins().splat(lanes, v)
        }
    }

    /// Node `n`'s element(s) that broadcast to position `ix` of `shape`.
    fn load(&mut self, n: NodeId, ix: Ix, shape: &Shape, lanes: Type) -> Value {
        if let Some(&(scalar, vector)) = self.hoisted.get(&n) {
            return match (lanes == types::F32, vector) {
                (false, Some(v)) => v,
                (false, None) => self.b.ins().splat(lanes, scalar),
                (true, _) => scalar,
            };
        }
        if let Some(&v) = self.loaded.get(&n) {
            return v;
        }
        let s = self.g.nodes[n].shape.clone();
        let offset = match access(&s, shape, self.split) {
            Access::Flat => ix.flat,
            Access::Col => ix.col,
            Access::Row => self.row_offset(&s, shape, ix.row),
            Access::Scalar => self.b.ins().iconst(types::I64, 0),
            Access::General => self.general_offset(&s, shape, ix.flat),
        };
        let v = self.load_at(n, offset, lanes);
        self.loaded.insert(n, v);
        v
    }

    /// The offset in an operand of shape `s` of flat index `i` of `shape` (broadcasting,
    /// aligned at the right): each loop index contributes where the operand is not 1.
    fn general_offset(&mut self, s: &Shape, shape: &Shape, i: Value) -> Value {
        let (so, sn) = (strides(shape), strides(s));
        let pad = shape.rank() - s.rank();
        let mut acc = self.b.ins().iconst(types::I64, 0);
        for (d, (&stride, dim)) in so.iter().zip(&shape.0).enumerate() {
            let Some(nd) = d.checked_sub(pad) else {
                continue;
            };
            if s.0[nd] == Dim::Fixed(1) {
                continue;
            }
            let q = self.b.ins().udiv_imm_u(i, stride as i64);
            let idx = match (d, dim.size()) {
                (0, _) | (_, None) => q,
                (_, Some(dim)) => self.b.ins().urem_imm_u(q, dim as i64),
            };
            let term = self.b.ins().imul_imm_u(idx, sn[nd] as i64);
            acc = self.b.ins().iadd(acc, term);
        }
        acc
    }

    fn compute(&mut self, n: NodeId, i: Ix, shape: &Shape, lanes: Type) -> Value {
        let node = &self.g.nodes[n];
        let args = node.args.clone();
        match node.op.clone() {
            Op::Map(f) => {
                let x = self.value(args[0], i, shape, false, lanes);
                self.map(f, x, lanes)
            }
            Op::MapGrad(f) => {
                let x = self.value(args[0], i, shape, false, lanes);
                let g = self.value(args[1], i, shape, false, lanes);
                self.map_grad(f, x, g, lanes)
            }
            Op::Binary(op) => {
                let a = self.value(args[0], i, shape, false, lanes);
                let c = self.value(args[1], i, shape, false, lanes);
                self.binary(op, a, c, lanes)
            }
            other => unreachable!("not elementwise: {other}"),
        }
    }

    fn constant(&mut self, v: f32, lanes: Type) -> Value {
        let c = self.b.ins().f32const(v);
        self.widen(c, lanes)
    }

    /// `cond ? yes : no` for scalars or lane-wise for vectors.
    fn choose(&mut self, cond: Value, yes: Value, no: Value, lanes: Type) -> Value {
        if lanes == types::F32 {
            self.b.ins().select(cond, yes, no)
        } else {
            let mask = self.b.ins().bitcast(
                lanes,
                MemFlagsData::new().with_endianness(Endianness::Little),
                cond,
            );
            self.b.ins().bitselect(mask, yes, no)
        }
    }

    fn select_gt0(&mut self, x: Value, yes: Value, no: Value, lanes: Type) -> Value {
        let z = self.constant(0.0, lanes);
        let c = self.b.ins().fcmp(FloatCC::GreaterThan, x, z);
        self.choose(c, yes, no, lanes)
    }

    /// A primitive computed by the runtime (scalar loops only).
    fn call(&mut self, code: i32, x: Value) -> Value {
        let code = self.b.ins().iconst(types::I32, i64::from(code));
        let call = self.b.ins().call(self.funcs.prim, &[code, x]);
        self.b.inst_results(call)[0]
    }

    /// eˣ in f32 for sigmoid and tanh: x clamped to [−87.3, 88.3] (so the result is
    /// finite and normal), x = k·ln 2 + r with |r| ≤ ln 2 / 2 (Cody–Waite), Cephes' degree-6
    /// polynomial for eʳ, and 2ᵏ built in the exponent bits: within 2 ulp of eˣ.
    fn exp_clamped(&mut self, x: Value, lanes: Type) -> Value {
        let (lo, hi) = (self.constant(-87.3, lanes), self.constant(88.3, lanes));
        let x = self.b.ins().fmax(x, lo);
        let x = self.b.ins().fmin(x, hi);
        let log2e = self.constant(std::f32::consts::LOG2_E, lanes);
        let t = self.b.ins().fmul(x, log2e);
        let k = self.b.ins().nearest(t);
        let (c1, c2) = (
            self.constant(6.933594e-01, lanes),
            self.constant(-2.1219444e-04, lanes),
        );
        let kc1 = self.b.ins().fmul(k, c1);
        let r = self.b.ins().fsub(x, kc1);
        let kc2 = self.b.ins().fmul(k, c2);
        let r = self.b.ins().fsub(r, kc2);
        let coeffs = [
            1.9875691e-04,
            1.3981999e-03,
            8.333452e-03,
            4.1665796e-02,
            1.6666666e-01,
            5.0e-01,
        ];
        let mut p = self.constant(coeffs[0], lanes);
        for c in &coeffs[1..] {
            let pr = self.b.ins().fmul(p, r);
            let c = self.constant(*c, lanes);
            p = self.b.ins().fadd(pr, c);
        }
        let r2 = self.b.ins().fmul(r, r);
        let pr2 = self.b.ins().fmul(p, r2);
        let one = self.constant(1.0, lanes);
        let y = self.b.ins().fadd(pr2, r);
        let y = self.b.ins().fadd(y, one);
        // 2ᵏ: (k + 127) << 23 as the bits of an f32.
        let ints = if lanes == types::F32 {
            types::I32
        } else {
            types::I32X4
        };
        let ki = self.b.ins().fcvt_to_sint_sat(ints, k);
        let bias = self.b.ins().iconst(types::I32, 127);
        let bias = if lanes == types::F32 {
            bias
        } else {
            self.b.ins().splat(ints, bias)
        };
        let e = self.b.ins().iadd(ki, bias);
        let e = self.b.ins().ishl_imm_u(e, 23);
        let scale = self.b.ins().bitcast(
            lanes,
            MemFlagsData::new().with_endianness(Endianness::Little),
            e,
        );
        self.b.ins().fmul(y, scale)
    }

    /// 1 / (1 + e⁻ˣ).
    fn sigmoid(&mut self, x: Value, lanes: Type) -> Value {
        let nx = self.b.ins().fneg(x);
        let e = self.exp_clamped(nx, lanes);
        let one = self.constant(1.0, lanes);
        let d = self.b.ins().fadd(one, e);
        self.b.ins().fdiv(one, d)
    }

    /// tanh x: Cephes' odd polynomial below |x| = 0.625 (where 1 − 2/(e²ˣ + 1) would
    /// cancel), else ±(1 − 2/(e^{2|x|} + 1)).
    fn tanh(&mut self, x: Value, lanes: Type) -> Value {
        let z = self.b.ins().fmul(x, x);
        let coeffs = [
            -5.7049887e-03,
            2.063909e-02,
            -5.3739715e-02,
            1.3331442e-01,
            -3.333328e-01,
        ];
        let mut p = self.constant(coeffs[0], lanes);
        for c in &coeffs[1..] {
            let pz = self.b.ins().fmul(p, z);
            let c = self.constant(*c, lanes);
            p = self.b.ins().fadd(pz, c);
        }
        let pz = self.b.ins().fmul(p, z);
        let pzx = self.b.ins().fmul(pz, x);
        let small = self.b.ins().fadd(pzx, x);
        let ax = self.b.ins().fabs(x);
        let two_ax = self.b.ins().fadd(ax, ax);
        let e = self.exp_clamped(two_ax, lanes);
        let one = self.constant(1.0, lanes);
        let two = self.constant(2.0, lanes);
        let d = self.b.ins().fadd(e, one);
        let q = self.b.ins().fdiv(two, d);
        let large = self.b.ins().fsub(one, q);
        // The sign of x (fcopysign has no f32x4 lowering on x64).
        let neg = self.b.ins().fneg(large);
        let zero = self.constant(0.0, lanes);
        let below = self.b.ins().fcmp(FloatCC::LessThan, x, zero);
        let large = self.choose(below, neg, large, lanes);
        let limit = self.constant(0.625, lanes);
        let is_small = self.b.ins().fcmp(FloatCC::LessThan, ax, limit);
        self.choose(is_small, small, large, lanes)
    }

    /// `f(x)`: the function's expression over the primitives.
    fn map(&mut self, f: Func, x: Value, lanes: Type) -> Value {
        self.expr(&f.def().f, x, &f.p, lanes)
    }

    /// `g · f′(x)`, with `g` pushed into the branches of the derivative so that a
    /// piecewise-constant one (relu's) selects instead of multiplying.
    fn map_grad(&mut self, f: Func, x: Value, g: Value, lanes: Type) -> Value {
        self.scaled(&f.def().df, x, g, &f.p, lanes)
    }

    /// `g · e(x)`.
    fn scaled(&mut self, e: &Expr, x: Value, g: Value, p: &[f64; 2], lanes: Type) -> Value {
        match e {
            Expr::K(c) if *c == 1.0 => g,
            Expr::K(c) if *c == -1.0 => self.b.ins().fneg(g),
            Expr::K(c) if *c == 0.0 => self.constant(0.0, lanes),
            Expr::IfPos(c, a, b) => {
                let c = self.expr(c, x, p, lanes);
                let a = self.scaled(a, x, g, p, lanes);
                let b = self.scaled(b, x, g, p, lanes);
                self.select_gt0(c, a, b, lanes)
            }
            _ => {
                let d = self.expr(e, x, p, lanes);
                self.b.ins().fmul(g, d)
            }
        }
    }

    /// The value of `e` at `x` with parameters `p`.
    fn expr(&mut self, e: &Expr, x: Value, p: &[f64; 2], lanes: Type) -> Value {
        match e {
            Expr::X => x,
            Expr::K(c) => self.constant(*c as f32, lanes),
            Expr::P(k) => self.constant(p[*k] as f32, lanes),
            Expr::Un(f, a) => {
                let a = self.expr(a, x, p, lanes);
                self.prim(*f, a, lanes)
            }
            Expr::Bin(f, a, b) => {
                let a = self.expr(a, x, p, lanes);
                let b = self.expr(b, x, p, lanes);
                self.binary(*f, a, b, lanes)
            }
            Expr::IfPos(c, a, b) => {
                let c = self.expr(c, x, p, lanes);
                let a = self.expr(a, x, p, lanes);
                let b = self.expr(b, x, p, lanes);
                self.select_gt0(c, a, b, lanes)
            }
        }
    }

    /// A primitive: inline (with a vector form), or a call to the runtime for those
    /// [`abi::prim_code`] numbers (scalar loops only; see [`inline`]).
    fn prim(&mut self, f: Prim, a: Value, lanes: Type) -> Value {
        match f {
            Prim::Neg => self.b.ins().fneg(a),
            Prim::Abs => self.b.ins().fabs(a),
            Prim::Sqrt => self.b.ins().sqrt(a),
            Prim::Recip => {
                let one = self.constant(1.0, lanes);
                self.b.ins().fdiv(one, a)
            }
            Prim::Sigmoid => self.sigmoid(a, lanes),
            Prim::Tanh => self.tanh(a, lanes),
            Prim::Exp | Prim::Expm1 | Prim::Log | Prim::Log1p | Prim::Erf => {
                let code = abi::prim_code(f).unwrap_or_default();
                self.call(code, a)
            }
        }
    }

    fn binary(&mut self, op: Binary, a: Value, c: Value, lanes: Type) -> Value {
        match op {
            Binary::Add => self.b.ins().fadd(a, c),
            Binary::Sub => self.b.ins().fsub(a, c),
            Binary::Mul => self.b.ins().fmul(a, c),
            Binary::Div => self.b.ins().fdiv(a, c),
            // As f64::max/min: a NaN operand yields the other one.
            Binary::Max | Binary::Min => {
                let cc = if op == Binary::Max {
                    FloatCC::GreaterThan
                } else {
                    FloatCC::LessThan
                };
                let better = self.b.ins().fcmp(cc, a, c);
                let c_nan = self.b.ins().fcmp(FloatCC::Unordered, c, c);
                let pick_a = self.b.ins().bor(better, c_nan);
                self.choose(pick_a, a, c, lanes)
            }
            Binary::Eq => {
                let eq = self.b.ins().fcmp(FloatCC::Equal, a, c);
                let (one, z) = (self.constant(1.0, lanes), self.constant(0.0, lanes));
                self.choose(eq, one, z, lanes)
            }
        }
    }
}

/// Lanes of the vector loops.
const LANES: u64 = 4;

/// Loads and stores that may be unaligned (vectors start at any element).
fn unaligned() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

/// How a loop over `shape` indexes an operand of shape `s`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    /// The same shape: the loop's flat index.
    Flat,
    /// One row broadcast to every row (a bias): the column index.
    Col,
    /// One value per row: the row index.
    Row,
    /// One value: loaded once.
    Scalar,
    /// Anything else: computed from the flat index.
    General,
}

/// How a loop over `shape`, with column axes from `split`, indexes an operand of shape `s`.
fn access(s: &Shape, shape: &Shape, split: usize) -> Access {
    if s == shape {
        return Access::Flat;
    }
    if s.0.iter().all(|d| *d == Dim::Fixed(1)) {
        return Access::Scalar;
    }
    let r = shape.rank();
    if r == 0 || s.rank() > r || split >= r {
        return Access::General;
    }
    let pad = r - s.rank();
    let aligned = |d: usize| d.checked_sub(pad).map_or(Dim::Fixed(1), |k| s.0[k]);
    let one = |d: usize| aligned(d) == Dim::Fixed(1);
    if (split..r).all(|d| aligned(d) == shape.0[d]) && (0..split).all(one) {
        return Access::Col;
    }
    if (split..r).all(one) {
        return Access::Row;
    }
    Access::General
}

/// The first axis from which the loop over `shape` treats the axes as columns: the
/// smallest (longest rows of columns) at which no operand needs general indexing, with
/// fixed column sizes; the last axis when there is none.
fn split_axis<'s>(shape: &Shape, operands: impl Iterator<Item = &'s Shape> + Clone) -> usize {
    let r = shape.rank();
    let last = r.saturating_sub(1);
    (1..r)
        .filter(|&k| shape.0[k..].iter().all(|d| d.size().is_some()))
        .find(|&k| {
            operands
                .clone()
                .all(|s| access(s, shape, k) != Access::General)
        })
        .unwrap_or(last)
}

/// Whether every primitive of `e` has an inline vector form (the others call the runtime).
fn inline(e: &Expr) -> bool {
    match e {
        Expr::X | Expr::K(_) | Expr::P(_) => true,
        Expr::Un(f, a) => abi::prim_code(*f).is_none() && inline(a),
        Expr::Bin(_, a, b) => inline(a) && inline(b),
        Expr::IfPos(c, a, b) => inline(c) && inline(a) && inline(b),
    }
}
