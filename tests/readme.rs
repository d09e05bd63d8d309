//! README.md's command examples, run: every block that starts with `$ kiln check`,
//! `ir`, `summary` or `explain` (commands whose output does not depend on timing or
//! training) is run, and its lines must appear in the real output in the same order,
//! exactly (trailing spaces aside; a line `...` stands for any lines). A block may be
//! preceded by `<!-- readme-test: cd DIR -->` to run in DIR, where its files live
//! (tests/readme/ holds the README's `resnet.kiln`). So a README example cannot drift
//! from what Kiln prints.

use std::path::Path;
use std::process::Command;

/// The commands whose examples are checked.
const CHECKED: [&str; 4] = ["check", "ir", "summary", "explain"];

struct Example {
    /// 1-based line of the `$ kiln` line in README.md.
    line: usize,
    args: Vec<String>,
    dir: String,
    expected: Vec<String>,
}

fn examples() -> Vec<Example> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let fence = lines[i] == "```";
        let command = lines.get(i + 1).and_then(|l| l.strip_prefix("$ kiln "));
        let (true, Some(command)) = (fence, command) else {
            i += 1;
            continue;
        };
        let dir = i
            .checked_sub(2)
            .and_then(|k| lines[k].strip_prefix("<!-- readme-test: cd "))
            .and_then(|l| l.strip_suffix(" -->"))
            .unwrap_or(".")
            .to_string();
        let end = (i + 1..lines.len())
            .find(|&k| lines[k] == "```")
            .expect("the block ends");
        let body: Vec<String> = lines[i + 2..end]
            .iter()
            .map(|l| l.trim_end().to_string())
            .collect();
        let args: Vec<String> = command
            .split('#')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .map(String::from)
            .collect();
        let single = !body.iter().any(|l| l.starts_with("$ "));
        if single && CHECKED.contains(&args[0].as_str()) {
            out.push(Example {
                line: i + 2,
                args,
                dir,
                expected: body,
            });
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
        let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(&ex.args)
            .current_dir(root.join(&ex.dir))
            .output()
            .expect("run kiln");
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let actual: Vec<&str> = printed.lines().map(str::trim_end).collect();
        let mut at = 0;
        let mut skipping = false;
        for want in &ex.expected {
            if want == "..." {
                skipping = true;
                continue;
            }
            let found = if skipping {
                actual[at..].iter().position(|l| l == want).map(|k| at + k)
            } else {
                (actual.get(at) == Some(&want.as_str())).then_some(at)
            };
            let Some(k) = found else {
                panic!(
                    "README.md:{}: `kiln {}` does not print\n  {want}\nwhere the README shows it; it prints:\n{printed}",
                    ex.line,
                    ex.args.join(" ")
                );
            };
            at = k + 1;
            skipping = false;
        }
    }
}
