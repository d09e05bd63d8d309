//! Cranelift code generation: one native function per graph and set of roots. Elementwise
//! chains become one loop each (their intermediate values stay in registers); other
//! operations are calls to kernels. Loops are top-tested and stay loops, so a network
//! compiles in milliseconds at `opt_level=none`.

use super::abi::{self, func_code, CTX_BATCH, CTX_BUFS};
use super::plan::{Kind, Plan};
use crate::ir::{Binary, Dim, Func, Graph, NodeId, Op, Shape};
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{
    types, AbiParam, FuncRef, InstBuilder, MemFlagsData, UserFuncName, Value,
};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, Linkage, Module};

/// A compiled function and the module that owns its code.
pub struct Compiled {
    /// Keeps the machine code alive.
    _module: JITModule,
    /// `extern "C" fn(*const Ctx)`.
    pub func: *const u8,
}

/// Why compilation failed: always an internal error (a graph the checker accepted must
/// compile).
#[derive(Debug)]
pub struct CompileError(pub String);

fn err(e: impl std::fmt::Display) -> CompileError {
    CompileError(e.to_string())
}

/// A JIT module for this machine, with the runtime's symbols registered.
fn module() -> Result<JITModule, CompileError> {
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
    flags.set("is_pic", "false").map_err(err)?;
    let isa = cranelift_native::builder()
        .map_err(err)?
        .finish(settings::Flags::new(flags))
        .map_err(err)?;
    let mut builder = JITBuilder::with_isa(isa, default_libcall_names());
    for (name, ptr) in abi::symbols() {
        builder.symbol(name, ptr);
    }
    Ok(JITModule::new(builder))
}

/// Compiles `g` as planned.
pub fn compile(g: &Graph, plan: &Plan) -> Result<Compiled, CompileError> {
    let mut module = module()?;
    let ptr = module.target_config().pointer_type();
    let mut sig = module.make_signature();
    sig.params.push(AbiParam::new(ptr));
    let id = module
        .declare_function("step", Linkage::Local, &sig)
        .map_err(err)?;

    let mut kernel_sig = module.make_signature();
    kernel_sig
        .params
        .extend([AbiParam::new(ptr), AbiParam::new(types::I64)]);
    let kernel = module
        .declare_function("kiln_kernel", Linkage::Import, &kernel_sig)
        .map_err(err)?;
    let mut f_sig = module.make_signature();
    f_sig.params.extend([
        AbiParam::new(types::I32),
        AbiParam::new(types::F32),
        AbiParam::new(types::F32),
    ]);
    f_sig.returns.push(AbiParam::new(types::F32));
    let apply = module
        .declare_function("kiln_apply", Linkage::Import, &f_sig)
        .map_err(err)?;
    let deriv = module
        .declare_function("kiln_derivative", Linkage::Import, &f_sig)
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
            apply: module.declare_func_in_func(apply, b.func),
            deriv: module.declare_func_in_func(deriv, b.func),
        };
        let mut e = Emitter {
            b,
            g,
            plan,
            bufs,
            batch,
            funcs,
        };
        for n in 0..g.nodes.len() {
            match plan.kinds[n] {
                Kind::Kernel => {
                    let id = e.b.ins().iconst(types::I64, n as i64);
                    e.b.ins().call(e.funcs.kernel, &[c, id]);
                }
                Kind::Loop => e.emit_loop(n),
                _ => {}
            }
        }
        e.b.ins().return_(&[]);
        e.b.seal_all_blocks();
        e.b.finalize(module.target_config());
    }
    module.define_function(id, &mut ctx).map_err(err)?;
    module.clear_context(&mut ctx);
    module.finalize_definitions().map_err(err)?;
    let func = module.get_finalized_function(id);
    Ok(Compiled {
        _module: module,
        func,
    })
}

struct Funcs {
    kernel: FuncRef,
    apply: FuncRef,
    deriv: FuncRef,
}

struct Emitter<'a, 'f> {
    b: FunctionBuilder<'f>,
    g: &'a Graph,
    plan: &'a Plan,
    bufs: Value,
    batch: Value,
    funcs: Funcs,
}

/// A loop position: flat index, row (all dimensions but the last) and column.
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
    fn counted(&mut self, lo: Value, hi: Value, body: impl FnOnce(&mut Self, Value)) {
        let header = self.b.create_block();
        let inner = self.b.create_block();
        let exit = self.b.create_block();
        self.b.append_block_param(header, types::I64);
        self.b.ins().jump(header, &[lo.into()]);
        self.b.switch_to_block(header);
        let i = self.b.block_params(header)[0];
        let more = self.b.ins().icmp(IntCC::SignedLessThan, i, hi);
        self.b.ins().brif(more, inner, &[], exit, &[]);
        self.b.switch_to_block(inner);
        body(self, i);
        let next = self.b.ins().iadd_imm_u(i, 1);
        self.b.ins().jump(header, &[next.into()]);
        self.b.switch_to_block(exit);
    }

    /// `out[i] = value(n, i)` over the shape, as rows × columns (the last dimension), so
    /// that operands broadcast along rows (a bias) or along columns index without division.
    fn emit_loop(&mut self, n: NodeId) {
        let shape = self.g.nodes[n].shape.clone();
        let cols = shape.0.last().and_then(|d| d.size()).unwrap_or(1).max(1);
        let count = self.count(&shape);
        let rows = self.b.ins().udiv_imm_u(count, cols as i64);
        let out = self.buffer(n);
        let zero = self.b.ins().iconst(types::I64, 0);
        let width = self.b.ins().iconst(types::I64, cols as i64);
        self.counted(zero, rows, |e, row| {
            let base = e.b.ins().imul_imm_u(row, cols as i64);
            let zero = e.b.ins().iconst(types::I64, 0);
            e.counted(zero, width, |e, col| {
                let flat = e.b.ins().iadd(base, col);
                let ix = Ix { flat, row, col };
                let v = e.value(n, ix, &shape, true);
                let byte = e.b.ins().ishl_imm_u(flat, 2);
                let addr = e.b.ins().iadd(out, byte);
                e.b.ins().store(Self::flags(), v, addr, 0);
            });
        });
    }

    /// The value of node `n` at flat index `i` of a loop over `shape`. `compute` is true
    /// for the loop's own node (computed here even though it owns a buffer).
    fn value(&mut self, n: NodeId, i: Ix, shape: &Shape, compute: bool) -> Value {
        let node = &self.g.nodes[n];
        match (&node.op, self.plan.kinds[n]) {
            (Op::Const(c), _) => self.b.ins().f32const(*c as f32),
            (_, Kind::Fused) => self.compute(n, i, shape),
            (_, Kind::Loop) if compute => self.compute(n, i, shape),
            _ => self.load(n, i, shape),
        }
    }

    /// Loads node `n`'s buffer at the element that broadcasts to index `i` of `shape`.
    fn load(&mut self, n: NodeId, ix: Ix, shape: &Shape) -> Value {
        let s = self.g.nodes[n].shape.clone();
        let base = self.buffer(n);
        let i = ix.flat;
        let pad = shape.rank() - s.rank().min(shape.rank());
        let aligned = |d: usize| d.checked_sub(pad).map_or(Dim::Fixed(1), |k| s.0[k]);
        let last = shape.rank().saturating_sub(1);
        let numel: u64 =
            s.0.iter()
                .map(|d| d.size().unwrap_or(u64::MAX))
                .fold(1, u64::saturating_mul);
        let row_vector = shape.rank() > 0
            && aligned(last) == shape.0[last]
            && numel == shape.0[last].size().unwrap_or(0);
        let column = shape.rank() > 0
            && aligned(last) == Dim::Fixed(1)
            && (0..last).all(|d| aligned(d) == shape.0[d]);
        let offset = if s == *shape {
            i
        } else if s.0.iter().all(|d| *d == Dim::Fixed(1)) {
            self.b.ins().iconst(types::I64, 0)
        } else if row_vector {
            // Broadcast along rows (a bias): the column index.
            ix.col
        } else if column {
            // One value per row.
            ix.row
        } else {
            // Align at the right; each loop index contributes through the axes where the
            // operand is not broadcast.
            let (so, sn) = (strides(shape), strides(&s));
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
        };
        let byte = self.b.ins().ishl_imm_u(offset, 2);
        let addr = self.b.ins().iadd(base, byte);
        self.b.ins().load(types::F32, Self::flags(), addr, 0)
    }

    fn compute(&mut self, n: NodeId, i: Ix, shape: &Shape) -> Value {
        let node = &self.g.nodes[n];
        let args = node.args.clone();
        match node.op.clone() {
            Op::Map(f) => {
                let x = self.value(args[0], i, shape, false);
                self.map(f, x)
            }
            Op::MapGrad(f) => {
                let x = self.value(args[0], i, shape, false);
                let g = self.value(args[1], i, shape, false);
                self.map_grad(f, x, g)
            }
            Op::Binary(op) => {
                let a = self.value(args[0], i, shape, false);
                let c = self.value(args[1], i, shape, false);
                self.binary(op, a, c)
            }
            other => unreachable!("not elementwise: {other}"),
        }
    }

    fn zero(&mut self) -> Value {
        self.b.ins().f32const(0.0)
    }

    fn select_gt0(&mut self, x: Value, yes: Value, no: Value) -> Value {
        let z = self.zero();
        let c = self.b.ins().fcmp(FloatCC::GreaterThan, x, z);
        self.b.ins().select(c, yes, no)
    }

    fn sign(&mut self, x: Value) -> Value {
        let z = self.zero();
        let one = self.b.ins().f32const(1.0);
        let minus = self.b.ins().f32const(-1.0);
        let lt = self.b.ins().fcmp(FloatCC::LessThan, x, z);
        let neg_or_zero = self.b.ins().select(lt, minus, z);
        self.select_gt0(x, one, neg_or_zero)
    }

    fn call(&mut self, f: FuncRef, func: Func, x: Value) -> Value {
        let (code, p) = func_code(func);
        let code = self.b.ins().iconst(types::I32, i64::from(code));
        let p = self.b.ins().f32const(p);
        let call = self.b.ins().call(f, &[code, p, x]);
        self.b.inst_results(call)[0]
    }

    fn map(&mut self, f: Func, x: Value) -> Value {
        match f {
            Func::Neg => self.b.ins().fneg(x),
            Func::Abs => self.b.ins().fabs(x),
            Func::Sqrt => self.b.ins().sqrt(x),
            Func::Square => self.b.ins().fmul(x, x),
            Func::Recip => {
                let one = self.b.ins().f32const(1.0);
                self.b.ins().fdiv(one, x)
            }
            Func::Relu => {
                let z = self.zero();
                self.select_gt0(x, x, z)
            }
            Func::LeakyRelu(a) => {
                let k = self.b.ins().f32const(a as f32);
                let ax = self.b.ins().fmul(x, k);
                self.select_gt0(x, x, ax)
            }
            Func::Step => {
                let (one, z) = (self.b.ins().f32const(1.0), self.zero());
                self.select_gt0(x, one, z)
            }
            Func::Sign => self.sign(x),
            other => self.call(self.funcs.apply, other, x),
        }
    }

    fn map_grad(&mut self, f: Func, x: Value, g: Value) -> Value {
        let d = match f {
            Func::Neg => return self.b.ins().fneg(g),
            Func::Relu => {
                let z = self.zero();
                return self.select_gt0(x, g, z);
            }
            Func::LeakyRelu(a) => {
                let k = self.b.ins().f32const(a as f32);
                let ag = self.b.ins().fmul(g, k);
                return self.select_gt0(x, g, ag);
            }
            Func::Square => {
                let two_x = self.b.ins().fadd(x, x);
                return self.b.ins().fmul(two_x, g);
            }
            Func::Abs => self.sign(x),
            Func::Sign | Func::Step => return self.zero(),
            other => self.call(self.funcs.deriv, other, x),
        };
        self.b.ins().fmul(g, d)
    }

    fn binary(&mut self, op: Binary, a: Value, c: Value) -> Value {
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
                self.b.ins().select(pick_a, a, c)
            }
            Binary::Eq => {
                let eq = self.b.ins().fcmp(FloatCC::Equal, a, c);
                let (one, z) = (self.b.ins().f32const(1.0), self.zero());
                self.b.ins().select(eq, one, z)
            }
        }
    }
}
