//! Checkpoints: named f32 tensors and string metadata in a safetensors file.
//!
//! Saving is atomic: the file is written to `<path>.tmp-<pid>` next to the target,
//! flushed and fsynced, then renamed over the target (and the directory fsynced on Unix),
//! so a reader, or a run killed mid-write, sees either the previous complete checkpoint
//! or the new one, never a partial file.
//!
//! Loading accepts files exported from other frameworks: F64, F16, BF16 and integer
//! tensors are converted to f32. Every malformed file is an error, never a panic.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, IxDyn};
use safetensors::tensor::{Dtype, SafeTensors};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// A checkpoint: named f32 tensors and string metadata.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Checkpoint {
    /// The tensors, by name.
    pub tensors: BTreeMap<String, ArrayD<f32>>,
    /// Free-form string metadata (model hash, step, ...), stored in the safetensors header.
    pub meta: BTreeMap<String, String>,
}

/// Errors reading a checkpoint; `Display` names the file.
#[derive(Debug)]
pub enum CheckpointError {
    /// The file could not be read.
    Io {
        /// The checkpoint file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The file was read but is not a checkpoint Kiln can load: not a safetensors file,
    /// or a tensor of a dtype that cannot be converted to f32.
    Format {
        /// The checkpoint file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
}

impl fmt::Display for CheckpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckpointError::Io { path, source } => {
                write!(f, "cannot read checkpoint `{}`: {source}", path.display())
            }
            CheckpointError::Format { path, message } => {
                write!(
                    f,
                    "`{}` is not a valid checkpoint: {message}",
                    path.display()
                )
            }
        }
    }
}

impl std::error::Error for CheckpointError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CheckpointError::Io { source, .. } => Some(source),
            CheckpointError::Format { .. } => None,
        }
    }
}

/// The key safetensors reserves for the header's metadata.
const METADATA_KEY: &str = "__metadata__";

/// One entry of a safetensors header: the metadata, or where a tensor's data lies.
#[derive(Serialize)]
#[serde(untagged)]
enum HeaderEntry<'a> {
    Metadata(&'a BTreeMap<String, String>),
    Tensor {
        dtype: &'static str,
        shape: &'a [usize],
        data_offsets: [usize; 2],
    },
}

impl Checkpoint {
    /// An empty checkpoint.
    pub fn new() -> Self {
        Self::default()
    }

    /// The file's bytes in safetensors format, always the same for the same checkpoint:
    /// the header's entries (the metadata under `__metadata__`, and each tensor's dtype,
    /// shape and data offsets) are sorted by key, the metadata's by key too, and the f32
    /// data follows little-endian, tensor by tensor in name order, in logical (row-major)
    /// order. The header is written here rather than by `safetensors::serialize`, which
    /// takes the metadata as a `HashMap` and writes it in hash order, different on every
    /// run.
    fn to_bytes(&self) -> io::Result<Vec<u8>> {
        if self.tensors.contains_key(METADATA_KEY) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a tensor cannot be named `{METADATA_KEY}` in a safetensors file"),
            ));
        }
        let mut header = BTreeMap::new();
        if !self.meta.is_empty() {
            header.insert(METADATA_KEY, HeaderEntry::Metadata(&self.meta));
        }
        let mut offset = 0;
        for (name, array) in &self.tensors {
            let end = offset + array.len() * 4;
            let entry = HeaderEntry::Tensor {
                dtype: "F32",
                shape: array.shape(),
                data_offsets: [offset, end],
            };
            header.insert(name.as_str(), entry);
            offset = end;
        }
        let mut header = serde_json::to_vec(&header)?;
        // Padded with spaces so that the data starts 8-byte aligned, as safetensors does.
        header.resize(header.len().next_multiple_of(8), b' ');
        let mut bytes = Vec::with_capacity(8 + header.len() + offset);
        bytes.extend_from_slice(&(header.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&header);
        for array in self.tensors.values() {
            for value in array.iter() {
                bytes.extend_from_slice(&value.to_le_bytes());
            }
        }
        Ok(bytes)
    }

    /// Writes to `<path>.tmp-<pid>` in the same directory, flushes and fsyncs it, then
    /// renames it over `path` (and fsyncs the directory on Unix), so a reader — or a run
    /// killed mid-write — always sees either the previous complete checkpoint or the new
    /// one, never a partial file.
    ///
    /// A stale temporary file left by an earlier crashed run with the same pid is
    /// overwritten. On error the temporary file is removed and `path` is untouched.
    pub fn save(&self, path: &Path) -> io::Result<()> {
        write_atomic(path, &self.to_bytes()?)
    }

    /// Reads a safetensors file. F32 tensors load as is; F64, F16, BF16 and integer
    /// tensors are converted to f32 (files exported from other frameworks); anything else
    /// is a Format error naming the tensor.
    pub fn load(path: &Path) -> Result<Checkpoint, CheckpointError> {
        let bytes = fs::read(path).map_err(|source| CheckpointError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(&bytes, path)
    }

    /// Parses the bytes of a safetensors file read from `path`.
    fn from_bytes(bytes: &[u8], path: &Path) -> Result<Checkpoint, CheckpointError> {
        let bad = |message: String| CheckpointError::Format {
            path: path.to_path_buf(),
            message,
        };
        let (header_len, header) = SafeTensors::read_metadata(bytes)
            .map_err(|e| bad(format!("not a safetensors file ({e})")))?;
        // `read_metadata` has checked that the offsets tile the data exactly.
        let data = bytes.get(8 + header_len..).unwrap_or(&[]);
        let mut checkpoint = Checkpoint::new();
        if let Some(meta) = header.metadata() {
            checkpoint.meta = meta.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        }
        // Sorted, so that the first problem reported does not depend on hashing.
        let infos: BTreeMap<String, _> = header.tensors().into_iter().collect();
        for (name, info) in infos {
            let (start, end) = info.data_offsets;
            let raw = data
                .get(start..end)
                .ok_or_else(|| bad(format!("tensor `{name}` lies outside the file")))?;
            let values =
                to_f32(info.dtype, raw).ok_or_else(|| bad(unsupported(&name, info.dtype)))?;
            let array = ArrayD::from_shape_vec(IxDyn(&info.shape), values).map_err(|e| {
                bad(format!(
                    "tensor `{name}` has shape {:?} that does not match its data ({e})",
                    info.shape
                ))
            })?;
            checkpoint.tensors.insert(name, array);
        }
        Ok(checkpoint)
    }
}

/// Writes `bytes` to `<path>.tmp-<pid>` in the same directory, flushes and fsyncs it, then
/// renames it over `path` (and fsyncs the directory on Unix): a reader sees the previous
/// file or the new one, never a partial one. On error the temporary file is removed and
/// `path` is untouched.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = temp_path(path);
    let written = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.flush()?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(path)
}

/// `<path>.tmp-<pid>`.
fn temp_path(path: &Path) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(format!(".tmp-{}", std::process::id()));
    PathBuf::from(name)
}

/// Makes the rename of `path` durable by fsyncing its directory (Unix only).
#[cfg(unix)]
fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(parent_dir(path))?.sync_all()
}

/// The directory holding `path` (`.` for a bare file name).
#[cfg(any(unix, test))]
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// Directories cannot be fsynced portably outside Unix; the rename is still atomic.
#[cfg(not(unix))]
fn sync_dir(_path: &Path) -> io::Result<()> {
    Ok(())
}

/// The message for a tensor whose dtype cannot be converted.
fn unsupported(name: &str, dtype: Dtype) -> String {
    format!(
        "tensor `{name}` has dtype {dtype:?}, which Kiln cannot convert to f32 \
         (supported: F32, F64, F16, BF16 and integer tensors)"
    )
}

/// Little-endian elements of `dtype` converted to f32; `None` for an unsupported dtype.
fn to_f32(dtype: Dtype, data: &[u8]) -> Option<Vec<f32>> {
    fn each<const N: usize>(data: &[u8], convert: impl Fn([u8; N]) -> f32) -> Vec<f32> {
        data.chunks_exact(N)
            .map(|chunk| {
                let mut bytes = [0u8; N];
                bytes.copy_from_slice(chunk);
                convert(bytes)
            })
            .collect()
    }
    let values = match dtype {
        Dtype::F32 => each(data, f32::from_le_bytes),
        Dtype::F64 => each(data, |b| f64::from_le_bytes(b) as f32),
        Dtype::F16 => each(data, |b| f16_to_f32(u16::from_le_bytes(b))),
        Dtype::BF16 => each(data, |b| {
            f32::from_bits(u32::from(u16::from_le_bytes(b)) << 16)
        }),
        Dtype::I8 => each(data, |b| f32::from(i8::from_le_bytes(b))),
        Dtype::U8 => each(data, |b| f32::from(u8::from_le_bytes(b))),
        Dtype::I16 => each(data, |b| f32::from(i16::from_le_bytes(b))),
        Dtype::U16 => each(data, |b| f32::from(u16::from_le_bytes(b))),
        Dtype::I32 => each(data, |b| i32::from_le_bytes(b) as f32),
        Dtype::U32 => each(data, |b| u32::from_le_bytes(b) as f32),
        Dtype::I64 => each(data, |b| i64::from_le_bytes(b) as f32),
        Dtype::U64 => each(data, |b| u64::from_le_bytes(b) as f32),
        _ => return None,
    };
    Some(values)
}

/// IEEE 754 half precision to single precision (exact).
fn f16_to_f32(half: u16) -> f32 {
    let sign = u32::from(half >> 15) << 31;
    let exponent = u32::from((half >> 10) & 0x1f);
    let mantissa = u32::from(half & 0x3ff);
    match exponent {
        0 => {
            // Zero or subnormal: mantissa × 2^-24, exactly representable in f32.
            let magnitude = mantissa as f32 * f32::from_bits(0x3380_0000);
            if sign != 0 {
                -magnitude
            } else {
                magnitude
            }
        }
        0x1f => f32::from_bits(sign | 0x7f80_0000 | (mantissa << 13)),
        _ => f32::from_bits(sign | ((exponent + 112) << 23) | (mantissa << 13)),
    }
}

/// Compares the tensors a model expects with those present: returns a list of
/// human-readable problems, each naming the tensor: missing (with the expected shape),
/// unexpected (with its shape), or mis-shaped (with both shapes; when the file's shape is
/// the reverse of a 2-D expected one, with a hint to transpose a PyTorch `nn.Linear`
/// weight). Expected tensors come first, in the given order, then unexpected ones by name.
/// An empty list means the checkpoint fits.
pub fn compare(expected: &[(String, Vec<usize>)], found: &Checkpoint) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for (name, shape) in expected {
        if !seen.insert(name.as_str()) {
            continue;
        }
        match found.tensors.get(name) {
            None => problems.push(format!(
                "`{name}` is missing from the file (the model needs shape {shape:?})"
            )),
            Some(array) if array.shape() != shape.as_slice() => {
                let actual = array.shape();
                let mut problem = format!(
                    "`{name}` has shape {actual:?} in the file but the model needs {shape:?}"
                );
                if shape.len() == 2
                    && actual.len() == 2
                    && actual[0] == shape[1]
                    && actual[1] == shape[0]
                {
                    problem.push_str(
                        " (a PyTorch `nn.Linear` weight is stored [out, in]; \
                         Kiln's dense weight is [in, out]: transpose it)",
                    );
                }
                problems.push(problem);
            }
            Some(_) => {}
        }
    }
    for (name, array) in &found.tensors {
        if !seen.contains(name.as_str()) {
            problems.push(format!(
                "`{name}` (shape {:?}) is in the file but the model has no such tensor",
                array.shape()
            ));
        }
    }
    problems
}

/// A stable hex digest (sha256, 64 lowercase hex digits) of a string, for the model hash
/// stored in checkpoint metadata.
pub fn digest(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::TensorView;

    #[test]
    fn temp_file_sits_next_to_the_target() {
        let pid = std::process::id();
        assert_eq!(
            temp_path(Path::new("runs/a/model.safetensors")),
            PathBuf::from(format!("runs/a/model.safetensors.tmp-{pid}"))
        );
        assert_eq!(
            parent_dir(Path::new("runs/a/model.safetensors")),
            Path::new("runs/a")
        );
        assert_eq!(parent_dir(Path::new("model.safetensors")), Path::new("."));
        assert_eq!(parent_dir(Path::new("/model.safetensors")), Path::new("/"));
    }

    #[test]
    fn bytes_are_those_of_safetensors_own_writer() {
        // With one metadata entry there is no order to differ in.
        let mut c = Checkpoint::new();
        assert_eq!(
            c.to_bytes().unwrap(),
            safetensors::serialize(Vec::<(&str, TensorView)>::new(), None).unwrap()
        );
        let array = |shape: &[usize], values: Vec<f32>| {
            ArrayD::from_shape_vec(IxDyn(shape), values).unwrap()
        };
        c.tensors.insert("b".into(), array(&[2], vec![1.0, -2.5]));
        c.tensors.insert(
            "a.weight".into(),
            array(&[2, 3], vec![0., 1., 2., 3., 4., 5.]),
        );
        c.tensors.insert("s".into(), array(&[], vec![7.0]));
        c.meta.insert("format".into(), "kiln-checkpoint-1".into());
        let data: Vec<(&str, Vec<usize>, Vec<u8>)> = c
            .tensors
            .iter()
            .map(|(name, a)| {
                let bytes = a.iter().flat_map(|v| v.to_le_bytes()).collect();
                (name.as_str(), a.shape().to_vec(), bytes)
            })
            .collect();
        let views = data.iter().map(|(name, shape, bytes)| {
            (
                *name,
                TensorView::new(Dtype::F32, shape.clone(), bytes).unwrap(),
            )
        });
        let meta = c.meta.clone().into_iter().collect();
        assert_eq!(
            c.to_bytes().unwrap(),
            safetensors::serialize(views, Some(meta)).unwrap()
        );
    }

    #[test]
    fn header_lists_metadata_and_tensors_sorted_by_key() {
        let mut c = Checkpoint::new();
        for key in ["step", "epoch", "seed", "model", "format"] {
            c.meta.insert(key.into(), "1".into());
        }
        c.tensors.insert("z".into(), ArrayD::zeros(IxDyn(&[1])));
        c.tensors.insert("a".into(), ArrayD::zeros(IxDyn(&[2])));
        let bytes = c.to_bytes().unwrap();
        let header = std::str::from_utf8(&bytes[8..bytes.len() - 12]).unwrap();
        assert_eq!(
            header.trim_end(),
            r#"{"__metadata__":{"epoch":"1","format":"1","model":"1","seed":"1","step":"1"},"#
                .to_string()
                + r#""a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"#
                + r#""z":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#
        );
        assert_eq!(header.len() % 8, 0);
    }

    #[test]
    fn f16_conversion_is_exact() {
        // Every finite f16 converts to the value its fields describe.
        for bits in 0u16..=u16::MAX {
            let exponent = i32::from((bits >> 10) & 0x1f);
            let mantissa = f64::from(bits & 0x3ff);
            let sign = if bits >> 15 == 1 { -1.0 } else { 1.0 };
            let value = f16_to_f32(bits);
            match exponent {
                0 => assert_eq!(f64::from(value), sign * mantissa * 2f64.powi(-24)),
                0x1f if mantissa == 0.0 => assert_eq!(f64::from(value), sign * f64::INFINITY),
                0x1f => assert!(value.is_nan()),
                _ => assert_eq!(
                    f64::from(value),
                    sign * (1.0 + mantissa / 1024.0) * 2f64.powi(exponent - 15)
                ),
            }
        }
    }
}
