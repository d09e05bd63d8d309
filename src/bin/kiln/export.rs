//! `kiln export`: a model's evaluation graph and weights as ONNX.

use crate::run::{fail, load, ModelFile};
use crate::{print_diags, EXIT_INPUT};
use clap::Args;
use kiln::export::onnx;
use kiln::runtime::checkpoint::write_atomic;
use kiln::runtime::error::RuntimeError;
use kiln::runtime::init::init_params;
use kiln::runtime::weights;
use std::path::PathBuf;

/// `kiln export`.
#[derive(Args, Clone)]
pub struct ExportArgs {
    #[command(flatten)]
    pub m: ModelFile,
    /// Checkpoint or safetensors file with the parameters (default: the seeded
    /// initialization, with a warning).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// The ONNX file to write.
    #[arg(short = 'o', long = "out", value_name = "OUT.onnx")]
    pub out: PathBuf,
    /// ONNX opset to write.
    #[arg(long, default_value_t = onnx::DEFAULT_OPSET,
          value_parser = clap::value_parser!(u32).range(i64::from(*onnx::OPSETS.start())..=i64::from(*onnx::OPSETS.end())))]
    pub opset: u32,
}

/// Writes the ONNX model; 0, 1 (the model or its weights are wrong) or 2 (I/O).
pub fn export(a: ExportArgs) -> anyhow::Result<u8> {
    let loaded = match load(&a.m.file, a.m.model.as_deref(), &a.m.lints)? {
        Ok(l) => l,
        Err(code) => return Ok(code),
    };
    let p = &loaded.program;
    let color = crate::color(a.m.lints.color);
    let (params, st) = match &a.weights {
        Some(w) => match weights::load_weights(p, w) {
            Ok((state, st)) => (state.params, st),
            Err(e) => return Ok(fail(&e, &loaded.sources, color)),
        },
        None => match init_params(&p.model, loaded.cfg.seed) {
            Ok(params) => (params, None),
            Err(e) => return Ok(fail(&e.into(), &loaded.sources, color)),
        },
    };
    let bytes = match onnx::export(p, &params, st.as_ref(), a.opset) {
        Ok(b) => b,
        Err(d) => {
            print_diags(&loaded.sources, &[d], a.m.lints.color);
            return Ok(EXIT_INPUT);
        }
    };
    if let Err(e) = write_atomic(&a.out, &bytes) {
        let e = RuntimeError::Io(format!("cannot write `{}`: {e}", a.out.display()));
        return Ok(fail(&e, &loaded.sources, color));
    }
    if a.weights.is_none() && !p.model.params.is_empty() {
        eprintln!(
            "warning: no --weights: exported `{}` with its seeded initialization (seed {}), not trained weights",
            p.model.name, loaded.cfg.seed
        );
    }
    Ok(0)
}
