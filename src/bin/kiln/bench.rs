//! `kiln bench`: compile time, training and inference throughput of a model on synthetic
//! data, measured as the peers' harness does (../shared/bench/peers: a pool of 8 batches
//! cycled, a warm-up, then repetitions of at least a fixed time, the median reported).

use crate::run::{count, positive, ModelArgs};
use crate::stdout::outln;
use crate::{check_one, print_diags, EXIT_INPUT, EXIT_IO};
use clap::Args;
use kiln::check::train::TrainConfig;
use kiln::check::LintLevels;
use kiln::interp::dims;
use kiln::ir::DType;
use kiln::runtime::init::init_params;
use kiln::runtime::program::{self, Program};
use kiln::runtime::train::Run;
use kiln::span::Sources;
use ndarray::{ArrayD, IxDyn};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `kiln bench`.
#[derive(Args, Clone)]
pub struct BenchArgs {
    #[command(flatten)]
    pub m: ModelArgs,
    /// Batch size (default: the train block's).
    #[arg(long, allow_negative_numbers = true, value_parser = count())]
    pub batch: Option<u64>,
    /// Seconds each of the 3 timed repetitions runs at least.
    #[arg(long, default_value_t = 2.0, allow_negative_numbers = true, value_parser = positive)]
    pub seconds: f64,
    /// Shards each training step is split into (a power of two; default as `kiln
    /// train`'s).
    #[arg(long, value_parser = crate::run::shards)]
    pub shards: Option<u64>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The figures `kiln bench` reports.
#[derive(Serialize)]
struct Figures {
    model: String,
    backend: String,
    threads: usize,
    batch: usize,
    shards: usize,
    /// The processes of an MPI job that split each step (1 without).
    processes: usize,
    /// Source to callable code: checking, lowering, differentiation, code generation.
    compile_ms: f64,
    /// The parameters' initialization.
    init_ms: f64,
    /// Making the synthetic batches.
    data_ms: f64,
    /// The first training step (or inference call, for a model without a loss).
    first_step_ms: f64,
    train_steps_per_s: f64,
    train_samples_per_s: f64,
    infer_samples_per_s: f64,
    infer_b1_samples_per_s: f64,
}

/// Inputs and targets of one batch.
type Batch = (Vec<ArrayD<f32>>, Vec<ArrayD<f32>>);

/// Batches in the synthetic data's pool.
const POOL: usize = 8;

/// The most memory the pool may take: a larger batch is refused before anything is
/// allocated (an allocation that fails aborts the process).
const POOL_BYTES: usize = 1 << 30;

/// The bytes of a pool of batches of `batch` rows (None past `usize`).
fn pool_bytes(p: &Program, batch: usize) -> Option<usize> {
    let f = &p.forward;
    f.inputs
        .iter()
        .chain(&f.targets)
        .try_fold(0usize, |sum, t| {
            let n = dims(&t.shape, 1)
                .iter()
                .try_fold(batch, |acc, &d| acc.checked_mul(d))?;
            sum.checked_add(n.checked_mul(POOL * std::mem::size_of::<f32>())?)
        })
}

fn pool(p: &Program, batch: usize, rng: &mut ChaCha8Rng) -> Vec<Batch> {
    let gen = |t: &kiln::ir::Tensor, rng: &mut ChaCha8Rng| {
        let d = dims(&t.shape, batch);
        let n: usize = d.iter().product();
        let v: Vec<f32> = match t.dtype {
            DType::Class(k) => (0..n).map(|_| rng.gen_range(0..k) as f32).collect(),
            DType::F32 => (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect(),
        };
        ArrayD::from_shape_vec(IxDyn(&d), v).expect("shape fits")
    };
    (0..POOL)
        .map(|_| {
            let inputs = p.forward.inputs.iter().map(|t| gen(t, rng)).collect();
            let targets = p.forward.targets.iter().map(|t| gen(t, rng)).collect();
            (inputs, targets)
        })
        .collect()
}

/// Milliseconds since `t`.
fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// Median over 3 repetitions of calls per second, each repetition at least `secs` long;
/// `go` turns "the clock says go on" into the decision every process of the run takes
/// (its own without peers).
fn rate(
    secs: f64,
    go: &dyn Fn(bool) -> bool,
    mut call: impl FnMut(usize) -> Result<(), String>,
) -> Result<f64, String> {
    let warm = Instant::now();
    let mut i = 0;
    while go(warm.elapsed() < Duration::from_secs_f64((secs / 2.0).min(1.0))) {
        call(i)?;
        i += 1;
    }
    let mut rates = Vec::new();
    for _ in 0..3 {
        let t0 = Instant::now();
        let mut n = 0u64;
        // The clock is read every 16 calls: read every call, it was 3–4 % of the xor
        // benchmark's profile (`perf record`), whose step is about a microsecond.
        while go(t0.elapsed().as_secs_f64() < secs) {
            for _ in 0..16 {
                call(i)?;
                i += 1;
            }
            n += 16;
        }
        rates.push(n as f64 / t0.elapsed().as_secs_f64());
    }
    rates.sort_by(f64::total_cmp);
    Ok(rates[1])
}

/// `kiln bench`.
pub fn bench(a: BenchArgs) -> anyhow::Result<u8> {
    // Under mpirun (built with the `mpi` feature): the processes split each training
    // step; process 0 measures inference alone and reports.
    let job = crate::run::Job::start();
    let t_source = Instant::now();
    let mut sources = Sources::new();
    let levels = LintLevels {
        allow: a.m.lints.allow.clone(),
        deny: a.m.lints.deny.clone(),
    };
    let checked = check_one(&mut sources, &a.m.file, &levels)?;
    let Some(program) = checked.program else {
        print_diags(&sources, &checked.diagnostics, a.m.lints.color);
        return Ok(EXIT_INPUT);
    };
    let Some(m) = program.model(a.m.model.as_deref()) else {
        eprintln!("error[E0208]: no such model in {}", a.m.file.display());
        return Ok(EXIT_INPUT);
    };
    let cfg = program
        .train(&m.name)
        .cloned()
        .unwrap_or_else(|| TrainConfig::defaults(&m.name, m.span));
    let p = Arc::new(program::prepare(m));
    let batch = a.batch.unwrap_or(cfg.batch) as usize;
    if pool_bytes(&p, batch).is_none_or(|b| b > POOL_BYTES) {
        eprintln!(
            "error: a batch of {batch} is too large for `kiln bench`'s synthetic data (at most \
             {} MiB for its {POOL} batches); choose a smaller --batch",
            POOL_BYTES >> 20
        );
        return Ok(EXIT_IO);
    }
    let mut cfg = cfg;
    cfg.batch = batch as u64;
    cfg.shards = a.shards.or(cfg.shards);
    let graph = Arc::new(p.training_graph(&cfg));
    let front_end = t_source.elapsed();
    let t_init = Instant::now();
    let run = init_params(&p.model, cfg.seed).map(|params| (ms(t_init), params));
    let t_build = Instant::now();
    let run = run.and_then(|(init_ms, params)| {
        Ok((init_ms, Run::with_params(p.clone(), graph, &cfg, params)?))
    });
    let (init_ms, mut run) = match run {
        Ok(run) => run,
        Err(e) => {
            return Ok(crate::run::fail(
                &e.into(),
                &sources,
                crate::color(a.m.lints.color),
            ))
        }
    };
    if let Some(peers) = job.peers() {
        if let Err(e) = run.set_peers(peers) {
            if run.leads() {
                eprintln!("error: {e}");
            }
            return Ok(EXIT_INPUT);
        }
    }
    let mut be = a.m.backend();
    let trains = p.forward.loss.is_some();
    let roots: Vec<_> = p.forward.outputs.iter().map(|(_, n)| *n).collect();
    if trains {
        run.prepare(&mut *be).map_err(anyhow::Error::msg)?;
    }
    be.prepare(&p.forward, &roots).map_err(anyhow::Error::msg)?;
    let compile_ms = (front_end + t_build.elapsed()).as_secs_f64() * 1e3;
    let t_data = Instant::now();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let data = pool(&p, batch, &mut rng);
    let data1 = pool(&p, 1, &mut rng);
    let data_ms = ms(t_data);
    let t_first = Instant::now();
    let fail = |e: kiln::exec::RunError| e.to_string();
    if trains {
        run.raw_step(&mut *be, &data[0].0, &data[0].1)
            .map_err(anyhow::Error::msg)?;
    } else {
        be.forward(&p.forward, &run.state, &data[0].0, &[], &roots)
            .map_err(anyhow::Error::msg)?;
    }
    let first_step_ms = ms(t_first);
    let train_steps = if trains {
        rate(a.seconds, &|go| job.agree(go), |i| {
            let (x, y) = &data[i % data.len()];
            run.raw_step(&mut *be, x, y)
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .map_err(anyhow::Error::msg)?
    } else {
        0.0
    };
    let state = &run.state;
    if !run.leads() {
        return Ok(0);
    }
    let mut infer = |d: &[Batch]| {
        rate(a.seconds, &|go| go, |i| {
            let (x, _) = &d[i % d.len()];
            be.forward(&p.forward, state, x, &[], &roots)
                .map(|_| ())
                .map_err(fail)
        })
    };
    let infer_calls = infer(&data).map_err(anyhow::Error::msg)?;
    let infer_b1 = infer(&data1).map_err(anyhow::Error::msg)?;
    let f = Figures {
        model: p.model.name.clone(),
        backend: format!("{:?}", a.m.backend).to_lowercase(),
        threads: a.m.thread_count(),
        batch,
        shards: run.shards(),
        processes: run.processes(),
        compile_ms,
        init_ms,
        data_ms,
        first_step_ms,
        train_steps_per_s: train_steps,
        train_samples_per_s: train_steps * batch as f64,
        infer_samples_per_s: infer_calls * batch as f64,
        infer_b1_samples_per_s: infer_b1,
    };
    if a.json {
        outln!("{}", serde_json::to_string(&f)?);
    } else {
        let processes = match f.processes {
            1 => String::new(),
            k => format!(", {k} processes"),
        };
        outln!(
            "model {} on {} (batch {batch}, {} thread{}, {} shard{}{processes})",
            f.model,
            f.backend,
            f.threads,
            if f.threads == 1 { "" } else { "s" },
            f.shards,
            if f.shards == 1 { "" } else { "s" }
        );
        outln!("compile (source to code): {:.1} ms", f.compile_ms);
        outln!(
            "set-up: parameters {:.1} ms, synthetic data {:.1} ms; first {}: {:.1} ms",
            f.init_ms,
            f.data_ms,
            if trains { "step" } else { "call" },
            f.first_step_ms
        );
        if trains {
            outln!(
                "train: {:.0} steps/s, {:.0} samples/s",
                f.train_steps_per_s,
                f.train_samples_per_s
            );
        }
        outln!(
            "inference batch {batch}: {:.0} samples/s",
            f.infer_samples_per_s
        );
        outln!(
            "inference batch 1: {:.0} samples/s",
            f.infer_b1_samples_per_s
        );
    }
    Ok(0)
}
