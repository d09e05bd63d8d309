//! Training steps split into shards (docs/SCALING.md): the same bits for any number of
//! threads; the same step as the unsplit one up to rounding, dropout included (each row's
//! noise is drawn at its place in the batch, whichever shard computes it); on the JIT as
//! on the interpreter; batch statistics each shard's own; and processes sharing a step
//! (played by threads) train the same bits as one.

use kiln::check::train::TrainConfig;
use kiln::check::{check_file, LintLevels};
use kiln::exec::Backend;
use kiln::interp::Interpreter;
use kiln::jit::Jit;
use kiln::runtime::cluster::Peers;
use kiln::runtime::data::Dataset;
use kiln::runtime::program::{self, Program};
use kiln::runtime::shard::separable;
use kiln::runtime::train::{Observer, Run};
use kiln::span::Sources;
use ndarray::{ArrayD, IxDyn};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::mpsc::{channel, Receiver, Sender};

fn program(src: &str) -> (Program, TrainConfig) {
    let mut sources = Sources::new();
    let id = sources.add("t.kiln", None, src.to_string());
    let c = check_file(&mut sources, id, &LintLevels::default());
    let msgs: Vec<String> = c.diagnostics.iter().map(|d| d.message.clone()).collect();
    let p = c.program.unwrap_or_else(|| panic!("{msgs:?}"));
    let m = &p.models[0];
    let cfg = p.train(&m.name).cloned().unwrap();
    (program::prepare(m), cfg)
}

/// An MLP with dropout, L2 regularization, Adam and clipping by norm.
const MLP: &str = "model m {
  input  x: [N, 12]
  target y: class[N] of 5
  logits = x |> dense(32) |> relu |> dropout(0.3) |> dense(16) |> tanh |> dense(5)
  output logits
  loss cross_entropy(logits, y)
  regularize l2(1e-3)
}
train m {
  optimizer adam(lr: 0.01)
  clip norm(1.0)
  batch 37
  seed 3
}
";

fn batch(rows: usize, seed: u64) -> (Vec<ArrayD<f32>>, Vec<ArrayD<f32>>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let x: Vec<f32> = (0..rows * 12).map(|_| rng.gen_range(-2.0..2.0)).collect();
    let y: Vec<f32> = (0..rows).map(|_| rng.gen_range(0..5) as f32).collect();
    (
        vec![ArrayD::from_shape_vec(IxDyn(&[rows, 12]), x).unwrap()],
        vec![ArrayD::from_shape_vec(IxDyn(&[rows]), y).unwrap()],
    )
}

/// The parameters after `steps` steps of 37 rows split into `shards`, on `backend`.
fn train(shards: u64, backend: &mut dyn Backend, steps: u64) -> (Vec<f64>, Vec<ArrayD<f32>>) {
    train_model(MLP, shards, backend, steps)
}

/// [`train`] for the model and train block `src` (whose input is `x: [N, 12]`).
fn train_model(
    src: &str,
    shards: u64,
    backend: &mut dyn Backend,
    steps: u64,
) -> (Vec<f64>, Vec<ArrayD<f32>>) {
    let (p, mut cfg) = program(src);
    cfg.shards = Some(shards);
    let mut run = Run::new(&p, &cfg).unwrap();
    assert_eq!(run.shards(), shards as usize);
    let mut losses = Vec::new();
    for s in 0..steps {
        let (x, y) = batch(37, s);
        losses.push(run.step_batch(backend, &x, &y).unwrap().loss);
    }
    (losses, run.state.params.clone())
}

fn bits(v: &[ArrayD<f32>]) -> Vec<Vec<u32>> {
    v.iter()
        .map(|a| a.iter().map(|x| x.to_bits()).collect())
        .collect()
}

fn close(a: &[ArrayD<f32>], b: &[ArrayD<f32>], tol: f32) {
    for (x, y) in a.iter().zip(b) {
        for (u, v) in x.iter().zip(y.iter()) {
            assert!(
                (u - v).abs() <= tol * u.abs().max(v.abs()).max(1.0),
                "{u} vs {v}"
            );
        }
    }
}

#[test]
fn the_same_bits_for_any_thread_count() {
    let (l1, p1) = train(4, &mut Jit::with_threads(1), 5);
    for threads in [2, 3, 8] {
        let (l, p) = train(4, &mut Jit::with_threads(threads), 5);
        assert_eq!(l, l1, "losses at {threads} threads");
        assert_eq!(bits(&p), bits(&p1), "parameters at {threads} threads");
    }
}

/// An MLP of tensors of 4,800 and 6,400 elements (cut into ranges on two or more
/// threads), trained as `train` says.
fn wide(train: &str) -> String {
    format!(
        "model m {{
  input  x: [N, 12]
  target y: class[N] of 5
  logits = x |> dense(400) |> relu |> dense(16) |> tanh |> dense(5)
  output logits
  loss cross_entropy(logits, y)
}}
train m {{
  {train}
  batch 37
  seed 3
}}
"
    )
}

#[test]
fn updates_cut_into_ranges_give_the_same_bits() {
    // On two or more threads every optimizer's update runs on a range of each tensor
    // on every thread, which must not change a bit.
    for train in [
        "optimizer adam(lr: 0.01)\n  clip value(0.5)",
        "optimizer adamw(lr: 0.01)",
        "optimizer sgd(lr: 0.05, momentum: 0.9, nesterov: true, weight_decay: 0.001)",
        "optimizer rmsprop(lr: 0.01)",
    ] {
        let src = wide(train);
        let (l1, p1) = train_model(&src, 4, &mut Jit::with_threads(1), 3);
        for threads in [2, 3] {
            let (l, p) = train_model(&src, 4, &mut Jit::with_threads(threads), 3);
            assert_eq!(l, l1, "{train}: losses at {threads} threads");
            assert_eq!(
                bits(&p),
                bits(&p1),
                "{train}: parameters at {threads} threads"
            );
        }
        assert_ne!(
            bits(&p1),
            bits(&train_model(&src, 4, &mut Jit::with_threads(1), 2).1)
        );
    }
}

#[test]
fn a_prepared_step_compiles_nothing_more() {
    // `kiln bench`'s compile time: every function a step runs is compiled by
    // `Run::prepare`, the update's ranges included.
    let momentum = wide("optimizer sgd(lr: 0.05, momentum: 0.9)");
    for (src, threads, functions) in [(MLP, 1, 2), (&momentum, 1, 2), (&momentum, 2, 3)] {
        let (p, cfg) = program(src);
        let mut run = Run::new(&p, &cfg).unwrap();
        let mut jit = Jit::with_threads(threads);
        run.prepare(&mut jit).unwrap();
        assert_eq!(
            jit.compiled(),
            functions,
            "gradients and each range's update"
        );
        let (x, y) = batch(37, 0);
        run.step_batch(&mut jit, &x, &y).unwrap();
        assert_eq!(jit.compiled(), functions, "{threads} threads");
    }
}

#[test]
fn a_split_step_is_the_whole_step_up_to_rounding() {
    // One step from the same initial weights: the split step's gradient is the weighted
    // sum of the shards' (dropout's masks included), so the updates agree closely; were
    // the shards' noise the same, or the weights not their shares, they would not.
    let (l1, whole) = train(1, &mut Jit::with_threads(1), 1);
    for shards in [2, 4, 8, 64] {
        let (l, split) = train(shards, &mut Jit::with_threads(2), 1);
        assert!((l[0] - l1[0]).abs() < 1e-5 * l1[0].abs(), "{l:?} vs {l1:?}");
        close(&split, &whole, 1e-5);
        assert_ne!(
            bits(&split),
            bits(&whole),
            "{shards} shards: rounded alike?"
        );
    }
}

#[test]
fn the_interpreter_splits_steps_alike() {
    let (la, a) = train(4, &mut Interpreter, 3);
    let (lb, b) = train(4, &mut Jit::with_threads(2), 3);
    for (x, y) in la.iter().zip(&lb) {
        assert!((x - y).abs() < 1e-4 * x.abs().max(1.0), "{la:?} vs {lb:?}");
    }
    close(&a, &b, 1e-4);
}

/// An MLP with batch normalization and plain SGD (its update is linear in the gradient).
const BN: &str = "model m {
  input  x: [N, 12]
  target y: class[N] of 5
  logits = x |> dense(32) |> batchnorm |> relu |> dense(16) |> batchnorm |> tanh |> dense(5)
  output logits
  loss cross_entropy(logits, y)
  regularize l2(1e-3)
}
train m {
  optimizer sgd(lr: 0.1)
  batch 36
  seed 3
}
";

/// The parameters (running statistics included) after one step on `x`, `y` in `shards`.
fn bn_step(shards: u64, x: &[ArrayD<f32>], y: &[ArrayD<f32>]) -> Vec<ArrayD<f32>> {
    let (p, mut cfg) = program(BN);
    cfg.shards = Some(shards);
    let mut run = Run::new(&p, &cfg).unwrap();
    assert_eq!(run.shards(), shards as usize);
    run.step_batch(&mut Jit::with_threads(2), x, y).unwrap();
    run.state.params.clone()
}

#[test]
fn batch_statistics_are_each_shards_own() {
    // Each shard normalizes with its own rows' statistics (as each replica does in
    // PyTorch's DistributedDataParallel) and the running statistics are the shards'
    // averaged: with SGD, a step split in two is the mean of the two halves' steps.
    let (p, _) = program(BN);
    assert!(separable(&p.train_forward(1)));
    let (x, y) = batch(36, 7);
    let half = |v: &[ArrayD<f32>], k: usize| -> Vec<ArrayD<f32>> {
        v.iter()
            .map(|a| {
                a.slice_axis(ndarray::Axis(0), ndarray::Slice::from(k * 18..(k + 1) * 18))
                    .to_owned()
            })
            .collect()
    };
    let split = bn_step(2, &x, &y);
    let (a, b) = (
        bn_step(1, &half(&x, 0), &half(&y, 0)),
        bn_step(1, &half(&x, 1), &half(&y, 1)),
    );
    let mean: Vec<ArrayD<f32>> = a.iter().zip(&b).map(|(u, v)| (u + v) / 2.0).collect();
    close(&split, &mean, 1e-5);
    // Not the whole batch's statistics: those give another step.
    let whole = bn_step(1, &x, &y);
    let far = split
        .iter()
        .zip(&whole)
        .flat_map(|(u, v)| u.iter().zip(v.iter()).map(|(p, q)| (p - q).abs()))
        .fold(0.0f32, f32::max);
    assert!(
        far > 1e-3,
        "the split step used the whole batch's statistics?"
    );
    // And the same bits for any thread count.
    let (p, mut cfg) = program(BN);
    cfg.shards = Some(4);
    let bits_at = |threads| {
        let mut run = Run::new(&p, &cfg).unwrap();
        run.step_batch(&mut Jit::with_threads(threads), &x, &y)
            .unwrap();
        bits(&run.state.params)
    };
    assert_eq!(bits_at(1), bits_at(3));
}

/// Processes of a data-parallel job played by threads: a channel each way between
/// every two, messages in order (as MPI's between two processes).
struct Threads {
    rank: usize,
    to: Vec<Sender<(u16, Vec<f32>)>>,
    from: Vec<Receiver<(u16, Vec<f32>)>>,
}

/// A broadcast's tag.
const BROADCAST: u16 = u16::MAX;

impl Threads {
    fn job(size: usize) -> Vec<Threads> {
        let mut to: Vec<Vec<_>> = (0..size).map(|_| Vec::new()).collect();
        let mut from: Vec<Vec<_>> = (0..size).map(|_| Vec::new()).collect();
        for (a, senders) in to.iter_mut().enumerate() {
            for receivers in from.iter_mut() {
                // a → b
                let (s, r) = channel();
                senders.push(s);
                receivers.push((a, r));
            }
        }
        to.into_iter()
            .zip(from)
            .enumerate()
            .map(|(rank, (to, mut from))| {
                from.sort_by_key(|(a, _)| *a);
                Threads {
                    rank,
                    to,
                    from: from.into_iter().map(|(_, r)| r).collect(),
                }
            })
            .collect()
    }
}

impl Peers for Threads {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.to.len()
    }
    fn send(&self, to: usize, tag: u16, data: &[f32]) {
        assert_ne!(to, self.rank);
        self.to[to].send((tag, data.to_vec())).unwrap();
    }
    fn receive(&self, from: usize, tag: u16, data: &mut [f32]) {
        let (t, v) = self.from[from].recv().unwrap();
        assert_eq!((t, v.len()), (tag, data.len()), "message from {from}");
        data.copy_from_slice(&v);
    }
    fn broadcast(&self, data: &mut [f32]) {
        if self.rank == 0 {
            for to in 1..self.size() {
                self.send(to, BROADCAST, data);
            }
        } else {
            self.receive(0, BROADCAST, data);
        }
    }
}

struct Silent;
impl Observer for Silent {}

/// 150 rows of the MLP's data.
fn data() -> Dataset {
    let (inputs, targets) = batch(150, 99);
    Dataset {
        inputs,
        targets,
        rows: 150,
    }
}

/// The parameters after 3 epochs in steps of 37 rows split into `shards` by `peers`
/// (one process without), with early stopping on the validation loss.
fn fit(model: &str, shards: u64, peers: Option<Threads>) -> (u64, Vec<Vec<u32>>) {
    fit_on(model, shards, peers, 1)
}

/// [`fit`] with `threads` threads in each process.
fn fit_on(
    model: &str,
    shards: u64,
    peers: Option<Threads>,
    threads: usize,
) -> (u64, Vec<Vec<u32>>) {
    let src = model.replace(
        "seed 3",
        "seed 3\n  epochs 3\n  validation 0.2\n  early_stop(monitor: val_loss, patience: 1)",
    );
    let (p, mut cfg) = program(&src);
    cfg.shards = Some(shards);
    let mut run = Run::new(&p, &cfg).unwrap();
    if let Some(peers) = peers {
        run.set_peers(Box::new(peers)).unwrap();
    }
    run.fit(&mut Jit::with_threads(threads), &data(), None, &mut Silent)
        .unwrap();
    (run.progress().1, bits(&run.state.params))
}

#[test]
fn processes_sharing_a_step_train_the_same_bits() {
    // Two threads in each process of the last: its sum updated by ranges.
    let momentum = wide("optimizer sgd(lr: 0.05, momentum: 0.9)");
    let cases = [
        (MLP, 2, 2, 1),
        (MLP, 2, 8, 1),
        (MLP, 4, 4, 1),
        (MLP, 3, 4, 1),
        (BN, 2, 2, 1),
        (&momentum, 2, 8, 2),
    ];
    for (model, processes, shards, threads) in cases {
        let one = fit(model, shards, None);
        let each = std::thread::scope(|s| {
            let jobs: Vec<_> = Threads::job(processes)
                .into_iter()
                .map(|p| s.spawn(move || fit_on(model, shards, Some(p), threads)))
                .collect();
            jobs.into_iter()
                .map(|j| j.join().unwrap())
                .collect::<Vec<_>>()
        });
        for (rank, got) in each.iter().enumerate() {
            assert_eq!(
                got, &one,
                "{processes} processes, {shards} shards: process {rank}"
            );
        }
    }
}

#[test]
fn more_processes_than_shards_split_steps_finer() {
    // Four processes need four shards: the step is split so whatever the train block says.
    let (p, mut cfg) = program(MLP);
    cfg.shards = Some(1);
    let mut run = Run::new(&p, &cfg).unwrap();
    let peers = Threads::job(4).into_iter().next().unwrap();
    run.set_peers(Box::new(peers)).unwrap();
    assert_eq!(run.shards(), 4);
}

/// A convolution and a GRU side by side, for inference.
const CONV_GRU: &str = "model m {
  input  x: [N, 12]
  target y: class[N] of 5
  image = x |> reshape([N, 1, 3, 4])
  c = image |> conv2d(4, 2, pad: 1) |> relu |> maxpool2d(2) |> flatten
  r = x |> reshape([N, 3, 4]) |> gru(6, sequence: false)
  logits = concat(c, r, axis: 1) |> batchnorm |> dense(5)
  output logits
  loss cross_entropy(logits, y)
}
train m {
  batch 32
}
";

#[test]
fn inference_split_by_rows_is_the_same_for_any_thread_count() {
    use kiln::jit::rows_independent;
    for src in [MLP, BN, CONV_GRU] {
        let (p, cfg) = program(src);
        let g = &p.forward;
        let outputs: Vec<_> = g.outputs.iter().map(|(_, n)| *n).collect();
        assert!(rows_independent(g, &outputs));
        // A loss combines rows: such a call is never split.
        let loss = [g.loss.unwrap()];
        assert!(!rows_independent(g, &loss));
        let state = Run::new(&p, &cfg).unwrap().state;
        // 130 rows: blocks of 65, 43–44, 32–33 rows at 2, 3 and 4 threads.
        let (x, _) = batch(130, 11);
        let at = |threads| {
            let mut jit = Jit::with_threads(threads);
            bits(&jit.forward(g, &state, &x, &[], &outputs).unwrap())
        };
        let one = at(1);
        for threads in [2, 3, 4] {
            assert_eq!(at(threads), one, "{threads} threads");
        }
        // And the interpreter's values.
        let want = Interpreter.forward(g, &state, &x, &[], &outputs).unwrap();
        let got = Jit::with_threads(2)
            .forward(g, &state, &x, &[], &outputs)
            .unwrap();
        close(&got, &want, 1e-4);
    }
}
