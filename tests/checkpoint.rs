//! Checkpoints: safetensors round trips, conversion of other dtypes, errors, atomic
//! writes, the comparison of a checkpoint with what a model expects, and the model
//! digest: pinned for every example, and checkpoints written before it still loading.

use std::path::{Path, PathBuf};
use std::process::Command;

use kiln::check::graph::CheckedModel;
use kiln::check::{check_file, load_file, LintLevels};
use kiln::runtime::checkpoint::{compare, digest, Checkpoint, CheckpointError};
use kiln::runtime::identity;
use kiln::runtime::program::{self, Program};
use kiln::runtime::weights;
use kiln::span::{FileId, Sources};
use ndarray::{arr0, arr1, arr2, array, ArrayD, IxDyn};
use safetensors::tensor::{Dtype, TensorView};

fn sample() -> Checkpoint {
    let mut c = Checkpoint::new();
    c.tensors.insert(
        "h.dense.weight".into(),
        arr2(&[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]).into_dyn(),
    );
    c.tensors.insert(
        "h.dense.bias".into(),
        arr1(&[0.5, -0.25, f32::MIN_POSITIVE]).into_dyn(),
    );
    c.tensors
        .insert("step_scale".into(), arr0(7.5f32).into_dyn());
    c.tensors
        .insert("empty".into(), ArrayD::<f32>::zeros(IxDyn(&[0, 4])));
    c.meta.insert("model_hash".into(), digest("model m { }"));
    c.meta.insert("step".into(), "1200".into());
    c
}

fn tmp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains(".tmp-"))
        .collect()
}

/// Writes a safetensors file with the safetensors crate directly, as another framework would.
fn write_raw(path: &Path, tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<(&str, TensorView<'_>)> = tensors
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            (
                *name,
                TensorView::new(*dtype, shape.clone(), bytes).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

#[test]
fn round_trip_keeps_tensors_scalars_and_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let saved = sample();
    saved.save(&path).unwrap();
    let loaded = Checkpoint::load(&path).unwrap();
    assert_eq!(loaded, saved);
    assert_eq!(loaded.tensors["step_scale"].shape(), &[] as &[usize]);
    assert_eq!(loaded.tensors["step_scale"][IxDyn(&[])], 7.5);
    assert_eq!(loaded.tensors["empty"].shape(), &[0, 4]);
    assert_eq!(loaded.meta["step"], "1200");
}

#[test]
fn round_trip_of_an_empty_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.safetensors");
    Checkpoint::new().save(&path).unwrap();
    assert_eq!(Checkpoint::load(&path).unwrap(), Checkpoint::new());
}

#[test]
fn non_contiguous_tensors_are_saved_in_logical_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.safetensors");
    let mut c = Checkpoint::new();
    let transposed = arr2(&[[1.0f32, 2.0, 3.0], [4.0, 5.0, 6.0]]).reversed_axes();
    c.tensors.insert("w".into(), transposed.clone().into_dyn());
    c.save(&path).unwrap();
    let loaded = Checkpoint::load(&path).unwrap();
    assert_eq!(loaded.tensors["w"], transposed.into_dyn());
    assert_eq!(
        loaded.tensors["w"].iter().copied().collect::<Vec<_>>(),
        vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]
    );
}

#[test]
fn f64_and_integer_tensors_are_converted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("torch.safetensors");
    let f64s: Vec<u8> = [1.5f64, -2.25, 1e10, 0.1]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let i64s: Vec<u8> = [-3i64, 0, 42]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let i32s: Vec<u8> = [7i32].iter().flat_map(|v| v.to_le_bytes()).collect();
    let u8s: Vec<u8> = vec![0, 255];
    write_raw(
        &path,
        &[
            ("w", Dtype::F64, vec![2, 2], f64s),
            ("ids", Dtype::I64, vec![3], i64s),
            ("count", Dtype::I32, vec![], i32s),
            ("bytes", Dtype::U8, vec![2], u8s),
        ],
    );
    let c = Checkpoint::load(&path).unwrap();
    assert_eq!(
        c.tensors["w"],
        arr2(&[[1.5f32, -2.25], [1e10, 0.1f64 as f32]]).into_dyn()
    );
    assert_eq!(c.tensors["ids"], arr1(&[-3.0f32, 0.0, 42.0]).into_dyn());
    assert_eq!(c.tensors["count"], arr0(7.0f32).into_dyn());
    assert_eq!(c.tensors["bytes"], arr1(&[0.0f32, 255.0]).into_dyn());
    assert!(c.meta.is_empty());
}

#[test]
fn f16_and_bf16_tensors_are_converted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("half.safetensors");
    // f16: 1.0, -2.0, 0.5, the smallest subnormal 2^-24, 65504 (max), +inf, -0.0.
    let f16_bits: [u16; 7] = [0x3C00, 0xC000, 0x3800, 0x0001, 0x7BFF, 0x7C00, 0x8000];
    // bf16: 1.0, -3.0 (0xC040), 0.15625 (0x3E20).
    let bf16_bits: [u16; 3] = [0x3F80, 0xC040, 0x3E20];
    let bytes = |bits: &[u16]| {
        bits.iter()
            .flat_map(|b| b.to_le_bytes())
            .collect::<Vec<u8>>()
    };
    write_raw(
        &path,
        &[
            ("half", Dtype::F16, vec![7], bytes(&f16_bits)),
            ("brain", Dtype::BF16, vec![3], bytes(&bf16_bits)),
        ],
    );
    let c = Checkpoint::load(&path).unwrap();
    let half: Vec<f32> = c.tensors["half"].iter().copied().collect();
    assert_eq!(
        half[..6],
        [1.0, -2.0, 0.5, 2f32.powi(-24), 65504.0, f32::INFINITY]
    );
    assert!(half[6] == 0.0 && half[6].is_sign_negative());
    assert_eq!(
        c.tensors["brain"],
        arr1(&[1.0f32, -3.0, 0.15625]).into_dyn()
    );
}

#[test]
fn unconvertible_dtype_is_a_format_error_naming_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bool.safetensors");
    write_raw(&path, &[("mask", Dtype::BOOL, vec![2], vec![0, 1])]);
    match Checkpoint::load(&path) {
        Err(CheckpointError::Format { path: p, message }) => {
            assert_eq!(p, path);
            assert!(message.contains("`mask`"), "{message}");
            assert!(message.contains("BOOL"), "{message}");
        }
        other => panic!("expected a format error, got {other:?}"),
    }
}

#[test]
fn garbage_is_a_format_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    std::fs::write(&path, "this is not a safetensors file at all").unwrap();
    let err = Checkpoint::load(&path).unwrap_err();
    assert!(matches!(err, CheckpointError::Format { .. }), "{err:?}");
    let shown = err.to_string();
    assert!(shown.contains(&path.display().to_string()), "{shown}");

    // Shorter than the 8-byte header length, and empty.
    for bytes in [&b"abc"[..], &b""[..]] {
        std::fs::write(&path, bytes).unwrap();
        assert!(matches!(
            Checkpoint::load(&path),
            Err(CheckpointError::Format { .. })
        ));
    }
}

#[test]
fn missing_file_is_an_io_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nowhere.safetensors");
    let err = Checkpoint::load(&path).unwrap_err();
    match &err {
        CheckpointError::Io { path: p, source } => {
            assert_eq!(p, &path);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected an io error, got {other:?}"),
    }
    assert!(err.to_string().contains("nowhere.safetensors"), "{err}");
    assert!(std::error::Error::source(&err).is_some());
}

#[test]
fn corrupted_files_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.safetensors");
    sample().save(&path).unwrap();
    let good = std::fs::read(&path).unwrap();
    let bad = dir.path().join("bad.safetensors");
    // Every truncation, and a byte flipped at every position.
    for len in 0..good.len() {
        std::fs::write(&bad, &good[..len]).unwrap();
        assert!(Checkpoint::load(&bad).is_err(), "truncated to {len} bytes");
    }
    for i in 0..good.len() {
        let mut bytes = good.clone();
        bytes[i] ^= 0xA5;
        std::fs::write(&bad, &bytes).unwrap();
        let _ = Checkpoint::load(&bad);
    }
    // A header claiming a huge length, and one with absurd shapes.
    let mut huge = u64::MAX.to_le_bytes().to_vec();
    huge.extend_from_slice(b"{}");
    std::fs::write(&bad, &huge).unwrap();
    assert!(Checkpoint::load(&bad).is_err());
    let header = br#"{"x":{"dtype":"F32","shape":[18446744073709551615,2],"data_offsets":[0,0]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    std::fs::write(&bad, &bytes).unwrap();
    assert!(Checkpoint::load(&bad).is_err());
}

#[test]
fn save_leaves_no_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    sample().save(&path).unwrap();
    sample().save(&path).unwrap();
    assert_eq!(tmp_files(dir.path()), Vec::<String>::new());
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(names.len(), 1);
}

#[test]
fn a_crash_mid_write_leaves_the_previous_checkpoint_intact() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let previous = sample();
    previous.save(&path).unwrap();
    let before = std::fs::read(&path).unwrap();

    // A run killed mid-write: the temporary file holds a partial checkpoint and was never
    // renamed over the real one.
    let mut next = sample();
    next.meta.insert("step".into(), "1300".into());
    next.tensors
        .insert("big".into(), ArrayD::from_elem(IxDyn(&[64, 64]), 1.0));
    let tmp = dir
        .path()
        .join(format!("model.safetensors.tmp-{}", std::process::id()));
    next.save(&tmp).unwrap();
    let full = std::fs::read(&tmp).unwrap();
    std::fs::write(&tmp, &full[..full.len() / 2]).unwrap();

    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert_eq!(Checkpoint::load(&path).unwrap(), previous);
    assert!(Checkpoint::load(&tmp).is_err());

    // The next save overwrites the stale temporary file and replaces the checkpoint.
    next.save(&path).unwrap();
    assert_eq!(Checkpoint::load(&path).unwrap(), next);
    assert_eq!(tmp_files(dir.path()), Vec::<String>::new());
}

#[test]
fn overwriting_keeps_the_checkpoint_loadable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let mut c = sample();
    for step in 0..5 {
        c.meta.insert("step".into(), step.to_string());
        c.tensors
            .insert("step_scale".into(), arr0(step as f32).into_dyn());
        if step == 3 {
            c.tensors.remove("empty");
        }
        c.save(&path).unwrap();
        assert_eq!(Checkpoint::load(&path).unwrap(), c);
    }
    assert_eq!(tmp_files(dir.path()), Vec::<String>::new());
}

#[test]
fn save_into_a_missing_directory_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no/such/dir/model.safetensors");
    assert!(sample().save(&path).is_err());
}

#[test]
fn a_tensor_named_like_the_metadata_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    let mut c = Checkpoint::new();
    c.tensors
        .insert("__metadata__".into(), arr1(&[1.0]).into_dyn());
    let err = c.save(&path).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    assert!(!path.exists());
    assert_eq!(tmp_files(dir.path()), Vec::<String>::new());
}

#[test]
fn compare_reports_missing_unexpected_and_misshaped_tensors() {
    let found = sample();
    let expected = vec![
        ("h.dense.weight".to_string(), vec![2, 3]),
        ("h.dense.bias".to_string(), vec![4]),
        ("out.weight".to_string(), vec![3, 1]),
        ("step_scale".to_string(), vec![]),
    ];
    let problems = compare(&expected, &found);
    assert_eq!(
        problems,
        vec![
            "`h.dense.bias` has shape [3] in the file but the model needs [4]".to_string(),
            "`out.weight` is missing from the file (the model needs shape [3, 1])".to_string(),
            "`empty` (shape [0, 4]) is in the file but the model has no such tensor".to_string(),
        ]
    );
}

#[test]
fn compare_hints_at_transposing_a_pytorch_linear_weight() {
    let mut found = Checkpoint::new();
    found
        .tensors
        .insert("h.dense.weight".into(), ArrayD::zeros(IxDyn(&[3, 4])));
    found
        .tensors
        .insert("h.other.weight".into(), ArrayD::zeros(IxDyn(&[3, 5])));
    let expected = vec![
        ("h.dense.weight".to_string(), vec![4, 3]),
        ("h.other.weight".to_string(), vec![4, 3]),
    ];
    let problems = compare(&expected, &found);
    assert_eq!(problems.len(), 2);
    assert_eq!(
        problems[0],
        "`h.dense.weight` has shape [3, 4] in the file but the model needs [4, 3] \
         (a PyTorch `nn.Linear` weight is stored [out, in]; \
         Kiln's dense weight is [in, out]: transpose it)"
    );
    assert_eq!(
        problems[1],
        "`h.other.weight` has shape [3, 5] in the file but the model needs [4, 3]"
    );
}

#[test]
fn compare_of_a_matching_checkpoint_is_empty() {
    let found = sample();
    let expected: Vec<(String, Vec<usize>)> = found
        .tensors
        .iter()
        .map(|(name, t)| (name.clone(), t.shape().to_vec()))
        .collect();
    assert!(compare(&expected, &found).is_empty());
}

#[test]
fn digest_is_stable_sha256_hex() {
    assert_eq!(
        digest(""),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(
        digest("abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_ne!(digest("model a"), digest("model b"));
}

// ---------------------------------------------------------------- model identity

fn manifest(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn checked(sources: &mut Sources, id: FileId) -> CheckedModel {
    let c = check_file(sources, id, &LintLevels::default());
    let errors: Vec<String> = c.diagnostics.iter().map(|d| d.message.clone()).collect();
    let program = c.program.unwrap_or_else(|| panic!("{errors:?}"));
    program.models.into_iter().next().expect("a model")
}

fn checked_file(path: &Path) -> CheckedModel {
    let mut sources = Sources::new();
    let (id, problem) = load_file(&mut sources, path).unwrap();
    assert!(problem.is_none(), "{problem:?}");
    checked(&mut sources, id)
}

fn checked_str(src: &str) -> CheckedModel {
    let mut sources = Sources::new();
    let id = sources.add("m.kiln", None, src.to_string());
    checked(&mut sources, id)
}

/// The digest of every example model. A change to the canonical text changes these on
/// purpose: it orphans every checkpoint saved before, so it comes with a new
/// `identity::SCHEME`, never with new digests alone.
const EXAMPLE_DIGESTS: &[(&str, &str)] = &[
    (
        "breast_cancer.kiln",
        "eb37ed70d8a195b04c9384f5dc4b10fe1a2f5cd1f358dbd8458905cf631aac76",
    ),
    (
        "digits_bn_dropout.kiln",
        "626322fe05ed9e031e2a04b31ae36b51a9e4839e3d79bdb0441378cde3763864",
    ),
    (
        "digits_cnn.kiln",
        "59c5b0aa48ed206473834a34ee9f5d5017bdea2cf55a27fda0881c6a0f57b828",
    ),
    (
        "digits_finetune.kiln",
        "a7d5518a332e44dabc7ca9058e7cfe3ae730e518efcb9b1aa1380d5e54e604bb",
    ),
    (
        "digits_gru.kiln",
        "4cd3f27a4a48a20ec5f00c8147b57833102c1a3bef172090e7f9d3bc55cdabe7",
    ),
    (
        "digits_mlp.kiln",
        "45973a89abfec22d8d0fb64ee254affcca1d23339b692f7010591943c90a9688",
    ),
    (
        "iris.kiln",
        "fcf1d5ff25b315613fbde4bff05c91a15d89fba5431c907b22a4b3b395f6d1c2",
    ),
    (
        "resnet_block.kiln",
        "6fa3003386b79738bfd7eae965b597d30d33c7b4f34ead2ad2fdeb2404668617",
    ),
    (
        "xor.kiln",
        "b4bc4f019cce7f0e3aa239006b10c5337a988f097eef349e76f50e25998910bb",
    ),
];

#[test]
fn every_example_model_has_its_pinned_digest() {
    let mut files: Vec<String> = std::fs::read_dir(manifest("examples"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".kiln"))
        .collect();
    files.sort();
    let actual: Vec<(String, String)> = files
        .into_iter()
        .map(|name| {
            let model = checked_file(&manifest("examples").join(&name));
            (name, identity::digest(&model))
        })
        .collect();
    let expected: Vec<(String, String)> = EXAMPLE_DIGESTS
        .iter()
        .map(|(name, hex)| (name.to_string(), hex.to_string()))
        .collect();
    assert_eq!(actual, expected);
}

#[test]
fn the_canonical_text_of_iris_is_pinned() {
    // The example of `src/runtime/identity.rs`'s documentation.
    let model = checked_file(&manifest("examples/iris.kiln"));
    assert_eq!(
        identity::describe(&model),
        "kiln-model-1
input features: [N, 4]
target label: class[N] of 3
output logits: [N, 3]
layer h.dense: dense(units: 16, bias: true) [N, 4] -> [N, 16]
  param h.dense.bias: f32[16]
  param h.dense.weight: f32[4, 16]
layer logits.dense: dense(units: 3, bias: true) [N, 16] -> [N, 3]
  param logits.dense.bias: f32[3]
  param logits.dense.weight: f32[16, 3]
"
    );
    assert_eq!(
        identity::digest(&model),
        digest(&identity::describe(&model))
    );
}

#[test]
fn layer_arguments_are_written_in_the_dsls_words() {
    let lines = |name: &str| {
        let model = checked_file(&manifest("examples").join(name));
        identity::describe(&model)
            .lines()
            .filter(|l| l.starts_with("layer "))
            .map(String::from)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        lines("digits_cnn.kiln")[0],
        "layer c1.conv2d: conv2d(out: 16, k: [3, 3], stride: [1, 1], pad: [1, 1], \
         dilation: [1, 1], bias: true) [N, 1, 8, 8] -> [N, 16, 8, 8]"
    );
    assert_eq!(
        lines("digits_gru.kiln")[1],
        "layer logits.gru: gru(h: 64, bidirectional: false, sequence: false) [N, 8, 8] -> [N, 64]"
    );
    assert_eq!(
        lines("digits_bn_dropout.kiln")[0],
        "layer logits.batchnorm: batchnorm(eps: 0.00001) [N, 256] -> [N, 256]"
    );
    let rnn = checked_str(
        "model m {
           input x: [N, 5, 3]
           y = x |> rnn(h: 4, activation: relu) |> last
           output y
         }",
    );
    assert!(
        identity::describe(&rnn).contains(
            "layer y.rnn: rnn(h: 4, activation: relu, bidirectional: false, sequence: true) \
             [N, 5, 3] -> [N, 5, 4]\n"
        ),
        "{}",
        identity::describe(&rnn)
    );
}

/// The digest of a small model with `edits` (text replacements) applied.
fn small(edits: &[(&str, &str)]) -> String {
    let mut src = "model m {
  input  x: [N, 4]
  target y: [N, 1]
  h   = x |> dense(8) |> relu
  out = h |> dense(1)
  output out
  loss mse(out, y)
}
"
    .to_string();
    for (from, to) in edits {
        assert!(src.contains(from), "{from}");
        src = src.replace(from, to);
    }
    identity::digest(&checked_str(&src))
}

#[test]
fn the_digest_follows_the_tensors_and_interface_not_the_spelling() {
    let base = small(&[]);
    let same: &[&[(&str, &str)]] = &[
        &[("h   = x", "# a comment\n  h = x")],
        &[("model m", "model renamed")],
        &[("[N, ", "[B, ")],
        &[("relu", "tanh")],
        &[("dense(8)", "dense(units: 8, init: xavier)")],
        &[("mse", "mae")],
    ];
    for edits in same {
        assert_eq!(small(edits), base, "{edits:?}");
    }
    let different: &[&[(&str, &str)]] = &[
        &[("dense(8)", "dense(9)")],
        &[("dense(8)", "dense(8, bias: false)")],
        &[("h   = x", "hidden = x"), ("out = h", "out = hidden")],
        &[("x: [N, 4]", "x: [N, 5]")],
        &[("target y", "target t"), (", y)", ", t)")],
        &[("output out", "output out\n  output h")],
    ];
    for edits in different {
        assert_ne!(small(edits), base, "{edits:?}");
    }
}

/// A checkpoint written before digests had a scheme (see `tests/fixtures/README.md`).
fn legacy() -> PathBuf {
    manifest("tests/fixtures/xor-legacy.safetensors")
}

fn program(path: &str) -> Program {
    program::prepare(&checked_file(&manifest(path)))
}

#[test]
fn a_legacy_checkpoint_carries_no_scheme_and_an_older_digest() {
    let c = Checkpoint::load(&legacy()).unwrap();
    assert_eq!(c.meta.get(identity::SCHEME_KEY), None);
    assert_eq!(c.meta["format"], "kiln-checkpoint-1");
    assert_eq!(
        c.meta["model_hash"],
        "d4e3a512a39f09458e11364bf9999768868c9d48b7152f0608d366b41c6589ce"
    );
    assert_ne!(c.meta["model_hash"], program("examples/xor.kiln").hash);
}

#[test]
fn a_legacy_checkpoint_still_resumes_and_predicts() {
    let model = kiln::compile_file(manifest("examples/xor.kiln")).unwrap();
    let mut session = model.session(8).unwrap();
    session.load(legacy()).unwrap();
    assert_eq!(session.progress(), (500, 500));
    let x = array![[0., 0.], [0., 1.], [1., 0.], [1., 1.]].into_dyn();
    let y = array![[0.], [1.], [1.], [0.]].into_dyn();
    let out = session.predict(&[("x", &x)]).unwrap();
    for (got, want) in out.iter().zip(&y) {
        assert!((got - want).abs() < 1e-6, "{out}");
    }
    // Its momentum buffers were restored too: one more step keeps the loss at zero.
    let loss = session.train_step(&[("x", &x)], &[("y", &y)]).unwrap();
    assert!(loss < 1e-9, "{loss}");
}

#[test]
fn kiln_predict_takes_a_legacy_checkpoint_as_weights() {
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("predict")
        .arg(manifest("examples/xor.kiln"))
        .arg("--weights")
        .arg(legacy())
        .arg("--data")
        .arg(manifest("examples/data/xor.csv"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let values: Vec<f64> = stdout
        .lines()
        .skip(1)
        .map(|l| l.parse::<f64>().unwrap().round())
        .collect();
    assert_eq!(values, [0.0, 1.0, 1.0, 0.0], "{stdout}");
}

#[test]
fn a_legacy_checkpoint_of_another_model_is_refused_by_its_tensors() {
    let err = weights::load_weights(&program("examples/iris.kiln"), &legacy())
        .map(|_| ())
        .expect_err("xor's weights do not fit iris")
        .to_string();
    assert!(err.contains("does not fit model `iris`"), "{err}");
    assert!(
        err.contains("`h.dense.weight` has shape [2, 2] in the file but the model needs [4, 16]"),
        "{err}"
    );
    assert!(
        err.contains("`logits.dense.weight` is missing from the file"),
        "{err}"
    );
}

#[test]
fn only_a_digest_of_this_scheme_is_compared() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("xor.safetensors");
    let xor = program("examples/xor.kiln");
    let load = |c: &Checkpoint| {
        c.save(&path).unwrap();
        weights::load_weights(&xor, &path).map(|(state, _)| state.params)
    };
    // The legacy file tagged with today's scheme: its old digest is now compared.
    let mut c = Checkpoint::load(&legacy()).unwrap();
    c.meta
        .insert(identity::SCHEME_KEY.into(), identity::SCHEME.into());
    let err = load(&c).expect_err("the old digest differs").to_string();
    assert_eq!(
        err,
        format!(
            "`{}` is a checkpoint of a different model (model `xor`): its layers, \
             shapes or names differ from `xor`",
            path.display()
        )
    );
    // With today's digest it loads.
    c.meta.insert("model_hash".into(), xor.hash.clone());
    let params = load(&c).unwrap();
    assert_eq!(params[0], c.tensors[&xor.forward.params[0].tensor.name]);
    // A scheme this version does not know: the digest is not evidence, the tensors fit.
    c.meta
        .insert(identity::SCHEME_KEY.into(), "kiln-model-99".into());
    c.meta.insert("model_hash".into(), "0".repeat(64));
    assert_eq!(load(&c).unwrap(), params);
}

#[test]
fn a_new_checkpoint_carries_the_scheme_and_the_digest() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("xor.safetensors");
    let model = kiln::compile_file(manifest("examples/xor.kiln")).unwrap();
    model.session(8).unwrap().save(&path).unwrap();
    let c = Checkpoint::load(&path).unwrap();
    assert_eq!(c.meta[identity::SCHEME_KEY], "kiln-model-1");
    assert_eq!(
        c.meta["model_hash"],
        "b4bc4f019cce7f0e3aa239006b10c5337a988f097eef349e76f50e25998910bb"
    );
}
