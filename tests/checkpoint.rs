//! Checkpoints: safetensors round trips, conversion of other dtypes, errors, atomic
//! writes and the comparison of a checkpoint with what a model expects.

use std::path::Path;

use kiln::runtime::checkpoint::{compare, digest, Checkpoint, CheckpointError};
use ndarray::{arr0, arr1, arr2, ArrayD, IxDyn};
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
