//! The `kiln` binary end to end: exit codes (0 ok, 1 input wrong, 2 usage or I/O error),
//! what goes to stdout and stderr, `--format json`, lint levels, `summary` and `explain`.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const KILN: &str = env!("CARGO_BIN_EXE_kiln");

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `kiln ARGS` from the repository root, with colors off via `--color` where the
/// subcommand has it (stderr is a pipe here, so `auto` is off anyway).
fn kiln(args: &[&str]) -> Output {
    Command::new(KILN)
        .args(args)
        .current_dir(root())
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("run kiln")
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).expect("stdout is UTF-8")
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).expect("stderr is UTF-8")
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exited normally, not by a signal")
}

/// Writes `text` to a fresh file for test `test`.
fn temp(test: &str, name: &str, text: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-cli-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temp path")
}

/// A model whose only problem is an unused binding (lint W0007).
const UNUSED: &str = "model m {
  input x: [N, 4]
  target y: [N, 1]
  unused = x |> dense(3)
  h = x |> dense(1)
  output h
  loss mse(h, y)
}
";

/// A model with one error: an unknown name (E0201) on line 4, column 7.
const UNKNOWN_NAME: &str = "model m {
  input x: [N, 4]
  target y: [N, 1]
  h = xx |> dense(1)
  output h
  loss mse(h, y)
}
";

fn examples() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("examples"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "kiln"))
        .collect();
    v.sort();
    assert!(v.len() >= 5, "examples/*.kiln");
    v
}

// ---------------------------------------------------------------- check

#[test]
fn every_example_checks_silently() {
    for ex in examples() {
        let o = kiln(&["check", s(&ex)]);
        assert_eq!(code(&o), 0, "{}: {}", ex.display(), stderr(&o));
        assert_eq!(stderr(&o), "", "{}", ex.display());
        assert_eq!(stdout(&o), "", "{}", ex.display());
    }
    // All at once, with relative paths as a person would type them.
    let rel: Vec<String> = examples()
        .iter()
        .map(|p| format!("examples/{}", p.file_name().unwrap().to_str().unwrap()))
        .collect();
    let mut args = vec!["check"];
    args.extend(rel.iter().map(String::as_str));
    let o = kiln(&args);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stderr(&o), "");
}

#[test]
fn an_error_exits_1_and_names_its_code() {
    let p = temp("error", "bad.kiln", UNKNOWN_NAME.as_bytes());
    let o = kiln(&["check", "--color", "never", s(&p)]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("error[E0201]"), "{err}");
    assert!(err.contains("bad.kiln:4:7"), "points at the name: {err}");
    assert!(err.contains("found 1 error"), "{err}");
    assert_eq!(stdout(&o), "");
    // Colors only when asked for.
    assert!(!err.contains('\x1b'), "no ANSI escapes with --color never");
    let o = kiln(&["check", "--color", "always", s(&p)]);
    assert!(
        stderr(&o).contains('\x1b'),
        "ANSI escapes with --color always"
    );
}

#[test]
fn a_syntax_error_exits_1() {
    let p = temp("syntax", "syntax.kiln", b"model m {\n  h = x |>\n}\n");
    let o = kiln(&["check", s(&p)]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("E0101"), "{}", stderr(&o));
}

#[test]
fn a_non_utf8_file_exits_1_with_e0104() {
    let p = temp("utf8", "latin1.kiln", b"# caf\xe9\nmodel m {}\n");
    let o = kiln(&["check", s(&p)]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("E0104"), "{}", stderr(&o));
}

#[test]
fn deep_nesting_exits_1_not_a_crash() {
    let text = format!(
        "model m {{\n  h = {}x{}\n}}\n",
        "(".repeat(100_000),
        ")".repeat(100_000)
    );
    let p = temp("deep", "deep.kiln", text.as_bytes());
    let o = kiln(&["check", s(&p)]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("E0103"));
}

#[test]
fn a_missing_file_exits_2_with_one_line_naming_it() {
    let missing = root().join("no/such/dir/missing.kiln");
    let o = kiln(&["check", s(&missing)]);
    assert_eq!(code(&o), 2);
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "exactly one line: {err:?}");
    assert!(err.ends_with('\n'));
    assert!(err.contains(s(&missing)), "names the path: {err:?}");
    assert!(err.starts_with("error"), "{err:?}");
    assert_eq!(stdout(&o), "");

    // Also when it comes after a good file, and for `summary`.
    let o = kiln(&["check", "examples/xor.kiln", "missing.kiln"]);
    assert_eq!(code(&o), 2);
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
    let o = kiln(&["summary", "missing.kiln"]);
    assert_eq!(code(&o), 2);
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("missing.kiln"));
}

#[test]
fn a_directory_exits_2() {
    let o = kiln(&["check", "examples"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("examples"));
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["check", "--bogus", "examples/xor.kiln"][..],
        &["check"],
        &["frobnicate"],
        &[],
        &["check", "--format", "xml", "examples/xor.kiln"],
        &["check", "--color", "sometimes", "examples/xor.kiln"],
        // Counts and rates out of range are refused before anything runs.
        &["train", "examples/xor.kiln", "--batch", "0"],
        &["train", "examples/xor.kiln", "--epochs", "0"],
        &["train", "examples/xor.kiln", "--batch", "1000000000000"],
        &["train", "examples/xor.kiln", "--lr", "nan"],
        &["train", "examples/xor.kiln", "--lr", "0"],
        &["bench", "examples/xor.kiln", "--seconds", "inf"],
        &["bench", "examples/xor.kiln", "--batch", "0"],
        // Negative numbers are values out of range, not flags.
        &["train", "examples/xor.kiln", "--lr", "-1"],
        &["train", "examples/xor.kiln", "--epochs", "-3"],
        &["bench", "examples/xor.kiln", "--seconds", "-2"],
        &["train", "examples/xor.kiln", "--threads", "-1"],
        // A lint that does not exist silences nothing: refused, as W0008 is in a file.
        &["check", "--allow", "W0999", "examples/xor.kiln"],
        &["check", "--deny", "unusd", "examples/xor.kiln"],
    ] {
        let o = kiln(args);
        assert_eq!(code(&o), 2, "{args:?}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(
            err.starts_with("error:") || err.starts_with("Usage:") || err.contains("\nUsage:"),
            "{args:?}: {err}"
        );
        assert_eq!(stdout(&o), "", "{args:?}");
    }
    // A negative number is told its range, not clap's tip to write `-- -1`.
    let o = kiln(&["train", "examples/xor.kiln", "--lr", "-1"]);
    assert!(!stderr(&o).contains("-- -1"), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("must be a positive finite number"),
        "{}",
        stderr(&o)
    );
    let o = kiln(&["train", "examples/xor.kiln", "--epochs", "-3"]);
    assert!(stderr(&o).contains("-3 is not in 1..="), "{}", stderr(&o));
    let o = kiln(&["check", "--deny", "unusd", "examples/xor.kiln"]);
    assert!(
        stderr(&o).contains("did you mean `unused`?"),
        "{}",
        stderr(&o)
    );
    // An unknown flag gets clap's usage line.
    let o = kiln(&["check", "--bogus", "examples/xor.kiln"]);
    assert!(stderr(&o).contains("'--bogus'"), "{}", stderr(&o));
    assert!(stderr(&o).contains("Usage: kiln check"), "{}", stderr(&o));
}

#[test]
fn a_bench_batch_too_large_for_memory_exits_2() {
    // 2³¹ − 1 rows of the digits model's 64 inputs: 4 TiB for the bench's data.
    let o = kiln(&["bench", "examples/digits_mlp.kiln", "--batch", "2147483647"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("too large"), "{}", stderr(&o));
    assert_eq!(stdout(&o), "");
}

/// A model whose parameters outgrow the machine's memory (2⁴⁰ of them, 4 TiB) is the
/// input's fault: exit 1 with a message that says how large they are, before anything
/// is allocated — never an abort.
#[test]
fn a_model_too_large_for_memory_exits_1() {
    let huge = "model huge {\n  input  x: [N, 1048576]\n  target y: [N, 1048576]\n  \
                out = x |> dense(1048576)\n  output out\n  loss mse(out, y)\n}\n";
    let f = temp("too_large", "huge.kiln", huge.as_bytes());
    let onnx = f.with_extension("onnx");
    for args in [
        &["bench", s(&f), "--batch", "1", "--seconds", "0.01"][..],
        &["train", s(&f), "--train", "examples/data/xor.csv"],
        &["export", s(&f), "-o", s(&onnx)],
    ] {
        let o = kiln(args);
        assert_eq!(code(&o), 1, "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("`huge`'s parameters hold 1,099,512,676,352 values"),
            "{args:?}: {}",
            stderr(&o)
        );
    }
    let model = kiln::compile_file(&f).expect("the model checks");
    let Err(err) = model.session(1) else {
        panic!("a session of 4 TiB of parameters");
    };
    assert!(
        err.to_string().contains("more than this machine's memory"),
        "{err}"
    );
}

/// `pretrained` (the flag, and the train-block setting relative to the model file): the
/// parameters whose names and shapes match load, the others start fresh and are named,
/// the file's other tensors are a warning; fine-tuning from them starts far below a
/// fresh run's loss; a tensor of another shape is an error naming both shapes.
#[test]
fn pretrained_weights_load_by_name_and_start_training_ahead() {
    let digits = s(&root().join("examples/data/digits_train.csv")).to_string();
    let base = temp("pretrained", "base.safetensors", b"");
    let o = kiln(&[
        "train",
        "examples/digits_mlp.kiln",
        "--epochs",
        "2",
        "--quiet",
        "--save",
        s(&base),
        "--train",
        &digits,
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let src = std::fs::read_to_string(root().join("examples/digits_mlp.kiln"))
        .unwrap()
        .replace(
            "  data train: \"data/digits_train.csv\", test: \"data/digits_test.csv\"\n",
            "",
        );
    let head = src
        .replace("    |> dense(10)\n", "    |> dense(10) as head\n")
        .replace("digits_mlp", "tuned")
        .replace("epochs 60", "epochs 1");
    let tuned = temp("pretrained", "tuned.kiln", head.as_bytes());
    let epoch_one_loss = |extra: &[&str]| {
        let report = tuned.with_extension("json");
        let mut args = vec![
            "train",
            s(&tuned),
            "--train",
            &digits,
            "--report",
            s(&report),
            "--save",
        ];
        let save = tuned.with_extension("safetensors");
        args.push(s(&save));
        args.extend_from_slice(extra);
        let o = kiln(&args);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        let r: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
        (r["history"][0]["train_loss"].as_f64().unwrap(), o)
    };
    let (scratch, _) = epoch_one_loss(&[]);
    let (ahead, o) = epoch_one_loss(&["--pretrained", s(&base)]);
    assert!(
        ahead < scratch / 3.0,
        "pretrained {ahead} vs scratch {scratch}"
    );
    let out = stdout(&o);
    assert!(
        out.contains("pretrained: 4 of 6 parameters (16,576 values) from ")
            && out.contains("; initialized: head.weight, head.bias"),
        "{out}"
    );
    assert!(
        stderr(&o).contains("(a renamed layer?): logits.dense.2.bias, logits.dense.2.weight"),
        "{}",
        stderr(&o)
    );
    // The setting, relative to the model file, gives the same run.
    let set = head.replace(
        "  seed   42\n",
        "  seed   42\n  pretrained \"base.safetensors\"\n",
    );
    std::fs::write(&tuned, set).unwrap();
    let (from_setting, _) = epoch_one_loss(&[]);
    assert_eq!(from_setting.to_bits(), ahead.to_bits());
    // Another shape under a parameter's name.
    let wider = src.replace(
        "    |> dense(10)\n",
        "    |> dense(32) |> relu |> dense(10) as head\n",
    );
    let wider = temp("pretrained", "wider.kiln", wider.as_bytes());
    let o = kiln(&[
        "train",
        s(&wider),
        "--train",
        &digits,
        "--pretrained",
        s(&base),
        "--epochs",
        "1",
        "--save",
        s(&wider.with_extension("safetensors")),
    ]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("`logits.dense.2.weight`: [64, 10] in the file, [64, 32] in the model"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn help_and_version_exit_0() {
    let o = kiln(&["--help"]);
    assert_eq!(code(&o), 0);
    assert!(stdout(&o).contains("check"));
    let o = kiln(&["--version"]);
    assert_eq!(code(&o), 0);
    assert!(stdout(&o).contains(env!("CARGO_PKG_VERSION")));
}

// ---------------------------------------------------------------- --format json

fn json(o: &Output) -> Vec<Value> {
    let v: Value = serde_json::from_str(&stdout(o))
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", stdout(o)));
    v.as_array().expect("a JSON array").clone()
}

fn assert_diag_fields(d: &Value) {
    for key in ["code", "severity", "message", "file"] {
        assert!(d[key].is_string(), "`{key}` is a string: {d}");
    }
    for key in ["line", "column"] {
        assert!(
            d[key].as_u64().is_some_and(|n| n >= 1),
            "`{key}` is one-based: {d}"
        );
    }
    let labels = d["labels"].as_array().expect("labels is an array");
    assert!(!labels.is_empty());
    for l in labels {
        for key in ["line", "column", "end_line", "end_column"] {
            assert!(
                l[key].as_u64().is_some_and(|n| n >= 1),
                "label `{key}`: {l}"
            );
        }
        assert!(l["file"].is_string() && l["message"].is_string() && l["primary"].is_boolean());
    }
    assert_eq!(
        labels.iter().filter(|l| l["primary"] == true).count(),
        1,
        "one primary label: {d}"
    );
}

#[test]
fn json_reports_an_error() {
    let p = temp("json", "bad.kiln", UNKNOWN_NAME.as_bytes());
    let o = kiln(&["check", "--format", "json", s(&p)]);
    assert_eq!(code(&o), 1);
    assert_eq!(stderr(&o), "", "JSON mode keeps stderr clean");
    let diags = json(&o);
    assert_eq!(diags.len(), 1, "{diags:?}");
    let d = &diags[0];
    assert_diag_fields(d);
    assert_eq!(d["code"], "E0201");
    assert_eq!(d["severity"], "error");
    assert!(d["message"].as_str().unwrap().contains("xx"), "{d}");
    assert!(d["file"].as_str().unwrap().ends_with("bad.kiln"));
    assert_eq!(d["line"], 4);
    assert_eq!(d["column"], 7);
    let l = &d["labels"][0];
    assert_eq!(
        (l["line"].as_u64(), l["end_column"].as_u64()),
        (Some(4), Some(9))
    );
}

#[test]
fn json_reports_warnings_and_clean_files() {
    let p = temp("json-warn", "lint.kiln", UNUSED.as_bytes());
    let o = kiln(&["check", "--format", "json", s(&p)]);
    assert_eq!(code(&o), 0);
    let diags = json(&o);
    assert_eq!(diags.len(), 1, "{diags:?}");
    assert_diag_fields(&diags[0]);
    assert_eq!(diags[0]["code"], "W0007");
    assert_eq!(diags[0]["severity"], "warning");

    let o = kiln(&["check", "--format", "json", "examples/xor.kiln"]);
    assert_eq!(code(&o), 0);
    assert!(json(&o).is_empty());
}

#[test]
fn json_is_valid_for_awkward_input() {
    // Quotes, backslashes, control characters and non-ASCII in names and messages.
    let p = temp(
        "json-odd",
        "odd \"name\".kiln",
        "model m {\n  input x: [N, 4]\n  h = x |> dense(\"a\\\\b\t\u{e9}\u{1F600}\")\n}\n"
            .as_bytes(),
    );
    let o = kiln(&["check", "--format", "json", s(&p)]);
    assert_eq!(code(&o), 1);
    let diags = json(&o);
    assert!(!diags.is_empty());
    for d in &diags {
        assert_diag_fields(d);
        assert!(d["file"].as_str().unwrap().ends_with("odd \"name\".kiln"));
    }
    // A non-UTF-8 file: the E0104 diagnostic is JSON as well.
    let p = temp("json-odd", "latin1.kiln", b"model \xe9 {}\n");
    let o = kiln(&["check", "--format", "json", s(&p)]);
    assert_eq!(code(&o), 1);
    let diags = json(&o);
    assert_eq!(diags[0]["code"], "E0104");
    assert_eq!(
        (diags[0]["line"].as_u64(), diags[0]["column"].as_u64()),
        (Some(1), Some(7))
    );
}

// ---------------------------------------------------------------- lint levels

#[test]
fn a_lint_warns_and_exits_0() {
    let p = temp("lint", "lint.kiln", UNUSED.as_bytes());
    let o = kiln(&["check", s(&p)]);
    assert_eq!(code(&o), 0);
    let err = stderr(&o);
    assert!(err.contains("warning[W0007]"), "{err}");
    assert!(err.contains("1 warning emitted"), "{err}");
}

#[test]
fn deny_warnings_makes_a_lint_an_error() {
    let p = temp("deny", "lint.kiln", UNUSED.as_bytes());
    for deny in ["warnings", "W0007", "unused"] {
        let o = kiln(&["check", "--deny", deny, s(&p)]);
        assert_eq!(code(&o), 1, "--deny {deny}");
        let err = stderr(&o);
        assert!(err.contains("error[W0007]"), "--deny {deny}: {err}");
        assert!(err.contains("denied on the command line"), "{err}");
    }
    // Denying another lint leaves this one a warning.
    let o = kiln(&["check", "--deny", "W0003", s(&p)]);
    assert_eq!(code(&o), 0);
    // JSON shows the new severity.
    let o = kiln(&["check", "--deny", "warnings", "--format", "json", s(&p)]);
    assert_eq!(code(&o), 1);
    assert_eq!(json(&o)[0]["severity"], "error");
}

#[test]
fn allow_silences_a_lint() {
    let p = temp("allow", "lint.kiln", UNUSED.as_bytes());
    for allow in ["W0007", "w0007", "unused"] {
        let o = kiln(&["check", "--allow", allow, s(&p)]);
        assert_eq!(code(&o), 0, "--allow {allow}");
        assert_eq!(stderr(&o), "", "--allow {allow}");
    }
    // Allowing does not hide errors.
    let bad = temp("allow", "bad.kiln", UNKNOWN_NAME.as_bytes());
    let o = kiln(&["check", "--allow", "warnings", s(&bad)]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("E0201"));
}

// ---------------------------------------------------------------- summary

#[test]
fn summary_of_digits_mlp() {
    // examples/digits_mlp.kiln: 64 → dense(128) → relu → dense(64) → relu → dense(10).
    let src = std::fs::read_to_string(root().join("examples/digits_mlp.kiln")).unwrap();
    for needle in ["[N, 64]", "dense(128)", "dense(64)", "dense(10)"] {
        assert!(
            src.contains(needle),
            "the example changed: {needle} is gone"
        );
    }
    let trainable = (64 * 128 + 128) + (128 * 64 + 64) + (64 * 10 + 10);
    assert_eq!(trainable, 17_226);

    let o = kiln(&["summary", "examples/digits_mlp.kiln"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stderr(&o), "");
    let out = stdout(&o);
    for name in ["logits.dense.0", "logits.dense.1", "logits.dense.2"] {
        assert!(out.contains(name), "{name} missing:\n{out}");
    }
    let totals = out
        .lines()
        .find(|l| l.starts_with("Trainable params:"))
        .unwrap_or_else(|| panic!("no totals line:\n{out}"));
    assert!(totals.ends_with("17,226"), "{totals}");
    // Per-layer counts, too.
    for count in ["8,320", "8,256", "650"] {
        assert!(out.contains(count), "{count} missing:\n{out}");
    }
}

#[test]
fn summary_of_every_example_exits_0() {
    for ex in examples() {
        let o = kiln(&["summary", s(&ex)]);
        assert_eq!(code(&o), 0, "{}: {}", ex.display(), stderr(&o));
        assert!(stdout(&o).contains("Trainable params:"), "{}", ex.display());
    }
}

#[test]
fn summary_errors() {
    let bad = temp("summary", "bad.kiln", UNKNOWN_NAME.as_bytes());
    let o = kiln(&["summary", s(&bad)]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("E0201"));
    assert_eq!(stdout(&o), "");

    let o = kiln(&["summary", "--model", "nope", "examples/xor.kiln"]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("E0208"), "{}", stderr(&o));
}

#[test]
fn a_file_that_declares_nothing_is_e0211_for_every_command() {
    for (name, text) in [("empty.kiln", ""), ("comment.kiln", "# nothing here\n\n")] {
        let p = temp("nothing", name, text.as_bytes());
        for cmd in ["check", "summary", "train"] {
            let args = [cmd, "--color", "never", s(&p)];
            let o = kiln(&args);
            let err = stderr(&o);
            assert_eq!(code(&o), 1, "{args:?}: {err}");
            assert!(
                err.starts_with(&format!("error[E0211]: `{name}` declares nothing\n")),
                "{args:?}: {err}"
            );
            assert!(err.contains("^ the file ends here"), "{err}");
            assert!(
                err.contains("= help: a model file declares at least one `model NAME { ... }`"),
                "{err}"
            );
            assert!(
                err.ends_with("error: found 1 error and 0 warnings\n"),
                "{err}"
            );
            assert_eq!(stdout(&o), "");
        }
    }
    // A file of blocks for others to `use` declares something.
    let o = kiln(&["check", "tests/ui/lib/residual.kiln"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

#[test]
fn a_zero_one_loss_is_e0404_once_for_check_and_train() {
    for file in [
        "tests/ui/e0404_zero_one_loss_without_train.kiln",
        "tests/ui/e0404_zero_one_loss.kiln",
    ] {
        for cmd in ["check", "train"] {
            let o = kiln(&[cmd, "--color", "never", file]);
            let err = stderr(&o);
            assert_eq!(code(&o), 1, "{cmd} {file}: {err}");
            assert_eq!(
                err.matches("error[E0404]: `zero_one` cannot be trained")
                    .count(),
                1,
                "{cmd} {file}: {err}"
            );
            assert!(
                err.ends_with("error: found 1 error and 0 warnings\n"),
                "{err}"
            );
        }
    }
}

// ---------------------------------------------------------------- explain

#[test]
fn explain_a_code() {
    let o = kiln(&["explain", "E0301"]);
    assert_eq!(code(&o), 0);
    let out = stdout(&o);
    assert!(out.starts_with("E0301: shapes do not broadcast"), "{out}");
    assert!(out.contains("broadcast as NumPy does"), "{out}");
    assert_eq!(stderr(&o), "");

    // Lints by code and by name.
    for q in ["W0007", "unused", "e0301"] {
        let o = kiln(&["explain", q]);
        assert_eq!(code(&o), 0, "explain {q}: {}", stderr(&o));
        assert!(!stdout(&o).is_empty());
    }
}

#[test]
fn explain_an_unknown_code_exits_2() {
    let o = kiln(&["explain", "E9999"]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("E9999"), "{}", stderr(&o));
    assert_eq!(stdout(&o), "");
}

#[test]
fn explain_lists_every_code() {
    let o = kiln(&["explain"]);
    assert_eq!(code(&o), 0);
    let out = stdout(&o);
    for c in kiln::diag::CODES {
        assert!(out.contains(c.code.as_str()), "{} is not listed", c.code);
    }
    // Every listed code explains itself.
    for c in kiln::diag::CODES {
        let o = kiln(&["explain", c.code.as_str()]);
        assert_eq!(code(&o), 0, "{}", c.code);
    }
}

/// Every command that writes to standard output, run with the reading end already closed
/// (`kiln … | head -1` once head has gone): it ends quietly with status 0, never with
/// "failed printing to stdout: Broken pipe" (a panic, status 101).
#[test]
fn every_command_ends_quietly_when_stdout_is_closed() {
    let save = temp("closed-pipe", "iris.safetensors", b"");
    let saved = save.to_str().unwrap();
    let trained = kiln(&[
        "train",
        "examples/iris.kiln",
        "--epochs",
        "1",
        "--quiet",
        "--save",
        saved,
    ]);
    assert_eq!(code(&trained), 0, "{}", stderr(&trained));
    let iris = "examples/iris.kiln";
    let test_csv = "examples/data/iris_test.csv";
    let runs: &[&[&str]] = &[
        &["train", iris, "--epochs", "2", "--save", saved],
        &[
            "train",
            iris,
            "--epochs",
            "2",
            "--diagnose",
            "--save",
            saved,
        ],
        &["explain"],
        &["explain", "E0301"],
        &["grad", iris, "--data", test_csv],
        &["summary", iris],
        &["check", "--format", "json", "examples/resnet_block.kiln"],
        &["ir", iris],
        &["ir", iris, "--after", "fuse"],
        &["eval", iris, "--weights", saved, "--data", test_csv],
        &["predict", iris, "--weights", saved, "--data", test_csv],
        &["bench", "examples/xor.kiln", "--seconds", "0.01"],
    ];
    for args in runs {
        let mut child = Command::new(KILN)
            .args(*args)
            .current_dir(root())
            .env_remove("RUST_BACKTRACE")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run kiln");
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("kiln ends");
        let err = stderr(&out);
        assert!(!err.contains("panicked"), "kiln {args:?}: {err}");
        assert_eq!(code(&out), 0, "kiln {args:?}: {err}");
    }
}

#[test]
fn bench_reports_compile_set_up_and_first_step_apart() {
    let o = kiln(&["bench", "benches/mlp.kiln", "--seconds", "0.01", "--json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let f: Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    for key in [
        "compile_ms",
        "init_ms",
        "data_ms",
        "first_step_ms",
        "train_samples_per_s",
    ] {
        let v = f[key].as_f64().unwrap_or(-1.0);
        assert!(v > 0.0 && v.is_finite(), "{key}: {f}");
    }
    let o = kiln(&["bench", "benches/mlp.kiln", "--seconds", "0.01"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("compile (source to code): "), "{text}");
    assert!(text.contains("set-up: parameters "), "{text}");
    assert!(text.contains("; first step: "), "{text}");
}

/// A file that cannot be read is an I/O error, exit 2, whichever flag names it; a file
/// that is read but wrong is the input's fault, exit 1.
#[test]
fn unreadable_files_exit_2_and_wrong_files_exit_1() {
    let iris = "examples/iris.kiln";
    let test_csv = "examples/data/iris_test.csv";
    let missing = "no-such-dir/missing.safetensors";
    for args in [
        &["predict", iris, "--weights", missing, "--data", test_csv][..],
        &["eval", iris, "--weights", missing, "--data", test_csv],
        &["train", iris, "--resume", missing, "--quiet"],
        &[
            "train",
            iris,
            "--train",
            "no-such-dir/missing.csv",
            "--quiet",
        ],
        &[
            "predict",
            iris,
            "--data",
            "no-such-dir/x.csv",
            "--weights",
            missing,
        ],
    ] {
        let o = kiln(args);
        assert_eq!(code(&o), 2, "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("missing") || stderr(&o).contains("x.csv"),
            "{args:?}: {}",
            stderr(&o)
        );
    }
    let o = kiln(&["eval", iris, "--weights", "README.md", "--data", test_csv]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("is not a valid checkpoint"),
        "{}",
        stderr(&o)
    );
}

/// A run that learns nothing still exits 0, but says so (W0105) with the likely causes;
/// a run that learns does not. Huge losses print in scientific notation.
#[test]
fn a_run_that_learns_nothing_warns() {
    let save = temp("not-learning", "m.safetensors", b"");
    let save = save.to_str().unwrap();
    let o = kiln(&[
        "train",
        "examples/digits_mlp.kiln",
        "--lr",
        "100",
        "--epochs",
        "3",
        "--save",
        save,
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("warning[W0105]: training learned nothing"),
        "{err}"
    );
    assert!(err.contains("learning rate far too high"), "{err}");
    let first = stdout(&o)
        .lines()
        .find(|l| l.starts_with("epoch   1/3"))
        .unwrap_or_default()
        .to_string();
    // The loss, about 8.12·10⁸, in scientific notation with 5 digits.
    let loss = first.split_whitespace().nth(3).unwrap_or_default();
    assert!(
        loss.starts_with("8.12") && loss.ends_with("e8") && loss.len() == 8,
        "{first}"
    );
    let o = kiln(&["train", "examples/iris.kiln", "--quiet", "--save", save]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(!stderr(&o).contains("W0105"), "{}", stderr(&o));
    let o = kiln(&[
        "train",
        "examples/digits_mlp.kiln",
        "--lr",
        "100",
        "--epochs",
        "3",
        "--allow",
        "not_learning",
        "--save",
        save,
    ]);
    assert!(!stderr(&o).contains("W0105"), "{}", stderr(&o));
}

/// `y = 2x + 1`: a line that `dense(1)` fits exactly.
const LINE: &str = "model line {
  input  x: [N, 1]
  target y: [N, 1]
  h = x |> dense(1)
  output h
  loss mse(h, y)
}
train line {
  data train: \"line.csv\"
  optimizer sgd(lr: 0.1)
  batch 4
  epochs 400
  metrics r2
}
";

#[test]
fn a_regression_model_reports_its_metrics() {
    let model = temp("regression", "line.kiln", LINE.as_bytes());
    temp("regression", "line.csv", b"x,y\n0,1\n0.5,2\n1,3\n1.5,4\n");
    let weights = model.with_file_name("line.safetensors");
    let report = model.with_file_name("report.json");
    let o = kiln(&[
        "train",
        s(&model),
        "--quiet",
        "--save",
        s(&weights),
        "--report",
        s(&report),
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    // Only the metric the train block names, on the train line.
    let out = stdout(&o);
    let line = out
        .lines()
        .find(|l| l.starts_with("train: 4 rows"))
        .unwrap_or_default();
    assert!(line.ends_with("  r2 1.0000"), "{out}");
    assert!(!line.contains("mae") && !line.contains("rmse"), "{out}");
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let r = &json["train"]["regression"];
    assert!(r["r2"].as_f64().unwrap() > 0.9999, "{r}");
    assert!(r["mae"].as_f64().unwrap() < 1e-3, "{r}");
    assert!(r["rmse"].as_f64().unwrap() < 1e-3, "{r}");
    // `kiln eval` shows all three.
    let o = kiln(&["eval", s(&model), "--weights", s(&weights)]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("\nmae: 0.000"), "{out}");
    assert!(out.contains("\nrmse: 0.000"), "{out}");
    assert!(out.ends_with("\nr2: 1.0000\n"), "{out}");
}

/// `y = 300x + 1000`: a line on a large scale, which `standardize` brings to unit scale.
const SCALED_LINE: &str = "model line {
  input  x: [N, 1]
  target y: [N, 1]
  h = x |> dense(1)
  output h
  loss mse(h, y)
}
train line {
  data train: \"scaled.csv\"
  optimizer adam(lr: 0.05)
  batch 4
  epochs 300
}
";

#[test]
fn standardize_scales_a_regression_target_and_predictions_come_back_in_its_units() {
    let model = temp("scaled", "line.kiln", SCALED_LINE.as_bytes());
    let mut csv = String::from("x,y\n");
    for i in 0..20 {
        let x = f64::from(i) / 10.0;
        csv += &format!("{x},{}\n", 300.0 * x + 1000.0);
    }
    let data = temp("scaled", "scaled.csv", csv.as_bytes());
    let first_loss = |extra: &[&str], name: &str| {
        let report = model.with_file_name(name);
        let weights = report.with_extension("safetensors");
        let mut args = vec![
            "train",
            s(&model),
            "--quiet",
            "--save",
            s(&weights),
            "--report",
            s(&report),
        ];
        args.extend(extra);
        let o = kiln(&args);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        let json: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
        let loss = json["history"][0]["train_loss"].as_f64().unwrap();
        (loss, json, weights)
    };
    let (raw, _, _) = first_loss(&[], "raw.json");
    assert!(raw > 1e5, "unscaled first loss {raw}");
    let (scaled, json, weights) = first_loss(&["--standardize"], "scaled.json");
    assert!(scaled < 10.0, "standardized first loss {scaled}");
    // Metrics on the original scale: a near-perfect fit of the line.
    let r = &json["train"]["regression"];
    assert!(r["r2"].as_f64().unwrap() > 0.999, "{r}");
    assert!(r["mae"].as_f64().unwrap() < 5.0, "{r}");
    // The target's statistics beside the input's: mean 1285, population std 300·0.5766.
    let c = kiln::runtime::checkpoint::Checkpoint::load(&weights).unwrap();
    let mean = c.tensors["standardize.y.mean"][0];
    let std = c.tensors["standardize.y.std"][0];
    assert!((mean - 1285.0).abs() < 1e-2, "{mean}");
    assert!((std - 172.9884).abs() < 1e-2, "{std}");
    assert!(c.tensors.contains_key("standardize.x.mean"));
    // Predictions in the target's units.
    let o = kiln(&[
        "predict",
        s(&model),
        "--weights",
        s(&weights),
        "--data",
        s(&data),
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("h"), "{out}");
    for (i, line) in lines.enumerate() {
        let x = i as f64 / 10.0;
        let h: f64 = line.parse().unwrap();
        assert!((h - (300.0 * x + 1000.0)).abs() < 5.0, "row {i}: {h}");
    }
    // `kiln eval` too: r2 on the original scale.
    let o = kiln(&["eval", s(&model), "--weights", s(&weights)]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    let r2: f64 = out
        .lines()
        .find_map(|l| l.strip_prefix("r2: "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(r2 > 0.999, "{out}");
    // Resumed on other rows, the run keeps the checkpoint's target statistics.
    let half: String = csv.lines().take(11).map(|l| format!("{l}\n")).collect();
    let half = temp("scaled", "half.csv", half.as_bytes());
    let resumed = model.with_file_name("resumed.safetensors");
    let o = kiln(&[
        "train",
        s(&model),
        "--standardize",
        "--quiet",
        "--resume",
        s(&weights),
        "--train",
        s(&half),
        "--epochs",
        "301",
        "--save",
        s(&resumed),
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let c = kiln::runtime::checkpoint::Checkpoint::load(&resumed).unwrap();
    let mean = c.tensors["standardize.y.mean"][0];
    assert!(
        (mean - 1285.0).abs() < 1e-2,
        "refitted on the resumed rows: {mean}"
    );
}

/// An output that needs a target has no value in an exported model: E0700 at the output
/// with the target's span, exit 1, and no file written.
#[test]
fn export_refuses_an_output_that_needs_a_target() {
    let model = "model m {
  input x: [N, 2]
  target y: [N, 1]
  h = x |> dense(1)
  err = h - y
  output h
  output err
  loss mse(h, y)
}
";
    let file = temp("export_target", "m.kiln", model.as_bytes());
    let out = file.with_file_name("m.onnx");
    let o = kiln(&["export", s(&file), "-o", s(&out)]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains(
            "error[E0700]: output `err` needs a target, which an exported model does not have"
        ),
        "{err}"
    );
    assert!(
        err.contains("m.kiln:7:3"),
        "the output is the primary span: {err}"
    );
    assert!(!out.exists(), "no file is written");
    let o = kiln(&["explain", "E0700"]);
    assert_eq!(code(&o), 0);
    assert!(stdout(&o).contains("has no value in an exported model"));
}
