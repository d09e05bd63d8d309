//! The `:` commands: training, evaluation, prediction, gradients, saving and listing.

use super::{format, help, shape_text, values, Output, ReplError, Session, Trained, COMMANDS};
use crate::autodiff::differentiate;
use crate::check;
use crate::exec::{Backend, Bug, State};
use crate::ir::{DType, Op, Param, Tensor};
use crate::jit::Jit;
use crate::runtime::data;
use crate::runtime::error::RuntimeError;
use crate::runtime::eval;
use crate::runtime::init::init_params;
use crate::runtime::program;
use crate::runtime::train::{EpochRecord, Run, RunPaths};
use crate::runtime::verdict::number;
use ndarray::ArrayD;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::Path;

impl Session {
    pub(super) fn command(&mut self, cmd: &str) -> Result<Output, ReplError> {
        let (name, rest) = match cmd.find(char::is_whitespace) {
            Some(i) => (&cmd[..i], cmd[i..].trim()),
            None => (cmd, ""),
        };
        let mut out = Output::default();
        let needs = |what: &str| -> Result<(), ReplError> {
            if rest.is_empty() {
                Err(ReplError::msg(format!("usage: :{name} {what}")))
            } else {
                Ok(())
            }
        };
        match name {
            "q" | "quit" | "exit" => out.quit = true,
            "h" | "help" | "?" => out.text = help(),
            "load" | "l" => {
                needs("FILE")?;
                return self.load(Path::new(rest.trim_matches('"')));
            }
            "reload" | "r" => {
                let Some(p) = self.loaded.clone() else {
                    return Err(ReplError::msg("no file was loaded: use `:load FILE`"));
                };
                return self.load(&p);
            }
            "type" | "t" => {
                needs("EXPR")?;
                let c = self.compile_arg(rest, false)?;
                out.warnings = c.warnings;
                let _ = writeln!(out.text, "{}", c.program.forward.nodes[c.out].shape);
            }
            "ir" => {
                needs("EXPR")?;
                let c = self.compile_arg(rest, false)?;
                out.text = c.program.forward.print(None);
            }
            "summary" => {
                needs("MODEL")?;
                let (p, _) = self.model(rest)?;
                out.text = crate::summary::render_summary(&p.model, &[]);
            }
            "train" => {
                needs("MODEL [EPOCHS] [PORT: TENSOR, ...]")?;
                let (head, tensors) = match rest.find(':') {
                    Some(colon) => {
                        // The data's first port name starts the last word before the colon.
                        let start = rest[..colon].trim_end().rfind(char::is_whitespace);
                        let start = start.map_or(0, |i| i + 1);
                        (&rest[..start], Some(&rest[start..]))
                    }
                    None => (rest, None),
                };
                let mut words = head.split_whitespace();
                let model = words.next().unwrap_or("");
                let epochs = match words.next() {
                    Some(e) => match e.parse::<u64>() {
                        Ok(n) if n >= 1 => Some(n),
                        _ => {
                            return Err(ReplError::msg(format!("`{e}` is not a number of epochs")))
                        }
                    },
                    None => None,
                };
                let data = tensors.map(ports).transpose()?;
                out.text = self.train(model, epochs, data)?;
            }
            "eval" => {
                needs("MODEL")?;
                out.text = self.evaluate(rest)?;
            }
            "predict" => {
                needs("MODEL EXPR")?;
                let (model, expr) = rest
                    .split_once(char::is_whitespace)
                    .ok_or_else(|| ReplError::msg("usage: :predict MODEL EXPR"))?;
                out.text = self.predict(model, expr.trim())?;
            }
            "grad" => {
                needs("EXPR wrt NAME")?;
                let (expr, wrt) = rest
                    .rsplit_once(" wrt ")
                    .ok_or_else(|| ReplError::msg("usage: :grad EXPR wrt NAME"))?;
                out.text = self.grad(expr.trim(), wrt.trim())?;
            }
            "save" => {
                needs("NAME FILE")?;
                let (n, f) = rest
                    .split_once(char::is_whitespace)
                    .ok_or_else(|| ReplError::msg("usage: :save NAME FILE"))?;
                out.text = self.save(n, Path::new(f.trim().trim_matches('"')))?;
            }
            "params" => out.text = self.params_text(),
            "seed" => {
                needs("N")?;
                self.seed = rest
                    .parse()
                    .map_err(|_| ReplError::msg(format!("`{rest}` is not a seed")))?;
                self.draws = 0;
            }
            other => {
                let names: Vec<&str> = COMMANDS.iter().map(|c| &c.0[1..]).collect();
                let hint = crate::diag::did_you_mean(other, names)
                    .map_or(String::new(), |s| format!(": did you mean `:{s}`?"));
                return Err(ReplError::msg(format!(
                    "unknown command `:{other}`{hint} (`:help` lists them)"
                )));
            }
        }
        Ok(out)
    }

    /// Trains `model` on the session's tensors named in `data` (port → tensor), else on
    /// its train block's data files.
    fn train(
        &mut self,
        model: &str,
        epochs: Option<u64>,
        data: Option<Vec<(String, String)>>,
    ) -> Result<String, ReplError> {
        let (program, mut cfg) = self.model(model)?;
        if let Some(d) = check::trainable(&program.model, program.model.span) {
            return Err(d.into());
        }
        if let Some(e) = epochs {
            cfg.epochs = e;
        }
        let tensors = match data {
            Some(ports) => Some(self.dataset(model, &program, &ports)?),
            None => None,
        };
        let paths = match (&tensors, cfg.train_data.clone()) {
            (Some(_), _) => RunPaths::default(),
            (None, Some(train)) => RunPaths {
                train,
                test: cfg.test_data.clone(),
                save: None,
                resume: None,
            },
            (None, None) => {
                return Err(ReplError::msg(format!(
                    "model `{model}` has no training data: name it in its train block (`data train: \"file.csv\"`), or pass the session's tensors (`:train {model} x: X, y: Y`)"
                )))
            }
        };
        let mut text = String::new();
        let _ = writeln!(
            text,
            "training `{model}`: {} parameters, {} epochs, batch {}, seed {}",
            crate::summary::thousands(program.model.trainable_count()),
            cfg.epochs,
            cfg.batch,
            cfg.seed
        );
        let mut records = Vec::new();
        let mut run = Run::new(&program, &cfg)?;
        if let Some(file) = &cfg.pretrained {
            let p = run.load_pretrained(file)?;
            let _ = writeln!(
                text,
                "pretrained: {} of {} parameters from {}",
                p.loaded.len(),
                p.loaded.len() + p.fresh.len(),
                file.display()
            );
        }
        let report = {
            let mut jit = Jit::new();
            let mut observe = |r: &EpochRecord| records.push(r.clone());
            match &tensors {
                Some(d) => run.fit(&mut jit, d, None, &mut observe)?,
                None => run.train(&mut jit, &paths, &mut observe)?,
            }
        };
        let state = run.state.clone();
        let standardizer = run.standardizer().cloned();
        let every = (records.len() / 10).max(1);
        for (i, r) in records.iter().enumerate() {
            if i == 0 || (i + 1) % every == 0 || i + 1 == records.len() {
                let mut line = format!(
                    "epoch {:>4}/{}  loss {}",
                    r.epoch,
                    cfg.epochs,
                    number(r.train_loss)
                );
                if let Some(v) = r.val_loss {
                    let _ = write!(line, "  val_loss {}", number(v));
                }
                if let Some(a) = r.val_accuracy {
                    let _ = write!(line, "  val_accuracy {:.2}%", a * 100.0);
                }
                let _ = writeln!(text, "{line}");
            }
        }
        if let Some(reason) = &report.stopped_early {
            let _ = writeln!(text, "stopped early: {reason}");
        }
        let _ = writeln!(text, "{}", report.train.line("train", &cfg.metrics));
        if let Some(t) = &report.test {
            let _ = writeln!(text, "{}", t.line("test", &cfg.metrics));
        }
        self.trained.insert(
            model.to_string(),
            Trained {
                program,
                state,
                standardizer,
                cfg,
            },
        );
        Ok(text)
    }

    /// The session's tensors named for each input and target of `program`, as a data set.
    fn dataset(
        &self,
        model: &str,
        program: &program::Program,
        ports: &[(String, String)],
    ) -> Result<data::Dataset, ReplError> {
        let g = &program.forward;
        let wanted: Vec<&str> = g
            .inputs
            .iter()
            .chain(&g.targets)
            .map(|t| t.name.as_str())
            .collect();
        if let Some((port, _)) = ports.iter().find(|(p, _)| !wanted.contains(&p.as_str())) {
            return Err(ReplError::msg(format!(
                "model `{model}` has no input or target `{port}`: it takes {}",
                wanted
                    .iter()
                    .map(|w| format!("`{w}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let pick = |name: &str| -> Result<ArrayD<f32>, ReplError> {
            let (_, tensor) = ports.iter().find(|(p, _)| p == name).ok_or_else(|| {
                ReplError::msg(format!(
                    "`:train {model}` needs `{name}`: pass `{name}: TENSOR`"
                ))
            })?;
            self.values
                .get(tensor)
                .cloned()
                .ok_or_else(|| ReplError::msg(format!("no tensor `{tensor}` in this session")))
        };
        let inputs = g
            .inputs
            .iter()
            .map(|t| pick(&t.name))
            .collect::<Result<Vec<_>, _>>()?;
        let targets = g
            .targets
            .iter()
            .map(|t| pick(&t.name))
            .collect::<Result<Vec<_>, _>>()?;
        let rows = inputs
            .first()
            .map_or(0, |a| a.shape().first().copied().unwrap_or(0));
        for (t, a) in g
            .inputs
            .iter()
            .chain(&g.targets)
            .zip(inputs.iter().chain(&targets))
        {
            if a.shape().first().copied() != Some(rows) {
                return Err(ReplError::msg(format!(
                    "`{}` has {} rows, but `{}` has {rows}",
                    t.name,
                    a.shape().first().copied().unwrap_or(0),
                    g.inputs[0].name
                )));
            }
        }
        Ok(data::Dataset {
            inputs,
            targets,
            rows,
        })
    }

    /// The trained model, or the model with its initial parameters (and a note).
    fn ready(&mut self, model: &str) -> Result<(&Trained, String), ReplError> {
        let mut note = String::new();
        if !self.trained.contains_key(model) {
            let (program, cfg) = self.model(model)?;
            let params = init_params(&program.model, cfg.seed)?;
            note = format!("note: `{model}` is not trained: its parameters are the initial ones (`:train {model}`)\n");
            self.trained.insert(
                model.to_string(),
                Trained {
                    program,
                    state: State {
                        params,
                        states: vec![],
                    },
                    standardizer: None,
                    cfg,
                },
            );
        }
        Ok((&self.trained[model], note))
    }

    fn evaluate(&mut self, model: &str) -> Result<String, ReplError> {
        let (t, mut text) = self.ready(model)?;
        let Some(path) = t.cfg.test_data.clone().or(t.cfg.train_data.clone()) else {
            return Err(ReplError::msg(format!(
                "model `{model}` has no data to evaluate on: name it in its train block"
            )));
        };
        let spec = program::data_spec(&t.program.forward);
        let mut d = data::load(&path, &spec, true).map_err(RuntimeError::from)?;
        crate::runtime::sanity::check(&d, &spec, &path).map_err(RuntimeError::from)?;
        if let Some(s) = &t.standardizer {
            s.apply(&mut d);
        }
        let e = eval::evaluate(
            &t.program,
            &mut Jit::new(),
            &t.state,
            t.standardizer.as_ref(),
            &d,
            t.cfg.batch as usize,
        )?;
        text.push_str(&e.report(&path));
        Ok(text)
    }

    fn predict(&mut self, model: &str, expr: &str) -> Result<String, ReplError> {
        self.ready(model)?;
        let x = self.eval_arg(expr)?;
        let (t, mut text) = self.ready(model)?;
        let g = &t.program.forward;
        let [input] = g.inputs.as_slice() else {
            return Err(ReplError::msg(format!(
                "`:predict` needs a model with one input; `{model}` has {}",
                g.inputs.len()
            )));
        };
        let want: Vec<usize> = input.shape.0[1..]
            .iter()
            .map(|d| d.size().unwrap_or(1) as usize)
            .collect();
        let x = if x.shape() == want.as_slice() {
            x.insert_axis(ndarray::Axis(0))
        } else {
            x
        };
        if x.ndim() == 0 || x.shape()[1..] != want[..] {
            return Err(ReplError::msg(format!(
                "`{}` of `{model}` is {}, the value is {}",
                input.name,
                input.shape,
                shape_text(x.shape())
            )));
        }
        let rows = x.shape()[0];
        let mut d = data::Dataset {
            inputs: vec![x],
            targets: vec![],
            rows,
        };
        if let Some(s) = &t.standardizer {
            s.apply(&mut d);
        }
        let (outs, classes) = eval::predict(
            &t.program,
            &mut Jit::new(),
            &t.state,
            t.standardizer.as_ref(),
            &d,
            t.cfg.batch as usize,
        )?;
        for ((name, _), v) in g.outputs.iter().zip(&outs) {
            let _ = writeln!(
                text,
                "{name}: {}\n{}",
                shape_text(v.shape()),
                format::format_tensor(v)
            );
        }
        if let Some(cs) = classes {
            let cs: Vec<String> = cs.iter().map(usize::to_string).collect();
            let _ = writeln!(text, "classes: [{}]", cs.join(", "));
        }
        Ok(text)
    }

    fn grad(&mut self, expr: &str, wrt: &str) -> Result<String, ReplError> {
        let c = self.compile_arg(expr, false)?;
        let mut g = c.program.forward.clone();
        let out_shape = &g.nodes[c.out].shape;
        if out_shape.per_sample() != Some(1) || out_shape.0.iter().any(|d| d.size().is_none()) {
            return Err(ReplError::msg(format!(
                "`:grad` needs a scalar expression; this one is {out_shape} (try `sum(...)`)"
            )));
        }
        let mut params = c.params.clone();
        for p in &mut g.params {
            p.trainable = p.tensor.name == wrt;
        }
        let input = g.inputs.iter().position(|t| t.name == wrt);
        match input {
            Some(i) => {
                let p = g.params.len();
                let shape = g.inputs[i].shape.clone();
                g.params.push(Param {
                    tensor: Tensor {
                        name: wrt.to_string(),
                        shape,
                        dtype: DType::F32,
                    },
                    trainable: true,
                });
                params.push(c.inputs[i].clone());
                for n in &mut g.nodes {
                    if n.op == Op::Input(i) {
                        n.op = Op::Param(p);
                    }
                }
            }
            None if g.params.iter().any(|p| p.trainable) => {}
            None => {
                let known = self.values.contains_key(wrt) || self.params.contains_key(wrt);
                return match self.values.get(wrt).or(self.params.get(wrt)) {
                    Some(v) if known => Ok(format!(
                        "∂/∂{wrt}: {} (the expression does not use `{wrt}`)\n{}\n",
                        shape_text(v.shape()),
                        format::format_tensor(&ArrayD::zeros(v.raw_dim()))
                    )),
                    _ => Err(ReplError::msg(format!(
                        "`{wrt}` is not a tensor or parameter of the session (`:params` lists parameters)"
                    ))),
                };
            }
        }
        g.loss = Some(c.out);
        g.objective = Some(c.out);
        differentiate(&mut g);
        let state = State {
            params,
            states: vec![],
        };
        let (value, grads) = Jit::new().gradients(&g, &state, &c.inputs, &[], &HashMap::new())?;
        let Some((_, gr)) = grads.into_iter().next() else {
            return Err(ReplError::Internal(Bug::new("no gradient")));
        };
        Ok(format!(
            "value: {}\n∂/∂{wrt}: {}\n{}\n",
            format::format_scalar(value as f32),
            shape_text(gr.shape()),
            format::format_tensor(&gr)
        ))
    }

    fn save(&self, name: &str, path: &Path) -> Result<String, ReplError> {
        let mut tensors: BTreeMap<String, ArrayD<f32>> = BTreeMap::new();
        if let Some(v) = self.values.get(name).or(self.params.get(name)) {
            tensors.insert(name.to_string(), v.clone());
        } else if let Some(t) = self.trained.get(name) {
            for (p, v) in t.program.forward.params.iter().zip(&t.state.params) {
                tensors.insert(p.tensor.name.clone(), v.clone());
            }
        } else if self.layers.iter().any(|(n, _)| n == name) {
            let prefix = format!("{name}.");
            for (k, v) in &self.params {
                if k.starts_with(&prefix) {
                    tensors.insert(k.clone(), v.clone());
                }
            }
            if tensors.is_empty() {
                return Err(ReplError::msg(format!(
                    "layer `{name}` has no parameters yet: use it in an expression first"
                )));
            }
        } else {
            return Err(ReplError::msg(format!(
                "`{name}` is not a tensor, parameter, layer or trained model of the session"
            )));
        }
        let ext = values::extension(path);
        match ext.as_str() {
            "npy" => {
                let [(_, v)] = tensors.iter().collect::<Vec<_>>()[..] else {
                    return Err(ReplError::msg(format!(
                        "`{name}` holds {} tensors: save it as .safetensors",
                        tensors.len()
                    )));
                };
                ndarray_npy::write_npy(path, v).map_err(|e| {
                    ReplError::msg(format!("cannot write `{}`: {e}", path.display()))
                })?;
            }
            "safetensors" => eval::save_tensors(path, tensors.clone())?,
            _ => return Err(ReplError::msg("save to a `.npy` or `.safetensors` file")),
        }
        Ok(format!(
            "saved {} tensor{} to {}\n",
            tensors.len(),
            if tensors.len() == 1 { "" } else { "s" },
            path.display()
        ))
    }

    fn params_text(&self) -> String {
        let mut text = String::new();
        for (n, v) in &self.values {
            if n != "_" {
                let _ = writeln!(text, "{n:<24} {}  tensor", shape_text(v.shape()));
            }
        }
        for (n, v) in &self.params {
            let _ = writeln!(text, "{n:<24} {}", shape_text(v.shape()));
        }
        for (l, _) in &self.layers {
            let prefix = format!("{l}.");
            if !self.params.keys().any(|k| k.starts_with(&prefix)) {
                let _ = writeln!(text, "{l:<24} (layer, not used yet)");
            }
        }
        for (m, t) in &self.trained {
            let count: usize = t.state.params.iter().map(|p| p.len()).sum();
            let _ = writeln!(text, "model {m}: {count} parameters");
            for (p, v) in t.program.forward.params.iter().zip(&t.state.params) {
                let _ = writeln!(text, "  {:<22} {}", p.tensor.name, shape_text(v.shape()));
            }
        }
        if text.is_empty() {
            text = "no tensors, parameters or trained models yet\n".into();
        }
        text
    }
}

/// `x: X, y: Y` as (port, tensor) pairs.
fn ports(text: &str) -> Result<Vec<(String, String)>, ReplError> {
    text.split(',')
        .map(|pair| {
            let (port, tensor) = pair.split_once(':').ok_or_else(|| {
                ReplError::msg(format!("`{}` is not `PORT: TENSOR`", pair.trim()))
            })?;
            Ok((port.trim().to_string(), tensor.trim().to_string()))
        })
        .collect()
}
