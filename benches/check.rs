//! How long `check_file` (parse + check + lints) takes on a 1,000-layer model.
//! Target: under 100 ms each. Run with `cargo bench --bench check`.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use kiln::check::{check_file, LintLevels};
use kiln::span::Sources;
use std::fmt::Write as _;
use std::time::Duration;

/// 1,000 bindings, alternating `dense(64)` and `relu`, each on its own line.
fn bindings_model(layers: usize) -> String {
    let mut t = String::from(
        "model deep {\n  input x: [N, 64]\n  target y: class[N] of 10\n  h0 = x |> dense(64)\n",
    );
    for i in 1..layers {
        let f = if i % 2 == 0 { "dense(64)" } else { "relu" };
        let _ = writeln!(t, "  h{i} = h{} |> {f}", i - 1);
    }
    let _ = writeln!(
        t,
        "  logits = h{} |> dense(10)\n  output logits\n  loss cross_entropy(logits, y)\n}}",
        layers - 1
    );
    t
}

/// The same 1,000 layers as one pipeline, one stage per continuation line.
fn pipeline_model(layers: usize) -> String {
    let mut t = String::from(
        "model deep {\n  input x: [N, 64]\n  target y: class[N] of 10\n  logits = x\n",
    );
    for i in 0..layers {
        t.push_str(if i % 2 == 0 {
            "    |> dense(64)\n"
        } else {
            "    |> relu\n"
        });
    }
    t.push_str("    |> dense(10)\n  output logits\n  loss cross_entropy(logits, y)\n}\n");
    t
}

fn check(text: &str) -> usize {
    let mut sources = Sources::new();
    let id = sources.add("deep.kiln", None, text.to_string());
    let checked = check_file(&mut sources, id, &LintLevels::default());
    assert!(!checked.has_errors(), "{:?}", checked.diagnostics.first());
    checked.program.map_or(0, |p| p.models[0].params.len())
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("check_file");
    g.measurement_time(Duration::from_secs(5));
    for (name, text) in [
        ("1000 bindings", bindings_model(1000)),
        ("1000-stage pipeline", pipeline_model(1000)),
    ] {
        // 500 dense layers with a weight and a bias each, and the final one.
        assert_eq!(check(&text), 1002, "{name}");
        g.bench_function(name, |b| b.iter(|| check(black_box(&text))));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
