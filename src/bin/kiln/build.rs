//! `kiln build`: a model's evaluation graph and training step, weights and kernels as a
//! static library with a C API (docs/BUILD.md).

use crate::run::{fail, load, ModelFile};
use crate::EXIT_IO;
use clap::Args;
use kiln::export::native::{self, BuildError, TrainStart};
use kiln::runtime::error::RuntimeError;
use kiln::runtime::train::Run;
use kiln::runtime::weights;
use std::path::{Path, PathBuf};

/// `kiln build`.
#[derive(Args, Clone)]
pub struct BuildArgs {
    #[command(flatten)]
    pub m: ModelFile,
    /// Checkpoint or safetensors file with the parameters.
    #[arg(long)]
    pub weights: PathBuf,
    /// The directory to write `lib<model>.a` and `<model>.h` into (created if missing).
    #[arg(short = 'o', long = "out", value_name = "DIR")]
    pub out: PathBuf,
}

/// The runtime's archive: `$KILN_RT` when set, else `libkiln_rt.a` beside this program
/// (where `cargo build` puts it).
fn runtime_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("KILN_RT") {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.join("libkiln_rt.a"))
}

/// Writes the library and header; 0, 1 (the model or its weights are wrong) or 2 (I/O,
/// or no runtime to link).
pub fn build(a: BuildArgs) -> anyhow::Result<u8> {
    let Some(rt_path) = runtime_path().filter(|p| p.is_file()) else {
        let at = runtime_path().map_or("beside the kiln program".into(), |p| {
            format!("at `{}`", p.display())
        });
        eprintln!(
            "error: Kiln's runtime library is missing ({at}): build it with `cargo build --release` in Kiln's source tree (it builds `libkiln_rt.a` beside `kiln`), or set KILN_RT to its path"
        );
        return Ok(EXIT_IO);
    };
    let loaded = match load(&a.m.file, a.m.model.as_deref(), &a.m.lints)? {
        Ok(l) => l,
        Err(code) => return Ok(code),
    };
    let p = &loaded.program;
    let color = crate::color(a.m.lints.color);
    // A model with a loss gets its training step, starting where the checkpoint left off
    // when it holds this train block's optimizer state.
    let run = if p.forward.loss.is_some() {
        let mut run = match Run::new(p, &loaded.cfg) {
            Ok(run) => run,
            Err(e) => return Ok(fail(&e.into(), &loaded.sources, color)),
        };
        if let Err(e) = run.restore_weights(&a.weights) {
            return Ok(fail(&e, &loaded.sources, color));
        }
        Some(run)
    } else {
        None
    };
    let (state, st) = match &run {
        Some(r) => (r.state.clone(), r.standardizer().cloned()),
        None => match weights::load_weights(p, &a.weights) {
            Ok(w) => w,
            Err(e) => return Ok(fail(&e, &loaded.sources, color)),
        },
    };
    let start = run.as_ref().map(|r| TrainStart {
        graph: r.graph(),
        cfg: r.config(),
        lr: r.learning_rate(),
        step: r.progress().1,
        split: r.sharded(),
    });
    let built = match native::build(p, &state, st.as_ref(), start.as_ref()) {
        Ok(b) => b,
        Err(BuildError::Name(m)) => {
            eprintln!("error: {m}");
            return Ok(crate::EXIT_INPUT);
        }
        Err(BuildError::Bug(m)) => anyhow::bail!("internal error (Kiln's bug): {m}"),
    };
    let io = |e: std::io::Error, p: &Path| {
        RuntimeError::Io(format!("cannot write `{}`: {e}", p.display()))
    };
    let runtime = match std::fs::read(&rt_path) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot read `{}`: {e}", rt_path.display());
            return Ok(EXIT_IO);
        }
    };
    let name = &p.model.name;
    let lib = match native::archive(&runtime, &built.object, &format!("{name}.o")) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: `{}`: {e}", rt_path.display());
            return Ok(EXIT_IO);
        }
    };
    if let Err(e) = std::fs::create_dir_all(&a.out) {
        return Ok(fail(&io(e, &a.out), &loaded.sources, color));
    }
    for (file, bytes) in [
        (format!("lib{name}.a"), lib.as_slice()),
        (format!("{name}.h"), built.header.as_bytes()),
    ] {
        let path = a.out.join(file);
        if let Err(e) = replace(&path, bytes) {
            return Ok(fail(&io(e, &path), &loaded.sources, color));
        }
    }
    Ok(0)
}

/// Writes `bytes` to a temporary file beside `path` and renames it over `path`: a reader
/// (a build system linking the library) sees the old file or the new one, never part of
/// one. Not synced to disk: a build output is made again after a crash, and syncing a
/// library of this size would take most of `kiln build`'s time.
fn replace(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let written = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}
