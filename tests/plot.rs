//! Training curves: `kiln train --plot` and `kiln plot`, through the binary.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};

fn kiln(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("kiln runs")
}

fn example(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
        .display()
        .to_string()
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        stderr(out)
    );
}

/// Trains the digits MLP (it holds out a validation split, so the history has all three
/// series) for five epochs in `dir`, with the extra `args`.
fn train_digits(dir: &Path, args: &[&str]) -> Output {
    let model = example("digits_mlp.kiln");
    let mut all = vec![
        "train",
        model.as_str(),
        "--epochs",
        "5",
        "--quiet",
        "--save",
        "m.safetensors",
        "--report",
        "r.json",
    ];
    all.extend_from_slice(args);
    kiln(&all, dir)
}

/// What a test checks in an SVG plot.
struct Svg {
    /// Stroke color and point count of every polyline.
    polylines: Vec<(String, usize)>,
    /// Every text, trimmed.
    texts: Vec<String>,
}

fn parse_svg(path: &Path) -> Svg {
    let text = std::fs::read_to_string(path).expect("plot written");
    let doc = roxmltree::Document::parse(&text).expect("the SVG is well-formed XML");
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "svg");
    let mut polylines = Vec::new();
    let mut texts = Vec::new();
    for node in root.descendants().filter(|n| n.is_element()) {
        match node.tag_name().name() {
            "polyline" => {
                let points = node.attribute("points").unwrap_or("");
                let n = points.split_whitespace().count();
                let stroke = node.attribute("stroke").unwrap_or("").to_string();
                polylines.push((stroke, n));
            }
            "text" => {
                let t: String = node
                    .descendants()
                    .filter(|n| n.is_text())
                    .filter_map(|n| n.text())
                    .collect::<String>()
                    .trim()
                    .to_string();
                texts.push(t);
            }
            _ => {}
        }
    }
    Svg { polylines, texts }
}

/// Distinct stroke colors of the polylines with at least `points` points.
fn long_curves(svg: &Svg, points: usize) -> BTreeSet<String> {
    svg.polylines
        .iter()
        .filter(|(_, n)| *n >= points)
        .map(|(c, _)| c.clone())
        .collect()
}

fn has_text(svg: &Svg, s: &str) -> bool {
    svg.texts.iter().any(|t| t == s)
}

/// No temporary file is left next to the outputs.
fn no_temporaries(dir: &Path) {
    for e in std::fs::read_dir(dir).expect("dir") {
        let name = e.expect("entry").file_name().to_string_lossy().into_owned();
        assert!(!name.contains(".tmp-"), "left over: {name}");
    }
}

#[test]
fn train_plot_draws_both_loss_curves_and_the_accuracy() {
    let dir = tmp();
    let d = dir.path();
    let out = train_digits(d, &["--plot", "c.svg"]);
    ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("plot: c.svg"));
    let svg = parse_svg(&d.join("c.svg"));
    // Train loss, validation loss and validation accuracy: one line each over 5 epochs.
    let curves = long_curves(&svg, 5);
    assert!(
        curves.len() >= 3,
        "curves with 5 points, by color: {curves:?}\nall: {:?}",
        svg.polylines
    );
    for label in ["train loss", "validation loss", "validation accuracy"] {
        assert!(
            has_text(&svg, label),
            "no legend `{label}`: {:?}",
            svg.texts
        );
    }
    assert!(
        has_text(&svg, "digits_mlp: training curves"),
        "{:?}",
        svg.texts
    );
    assert!(has_text(&svg, "epoch"));
    no_temporaries(d);

    // `kiln plot` of the saved report draws the same document (default name: r.svg).
    ok(&kiln(&["plot", "r.json"], d));
    let again = std::fs::read_to_string(d.join("r.svg")).expect("r.svg written");
    let first = std::fs::read_to_string(d.join("c.svg")).expect("c.svg");
    assert_eq!(again, first);
}

#[test]
fn plot_png_from_a_saved_report() {
    let dir = tmp();
    let d = dir.path();
    ok(&train_digits(d, &[]));
    ok(&kiln(&["plot", "r.json", "--out", "c.png"], d));
    let file = std::fs::File::open(d.join("c.png")).expect("c.png written");
    let mut reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("decodes");
    assert!(info.width > 0 && info.height > 0);
    let px = info.color_type.samples();
    let colors: BTreeSet<&[u8]> = buf[..info.buffer_size()].chunks(px).collect();
    assert!(colors.len() > 10, "{} colors: a blank image", colors.len());
    // The three series colors are all drawn.
    for rgb in [[31u8, 119, 180], [255, 127, 14], [44, 160, 44]] {
        assert!(
            colors.iter().any(|c| c[..3] == rgb),
            "no pixel of color {rgb:?}"
        );
    }
    no_temporaries(d);
}

#[test]
fn a_report_with_gaps_one_series_and_extra_fields_plots() {
    let dir = tmp();
    let d = dir.path();
    // A diverged epoch is saved with a null loss; no validation split; unknown fields.
    std::fs::write(
        d.join("r.json"),
        r#"{"model": "m", "epochs": 7, "future": {"x": [1, 2]}, "history": [
            {"epoch": 1, "lr": 0.1, "train_loss": 2.0, "val_loss": null, "val_accuracy": null, "seconds": 0.1},
            {"epoch": 2, "lr": 0.1, "train_loss": 1.0, "val_loss": null, "val_accuracy": null, "seconds": 0.1},
            {"epoch": 3, "lr": 0.1, "train_loss": null, "val_loss": null, "val_accuracy": null, "seconds": 0.1},
            {"epoch": 4, "lr": 0.1, "train_loss": 0.01, "val_loss": null, "val_accuracy": null, "seconds": 0.1},
            {"epoch": 5, "lr": 0.1, "train_loss": 0.001, "val_loss": null, "val_accuracy": null, "seconds": 0.1}
        ]}"#,
    )
    .expect("write");
    ok(&kiln(&["plot", "r.json", "--out", "gaps.svg"], d));
    let svg = parse_svg(&d.join("gaps.svg"));
    assert!(has_text(&svg, "train loss"));
    assert!(!has_text(&svg, "validation loss"), "{:?}", svg.texts);
    assert!(!has_text(&svg, "validation accuracy"), "{:?}", svg.texts);
    // The skipped epoch splits the line in two runs of two points.
    let runs: Vec<usize> = svg
        .polylines
        .iter()
        .filter(|(c, _)| c == "#1F77B4")
        .map(|(_, n)| *n)
        .collect();
    assert!(runs.iter().filter(|&&n| n == 2).count() >= 2, "{runs:?}");
    // Losses over three decades: a logarithmic axis with power-of-ten ticks.
    assert!(
        has_text(&svg, "0.01") && has_text(&svg, "0.1"),
        "{:?}",
        svg.texts
    );

    // A single epoch still draws.
    std::fs::write(
        d.join("one.json"),
        r#"{"model": "m", "history": [{"epoch": 1, "train_loss": 0.5}]}"#,
    )
    .expect("write");
    ok(&kiln(&["plot", "one.json", "--out", "one.png"], d));
    assert!(d.join("one.png").exists());
}

#[test]
fn unknown_extension_is_refused_before_anything_runs() {
    let dir = tmp();
    let d = dir.path();
    std::fs::write(
        d.join("r.json"),
        r#"{"model": "m", "history": [{"epoch": 1, "train_loss": 0.5}]}"#,
    )
    .expect("write");
    let out = kiln(&["plot", "r.json", "--out", "c.pdf"], d);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("c.pdf") && err.contains(".svg") && err.contains(".png"),
        "{err}"
    );
    assert!(!d.join("c.pdf").exists());

    // `train --plot` refuses it before training: no checkpoint is written.
    let out = train_digits(d, &["--plot", "c.jpg"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains(".svg"), "{}", stderr(&out));
    assert!(!d.join("m.safetensors").exists());
}

#[test]
fn missing_report_is_an_io_error_naming_it() {
    let dir = tmp();
    let out = kiln(&["plot", "nowhere.json"], dir.path());
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("nowhere.json"), "{}", stderr(&out));
}

#[test]
fn malformed_report_names_the_file_line_and_column() {
    let dir = tmp();
    let d = dir.path();
    std::fs::write(
        d.join("bad.json"),
        "{\"model\": \"m\",\n  \"history\": [1, }",
    )
    .expect("write");
    let out = kiln(&["plot", "bad.json"], d);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("bad.json:2:"), "{}", stderr(&out));
    assert!(!d.join("bad.svg").exists());

    // Well-formed JSON without epochs is wrong input too.
    std::fs::write(d.join("empty.json"), r#"{"model": "m", "history": []}"#).expect("write");
    let out = kiln(&["plot", "empty.json"], d);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("no epochs"), "{}", stderr(&out));
}

/// Losses falling over 27 decades (XOR reaches 8e-27) get a label near the smallest
/// loss; an accuracy between 90 and 98 % gets an axis around those values, not 0–100.
#[test]
fn the_axes_follow_the_values() {
    let dir = tmp();
    let d = dir.path();
    let history: Vec<String> = (1..=30)
        .map(|e| {
            let loss = 0.7 * 10f64.powi(-e + 1).max(8e-27);
            let acc = 0.9 + 0.08 * f64::from(e) / 30.0;
            format!(
                r#"{{"epoch": {e}, "train_loss": {loss:e}, "val_loss": null, "val_accuracy": {acc}}}"#
            )
        })
        .collect();
    std::fs::write(
        d.join("r.json"),
        format!(r#"{{"model": "m", "history": [{}]}}"#, history.join(",")),
    )
    .expect("write");
    ok(&kiln(&["plot", "r.json", "--out", "axes.svg"], d));
    let svg = parse_svg(&d.join("axes.svg"));
    let exponents: Vec<i32> = svg
        .texts
        .iter()
        .filter_map(|t| t.strip_prefix("1e").and_then(|x| x.parse().ok()))
        .collect();
    assert!(
        exponents.iter().any(|&x| x <= -25),
        "no tick near 8e-27: {:?}",
        svg.texts
    );
    // The accuracy axis spans 85–100 %: no tick at 0 or 50.
    assert!(has_text(&svg, "accuracy (%)"), "{:?}", svg.texts);
    assert!(
        has_text(&svg, "90") && has_text(&svg, "100"),
        "{:?}",
        svg.texts
    );
    assert!(
        !has_text(&svg, "50") && !has_text(&svg, "0"),
        "{:?}",
        svg.texts
    );
}
