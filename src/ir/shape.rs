//! Shapes and the pure shape rules: broadcasting, sliding windows, matrix products.

use std::fmt;

/// Dimensions above this are refused (E0311): every size fits in an `i32`.
pub const MAX_DIM: u64 = (1 << 31) - 1;

/// One dimension of a checked shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Dim {
    /// The batch dimension: known only at run time.
    Batch,
    /// A size known at compile time.
    Fixed(u64),
}

/// A checked shape; the batch dimension, when present, is first.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
pub struct Shape(pub Vec<Dim>);

impl Shape {
    /// A shape from dims.
    pub fn new(dims: Vec<Dim>) -> Self {
        Shape(dims)
    }

    /// The scalar shape `[]`.
    pub fn scalar() -> Self {
        Shape(Vec::new())
    }

    /// `[batch, d...]`.
    pub fn batched(dims: &[u64]) -> Self {
        let mut v = vec![Dim::Batch];
        v.extend(dims.iter().map(|&d| Dim::Fixed(d)));
        Shape(v)
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.0.len()
    }

    /// The dims.
    pub fn dims(&self) -> &[Dim] {
        &self.0
    }

    /// True when the first dimension is the batch.
    pub fn has_batch(&self) -> bool {
        self.0.first() == Some(&Dim::Batch)
    }

    /// The fixed size of axis `i` (None for the batch or out of range).
    pub fn fixed(&self, i: usize) -> Option<u64> {
        match self.0.get(i) {
            Some(Dim::Fixed(d)) => Some(*d),
            _ => None,
        }
    }

    /// The last dimension's fixed size.
    pub fn last(&self) -> Option<u64> {
        self.rank().checked_sub(1).and_then(|i| self.fixed(i))
    }

    /// Product of the fixed dimensions (elements per sample); None on overflow.
    pub fn per_sample(&self) -> Option<u64> {
        self.0.iter().try_fold(1u64, |acc, d| match d {
            Dim::Batch => Some(acc),
            Dim::Fixed(n) => acc.checked_mul(*n),
        })
    }

    /// Replaces the last dimension.
    pub fn with_last(&self, d: u64) -> Shape {
        let mut v = self.0.clone();
        if let Some(l) = v.last_mut() {
            *l = Dim::Fixed(d);
        }
        Shape(v)
    }

    /// Normalizes a possibly negative axis against this rank.
    pub fn axis(&self, axis: i64) -> Option<usize> {
        let r = self.rank() as i64;
        let a = if axis < 0 { axis + r } else { axis };
        (0..r).contains(&a).then_some(a as usize)
    }
}

impl Dim {
    /// The fixed size (None for the batch).
    pub fn size(self) -> Option<u64> {
        match self {
            Dim::Fixed(n) => Some(n),
            Dim::Batch => None,
        }
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Batch => write!(f, "N"),
            Dim::Fixed(n) => write!(f, "{n}"),
        }
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{d}")?;
        }
        write!(f, "]")
    }
}

/// NumPy broadcasting of two shapes: aligned at the right, each pair equal or one of
/// them 1. The batch dimension broadcasts only with itself or 1, and stays the first
/// axis: `[N, 1]` and `[N]` do not broadcast (to `[N, N]`, which would pair every sample
/// with every other).
pub fn broadcast(a: &Shape, b: &Shape) -> Option<Shape> {
    let n = a.rank().max(b.rank());
    let mut out = vec![Dim::Fixed(1); n];
    for (i, slot) in out.iter_mut().enumerate() {
        let da = (i + a.rank()).checked_sub(n).map(|j| a.0[j]);
        let db = (i + b.rank()).checked_sub(n).map(|j| b.0[j]);
        *slot = match (da, db) {
            (Some(x), None) | (None, Some(x)) => x,
            (Some(x), Some(y)) if x == y => x,
            (Some(Dim::Fixed(1)), Some(y)) => y,
            (Some(x), Some(Dim::Fixed(1))) => x,
            _ => return None,
        };
    }
    if out.iter().skip(1).any(|d| *d == Dim::Batch) {
        return None;
    }
    Some(Shape(out))
}

/// The output length of a sliding window:
/// floor((len + 2·pad − dilation·(k − 1) − 1) / stride) + 1, or None when it is below 1
/// (or the arguments are out of range).
pub fn window_out(len: u64, k: u64, stride: u64, pad: u64, dilation: u64) -> Option<u64> {
    if k == 0 || stride == 0 || dilation == 0 {
        return None;
    }
    let span = dilation.checked_mul(k - 1)?.checked_add(1)?;
    let padded = len.checked_add(pad.checked_mul(2)?)?;
    let room = padded.checked_sub(span)?;
    Some(room / stride + 1)
}

/// Per-sample NumPy `matmul` of two batched shapes (the batch is a leading broadcast
/// dimension): returns the output shape, or None when the contracted sizes differ.
pub fn matmul(a: &Shape, b: &Shape) -> Option<Shape> {
    let strip = |s: &Shape| -> (bool, Vec<Dim>) {
        if s.has_batch() {
            (true, s.0[1..].to_vec())
        } else {
            (false, s.0.clone())
        }
    };
    let (ba, mut xa) = strip(a);
    let (bb, mut xb) = strip(b);
    if xa.is_empty() || xb.is_empty() {
        return None;
    }
    let a_vec = xa.len() == 1;
    let b_vec = xb.len() == 1;
    if a_vec {
        xa.insert(0, Dim::Fixed(1));
    }
    if b_vec {
        xb.push(Dim::Fixed(1));
    }
    let (m, k1) = (xa[xa.len() - 2], xa[xa.len() - 1]);
    let (k2, n) = (xb[xb.len() - 2], xb[xb.len() - 1]);
    if k1 != k2 {
        return None;
    }
    let lead = broadcast(
        &Shape(xa[..xa.len() - 2].to_vec()),
        &Shape(xb[..xb.len() - 2].to_vec()),
    )?;
    let mut out = Vec::new();
    if ba || bb {
        out.push(Dim::Batch);
    }
    out.extend(lead.0);
    if !a_vec {
        out.push(m);
    }
    if !b_vec {
        out.push(n);
    }
    Some(Shape(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn s(d: &[u64]) -> Shape {
        Shape::batched(d)
    }

    #[test]
    fn broadcast_examples() {
        assert_eq!(
            broadcast(&s(&[1]), &s(&[])),
            None,
            "[N, 1] + [N] is not [N, N]"
        );
        assert_eq!(broadcast(&s(&[3, 1]), &s(&[1, 4])), Some(s(&[3, 4])));
        assert_eq!(broadcast(&s(&[16, 14, 14]), &s(&[32, 14, 14])), None);
        assert_eq!(broadcast(&s(&[5]), &Shape::scalar()), Some(s(&[5])));
        assert_eq!(
            broadcast(&Shape::new(vec![Dim::Fixed(1), Dim::Fixed(3)]), &s(&[3])),
            Some(s(&[3]))
        );
        assert_eq!(
            broadcast(
                &Shape::new(vec![Dim::Fixed(2)]),
                &Shape::new(vec![Dim::Batch])
            ),
            None
        );
    }

    #[test]
    fn window_examples() {
        assert_eq!(window_out(28, 5, 1, 0, 1), Some(24));
        assert_eq!(window_out(24, 2, 2, 0, 1), Some(12));
        assert_eq!(window_out(3, 2, 1, 1, 1), Some(4));
        assert_eq!(window_out(7, 3, 2, 1, 2), Some(3));
        assert_eq!(window_out(2, 5, 1, 0, 1), None);
        assert_eq!(window_out(5, 0, 1, 0, 1), None);
        assert_eq!(window_out(u64::MAX, 3, 1, u64::MAX, 1), None);
    }

    #[test]
    fn matmul_examples() {
        assert_eq!(matmul(&s(&[3, 4]), &s(&[4, 5])), Some(s(&[3, 5])));
        assert_eq!(matmul(&s(&[4]), &s(&[4, 5])), Some(s(&[5])));
        assert_eq!(
            matmul(&s(&[4]), &s(&[4])),
            Some(Shape::new(vec![Dim::Batch]))
        );
        assert_eq!(matmul(&s(&[3, 4]), &s(&[5, 5])), None);
    }

    proptest! {
        /// The formula agrees with counting window positions one by one.
        #[test]
        fn window_matches_enumeration(len in 1u64..40, k in 1u64..8, stride in 1u64..5, pad in 0u64..4, dil in 1u64..4) {
            let span = dil * (k - 1) + 1;
            let padded = len + 2 * pad;
            let mut count = 0;
            let mut start = 0;
            while start + span <= padded {
                count += 1;
                start += stride;
            }
            let expect = if count == 0 { None } else { Some(count) };
            prop_assert_eq!(window_out(len, k, stride, pad, dil), expect);
        }

        /// Broadcasting is commutative, and every output dim is one of the inputs' dims.
        #[test]
        fn broadcast_commutes(a in proptest::collection::vec(1u64..4, 0..4), b in proptest::collection::vec(1u64..4, 0..4)) {
            let (sa, sb) = (s(&a), s(&b));
            let ab = broadcast(&sa, &sb);
            prop_assert_eq!(ab.clone(), broadcast(&sb, &sa));
            if let Some(out) = ab {
                prop_assert_eq!(out.rank(), sa.rank().max(sb.rank()));
                for (i, d) in out.0.iter().rev().enumerate() {
                    let x = sa.0.iter().rev().nth(i).copied().unwrap_or(Dim::Fixed(1));
                    let y = sb.0.iter().rev().nth(i).copied().unwrap_or(Dim::Fixed(1));
                    prop_assert!(*d == x || *d == y);
                    prop_assert!(x == Dim::Fixed(1) || x == *d);
                    prop_assert!(y == Dim::Fixed(1) || y == *d);
                }
            } else {
                let one = Dim::Fixed(1);
                let mismatch = sa.0.iter().rev().zip(sb.0.iter().rev()).any(|(x, y)| x != y && *x != one && *y != one);
                // Or the batch axis of the shorter one would meet a later axis.
                prop_assert!(mismatch || sa.rank() != sb.rank());
            }
        }
    }
}
