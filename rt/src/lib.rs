//! Kiln's runtime for libraries written by `kiln build` (docs/BUILD.md): built as
//! `libkiln_rt.a`, whose members `kiln build` copies into every model's archive beside the
//! model's object file.
//!
//! It exports the two functions generated code calls (`kiln_kernel`, `kiln_prim`:
//! Kiln's own, under the names the object file imports) and the `kiln_rt_*` functions a
//! model's C entry points call with its descriptor (`<model>_predict` calls
//! `kiln_rt_predict`, and so on). Everything else is Kiln's library
//! ([`kiln::export::native::Library`]); this crate only crosses the C boundary: it turns
//! the caller's pointers into slices, and no panic crosses back.
#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]

use kiln::export::native::{Input, Library, Port, Status, Trainer};
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
    let (meta, weights, func, train, update) = descriptor_parts(desc);
    let lib = Library::load(meta, weights, func, train, update)?;
    let lib: &'static Library = Box::leak(Box::new(lib));
    all.push((key, lib));
    Ok(lib)
}

/// The parts of a library: its metadata, weights, evaluation function, training step
/// and a split step's update function.
type Parts = (
    &'static [u8],
    &'static [u8],
    Precompiled,
    Option<Precompiled>,
    Option<Precompiled>,
);

/// The descriptor's data and functions.
#[allow(unsafe_code)]
fn descriptor_parts(d: &'static Descriptor) -> Parts {
    // SAFETY: the descriptor was written by `kiln build` into the same object file as
    // the data it points to (`meta_len` and `weights_len` bytes, in the program's image
    // for as long as it runs, never written) and as the functions `step`, `train` and
    // `update` (when not null), compiled for the graphs, roots and this CPU family the metadata
    // names, by the same Kiln as this runtime (the metadata names the version, which
    // `Library::load` checks before anything runs).
    unsafe {
        (
            slice(d.meta, d.meta_len as usize),
            slice(d.weights, d.weights_len as usize),
            Precompiled::new(d.step),
            (!d.train.is_null()).then(|| Precompiled::new(d.train)),
            (!d.update.is_null()).then(|| Precompiled::new(d.update)),
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

/// The library of descriptor `desc`, checked first.
fn library_of(desc: *const Descriptor) -> Result<&'static Library, Status> {
    if !usable::<Descriptor>(desc.cast()) {
        return Err(Status::Internal);
    }
    #[allow(unsafe_code)]
    // SAFETY: the entry points pass their own descriptor, which lives in the program's
    // image for as long as it runs.
    let desc = unsafe { &*desc };
    library(desc)
}

/// The caller's `batch` as a row count (at least 1).
fn rows(batch: i64) -> Result<usize, Status> {
    if batch < 1 {
        return Err(Status::Batch);
    }
    usize::try_from(batch).map_err(|_| Status::Batch)
}

/// Views of the caller's `values`, one pointer per port, `batch` samples each: floats,
/// or int64 class ids for a port with classes.
///
/// # Safety
///
/// `values`, when non-null and aligned, holds one pointer per port, each to `batch`
/// samples of the port's size and type (the C API's contract).
#[allow(unsafe_code)]
unsafe fn views<'a>(
    ports: &[Port],
    values: *const *const c_void,
    batch: usize,
) -> Result<Vec<Input<'a>>, Status> {
    if !usable::<*const c_void>(values.cast()) {
        return Err(Status::Pointer);
    }
    // SAFETY: one pointer per port (the contract); non-null and aligned.
    let ptrs = unsafe { std::slice::from_raw_parts(values, ports.len()) };
    let mut views = Vec::with_capacity(ptrs.len());
    for (port, &p) in ports.iter().zip(ptrs) {
        let n = batch.checked_mul(port.size()).ok_or(Status::Batch)?;
        views.push(if port.classes.is_some() {
            if !usable::<i64>(p) {
                return Err(Status::Pointer);
            }
            // SAFETY: a class-id port's values are `batch` samples of int64 (the
            // contract); the pointer is non-null and aligned.
            Input::Class(unsafe { std::slice::from_raw_parts(p.cast::<i64>(), n) })
        } else {
            if !usable::<f32>(p) {
                return Err(Status::Pointer);
            }
            // SAFETY: a float port's values are `batch` samples of float (the contract).
            Input::F32(unsafe { std::slice::from_raw_parts(p.cast::<f32>(), n) })
        });
    }
    Ok(views)
}

/// Writable views of the caller's `outputs`, one pointer per output (of `sizes[k]`
/// floats each).
///
/// # Safety
///
/// `outputs`, when non-null and aligned, holds one pointer per size, each to room for
/// that many floats, not shared with anything else the call reads or writes (the C API's
/// contract).
#[allow(unsafe_code)]
unsafe fn out_views<'a>(
    outputs: *const *mut c_void,
    sizes: impl ExactSizeIterator<Item = Result<usize, Status>>,
) -> Result<Vec<&'a mut [f32]>, Status> {
    if !usable::<*mut c_void>(outputs.cast()) {
        return Err(Status::Pointer);
    }
    // SAFETY: one pointer per output (the contract); non-null and aligned.
    let ptrs = unsafe { std::slice::from_raw_parts(outputs, sizes.len()) };
    let mut views = Vec::with_capacity(ptrs.len());
    for (&p, n) in ptrs.iter().zip(sizes) {
        let n = n?;
        if !usable::<f32>(p.cast_const()) {
            return Err(Status::Pointer);
        }
        // SAFETY: room for `n` floats, not shared (the contract); non-null and aligned.
        views.push(unsafe { std::slice::from_raw_parts_mut(p.cast::<f32>(), n) });
    }
    Ok(views)
}

/// Runs `f`, turning its error or panic into the C API's return value.
fn status(f: impl FnOnce() -> Result<(), Status>) -> i32 {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => Status::Ok as i32,
        Ok(Err(s)) => s as i32,
        Err(_) => Status::Internal as i32,
    }
}

/// `lib`'s outputs for `batch` samples, written through `outputs`.
///
/// # Safety
///
/// The C API's contract for `inputs` and `outputs` ([`views`], [`out_views`]).
#[allow(unsafe_code)]
unsafe fn predict_with(
    lib: &Library,
    batch: i64,
    inputs: *const *const c_void,
    outputs: *const *mut c_void,
    run: impl FnOnce(usize, &[Input], &mut [&mut [f32]]) -> Result<(), Status>,
) -> Result<(), Status> {
    let batch = rows(batch)?;
    let m = lib.meta();
    // SAFETY: the caller's contract.
    let ins = unsafe { views(&m.inputs, inputs, batch)? };
    let sizes = m
        .outputs
        .iter()
        .map(|p| batch.checked_mul(p.size()).ok_or(Status::Batch));
    // SAFETY: the caller's contract.
    let mut outs = unsafe { out_views(outputs, sizes)? };
    run(batch, &ins, &mut outs)
}

/// `<model>_predict(batch, inputs, outputs)`. Returns a [`Status`] as i32: 0 on success.
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
    status(|| {
        let lib = library_of(desc)?;
        // SAFETY: the caller's contract.
        unsafe { predict_with(lib, batch, inputs, outputs, |b, i, o| lib.predict(b, i, o)) }
    })
}

/// `<model>_train_new()`: a training context, or null when the library cannot run here.
///
/// # Safety
///
/// `desc` is a library's descriptor (only its entry point passes it).
#[allow(unsafe_code)]
#[no_mangle]
pub unsafe extern "C" fn kiln_rt_train_new(desc: *const Descriptor) -> *mut c_void {
    let made = catch_unwind(|| -> Result<Box<Trainer<'static>>, Status> {
        Ok(Box::new(library_of(desc)?.trainer()?))
    });
    match made {
        Ok(Ok(t)) => Box::into_raw(t).cast(),
        _ => std::ptr::null_mut(),
    }
}

/// The training context `ctx` of library `desc`: [`Status::Pointer`] for a null or
/// misaligned pointer, or a context of another library.
///
/// # Safety
///
/// `ctx`, when non-null and aligned, was returned by `kiln_rt_train_new` and not freed
/// (the C API's contract).
#[allow(unsafe_code)]
unsafe fn trainer<'a>(
    desc: *const Descriptor,
    ctx: *mut c_void,
) -> Result<&'a Trainer<'static>, Status> {
    let lib = library_of(desc)?;
    if !usable::<Trainer>(ctx.cast_const()) {
        return Err(Status::Pointer);
    }
    // SAFETY: a live context (the contract); a Trainer is only used through shared
    // references (it locks its state for each call).
    let t = unsafe { &*ctx.cast::<Trainer<'static>>() };
    if !std::ptr::eq(t.library(), lib) {
        return Err(Status::Pointer);
    }
    Ok(t)
}

/// `<model>_train_step(ctx, batch, inputs, targets, loss)`.
///
/// # Safety
///
/// As [`kiln_rt_predict`] for `inputs`; `targets` likewise with one pointer per target;
/// `ctx` a live context of this library; `loss` room for one float.
#[allow(unsafe_code)]
#[no_mangle]
pub unsafe extern "C" fn kiln_rt_train_step(
    desc: *const Descriptor,
    ctx: *mut c_void,
    batch: i64,
    inputs: *const *const c_void,
    targets: *const *const c_void,
    loss: *mut f32,
) -> i32 {
    status(|| {
        // SAFETY: the caller's contract.
        let t = unsafe { trainer(desc, ctx)? };
        let batch = rows(batch)?;
        let m = t.library().meta();
        let ports = m
            .train
            .as_ref()
            .map(|t| &t.targets)
            .ok_or(Status::Internal)?;
        // SAFETY: the caller's contract.
        let (ins, tgts) = unsafe {
            (
                views(&m.inputs, inputs, batch)?,
                views(ports, targets, batch)?,
            )
        };
        if !usable::<f32>(loss.cast_const().cast()) {
            return Err(Status::Pointer);
        }
        let l = t.step(batch, &ins, &tgts)?;
        // SAFETY: room for one float (the contract); non-null and aligned.
        unsafe { loss.write(l) };
        Ok(())
    })
}

/// `<model>_train_params(ctx, params)`.
///
/// # Safety
///
/// `ctx` a live context of this library; `params` one pointer per parameter, each to
/// room for the parameter's size in floats.
#[allow(unsafe_code)]
#[no_mangle]
pub unsafe extern "C" fn kiln_rt_train_params(
    desc: *const Descriptor,
    ctx: *mut c_void,
    params: *const *mut c_void,
) -> i32 {
    status(|| {
        // SAFETY: the caller's contract.
        let t = unsafe { trainer(desc, ctx)? };
        let sizes = t
            .library()
            .meta()
            .params
            .iter()
            .map(|p| Ok(p.shape.iter().product()));
        // SAFETY: the caller's contract.
        let mut outs = unsafe { out_views(params, sizes)? };
        t.params(&mut outs)
    })
}

/// `<model>_predict_ctx(ctx, batch, inputs, outputs)`.
///
/// # Safety
///
/// As [`kiln_rt_predict`]; `ctx` a live context of this library.
#[allow(unsafe_code)]
#[no_mangle]
pub unsafe extern "C" fn kiln_rt_predict_ctx(
    desc: *const Descriptor,
    ctx: *mut c_void,
    batch: i64,
    inputs: *const *const c_void,
    outputs: *const *mut c_void,
) -> i32 {
    status(|| {
        // SAFETY: the caller's contract.
        let t = unsafe { trainer(desc, ctx)? };
        // SAFETY: the caller's contract.
        unsafe {
            predict_with(t.library(), batch, inputs, outputs, |b, i, o| {
                t.predict(b, i, o)
            })
        }
    })
}

/// `<model>_train_set_lr(ctx, lr)`.
///
/// # Safety
///
/// `ctx` a live context of this library.
#[allow(unsafe_code)]
#[no_mangle]
pub unsafe extern "C" fn kiln_rt_train_set_lr(
    desc: *const Descriptor,
    ctx: *mut c_void,
    lr: f64,
) -> i32 {
    // SAFETY: the caller's contract.
    status(|| unsafe { trainer(desc, ctx)? }.set_lr(lr))
}

/// `<model>_train_free(ctx)`: frees a context (null is ignored).
///
/// # Safety
///
/// `ctx` is null or a live context of this library, not used after this call.
#[allow(unsafe_code)]
#[no_mangle]
pub unsafe extern "C" fn kiln_rt_train_free(desc: *const Descriptor, ctx: *mut c_void) {
    let _ = catch_unwind(|| {
        if ctx.is_null() {
            return;
        }
        // SAFETY: the caller's contract.
        if unsafe { trainer(desc, ctx) }.is_ok() {
            // SAFETY: made by `Box::into_raw` in `kiln_rt_train_new`, freed once (the
            // contract).
            drop(unsafe { Box::from_raw(ctx.cast::<Trainer<'static>>()) });
        }
    });
}
