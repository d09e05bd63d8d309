use super::*;

fn ok(s: &mut Session, input: &str) -> Output {
    match s.eval(input) {
        Ok(o) => o,
        Err(ReplError::Diagnostics(ds)) => panic!(
            "`{input}` failed:\n{}",
            crate::diag::render(s.sources(), &ds, crate::diag::ColorChoice::Never)
        ),
        Err(ReplError::Message(m)) => panic!("`{input}` failed: {m}"),
        Err(ReplError::Data(d)) => panic!("`{input}` failed: {d}"),
        Err(ReplError::Internal(b)) => panic!("`{input}` failed: {b}"),
    }
}

fn err(s: &mut Session, input: &str) -> String {
    match s.eval(input) {
        Ok(o) => panic!("`{input}` should fail, printed {}", o.text),
        Err(ReplError::Diagnostics(ds)) => {
            crate::diag::render(s.sources(), &ds, crate::diag::ColorChoice::Never)
        }
        Err(ReplError::Message(m)) => m,
        Err(ReplError::Data(d)) => d.to_string(),
        Err(ReplError::Internal(b)) => panic!("`{input}` hit a bug: {b}"),
    }
}

#[test]
fn literals_and_arithmetic() {
    let mut s = Session::new();
    let o = ok(&mut s, "a = [[0, 1], [1, 0]]");
    assert_eq!(o.text, "a: [2, 2]\n[[0., 1.],\n [1., 0.]]\n");
    let o = ok(&mut s, "a * 2 + 1");
    assert_eq!(o.text, "[2, 2]\n[[1., 3.],\n [3., 1.]]\n");
    let o = ok(&mut s, "a @ [1, 2]");
    assert_eq!(o.text, "[2]\n[2., 1.]\n");
    let o = ok(&mut s, "sum(a)");
    assert_eq!(o.text, "[]\n2.\n");
    // `_` is the last expression's value.
    let o = ok(&mut s, "_ + 1");
    assert_eq!(o.text, "[]\n3.\n");
}

#[test]
fn constructors() {
    let mut s = Session::new();
    let a = ok(&mut s, "randn([4, 3], seed: 1)").text;
    let b = ok(&mut s, "randn([4, 3], seed: 1)").text;
    assert_eq!(a, b);
    assert!(a.starts_with("[4, 3]\n"));
    // Without a seed every draw differs.
    let c = ok(&mut s, "randn([4, 3])").text;
    let d = ok(&mut s, "randn([4, 3])").text;
    assert_ne!(c, d);
    assert_eq!(ok(&mut s, "arange(4)").text, "[4]\n[0., 1., 2., 3.]\n");
    assert_eq!(
        ok(&mut s, "zeros(2) + ones([2, 2])").text,
        "[2, 2]\n[[1., 1.],\n [1., 1.]]\n"
    );
    assert_eq!(
        ok(&mut s, "eye(2) * full([2], 3)").text,
        "[2, 2]\n[[3., 0.],\n [0., 3.]]\n"
    );
    assert_eq!(
        ok(&mut s, "arange(6) |> reshape([2, 3])").text,
        "[2, 3]\n[[0., 1., 2.],\n [3., 4., 5.]]\n"
    );
}

#[test]
fn csv_columns_and_npy() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("d.csv");
    std::fs::write(&csv, "a,b,c\n1,2,3\n4,5,6\n").unwrap();
    let mut s = Session::new();
    let o = ok(
        &mut s,
        &format!("x = load(\"{}\", columns: (1, 3))", csv.display()),
    );
    assert_eq!(o.text, "x: [2, 2]\n[[2., 3.],\n [5., 6.]]\n");
    let o = ok(
        &mut s,
        &format!("load(\"{}\", columns: [\"c\", 0])", csv.display()),
    );
    assert_eq!(o.text, "[2, 2]\n[[3., 1.],\n [6., 4.]]\n");
    let npy = dir.path().join("x.npy");
    ok(&mut s, &format!(":save x {}", npy.display()));
    let o = ok(&mut s, &format!("load(\"{}\") * 2", npy.display()));
    assert_eq!(o.text, "[2, 2]\n[[ 4.,  6.],\n [10., 12.]]\n");
    let e = err(&mut s, "load(\"/nonexistent/file.npy\")");
    assert!(e.contains("E0500"), "{e}");
}

#[test]
fn type_does_not_run_or_draw() {
    let mut s = Session::new();
    ok(&mut s, "x = ones([4, 3])");
    assert_eq!(ok(&mut s, ":type x |> dense(5) |> relu").text, "[4, 5]\n");
    assert_eq!(ok(&mut s, ":type x @ randn([3, 2])").text, "[4, 2]\n");
    assert_eq!(s.draws, 0);
}

#[test]
fn layer_values_are_shared_and_kept() {
    let mut s = Session::new();
    ok(&mut s, "x = randn([2, 3], seed: 4)");
    ok(&mut s, "layer enc = dense(4)");
    let a = ok(&mut s, "x |> enc").text;
    let b = ok(&mut s, "x |> enc").text;
    assert_eq!(a, b);
    assert_eq!(s.param("enc.weight").unwrap().shape(), &[3, 4]);
    assert_eq!(s.param("enc.bias").unwrap().shape(), &[4]);
    let p = ok(&mut s, ":params").text;
    assert!(p.contains("enc.weight") && p.contains("[3, 4]"), "{p}");
    // A use with another feature size is an error, not a silent re-initialization.
    let e = err(&mut s, "ones([2, 5]) |> enc");
    assert!(e.contains("E0314"), "{e}");
    // Declaring it again starts over.
    ok(&mut s, "layer enc = dense(4)");
    assert!(s.param("enc.weight").is_none());
    ok(&mut s, "ones([2, 5]) |> enc");
    assert_eq!(s.param("enc.weight").unwrap().shape(), &[5, 4]);
}

#[test]
fn errors_point_at_the_typed_line_and_keep_the_session() {
    let mut s = Session::new();
    ok(&mut s, "a = ones([2, 3])");
    ok(&mut s, "b = ones([4, 3])");
    ok(&mut s, "layer enc = dense(2)");
    let e = err(&mut s, "c = a + b");
    assert!(
        e.contains("error[E0301]: cannot add tensors of shapes [2, 3] and [4, 3]"),
        "{e}"
    );
    assert!(e.contains("<repl:"), "{e}");
    assert!(e.contains("1 │ c = a + b"), "{e}");
    let e = err(&mut s, "a |> dense(");
    assert!(e.contains("E0101"), "{e}");
    let e = err(&mut s, "a |> nosuchlayer");
    assert!(e.contains("E0202"), "{e}");
    let e = err(&mut s, "zzz + 1");
    assert!(e.contains("E0201"), "{e}");
    let e = err(
        &mut s,
        "model broken {\n  input x: [N, 2]\n  y = x |> dense(3) @ x\n  output y\n}",
    );
    assert!(e.contains("error[E0"), "{e}");
    // Everything defined before is still there.
    assert!(s.value("a").is_some() && s.value("b").is_some());
    assert!(ok(&mut s, "a |> enc").text.starts_with("[2, 2]"));
    assert!(s.value("c").is_none());
    assert!(s.names().contains(&"enc".to_string()));
}

#[test]
fn models_train_eval_predict() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("xor.csv");
    std::fs::write(&data, "x0,x1,y\n0,0,0\n0,1,1\n1,0,1\n1,1,0\n").unwrap();
    let mut s = Session::new();
    let o = ok(
        &mut s,
        "model m {\n  input x: [N, 2]\n  target y: [N, 1]\n  h = x |> dense(8) |> tanh\n  out = h |> dense(1)\n  output out\n  loss mse(out, y)\n}",
    );
    assert_eq!(o.text, "defined model m\n");
    ok(
        &mut s,
        &format!(
            "train m {{\n  data train: \"{}\"\n  optimizer adam(lr: 0.05)\n  batch 4\n  seed 3\n}}",
            data.display()
        ),
    );
    let t = ok(&mut s, ":train m 200").text;
    assert!(t.contains("epoch  200/200"), "{t}");
    let e = ok(&mut s, ":eval m").text;
    assert!(e.contains("4 rows") && e.contains("loss:"), "{e}");
    // A regression model's metrics, as `kiln eval` prints them.
    let r2: f64 = e
        .lines()
        .find_map(|l| l.strip_prefix("r2: "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(r2 > 0.9, "{e}");
    let loss: f64 = e
        .lines()
        .find_map(|l| l.strip_prefix("loss: "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(loss < 0.05, "{e}");
    let p = ok(&mut s, ":predict m [[0, 1], [1, 1]]").text;
    assert!(p.starts_with("out: [2, 1]"), "{p}");
    let p1 = ok(&mut s, ":predict m [0, 1]").text;
    assert!(p1.starts_with("out: [1, 1]"), "{p1}");
    assert!(ok(&mut s, ":summary m").text.contains("h.dense"));
    assert!(err(&mut s, ":predict m [1, 2, 3]").contains("the value is [3]"));
    assert!(err(&mut s, ":train nope").contains("no model named `nope`"));
}

/// A model typed at the prompt trains on the session's tensors.
#[test]
fn train_takes_the_sessions_tensors() {
    let mut s = Session::new();
    ok(
        &mut s,
        "model m {\n  input x: [N, 2]\n  target y: [N, 1]\n  h = x |> dense(8) |> tanh\n  out = h |> dense(1)\n  output out\n  loss mse(out, y)\n}",
    );
    ok(
        &mut s,
        "train m {\n  optimizer adam(lr: 0.05)\n  batch 4\n  seed 3\n}",
    );
    assert!(err(&mut s, ":train m").contains("pass the session's tensors (`:train m x: X, y: Y`)"));
    ok(&mut s, "X = [[0, 0], [0, 1], [1, 0], [1, 1]]");
    ok(&mut s, "Y = [[0], [1], [1], [0]]");
    let t = ok(&mut s, ":train m 300 x: X, y: Y").text;
    assert!(
        t.contains("epoch  300/300") && t.contains("train: 4 rows"),
        "{t}"
    );
    let p = ok(&mut s, ":predict m X").text;
    let v: Vec<f64> = p
        .lines()
        .skip(1)
        .map(|l| {
            l.trim_matches(|c: char| "[], ".contains(c))
                .parse()
                .unwrap()
        })
        .collect();
    assert!(v[0] < 0.2 && v[1] > 0.8 && v[2] > 0.8 && v[3] < 0.2, "{p}");
    assert!(err(&mut s, ":train m x: X").contains("needs `y`: pass `y: TENSOR`"));
    assert!(err(&mut s, ":train m x: X, y: Z").contains("no tensor `Z`"));
    assert!(err(&mut s, ":train m x: X, z: Y").contains("no input or target `z`"));
    ok(&mut s, "Y3 = [[0], [1], [1]]");
    assert!(err(&mut s, ":train m x: X, y: Y3").contains("`y` has 3 rows, but `x` has 4"));
}

#[test]
fn blocks_at_the_prompt() {
    let mut s = Session::new();
    ok(&mut s, "block twice(x: [N, F]) {\n  return x + x\n}");
    assert_eq!(ok(&mut s, "[[1, 2]] |> twice").text, "[1, 2]\n[[2., 4.]]\n");
}

#[test]
fn gradients() {
    let mut s = Session::new();
    ok(&mut s, "w = [1, 2, 3]");
    let g = ok(&mut s, ":grad sum(w * w) wrt w").text;
    assert_eq!(g, "value: 14.\n∂/∂w: [3]\n[2., 4., 6.]\n");
    ok(&mut s, "layer l = dense(2)");
    ok(&mut s, "ones([1, 3]) |> l");
    let g = ok(&mut s, ":grad sum(ones([1, 3]) |> l) wrt l.bias").text;
    assert!(g.ends_with("∂/∂l.bias: [2]\n[1., 1.]\n"), "{g}");
    assert!(err(&mut s, ":grad w wrt w").contains("scalar"));
    assert!(err(&mut s, ":grad sum(w) wrt nothing").contains("not a tensor"));
}

#[test]
fn ir_and_save() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Session::new();
    ok(&mut s, "a = ones([2])");
    let ir = ok(&mut s, ":ir a * 2").text;
    assert!(ir.contains("mul") && ir.contains("output __it"), "{ir}");
    ok(&mut s, "layer l = dense(2)");
    ok(&mut s, "ones([1, 3]) |> l");
    let f = dir.path().join("l.safetensors");
    let o = ok(&mut s, &format!(":save l {}", f.display())).text;
    assert!(o.starts_with("saved 2 tensors"), "{o}");
    let c = crate::runtime::checkpoint::Checkpoint::load(&f).unwrap();
    assert_eq!(c.tensors["l.weight"].shape(), &[3, 2]);
    assert!(err(
        &mut s,
        &format!(":save l {}", dir.path().join("l.npy").display())
    )
    .contains(".safetensors"));
}

#[test]
fn statements_that_belong_in_a_model() {
    let mut s = Session::new();
    assert!(err(&mut s, "loss mse(x, y)").contains("E0209"));
    assert!(err(&mut s, "__x = 1").contains("reserved"));
    assert!(err(&mut s, ":nosuch").contains("unknown command"));
    assert!(ok(&mut s, ":help").text.contains(":grad"));
    assert!(ok(&mut s, ":quit").quit);
}

#[test]
fn multi_line_input_is_detected() {
    assert!(needs_more("model m {"));
    assert!(needs_more("x = [[1, 2],"));
    assert!(needs_more("x |>"));
    assert!(!needs_more("model m {\n}"));
    assert!(!needs_more("x = 1 # {"));
    assert!(!needs_more("load(\"a{b.npy\")"));
}

/// No input ends the session with a panic.
#[test]
fn garbage_never_panics() {
    let mut s = Session::new();
    ok(&mut s, "a = ones([2, 3])");
    ok(&mut s, "layer l = dense(2)");
    let inputs = [
        "",
        "   ",
        "#",
        ":",
        "::",
        ":load",
        ":train",
        ":predict m",
        ":grad x",
        ":save",
        ":type",
        ":ir",
        ":summary",
        ":eval",
        ":seed x",
        "[",
        "]",
        "[[1], [2, 3]]",
        "[]",
        "[[]]",
        "[1, [2]]",
        "a @ a",
        "a |> conv2d(3, 3)",
        "a |> lstm(2)",
        "a |> batchnorm",
        "a |> flatten",
        "a |> maxpool2d(2)",
        "a |> global_avgpool",
        "a |> reshape([5, 5])",
        "a |> reshape([-1])",
        "a |> softmax(axis: 7)",
        "sum(a, axis: 9)",
        "concat(a, a, axis: 0)",
        "randn([0])",
        "randn(-1)",
        "randn([99999999, 99999999])",
        "zeros(\"x\")",
        "arange(0)",
        "arange(1, 2, 0)",
        "eye(0)",
        "load(3)",
        "load(\"x.txt\")",
        "ones([2]) |> l",
        "l",
        "l + 1",
        "a = ",
        "= a",
        "x: [3] = a",
        "1 + 2",
        "-a",
        "a |> embedding(3, 2)",
        "model",
        "model {",
        "model m { }",
        "train x { }",
        "block b(x: [N]) { return x }",
        "use \"nonexistent.kiln\"",
        ":load /nonexistent",
        ":predict nope a",
        ":grad a wrt a",
        "a |> dense(0)",
        "a |> dense(1.5)",
        "a |> dropout(2)",
        "mse(a, a)",
        "cross_entropy(a, a)",
        "a |> spp([1, 2])",
        "a / 0",
        "log(a - 1)",
        "a |> rnn(3)",
        "\u{0}",
        "ü = 1",
        "a |> dense(2) as x",
        "layer q = relu",
        "layer r = 3",
        "layer s = nosuch(2)",
        "a |> first",
        "a |> last",
        "a |> gru(2, sequence: false)",
    ];
    for i in inputs {
        let _ = s.eval(i);
    }
    assert!(s.value("a").is_some());
}
