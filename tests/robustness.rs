//! The front end never panics and never overflows its stack: whatever the input, parsing
//! and checking end in diagnostics.
//!
//! Integration tests run on threads with the default 2 MiB stack, so deep inputs here are
//! deliberately checked on the test thread itself: a checker that recurses once per
//! pipeline stage, operator or nested bracket shows up as a stack overflow (which aborts
//! the whole test binary and names the test).

use kiln::check::{check_file, load_file, Checked, LintLevels};
use kiln::diag::{Code, Diagnostic};
use kiln::span::Sources;
use std::fmt::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- helpers

/// Checks `text` as an in-memory file (no path, like the `check` fuzz target).
fn check_text(text: &str) -> Checked {
    let mut sources = Sources::new();
    let id = sources.add("test.kiln", None, text.to_string());
    check_file(&mut sources, id, &LintLevels::default())
}

/// Checks `text` as if it lived at `path` (so `use` and `data` resolve beside it).
fn check_text_at(text: &str, path: &Path) -> Checked {
    let mut sources = Sources::new();
    let id = sources.add(path.display().to_string(), Some(path), text.to_string());
    check_file(&mut sources, id, &LintLevels::default())
}

fn codes(c: &Checked) -> Vec<&'static str> {
    c.diagnostics.iter().map(|d| d.code.as_str()).collect()
}

fn has_error(c: &Checked, code: &str) -> bool {
    c.diagnostics
        .iter()
        .any(|d| d.is_error() && d.code.as_str() == code)
}

/// A checked result is consistent: errors ⇔ no program, and every diagnostic is well formed.
fn assert_consistent(c: &Checked, what: &str) {
    assert_eq!(
        c.program.is_none(),
        c.has_errors(),
        "{what}: program present iff no errors; diagnostics: {:?}",
        codes(c)
    );
    for d in &c.diagnostics {
        assert_well_formed(d, what);
    }
}

fn assert_well_formed(d: &Diagnostic, what: &str) {
    assert!(!d.labels.is_empty(), "{what}: {} has no label", d.code);
    for l in &d.labels {
        assert!(
            l.span.start <= l.span.end,
            "{what}: {} has a reversed span",
            d.code
        );
    }
}

/// Runs `f` on every input, catching panics; fails listing the inputs that panicked
/// (shortest first, so the report starts with the simplest reproduction).
fn no_panics<T: AsRef<[u8]>>(what: &str, inputs: &[T], f: impl Fn(&[u8])) {
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut failures: Vec<(Vec<u8>, String)> = Vec::new();
    for input in inputs {
        let bytes = input.as_ref();
        if let Err(e) = catch_unwind(AssertUnwindSafe(|| f(bytes))) {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "<non-string panic>".into());
            failures.push((bytes.to_vec(), msg));
        }
    }
    std::panic::set_hook(prev);
    failures.sort_by_key(|(b, _)| b.len());
    if !failures.is_empty() {
        let mut report = format!(
            "{what}: {} of {} inputs panicked; the shortest:\n",
            failures.len(),
            inputs.len()
        );
        for (bytes, msg) in failures.iter().take(3) {
            let _ = writeln!(
                report,
                "  input {:?}\n  panic: {msg}",
                String::from_utf8_lossy(bytes)
            );
        }
        panic!("{report}");
    }
}

/// Parses and checks raw bytes the way the CLI would: non-UTF-8 input is read lossily
/// (the CLI reports E0104 first; the checker must still survive the replaced text).
fn check_bytes(bytes: &[u8], at: Option<&Path>) {
    let text = String::from_utf8_lossy(bytes);
    let _ = kiln::syntax::parse_source(&text, 0);
    let c = match at {
        Some(p) => check_text_at(&text, p),
        None => check_text(&text),
    };
    assert_consistent(&c, "bytes");
}

/// A small deterministic generator (xorshift64*), so failures reproduce exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

fn examples() -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut out: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .expect("examples/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "kiln"))
        .map(|p| {
            let bytes = std::fs::read(&p).expect("example");
            (p, bytes)
        })
        .collect();
    out.sort();
    assert!(
        out.len() >= 5,
        "expected the example files in {}",
        dir.display()
    );
    out
}

/// A model whose body is `body` (with the usual input, target and loss around it).
fn model_with(body: &str, out: &str) -> String {
    format!(
        "model m {{\n  input x: [N, 4]\n  target y: [N, 4]\n{body}\n  output {out}\n  loss mse({out}, y)\n}}\n"
    )
}

fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-robustness-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Set in the child process that runs one isolated test.
const CHILD: &str = "KILN_ROBUSTNESS_CHILD";

/// Runs test `name` of this binary in a child process (on the test harness's ordinary
/// 2 MiB test thread: the stack is not enlarged) and fails if the child does not pass
/// within `limit`. A stack overflow aborts only that child, so the other tests still run
/// and the failure names the input.
fn run_isolated(name: &str, limit: Duration) {
    let exe = std::env::current_exe().expect("test binary");
    let mut child = Command::new(exe)
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .env_remove("RUST_MIN_STACK")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the test binary");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    match status {
        None => panic!("`{name}` did not finish within {limit:?}"),
        Some(s) if s.success() => {}
        Some(s) => {
            let why = if stderr.contains("overflowed its stack") {
                "overflowed its 2 MiB stack"
            } else {
                "failed"
            };
            panic!("`{name}` {why} ({s})\n--- stdout\n{stdout}\n--- stderr\n{stderr}");
        }
    }
}

/// Runs `body` in a child process (see [`run_isolated`]) when called from test `name`;
/// in that child, runs it directly. `secs` is generous for debug builds.
fn isolated(name: &str, secs: u64, body: impl FnOnce()) {
    if std::env::var_os(CHILD).is_some() {
        body();
    } else {
        run_isolated(name, Duration::from_secs(secs));
    }
}

// ---------------------------------------------------------------- arbitrary bytes

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(0x5EED_0001);
    // Biased toward bytes that mean something to the grammar, plus arbitrary ones.
    let alphabet: &[u8] = b"()[]{}<>|+-*/@=:,;.#\"\n\t aNx0123456789e_";
    let inputs: Vec<Vec<u8>> = (0..400)
        .map(|i| {
            let len = rng.below(if i % 10 == 0 { 2000 } else { 120 });
            (0..len)
                .map(|_| {
                    if rng.below(3) == 0 {
                        rng.next() as u8
                    } else {
                        *rng.pick(alphabet)
                    }
                })
                .collect()
        })
        .collect();
    no_panics("random bytes", &inputs, |b| check_bytes(b, None));
}

#[test]
fn random_token_soup_never_panics() {
    // Sequences of real tokens reach much deeper into the parser and checker than bytes.
    let tokens: &[&str] = &[
        "model",
        "block",
        "train",
        "use",
        "input",
        "target",
        "layer",
        "output",
        "loss",
        "regularize",
        "return",
        "allow",
        "on",
        "as",
        "then",
        "class",
        "of",
        "x",
        "y",
        "h",
        "N",
        "m",
        "dense",
        "relu",
        "softmax",
        "conv2d",
        "maxpool2d",
        "flatten",
        "reshape",
        "concat",
        "batchnorm",
        "dropout",
        "gru",
        "lstm",
        "embedding",
        "cross_entropy",
        "mse",
        "l2",
        "sum",
        "mean",
        "sigmoid",
        "tanh",
        "units:",
        "axis:",
        "bias:",
        "pad:",
        "0",
        "1",
        "2",
        "4",
        "10",
        "64",
        "-1",
        "0.5",
        "1e-4",
        "1e999",
        "4294967296",
        "99999999999999999999999",
        "\"a.csv\"",
        "(",
        ")",
        "[",
        "]",
        "{",
        "}",
        ",",
        ":",
        "=",
        "|>",
        "+",
        "-",
        "*",
        "/",
        "@",
        "\n",
        ";",
        "# c\n",
        "[N, 4]",
        "class[N] of 3",
        "data",
        "optimizer",
        "sgd(lr: 0.1)",
        "batch",
        "epochs",
        "true",
        "false",
    ];
    let mut rng = Rng(0x5EED_0002);
    let inputs: Vec<String> = (0..400)
        .map(|_| {
            let n = 1 + rng.below(80);
            let mut s = String::new();
            for _ in 0..n {
                let t: &&str = rng.pick(tokens);
                s.push_str(t);
                s.push(' ');
            }
            s
        })
        .collect();
    no_panics("token soup", &inputs, |b| check_bytes(b, None));

    // The same soup inside a well-formed model, so the checker sees most of it.
    let wrapped: Vec<String> = inputs
        .iter()
        .map(|s| model_with(&format!("  h = {s}"), "h"))
        .collect();
    no_panics("token soup in a model", &wrapped, |b| check_bytes(b, None));
}

#[test]
fn examples_check_clean() {
    for (path, bytes) in examples() {
        let text = String::from_utf8(bytes).expect("examples are UTF-8");
        let c = check_text_at(&text, &path);
        assert!(
            !c.has_errors(),
            "{} has errors: {:?}",
            path.display(),
            c.diagnostics
        );
    }
}

#[test]
fn truncated_examples_never_panic() {
    for (path, bytes) in examples() {
        let inputs: Vec<&[u8]> = (0..=bytes.len()).step_by(7).map(|n| &bytes[..n]).collect();
        no_panics(
            &format!("truncations of {}", path.display()),
            &inputs,
            |b| check_bytes(b, Some(&path)),
        );
    }
}

#[test]
fn mutated_examples_never_panic() {
    let mut rng = Rng(0x5EED_0003);
    let interesting: &[u8] = b"()[]{}\"#\n|>-+:,=09aN \xff\xc3";
    for (path, bytes) in examples() {
        let mut inputs: Vec<Vec<u8>> = Vec::new();
        // Bit flips at every 9th byte.
        for i in (0..bytes.len()).step_by(9) {
            let mut b = bytes.clone();
            b[i] ^= 1 << rng.below(8);
            inputs.push(b);
        }
        // A byte replaced by one that matters to the grammar, at every 5th byte.
        for i in (0..bytes.len()).step_by(5) {
            let mut b = bytes.clone();
            b[i] = *rng.pick(interesting);
            inputs.push(b);
        }
        // Deletions and duplications of random ranges.
        for _ in 0..60 {
            let a = rng.below(bytes.len());
            let z = (a + 1 + rng.below(40)).min(bytes.len());
            let mut b = bytes.clone();
            if rng.below(2) == 0 {
                b.drain(a..z);
            } else {
                let dup = b[a..z].to_vec();
                b.splice(a..a, dup);
            }
            inputs.push(b);
        }
        no_panics(&format!("mutations of {}", path.display()), &inputs, |b| {
            check_bytes(b, Some(&path))
        });
    }
}

// ---------------------------------------------------------------- encodings and sizes

#[test]
fn non_utf8_file_is_e0104() {
    let p = temp_file("latin1.kiln", b"# caf\xe9\nmodel m {\n}\n");
    let mut sources = Sources::new();
    let (id, diag) = load_file(&mut sources, &p).expect("readable");
    let d = diag.expect("a non-UTF-8 file gives a diagnostic");
    assert_eq!(d.code, Code::E0104);
    assert!(d.is_error());
    assert_eq!(d.span().start, 5, "points at the first invalid byte");
    // The lossy text that stays in `sources` must still be checkable.
    let c = check_file(&mut sources, id, &LintLevels::default());
    assert_consistent(&c, "lossy text");

    // Invalid bytes anywhere, including the very start and the very end.
    for bytes in [
        &b"\xff"[..],
        b"\xc3",
        b"model m {}\n\xe2\x82",
        b"\x80\x80\x80",
    ] {
        let p = temp_file("bad.kiln", bytes);
        let mut sources = Sources::new();
        let (_, diag) = load_file(&mut sources, &p).expect("readable");
        assert_eq!(diag.map(|d| d.code), Some(Code::E0104), "{bytes:?}");
    }
}

#[test]
fn empty_and_blank_files_declare_nothing() {
    // A file without a declaration is one E0211 at the end of its text (blank lines and
    // trailing spaces left out), not an empty program.
    for (text, end) in [
        ("", 0),
        ("\n", 0),
        ("\n\n\n", 0),
        ("   \t  ", 0),
        ("# only a comment", 16),
        ("# a\n# b\n", 7),
        ("\r\n", 0),
    ] {
        let c = check_text(text);
        assert!(c.program.is_none(), "{text:?}");
        assert_eq!(c.diagnostics.len(), 1, "{text:?}: {:?}", c.diagnostics);
        let d = &c.diagnostics[0];
        assert_eq!(
            (d.code, d.message.as_str()),
            (Code::E0211, "`test.kiln` declares nothing")
        );
        assert_eq!((d.span().start, d.span().end), (end, end), "{text:?}");
        assert!(
            d.help.as_deref().is_some_and(|h| h.contains("`model")),
            "{d:?}"
        );
    }
    let c = check_text(";");
    assert!(has_error(&c, "E0101"), "`;` alone: {:?}", codes(&c));
    // An empty model body is an error that names what is missing, not a panic.
    let c = check_text("model m {}\n");
    assert!(has_error(&c, "E0211"), "{:?}", codes(&c));
}

#[test]
fn deep_parentheses_are_e0103() {
    isolated("deep_parentheses_are_e0103", 60, || {
        for n in [65, 300, 10_000] {
            let text = model_with(&format!("  h = {}x{}", "(".repeat(n), ")".repeat(n)), "h");
            let c = check_text(&text);
            assert!(has_error(&c, "E0103"), "depth {n}: {:?}", codes(&c));
        }
        // Unbalanced, and every kind of bracket, anywhere in the file.
        for text in [
            "(".repeat(10_000),
            "[".repeat(10_000),
            "{".repeat(10_000),
            "([{".repeat(4_000),
            format!("model m {{\n  input x: {}\n}}", "[".repeat(10_000)),
            format!("model m {{\n  h = dense{}\n}}", "(".repeat(10_000)),
        ] {
            let c = check_text(&text);
            assert!(has_error(&c, "E0103"), "{:?}", codes(&c));
        }
    });
}

#[test]
fn nesting_at_the_limit_is_accepted() {
    isolated("nesting_at_the_limit_is_accepted", 60, || {
        // The limit itself (brackets of the model body included) must not be an error.
        let limit = kiln::syntax::MAX_NESTING;
        let n = limit - 1; // the model body's `{` is one level
        let text = model_with(&format!("  h = {}x{}", "(".repeat(n), ")".repeat(n)), "h");
        let c = check_text(&text);
        assert!(!c.has_errors(), "depth {n}: {:?}", c.diagnostics);
        let text = model_with(
            &format!("  h = {}x{}", "(".repeat(n + 1), ")".repeat(n + 1)),
            "h",
        );
        assert!(has_error(&check_text(&text), "E0103"));
    });
}

#[test]
fn unclosed_parentheses_below_the_limit_are_quick() {
    // A group and a tuple both start with `(`: tried one after the other, every unclosed
    // `(` doubled the parser's work (20 of them took 36 s and 7.8 GB; found by fuzzing).
    isolated("unclosed_parentheses_below_the_limit_are_quick", 60, || {
        let n = kiln::syntax::MAX_NESTING - 3;
        let text = model_with(&format!("  h = x |> dense({}2", "(".repeat(n)), "h");
        let c = check_text(&text);
        assert!(has_error(&c, "E0101"), "{:?}", codes(&c));
    });
}

#[test]
fn huge_dimensions_are_e0311_or_e0102() {
    let cases = [
        ("[N, 4294967296]", "E0311"),
        ("[N, 2147483648]", "E0311"),
        ("[N, 18446744073709551615]", "E0311"),
        ("[N, 18446744073709551616]", "E0102"),
        ("[N, 99999999999999999999999]", "E0102"),
        ("[N, 0]", "E0311"),
        ("[N, 65536, 65536]", "E0311"),
        ("[N, 2147483647, 2147483647, 2147483647]", "E0311"),
    ];
    for (shape, code) in cases {
        let text = format!(
            "model m {{\n  input x: {shape}\n  target y: [N, 1]\n  h = x |> flatten |> dense(1)\n  output h\n  loss mse(h, y)\n}}\n"
        );
        let c = check_text(&text);
        assert!(
            has_error(&c, code),
            "{shape}: expected {code}, got {:?}",
            c.diagnostics
        );
    }
    // Huge sizes as layer arguments and class counts.
    for body in [
        "  h = x |> dense(4294967296)",
        "  h = x |> dense(99999999999999999999999)",
        "  h = x |> dense(2147483647) |> dense(2147483647)",
        "  h = x |> reshape([4294967296])",
        "  h = x |> dense(1e308)",
        "  h = x |> dropout(1e999)",
    ] {
        let c = check_text(&model_with(body, "h"));
        assert!(c.has_errors(), "{body}: {:?}", codes(&c));
        assert_consistent(&c, body);
    }
    let c = check_text(
        "model m {\n  input x: [N, 4]\n  target y: class[N] of 4294967296\n  h = x |> dense(3)\n  output h\n  loss cross_entropy(h, y)\n}\n",
    );
    assert!(has_error(&c, "E0311"), "{:?}", codes(&c));
}

// ---------------------------------------------------------------- long and deep inputs

#[test]
fn hundred_thousand_bindings() {
    isolated("hundred_thousand_bindings", 60, || {
        let mut body = String::from("  h0 = x |> dense(4)\n");
        for i in 1..100_000 {
            let _ = writeln!(body, "  h{i} = h{} |> relu", i - 1);
        }
        let c = check_text(&model_with(&body, "h99999"));
        assert!(
            !c.has_errors(),
            "{:?}",
            &c.diagnostics[..c.diagnostics.len().min(3)]
        );
    });
}

#[test]
fn hundred_thousand_comment_lines() {
    isolated("hundred_thousand_comment_lines", 60, || {
        let mut text = String::new();
        for i in 0..100_000 {
            let _ = writeln!(text, "# comment line {i} ((((( [[[[ {{{{ \"");
        }
        text.push_str(&model_with("  h = x |> dense(4)", "h"));
        let c = check_text(&text);
        assert!(!c.has_errors(), "{:?}", c.diagnostics);
    });
}

#[test]
fn hundred_thousand_blank_lines_and_an_error_at_the_end() {
    isolated(
        "hundred_thousand_blank_lines_and_an_error_at_the_end",
        60,
        || {
            let mut text = "\n".repeat(100_000);
            text.push_str("model m {\n  h = nope\n}\n");
            let c = check_text(&text);
            assert!(has_error(&c, "E0201"), "{:?}", codes(&c));
        },
    );
}

#[test]
fn ten_thousand_pipeline_stages() {
    isolated("ten_thousand_pipeline_stages", 60, || {
        let stages = " |> relu".repeat(10_000);
        let c = check_text(&model_with(&format!("  h = x{stages}"), "h"));
        assert!(
            !c.has_errors(),
            "{:?}",
            &c.diagnostics[..c.diagnostics.len().min(3)]
        );

        // One stage per line (continuation lines), alternating layers.
        let mut body = String::from("  h = x\n");
        for i in 0..10_000 {
            body.push_str(if i % 2 == 0 {
                "    |> dense(4)\n"
            } else {
                "    |> relu\n"
            });
        }
        let c = check_text(&model_with(&body, "h"));
        assert!(
            !c.has_errors(),
            "{:?}",
            &c.diagnostics[..c.diagnostics.len().min(3)]
        );
    });
}

/// Statements with more operators than the parser's limit (`MAX_OPERATORS`) are refused
/// with E0103, which is what keeps the trees they build from exhausting the stack.
#[test]
fn ten_thousand_term_sum() {
    isolated("ten_thousand_term_sum", 60, || {
        let sum = vec!["x"; 10_000].join(" + ");
        let c = check_text(&model_with(&format!("  h = {sum}"), "h"));
        assert!(has_error(&c, "E0103"), "{:?}", codes(&c));

        // Mixed operators, and over continuation lines.
        let ops = [" + ", " - ", " * ", " / ", " @ "];
        let mut e = String::from("x");
        for i in 1..10_000 {
            e.push_str(ops[i % ops.len()]);
            e.push_str(if i % 7 == 0 { "\n    x" } else { "x" });
        }
        let c = check_text(&model_with(&format!("  h = {e}"), "h"));
        assert!(has_error(&c, "E0103"), "{:?}", codes(&c));
    });
}

#[test]
fn short_operator_chains_are_accepted() {
    // Well below the limit: a chain as long as real models write checks cleanly.
    let sum = vec!["x"; 32].join(" + ");
    let c = check_text(&model_with(&format!("  h = {sum}"), "h"));
    assert!(!c.has_errors(), "{:?}", c.diagnostics);
    let c = check_text(&model_with(&format!("  h = {}x", "-".repeat(32)), "h"));
    assert!(!c.has_errors(), "{:?}", c.diagnostics);
}

#[test]
fn ten_thousand_unary_minuses() {
    isolated("ten_thousand_unary_minuses", 60, || {
        // `- - - ... x` nests without brackets, so the bracket limit does not apply.
        for e in [
            format!("{}x", "- ".repeat(10_000)),
            format!("{}x", "-".repeat(10_000)),
        ] {
            let c = check_text(&model_with(&format!("  h = {e}"), "h"));
            assert!(has_error(&c, "E0103"), "{:?}", codes(&c));
        }
    });
}

/// Chains of nested operators that the limits above do not see: many short chains
/// nested in brackets, each within both limits.
#[test]
fn nested_chains_within_the_limits() {
    isolated("nested_chains_within_the_limits", 60, || {
        let depth = kiln::syntax::MAX_NESTING - 2;
        let mut e = String::from("x");
        for _ in 0..depth {
            e = format!("-(-{e} + {})", vec!["-x"; 60].join(" + "));
        }
        let c = check_text(&model_with(&format!("  h = {e}"), "h"));
        assert_consistent(&c, "nested chains");
    });
}

/// A chain of blocks, each calling the one before: no recursion, no brackets, no long
/// expression, yet the checker instantiates them recursively.
fn block_chain(n: usize) -> String {
    let mut t = String::from("block b0(x: [N, 4]) {\n  return x |> dense(4)\n}\n");
    for i in 1..n {
        let _ = writeln!(t, "block b{i}(x: [N, 4]) {{\n  return x |> b{}\n}}", i - 1);
    }
    t + &model_with(&format!("  h = x |> b{}", n - 1), "h")
}

#[test]
fn block_chain_within_the_depth_limit() {
    // Blocks may call blocks 32 deep (E0212 beyond).
    let c = check_text(&block_chain(30));
    assert!(!c.has_errors(), "{:?}", codes(&c));
    let c = check_text(&block_chain(100));
    assert!(has_error(&c, "E0212"), "{:?}", codes(&c));
}

/// The deepest tree the limits allow: every bracket level used, every operator used,
/// checks cleanly on a 2 MiB test stack in a debug build.
#[test]
fn operators_and_nesting_at_their_limits() {
    isolated("operators_and_nesting_at_their_limits", 60, || {
        let depth = kiln::syntax::MAX_NESTING - 2;
        let mut e = String::from("x");
        for _ in 0..depth {
            e = format!("relu({e} + x)");
        }
        let rest = kiln::syntax::MAX_OPERATORS - depth;
        let e = format!("{e}{}", " - x".repeat(rest));
        let c = check_text(&model_with(&format!("  h = {e}"), "h"));
        assert!(!c.has_errors(), "{:?}", codes(&c));
        let c = check_text(&model_with(&format!("  h = {e} + x"), "h"));
        assert!(has_error(&c, "E0103"), "{:?}", codes(&c));
    });
}

#[test]
fn block_chain_of_1000() {
    // Debug build, 2 MiB stack: overflows from a depth of about 150 (c0c561c).
    isolated("block_chain_of_1000", 60, || {
        let c = check_text(&block_chain(1000));
        assert_consistent(&c, "1000 nested blocks");
    });
}

#[test]
fn block_ladder_is_not_exponential() {
    // Each block uses the one before twice: 2^n instances if blocks are inlined without
    // a bound. 40 lines of input must not take minutes (n = 20 took 3.5 s in release at
    // c0c561c; every further level doubles it). An error such as "model too large" is
    // fine; so is a fast, clean check.
    isolated("block_ladder_is_not_exponential", 10, || {
        let n = 30;
        let mut t = String::from("block b0(x: [N, 4]) {\n  return x |> dense(4)\n}\n");
        for i in 1..n {
            let _ = writeln!(
                t,
                "block b{i}(x: [N, 4]) {{\n  return b{p}(x) + b{p}(x)\n}}",
                p = i - 1
            );
        }
        let text = t + &model_with(&format!("  h = x |> b{}", n - 1), "h");
        let c = check_text(&text);
        assert_consistent(&c, "block ladder");
    });
}

/// Files `f0.kiln` … `f{n-1}.kiln` in a fresh directory, each `use`-ing the one before
/// `uses` times, and a `main.kiln` using the last; returns main's path.
fn import_files(tag: &str, n: usize, uses: usize) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-robustness-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("f0.kiln"),
        "block b0(x: [N, 4]) {\n  return x |> relu\n}\n",
    )
    .unwrap();
    for i in 1..n {
        let mut t = format!("use \"f{}.kiln\"\n", i - 1).repeat(uses);
        let _ = writeln!(t, "block b{i}(x: [N, 4]) {{\n  return x |> b{}\n}}", i - 1);
        std::fs::write(dir.join(format!("f{i}.kiln")), t).unwrap();
    }
    let main = format!(
        "use \"f{}.kiln\"\n{}",
        n - 1,
        model_with(&format!("  h = x |> b{} |> dense(4)", n - 1), "h")
    );
    std::fs::write(dir.join("main.kiln"), main).unwrap();
    dir.join("main.kiln")
}

fn check_path(path: &Path) -> Checked {
    let mut sources = Sources::new();
    let (id, bad) = load_file(&mut sources, path).expect("readable");
    assert!(bad.is_none());
    check_file(&mut sources, id, &LintLevels::default())
}

#[test]
fn import_chain_of_1000_files() {
    // Debug build, 2 MiB stack: overflows between 300 and 1000 files (c0c561c), in
    // `collect_blocks` (and then again in the block chain the files declare).
    isolated("import_chain_of_1000_files", 60, || {
        let main = import_files("chain", 1000, 1);
        let c = check_path(&main);
        assert_consistent(&c, "1000 chained imports");
        let _ = std::fs::remove_dir_all(main.parent().unwrap());
    });
}

#[test]
fn diamond_imports_load_a_file_once() {
    // main uses a and b, which both use common: `common`'s blocks are the same blocks,
    // not a second declaration (E0204 with both labels on one span at c0c561c).
    let dir = std::env::temp_dir().join(format!("kiln-robustness-{}-diamond", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let block =
        |name: &str, body: &str| format!("block {name}(x: [N, 4]) {{\n  return x |> {body}\n}}\n");
    std::fs::write(dir.join("common.kiln"), block("c", "relu")).unwrap();
    std::fs::write(
        dir.join("a.kiln"),
        format!("use \"common.kiln\"\n{}", block("a", "c")),
    )
    .unwrap();
    std::fs::write(
        dir.join("b.kiln"),
        format!("use \"common.kiln\"\n{}", block("b", "c")),
    )
    .unwrap();
    let main = dir.join("main.kiln");
    std::fs::write(
        &main,
        format!(
            "use \"a.kiln\"\nuse \"b.kiln\"\n{}",
            model_with("  h = x |> a |> b |> dense(4)", "h")
        ),
    )
    .unwrap();
    let c = check_path(&main);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!c.has_errors(), "{:?}", c.diagnostics);
}

#[test]
fn import_ladder_is_not_exponential() {
    // Each file uses the one before twice: 2^n reads and parses if imports are not
    // remembered (18 files took 23 s in release at c0c561c).
    isolated("import_ladder_is_not_exponential", 10, || {
        let main = import_files("ladder", 40, 2);
        let c = check_path(&main);
        assert_consistent(&c, "import ladder");
        let _ = std::fs::remove_dir_all(main.parent().unwrap());
    });
}

#[test]
fn ten_thousand_arguments_and_list_items() {
    isolated("ten_thousand_arguments_and_list_items", 60, || {
        let args = vec!["x"; 10_000].join(", ");
        let c = check_text(&model_with(&format!("  h = concat({args})"), "h"));
        assert_consistent(&c, "10,000 arguments");
        let c = check_text(&model_with(&format!("  h = concat([{args}])"), "h"));
        assert_consistent(&c, "10,000 list items");
    });
}

#[test]
fn hundred_thousand_character_names_and_numbers() {
    isolated("hundred_thousand_character_names_and_numbers", 60, || {
        let name = "a".repeat(100_000);
        let c = check_text(&model_with(&format!("  {name} = x |> relu"), &name));
        assert!(!c.has_errors(), "{:?}", codes(&c));
        let digits = "9".repeat(100_000);
        let c = check_text(&model_with(&format!("  h = x |> dense({digits})"), "h"));
        assert!(has_error(&c, "E0102"), "{:?}", codes(&c));
        let c = check_text(&model_with(&format!("  h = x |> dropout(0.{digits})"), "h"));
        assert_consistent(&c, "long decimal");
    });
}

#[test]
fn long_schedule_chain() {
    // `warmup(1) then warmup(1) then ...`: the checked schedule is a linked list of boxes.
    // Debug build, 2 MiB stack: dropping it recursively overflows from about 40,000
    // links (c0c561c); checking 20,000 took 2.5 s. The input is one 600 KB line.
    isolated("long_schedule_chain", 60, || {
        let n = 50_000;
        let text = format!(
            "{}train m {{\n  data train: \"a.csv\"\n  optimizer sgd(lr: 0.1)\n  schedule {} then cosine(min_lr: 0)\n  batch 4\n  epochs 3\n}}\n",
            model_with("  h = x |> dense(4)", "h"),
            vec!["warmup(1)"; n].join(" then ")
        );
        let c = check_text(&text);
        assert_consistent(&c, "long schedule chain");
    });
}

#[test]
fn ten_thousand_dimensions_and_models() {
    isolated("ten_thousand_dimensions_and_models", 60, || {
        let dims = vec!["1"; 10_000].join(", ");
        let text = format!(
            "model m {{\n  input x: [N, {dims}]\n  target y: [N, 4]\n  h = x |> flatten |> dense(4)\n  output h\n  loss mse(h, y)\n}}\n"
        );
        let c = check_text(&text);
        assert_consistent(&c, "rank 10,001");

        // 2,000 models, each declared twice: every duplicate is E0204.
        let one = model_with("  h = x |> dense(4)", "h");
        let mut text = String::new();
        for i in 0..2_000 {
            text.push_str(&one.replacen("model m", &format!("model m{i}"), 1));
            text.push_str(&one.replacen("model m", &format!("model m{i}"), 1));
        }
        let c = check_text(&text);
        let dups = c
            .diagnostics
            .iter()
            .filter(|d| d.code == Code::E0204)
            .count();
        assert_eq!(dups, 2_000);
    });
}

// ---------------------------------------------------------------- regressions (fuzzing)
//
// Minimized crashing inputs from `fuzz/` go here, one test each. The first campaign
// (parse: 262,300 runs, check: 198,594 runs, 240 s each, seeded with examples/ and
// fuzz/kiln.dict, at c0c561c) found none.
