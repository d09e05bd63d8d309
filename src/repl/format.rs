//! NumPy-style printing of tensors: nested brackets, columns aligned, and tensors of
//! more than [`THRESHOLD`] elements summarized with `…` (the first and last
//! [`EDGE`] entries of every axis), like NumPy's `threshold` and `edgeitems`.

use ndarray::{ArrayD, ArrayViewD, Axis};

/// Tensors with more elements than this are summarized.
pub const THRESHOLD: usize = 1000;

/// Entries kept at each end of a summarized axis.
pub const EDGE: usize = 3;

/// How the elements of one tensor are written.
#[derive(Clone, Copy, Debug)]
enum Style {
    /// Every value is a whole number: `1.`, `-3.`.
    Whole,
    /// Fixed point with this many decimals (trailing zeros dropped, points aligned).
    Fixed(usize),
    /// Scientific notation with four decimals: `1.2346e+08`.
    Sci,
}

/// The text of a scalar value as [`format_tensor`] writes elements.
pub fn format_scalar(v: f32) -> String {
    let style = style_of(std::iter::once(v));
    raw(v, style)
}

/// `a` written NumPy-style, without the shape.
pub fn format_tensor(a: &ArrayD<f32>) -> String {
    if a.ndim() == 0 {
        return format_scalar(a.iter().next().copied().unwrap_or(f32::NAN));
    }
    let summarize = a.len() > THRESHOLD;
    let shown = shown_values(&a.view(), summarize);
    let style = style_of(shown.iter().copied());
    let cells: Vec<String> = shown.iter().map(|&v| raw(v, style)).collect();
    // Align on the decimal point: pad the integer part left, the fraction right.
    let split = |s: &str| -> (usize, usize) {
        match s.find(['.', 'e']) {
            Some(i) if !s.contains("nan") && !s.contains("inf") => (i, s.len() - i),
            _ => (s.len(), 0),
        }
    };
    let left = cells.iter().map(|c| split(c).0).max().unwrap_or(0);
    let right = cells.iter().map(|c| split(c).1).max().unwrap_or(0);
    let pad = |v: f32| -> String {
        let s = raw(v, style);
        let (l, r) = split(&s);
        format!("{}{s}{}", " ".repeat(left - l), " ".repeat(right - r))
    };
    let mut out = String::new();
    write_axis(&a.view(), summarize, 1, &pad, &mut out);
    out
}

/// The values that will be printed (all, or the edges when summarizing).
fn shown_values(a: &ArrayViewD<f32>, summarize: bool) -> Vec<f32> {
    if a.ndim() == 0 {
        return a.iter().copied().collect();
    }
    let n = a.len_of(Axis(0));
    let mut out = Vec::new();
    for i in indices(n, summarize).into_iter().flatten() {
        out.extend(shown_values(&a.index_axis(Axis(0), i), summarize));
    }
    out
}

/// The indices of an axis of length `n`: `None` marks the `…`.
fn indices(n: usize, summarize: bool) -> Vec<Option<usize>> {
    if summarize && n > 2 * EDGE {
        (0..EDGE)
            .map(Some)
            .chain(std::iter::once(None))
            .chain((n - EDGE..n).map(Some))
            .collect()
    } else {
        (0..n).map(Some).collect()
    }
}

fn write_axis(
    a: &ArrayViewD<f32>,
    summarize: bool,
    depth: usize,
    cell: &dyn Fn(f32) -> String,
    out: &mut String,
) {
    out.push('[');
    let n = a.len_of(Axis(0));
    let idx = indices(n, summarize);
    if a.ndim() == 1 {
        let parts: Vec<String> = idx
            .iter()
            .map(|i| match i {
                Some(i) => cell(a[[*i]]),
                None => "…".to_string(),
            })
            .collect();
        out.push_str(&parts.join(", "));
    } else {
        // Rows of a matrix are separated by one newline, matrices by a blank line.
        let sep = format!(",{}{}", "\n".repeat(a.ndim() - 1), " ".repeat(depth));
        for (k, i) in idx.iter().enumerate() {
            if k > 0 {
                out.push_str(&sep);
            }
            match i {
                Some(i) => write_axis(&a.index_axis(Axis(0), *i), summarize, depth + 1, cell, out),
                None => out.push('…'),
            }
        }
    }
    out.push(']');
}

fn style_of(values: impl Iterator<Item = f32>) -> Style {
    let finite: Vec<f32> = values.filter(|v| v.is_finite()).collect();
    let max = finite.iter().fold(0f32, |m, v| m.max(v.abs()));
    let min_nonzero = finite
        .iter()
        .filter(|v| **v != 0.0)
        .fold(f32::INFINITY, |m, v| m.min(v.abs()));
    if max >= 1e8 || (min_nonzero < 1e-4 && max < 1e8 && min_nonzero.is_finite()) {
        return Style::Sci;
    }
    if finite.iter().all(|v| v.fract() == 0.0) {
        return Style::Whole;
    }
    // Enough decimals for every value at four significant places after the point.
    let decimals = finite
        .iter()
        .map(|v| {
            let s = format!("{v:.4}");
            let t = s.trim_end_matches('0');
            t.len() - t.find('.').map_or(t.len(), |i| i + 1)
        })
        .max()
        .unwrap_or(1)
        .max(1);
    Style::Fixed(decimals)
}

fn raw(v: f32, style: Style) -> String {
    if v.is_nan() {
        return "nan".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "inf".into() } else { "-inf".into() };
    }
    match style {
        Style::Whole => format!("{v:.0}."),
        Style::Fixed(d) => {
            let s = format!("{v:.d$}");
            s.trim_end_matches('0').to_string()
        }
        Style::Sci => {
            let s = format!("{v:.4e}");
            // Rust writes `1.2346e8`; NumPy `1.2346e+08`.
            match s.split_once('e') {
                Some((m, e)) => {
                    let (sign, digits) = match e.strip_prefix('-') {
                        Some(d) => ('-', d),
                        None => ('+', e),
                    };
                    format!("{m}e{sign}{digits:0>2}")
                }
                None => s,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::IxDyn;

    fn t(shape: &[usize], v: Vec<f32>) -> ArrayD<f32> {
        ArrayD::from_shape_vec(IxDyn(shape), v).unwrap()
    }

    #[test]
    fn whole_numbers() {
        assert_eq!(
            format_tensor(&t(&[2, 2], vec![0.0, 1.0, 1.0, 0.0])),
            "[[0., 1.],\n [1., 0.]]"
        );
        assert_eq!(
            format_tensor(&t(&[3], vec![-1.0, 10.0, 2.0])),
            "[-1., 10.,  2.]"
        );
    }

    #[test]
    fn decimals_are_aligned() {
        assert_eq!(format_tensor(&t(&[2], vec![1.5, 2.25])), "[1.5 , 2.25]");
        assert_eq!(format_tensor(&t(&[1], vec![0.123456])), "[0.1235]");
        assert_eq!(format_scalar(2.5), "2.5");
    }

    #[test]
    fn three_dimensions_separate_matrices() {
        let a = t(&[2, 1, 2], vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(format_tensor(&a), "[[[1., 2.]],\n\n [[3., 4.]]]");
    }

    #[test]
    fn large_tensors_are_summarized() {
        let a = t(&[2000], (0..2000).map(|i| i as f32).collect());
        assert_eq!(
            format_tensor(&a),
            "[   0.,    1.,    2., …, 1997., 1998., 1999.]"
        );
        let b = ArrayD::<f32>::zeros(IxDyn(&[40, 40]));
        let s = format_tensor(&b);
        assert_eq!(s.lines().count(), 7);
        assert!(s.contains("…"));
    }

    #[test]
    fn scientific() {
        assert_eq!(format_scalar(1.0e9), "1.0000e+09");
        assert_eq!(format_scalar(1.0e-6), "1.0000e-06");
        assert_eq!(format_scalar(f32::NAN), "nan");
    }
}
