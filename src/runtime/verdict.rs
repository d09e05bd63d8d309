//! Whether a finished run learned anything: a run whose accuracy is no better than
//! always predicting the most frequent class, or whose training loss never fell, ends
//! with warning W0105 and its likely causes instead of passing for a success.

use super::eval::Evaluation;
use super::metrics::Classification;
use crate::diag::{Code, Diagnostic};
use crate::span::Span;

/// The likely causes, most common first.
const CAUSES: &str = "likely causes: a learning rate far too high (the loss jumps or \
    stalls: try one 10 times smaller) or far too low (the loss barely moves); inputs on very \
    different scales (`--standardize`); targets that do not match the inputs";

/// W0105 when the run learned nothing, pointing at the model (`span`): `eval` is the
/// final evaluation (the test data's, else the training data's), `test` whether it is
/// the test data, `losses` each epoch's number and mean training loss.
pub fn learned_nothing(
    span: Span,
    eval: &Evaluation,
    test: bool,
    losses: &[(u64, f64)],
) -> Option<Diagnostic> {
    let data = if test { "test" } else { "training" };
    if let Some(c) = &eval.classification {
        let majority = majority_rate(c);
        if c.classes >= 2 && eval.rows > 0 && c.accuracy <= majority {
            return Some(
                Diagnostic::warning(
                    Code::W0105,
                    format!(
                        "training learned nothing: {data} accuracy {:.2}% is no better than the {:.2}% of always predicting the most frequent class",
                        c.accuracy * 100.0,
                        majority * 100.0
                    ),
                    span,
                )
                .primary_label("this model")
                .with_help(CAUSES),
            );
        }
    }
    let (&(first, from), &(last, to)) = (losses.first()?, losses.last()?);
    if losses.len() >= 2 && to >= from {
        return Some(
            Diagnostic::warning(
                Code::W0105,
                format!(
                    "training learned nothing: the training loss did not fall ({} in epoch {}, {} in epoch {})",
                    number(from),
                    first,
                    number(to),
                    last
                ),
                span,
            )
            .primary_label("this model")
            .with_help(CAUSES),
        );
    }
    None
}

/// The accuracy of always predicting the most frequent true class.
fn majority_rate(c: &Classification) -> f64 {
    let rows: Vec<u64> = c.confusion.iter().map(|r| r.iter().sum()).collect();
    let total: u64 = rows.iter().sum();
    match total {
        0 => 0.0,
        t => rows.iter().copied().max().unwrap_or(0) as f64 / t as f64,
    }
}

/// A loss for a message or a progress line: five decimals in the usual range, scientific
/// beyond it (a diverging loss of 10³³ is not printed with 34 digits).
pub fn number(v: f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(1e-4..1e6).contains(&a) {
        format!("{v:.4e}")
    } else {
        format!("{v:.5}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(confusion: Vec<Vec<u64>>) -> Evaluation {
        let total: u64 = confusion.iter().flatten().sum();
        let right: u64 = (0..confusion.len()).map(|k| confusion[k][k]).sum();
        Evaluation {
            rows: total as usize,
            loss: Some(1.0),
            classification: Some(Classification {
                classes: confusion.len(),
                accuracy: right as f64 / total as f64,
                per_class: Vec::new(),
                macro_precision: 0.0,
                macro_recall: 0.0,
                macro_f1: 0.0,
                confusion,
            }),
            regression: None,
        }
    }

    #[test]
    fn an_accuracy_no_better_than_the_majority_class_warns() {
        let falling = [(1, 2.0), (2, 1.0)];
        // Everything predicted as class 1, which 3 of 5 rows are: 60 %, the majority rate.
        let one_class = eval(vec![vec![0, 2], vec![0, 3]]);
        let w = learned_nothing(Span::default(), &one_class, true, &falling).expect("W0105");
        assert_eq!(w.code, Code::W0105);
        assert!(w.message.contains("test accuracy 60.00%"), "{}", w.message);
        assert!(w.message.contains("the 60.00% of always"), "{}", w.message);
        // 4 of 5 right beats the majority: no warning.
        let good = eval(vec![vec![1, 1], vec![0, 3]]);
        assert!(learned_nothing(Span::default(), &good, true, &falling).is_none());
    }

    #[test]
    fn a_loss_that_did_not_fall_warns() {
        let regression = Evaluation {
            rows: 10,
            loss: Some(3.0),
            classification: None,
            regression: None,
        };
        let w = learned_nothing(Span::default(), &regression, false, &[(1, 2.5), (2, 3.0)])
            .expect("W0105");
        assert!(
            w.message
                .contains("did not fall (2.50000 in epoch 1, 3.00000 in epoch 2)"),
            "{}",
            w.message
        );
        assert!(
            learned_nothing(Span::default(), &regression, false, &[(1, 2.5), (2, 1.0)]).is_none()
        );
        // One epoch tells nothing.
        assert!(learned_nothing(Span::default(), &regression, false, &[(1, 2.5)]).is_none());
    }

    #[test]
    fn losses_switch_to_scientific_notation_outside_the_usual_range() {
        assert_eq!(number(0.123456), "0.12346");
        assert_eq!(number(0.0), "0.00000");
        assert_eq!(number(3.3e33), "3.3000e33");
        assert_eq!(number(2e-7), "2.0000e-7");
        assert_eq!(number(f64::NAN), "NaN");
    }
}
