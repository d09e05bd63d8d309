//! UI tests: every `tests/ui/*.kiln` file is checked exactly as `kiln check FILE --color never`
//! checks it, and the rendered diagnostics are compared with `tests/ui/NAME.stderr`.
//!
//! Run `KILN_BLESS=1 cargo test --test ui` to (re)write the `.stderr` files, then read the
//! changes before committing them.
//!
//! Files in subfolders of `tests/ui/` (such as `tests/ui/lib/`) are not cases: they are
//! helpers that cases import with `use`.

use kiln::check::{check_file, load_file, LintLevels};
use kiln::diag::{render, ColorChoice, CODES};
use kiln::span::Sources;
use std::fmt::Write as _;
use std::fs;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

const UI_DIR: &str = "tests/ui";

/// Stands for the package root in expected output, so that paths the compiler prints in
/// absolute form (files loaded through `use`, `data` paths) do not depend on the checkout.
const ROOT_PLACEHOLDER: &str = "$DIR";

fn blessing() -> bool {
    std::env::var("KILN_BLESS").is_ok_and(|v| v == "1")
}

/// The `*.kiln` cases, sorted, as paths relative to the package root.
fn cases() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(UI_DIR)
        .unwrap_or_else(|e| panic!("cannot read {UI_DIR}: {e}"))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "kiln"))
        .collect();
    out.sort();
    out
}

/// What one case produces.
struct Outcome {
    /// The rendered diagnostics, with the package root replaced by `$DIR`.
    text: String,
    /// How many diagnostics there were.
    count: usize,
}

/// Loads and checks `path` the way the CLI's `kiln check` does.
fn run_case(path: &Path) -> Outcome {
    let mut sources = Sources::new();
    let (id, bad_utf8) =
        load_file(&mut sources, path).unwrap_or_else(|e| panic!("cannot read {path:?}: {e}"));
    let diags = match bad_utf8 {
        Some(d) => vec![d],
        None => check_file(&mut sources, id, &LintLevels::default()).diagnostics,
    };
    let text = render(&sources, &diags, ColorChoice::Never);
    Outcome {
        text: normalize(&text),
        count: diags.len(),
    }
}

fn normalize(text: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = text.to_string();
    let mut roots = vec![root.to_path_buf()];
    if let Ok(canon) = root.canonicalize() {
        if canon != root {
            roots.insert(0, canon);
        }
    }
    for r in roots {
        out = out.replace(&r.display().to_string(), ROOT_PLACEHOLDER);
    }
    out
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".to_string()
    }
}

/// A line diff (longest common subsequence): ` ` common, `-` expected only, `+` actual only.
fn diff(expected: &str, actual: &str) -> String {
    let a: Vec<&str> = expected.lines().collect();
    let b: Vec<&str> = actual.lines().collect();
    let (n, m) = (a.len(), b.len());
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut out = String::new();
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            let _ = writeln!(out, "   {}", a[i]);
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            let _ = writeln!(out, "-  {}", a[i]);
            i += 1;
        } else {
            let _ = writeln!(out, "+  {}", b[j]);
            j += 1;
        }
    }
    out
}

#[test]
fn ui() {
    let bless = blessing();
    let cases = cases();
    assert!(!cases.is_empty(), "no cases found in {UI_DIR}");

    let mut failures: Vec<String> = Vec::new();
    let mut blessed = 0;
    for kiln in &cases {
        let stderr = kiln.with_extension("stderr");
        let outcome = match panic::catch_unwind(AssertUnwindSafe(|| run_case(kiln))) {
            Ok(o) => o,
            Err(p) => {
                failures.push(format!(
                    "{}: the checker panicked: {}",
                    kiln.display(),
                    panic_message(&*p)
                ));
                continue;
            }
        };
        if outcome.count == 0 {
            failures.push(format!(
                "{}: no diagnostic at all; every case must produce at least one",
                kiln.display()
            ));
        }
        if bless {
            let old = fs::read_to_string(&stderr).ok();
            if old.as_deref() != Some(outcome.text.as_str()) {
                fs::write(&stderr, &outcome.text)
                    .unwrap_or_else(|e| panic!("cannot write {}: {e}", stderr.display()));
                blessed += 1;
            }
            continue;
        }
        match fs::read_to_string(&stderr) {
            Err(_) => failures.push(format!(
                "{}: missing {} (run with KILN_BLESS=1 to create it); actual output:\n{}",
                kiln.display(),
                stderr.display(),
                outcome.text
            )),
            Ok(expected) if expected != outcome.text => failures.push(format!(
                "{}: output differs from {} (- expected, + actual):\n{}",
                kiln.display(),
                stderr.display(),
                diff(&expected, &outcome.text)
            )),
            Ok(_) => {}
        }
    }
    if bless {
        eprintln!("blessed {blessed} .stderr file(s)");
    }

    // Expected files without a case are left over from renamed or deleted cases.
    let mut all_expected = String::new();
    for entry in fs::read_dir(UI_DIR).expect("ui dir") {
        let p = entry.expect("directory entry").path();
        if p.extension().is_some_and(|e| e == "stderr") {
            if !p.with_extension("kiln").is_file() {
                failures.push(format!(
                    "{}: no matching .kiln case; delete it",
                    p.display()
                ));
            } else if let Ok(text) = fs::read_to_string(&p) {
                all_expected.push_str(&text);
            }
        }
    }

    // Every code Kiln can emit is exercised by at least one case.
    let missing: Vec<&str> = CODES
        .iter()
        .map(|c| c.code.as_str())
        // Data errors (E05xx), a diverged run (E06xx), export (E07xx) and gradient health
        // (W01xx) never come from `kiln check`; tests/data.rs, tests/train.rs, tests/cli.rs
        // and tests/export.rs cover them.
        .filter(|code| {
            !["E05", "E06", "E07", "W01"]
                .iter()
                .any(|p| code.starts_with(p))
        })
        // Data warnings come from data files, tested in tests/sanity.rs.
        .filter(|code| !code.starts_with("W02"))
        .filter(|code| !all_expected.contains(&format!("[{code}]")))
        .collect();
    if !missing.is_empty() {
        failures.push(format!(
            "no .stderr file shows these codes: {}; add a case for each",
            missing.join(", ")
        ));
    }

    if !failures.is_empty() {
        panic!(
            "{} UI failure(s) out of {} case(s):\n\n{}",
            failures.len(),
            cases.len(),
            failures.join("\n\n")
        );
    }
}
