//! NumPy data files: `.npy` (the single input) and `.npz` (arrays named like the inputs
//! and targets), of any numeric or bool element type, converted to `f32`.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use ndarray::{ArrayD, Axis, IxDyn, OwnedRepr};
use ndarray_npy::npy::header::Header;
use ndarray_npy::{NpzReader, ReadNpyError, ReadNpyExt, ReadNpzError, ReadableElement};

use super::{
    assemble, elements, fit_port, io_error, no_rows, show_shape, DataError, DataSpec, Dataset,
    E_FORMAT, E_MISSING,
};

/// The element types read from `.npy` arrays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Elem {
    F32,
    F64,
    I8,
    I16,
    I32,
    I64,
    U8,
    U16,
    U32,
    U64,
    Bool,
}

/// The element type of a NumPy type descriptor such as `<f4` or `|u1`.
fn elem_of(descriptor: &str) -> Option<Elem> {
    let code = descriptor
        .strip_prefix(['<', '>', '|'])
        .unwrap_or(descriptor);
    Some(match code {
        "f4" => Elem::F32,
        "f8" => Elem::F64,
        "i1" | "b" => Elem::I8,
        "i2" => Elem::I16,
        "i4" => Elem::I32,
        "i8" => Elem::I64,
        "u1" | "B" => Elem::U8,
        "u2" => Elem::U16,
        "u4" => Elem::U32,
        "u8" => Elem::U64,
        "b1" => Elem::Bool,
        _ => return None,
    })
}

/// Conversion of an array element to `f32`.
trait ToF32: Copy {
    fn to_f32(self) -> f32;
}

macro_rules! to_f32_as {
    ($($t:ty),*) => {$(
        impl ToF32 for $t {
            fn to_f32(self) -> f32 {
                self as f32
            }
        }
    )*};
}
to_f32_as!(f32, f64, i8, i16, i32, i64, u8, u16, u32, u64);

impl ToF32 for bool {
    fn to_f32(self) -> f32 {
        if self {
            1.0
        } else {
            0.0
        }
    }
}

/// Somewhere an array can be read from with a chosen element type.
trait ArraySource {
    /// What a failed read reports.
    type Error: std::fmt::Display;

    /// Reads the array as elements of type `T`.
    fn read<T: ReadableElement>(&mut self) -> Result<ArrayD<T>, Self::Error>;
}

/// The bytes of a whole `.npy` file.
struct NpyBytes<'a>(&'a [u8]);

impl ArraySource for NpyBytes<'_> {
    type Error = ndarray_npy::ReadNpyError;

    fn read<T: ReadableElement>(&mut self) -> Result<ArrayD<T>, Self::Error> {
        ArrayD::<T>::read_npy(self.0)
    }
}

/// One array of an `.npz` file.
struct NpzEntry<'a, R: std::io::Read + std::io::Seek> {
    npz: &'a mut NpzReader<R>,
    name: &'a str,
}

impl<R: std::io::Read + std::io::Seek> ArraySource for NpzEntry<'_, R> {
    type Error = ndarray_npy::ReadNpzError;

    fn read<T: ReadableElement>(&mut self) -> Result<ArrayD<T>, Self::Error> {
        self.npz.by_name::<OwnedRepr<T>, IxDyn>(self.name)
    }
}

/// Reads an array of element type `elem` and converts it to `f32`: its shape and its
/// values in row-major order (whatever the file's memory order).
fn read_as_f32<S: ArraySource>(
    source: &mut S,
    elem: Elem,
) -> Result<(Vec<usize>, Vec<f32>), S::Error> {
    fn convert<T: ToF32>(array: ArrayD<T>) -> (Vec<usize>, Vec<f32>) {
        let values = array.iter().map(|v| v.to_f32()).collect();
        (array.shape().to_vec(), values)
    }
    Ok(match elem {
        Elem::F32 => convert(source.read::<f32>()?),
        Elem::F64 => convert(source.read::<f64>()?),
        Elem::I8 => convert(source.read::<i8>()?),
        Elem::I16 => convert(source.read::<i16>()?),
        Elem::I32 => convert(source.read::<i32>()?),
        Elem::I64 => convert(source.read::<i64>()?),
        Elem::U8 => convert(source.read::<u8>()?),
        Elem::U16 => convert(source.read::<u16>()?),
        Elem::U32 => convert(source.read::<u32>()?),
        Elem::U64 => convert(source.read::<u64>()?),
        Elem::Bool => convert(source.read::<bool>()?),
    })
}

fn unsupported_dtype(path: &Path, what: &str, descriptor: &str) -> DataError {
    DataError::new(
        E_FORMAT,
        path,
        format!("{what} has dtype {descriptor}: expected numbers (float, integer or bool)"),
    )
}

pub(super) fn load_npy(
    path: &Path,
    spec: &DataSpec,
    with_targets: bool,
) -> Result<Dataset, DataError> {
    let [input] = spec.inputs.as_slice() else {
        return Err(DataError::new(
            E_MISSING,
            path,
            format!(
                "a .npy file holds one array, but the model has {} inputs: use a .npz file with one array per input, or a .csv file",
                spec.inputs.len()
            ),
        ));
    };
    if with_targets && !spec.targets.is_empty() {
        let names: Vec<String> = spec
            .targets
            .iter()
            .map(|t| format!("`{}`", t.name))
            .collect();
        return Err(DataError::new(
            E_MISSING,
            path,
            format!(
                "a .npy file holds only the input `{}`; the targets ({}) need a .npz or .csv file",
                input.name,
                names.join(", ")
            ),
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| io_error(path, &e))?;
    let mut rest: &[u8] = &bytes;
    let header = Header::from_reader(&mut rest)
        .map_err(|e| DataError::new(E_FORMAT, path, format!("not a valid .npy file: {e}")))?;
    // Every element takes at least one byte: refuse a header that announces more data
    // than the file holds before anything is allocated for it.
    let announced = elements(&header.shape);
    if announced.is_none_or(|n| n > rest.len()) {
        return Err(DataError::new(
            E_FORMAT,
            path,
            format!(
                "not a valid .npy file: its header announces shape {}, but the file holds only {} bytes of data",
                show_shape(&header.shape),
                rest.len()
            ),
        ));
    }
    let descriptor = header.type_descriptor.to_string();
    let elem = header
        .type_descriptor
        .as_string()
        .and_then(|s| elem_of(s))
        .ok_or_else(|| unsupported_dtype(path, "the array", &descriptor))?;
    let (found, values) = read_as_f32(&mut NpyBytes(&bytes), elem)
        .map_err(|e| DataError::new(E_FORMAT, path, format!("not a valid .npy file: {e}")))?;
    let array = fit_port(path, "the array", input, &found, values)?;
    let rows = array.len_of(Axis(0));
    if rows == 0 {
        return Err(no_rows(path, "the array has 0 rows"));
    }
    Ok(Dataset {
        inputs: vec![array],
        targets: Vec::new(),
        rows,
    })
}

pub(super) fn load_npz(
    path: &Path,
    spec: &DataSpec,
    with_targets: bool,
) -> Result<Dataset, DataError> {
    let file = File::open(path).map_err(|e| io_error(path, &e))?;
    let invalid =
        |e: ReadNpzError| DataError::new(E_FORMAT, path, format!("not a valid .npz file: {e}"));
    let mut npz = NpzReader::new(BufReader::new(file)).map_err(invalid)?;
    let keys = npz.names().map_err(invalid)?;
    assemble(path, spec, with_targets, &keys, |name, what| {
        Ok(match probe_npz(path, &mut npz, name, what)? {
            Probe::Bytes(array) => {
                let values = array.iter().map(|&v| v.to_f32()).collect();
                (array.shape().to_vec(), values)
            }
            Probe::Other(elem) => {
                let mut entry = NpzEntry {
                    npz: &mut npz,
                    name,
                };
                read_as_f32(&mut entry, elem).map_err(|e| {
                    DataError::new(E_FORMAT, path, format!("cannot read {what}: {e}"))
                })?
            }
        })
    })
}

/// What reading an `.npz` array as bytes found.
enum Probe {
    /// The array holds bytes (`u8`): here it is.
    Bytes(ArrayD<u8>),
    /// The array holds elements of another type, still to be read.
    Other(Elem),
}

/// Reads an `.npz` array as bytes: that fails on the type descriptor, before any data is
/// read, unless the array does hold bytes; either way, the element type is then known.
fn probe_npz<R: std::io::Read + std::io::Seek>(
    path: &Path,
    npz: &mut NpzReader<R>,
    name: &str,
    what: &str,
) -> Result<Probe, DataError> {
    match npz.by_name::<OwnedRepr<u8>, IxDyn>(name) {
        Ok(array) => Ok(Probe::Bytes(array)),
        Err(ReadNpzError::Npy(ReadNpyError::WrongDescriptor(descriptor))) => descriptor
            .as_string()
            .and_then(|s| elem_of(s))
            .map(Probe::Other)
            .ok_or_else(|| unsupported_dtype(path, what, &descriptor.to_string())),
        Err(e) => Err(DataError::new(
            E_FORMAT,
            path,
            format!("cannot read {what}: {e}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtypes() {
        assert_eq!(elem_of("<f4"), Some(Elem::F32));
        assert_eq!(elem_of(">f8"), Some(Elem::F64));
        assert_eq!(elem_of("|u1"), Some(Elem::U8));
        assert_eq!(elem_of("|b1"), Some(Elem::Bool));
        assert_eq!(elem_of("<i8"), Some(Elem::I64));
        assert_eq!(elem_of("<U5"), None);
        assert_eq!(elem_of("<f2"), None);
    }
}
