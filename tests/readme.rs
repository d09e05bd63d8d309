//! README.md's command examples, run: every block that starts with `$ kiln check`,
//! `ir`, `summary` or `explain` (commands whose output does not depend on timing or
//! training) is run, and its lines must appear in the real output in the same order,
//! exactly (trailing spaces aside; a line `...` stands for any lines). A block may be
//! preceded by `<!-- readme-test: cd DIR -->` to run in DIR, where its files live
//! (tests/readme/ holds the README's `resnet.kiln`). The `$ kiln repl` session is typed
//! into a REPL session line by line and each answer compared the same way, except that
//! numbers may differ in their last digits (training runs different kernels on CPUs with
//! and without AVX-512); in the `train`, `bench`, `eval`, `predict`, `grad` and `export`
//! examples every number may differ (speeds, times, and what trained weights give), the
//! text around them may not. A block of several commands runs in a scratch folder beside a link
//! to examples/, with the checkpoints it names trained first. So a README example cannot
//! drift from what Kiln prints.

use kiln::diag::{self, ColorChoice};
use kiln::repl::{ReplError, Session};
use std::path::Path;
use std::process::Command;

/// The commands whose examples are checked exactly.
const CHECKED: [&str; 4] = ["check", "ir", "summary", "explain"];
/// The commands whose examples are checked with every number free: speeds and times,
/// and a training run's results and what trained weights give, which differ in their
/// digits between CPUs with and without AVX-512. `bench` runs for 0.01 s instead of its
/// default 2.
const NUMBERS_FREE: [&str; 6] = ["train", "bench", "eval", "predict", "grad", "export"];

struct Example {
    /// 1-based line of the `$ kiln` line in README.md.
    line: usize,
    args: Vec<String>,
    dir: String,
    expected: Vec<String>,
    /// Numbers may differ (see [`NUMBERS_FREE`]).
    free: bool,
    /// One of several commands of a block, which run in a folder of their own beside a
    /// link to examples/, with the checkpoints they name trained first.
    sandbox: bool,
}

fn examples() -> Vec<Example> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let opens = lines[i] == "```" && lines.get(i + 1).is_some_and(|l| l.starts_with("$ kiln "));
        if !opens {
            i += 1;
            continue;
        }
        let dir = i
            .checked_sub(2)
            .and_then(|k| lines[k].strip_prefix("<!-- readme-test: cd "))
            .and_then(|l| l.strip_suffix(" -->"))
            .unwrap_or(".")
            .to_string();
        let end = (i + 1..lines.len())
            .find(|&k| lines[k] == "```")
            .expect("the block ends");
        // The block's commands, each with the lines it prints.
        let mut commands: Vec<(usize, Vec<String>, Vec<String>)> = Vec::new();
        for (k, l) in lines.iter().enumerate().take(end).skip(i + 1) {
            match l.strip_prefix("$ kiln ") {
                Some(c) => {
                    let args = c.split('#').next().unwrap_or("");
                    let args = args.split_whitespace().map(String::from).collect();
                    commands.push((k + 1, args, Vec::new()));
                }
                None => {
                    if let Some(last) = commands.last_mut() {
                        last.2.push(l.trim_end().to_string());
                    }
                }
            }
        }
        let sandbox = commands.len() > 1;
        let checked = |a: &[String]| {
            NUMBERS_FREE.contains(&a[0].as_str()) || (!sandbox && CHECKED.contains(&a[0].as_str()))
        };
        if commands.iter().all(|c| checked(&c.1)) {
            for (line, args, expected) in commands {
                let free = NUMBERS_FREE.contains(&args[0].as_str());
                out.push(Example {
                    line,
                    args,
                    dir: dir.clone(),
                    expected,
                    free,
                    sandbox,
                });
            }
        }
        i = end + 1;
    }
    out
}

#[test]
fn readme_examples_print_what_the_readme_shows() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let examples = examples();
    assert!(
        examples.len() >= 5,
        "README examples found: {}",
        examples.len()
    );
    for ex in examples {
        // A training example writes its checkpoint into a temporary folder, so the
        // working copy stays clean.
        let save = tempfile::tempdir().expect("temporary folder");
        let mut args = ex.args.clone();
        match args[0].as_str() {
            "train" => {
                let path = save.path().join("c.safetensors");
                args.extend(["--save".to_string(), path.display().to_string()]);
            }
            "bench" => args.extend(["--seconds".to_string(), "0.01".to_string()]),
            _ => {}
        }
        let dir = if ex.sandbox {
            sandbox(save.path(), &args);
            save.path().to_path_buf()
        } else {
            root.join(&ex.dir)
        };
        let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(&args)
            .current_dir(dir)
            .output()
            .expect("run kiln");
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        let printed = format!("{stdout}{stderr}");
        let lines =
            |t: &str| -> Vec<String> { t.lines().map(|l| l.trim_end().to_string()).collect() };
        let wanted: Vec<&str> = ex.expected.iter().map(String::as_str).collect();
        let result = if ex.free {
            // A terminal interleaves the two streams; compare each with its own lines:
            // diagnostics (and their help) on stderr, the rest on stdout.
            let diag = |l: &&str| {
                l.starts_with("warning") || l.starts_with("error") || l.starts_with("  = ")
            };
            let (err, out): (Vec<&str>, Vec<&str>) = wanted.iter().copied().partition(diag);
            let any = |w: &str, l: &str| close(w, l, f64::INFINITY);
            follows(&out, &lines(&stdout), any).and(follows(&err, &lines(&stderr), any))
        } else {
            follows(&wanted, &lines(&printed), |w, l| w == l)
        };
        if let Err(want) = result {
            panic!(
                "README.md:{}: `kiln {}` does not print\n  {want}\nwhere the README shows it; it prints:\n{printed}",
                ex.line,
                ex.args.join(" ")
            );
        }
    }
}

/// Prepares `dir` for a command of a several-command block: a link to examples/ (the
/// paths it names), and the checkpoint of its `--weights`, trained from its model file.
fn sandbox(dir: &Path, args: &[String]) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::os::unix::fs::symlink(root.join("examples"), dir.join("examples")).expect("link");
    if let Some(k) = args.iter().position(|a| a == "--weights") {
        let trained = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["train", &args[1], "--quiet", "--save", &args[k + 1]])
            .current_dir(dir)
            .output()
            .expect("run kiln train");
        assert!(trained.status.success(), "{trained:?}");
    }
}

/// Whether `expected` appears in `actual` in order, line after line except where a line
/// `...` stands for any lines (more lines after the last are fine); else the expected line
/// that could not be placed.
fn follows(
    expected: &[&str],
    actual: &[String],
    same: impl Fn(&str, &str) -> bool + Copy,
) -> Result<(), String> {
    fit(expected, actual, false, same).map_err(|k| expected[k].to_string())
}

/// [`follows`] by backtracking (with every number free, an elided run of epochs holds many
/// lines that look alike): `Err(k)` for the furthest expected line `k` reached.
fn fit(
    expected: &[&str],
    actual: &[String],
    skip: bool,
    same: impl Fn(&str, &str) -> bool + Copy,
) -> Result<(), usize> {
    let Some((&want, rest)) = expected.split_first() else {
        return Ok(());
    };
    if want == "..." {
        return fit(rest, actual, true, same).map_err(|k| k + 1);
    }
    let last = if skip {
        actual.len()
    } else {
        actual.len().min(1)
    };
    let mut furthest = 0;
    for p in (0..last).filter(|&p| same(want, &actual[p])) {
        match fit(rest, &actual[p + 1..], false, same) {
            Ok(()) => return Ok(()),
            Err(k) => furthest = furthest.max(k + 1),
        }
    }
    Err(furthest)
}

/// The lines of `text` split into numbers and the text between them.
fn tokens(line: &str) -> Vec<Result<f64, String>> {
    let mut out: Vec<Result<f64, String>> = Vec::new();
    let bytes = line.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let starts_number = bytes[i].is_ascii_digit()
            || (bytes[i] == b'-' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit));
        if starts_number {
            let mut j = i + 1;
            while j < bytes.len()
                && (bytes[j].is_ascii_digit()
                    || bytes[j] == b'.'
                    || ((bytes[j] == b'e' || bytes[j] == b'E')
                        && bytes
                            .get(j + 1)
                            .is_some_and(|c| c.is_ascii_digit() || *c == b'-' || *c == b'+'))
                    || ((bytes[j] == b'-' || bytes[j] == b'+')
                        && matches!(bytes[j - 1], b'e' | b'E')))
            {
                j += 1;
            }
            if let Ok(v) = line[i..j].parse::<f64>() {
                out.push(Ok(v));
                i = j;
                continue;
            }
        }
        let c = line[i..].chars().next().unwrap_or(' ');
        match out.last_mut() {
            Some(Err(t)) => t.push(c),
            _ => out.push(Err(c.to_string())),
        }
        i += c.len_utf8();
    }
    out
}

/// Equal but for numbers, which may differ by 1e-6 absolute or `relative` (any amount
/// when it is infinite).
fn close(want: &str, got: &str, relative: f64) -> bool {
    let (a, b) = (tokens(want), tokens(got));
    a.len() == b.len()
        && a.iter().zip(&b).all(|(x, y)| match (x, y) {
            (Ok(x), Ok(y)) => relative.is_infinite() || (x - y).abs() <= 1e-6 + relative * x.abs(),
            (Err(x), Err(y)) => x == y,
            _ => false,
        })
}

#[test]
fn readme_repl_session_answers_what_the_readme_shows() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let start = text
        .find("$ kiln repl\n")
        .expect("README has a REPL session");
    let block = &text[start..];
    let block = &block[..block.find("```").expect("the block ends")];
    let mut s = Session::new();
    let mut inputs = 0;
    let mut lines = block.lines().skip(1).peekable();
    while let Some(prompt) = lines.next() {
        let input = prompt.strip_prefix("kiln> ").expect("a prompt");
        let mut expected = Vec::new();
        while let Some(l) = lines.next_if(|l| !l.starts_with("kiln> ")) {
            expected.push(l.trim_end());
        }
        let answer = match s.eval(input) {
            Ok(o) => o.text,
            Err(ReplError::Diagnostics(ds)) => diag::render(s.sources(), &ds, ColorChoice::Never),
            Err(e) => panic!("README's `{input}` fails: {e:?}"),
        };
        let actual: Vec<String> = answer.lines().map(|l| l.trim_end().to_string()).collect();
        if let Err(want) = follows(&expected, &actual, |w, l| close(w, l, 1e-3)) {
            panic!(
                "README's REPL answer to `{input}` shows\n  {want}\nbut the REPL prints:\n{answer}"
            );
        }
        inputs += 1;
    }
    assert!(inputs >= 9, "README's REPL session has {inputs} inputs");
}
