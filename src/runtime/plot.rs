//! Training curves: train and validation loss per epoch, and validation accuracy, drawn
//! to SVG or PNG with `plotters`.
//!
//! Text is rendered with Noto Sans Regular, embedded in the binary (`ttf-noto-sans`,
//! Apache-2.0), through `ab_glyph`: no system font library (fontconfig, FreeType) is
//! needed, and PNG and SVG lay out their labels the same way on every machine.
//!
//! The file is written like a checkpoint: to `<path>.tmp-<pid>.<ext>` next to the target,
//! fsynced, then renamed over it, so a reader never sees a half-written plot.

use super::train::EpochRecord;
use plotters::coord::ranged1d::Ranged;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::register_font;
use serde::Deserialize;
use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File};
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Width and height in pixels (SVG user units).
const WIDTH: u32 = 900;
/// Height with the loss panel alone.
const HEIGHT_LOSS: u32 = 500;
/// Height with the accuracy panel below the loss panel.
const HEIGHT_BOTH: u32 = 760;
/// The family every text uses; the embedded font is registered under it.
const FAMILY: &str = "sans-serif";
/// Values beyond ±LIMIT are skipped like infinities (and NaN, which fails the test):
/// an axis spanning more than `f64::MAX` cannot be drawn.
const LIMIT: f64 = 1e300;

/// Series colors: train loss, validation loss, validation accuracy.
const TRAIN: RGBColor = RGBColor(31, 119, 180);
const VAL: RGBColor = RGBColor(255, 127, 14);
const ACC: RGBColor = RGBColor(44, 160, 44);

/// Why a plot was not drawn; the target file is then left untouched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlotError {
    /// The file name ends in neither `.svg` nor `.png`.
    Extension(PathBuf),
    /// The history has no epochs.
    Empty(PathBuf),
    /// The embedded font cannot be registered: Kiln was built wrong.
    Font,
    /// Drawing or writing the file failed.
    Write {
        /// The plot file.
        path: PathBuf,
        /// What the drawing library or the operating system said.
        cause: String,
    },
}

impl fmt::Display for PlotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlotError::Extension(path) => write!(
                f,
                "cannot plot to `{}`: the file name must end in .svg or .png",
                path.display()
            ),
            PlotError::Empty(path) => write!(
                f,
                "cannot plot to `{}`: the history has no epochs",
                path.display()
            ),
            PlotError::Font => f.write_str("the embedded font cannot be loaded"),
            PlotError::Write { path, cause } => {
                write!(f, "cannot write `{}`: {cause}", path.display())
            }
        }
    }
}

impl std::error::Error for PlotError {}

/// What a drawing or writing step reported, before the plot's path is attached.
struct Cause(String);

/// The output formats, chosen by the file's extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `.svg`.
    Svg,
    /// `.png`.
    Png,
}

impl Format {
    /// The format for `path`'s extension (case-insensitive); an error naming the accepted
    /// extensions otherwise.
    pub fn of(path: &Path) -> Result<Format, PlotError> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("svg") => Ok(Format::Svg),
            Some("png") => Ok(Format::Png),
            _ => Err(PlotError::Extension(path.to_path_buf())),
        }
    }

    fn ext(self) -> &'static str {
        match self {
            Format::Svg => "svg",
            Format::Png => "png",
        }
    }
}

/// The values of one epoch that a plot draws: the part of an [`EpochRecord`] that a
/// saved report must keep for `kiln plot`. A non-finite loss, saved as JSON `null`,
/// deserializes as `None`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Deserialize)]
#[serde(expecting = "an epoch record")]
pub struct EpochPoint {
    /// Epoch number, from 1.
    pub epoch: u64,
    /// Mean training loss.
    #[serde(default)]
    pub train_loss: Option<f64>,
    /// Validation loss.
    #[serde(default)]
    pub val_loss: Option<f64>,
    /// Validation accuracy, as a fraction (drawn in percent).
    #[serde(default)]
    pub val_accuracy: Option<f64>,
}

impl From<&EpochRecord> for EpochPoint {
    fn from(r: &EpochRecord) -> EpochPoint {
        EpochPoint {
            epoch: r.epoch,
            train_loss: Some(r.train_loss),
            val_loss: r.val_loss,
            val_accuracy: r.val_accuracy,
        }
    }
}

/// Draws the loss curves (and the validation accuracy, when the history has it) of
/// `history` to `path`, as SVG or PNG by its extension.
///
/// Non-finite values (and any beyond ±1e300) are skipped, leaving a gap in the curve,
/// as is a series with no value left; the loss axis is logarithmic when the losses span more than two decades.
/// An empty history, an unknown extension and an I/O failure are errors; `path` is then
/// left untouched.
pub fn plot(history: &[EpochRecord], title: &str, path: &Path) -> Result<(), PlotError> {
    let points: Vec<EpochPoint> = history.iter().map(EpochPoint::from).collect();
    plot_points(&points, title, path)
}

/// [`plot`] of the plotted values alone (a history read back from a report).
pub fn plot_points(history: &[EpochPoint], title: &str, path: &Path) -> Result<(), PlotError> {
    let format = Format::of(path)?;
    if history.is_empty() {
        return Err(PlotError::Empty(path.to_path_buf()));
    }
    register()?;
    let curves = Curves::new(history);
    let height = if curves.accuracy.is_empty() {
        HEIGHT_LOSS
    } else {
        HEIGHT_BOTH
    };
    let tmp = temp_path(path, format);
    let drawn = match format {
        Format::Svg => {
            let mut svg = String::new();
            let drawn = {
                let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
                draw(&root, &curves, title)
                    .and_then(|()| root.present().map_err(|e| Cause(e.to_string())))
            };
            drawn
                .and_then(|()| write_synced(&tmp, svg.as_bytes()).map_err(|e| Cause(e.to_string())))
        }
        Format::Png => {
            // The bitmap backend saves on `present`, choosing the encoder by the extension,
            // which the temporary name keeps. Creating the file first reports an unwritable
            // place as a plain I/O error.
            let result = File::create(&tmp)
                .map_err(|e| Cause(e.to_string()))
                .and_then(|_| {
                    let root = BitMapBackend::new(&tmp, (WIDTH, height)).into_drawing_area();
                    draw(&root, &curves, title)
                        .and_then(|()| root.present().map_err(|e| Cause(e.to_string())))
                });
            result.and_then(|()| {
                File::open(&tmp)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| Cause(e.to_string()))
            })
        }
    };
    let renamed = drawn.and_then(|()| fs::rename(&tmp, path).map_err(|e| Cause(e.to_string())));
    if let Err(Cause(cause)) = renamed {
        let _ = fs::remove_file(&tmp);
        return Err(PlotError::Write {
            path: path.to_path_buf(),
            cause,
        });
    }
    sync_dir(path);
    Ok(())
}

/// The series to draw: `(epoch, value)` points with finite values within ±[`LIMIT`], by
/// epoch.
struct Curves {
    train: Vec<(u64, f64)>,
    val: Vec<(u64, f64)>,
    /// In percent.
    accuracy: Vec<(u64, f64)>,
    epochs: Range<u64>,
}

impl Curves {
    fn new(history: &[EpochPoint]) -> Curves {
        let points = |f: &dyn Fn(&EpochPoint) -> Option<f64>| -> Vec<(u64, f64)> {
            let mut v: Vec<(u64, f64)> = history
                .iter()
                .filter_map(|r| f(r).filter(|v| v.abs() <= LIMIT).map(|v| (r.epoch, v)))
                .collect();
            // A hand-edited report may list epochs out of order.
            v.sort_by_key(|p| p.0);
            v
        };
        let first = history.iter().map(|r| r.epoch).min().unwrap_or(1);
        let last = history.iter().map(|r| r.epoch).max().unwrap_or(1);
        // A single epoch sits in the middle of the axis.
        let epochs = if first == last {
            first.saturating_sub(1)..last.saturating_add(1)
        } else {
            first..last
        };
        Curves {
            train: points(&|r| r.train_loss),
            val: points(&|r| r.val_loss),
            accuracy: points(&|r| r.val_accuracy.map(|a| a * 100.0)),
            epochs,
        }
    }

    /// The same curves with the losses replaced by their base-10 logarithms (all positive).
    fn log10(&self) -> Curves {
        let log = |v: &[(u64, f64)]| v.iter().map(|&(e, x)| (e, x.log10())).collect();
        Curves {
            train: log(&self.train),
            val: log(&self.val),
            accuracy: self.accuracy.clone(),
            epochs: self.epochs.clone(),
        }
    }
}

/// The result type of drawing into an area of backend `DB`.
type Drawn = Result<(), Cause>;

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, c: &Curves, title: &str) -> Drawn {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| Cause(e.to_string());
    root.fill(&WHITE).map_err(err)?;
    let area = root
        .titled(title, (FAMILY, 24).into_font().color(&BLACK))
        .map_err(err)?;
    let (loss_area, acc_area) = if c.accuracy.is_empty() {
        (area, None)
    } else {
        let h = area.dim_in_pixel().1;
        let (top, bottom) = area.split_vertically(h * 3 / 5);
        (top, Some(bottom))
    };
    let (lo, hi) = bounds(c.train.iter().chain(&c.val).map(|p| p.1));
    // More than two decades, all positive: a logarithmic axis, drawn as the logarithms
    // on a linear axis from decade to decade, so that every decade the losses reach is
    // labelled (plotters' own logarithmic axis stopped labelling around 1e-14).
    if lo > 0.0 && hi / lo > 100.0 {
        let (bottom, top) = (lo.log10().floor(), hi.log10().ceil());
        let labels = ((top - bottom) as usize + 1).min(10);
        loss_panel(&loss_area, &c.log10(), bottom..top, labels, &decade)?;
    } else {
        let pad = if hi > lo {
            (hi - lo) * 0.05
        } else {
            (lo.abs() * 0.1).max(1e-3)
        };
        let bottom = if lo >= 0.0 {
            (lo - pad).max(0.0)
        } else {
            lo - pad
        };
        loss_panel(&loss_area, c, bottom..hi + pad, 10, &|v| number(*v))?;
    }
    if let Some(acc_area) = acc_area {
        accuracy_panel(&acc_area, c)?;
    }
    Ok(())
}

/// The smallest and largest of `values`; `(0, 1)` when there are none.
fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if lo.is_finite() && hi.is_finite() {
        (lo, hi)
    } else {
        (0.0, 1.0)
    }
}

/// The label of a tick of a logarithmic axis at `v` = log₁₀ of the value: the power of
/// ten at whole decades, nothing between them.
fn decade(v: &f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        number(10f64.powi(v.round() as i32))
    } else {
        String::new()
    }
}

fn loss_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    c: &Curves,
    y: Range<f64>,
    labels: usize,
    label: &dyn Fn(&f64) -> String,
) -> Drawn {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| Cause(e.to_string());
    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(c.epochs.clone(), y)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc("loss")
        .x_labels(10)
        .y_labels(labels)
        .y_label_formatter(label)
        .label_style((FAMILY, 14))
        .axis_desc_style((FAMILY, 16))
        .max_light_lines(4)
        .light_line_style(RGBColor(238, 238, 238))
        .draw()
        .map_err(err)?;
    let mut any = false;
    for (points, name, color) in [
        (&c.train, "train loss", TRAIN),
        (&c.val, "validation loss", VAL),
    ] {
        any |= series(&mut chart, points, name, color)?;
    }
    if any {
        legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    }
    Ok(())
}

fn accuracy_panel<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, c: &Curves) -> Drawn {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| Cause(e.to_string());
    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(c.epochs.clone(), accuracy_range(&c.accuracy))
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc("accuracy (%)")
        .x_labels(10)
        .y_labels(6)
        .y_label_formatter(&|v| format!("{v:.0}"))
        .label_style((FAMILY, 14))
        .axis_desc_style((FAMILY, 16))
        .max_light_lines(4)
        .light_line_style(RGBColor(238, 238, 238))
        .draw()
        .map_err(err)?;
    // Accuracy usually climbs towards 100%: the legend goes below it.
    if series(&mut chart, &c.accuracy, "validation accuracy", ACC)? {
        legend(&mut chart, SeriesLabelPosition::LowerRight)?;
    }
    Ok(())
}

/// The accuracy axis in percent: the data's range widened to multiples of 5 with a margin
/// of 2 points, at least 10 points tall, within 0–100, so the region where accuracy
/// changes fills the panel.
fn accuracy_range(points: &[(u64, f64)]) -> Range<f64> {
    let (lo, hi) = bounds(points.iter().map(|p| p.1));
    let mut bottom = (((lo - 2.0) / 5.0).floor() * 5.0).max(0.0);
    let top = (((hi + 2.0) / 5.0).ceil() * 5.0).min(100.0);
    if top - bottom < 10.0 {
        bottom = (top - 10.0).max(0.0);
    }
    bottom..top.max(bottom + 10.0)
}

/// Draws `points` as a line with a marker on each point (so that a single epoch shows),
/// labelled `name` in the legend; `false` when there is nothing to draw. Runs of
/// consecutive epochs form one line; a skipped (non-finite) value leaves a gap.
fn series<'a, DB, X, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    points: &[(u64, f64)],
    name: &str,
    color: RGBColor,
) -> Result<bool, Cause>
where
    DB: DrawingBackend + 'a,
    X: Ranged<ValueType = u64>,
    Y: Ranged<ValueType = f64>,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| Cause(e.to_string());
    if points.is_empty() {
        return Ok(false);
    }
    let line = color.stroke_width(2);
    let mut labelled = false;
    for run in runs(points) {
        let drawn = chart
            .draw_series(LineSeries::new(run.iter().copied(), line))
            .map_err(err)?;
        if !labelled {
            drawn
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], line));
            labelled = true;
        }
    }
    chart
        .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
        .map_err(err)?;
    Ok(true)
}

/// `points` split where epochs are not consecutive.
fn runs(points: &[(u64, f64)]) -> Vec<&[(u64, f64)]> {
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=points.len() {
        if i == points.len() || Some(points[i].0) != points[i - 1].0.checked_add(1) {
            out.push(&points[start..i]);
            start = i;
        }
    }
    out
}

fn legend<'a, DB, X, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    position: SeriesLabelPosition,
) -> Drawn
where
    DB: DrawingBackend + 'a,
    X: Ranged<ValueType = u64>,
    Y: Ranged<ValueType = f64>,
{
    chart
        .configure_series_labels()
        .position(position)
        .label_font((FAMILY, 14))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(160, 160, 160))
        .draw()
        .map_err(|e| Cause(e.to_string()))
}

/// A tick label: plain for moderate magnitudes, scientific otherwise.
fn number(v: f64) -> String {
    let a = v.abs();
    if v == 0.0 {
        "0".into()
    } else if (1e-3..1e4).contains(&a) {
        let s = format!("{v:.4}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        s.to_string()
    } else {
        format!("{v:.0e}")
    }
}

/// Registers the embedded font once; every later call sees the first outcome.
fn register() -> Result<(), PlotError> {
    static DONE: OnceLock<Result<(), PlotError>> = OnceLock::new();
    DONE.get_or_init(|| {
        register_font(FAMILY, FontStyle::Normal, ttf_noto_sans::REGULAR)
            .map_err(|_| PlotError::Font)
    })
    .clone()
}

/// `<path>.tmp-<pid>.<ext>`: next to the target, keeping the extension that selects the
/// encoder.
fn temp_path(path: &Path, format: Format) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(format!(".tmp-{}.{}", std::process::id(), format.ext()));
    PathBuf::from(name)
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = File::create(path)?;
    file.write_all(bytes)?;
    file.flush()?;
    file.sync_all()
}

/// Makes the rename durable by fsyncing the directory (Unix; best effort: the plot is
/// already complete and in place).
fn sync_dir(path: &Path) {
    #[cfg(unix)]
    {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(epoch: u64, train: f64, val: Option<f64>, acc: Option<f64>) -> EpochPoint {
        EpochPoint {
            epoch,
            train_loss: Some(train),
            val_loss: val,
            val_accuracy: acc,
        }
    }

    #[test]
    fn runs_split_at_gaps() {
        let p = [(1, 1.0), (2, 1.0), (4, 1.0), (5, 1.0), (7, 1.0)];
        let lens: Vec<usize> = runs(&p).iter().map(|r| r.len()).collect();
        assert_eq!(lens, [2, 2, 1]);
        assert!(runs(&[]).is_empty());
    }

    #[test]
    fn curves_skip_non_finite_values() {
        let h = [
            rec(1, 2.0, Some(f64::NAN), Some(0.5)),
            rec(2, f64::INFINITY, Some(1.0), None),
            rec(3, 0.5, Some(0.8), Some(0.9)),
            rec(4, 1e301, Some(-1e301), None),
        ];
        let c = Curves::new(&h);
        assert_eq!(c.train, [(1, 2.0), (3, 0.5)]);
        assert_eq!(c.val, [(2, 1.0), (3, 0.8)]);
        assert_eq!(c.accuracy, [(1, 50.0), (3, 90.0)]);
        assert_eq!(c.epochs, 1..4);
        assert_eq!(Curves::new(&[rec(1, 1.0, None, None)]).epochs, 0..2);
    }

    #[test]
    fn extreme_values_and_epochs_draw() {
        // Ranges whose width or ratio overflow f64 once padded made plotters loop forever.
        let dir = tempfile::tempdir().expect("temp dir");
        let cases: [&[EpochPoint]; 4] = [
            &[rec(1, 1e-10, None, None), rec(2, 1e300, None, None)],
            &[rec(1, -1e300, None, None), rec(2, 1e300, None, None)],
            &[rec(1, 5e-324, None, None), rec(2, 1e300, None, Some(1e300))],
            &[rec(u64::MAX, 1.0, Some(1.0), Some(0.5))],
        ];
        for (i, h) in cases.iter().enumerate() {
            for ext in ["svg", "png"] {
                let path = dir.path().join(format!("{i}.{ext}"));
                plot_points(h, "t", &path).expect("plots");
                assert!(path.exists());
            }
        }
        let e = plot_points(&[], "t", &dir.path().join("e.svg")).unwrap_err();
        assert!(e.to_string().contains("no epochs"), "{e}");
    }

    #[test]
    fn format_by_extension() {
        assert_eq!(Format::of(Path::new("a.svg")), Ok(Format::Svg));
        assert_eq!(Format::of(Path::new("a.PNG")), Ok(Format::Png));
        let e = Format::of(Path::new("a.pdf")).unwrap_err().to_string();
        assert!(e.contains(".svg") && e.contains(".png"), "{e}");
        assert!(Format::of(Path::new("noext")).is_err());
    }

    #[test]
    fn tick_labels() {
        assert_eq!(number(0.0), "0");
        assert_eq!(number(0.25), "0.25");
        assert_eq!(number(2.0), "2");
        assert_eq!(number(1e-5), "1e-5");
    }
}
