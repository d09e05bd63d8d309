//! `kiln build`: a model's evaluation graph compiled ahead of time into a static library
//! with a C API (docs/BUILD.md).
//!
//! The build side ([`build`]) writes the model's object file ([`crate::jit::object`]: the
//! function the JIT would compile, the [`Meta`] and the weights as data, and the C entry
//! point), its header, and the archive that joins the object to the runtime's
//! (`libkiln_rt.a`, the `rt` crate). The run side ([`Library`]) is what the runtime does
//! when the entry point is called: it reads the metadata once, and runs each call through
//! the JIT back end's call machinery with the linked function instead of a compiled one,
//! exactly as `kiln predict` runs the model (the same graph, roots, plan and kernels, and
//! the same standardization), so the outputs are the same.

use crate::exec::{Backend, RunError, State};
use crate::interp::dims;
use crate::ir::{DType, Graph, GraphData, NodeId};
use crate::jit::object::{self, ObjectSpec};
use crate::jit::{Jit, Precompiled};
use crate::runtime::data::{Dataset, Standardizer, TargetScale};
use crate::runtime::program::Program;
use ndarray::{ArrayD, IxDyn};
use serde::{Deserialize, Serialize};
use std::sync::{Mutex, PoisonError};

/// The version of the metadata's layout: a library whose runtime expects another is
/// refused ([`Status::Mismatch`]).
pub const META_VERSION: u32 = 1;

/// An input or output of the C API.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Port {
    /// Its name in the model.
    pub name: String,
    /// One sample's shape (without the batch).
    pub shape: Vec<usize>,
    /// The number of classes of a class-id input (int64 in the C API), else None (float).
    pub classes: Option<u64>,
}

impl Port {
    /// Elements of one sample.
    pub fn size(&self) -> usize {
        self.shape.iter().product()
    }
}

/// What the runtime reads from a library: the graph, what to run and how to read it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Meta {
    /// [`META_VERSION`].
    pub version: u32,
    /// The Kiln version that built the library (the runtime must be the same).
    pub kiln: String,
    /// The model's name.
    pub model: String,
    /// The evaluation graph.
    pub graph: GraphData,
    /// The roots the compiled function computes: the outputs, then (for a classifier)
    /// its scores, as `kiln predict` asks for them.
    pub roots: Vec<NodeId>,
    /// The digest of the plan the code was generated for (`jit::object::plan_digest`).
    pub plan: String,
    /// The CPU features the code uses (`jit::object::cpu_features`).
    pub cpu: Vec<String>,
    /// The inputs, in declaration order.
    pub inputs: Vec<Port>,
    /// The outputs, in declaration order (the first `outputs.len()` roots).
    pub outputs: Vec<Port>,
    /// The parameters' shapes, in order (their values are the weights' data).
    pub params: Vec<Vec<usize>>,
    /// The inputs' standardization, when the checkpoint has one: per input, the mean and
    /// deviation of each sample element, as f32 bits (exact in JSON).
    pub standardize: Option<Vec<(Vec<u32>, Vec<u32>)>>,
    /// The output the runtime un-standardizes (a regression model's, trained on a
    /// standardized target), with the target's mean and deviation as f32 bits.
    pub unstandardize: Option<(usize, Vec<u32>, Vec<u32>)>,
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn floats(v: &[u32]) -> Vec<f32> {
    v.iter().map(|&x| f32::from_bits(x)).collect()
}

/// What [`build`] writes.
pub struct Built {
    /// The model's object file.
    pub object: Vec<u8>,
    /// The C header.
    pub header: String,
}

/// Why a model cannot be built.
#[derive(Debug)]
pub enum BuildError {
    /// The model's name is no C identifier (or is a C keyword).
    Name(String),
    /// Kiln's bug.
    Bug(String),
}

impl std::fmt::Display for BuildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BuildError::Name(m) | BuildError::Bug(m) => f.write_str(m),
        }
    }
}

const C_KEYWORDS: &[&str] = &[
    "auto", "break", "case", "char", "const", "continue", "default", "do", "double", "else",
    "enum", "extern", "float", "for", "goto", "if", "inline", "int", "long", "register",
    "restrict", "return", "short", "signed", "sizeof", "static", "struct", "switch", "typedef",
    "union", "unsigned", "void", "volatile", "while", "bool", "true", "false",
];

/// Whether `name` can prefix the library's C symbols.
fn c_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !C_KEYWORDS.contains(&name)
}

/// The roots `kiln predict` computes: the outputs, then a classifier's scores.
pub fn predict_roots(p: &Program) -> Vec<NodeId> {
    let mut roots: Vec<NodeId> = p.forward.outputs.iter().map(|(_, n)| *n).collect();
    roots.extend(p.classifier.as_ref().map(|c| c.scores));
    roots
}

/// The metadata of `p` with its standardization, for code generated here.
pub fn meta(p: &Program, st: Option<&Standardizer>) -> Result<Meta, BuildError> {
    let g = &p.forward;
    let roots = predict_roots(p);
    let sample = |shape: &crate::ir::Shape| dims(shape, 1)[1..].to_vec();
    let inputs = g
        .inputs
        .iter()
        .map(|t| Port {
            name: t.name.clone(),
            shape: sample(&t.shape),
            classes: match t.dtype {
                DType::Class(k) => Some(k),
                DType::F32 => None,
            },
        })
        .collect();
    let outputs = g
        .outputs
        .iter()
        .map(|(name, n)| Port {
            name: name.clone(),
            shape: sample(&g.nodes[*n].shape),
            classes: None,
        })
        .collect();
    let unstandardize = match (st.and_then(|s| s.target.as_ref()), &p.regressor) {
        (Some(t), Some(r)) => g
            .outputs
            .iter()
            .position(|(_, n)| *n == r.predictions)
            .map(|k| (k, bits(&t.mean), bits(&t.std))),
        _ => None,
    };
    Ok(Meta {
        version: META_VERSION,
        kiln: env!("CARGO_PKG_VERSION").to_string(),
        model: p.model.name.clone(),
        graph: (**g).clone(),
        plan: object::plan_digest(g, &roots),
        cpu: object::cpu_features().map_err(|e| BuildError::Bug(e.to_string()))?,
        roots,
        inputs,
        outputs,
        params: g.params.iter().map(|t| dims(&t.tensor.shape, 1)).collect(),
        standardize: st.map(|s| {
            s.mean
                .iter()
                .zip(&s.std)
                .map(|(m, d)| (bits(m), bits(d)))
                .collect()
        }),
        unstandardize,
    })
}

/// Compiles `p` with `params` (and the checkpoint's standardization `st`) into its object
/// file and header.
pub fn build(
    p: &Program,
    params: &[ArrayD<f32>],
    st: Option<&Standardizer>,
) -> Result<Built, BuildError> {
    let name = &p.model.name;
    if !c_identifier(name) {
        return Err(BuildError::Name(format!(
            "the model's name `{name}` cannot name C functions (a C keyword); rename the model"
        )));
    }
    let meta = meta(p, st)?;
    let json = serde_json::to_vec(&meta).map_err(|e| BuildError::Bug(e.to_string()))?;
    // The runtime reads the graph back: it must be this graph, exactly.
    let back: Meta = serde_json::from_slice(&json)
        .map_err(|e| BuildError::Bug(format!("the evaluation graph does not survive JSON: {e}")))?;
    if back.graph != *p.forward {
        return Err(BuildError::Bug(
            "the evaluation graph does not survive JSON unchanged".into(),
        ));
    }
    let mut weights = Vec::new();
    for a in params {
        weights.extend(a.iter().flat_map(|v| v.to_le_bytes()));
    }
    let object = object::write(&ObjectSpec {
        name,
        graph: &p.forward,
        roots: &meta.roots,
        meta: &json,
        weights: &weights,
    })
    .map_err(|e| BuildError::Bug(e.to_string()))?;
    Ok(Built {
        object,
        header: header(&meta),
    })
}

/// The C header of a library.
pub fn header(m: &Meta) -> String {
    let name = &m.model;
    let up = name.to_ascii_uppercase();
    let mut h = format!(
        "/* {name}.h: the C API of model `{name}`, written by `kiln build` (Kiln {}).\n \
         * Link: cc app.c -I DIR DIR/lib{name}.a -lm -lpthread -ldl\n \
         * docs/BUILD.md describes the API. */\n\
         #ifndef KILN_{up}_H\n#define KILN_{up}_H\n\n#include <stdint.h>\n\n\
         #ifdef __cplusplus\nextern \"C\" {{\n#endif\n\n",
        m.kiln
    );
    let shape = |s: &[usize]| {
        let dims: Vec<String> = s.iter().map(usize::to_string).collect();
        format!(
            "[batch{}{}]",
            if s.is_empty() { "" } else { ", " },
            dims.join(", ")
        )
    };
    h += &format!("#define {up}_NUM_INPUTS {}\n", m.inputs.len());
    h += &format!("#define {up}_NUM_OUTPUTS {}\n\n", m.outputs.len());
    for (k, port) in m.inputs.iter().enumerate() {
        let (ty, what) = match port.classes {
            Some(c) => ("int64_t", format!("class ids in 0..{}", c - 1)),
            None => ("float", "float32".to_string()),
        };
        h += &format!(
            "/* input {k}: `{}` {} {ty}, {what} */\n#define {up}_INPUT_{k}_NAME \"{}\"\n#define {up}_INPUT_{k}_SIZE {}\n",
            port.name,
            shape(&port.shape),
            port.name,
            port.size()
        );
    }
    h += "\n";
    for (k, port) in m.outputs.iter().enumerate() {
        h += &format!(
            "/* output {k}: `{}` {} float */\n#define {up}_OUTPUT_{k}_NAME \"{}\"\n#define {up}_OUTPUT_{k}_SIZE {}\n",
            port.name,
            shape(&port.shape),
            port.name,
            port.size()
        );
    }
    h += &format!(
        "\n/* Return values of {name}_predict. */\n\
         #define {up}_OK 0\n\
         #define {up}_ERR_BATCH {}\n\
         #define {up}_ERR_POINTER {}\n\
         #define {up}_ERR_CLASS {}\n\
         #define {up}_ERR_RUNTIME {}\n\
         #define {up}_ERR_INTERNAL {}\n\n",
        Status::Batch as i32,
        Status::Pointer as i32,
        Status::Class as i32,
        Status::Mismatch as i32,
        Status::Internal as i32,
    );
    h += &format!(
        "/* The model's outputs for `batch` samples: inputs[k] points to batch x INPUT_k_SIZE\n \
         * values (row-major), outputs[k] to room for batch x OUTPUT_k_SIZE floats, which\n \
         * are written. Returns {up}_OK, or an error code (then outputs are unspecified).\n \
         * Thread-safe: several threads may call it at once. */\n\
         int {name}_predict(int64_t batch, const void *const inputs[], void *const outputs[]);\n\n\
         #ifdef __cplusplus\n}}\n#endif\n\n#endif /* KILN_{up}_H */\n"
    );
    h
}

/// Why a call of a library's entry point failed: its return value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum Status {
    /// Success.
    Ok = 0,
    /// `batch < 1` (or too large to address).
    Batch = 1,
    /// A null or misaligned input or output pointer.
    Pointer = 2,
    /// A class id outside `0..classes`.
    Class = 3,
    /// The library's data does not fit this runtime (another Kiln version built it), or
    /// this CPU lacks a feature its code uses.
    Mismatch = 4,
    /// Kiln's bug.
    Internal = 5,
}

/// An input's values as the caller gives them.
pub enum Input<'a> {
    /// Floats.
    F32(&'a [f32]),
    /// Class ids.
    Class(&'a [i64]),
}

/// A built library, loaded by the runtime: what each call needs.
pub struct Library {
    meta: Meta,
    graph: Graph,
    state: State,
    func: Precompiled,
    standardizer: Option<Standardizer>,
    /// Back ends ready to run (their buffers reused), one per concurrent call.
    pool: Mutex<Vec<Jit>>,
    threads: usize,
}

impl Library {
    /// Reads a library's metadata and weights; `func` is its compiled function.
    pub fn load(meta: &[u8], weights: &[u8], func: Precompiled) -> Result<Library, Status> {
        let meta: Meta = serde_json::from_slice(meta).map_err(|_| Status::Mismatch)?;
        if meta.version != META_VERSION || meta.kiln != env!("CARGO_PKG_VERSION") {
            return Err(Status::Mismatch);
        }
        let total: usize = meta
            .params
            .iter()
            .map(|s| s.iter().product::<usize>())
            .sum();
        if weights.len() != total * 4 {
            return Err(Status::Mismatch);
        }
        let mut values = weights
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        let params = meta
            .params
            .iter()
            .map(|s| {
                let n = s.iter().product();
                ArrayD::from_shape_vec(IxDyn(s), values.by_ref().take(n).collect())
                    .map_err(|_| Status::Mismatch)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let standardizer = meta.standardize.as_ref().map(|s| Standardizer {
            mean: s.iter().map(|(m, _)| floats(m)).collect(),
            std: s.iter().map(|(_, d)| floats(d)).collect(),
            target: meta.unstandardize.as_ref().map(|(_, m, d)| TargetScale {
                target: 0,
                mean: floats(m),
                std: floats(d),
            }),
        });
        let graph = Graph::from(meta.graph.clone());
        // The code was generated for this plan, on a CPU with these features.
        if object::plan_digest(&graph, &meta.roots) != meta.plan {
            return Err(Status::Mismatch);
        }
        let here = object::cpu_features().map_err(|_| Status::Mismatch)?;
        if !meta.cpu.iter().all(|f| here.contains(f)) {
            return Err(Status::Mismatch);
        }
        Ok(Library {
            meta,
            graph,
            state: State {
                params,
                states: vec![],
            },
            func,
            standardizer,
            pool: Mutex::new(Vec::new()),
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        })
    }

    /// The metadata.
    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// Runs the model on `batch` samples of `inputs` (one per input, `batch` samples each)
    /// and writes its outputs into `outputs` (one per output, `batch` samples each).
    pub fn predict(
        &self,
        batch: usize,
        inputs: &[Input],
        outputs: &mut [&mut [f32]],
    ) -> Result<(), Status> {
        let m = &self.meta;
        if inputs.len() != m.inputs.len() || outputs.len() != m.outputs.len() {
            return Err(Status::Internal);
        }
        let mut arrays = Vec::with_capacity(inputs.len());
        for (port, input) in m.inputs.iter().zip(inputs) {
            let mut shape = vec![batch];
            shape.extend(&port.shape);
            let values: Vec<f32> = match (input, port.classes) {
                (Input::F32(v), None) => v.to_vec(),
                (Input::Class(v), Some(k)) => {
                    if v.iter().any(|&c| c < 0 || c as u64 >= k) {
                        return Err(Status::Class);
                    }
                    v.iter().map(|&c| c as f32).collect()
                }
                _ => return Err(Status::Internal),
            };
            arrays
                .push(ArrayD::from_shape_vec(IxDyn(&shape), values).map_err(|_| Status::Internal)?);
        }
        if let Some(s) = &self.standardizer {
            let mut d = Dataset {
                inputs: arrays,
                targets: Vec::new(),
                rows: batch,
            };
            s.apply(&mut d);
            arrays = d.inputs;
        }
        let taken = self
            .pool
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let mut jit = taken
            .unwrap_or_else(|| Jit::precompiled(&self.graph, &m.roots, self.func, self.threads));
        let result = jit.forward(&self.graph, &self.state, &arrays, &[], &m.roots);
        self.pool
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(jit);
        let mut values = result.map_err(|e| match e {
            RunError::Input(_) => Status::Class,
            RunError::Internal(_) => Status::Internal,
        })?;
        if let (Some(s), Some((k, _, _))) = (&self.standardizer, &m.unstandardize) {
            s.unstandardize_target(&mut values[*k]);
        }
        for (out, v) in outputs.iter_mut().zip(&values) {
            let v = v.as_slice().ok_or(Status::Internal)?;
            if out.len() != v.len() {
                return Err(Status::Internal);
            }
            out.copy_from_slice(v);
        }
        Ok(())
    }
}

/// The static library: the model's object file `object` (named `member`) and the members
/// of the runtime's archive `runtime` (libkiln_rt.a) that a linker would pull in for it
/// (the members defining the symbols it needs, and theirs, transitively: the rest of
/// the runtime's archive would never be linked), with a symbol table.
pub fn archive(runtime: &[u8], object: &[u8], member: &str) -> Result<Vec<u8>, String> {
    use ::object::read::archive::{ArchiveFile, ArchiveKind as Kind};
    use ::object::{Object, ObjectSymbol};
    use ar_archive_writer::{ArchiveKind, NewArchiveMember, DEFAULT_OBJECT_READER};
    use std::collections::{HashMap, HashSet};
    let rt = ArchiveFile::parse(runtime).map_err(|e| format!("not an archive: {e}"))?;
    let kind = match rt.kind() {
        Kind::Gnu64 => ArchiveKind::Gnu64,
        Kind::Bsd => ArchiveKind::Darwin,
        Kind::Bsd64 => ArchiveKind::Darwin64,
        Kind::Coff => ArchiveKind::Coff,
        _ => ArchiveKind::Gnu,
    };
    /// A member's name, bytes, and the global symbols it defines and needs.
    type Member<'a> = (String, &'a [u8], Vec<Vec<u8>>, Vec<Vec<u8>>);
    let symbols = |data: &[u8]| -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let (mut defined, mut needed) = (Vec::new(), Vec::new());
        if let Ok(file) = ::object::File::parse(data) {
            for sym in file.symbols() {
                let Ok(name) = sym.name_bytes() else { continue };
                if sym.is_undefined() {
                    needed.push(name.to_vec());
                } else if sym.is_global() {
                    defined.push(name.to_vec());
                }
            }
        }
        (defined, needed)
    };
    let mut members: Vec<Member> = Vec::new();
    for m in rt.members() {
        let m = m.map_err(|e| format!("a member cannot be read: {e}"))?;
        let name = String::from_utf8_lossy(m.name()).into_owned();
        let data = m
            .data(runtime)
            .map_err(|e| format!("member `{name}` cannot be read: {e}"))?;
        let (defined, needed) = symbols(data);
        members.push((name, data, defined, needed));
    }
    // The first member defining a symbol is the one a linker takes.
    let mut definer: HashMap<&[u8], usize> = HashMap::new();
    for (i, m) in members.iter().enumerate() {
        for s in &m.2 {
            definer.entry(s.as_slice()).or_insert(i);
        }
    }
    let mut keep = HashSet::new();
    let mut need: Vec<Vec<u8>> = symbols(object).1;
    while let Some(s) = need.pop() {
        if let Some(&i) = definer.get(s.as_slice()) {
            if keep.insert(i) {
                need.extend(members[i].3.iter().cloned());
            }
        }
    }
    let mut out_members: Vec<NewArchiveMember> = members
        .iter()
        .enumerate()
        .filter(|(i, _)| keep.contains(i))
        .map(|(_, m)| {
            let data = without_debug(m.1).unwrap_or_else(|| m.1.to_vec());
            NewArchiveMember::new(data, &DEFAULT_OBJECT_READER, m.0.clone())
        })
        .collect();
    out_members.push(NewArchiveMember::new(
        object,
        &DEFAULT_OBJECT_READER,
        member.to_string(),
    ));
    let mut out = std::io::Cursor::new(Vec::new());
    ar_archive_writer::write_archive_to_stream(&mut out, &out_members, kind, false, None)
        .map_err(|e| e.to_string())?;
    Ok(out.into_inner())
}

/// A 64-bit little-endian ELF relocatable object without the contents of its debug
/// sections (`.debug_*`, not loaded, and the relocations applying to them), as `strip
/// --strip-debug` leaves it but keeping every section header (emptied), so that no
/// section index changes (symbols, groups and relocations keep theirs). None for other
/// files, which are copied as they are.
fn without_debug(data: &[u8]) -> Option<Vec<u8>> {
    const HEADER: usize = 64;
    const SHDR: usize = 64;
    const SHF_ALLOC: u64 = 2;
    const SHT_RELA: u32 = 4;
    const SHT_NOBITS: u32 = 8;
    const SHT_REL: u32 = 9;
    let u16_at = |b: &[u8], o: usize| Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |b: &[u8], o: usize| Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |b: &[u8], o: usize| Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?));
    // ELF, 64-bit, little-endian, relocatable, with 64-byte section headers.
    if data.get(..6)? != b"\x7fELF\x02\x01" || u16_at(data, 16)? != 1 || u16_at(data, 0x3A)? != 64 {
        return None;
    }
    let shoff = usize::try_from(u64_at(data, 0x28)?).ok()?;
    let mut count = usize::from(u16_at(data, 0x3C)?);
    if count == 0 {
        count = usize::try_from(u64_at(data, shoff + 32)?).ok()?;
    }
    let mut strtab = usize::from(u16_at(data, 0x3E)?);
    if strtab == 0xffff {
        strtab = usize::try_from(u32_at(data, shoff + 40)?).ok()?;
    }
    let mut headers: Vec<Vec<u8>> = (0..count)
        .map(|i| {
            data.get(shoff + i * SHDR..shoff + (i + 1) * SHDR)
                .map(<[u8]>::to_vec)
        })
        .collect::<Option<_>>()?;
    let names_at = usize::try_from(u64_at(&headers[strtab], 24)?).ok()?;
    let name = |h: &[u8]| -> Option<&[u8]> {
        let start = names_at + usize::try_from(u32_at(h, 0)?).ok()?;
        let rest = data.get(start..)?;
        Some(&rest[..rest.iter().position(|&c| c == 0)?])
    };
    let mut strip = vec![false; count];
    for (i, h) in headers.iter().enumerate() {
        strip[i] = name(h)?.starts_with(b".debug") && u64_at(h, 8)? & SHF_ALLOC == 0;
    }
    for (i, h) in headers.iter().enumerate() {
        let t = u32_at(h, 4)?;
        if (t == SHT_RELA || t == SHT_REL)
            && strip.get(usize::try_from(u32_at(h, 44)?).ok()?) == Some(&true)
        {
            strip[i] = true;
        }
    }
    if !strip.contains(&true) {
        return None;
    }
    let mut out = data.get(..HEADER)?.to_vec();
    for (i, h) in headers.iter_mut().enumerate().skip(1) {
        if strip[i] {
            h[32..40].copy_from_slice(&0u64.to_le_bytes());
        }
        let (offset, size) = (u64_at(h, 24)?, u64_at(h, 32)?);
        let align = usize::try_from(u64_at(h, 48)?.max(1)).ok()?;
        out.resize(out.len().next_multiple_of(align), 0);
        h[24..32].copy_from_slice(&(out.len() as u64).to_le_bytes());
        if u32_at(h, 4)? != SHT_NOBITS && size > 0 {
            let (o, n) = (usize::try_from(offset).ok()?, usize::try_from(size).ok()?);
            out.extend_from_slice(data.get(o..o.checked_add(n)?)?);
        }
    }
    out.resize(out.len().next_multiple_of(8), 0);
    let new_shoff = out.len() as u64;
    out[0x28..0x30].copy_from_slice(&new_shoff.to_le_bytes());
    for h in &headers {
        out.extend_from_slice(h);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_must_be_c_identifiers() {
        assert!(c_identifier("digits_mlp"));
        assert!(c_identifier("_m2"));
        assert!(!c_identifier("int"));
        assert!(!c_identifier("2m"));
        assert!(!c_identifier(""));
    }

    #[test]
    fn only_elf_objects_are_stripped() {
        assert!(without_debug(b"not an object file").is_none());
        assert!(without_debug(&[]).is_none());
    }
}
