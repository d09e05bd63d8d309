//! Kiln's runtime for libraries written by `kiln build` (docs/BUILD.md): built as
//! `libkiln_rt.a`, whose members `kiln build` copies into every model's archive beside the
//! model's object file.
//!
//! It exports the two functions generated code calls (`kiln_kernel`, `kiln_prim`:
//! Kiln's own, under the names the object file imports) and `kiln_rt_predict`, which a
//! model's `<model>_predict` calls with its descriptor. Everything else is Kiln's library
//! ([`kiln::export::native::Library`]); this crate only crosses the C boundary: it turns
//! the caller's pointers into slices, and no panic crosses back.
#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]

use kiln::export::native::{Input, Library, Status};
use kiln::jit::object::{Descriptor, DESCRIPTOR_VERSION};
use kiln::jit::{Ctx, Precompiled};
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{OnceLock, PoisonError, RwLock};

/// Runs kernel node `node` for the generated code.
///
/// # Safety
///
/// Called only by a model's compiled function, with the context it was called with.
#[allow(unsafe_code)]
#[no_mangle]
pub unsafe extern "C" fn kiln_kernel(ctx: *const Ctx, node: i64) {
    // SAFETY: generated code passes the context the runtime called it with (`jit::abi`'s
    // `call`), during that call: kiln_kernel's own contract.
    unsafe { kiln::jit::kiln_kernel(ctx, node) }
}

/// A primitive (exp, log, ...) for the generated code.
#[allow(unsafe_code)]
#[no_mangle]
pub extern "C" fn kiln_prim(code: i32, x: f32) -> f32 {
    kiln::jit::kiln_prim(code, x)
}

/// The libraries loaded so far, by their descriptor's address (each is read once and
/// lives as long as the program, as its data does).
fn loaded() -> &'static RwLock<Vec<(usize, &'static Library)>> {
    static LOADED: OnceLock<RwLock<Vec<(usize, &'static Library)>>> = OnceLock::new();
    LOADED.get_or_init(|| RwLock::new(Vec::new()))
}

/// The library of descriptor `desc`, loaded on first use.
fn library(desc: &'static Descriptor) -> Result<&'static Library, Status> {
    let key = desc as *const Descriptor as usize;
    let found = loaded()
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, l)| *l);
    if let Some(l) = found {
        return Ok(l);
    }
    let mut all = loaded().write().unwrap_or_else(PoisonError::into_inner);
    // Another thread may have loaded it meanwhile.
    if let Some((_, l)) = all.iter().find(|(k, _)| *k == key) {
        return Ok(l);
    }
    if desc.version != DESCRIPTOR_VERSION {
        return Err(Status::Mismatch);
    }
    let (meta, weights, func) = descriptor_parts(desc);
    let lib: &'static Library = Box::leak(Box::new(Library::load(meta, weights, func)?));
    all.push((key, lib));
    Ok(lib)
}

/// The descriptor's data and function.
#[allow(unsafe_code)]
fn descriptor_parts(d: &'static Descriptor) -> (&'static [u8], &'static [u8], Precompiled) {
    // SAFETY: the descriptor was written by `kiln build` into the same object file as
    // the data it points to (`meta_len` and `weights_len` bytes, in the program's image
    // for as long as it runs, never written) and as the function `step`, compiled for this
    // graph, its roots and this CPU family by the same Kiln as this runtime (the metadata
    // names the version, which `Library::load` checks before anything runs).
    unsafe {
        (
            slice(d.meta, d.meta_len as usize),
            slice(d.weights, d.weights_len as usize),
            Precompiled::new(d.step),
        )
    }
}

/// `len` bytes at `p` (an empty slice for none).
///
/// # Safety
///
/// `p` points to `len` readable bytes that live and stay unchanged for the program's life.
#[allow(unsafe_code)]
unsafe fn slice(p: *const u8, len: usize) -> &'static [u8] {
    if len == 0 || p.is_null() {
        return &[];
    }
    // SAFETY: the caller's contract.
    unsafe { std::slice::from_raw_parts(p, len) }
}

/// Whether `p` is a non-null pointer aligned for `T`.
fn usable<T>(p: *const c_void) -> bool {
    !p.is_null() && (p as usize).is_multiple_of(std::mem::align_of::<T>())
}

/// The predict entry point of every library: `<model>_predict(batch, inputs, outputs)`
/// calls it with its descriptor. Returns a [`Status`] as i32: 0 on success.
///
/// # Safety
///
/// `desc` is a library's descriptor (only its entry point passes it). `inputs` and
/// `outputs` hold one pointer per input and output of the model (the header's counts),
/// each to `batch` samples of the input's or output's size, as the header says: the C
/// API's contract. Null or misaligned pointers are refused, not read.
#[allow(unsafe_code)]
#[no_mangle]
pub unsafe extern "C" fn kiln_rt_predict(
    desc: *const Descriptor,
    batch: i64,
    inputs: *const *const c_void,
    outputs: *const *mut c_void,
) -> i32 {
    let run = AssertUnwindSafe(|| -> Result<(), Status> {
        if batch < 1 {
            return Err(Status::Batch);
        }
        let batch = usize::try_from(batch).map_err(|_| Status::Batch)?;
        if !usable::<Descriptor>(desc.cast()) {
            return Err(Status::Internal);
        }
        // SAFETY: the entry point passes its own descriptor, which lives in the program's
        // image for as long as it runs.
        let lib = library(unsafe { &*desc })?;
        let m = lib.meta();
        if !usable::<*const c_void>(inputs.cast()) || !usable::<*mut c_void>(outputs.cast()) {
            return Err(Status::Pointer);
        }
        // SAFETY: the caller passes one pointer per input and per output (the contract).
        let (ins, outs) = unsafe {
            (
                std::slice::from_raw_parts(inputs, m.inputs.len()),
                std::slice::from_raw_parts(outputs, m.outputs.len()),
            )
        };
        let mut views = Vec::with_capacity(ins.len());
        for (port, &p) in m.inputs.iter().zip(ins) {
            let n = batch.checked_mul(port.size()).ok_or(Status::Batch)?;
            views.push(if port.classes.is_some() {
                if !usable::<i64>(p) {
                    return Err(Status::Pointer);
                }
                // SAFETY: a class-id input holds `batch` samples of int64 (the contract);
                // the pointer is non-null and aligned.
                Input::Class(unsafe { std::slice::from_raw_parts(p.cast::<i64>(), n) })
            } else {
                if !usable::<f32>(p) {
                    return Err(Status::Pointer);
                }
                // SAFETY: a float input holds `batch` samples of float (the contract).
                Input::F32(unsafe { std::slice::from_raw_parts(p.cast::<f32>(), n) })
            });
        }
        let mut out_views = Vec::with_capacity(outs.len());
        for (port, &p) in m.outputs.iter().zip(outs) {
            let n = batch.checked_mul(port.size()).ok_or(Status::Batch)?;
            if !usable::<f32>(p.cast_const()) {
                return Err(Status::Pointer);
            }
            // SAFETY: each output has room for `batch` samples of float, not shared
            // with any input or other output (the contract).
            out_views.push(unsafe { std::slice::from_raw_parts_mut(p.cast::<f32>(), n) });
        }
        lib.predict(batch, &views, &mut out_views)
    });
    match catch_unwind(run) {
        Ok(Ok(())) => Status::Ok as i32,
        Ok(Err(s)) => s as i32,
        Err(_) => Status::Internal as i32,
    }
}
