//! Classification metrics: accuracy, per-class precision, recall and F1, their macro
//! averages, and the confusion matrix, with scikit-learn's conventions
//! (`zero_division=0`: a ratio with a zero denominator is 0, never NaN). Regression
//! metrics: mean absolute error, root mean squared error and R², as scikit-learn's
//! `mean_absolute_error`, `root_mean_squared_error` and `r2_score` with
//! `multioutput="uniform_average"`.

use std::fmt::Write;

use ndarray::ArrayView2;
use serde::Serialize;

/// Per-class precision, recall, F1 and support.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClassScores {
    /// Correct predictions of the class over all predictions of it (0 if never predicted).
    pub precision: f64,
    /// Correct predictions of the class over its true examples (0 if never present).
    pub recall: f64,
    /// The harmonic mean of precision and recall, `2·tp / (2·tp + fp + fn)` (0 if both are 0).
    pub f1: f64,
    /// How many examples truly belong to the class.
    pub support: u64,
}

/// Metrics of a classifier on a data set.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Classification {
    /// The number of classes (at least the `classes` asked for; more if a label exceeded it).
    pub classes: usize,
    /// Correct predictions over all examples (0 for no examples).
    pub accuracy: f64,
    /// Scores of each class, by class id.
    pub per_class: Vec<ClassScores>,
    /// The unweighted mean of the per-class precisions, over all classes.
    pub macro_precision: f64,
    /// The unweighted mean of the per-class recalls, over all classes.
    pub macro_recall: f64,
    /// The unweighted mean of the per-class F1 scores, over all classes.
    pub macro_f1: f64,
    /// `confusion[true][predicted]`: how many examples of a true class got each prediction.
    pub confusion: Vec<Vec<u64>>,
}

/// `numerator / denominator`, or 0 when the denominator is 0.
fn ratio(numerator: u64, denominator: u64) -> f64 {
    if denominator == 0 {
        0.0
    } else {
        numerator as f64 / denominator as f64
    }
}

/// The mean of `values`, or 0 for none.
fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 {
        0.0
    } else {
        sum / n as f64
    }
}

/// Computes them; a class never predicted has precision 0, never present has recall 0
/// (scikit-learn's `zero_division=0`); macro averages over all `classes` classes, present
/// or not.
///
/// Examples are the pairs `(predicted[i], truth[i])`; if the slices differ in length, the
/// extra entries of the longer one are ignored. A label `>= classes` widens the result to
/// cover it rather than being dropped (so `classes` in the result may exceed the argument).
pub fn classify(predicted: &[usize], truth: &[usize], classes: usize) -> Classification {
    let n = predicted.len().min(truth.len());
    let (predicted, truth) = (&predicted[..n], &truth[..n]);
    let largest = predicted.iter().chain(truth).max().map_or(0, |&c| c + 1);
    let classes = classes.max(largest);

    let mut confusion = vec![vec![0u64; classes]; classes];
    for (&p, &t) in predicted.iter().zip(truth) {
        confusion[t][p] += 1;
    }

    let correct: u64 = (0..classes).map(|c| confusion[c][c]).sum();
    let per_class: Vec<ClassScores> = (0..classes)
        .map(|c| {
            let tp = confusion[c][c];
            let support: u64 = confusion[c].iter().sum();
            let predicted_as: u64 = confusion.iter().map(|row| row[c]).sum();
            let (fp, fn_) = (predicted_as - tp, support - tp);
            ClassScores {
                precision: ratio(tp, predicted_as),
                recall: ratio(tp, support),
                f1: ratio(2 * tp, 2 * tp + fp + fn_),
                support,
            }
        })
        .collect();

    Classification {
        classes,
        accuracy: ratio(correct, n as u64),
        macro_precision: mean(per_class.iter().map(|s| s.precision)),
        macro_recall: mean(per_class.iter().map(|s| s.recall)),
        macro_f1: mean(per_class.iter().map(|s| s.f1)),
        per_class,
        confusion,
    }
}

/// The most classes whose confusion matrix `render` prints.
const RENDER_CONFUSION_MAX_CLASSES: usize = 32;

/// Lays out rows of cells in columns as wide as their widest cell: the first column
/// left-aligned (labels), the others right-aligned (numbers), two spaces apart, with no
/// trailing spaces.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|row| row.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            let width = widths[c];
            if c == 0 {
                let _ = write!(line, "{cell:<width$}");
            } else {
                let _ = write!(line, "  {cell:>width$}");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

impl Classification {
    /// A plain-text report: accuracy, a per-class table (class, precision, recall, f1,
    /// support), the macro row, and the confusion matrix with row/column headers (rows:
    /// true class, columns: predicted). Widths adapt to the numbers; no trailing spaces.
    ///
    /// Scores are printed with 4 decimals. The confusion matrix is left out, with a note,
    /// beyond 32 classes (it stays in the JSON report).
    pub fn render(&self) -> String {
        self.render_with(true, true)
    }

    /// The accuracy line, then the per-class table when `scores`, then the confusion
    /// matrix when `confusion` (what a train block's `metrics` asks for).
    pub fn render_with(&self, scores: bool, confusion: bool) -> String {
        let total: u64 = self.per_class.iter().map(|s| s.support).sum();
        let correct: u64 = (0..self.classes)
            .filter_map(|c| self.confusion.get(c).and_then(|row| row.get(c)))
            .sum();
        let mut out = format!(
            "accuracy: {:.4} ({correct} of {total} correct)\n\n",
            self.accuracy
        );

        let mut rows = vec![["class", "precision", "recall", "f1", "support"]
            .map(String::from)
            .to_vec()];
        for (c, s) in self.per_class.iter().enumerate() {
            rows.push(vec![
                c.to_string(),
                format!("{:.4}", s.precision),
                format!("{:.4}", s.recall),
                format!("{:.4}", s.f1),
                s.support.to_string(),
            ]);
        }
        rows.push(vec![
            "macro".to_string(),
            format!("{:.4}", self.macro_precision),
            format!("{:.4}", self.macro_recall),
            format!("{:.4}", self.macro_f1),
            total.to_string(),
        ]);
        if scores {
            out.push_str(&table(&rows));
            out.push('\n');
        }
        if !confusion {
            return out;
        }
        if self.classes > RENDER_CONFUSION_MAX_CLASSES {
            let _ = writeln!(
                out,
                "confusion matrix: omitted for {} classes (more than {RENDER_CONFUSION_MAX_CLASSES})",
                self.classes
            );
            return out;
        }
        out.push_str("confusion matrix (rows: true class, columns: predicted class):\n");
        let mut rows = vec![std::iter::once("true\\pred".to_string())
            .chain((0..self.classes).map(|c| c.to_string()))
            .collect::<Vec<_>>()];
        for (t, counts) in self.confusion.iter().enumerate() {
            rows.push(
                std::iter::once(t.to_string())
                    .chain(counts.iter().map(u64::to_string))
                    .collect(),
            );
        }
        out.push_str(&table(&rows));
        out
    }
}

/// Metrics of a regression model on a data set: each is computed per output (per
/// element of a target row) and averaged over the outputs with equal weights.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Regression {
    /// Mean absolute error, `mean |ŷ − y|`.
    pub mae: f64,
    /// Root mean squared error, `sqrt(mean (ŷ − y)²)`.
    pub rmse: f64,
    /// Coefficient of determination, `1 − SS_res / SS_tot` with `SS_res = Σ (y − ŷ)²` and
    /// `SS_tot = Σ (y − ȳ)²`. An output whose targets are all equal (`SS_tot = 0`) scores
    /// 1 if it is predicted exactly and 0 otherwise (scikit-learn's `force_finite`).
    pub r2: f64,
}

/// Computes them from predictions and targets laid out row-major, `outputs` values per row.
/// Rows are the complete rows of the shorter slice; no rows (or no outputs) gives all 0.
pub fn regress(predicted: &[f32], truth: &[f32], outputs: usize) -> Regression {
    let outputs = outputs.max(1);
    let rows = predicted.len().min(truth.len()) / outputs;
    if rows == 0 {
        return Regression {
            mae: 0.0,
            rmse: 0.0,
            r2: 0.0,
        };
    }
    let n = rows as f64;
    let column = |xs: &[f32], j: usize| {
        xs.iter()
            .skip(j)
            .step_by(outputs)
            .take(rows)
            .map(|&v| f64::from(v))
            .collect::<Vec<f64>>()
    };
    let (mut mae, mut rmse, mut r2) = (0.0, 0.0, 0.0);
    for j in 0..outputs {
        let (p, y) = (column(predicted, j), column(truth, j));
        let abs: f64 = p.iter().zip(&y).map(|(p, y)| (p - y).abs()).sum();
        let ss_res: f64 = p.iter().zip(&y).map(|(p, y)| (y - p).powi(2)).sum();
        let mean = y.iter().sum::<f64>() / n;
        let ss_tot: f64 = y.iter().map(|y| (y - mean).powi(2)).sum();
        mae += abs / n;
        rmse += (ss_res / n).sqrt();
        r2 += match (ss_tot == 0.0, ss_res == 0.0) {
            (false, _) => 1.0 - ss_res / ss_tot,
            (true, true) => 1.0,
            (true, false) => 0.0,
        };
    }
    let k = outputs as f64;
    Regression {
        mae: mae / k,
        rmse: rmse / k,
        r2: r2 / k,
    }
}

/// Predicted class ids from logits/probabilities of shape [rows, K] (argmax; ties to the
/// lowest index), or, when K == 1, from a single logit (> 0 → class 1, as bce's
/// sigmoid > 0.5).
///
/// NaN scores never win the argmax (a row of NaNs, or K == 0, predicts class 0), and a
/// NaN single logit predicts class 0.
pub fn predicted_classes(scores: &ArrayView2<f32>) -> Vec<usize> {
    if scores.ncols() == 1 {
        return scores
            .column(0)
            .iter()
            .map(|&v| usize::from(v > 0.0))
            .collect();
    }
    scores
        .rows()
        .into_iter()
        .map(|row| {
            let mut best: Option<(usize, f32)> = None;
            for (j, &v) in row.iter().enumerate() {
                if v.is_nan() {
                    continue;
                }
                if best.is_none_or(|(_, b)| v > b) {
                    best = Some((j, v));
                }
            }
            best.map_or(0, |(j, _)| j)
        })
        .collect()
}
