//! Data-parallel training over MPI (docs/SCALING.md), on loopback: `kiln` built with the
//! `mpi` feature, `mpirun -np 2 kiln train …` writes the checkpoint a one-process run
//! with the same seed and batch writes, tensor for tensor, bit for bit; `--resume`
//! continues across process counts; only process 0 prints; a process that dies ends the
//! job with an error. Without `mpirun` the
//! tests fail in CI (CI=true: `.ci/run` installs Open MPI) and are skipped elsewhere.

use kiln::runtime::checkpoint::Checkpoint;
use std::path::{Path, PathBuf};
mod tools;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use tools::run;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Whether `mpirun` runs: when not, CI fails and a developer's run skips.
fn have_mpi() -> bool {
    tools::have(
        "mpirun",
        "tests/mpi.rs needs Open MPI in CI (.ci/run installs libopenmpi-dev, openmpi-bin)",
    )
}

/// `kiln` built with the `mpi` feature, once per test run (the tests of this file wait
/// for it), in a target directory of its own (`target/mpi`) so that it does not replace
/// the binary the other tests run.
fn kiln_mpi() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let target = root().join("target").join("mpi");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            run(Command::new(cargo)
                .args(["build", "--release", "--features", "mpi", "--bin", "kiln"])
                .env("CARGO_TARGET_DIR", &target)
                .current_dir(root()));
            target.join("release").join("kiln")
        })
        .clone()
}

/// `mpirun -np K kiln ARGS` (plain `kiln ARGS` for K = 0), in `examples/`.
fn kiln(k: usize, args: &[&str]) -> Command {
    let mut cmd = if k == 0 {
        Command::new(kiln_mpi())
    } else {
        let mut c = Command::new("mpirun");
        c.args(["--allow-run-as-root", "--oversubscribe", "-np"])
            .arg(k.to_string())
            .arg(kiln_mpi());
        c
    };
    cmd.args(args).current_dir(root().join("examples"));
    cmd
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-mpi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Trains `model` for `epochs` epochs on `k` processes (0: without mpirun) into `save`.
fn train(k: usize, model: &str, epochs: u64, save: &Path, more: &[&str]) -> Output {
    let epochs = epochs.to_string();
    let mut args = vec!["train", model, "--epochs", &epochs, "--save"];
    let save = save.to_str().unwrap();
    args.push(save);
    args.extend_from_slice(more);
    run(&mut kiln(k, &args))
}

/// Every tensor of two checkpoints, bit for bit, and their epoch and step.
fn same(a: &Path, b: &Path) {
    let (x, y) = (Checkpoint::load(a).unwrap(), Checkpoint::load(b).unwrap());
    let names: Vec<_> = x.tensors.keys().collect();
    assert_eq!(names, y.tensors.keys().collect::<Vec<_>>());
    assert!(names.iter().any(|n| n.starts_with("optimizer.")));
    for (name, t) in &x.tensors {
        let u = &y.tensors[name];
        assert_eq!(t.shape(), u.shape(), "{name}");
        let differ = t
            .iter()
            .zip(u.iter())
            .filter(|(p, q)| p.to_bits() != q.to_bits())
            .count();
        assert_eq!(differ, 0, "{name}: {differ} values differ ({a:?} vs {b:?})");
    }
    for key in ["epoch", "step"] {
        assert_eq!(x.meta.get(key), y.meta.get(key), "{key}");
    }
}

#[test]
fn two_processes_train_the_weights_of_one() {
    if !have_mpi() {
        return;
    }
    // The MLP (batch 32, dropout), the CNN (convolutions, pooling), and batch
    // normalization (batch 64: one shard by default in one process, so two asked for).
    let models: [(&str, &[&str]); 3] = [
        ("digits_mlp.kiln", &[]),
        ("digits_cnn.kiln", &[]),
        ("digits_bn_dropout.kiln", &["--shards", "2"]),
    ];
    for (model, flags) in models {
        let one = temp(&format!("one-{model}.safetensors"));
        let two = temp(&format!("two-{model}.safetensors"));
        let solo = train(0, model, 2, &one, flags);
        let pair = train(2, model, 2, &two, flags);
        same(&one, &two);
        // One training header, one report: process 0 prints, process 1 does not.
        let out = String::from_utf8_lossy(&pair.stdout);
        assert_eq!(out.matches("training `").count(), 1, "{out}");
        assert_eq!(out.matches("checkpoint: ").count(), 1, "{out}");
        // The same report as the one process's, times aside.
        let lines = |s: &str| -> Vec<String> {
            s.lines()
                .filter(|l| !l.contains("time") && !l.contains("/s"))
                .map(str::to_string)
                .collect()
        };
        let solo_out = String::from_utf8_lossy(&solo.stdout).replace("one-", "two-");
        assert_eq!(lines(&out), lines(&solo_out));
    }
}

#[test]
fn resume_continues_across_process_counts() {
    if !have_mpi() {
        return;
    }
    let model = "digits_mlp.kiln";
    // (processes of the first epoch, of the other two, shards): two shards by default
    // (batch 32); four processes need four, as a one-process run with `--shards 4`.
    for (first, then, shards) in [(2, 0, "2"), (0, 2, "2"), (0, 4, "4")] {
        let whole = temp(&format!("whole-{shards}.safetensors"));
        train(0, model, 3, &whole, &["--shards", shards]);
        let part = temp(&format!("part-{first}-{then}.safetensors"));
        train(first, model, 1, &part, &["--shards", shards]);
        let p = part.to_str().unwrap().to_string();
        train(then, model, 3, &part, &["--resume", &p, "--shards", shards]);
        same(&whole, &part);
    }
}

#[test]
fn a_process_that_dies_ends_the_job() {
    if !have_mpi() {
        return;
    }
    let save = temp("killed.safetensors");
    let mut job = kiln(
        2,
        &[
            "train",
            "digits_mlp.kiln",
            "--epochs",
            "100000",
            "--save",
            save.to_str().unwrap(),
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    // Wait for the first checkpoint, then kill process 1 of the job.
    let start = Instant::now();
    while !save.exists() {
        assert!(start.elapsed() < Duration::from_secs(60), "no checkpoint");
        std::thread::sleep(Duration::from_millis(50));
    }
    let ranks = Command::new("pgrep")
        .args(["-f", save.to_str().unwrap()])
        .output()
        .unwrap();
    let pids: Vec<String> = String::from_utf8_lossy(&ranks.stdout)
        .lines()
        .map(str::to_string)
        .filter(|p| *p != job.id().to_string())
        .collect();
    assert_eq!(pids.len(), 2, "the two processes: {pids:?}");
    run(Command::new("kill").args(["-9", &pids[1]]));
    let killed = Instant::now();
    let status = loop {
        if let Some(s) = job.try_wait().unwrap() {
            break s;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "the job still runs a minute after a process died"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!status.success());
    // The last checkpoint written is whole.
    Checkpoint::load(&save).unwrap();
}
