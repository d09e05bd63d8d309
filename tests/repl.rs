//! `kiln repl`: scripts through standard input, and the line editor through a
//! pseudo-terminal.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn repl(script: &str) -> Output {
    repl_in(script, env!("CARGO_MANIFEST_DIR"))
}

fn repl_in(script: &str, dir: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("repl")
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kiln runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn literals_and_arithmetic() {
    let o = repl("a = [[0, 1], [1, 0]]\na * 2 + 1\n[1.5, 2.25] - 1\nsum(a @ a)\n");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "a: [2, 2]\n[[0., 1.],\n [1., 0.]]\n\
         [2, 2]\n[[1., 3.],\n [3., 1.]]\n\
         [2]\n[0.5 , 1.25]\n\
         []\n2.\n"
    );
}

#[test]
fn randn_with_a_seed_is_reproducible() {
    let o = repl("randn([4, 3], seed: 1)\nrandn([4, 3], seed: 1)\nrandn([4, 3], seed: 2)\n");
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let parts: Vec<&str> = out.split("[4, 3]\n").filter(|s| !s.is_empty()).collect();
    assert_eq!(parts.len(), 3, "{out}");
    assert_eq!(parts[0], parts[1]);
    assert_ne!(parts[0], parts[2]);
}

#[test]
fn large_tensors_are_summarized() {
    let o = repl("zeros([50, 40]) + 1\n");
    let out = stdout(&o);
    assert!(
        out.starts_with("[50, 40]\n[[1., 1., 1., …, 1., 1., 1.],\n"),
        "{out}"
    );
    assert_eq!(out.lines().count(), 8, "{out}");
}

#[test]
fn type_prints_the_shape_only() {
    let o = repl("x = ones([4, 3])\n:type x |> dense(5) |> relu\n:type x @ randn([3, 2])\n");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).ends_with("[4, 5]\n[4, 2]\n"), "{}", stdout(&o));
}

#[test]
fn a_layer_value_is_reused() {
    let o = repl("x = randn([2, 3], seed: 5)\nlayer enc = dense(4)\nh1 = x |> enc\nh2 = x |> enc\nh1 - h2\n:params\n");
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let h1 = out
        .split("h1: ")
        .nth(1)
        .unwrap()
        .split("h2: ")
        .next()
        .unwrap();
    let h2 = out
        .split("h2: ")
        .nth(1)
        .unwrap()
        .split("\n[2, 4]\n")
        .next()
        .unwrap();
    assert_eq!(h1.trim(), h2.trim());
    assert!(
        out.contains("[2, 4]\n[[0., 0., 0., 0.],\n [0., 0., 0., 0.]]\n"),
        "{out}"
    );
    assert!(
        out.contains("enc.weight") && out.contains("[3, 4]"),
        "{out}"
    );
}

#[test]
fn a_model_typed_at_the_prompt_trains() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("xor.csv"),
        "x0,x1,y\n0,0,0\n0,1,1\n1,0,1\n1,1,0\n",
    )
    .unwrap();
    let script = "\
model m {
  input  x: [N, 2]
  target y: [N, 1]
  h   = x |> dense(8) |> tanh
  out = h |> dense(1)
  output out
  loss mse(out, y)
}
train m {
  data train: \"xor.csv\"
  optimizer adam(lr: 0.05)
  batch 4
  seed 3
}
:train m 2
:eval m
:predict m [[0, 1], [1, 1]]
";
    let o = repl_in(script, dir.path().to_str().unwrap());
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("defined model m\n"), "{out}");
    assert!(out.contains("defined train m\n"), "{out}");
    assert!(
        out.contains("training `m`: 33 parameters, 2 epochs"),
        "{out}"
    );
    assert!(out.contains("epoch    2/2"), "{out}");
    assert!(out.contains("xor.csv: 4 rows\nloss: "), "{out}");
    assert!(out.contains("out: [2, 1]\n"), "{out}");
}

#[test]
fn load_and_train_xor() {
    let o = repl(":load examples/xor.kiln\n:train xor\n:eval xor\n:predict xor [[0, 0], [0, 1], [1, 0], [1, 1]]\n");
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.starts_with("loaded examples/xor.kiln: model xor; train xor\n"),
        "{out}"
    );
    let loss: f64 = out
        .lines()
        .find_map(|l| l.strip_prefix("loss: "))
        .expect("a loss line")
        .parse()
        .unwrap();
    assert!(loss < 0.01, "{out}");
    let pred = out.split("out: [4, 1]\n").nth(1).expect("predictions");
    let v: Vec<f64> = pred
        .replace(['[', ']', ','], " ")
        .split_whitespace()
        .take(4)
        .map(|x| x.parse().unwrap())
        .collect();
    assert!(
        v[0] < 0.2 && v[1] > 0.8 && v[2] > 0.8 && v[3] < 0.2,
        "{out}"
    );
}

#[test]
fn an_error_prints_the_diagnostic_and_ends_the_script() {
    let o = repl("a = ones([2, 3])\nb = ones([4, 3])\nc = a + b\nd = a\n");
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("error[E0301]: cannot add tensors of shapes [2, 3] and [4, 3]"),
        "{err}"
    );
    assert!(err.contains("┌─ <repl:3>:1:5"), "{err}");
    assert!(err.contains("1 │ c = a + b"), "{err}");
    // The script stopped at the error.
    assert!(!stdout(&o).contains("d: "), "{}", stdout(&o));
}

#[test]
fn grad_ir_and_save() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("w.npy");
    let script = format!(
        "w = [1, 2, 3]\n:grad sum(w * w) wrt w\n:ir w * 2\n:save w {}\nload(\"{}\")\n",
        f.display(),
        f.display()
    );
    let o = repl(&script);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("value: 14.\n∂/∂w: [3]\n[2., 4., 6.]\n"),
        "{out}"
    );
    assert!(out.contains("= mul %0, %1"), "{out}");
    assert!(out.ends_with("[3]\n[1., 2., 3.]\n"), "{out}");
}

/// The line editor: completion, multi-line blocks, history.
#[cfg(unix)]
#[test]
fn pseudo_terminal_session() {
    use expectrl::{Eof, Expect, Regex};
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let history = dir.path().join("history");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
    cmd.arg("repl")
        .env("KILN_HISTORY", &history)
        .env("TERM", "xterm")
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    let mut p = expectrl::Session::spawn(cmd).expect("a pseudo-terminal");
    p.set_expect_timeout(Some(Duration::from_secs(5)));
    p.expect("kiln> ").unwrap();
    // A partial word and TAB complete the only candidate.
    p.send("x = ones([2, 3]) |> sigm\t\r").unwrap();
    p.expect("x: [2, 3]").unwrap();
    p.expect("0.7311").unwrap();
    p.expect("kiln> ").unwrap();
    // The session's names complete too.
    p.send("x |> glob\t").unwrap();
    p.expect("global_").unwrap();
    p.send("\x15").unwrap(); // clear the line
                             // A block stays open until its brace closes.
    p.send("block twice(v: [N, F]) {\r").unwrap();
    p.send("  return v + v\r").unwrap();
    p.send("}\r").unwrap();
    p.expect("defined block twice").unwrap();
    p.send("[[1, 2]] |> twice\r").unwrap();
    p.expect(Regex(r"\[\[2\., 4\.\]\]")).unwrap();
    p.send(":quit\r").unwrap();
    p.expect(Eof).unwrap();
    let h = std::fs::read_to_string(&history).expect("history written");
    assert!(h.contains("x = ones([2, 3]) |> sigmoid"), "{h}");
    assert!(h.contains(":quit"), "{h}");
}

#[test]
fn loading_a_file_that_declares_nothing_is_e0211() {
    let o = repl(":load tests/ui/e0211_only_comments.kiln\n");
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.starts_with("error[E0211]: `e0211_only_comments.kiln` declares nothing\n"),
        "{err}"
    );
    assert!(err.contains("^ the file ends here"), "{err}");
    assert_eq!(stdout(&o), "");
}
