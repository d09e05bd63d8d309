//! Classification and regression metrics against hand-computed values and scikit-learn's
//! numbers.

use kiln::runtime::metrics::{
    classify, predicted_classes, regress, ClassScores, Classification, Regression,
};
use ndarray::{arr2, Array2};

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

#[track_caller]
fn assert_close(actual: f64, expected: f64) {
    assert!(close(actual, expected), "{actual} != {expected}");
}

#[track_caller]
fn assert_scores(s: &ClassScores, precision: f64, recall: f64, f1: f64, support: u64) {
    assert_close(s.precision, precision);
    assert_close(s.recall, recall);
    assert_close(s.f1, f1);
    assert_eq!(s.support, support);
}

/// Ten examples, three classes.
fn three_classes() -> Classification {
    let truth = [0, 0, 0, 1, 1, 1, 1, 2, 2, 2];
    let predicted = [0, 0, 1, 1, 1, 2, 0, 2, 2, 2];
    classify(&predicted, &truth, 3)
}

#[test]
fn hand_computed_three_class_example() {
    let m = three_classes();
    // confusion[true][predicted]:
    //            pred 0  pred 1  pred 2 | support
    //   true 0      2       1       0   |   3
    //   true 1      1       2       1   |   4
    //   true 2      0       0       3   |   3
    //   ------------------------------
    //   predicted   3       3       4      (10 examples, 2 + 2 + 3 = 7 correct)
    assert_eq!(m.classes, 3);
    assert_eq!(
        m.confusion,
        vec![vec![2, 1, 0], vec![1, 2, 1], vec![0, 0, 3]]
    );
    // accuracy = 7 / 10
    assert_close(m.accuracy, 0.7);
    // class 0: tp 2, fp 1 (a true 1), fn 1 (predicted 1)
    //   precision 2/3, recall 2/3, f1 = 2·2 / (2·2 + 1 + 1) = 4/6 = 2/3
    assert_scores(&m.per_class[0], 2.0 / 3.0, 2.0 / 3.0, 2.0 / 3.0, 3);
    // class 1: tp 2, fp 1 (a true 0), fn 2 (predicted 2 and 0)
    //   precision 2/3, recall 2/4 = 1/2, f1 = 4 / (4 + 1 + 2) = 4/7
    assert_scores(&m.per_class[1], 2.0 / 3.0, 0.5, 4.0 / 7.0, 4);
    // class 2: tp 3, fp 1 (a true 1), fn 0
    //   precision 3/4, recall 3/3 = 1, f1 = 6 / (6 + 1 + 0) = 6/7
    assert_scores(&m.per_class[2], 0.75, 1.0, 6.0 / 7.0, 3);
    // macro precision = (2/3 + 2/3 + 3/4) / 3 = (8 + 8 + 9) / 36 = 25/36
    assert_close(m.macro_precision, 25.0 / 36.0);
    // macro recall = (2/3 + 1/2 + 1) / 3 = (4 + 3 + 6) / 18 = 13/18
    assert_close(m.macro_recall, 13.0 / 18.0);
    // macro f1 = (2/3 + 4/7 + 6/7) / 3 = (14 + 12 + 18) / 63 = 44/63
    assert_close(m.macro_f1, 44.0 / 63.0);
}

#[test]
fn perfect_predictions() {
    let labels = [2, 0, 1, 1, 0, 2, 2];
    let m = classify(&labels, &labels, 3);
    assert_close(m.accuracy, 1.0);
    assert_scores(&m.per_class[0], 1.0, 1.0, 1.0, 2);
    assert_scores(&m.per_class[1], 1.0, 1.0, 1.0, 2);
    assert_scores(&m.per_class[2], 1.0, 1.0, 1.0, 3);
    assert_close(m.macro_precision, 1.0);
    assert_close(m.macro_recall, 1.0);
    assert_close(m.macro_f1, 1.0);
    assert_eq!(
        m.confusion,
        vec![vec![2, 0, 0], vec![0, 2, 0], vec![0, 0, 3]]
    );
}

#[test]
fn a_class_never_predicted_has_precision_zero_not_nan() {
    // Class 1 is present twice but never predicted; class 2 is neither present nor predicted.
    let truth = [0, 1, 1, 0];
    let predicted = [0, 0, 0, 0];
    let m = classify(&predicted, &truth, 3);
    // class 0: tp 2, fp 2, fn 0 → precision 1/2, recall 1, f1 = 4 / (4 + 2) = 2/3
    assert_scores(&m.per_class[0], 0.5, 1.0, 2.0 / 3.0, 2);
    assert_scores(&m.per_class[1], 0.0, 0.0, 0.0, 2);
    assert_scores(&m.per_class[2], 0.0, 0.0, 0.0, 0);
    // Macro averages count all three classes.
    assert_close(m.macro_precision, 0.5 / 3.0);
    assert_close(m.macro_recall, 1.0 / 3.0);
    assert_close(m.macro_f1, (2.0 / 3.0) / 3.0);
    assert_close(m.accuracy, 0.5);
    let all = [m.accuracy, m.macro_precision, m.macro_recall, m.macro_f1];
    assert!(all.iter().all(|v| v.is_finite()));
    assert!(m
        .per_class
        .iter()
        .all(|s| s.precision.is_finite() && s.recall.is_finite() && s.f1.is_finite()));
    assert!(!m.render().contains("NaN"));
}

#[test]
fn no_examples_gives_zeros() {
    let m = classify(&[], &[], 2);
    assert_eq!(m.classes, 2);
    assert_close(m.accuracy, 0.0);
    assert_close(m.macro_f1, 0.0);
    assert_eq!(m.confusion, vec![vec![0, 0], vec![0, 0]]);
    assert!(!m.render().contains("NaN"));
}

#[test]
fn labels_beyond_classes_widen_the_result() {
    let m = classify(&[0, 3], &[1, 0], 2);
    assert_eq!(m.classes, 4);
    assert_eq!(m.per_class.len(), 4);
    assert_eq!(m.confusion[0][3], 1);
    assert_eq!(m.confusion[1][0], 1);
}

#[test]
fn matches_scikit_learn() {
    // scikit-learn 1.9.1:
    //   t = [0,1,2,2,0,1,1,3,2,0,1,2]; p = [0,2,2,1,0,1,0,0,2,2,1,2]
    //   precision_recall_fscore_support(t, p, labels=[0,1,2,3,4], zero_division=0)
    //   precision_recall_fscore_support(..., average='macro', zero_division=0)
    //   confusion_matrix(t, p, labels=[0,1,2,3,4]); accuracy_score(t, p)
    let truth = [0, 1, 2, 2, 0, 1, 1, 3, 2, 0, 1, 2];
    let predicted = [0, 2, 2, 1, 0, 1, 0, 0, 2, 2, 1, 2];
    let m = classify(&predicted, &truth, 5);
    let precision = [0.5, 0.6666666666666666, 0.6, 0.0, 0.0];
    let recall = [0.6666666666666666, 0.5, 0.75, 0.0, 0.0];
    let f1 = [
        0.5714285714285714,
        0.5714285714285714,
        0.6666666666666666,
        0.0,
        0.0,
    ];
    let support = [3, 4, 4, 1, 0];
    for c in 0..5 {
        assert_scores(&m.per_class[c], precision[c], recall[c], f1[c], support[c]);
    }
    assert_close(m.macro_precision, 0.35333333333333333);
    assert_close(m.macro_recall, 0.3833333333333333);
    assert_close(m.macro_f1, 0.36190476190476184);
    assert_close(m.accuracy, 0.5833333333333334);
    assert_eq!(
        m.confusion,
        vec![
            vec![2, 0, 1, 0, 0],
            vec![1, 2, 1, 0, 0],
            vec![0, 1, 3, 0, 0],
            vec![1, 0, 0, 0, 0],
            vec![0, 0, 0, 0, 0],
        ]
    );
}

#[test]
fn binary_from_one_logit() {
    let logits = arr2(&[[2.5f32], [-0.1], [0.0], [1e-6], [f32::NAN], [-3.0]]);
    assert_eq!(predicted_classes(&logits.view()), vec![1, 0, 0, 1, 0, 0]);
}

#[test]
fn argmax_ties_go_to_the_lowest_index() {
    let scores = arr2(&[
        [0.1f32, 0.7, 0.2],
        [0.4, 0.4, 0.2],
        [0.3, 0.3, 0.3],
        [0.0, 0.5, 0.5],
        [f32::NAN, 0.2, 0.1],
        [f32::NEG_INFINITY, f32::NEG_INFINITY, f32::NEG_INFINITY],
        [-1.0, -2.0, -0.5],
    ]);
    assert_eq!(predicted_classes(&scores.view()), vec![1, 0, 0, 1, 1, 0, 2]);
}

#[test]
fn predicted_classes_of_no_rows_or_no_columns() {
    assert!(predicted_classes(&Array2::<f32>::zeros((0, 3)).view()).is_empty());
    assert_eq!(
        predicted_classes(&Array2::<f32>::zeros((2, 0)).view()),
        vec![0, 0]
    );
}

#[test]
fn render_shows_accuracy_table_and_confusion_matrix() {
    let text = three_classes().render();
    let expected = "\
accuracy: 0.7000 (7 of 10 correct)

class  precision  recall      f1  support
0         0.6667  0.6667  0.6667        3
1         0.6667  0.5000  0.5714        4
2         0.7500  1.0000  0.8571        3
macro     0.6944  0.7222  0.6984       10

confusion matrix (rows: true class, columns: predicted class):
true\\pred  0  1  2
0          2  1  0
1          1  2  1
2          0  0  3
";
    assert_eq!(text, expected, "\n{text}");
}

#[test]
fn render_widths_adapt_and_lines_have_no_trailing_spaces() {
    // Twelve classes and a count in the thousands.
    let mut truth = vec![0; 1234];
    let mut predicted = vec![0; 1234];
    truth.extend(1..12);
    predicted.extend((1..12).rev());
    let m = classify(&predicted, &truth, 12);
    let text = m.render();
    assert!(text.lines().all(|line| line == line.trim_end()), "{text}");
    assert!(
        text.contains("\n11        0.0000  0.0000  0.0000        1\n"),
        "{text}"
    );
    assert!(text.contains("\ntrue\\pred     0  1  2"), "{text}");
    assert!(text.contains("\n0          1234  0  0"), "{text}");
    assert!(
        text.contains("\nmacro     0.1667  0.1667  0.1667     1245\n"),
        "{text}"
    );
    // Every confusion row is as wide as the header.
    let confusion: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("true\\pred"))
        .collect();
    assert_eq!(confusion.len(), 13);
    let width = confusion[0].len();
    assert!(confusion.iter().all(|l| l.len() == width), "{text}");
}

#[test]
fn render_omits_a_huge_confusion_matrix() {
    let labels: Vec<usize> = (0..40).collect();
    let text = classify(&labels, &labels, 40).render();
    assert!(
        text.contains("confusion matrix: omitted for 40 classes"),
        "{text}"
    );
    assert!(!text.contains("true\\pred"));
}

#[test]
fn serializes_to_json() {
    let json = serde_json::to_value(three_classes()).unwrap();
    assert_eq!(json["classes"], 3);
    assert_eq!(json["accuracy"], 0.7);
    assert_eq!(json["per_class"][2]["precision"], 0.75);
    assert_eq!(json["per_class"][1]["support"], 4);
    assert_eq!(json["confusion"][1], serde_json::json!([1, 2, 1]));
    assert!(json["macro_f1"].is_f64());
}

#[test]
fn hand_computed_regression_example() {
    // errors ŷ − y: 0.5, 0, −0.5, 1
    let m = regress(&[1.5, 2.0, 2.5, 5.0], &[1.0, 2.0, 3.0, 4.0], 1);
    // mae = (0.5 + 0 + 0.5 + 1) / 4 = 0.5
    assert_close(m.mae, 0.5);
    // mse = (0.25 + 0 + 0.25 + 1) / 4 = 0.375
    assert_close(m.rmse, 0.375f64.sqrt());
    // ȳ = 2.5, SS_tot = 2.25 + 0.25 + 0.25 + 2.25 = 5, SS_res = 1.5: R² = 1 − 1.5/5 = 0.7
    assert_close(m.r2, 0.7);
}

#[test]
fn regression_averages_each_output_with_equal_weight() {
    // Two outputs per row: the first as above, the second predicted exactly.
    let predicted = [1.5, 2.0, 2.0, 4.0, 2.5, 6.0, 5.0, 8.0];
    let truth = [1.0, 2.0, 2.0, 4.0, 3.0, 6.0, 4.0, 8.0];
    let m = regress(&predicted, &truth, 2);
    // scikit-learn, multioutput="uniform_average": the mean of the per-output scores.
    assert_close(m.mae, (0.5 + 0.0) / 2.0);
    assert_close(m.rmse, (0.375f64.sqrt() + 0.0) / 2.0);
    assert_close(m.r2, (0.7 + 1.0) / 2.0);
}

#[test]
fn r2_of_constant_targets_is_1_if_exact_else_0() {
    assert_close(regress(&[3.0, 3.0], &[3.0, 3.0], 1).r2, 1.0);
    let off = regress(&[3.0, 4.0], &[3.0, 3.0], 1);
    assert_close(off.r2, 0.0);
    assert_close(off.mae, 0.5);
    // Predicting the mean scores 0; worse than the mean is negative.
    assert_close(regress(&[2.5, 2.5], &[2.0, 3.0], 1).r2, 0.0);
    assert_close(regress(&[3.0, 2.0], &[2.0, 3.0], 1).r2, -3.0);
    let none = regress(&[], &[], 1);
    assert_eq!(
        none,
        Regression {
            mae: 0.0,
            rmse: 0.0,
            r2: 0.0
        }
    );
}

const LINE: &str = "
model line {
  input  x: [N, 1]
  target y: [N, 1]
  h = x |> dense(1)
  output h
  loss mse(h, y)
}
";

#[test]
fn a_regression_model_is_evaluated_with_mae_rmse_and_r2() {
    let model = kiln::compile_str(LINE).unwrap();
    let mut s = model.session(0).unwrap();
    // h = 1·x + 0.5
    s.set_parameter(
        "h.dense.weight",
        ndarray::arr2(&[[1.0f32]]).into_dyn().view(),
    )
    .unwrap();
    s.set_parameter("h.dense.bias", ndarray::arr1(&[0.5f32]).into_dyn().view())
        .unwrap();
    let x = ndarray::arr2(&[[1.0f32], [1.5], [2.0], [4.5]]).into_dyn();
    let y = ndarray::arr2(&[[1.0f32], [2.0], [3.0], [4.0]]).into_dyn();
    // predictions 1.5, 2, 2.5, 5: the hand-computed example above.
    let ev = s.evaluate(&[("x", &x)], &[("y", &y)]).unwrap();
    assert!(ev.classification.is_none());
    let r = ev.regression.expect("regression metrics");
    assert_close(r.mae, 0.5);
    assert!((r.rmse - 0.375f64.sqrt()).abs() < 1e-6, "{}", r.rmse);
    assert!((r.r2 - 0.7).abs() < 1e-6, "{}", r.r2);
    assert!((ev.loss.unwrap() - 0.375).abs() < 1e-6);
}

#[test]
fn a_classifier_has_no_regression_metrics() {
    let model = kiln::compile_str(
        "model c {\n  input x: [N, 2]\n  target y: class[N] of 2\n  s = x |> dense(2)\n  output s\n  loss cross_entropy(s, y)\n}\n",
    )
    .unwrap();
    let mut s = model.session(0).unwrap();
    let x = ndarray::arr2(&[[1.0f32, 0.0]]).into_dyn();
    let y = ndarray::arr1(&[1.0f32]).into_dyn();
    let ev = s.evaluate(&[("x", &x)], &[("y", &y)]).unwrap();
    assert!(ev.regression.is_none());
    assert!(ev.classification.is_some());
}
