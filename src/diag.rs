//! Diagnostics: the codes and their explanations, the [`Diagnostic`] value, and rendering
//! with codespan-reporting (as text for people, as JSON for editors).

use crate::span::{Sources, Span};
use codespan_reporting::diagnostic as cs;
use codespan_reporting::term::{self, termcolor};
use serde::Serialize;

/// How serious a diagnostic is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The input is wrong: nothing runs.
    Error,
    /// The input works but likely not as meant.
    Warning,
}

/// A span with a message under it.
#[derive(Clone, Debug, PartialEq)]
pub struct Label {
    /// Where.
    pub span: Span,
    /// What to print under the span (may be empty).
    pub message: String,
    /// The primary label is the place the diagnostic is about.
    pub primary: bool,
}

/// One error or warning, with its code, spans and an optional fix.
#[derive(Clone, Debug, PartialEq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// `E0301`, `W0003`, ...
    pub code: Code,
    /// Lowercase, no final period.
    pub message: String,
    /// Primary first, then secondary labels.
    pub labels: Vec<Label>,
    /// Extra notes (`= note: ...`).
    pub notes: Vec<String>,
    /// The fix, when one exists (`= help: ...`).
    pub help: Option<String>,
}

impl Diagnostic {
    /// An error with code `code` whose primary span is `span`.
    pub fn error(code: Code, message: impl Into<String>, span: Span) -> Self {
        Self::new(Severity::Error, code, message, span)
    }

    /// A warning with code `code` whose primary span is `span`.
    pub fn warning(code: Code, message: impl Into<String>, span: Span) -> Self {
        Self::new(Severity::Warning, code, message, span)
    }

    fn new(severity: Severity, code: Code, message: impl Into<String>, span: Span) -> Self {
        Diagnostic {
            severity,
            code,
            message: message.into(),
            labels: vec![Label {
                span,
                message: String::new(),
                primary: true,
            }],
            notes: Vec::new(),
            help: None,
        }
    }

    /// An error without a source location (e.g. a flag that names no model).
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// Sets the message under the primary span.
    pub fn primary_label(mut self, message: impl Into<String>) -> Self {
        self.labels[0].message = message.into();
        self
    }

    /// Adds a secondary label.
    pub fn with_label(mut self, span: Span, message: impl Into<String>) -> Self {
        self.labels.push(Label {
            span,
            message: message.into(),
            primary: false,
        });
        self
    }

    /// Adds a note.
    pub fn with_note(mut self, note: impl Into<String>) -> Self {
        self.notes.push(note.into());
        self
    }

    /// Sets the help line.
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// The primary span.
    pub fn span(&self) -> Span {
        self.labels[0].span
    }
}

/// A diagnostic code with its one-line title and its explanation (`kiln explain`).
#[derive(Debug)]
pub struct CodeInfo {
    /// `E0101`.
    pub code: Code,
    /// For lints: the name usable in `allow` (`unused`); empty for errors.
    pub lint: &'static str,
    /// One line.
    pub title: &'static str,
    /// Why it is an error or warning, and what to do.
    pub explanation: &'static str,
}

macro_rules! codes {
    ($( $code:ident $lint:literal $title:literal $expl:literal ;)*) => {
        /// A diagnostic code. The variants are generated from the one table below, so a
        /// code without a title and an explanation does not exist and does not compile.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Code {
            $( #[doc = $title] $code, )*
        }

        impl Code {
            /// The code as printed: `E0301`.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( Code::$code => stringify!($code), )*
                }
            }
        }

        /// Every diagnostic code Kiln emits, in order.
        pub static CODES: &[CodeInfo] = &[
            $( CodeInfo { code: Code::$code, lint: $lint, title: $title, explanation: $expl }, )*
        ];
    };
}

codes! {
    E0101 "" "syntax error"
        "The file does not follow Kiln's grammar at the marked place. The message says which \
         tokens could come there. Statements end at the end of a line; a line that begins with \
         `|>` or a binary operator continues the statement above, and so does any line inside \
         open brackets.";
    E0102 "" "invalid number"
        "A number literal is malformed or too large. Integers (dimensions, counts) must fit in \
         a 64-bit integer and dimensions must be below 2^31; floats must be finite.";
    E0103 "" "nesting too deep"
        "Brackets or expressions are nested deeper than Kiln accepts (32 levels), or one statement \
         holds more than 128 operators. No real model needs this; split the expression \
         into several bindings.";
    E0104 "" "file is not valid UTF-8"
        "Kiln model files are UTF-8 text. Re-save the file as UTF-8.";
    E0201 "" "unknown name"
        "A name is used that no `input`, `target`, binding, `layer` or block argument defines \
         before this point. Definitions must come before their uses.";
    E0202 "" "unknown layer or function"
        "The called name is not a layer, activation, loss, reduction, block or `layer` value. \
         The language reference lists every layer (docs/LANGUAGE.md).";
    E0203 "" "unknown argument"
        "A named argument that the called layer or function does not take. The message lists the \
         arguments it does take.";
    E0204 "" "duplicate definition"
        "The same name is defined twice: a binding, an input, a model, a block, a train block \
         setting, or a parameter name (two `as` aliases that collide). Rename one of them.";
    E0205 "" "wrong number of arguments"
        "A call passes too many or too few positional arguments, or misses a required one. The \
         piped value of `x |> f(...)` is the first argument of `f`.";
    E0206 "" "argument of the wrong type"
        "An argument has the wrong kind of value: e.g. a float where an integer is needed, a \
         tensor where a number is needed, or a name that is not one of the accepted choices.";
    E0207 "" "value of the wrong kind"
        "A value is used in a way its kind does not allow: a layer value or a block where a \
         tensor is expected, class labels in arithmetic, a tensor where labels are required, or \
         `as` on something that is not a layer.";
    E0208 "" "unknown model"
        "A `train` block or the `--model` flag names a model that the file does not declare.";
    E0209 "" "statement not allowed here"
        "Some statements belong only in a model (`input`, `target`, `output`, `loss`, \
         `regularize`), some only in a block (`return`), and a file has only `model`, `block`, \
         `train` and `use` at the top level.";
    E0210 "" "cannot import file"
        "A `use` names a file that cannot be read, or the imports form a cycle. Paths are \
         relative to the importing file.";
    E0211 "" "missing statement"
        "A block must end in `return`; a model needs at least one `input` and one `output` (or a \
         `loss`); a file needs at least one declaration (a `model`, or `block`s for other \
         files to `use`): one holding only comments and blank lines, empty or truncated, \
         declares nothing.";
    E0212 "" "recursive or too deeply expanded block"
        "A block uses itself, directly or through other blocks, or blocks expand too far: \
         more than 32 levels of blocks calling blocks, or more than 10,000 block instances in \
         one model (a block that uses another twice doubles at every level). Networks in Kiln \
         are finite graphs: unroll a repetition by hand, or share one instance with \
         `layer NAME = block`.";
    E0301 "" "shapes do not broadcast"
        "Elementwise operations broadcast as NumPy does: shapes are aligned at the right and each \
         pair of dimensions must be equal or one of them 1. Project one side to the other's shape \
         (a 1×1 convolution or a dense layer) or reshape it.";
    E0302 "" "wrong rank"
        "The layer expects a tensor with a different number of dimensions: dense takes \
         `[N, ..., F]`, conv1d `[N, C, L]`, conv2d `[N, C, H, W]`, recurrent layers `[N, T, F]`. \
         `flatten` or `reshape` changes the rank.";
    E0303 "" "window does not fit"
        "A sliding window (convolution or pooling) produces an output size of zero or less: \
         floor((L + 2·pad − dilation·(k − 1) − 1) / stride) + 1 must be at least 1. Use a \
         smaller kernel, more padding, or a larger input.";
    E0304 "" "annotation does not match"
        "A binding's shape annotation (`h: [N, 256] = ...`) disagrees with the shape the checker \
         computed for the expression.";
    E0305 "" "block argument does not match its signature"
        "The shape given to a block does not fit its signature: a rank differs, a fixed \
         dimension differs, or a symbol that appears twice gets two different sizes.";
    E0306 "" "matrix product dimensions do not match"
        "For `a @ b` the last dimension of `a` must equal the second-to-last of `b` (or the only \
         dimension of a vector).";
    E0307 "" "class count does not match"
        "A classification loss compares logits `[N, K]` with labels `class[N] of K`: the last \
         dimension of the logits must equal the number of classes of the labels.";
    E0308 "" "loss operands do not match"
        "A loss compares a prediction with a target of the same shape (or labels with logits for \
         classification losses).";
    E0309 "" "bad axis"
        "The axis is outside the tensor's rank, or it is the batch axis 0, which reductions, \
         softmax and concat may not touch (the batch size is only known at run time).";
    E0310 "" "reshape changes the number of elements"
        "`reshape` must keep the number of elements per sample. At most one dimension may be -1, \
         and the batch dimension must stay first.";
    E0311 "" "bad dimension"
        "A dimension of an `input` or `target` must be a positive integer below 2^31, except the \
         first, which is the batch symbol (the same in every input and target). Symbols other \
         than the batch exist only in block signatures.";
    E0312 "" "loss is not a scalar"
        "`loss` takes a scalar: a loss function (`cross_entropy(...)`) or a weighted sum of \
         them, or per-sample values `[N]` (such as `mean(x)`, which reduces every non-batch \
         axis), which are averaged over the batch.";
    E0313 "" "invalid layer configuration"
        "A layer argument is outside its valid range: sizes and kernels must be at least 1, pooling \
         padding smaller than the kernel, probabilities in [0, 1), and so on.";
    E0314 "" "shared layer used with different shapes"
        "A `layer` value has one set of parameters, so every use must give it inputs of the same \
         feature shape. Declare a second layer for the other shape.";
    E0315 "" "concat dimensions do not match"
        "Tensors joined by `concat` must have the same rank and equal sizes on every axis except \
         the one they are joined along.";
    E0401 "" "unknown train setting"
        "A `train` block takes `data`, `optimizer`, `schedule`, `batch`, `epochs`, `clip`, \
         `early_stop`, `validation`, `metrics`, `seed` and `standardize`.";
    E0402 "" "unknown optimizer, schedule or metric"
        "Optimizers: sgd, adam, adamw, rmsprop. Schedules: constant, step, exponential, cosine, \
         warmup(...) then <schedule>. Clipping: norm(x), value(x). Metrics: accuracy, precision, \
         recall, f1, confusion (classifiers); mae, rmse, r2 (regression models). Early stopping monitors: val_loss, val_accuracy, loss, accuracy.";
    E0403 "" "value out of range"
        "A training hyperparameter is outside the range that makes sense: learning rates must be \
         positive, momentum and betas in [0, 1), the validation fraction in [0, 1), batch and \
         epochs at least 1.";
    E0404 "" "model cannot be trained"
        "The model has no `loss` statement, or its loss is `zero_one`, a metric whose gradient \
         is zero almost everywhere.";
    E0405 "" "data file not found"
        "A `data` or `pretrained` path of a train block does not exist. Paths are relative to \
         the model file.";
    E0406 "" "metric does not fit the model"
        "Classification metrics (accuracy, precision, recall, f1, confusion) need a classifier: a \
         model whose loss compares scores with class labels (or bce / focal with 0/1 targets). \
         Regression metrics (mae, rmse, r2) need a regression model: one whose loss compares \
         predictions with float targets by mse, mae or huber. Keep the metrics of the model's \
         kind, or leave `metrics` out to report all of them.";
    E0407 "" "freeze names nothing to freeze"
        "`freeze` takes names of the model's parameters as `kiln summary` lists their layers: \
         a binding (`c1`), a layer (`logits.dense.0`, or a name given with `as`) freezes every \
         parameter under it, a parameter's full name (`logits.dense.0.weight`) that one. A \
         name that matches no parameter is this error, and so is a `freeze` that leaves \
         nothing to train.";
    E0500 "" "cannot read data file"
        "The data file could not be opened or read. The message gives the operating system's \
         reason.";
    E0501 "" "malformed data"
        "A data file cannot be parsed: a cell is not a number, the file has no rows, or its \
         format is unknown (Kiln reads .csv with a header, .npy and .npz).";
    E0502 "" "data width does not match the model"
        "The number of columns differs from what the model's inputs and targets need, or a row \
         has a different number of fields than the header. The message gives the expected and \
         the found counts.";
    E0503 "" "bad class label"
        "A class label is not an integer in 0..K for a target declared `class[N] of K`.";
    E0504 "" "missing data"
        "A column or array the model needs is not in the file (e.g. an .npz without the key of \
         an input), or the format cannot hold what is needed.";
    E0505 "" "data shape does not match the model"
        "An array has a different shape than the model's input or target, or inputs and targets \
         have different numbers of rows.";
    E0506 "" "non-finite value in data"
        "An input or target value in the data file is NaN or infinite (a CSV cell `nan`, \
         `inf`, or a float array holding them). One such value makes the loss NaN and \
         training diverge, so the data is checked before training and the first one is \
         reported: for a CSV file its line and column, for an array its name and row \
         (counting from 0). Remove or fill in the row (e.g. with the column's mean), or fix \
         the step that wrote the file.";
    E0601 "" "training diverged"
        "A training step's loss became NaN or infinite. Training stops and the last checkpoint \
         (written at the end of the previous epoch) is kept. The step is replayed on the \
         reference interpreter from the weights before it, and the diagnostic points at the \
         first operation whose result is not finite although its operands are, with the likely \
         causes: a learning rate so high that the weights overflow, exploding gradients (add \
         `clip norm(1.0)`), the log of zero, or non-finite input data.";
    E0700 "" "cannot be exported"
        "`kiln export` writes what predicts: the model's outputs computed from its inputs. An \
         output that needs a target (the target itself, or a loss comparing with it) has no \
         value in an exported model. Output the prediction the loss compares, and keep the \
         loss for training.";
    E0701 "" "output is a standardized input"
        "A model that outputs one of its inputs (`output x`) and was trained with \
         `standardize true` returns the standardized input. In ONNX a graph's values have \
         one name each, so the raw input and the standardized output cannot both be `x`. \
         Give the output its own name, e.g. `output x_standardized = x * 1`.";
    W0001 "symmetric_init" "symmetric weight initialization"
        "All weights start equal (zeros, ones or a constant), so every unit of the layer \
         computes the same function and receives the same gradient: symmetry is never broken \
         and the layer behaves like one unit. Use a random initializer (`he`, `xavier`, \
         `normal`, `uniform`).";
    W0002 "activation_before_regression_loss" "activation directly before a regression loss"
        "A squashing or clipping activation (sigmoid, tanh, relu, softmax, ...) right before \
         `mse` or `mae` limits the predictions' range and, once saturated, stops the gradient. \
         Regression outputs are usually linear; use `bce` or `cross_entropy` for probabilities.";
    W0003 "double_softmax" "softmax fed into cross_entropy"
        "`cross_entropy` applies softmax itself (fused and numerically stable). Feeding it \
         probabilities applies softmax twice, which squashes the gradient. Pass the logits.";
    W0004 "mse_on_labels" "mse against class labels"
        "Squared error treats class ids as numbers on a line (class 9 is 'far' from class 0). \
         For classification use `cross_entropy` with logits of shape [N, K].";
    W0005 "saturating_stack" "deep stack of saturating activations"
        "The derivative of sigmoid is at most 0.25 and that of tanh at most 1, and both vanish \
         when saturated; many of them in a row multiply small factors and the first layers stop \
         learning. Use the ReLU family, batchnorm or layernorm, or residual connections.";
    W0006 "dropout_before_batchnorm" "dropout directly before batchnorm"
        "Dropout changes the variance of its output between training and evaluation, so the \
         batchnorm after it learns running statistics that do not match evaluation. Put dropout \
         after batchnorm (and its activation).";
    W0007 "unused" "value does not reach the loss or an output"
        "The binding, layer or input is computed but never contributes to the loss or an \
         output: its parameters would never train. Remove it or connect it.";
    W0008 "unknown_lint" "unknown lint in `allow`"
        "An `allow` statement names a code or lint that does not exist, so it silences \
         nothing. `kiln explain` lists the lints with their codes and names.";
    W0101 "vanishing_gradients" "vanishing gradients"
        "Measured while training with `--diagnose` and by `kiln grad`: the first layer's \
         gradient norm is below 1e-3 times the last layer's, so the first layers barely learn. \
         Saturating activations (sigmoid's derivative is at most 0.25) multiply the gradient \
         down layer by layer. Remedies: ReLU-family activations, residual connections, \
         batchnorm between layers, careful initialization (he for ReLU, xavier for tanh).";
    W0102 "exploding_gradients" "exploding gradients"
        "Measured while training with `--diagnose` and by `kiln grad`: a layer's gradient norm \
         is above 1e3. The next steps may overflow to NaN. Remedies: gradient clipping \
         (`clip norm(1.0)`), a lower learning rate, batchnorm, careful initialization.";
    W0103 "dead_relu" "dead ReLU units"
        "Measured while training with `--diagnose` and by `kiln grad`: more than half of a \
         ReLU's units have a negative input for every row of the batch. Their gradient is zero, \
         so they never recover. Remedies: a lower learning rate, leaky_relu or elu, he \
         initialization.";
    W0104 "saturated_units" "saturated sigmoid/tanh units"
        "Measured while training with `--diagnose` and by `kiln grad`: more than half of a \
         sigmoid's or tanh's outputs are within 0.01 of their bounds, where the derivative is \
         almost zero. Remedies: batchnorm before the activation, smaller initial weights, a \
         ReLU-family activation.";
    W0105 "not_learning" "training learned nothing"
        "At the end of training, the accuracy is no better than always predicting the most \
         frequent class, or the training loss did not fall from the first epoch to the last. \
         The run finished, but the model is no better than a constant. Likely causes: a \
         learning rate far too high (the loss jumps or stalls) or far too low (it barely \
         moves); inputs on very different scales (`--standardize`); targets that do not \
         match the inputs.";
    W0201 "constant_column" "constant input column"
        "An input feature (a CSV column, or one element of an array's rows) has the same value \
         in every row of the training data. It carries no information: the model cannot learn \
         anything from it. Drop it if the input's shape allows; otherwise it does no harm, \
         and `standardize` turns it into 0 in every row. Up to five constant columns are \
         reported one by one, the others in one more warning.";
    W0202 "class_imbalance" "class imbalance"
        "For a target `class[...] of K`, a class has no rows at all (the model cannot learn \
         it: add rows, or check that the labels count from 0 and that K is right), or the \
         most frequent class has at least 10 times the rows of the least frequent one. A \
         model trained on imbalanced classes tends to predict the frequent ones, and \
         accuracy hides it: look at per-class recall (`metrics recall, confusion`). Weight \
         the classes (e.g. repeat the rows of the rare ones) or use `focal(gamma: 2)` as the \
         loss, which down-weights easy examples.";
}

impl Code {
    /// True for warnings (lints), which `allow` can silence.
    pub fn is_warning(self) -> bool {
        self.as_str().starts_with('W')
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Looks up a code (`E0301`, `w0003`) or a lint name (`unused`).
pub fn lookup(code: &str) -> Option<&'static CodeInfo> {
    CODES.iter().find(|c| {
        c.code.as_str().eq_ignore_ascii_case(code) || (!c.lint.is_empty() && c.lint == code)
    })
}

/// How diagnostics are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColorChoice {
    /// Plain text.
    Never,
    /// ANSI colors.
    Always,
}

/// Renders diagnostics as rustc-style text.
pub fn render(sources: &Sources, diags: &[Diagnostic], color: ColorChoice) -> String {
    let mut buf = buffer(color);
    let config = term::Config::default();
    for d in diags {
        // Writing to an in-memory buffer with valid spans cannot fail; a span outside
        // its file would be a compiler bug, rendered as the bare message instead.
        if term::emit(&mut buf, &config, sources, &to_codespan(d)).is_err() {
            buf.clear();
            return diags
                .iter()
                .map(|d| format!("{}[{}]: {}\n", severity_word(d.severity), d.code, d.message))
                .collect();
        }
    }
    String::from_utf8_lossy(buf.as_slice()).into_owned()
}

/// Renders a diagnostic that points into no model source (a data file, whose position
/// the message names, or a REPL command) in the style of [`render`]: the header line
/// `error[E0502]: MESSAGE` (or `error: MESSAGE` without a code), then `  = help: HELP`.
pub fn render_unplaced(
    severity: Severity,
    code: Option<Code>,
    message: &str,
    help: Option<&str>,
    color: ColorChoice,
) -> String {
    let mut buf = buffer(color);
    let styles = term::Styles::default();
    // Writing to an in-memory buffer cannot fail.
    let _ = write_unplaced(&mut buf, &styles, severity, code, message, help);
    String::from_utf8_lossy(buf.as_slice()).into_owned()
}

fn write_unplaced(
    buf: &mut termcolor::Buffer,
    styles: &term::Styles,
    severity: Severity,
    code: Option<Code>,
    message: &str,
    help: Option<&str>,
) -> std::io::Result<()> {
    use std::io::Write;
    use termcolor::WriteColor;
    buf.set_color(styles.header(cs_severity(severity)))?;
    write!(buf, "{}", severity_word(severity))?;
    if let Some(code) = code {
        write!(buf, "[{code}]")?;
    }
    buf.reset()?;
    buf.set_color(&styles.header_message)?;
    write!(buf, ": {message}")?;
    buf.reset()?;
    writeln!(buf)?;
    if let Some(help) = help {
        writeln!(buf, "  = help: {help}")?;
    }
    Ok(())
}

fn buffer(color: ColorChoice) -> termcolor::Buffer {
    match color {
        ColorChoice::Never => termcolor::Buffer::no_color(),
        ColorChoice::Always => termcolor::Buffer::ansi(),
    }
}

fn cs_severity(s: Severity) -> cs::Severity {
    match s {
        Severity::Error => cs::Severity::Error,
        Severity::Warning => cs::Severity::Warning,
    }
}

fn severity_word(s: Severity) -> &'static str {
    match s {
        Severity::Error => "error",
        Severity::Warning => "warning",
    }
}

fn to_codespan(d: &Diagnostic) -> cs::Diagnostic<usize> {
    let severity = cs_severity(d.severity);
    let labels = d
        .labels
        .iter()
        .map(|l| {
            let style = if l.primary {
                cs::LabelStyle::Primary
            } else {
                cs::LabelStyle::Secondary
            };
            cs::Label::new(style, l.span.file, l.span.range()).with_message(l.message.clone())
        })
        .collect();
    let mut notes: Vec<String> = d.notes.iter().map(|n| format!("note: {n}")).collect();
    if let Some(h) = &d.help {
        notes.push(format!("help: {h}"));
    }
    cs::Diagnostic::new(severity)
        .with_code(d.code.as_str())
        .with_message(d.message.clone())
        .with_labels(labels)
        .with_notes(notes)
}

/// A label as editors receive it.
#[derive(Serialize)]
struct JsonLabel<'a> {
    file: &'a str,
    line: usize,
    column: usize,
    end_line: usize,
    end_column: usize,
    message: &'a str,
    primary: bool,
}

/// A diagnostic as editors receive it.
#[derive(Serialize)]
struct JsonDiagnostic<'a> {
    code: &'a str,
    severity: Severity,
    message: &'a str,
    file: &'a str,
    line: usize,
    column: usize,
    labels: Vec<JsonLabel<'a>>,
    notes: &'a [String],
    help: Option<&'a str>,
}

/// Renders diagnostics as a JSON array, one object each.
pub fn render_json(sources: &Sources, diags: &[Diagnostic]) -> String {
    let out: Vec<JsonDiagnostic> = diags
        .iter()
        .map(|d| {
            let labels: Vec<JsonLabel> = d
                .labels
                .iter()
                .map(|l| {
                    let (line, column) = sources.line_col(l.span.file, l.span.start);
                    let (end_line, end_column) = sources.line_col(l.span.file, l.span.end);
                    JsonLabel {
                        file: &sources.get(l.span.file).name,
                        line,
                        column,
                        end_line,
                        end_column,
                        message: &l.message,
                        primary: l.primary,
                    }
                })
                .collect();
            JsonDiagnostic {
                code: d.code.as_str(),
                severity: d.severity,
                message: &d.message,
                file: labels[0].file,
                line: labels[0].line,
                column: labels[0].column,
                labels,
                notes: &d.notes,
                help: d.help.as_deref(),
            }
        })
        .collect();
    serde_json::to_string_pretty(&out).unwrap_or_else(|_| "[]".into())
}

/// "did you mean `x`?" — the closest candidate within a small edit distance.
pub fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    let candidates: Vec<&str> = candidates.into_iter().filter(|c| *c != name).collect();
    let lower = name.to_ascii_lowercase();
    // Names from other frameworks first (`Dense`, `swish`, `batch_size`), then spelling.
    if let Some((_, ours)) = SYNONYMS.iter().find(|(theirs, _)| *theirs == lower) {
        if candidates.contains(ours) {
            return Some(ours.to_string());
        }
    }
    if let Some(c) = candidates.iter().find(|c| c.eq_ignore_ascii_case(name)) {
        return Some(c.to_string());
    }
    let mut best: Option<(&str, f64)> = None;
    for c in candidates {
        let d = strsim::damerau_levenshtein(&lower, c);
        // A one-letter name is too short for a spelling guess to mean anything.
        let len = name.chars().count();
        let limit = if len < 2 { 0 } else { (len / 3).max(1) };
        if d <= limit {
            let score = d as f64 - strsim::jaro_winkler(&lower, c);
            if best.is_none_or(|(_, s)| score < s) {
                best = Some((c, score));
            }
        }
    }
    best.map(|(c, _)| c.to_string())
}

/// Words other frameworks and papers use for what Kiln calls otherwise.
const SYNONYMS: &[(&str, &str)] = &[
    ("linear", "dense"),
    ("fc", "dense"),
    ("conv", "conv2d"),
    ("conv2", "conv2d"),
    ("convolution2d", "conv2d"),
    ("batch_norm", "batchnorm"),
    ("batchnorm1d", "batchnorm"),
    ("batchnorm2d", "batchnorm"),
    ("batchnormalization", "batchnorm"),
    ("layer_norm", "layernorm"),
    ("layernormalization", "layernorm"),
    ("max_pool2d", "maxpool2d"),
    ("maxpooling2d", "maxpool2d"),
    ("max_pool1d", "maxpool1d"),
    ("avg_pool2d", "avgpool2d"),
    ("averagepooling2d", "avgpool2d"),
    ("adaptiveavgpool2d", "global_avgpool"),
    ("globalaveragepooling2d", "global_avgpool"),
    ("swish", "silu"),
    ("leakyrelu", "leaky_relu"),
    ("logsoftmax", "log_softmax"),
    ("crossentropy", "cross_entropy"),
    ("categorical_crossentropy", "cross_entropy"),
    ("sparse_categorical_crossentropy", "cross_entropy"),
    ("crossentropyloss", "cross_entropy"),
    ("nll_loss", "cross_entropy"),
    ("binary_crossentropy", "bce"),
    ("bce_with_logits", "bce"),
    ("bcewithlogitsloss", "bce"),
    ("mean_squared_error", "mse"),
    ("mseloss", "mse"),
    ("mean_absolute_error", "mae"),
    ("smooth_l1", "huber"),
    ("cat", "concat"),
    ("concatenate", "concat"),
    ("view", "reshape"),
    ("kaiming", "he"),
    ("kaiming_normal", "he"),
    ("glorot", "xavier"),
    ("glorot_uniform", "xavier"),
    ("xavier_uniform", "xavier"),
    ("learning_rate", "lr"),
    ("kernel_size", "k"),
    ("kernel", "k"),
    ("padding", "pad"),
    ("strides", "stride"),
    ("filters", "out"),
    ("out_channels", "out"),
    ("hidden_size", "h"),
    ("hidden", "h"),
    ("num_embeddings", "vocab"),
    ("embedding_dim", "dim"),
    ("rate", "p"),
    ("use_bias", "bias"),
    ("keepdim", "keepdims"),
    ("dim", "axis"),
    ("batch_size", "batch"),
    ("epoch", "epochs"),
    ("num_epochs", "epochs"),
    ("acc", "accuracy"),
    ("f1_score", "f1"),
    ("val_acc", "val_accuracy"),
    ("val_accuracy_score", "val_accuracy"),
    ("clipnorm", "clip"),
    ("weight_decay", "l2"),
];

/// Groups digits by thousands: 1234567 → "1,234,567".
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
