//! Matrix products as generated loops (`Kind::Product`, and `Kind::Gemv` calls of a few
//! rows): no call, no packing. Rows of the output are computed one at a time; where the
//! right operand's rows are contiguous, in tiles of 24 columns held in six f32x4
//! accumulators, each multiply-add an `fma`; where it is transposed, as dot products of
//! two contiguous rows, four lanes at a time. After each row, the product's epilogue (an
//! elementwise loop planned to read it) runs on that row while it is in cache. Sums over
//! rows into a few columns (narrow bias gradients) are generated here too.

use super::{unaligned, Emitter, LoopOf, LANES};
use crate::ir::{NodeId, Op, Shape};
use crate::jit::plan::{column_sum, GEMV_ROWS};
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, InstBuilder, Type, Value};
use cranelift_frontend::Variable;

/// Accumulators per tile: 6 × 4 = 24 columns.
const TILE_VECTORS: u64 = 6;

/// A product's operands: buffers, and strides of the left operand as `op(A)` (row, inner).
struct Operands {
    a: Value,
    b: Value,
    out: Value,
    a_rs: u64,
    a_cs: u64,
    /// The right operand's stored row length.
    b_cols: u64,
}

impl Emitter<'_, '_> {
    /// A generated product, with its epilogue.
    pub(super) fn emit_product(&mut self, n: NodeId) {
        let g = self.g;
        let epilogue = self.plan.epilogue(n).map(|u| {
            let rank = g.nodes[u].shape.rank();
            self.loop_setup(u, rank.saturating_sub(1))
        });
        self.product_rows(n, epilogue.as_ref());
    }

    /// A GEMV-like product: generated loops when this call has at most `GEMV_ROWS` rows,
    /// the kernel (then the epilogue as a loop of its own) otherwise.
    pub(super) fn emit_gemv(&mut self, n: NodeId, ctx: Value) {
        let g = self.g;
        let a = &g.nodes[g.nodes[n].args[0]].shape;
        let rows = self.rows(a);
        let small = self
            .b
            .ins()
            .icmp_imm_s(IntCC::SignedLessThanOrEqual, rows, GEMV_ROWS as i64);
        let (inline, call, done) = (
            self.b.create_block(),
            self.b.create_block(),
            self.b.create_block(),
        );
        self.b.ins().brif(small, inline, &[], call, &[]);
        self.b.switch_to_block(inline);
        self.emit_product(n);
        self.b.ins().jump(done, &[]);
        self.b.switch_to_block(call);
        let id = self.b.ins().iconst(types::I64, n as i64);
        self.b.ins().call(self.funcs.kernel, &[ctx, id]);
        if let Some(u) = self.plan.epilogue(n) {
            self.emit_loop(u);
        }
        self.b.ins().jump(done, &[]);
        self.b.switch_to_block(done);
    }

    /// Rows of `s` as a matrix (its leading dimensions) as a run-time value.
    fn rows(&mut self, s: &Shape) -> Value {
        let cols = s.0.last().and_then(|d| d.size()).unwrap_or(1).max(1);
        let count = self.count(s);
        self.b.ins().udiv_imm_u(count, cols as i64)
    }

    fn product_rows(&mut self, n: NodeId, epilogue: Option<&LoopOf>) {
        let g = self.g;
        let node = &g.nodes[n];
        let Op::MatMul { ta, tb } = node.op else {
            unreachable!("planned as a product: {}", node.op)
        };
        let (sa, sb) = (&g.nodes[node.args[0]].shape, &g.nodes[node.args[1]].shape);
        let last = |s: &Shape| s.0.last().and_then(|d| d.size()).unwrap_or(1);
        let (a_cols, b_cols) = (last(sa), last(sb));
        let a_rows = self.rows(sa);
        let b_rows = self.rows(sb);
        let (m, k) = if ta {
            (self.b.ins().iconst(types::I64, a_cols as i64), a_rows)
        } else {
            (a_rows, self.b.ins().iconst(types::I64, a_cols as i64))
        };
        let ops = Operands {
            a: self.buffer(node.args[0]),
            b: self.buffer(node.args[1]),
            out: self.buffer(n),
            a_rs: if ta { 1 } else { a_cols },
            a_cs: if ta { a_cols } else { 1 },
            b_cols,
        };
        let zero = self.b.ins().iconst(types::I64, 0);
        self.counted(zero, m, 1, |e, i| {
            if tb {
                e.dot_row(&ops, i, k, b_rows, !ta);
            } else {
                e.tiled_row(&ops, i, k);
            }
            if let Some(l) = epilogue {
                e.loop_row(l, i);
            }
        });
    }

    /// Row `i` of `op(A)·B` with B's rows contiguous: tiles of 24 columns, then of 4,
    /// then single columns.
    fn tiled_row(&mut self, ops: &Operands, i: Value, k: Value) {
        let cols = ops.b_cols;
        let tile = TILE_VECTORS * LANES;
        let tiles_end = cols - cols % tile;
        let vectors_end = cols - cols % LANES;
        let start = |e: &mut Self, v: u64| e.b.ins().iconst(types::I64, v as i64);
        let (s0, s1, s2, s3) = (
            start(self, 0),
            start(self, tiles_end),
            start(self, vectors_end),
            start(self, cols),
        );
        self.counted(s0, s1, tile as i64, |e, j| {
            e.tile(ops, i, j, k, TILE_VECTORS, types::F32X4)
        });
        self.counted(s1, s2, LANES as i64, |e, j| {
            e.tile(ops, i, j, k, 1, types::F32X4)
        });
        self.counted(s2, s3, 1, |e, j| e.tile(ops, i, j, k, 1, types::F32));
    }

    /// `width` accumulators of `lanes` for columns `j..` of row `i`, over the inner
    /// dimension `k`, stored into the output.
    fn tile(&mut self, ops: &Operands, i: Value, j: Value, k: Value, width: u64, lanes: Type) {
        let step = if lanes == types::F32 { 1 } else { LANES };
        let accs: Vec<Variable> = (0..width)
            .map(|_| {
                let var = self.b.declare_var(lanes);
                let z = self.constant(0.0, lanes);
                self.b.def_var(var, z);
                var
            })
            .collect();
        let a_row = self.b.ins().imul_imm_u(i, ops.a_rs as i64);
        let zero = self.b.ins().iconst(types::I64, 0);
        self.counted(zero, k, 1, |e, p| {
            let pa = e.b.ins().imul_imm_u(p, ops.a_cs as i64);
            let at = e.b.ins().iadd(a_row, pa);
            let addr = e.address(ops.a, at);
            let x = e.b.ins().load(types::F32, unaligned(), addr, 0);
            let x = e.widen(x, lanes);
            let brow = e.b.ins().imul_imm_u(p, ops.b_cols as i64);
            let bj = e.b.ins().iadd(brow, j);
            let baddr = e.address(ops.b, bj);
            for (q, var) in accs.iter().enumerate() {
                let y =
                    e.b.ins()
                        .load(lanes, unaligned(), baddr, (q as u64 * step * 4) as i32);
                let acc = e.b.use_var(*var);
                let acc = e.mul_add(x, y, acc);
                e.b.def_var(*var, acc);
            }
        });
        let orow = self.b.ins().imul_imm_u(i, ops.b_cols as i64);
        let oj = self.b.ins().iadd(orow, j);
        let oaddr = self.address(ops.out, oj);
        for (q, var) in accs.iter().enumerate() {
            let acc = self.b.use_var(*var);
            self.b
                .ins()
                .store(unaligned(), acc, oaddr, (q as u64 * step * 4) as i32);
        }
    }

    /// Row `i` of `op(A)·Bᵀ` (B stored `n × k`, `k` = its row length): each output a dot
    /// product, four lanes at a time when A's row is contiguous too (`a_contiguous`).
    fn dot_row(&mut self, ops: &Operands, i: Value, k: Value, n: Value, a_contiguous: bool) {
        let kk = ops.b_cols;
        let a_row = self.b.ins().imul_imm_u(i, ops.a_rs as i64);
        let orow = self.b.ins().imul(i, n);
        let zero = self.b.ins().iconst(types::I64, 0);
        self.counted(zero, n, 1, |e, j| {
            let b_row = e.b.ins().imul_imm_u(j, kk as i64);
            let vectors = if a_contiguous { kk - kk % LANES } else { 0 };
            let acc = e.b.declare_var(types::F32X4);
            let z = e.constant(0.0, types::F32X4);
            e.b.def_var(acc, z);
            let (v0, v1) = (
                e.b.ins().iconst(types::I64, 0),
                e.b.ins().iconst(types::I64, vectors as i64),
            );
            e.counted(v0, v1, LANES as i64, |e, p| {
                e.dot_step(ops, (a_row, b_row), p, types::F32X4, acc)
            });
            let v = e.b.use_var(acc);
            let mut total = e.b.ins().extractlane(v, 0);
            for lane in 1..4u8 {
                let x = e.b.ins().extractlane(v, lane);
                total = e.b.ins().fadd(total, x);
            }
            let sum = e.b.declare_var(types::F32);
            e.b.def_var(sum, total);
            e.counted(v1, k, 1, |e, p| {
                e.dot_step(ops, (a_row, b_row), p, types::F32, sum)
            });
            let s = e.b.use_var(sum);
            let oj = e.b.ins().iadd(orow, j);
            let addr = e.address(ops.out, oj);
            e.b.ins().store(unaligned(), s, addr, 0);
        });
    }

    /// `acc += A[a_row + p·a_cs] · B[b_row + p]`, on `lanes` (vectors need `a_cs` = 1).
    fn dot_step(
        &mut self,
        ops: &Operands,
        (a_row, b_row): (Value, Value),
        p: Value,
        lanes: Type,
        acc: Variable,
    ) {
        let pa = self.b.ins().imul_imm_u(p, ops.a_cs as i64);
        let at = self.b.ins().iadd(a_row, pa);
        let x = self.address(ops.a, at);
        let x = self.b.ins().load(lanes, unaligned(), x, 0);
        let bt = self.b.ins().iadd(b_row, p);
        let y = self.address(ops.b, bt);
        let y = self.b.ins().load(lanes, unaligned(), y, 0);
        let s = self.b.use_var(acc);
        let s = self.mul_add(x, y, s);
        self.b.def_var(acc, s);
    }

    /// `out[j] = Σ_r x[r·cols + j]` for the few columns of a `ColumnSum` node: one
    /// pass over the rows, the columns in f32x4 and scalar accumulators.
    pub(super) fn emit_column_sum(&mut self, n: NodeId) {
        let g = self.g;
        let x = g.nodes[n].args[0];
        let cols = column_sum(g, n).unwrap_or(1);
        let count = self.count(&g.nodes[x].shape);
        let rows = self.b.ins().udiv_imm_u(count, cols as i64);
        let accs: Vec<(Variable, Type, u64)> = (0..cols / LANES)
            .map(|q| (types::F32X4, q * LANES))
            .chain((cols - cols % LANES..cols).map(|c| (types::F32, c)))
            .map(|(lanes, at)| {
                let var = self.b.declare_var(lanes);
                let z = self.constant(0.0, lanes);
                self.b.def_var(var, z);
                (var, lanes, at)
            })
            .collect();
        let src = self.buffer(x);
        let zero = self.b.ins().iconst(types::I64, 0);
        self.counted(zero, rows, 1, |e, r| {
            let base = e.b.ins().imul_imm_u(r, cols as i64);
            let addr = e.address(src, base);
            for &(var, lanes, at) in &accs {
                let v = e.b.ins().load(lanes, unaligned(), addr, (at * 4) as i32);
                let s = e.b.use_var(var);
                let s = e.b.ins().fadd(s, v);
                e.b.def_var(var, s);
            }
        });
        let out = self.buffer(n);
        for &(var, _, at) in &accs {
            let s = self.b.use_var(var);
            self.b.ins().store(unaligned(), s, out, (at * 4) as i32);
        }
    }

    /// `x·y + z`, fused where the machine has FMA.
    fn mul_add(&mut self, x: Value, y: Value, z: Value) -> Value {
        if self.fma {
            self.b.ins().fma(x, y, z)
        } else {
            let p = self.b.ins().fmul(x, y);
            self.b.ins().fadd(p, z)
        }
    }
}
