//! Bytes → (if UTF-8) parse and check, entirely in memory. It must return diagnostics,
//! never panic or overflow the stack. A model the checker accepts is then lowered, in
//! evaluation and training mode, and differentiated into its training graph (and its
//! split step's graphs): the lowering's `expect`s (shapes the checker let through
//! broadcast) must hold for everything the checker accepts.
//!
//! The file is added without a path, so a `use` in the input resolves against the
//! working directory; the fuzzer may read (never write) files there.
#![no_main]

use kiln::check::{check_file, LintLevels};
use kiln::span::Sources;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut sources = Sources::new();
    let id = sources.add("fuzz.kiln", None, text.to_string());
    let checked = check_file(&mut sources, id, &LintLevels::default());
    // Errors and a program exclude each other; rendering must not panic either.
    assert_eq!(checked.program.is_none(), checked.has_errors());
    let _ = kiln::diag::render(
        &sources,
        &checked.diagnostics,
        kiln::diag::ColorChoice::Never,
    );
    let _ = kiln::diag::render_json(&sources, &checked.diagnostics);
    let Some(program) = checked.program else {
        return;
    };
    for m in &program.models {
        let p = kiln::runtime::program::prepare(m);
        let cfg = program
            .train(&m.name)
            .cloned()
            .unwrap_or_else(|| kiln::check::train::TrainConfig::defaults(&m.name, m.span));
        if p.forward.loss.is_some() {
            let train = p.training_graph(&cfg);
            let forward = p.train_forward(cfg.seed);
            let _ = kiln::runtime::shard::Sharded::new(&forward, &train, &cfg.optimizer, cfg.clip, 2);
        }
    }
});
