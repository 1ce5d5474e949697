//! PNG plots of an evaluation and of a training run: the row-normalised confusion matrix,
//! the reliability diagram, train/eval loss with the learning rate, and the eval metrics per
//! evaluation. Drawn with plotters into an RGB buffer (text in the embedded DejaVu Sans),
//! written as PNG atomically.

use super::metrics::Metrics;
use anyhow::{anyhow, Context, Result};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;
use std::sync::OnceLock;

/// File names the plots are written under.
pub const CONFUSION_PNG: &str = "confusion_matrix.png";
pub const RELIABILITY_PNG: &str = "reliability.png";
pub const LOSS_PNG: &str = "loss.png";
pub const METRICS_PNG: &str = "metrics.png";

/// One optimizer step of a run.
#[derive(Clone, Debug)]
pub struct TrainPoint {
    pub step: usize,
    pub loss: f64,
    pub lr: f64,
}

/// One evaluation of a run: its step and scalar metrics by name.
#[derive(Clone, Debug)]
pub struct EvalPoint {
    pub step: usize,
    pub metrics: Vec<(String, f64)>,
}

/// What a run has logged so far, for the loss and metrics plots.
#[derive(Clone, Debug, Default)]
pub struct History {
    pub train: Vec<TrainPoint>,
    pub eval: Vec<EvalPoint>,
}

impl History {
    /// The value of metric `name` at evaluation `e`.
    fn eval_value(e: &EvalPoint, name: &str) -> Option<f64> {
        e.metrics
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
            .filter(|v| v.is_finite())
    }
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// Tableau 10, matplotlib's default cycle.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

const FONT: &str = "sans-serif";

fn font(size: u32) -> TextStyle<'static> {
    (FONT, size).into_font().color(&BLACK)
}

fn bold(size: u32) -> TextStyle<'static> {
    (FONT, size, FontStyle::Bold).into_font().color(&BLACK)
}

/// Registers the embedded font with plotters (once per process).
fn fonts() -> Result<()> {
    static OK: OnceLock<bool> = OnceLock::new();
    let ok = *OK.get_or_init(|| {
        let a = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
        let b = plotters::style::register_font(FONT, FontStyle::Bold, dejavu::sans::bold());
        a.is_ok() && b.is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(anyhow!("the embedded plot font could not be loaded"))
    }
}

fn err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("drawing a plot: {e}")
}

/// Draws a `w`×`h` picture with `draw` and writes it to `path` as PNG (atomically). Text
/// styles must be made after `fonts()` (plotters looks the font up when a style is made).
fn png(path: &Path, (w, h): (u32, u32), draw: impl FnOnce(&Area) -> Result<()>) -> Result<()> {
    fonts()?;
    let mut buf = vec![255u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        draw(&root)?;
        root.present().map_err(err)?;
    }
    let img = image::RgbImage::from_raw(w, h, buf).context("plot buffer size")?;
    let mut bytes = std::io::Cursor::new(Vec::new());
    img.write_to(&mut bytes, image::ImageFormat::Png)
        .context("encoding a PNG plot")?;
    crate::checkpoint::write_atomic(path, bytes.get_ref())
        .with_context(|| format!("cannot write plot {}", path.display()))
}

/// Text width and height in pixels.
fn text_size(area: &Area, text: &str, style: &TextStyle) -> Result<(u32, u32)> {
    area.estimate_text_size(text, style).map_err(err)
}

/// A colour of matplotlib's "Blues" map at v in [0, 1].
fn blues(v: f64) -> RGBColor {
    const STOPS: [(u8, u8, u8); 5] = [
        (247, 251, 255),
        (198, 219, 239),
        (107, 174, 214),
        (33, 113, 181),
        (8, 48, 107),
    ];
    let v = v.clamp(0.0, 1.0) * (STOPS.len() - 1) as f64;
    let i = (v.floor() as usize).min(STOPS.len() - 2);
    let t = v - i as f64;
    let mix = |a: u8, b: u8| (a as f64 + (b as f64 - a as f64) * t).round() as u8;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// Writes the row-normalised confusion matrix (rows: true class, columns: predicted; each
/// row divided by its number of images), labelled with the class names, to `path`.
pub fn confusion_matrix(path: &Path, m: &Metrics, labels: &[String]) -> Result<()> {
    // Before any text style: plotters looks the font up when a style is made.
    fonts()?;
    let n = m.classes().max(1);
    let name = |c: usize| {
        labels
            .get(c)
            .cloned()
            .unwrap_or_else(|| format!("LABEL_{c}"))
    };
    let cell = (640 / n).clamp(2, 90) as i32;
    let label_px = if cell >= 16 { 15 } else { 11 };
    let tick = font(label_px);
    // Only every k-th class is named when the cells are smaller than the text.
    let every = ((label_px as i32 + 2) / cell + 1).max(1) as usize;
    // Measure the names on a scratch area.
    let (name_w, rotate) = {
        let mut scratch = vec![0u8; 3];
        let area = BitMapBackend::with_buffer(&mut scratch, (1, 1)).into_drawing_area();
        let mut w = 0;
        for c in (0..n).step_by(every) {
            w = w.max(text_size(&area, &name(c), &tick)?.0);
        }
        let y_w = (0..n)
            .step_by(every)
            .map(|c| text_size(&area, &row_label(&name(c), m, c), &tick).map(|s| s.0))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .max()
            .unwrap_or(0);
        (
            (w.min(260), y_w.min(320)),
            w as i32 > cell * every as i32 - 6,
        )
    };
    let side = cell * n as i32;
    let left = name_w.1 as i32 + 48;
    let top = 70;
    let bottom = if rotate { name_w.0 as i32 } else { 20 } + 62;
    let right = 110;
    let (w, h) = ((left + side + right) as u32, (top + side + bottom) as u32);
    png(path, (w, h), |root| {
        let title = format!(
            "Confusion matrix (row-normalised, {} images)",
            m.confusion.iter().flatten().sum::<usize>()
        );
        root.draw_text(
            &title,
            &bold(18).pos(Pos::new(HPos::Center, VPos::Top)),
            (w as i32 / 2, 16),
        )
        .map_err(err)?;
        let show_values = cell >= 30;
        let value_px = if cell >= 56 { 15 } else { 12 };
        for (t, row) in m.confusion.iter().enumerate() {
            let support: usize = row.iter().sum();
            for (p, &v) in row.iter().enumerate() {
                let x0 = left + p as i32 * cell;
                let y0 = top + t as i32 * cell;
                let frac = if support > 0 {
                    v as f64 / support as f64
                } else {
                    0.0
                };
                let fill = if support > 0 {
                    blues(frac)
                } else {
                    RGBColor(235, 235, 235)
                };
                root.draw(&Rectangle::new(
                    [(x0, y0), (x0 + cell, y0 + cell)],
                    fill.filled(),
                ))
                .map_err(err)?;
                if show_values && support > 0 {
                    let color = if frac > 0.55 { WHITE } else { BLACK };
                    let style = font(value_px)
                        .color(&color)
                        .pos(Pos::new(HPos::Center, VPos::Center));
                    let (cx, cy) = (x0 + cell / 2, y0 + cell / 2);
                    if cell >= 56 && v > 0 {
                        // The share, and the count under it.
                        root.draw_text(&format!("{frac:.2}"), &style, (cx, cy - 9))
                            .map_err(err)?;
                        let small = font(14)
                            .color(&color)
                            .pos(Pos::new(HPos::Center, VPos::Center));
                        root.draw_text(&format!("({v})"), &small, (cx, cy + 11))
                            .map_err(err)?;
                    } else {
                        root.draw_text(&format!("{frac:.2}"), &style, (cx, cy))
                            .map_err(err)?;
                    }
                }
            }
        }
        root.draw(&Rectangle::new(
            [(left, top), (left + side, top + side)],
            BLACK.stroke_width(1),
        ))
        .map_err(err)?;
        // Class names: rows (true, with their image counts) and columns (predicted).
        for c in (0..n).step_by(every) {
            let mid = c as i32 * cell + cell / 2;
            let y_style = tick.pos(Pos::new(HPos::Right, VPos::Center));
            root.draw_text(&row_label(&name(c), m, c), &y_style, (left - 6, top + mid))
                .map_err(err)?;
            let x = left + mid;
            if rotate {
                let s = tick
                    .transform(FontTransform::Rotate270)
                    .pos(Pos::new(HPos::Right, VPos::Center));
                root.draw_text(&name(c), &s, (x, top + side + 6))
                    .map_err(err)?;
            } else {
                let s = tick.pos(Pos::new(HPos::Center, VPos::Top));
                root.draw_text(&name(c), &s, (x, top + side + 6))
                    .map_err(err)?;
            }
        }
        let axis = font(16);
        root.draw_text(
            "predicted label",
            &axis.pos(Pos::new(HPos::Center, VPos::Bottom)),
            (left + side / 2, h as i32 - 14),
        )
        .map_err(err)?;
        root.draw_text(
            "true label (images)",
            &axis
                .transform(FontTransform::Rotate270)
                .pos(Pos::new(HPos::Center, VPos::Top)),
            (14, top + side / 2),
        )
        .map_err(err)?;
        colorbar(root, left + side + 24, top, side.max(120))
    })
}

/// "name (n)": a row of the confusion matrix with its number of images.
fn row_label(name: &str, m: &Metrics, c: usize) -> String {
    format!("{name} ({})", m.confusion[c].iter().sum::<usize>())
}

/// The 0..1 colour scale of the confusion matrix, at (x, y), `len` pixels high.
fn colorbar(root: &Area, x: i32, y: i32, len: i32) -> Result<()> {
    for i in 0..len {
        let v = 1.0 - i as f64 / (len - 1).max(1) as f64;
        root.draw(&Rectangle::new(
            [(x, y + i), (x + 18, y + i + 1)],
            blues(v).filled(),
        ))
        .map_err(err)?;
    }
    root.draw(&Rectangle::new(
        [(x, y), (x + 18, y + len)],
        BLACK.stroke_width(1),
    ))
    .map_err(err)?;
    for k in 0..=4 {
        let v = k as f64 / 4.0;
        let yy = y + ((1.0 - v) * (len - 1) as f64).round() as i32;
        root.draw(&PathElement::new(
            vec![(x + 18, yy), (x + 23, yy)],
            BLACK.stroke_width(1),
        ))
        .map_err(err)?;
        root.draw_text(
            &format!("{v:.2}"),
            &font(14).pos(Pos::new(HPos::Left, VPos::Center)),
            (x + 26, yy),
        )
        .map_err(err)?;
    }
    Ok(())
}

/// Writes the reliability diagram: the accuracy of each of the ECE's confidence bins against
/// the diagonal of perfect calibration, the gap to each bin's mean confidence, and below it
/// the share of images per bin.
pub fn reliability(path: &Path, m: &Metrics) -> Result<()> {
    let total = m.calibration.iter().map(|b| b.count).sum::<usize>().max(1) as f64;
    png(path, (760, 860), |root| {
        let title = format!(
            "Reliability diagram (ECE {:.4}, {} bins, {} images)",
            m.ece,
            m.calibration.len(),
            total as usize
        );
        let (head, body) = root.split_vertically(44);
        head.draw_text(
            &title,
            &bold(18).pos(Pos::new(HPos::Center, VPos::Center)),
            (380, 26),
        )
        .map_err(err)?;
        let (upper, lower) = body.split_vertically(560);
        let mut chart = ChartBuilder::on(&upper)
            .margin_left(16)
            .margin_right(24)
            .margin_top(8)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(0f64..1f64, 0f64..1f64)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_labels(11)
            .y_labels(11)
            .x_label_formatter(&|v| format!("{v:.1}"))
            .y_label_formatter(&|v| format!("{v:.1}"))
            .x_desc("confidence (top-1 probability)")
            .y_desc("accuracy")
            .label_style(font(14))
            .axis_desc_style(font(16))
            .light_line_style(TRANSPARENT)
            .bold_line_style(RGBColor(228, 228, 228))
            .draw()
            .map_err(err)?;
        let bar = PALETTE[0];
        let gap = PALETTE[3];
        let bins: Vec<_> = m.calibration.iter().filter(|b| b.count > 0).collect();
        chart
            .draw_series(bins.iter().map(|b| {
                Rectangle::new(
                    [(b.lower, 0.0), (b.upper, b.accuracy)],
                    bar.mix(0.85).filled(),
                )
            }))
            .map_err(err)?
            .label("accuracy of the images in the bin")
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 18, y + 6)], bar.filled()));
        chart
            .draw_series(bins.iter().map(|b| {
                Rectangle::new(
                    [(b.lower, 0.0), (b.upper, b.accuracy)],
                    BLACK.mix(0.6).stroke_width(1),
                )
            }))
            .map_err(err)?;
        // The gap between accuracy and mean confidence: hatched, over or inside the bar.
        let (ox, oy) = upper.get_base_pixel();
        for b in &bins {
            let (lo, hi) = if b.accuracy < b.confidence {
                (b.accuracy, b.confidence)
            } else {
                (b.confidence, b.accuracy)
            };
            let (x0, y0) = chart.backend_coord(&(b.lower, hi));
            let (x1, y1) = chart.backend_coord(&(b.upper, lo));
            hatch(&upper, (x0 - ox, y0 - oy), (x1 - ox, y1 - oy), gap)?;
        }
        chart
            .draw_series(std::iter::empty::<Rectangle<(f64, f64)>>())
            .map_err(err)?
            .label("gap to the mean confidence")
            .legend(move |(x, y)| {
                Rectangle::new([(x, y - 6), (x + 18, y + 6)], gap.mix(0.25).filled())
            });
        chart
            .draw_series(bins.iter().map(|b| {
                let c = b.confidence;
                PathElement::new(vec![(b.lower, c), (b.upper, c)], gap.stroke_width(3))
            }))
            .map_err(err)?
            .label("mean confidence in the bin")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], gap.stroke_width(3)));
        chart
            .draw_series(DashedLineSeries::new(
                vec![(0.0, 0.0), (1.0, 1.0)],
                8,
                6,
                RGBColor(90, 90, 90).stroke_width(2),
            ))
            .map_err(err)?
            .label("perfect calibration")
            .legend(|(x, y)| {
                PathElement::new(
                    vec![(x, y), (x + 18, y)],
                    RGBColor(90, 90, 90).stroke_width(2),
                )
            });
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font(font(14))
            .background_style(WHITE.mix(0.9))
            .border_style(RGBColor(180, 180, 180))
            .draw()
            .map_err(err)?;
        let top_share = m
            .calibration
            .iter()
            .map(|b| b.count as f64 / total)
            .fold(0.0, f64::max);
        let ymax = (top_share * 1.15).clamp(0.05, 1.0);
        let mut hist = ChartBuilder::on(&lower)
            .margin_left(16)
            .margin_right(24)
            .margin_top(16)
            .margin_bottom(6)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(0f64..1f64, 0f64..ymax)
            .map_err(err)?;
        hist.configure_mesh()
            .x_labels(11)
            .y_labels(5)
            .x_label_formatter(&|v| format!("{v:.1}"))
            .y_label_formatter(&|v| format!("{:.0}%", v * 100.0))
            .x_desc("confidence (top-1 probability)")
            .y_desc("share of images")
            .label_style(font(14))
            .axis_desc_style(font(16))
            .light_line_style(TRANSPARENT)
            .bold_line_style(RGBColor(228, 228, 228))
            .draw()
            .map_err(err)?;
        hist.draw_series(m.calibration.iter().filter(|b| b.count > 0).map(|b| {
            Rectangle::new(
                [(b.lower, 0.0), (b.upper, b.count as f64 / total)],
                PALETTE[7].mix(0.8).filled(),
            )
        }))
        .map_err(err)?;
        Ok(())
    })
}

/// A rectangle (pixels, corners (x0, y0) top left and (x1, y1) bottom right) filled lightly
/// and hatched with diagonal lines in `color`.
fn hatch(area: &Area, (x0, y0): (i32, i32), (x1, y1): (i32, i32), color: RGBColor) -> Result<()> {
    if x1 <= x0 || y1 <= y0 {
        return Ok(());
    }
    area.draw(&Rectangle::new(
        [(x0, y0), (x1, y1)],
        color.mix(0.25).filled(),
    ))
    .map_err(err)?;
    let mut c = x0 + y0;
    while c <= x1 + y1 {
        // The line x + y = c inside the rectangle.
        let (xa, xb) = ((c - y1).max(x0), (c - y0).min(x1));
        if xa < xb {
            area.draw(&PathElement::new(
                vec![(xa, c - xa), (xb, c - xb)],
                color.mix(0.9).stroke_width(1),
            ))
            .map_err(err)?;
        }
        c += 7;
    }
    area.draw(&Rectangle::new([(x0, y0), (x1, y1)], color.stroke_width(1)))
        .map_err(err)
}

/// A finite (lo, hi) range of `v` with some room, never empty.
fn range(v: impl Iterator<Item = f64>, floor_zero: bool) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for x in v.filter(|x| x.is_finite()) {
        lo = lo.min(x);
        hi = hi.max(x);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if floor_zero && lo >= 0.0 {
        lo = 0.0;
    }
    let pad = ((hi - lo) * 0.05).max(hi.abs() * 0.05).max(1e-12);
    (
        if floor_zero && lo == 0.0 {
            0.0
        } else {
            lo - pad
        },
        hi + pad,
    )
}

/// The steps axis: 0 to the last step seen (at least 1).
fn step_range(h: &History) -> f64 {
    let last = h
        .train
        .iter()
        .map(|p| p.step)
        .chain(h.eval.iter().map(|e| e.step))
        .max()
        .unwrap_or(1);
    last.max(1) as f64
}

/// Tick labels with as many decimals as a span of `span` needs.
fn tick_format(span: f64) -> impl Fn(&f64) -> String {
    let decimals = if span >= 20.0 {
        0
    } else if span >= 0.5 {
        1
    } else if span >= 0.05 {
        2
    } else {
        3
    };
    move |v: &f64| format!("{v:.decimals$}")
}

/// A learning rate as a tick label: 0, or 3 significant digits in scientific notation.
fn lr_format(v: &f64) -> String {
    if *v == 0.0 {
        "0".to_string()
    } else {
        format!("{v:.1e}")
    }
}

/// TensorBoard's smoothing: a debiased exponential moving average with weight `w`.
fn smooth(v: &[(f64, f64)], w: f64) -> Vec<(f64, f64)> {
    let mut last = 0.0;
    let mut out = Vec::with_capacity(v.len());
    for (i, &(x, y)) in v.iter().enumerate() {
        last = last * w + (1.0 - w) * y;
        out.push((x, last / (1.0 - w.powi(i as i32 + 1))));
    }
    out
}

/// How a series is drawn: colour, line width, marker.
#[derive(Clone, Copy)]
struct Look {
    color: RGBAColor,
    width: u32,
    marker: Option<Marker>,
}

#[derive(Clone, Copy)]
enum Marker {
    Circle,
    Square,
    Triangle,
}

/// A legend laid out in one row (wrapping when needed) across the top of `area`.
fn legend_row(area: &Area, entries: &[(String, Look)], y: i32) -> Result<()> {
    let style = font(14).pos(Pos::new(HPos::Left, VPos::Center));
    let mut widths = Vec::new();
    for (text, _) in entries {
        widths.push(text_size(area, text, &style)?.0 as i32 + 42);
    }
    let (aw, _) = area.dim_in_pixel();
    let mut rows: Vec<Vec<usize>> = vec![Vec::new()];
    let mut used = 0;
    for (i, w) in widths.iter().enumerate() {
        if used + w > aw as i32 - 40 && !rows.last().is_some_and(|r| r.is_empty()) {
            rows.push(Vec::new());
            used = 0;
        }
        used += w;
        if let Some(r) = rows.last_mut() {
            r.push(i);
        }
    }
    for (r, row) in rows.iter().enumerate() {
        let total: i32 = row.iter().map(|&i| widths[i]).sum();
        let mut x = (aw as i32 - total) / 2;
        let yy = y + r as i32 * 22;
        for &i in row {
            let (text, look) = &entries[i];
            area.draw(&PathElement::new(
                vec![(x, yy), (x + 26, yy)],
                look.color.stroke_width(look.width.min(4)),
            ))
            .map_err(err)?;
            marker(area, look, (x + 13, yy))?;
            area.draw_text(text, &style, (x + 32, yy)).map_err(err)?;
            x += widths[i];
        }
    }
    Ok(())
}

/// Draws a series' marker at a pixel.
fn marker(area: &Area, look: &Look, (x, y): (i32, i32)) -> Result<()> {
    let style = look.color.filled();
    match look.marker {
        None => Ok(()),
        Some(Marker::Circle) => area.draw(&Circle::new((x, y), 4, style)).map_err(err),
        Some(Marker::Square) => area
            .draw(&Rectangle::new([(x - 4, y - 4), (x + 4, y + 4)], style))
            .map_err(err),
        Some(Marker::Triangle) => area
            .draw(&Polygon::new(
                vec![(x, y - 5), (x - 5, y + 4), (x + 5, y + 4)],
                style,
            ))
            .map_err(err),
    }
}

type Chart<'a, 'b> =
    ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// Draws one series into a chart: its line and its markers.
fn series(chart: &mut Chart, area: &Area, pts: &[(f64, f64)], look: Look) -> Result<()> {
    chart
        .draw_series(LineSeries::new(
            pts.iter().copied(),
            look.color.stroke_width(look.width),
        ))
        .map_err(err)?;
    if look.marker.is_some() || pts.len() == 1 {
        let look = Look {
            marker: look.marker.or(Some(Marker::Circle)),
            ..look
        };
        let (ox, oy) = area.get_base_pixel();
        for &p in pts {
            let (x, y) = chart.backend_coord(&p);
            marker(area, &look, (x - ox, y - oy))?;
        }
    }
    Ok(())
}

/// A chart with the common look: title, axis names, light grid.
fn chart<'a, 'b>(
    area: &'a Area<'b>,
    x: (f64, f64),
    y: (f64, f64),
    names: (&str, &str),
    y_fmt: &dyn Fn(&f64) -> String,
) -> Result<Chart<'a, 'b>> {
    let mut c = ChartBuilder::on(area)
        .margin_left(12)
        .margin_right(24)
        .margin_top(6)
        .margin_bottom(6)
        .x_label_area_size(44)
        .y_label_area_size(70)
        .build_cartesian_2d(x.0..x.1, y.0..y.1)
        .map_err(err)?;
    // Steps are whole numbers: no decimals once the axis spans a few of them.
    let x_fmt = tick_format(if x.1 - x.0 >= 5.0 { 100.0 } else { x.1 - x.0 });
    c.configure_mesh()
        .x_desc(names.0)
        .y_desc(names.1)
        .x_label_formatter(&x_fmt)
        .y_label_formatter(y_fmt)
        .x_labels(10)
        .y_labels(8)
        .label_style(font(14))
        .axis_desc_style(font(16))
        .light_line_style(TRANSPARENT)
        .bold_line_style(RGBColor(228, 228, 228))
        .draw()
        .map_err(err)?;
    Ok(c)
}

/// A panel of a figure: its title at the top, a legend row under it, and the chart area.
fn panel<'b>(area: &Area<'b>, title: &str, legend: &[(String, Look)]) -> Result<Area<'b>> {
    let (w, _) = area.dim_in_pixel();
    area.draw_text(
        title,
        &bold(18).pos(Pos::new(HPos::Center, VPos::Top)),
        (w as i32 / 2, 8),
    )
    .map_err(err)?;
    legend_row(area, legend, 44)?;
    Ok(area.margin(56, 0, 0, 0))
}

fn look(color: RGBColor, width: u32, marker: Option<Marker>) -> Look {
    Look {
        color: color.to_rgba(),
        width,
        marker,
    }
}

/// Writes the loss plot: training loss per step (smoothed when there are many) and eval loss
/// per evaluation (top), the learning rate per step (bottom).
pub fn loss(path: &Path, h: &History) -> Result<()> {
    fonts()?;
    png(path, (1000, 860), |root| {
        let (upper, lower) = root.split_vertically(560);
        let xmax = step_range(h);
        let eval: Vec<(f64, f64)> = h
            .eval
            .iter()
            .filter_map(|e| Some((e.step as f64, History::eval_value(e, "loss")?)))
            .collect();
        let train: Vec<(f64, f64)> = h
            .train
            .iter()
            .filter(|p| p.loss.is_finite())
            .map(|p| (p.step as f64, p.loss))
            .collect();
        let many = train.len() > 50;
        let raw = if many {
            look(PALETTE[0], 1, None).with_alpha(0.3)
        } else {
            look(PALETTE[0], 2, None)
        };
        let smoothed = look(PALETTE[0], 2, None);
        let eval_look = look(PALETTE[1], 2, Some(Marker::Circle));
        let mut legend = vec![("train loss (per step)".to_string(), raw)];
        if many {
            legend.push(("train loss (smoothed, 0.9)".to_string(), smoothed));
        }
        if let Some(l) = eval.last() {
            legend.push((
                format!("eval loss (per evaluation; last {:.4})", l.1),
                eval_look,
            ));
        }
        let area = panel(&upper, "Loss", &legend)?;
        let (lo, hi) = range(train.iter().chain(&eval).map(|p| p.1), true);
        let fmt = tick_format(hi - lo);
        let mut c = chart(
            &area,
            (0.0, xmax),
            (lo, hi),
            ("optimizer step", "cross-entropy loss"),
            &fmt,
        )?;
        series(&mut c, &area, &train, raw)?;
        if many {
            series(&mut c, &area, &smooth(&train, 0.9), smoothed)?;
        }
        if !eval.is_empty() {
            series(&mut c, &area, &eval, eval_look)?;
        }
        let lr: Vec<(f64, f64)> = h.train.iter().map(|p| (p.step as f64, p.lr)).collect();
        let (_, lr_hi) = range(lr.iter().map(|p| p.1), true);
        let lr_look = look(PALETTE[2], 2, None);
        let area = panel(
            &lower,
            "Learning rate",
            &[("learning rate (per step)".to_string(), lr_look)],
        )?;
        let mut c = chart(
            &area,
            (0.0, xmax),
            (0.0, lr_hi),
            ("optimizer step", "learning rate"),
            &lr_format,
        )?;
        series(&mut c, &area, &lr, lr_look)
    })
}

impl Look {
    fn with_alpha(self, a: f64) -> Look {
        Look {
            color: self.color.mix(a),
            ..self
        }
    }
}

/// A panel of metrics.png: title, metrics (name, legend name), fixed [0, 1] scale or not.
type MetricPanel = (&'static str, &'static [(&'static str, &'static str)], bool);

/// The panels of metrics.png.
const METRIC_PANELS: [MetricPanel; 4] = [
    (
        "Accuracy",
        &[
            ("accuracy", "accuracy"),
            ("top5_accuracy", "top-5 accuracy"),
        ],
        true,
    ),
    (
        "Macro averages over classes",
        &[
            ("macro_precision", "precision"),
            ("macro_recall", "recall"),
            ("macro_f1", "F1"),
        ],
        true,
    ),
    (
        "Ranking (one-vs-rest, macro)",
        &[("auroc_macro", "AUROC"), ("auprc_macro", "AUPRC")],
        true,
    ),
    (
        "Calibration error (lower is better)",
        &[("ece", "ECE, 15 bins")],
        false,
    ),
];

/// Writes the eval metrics per evaluation, in four panels: accuracy and top-5; macro
/// precision, recall and F1; AUROC and AUPRC; ECE.
pub fn metrics(path: &Path, h: &History) -> Result<()> {
    fonts()?;
    png(path, (1200, 900), |root| {
        let xmax = step_range(h);
        let areas = root.split_evenly((2, 2));
        let markers = [Marker::Circle, Marker::Square, Marker::Triangle];
        let mut color = 0;
        for (area, (title, names, unit)) in areas.iter().zip(METRIC_PANELS) {
            let mut lines = Vec::new();
            for (k, (name, pretty)) in names.iter().enumerate() {
                let pts: Vec<(f64, f64)> = h
                    .eval
                    .iter()
                    .filter_map(|e| Some((e.step as f64, History::eval_value(e, name)?)))
                    .collect();
                // Earlier lines wider, so equal values still show both colours.
                let width = 2 + (names.len() - 1 - k) as u32;
                let l = look(PALETTE[color % PALETTE.len()], width, Some(markers[k % 3]));
                color += 1;
                let legend = match pts.last() {
                    Some(p) => format!("{pretty} (last {:.4})", p.1),
                    None => format!("{pretty} (not defined)"),
                };
                lines.push((legend, l, pts));
            }
            let legend: Vec<(String, Look)> =
                lines.iter().map(|(t, l, _)| (t.clone(), *l)).collect();
            let inner = panel(area, title, &legend)?;
            let y = if unit {
                (0.0, 1.0)
            } else {
                let (_, hi) = range(lines.iter().flat_map(|l| l.2.iter().map(|p| p.1)), true);
                (0.0, hi)
            };
            let fmt = tick_format(y.1 - y.0);
            let mut c = chart(&inner, (0.0, xmax), y, ("optimizer step", "value"), &fmt)?;
            for (_, l, pts) in &lines {
                series(&mut c, &inner, pts, *l)?;
            }
        }
        Ok(())
    })
}

/// Writes the evaluation's two plots (confusion matrix and reliability diagram) into `dir`,
/// creating it; returns their paths.
pub fn eval_plots(dir: &Path, m: &Metrics, labels: &[String]) -> Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create plot folder {}", dir.display()))?;
    let (cm, rel) = (dir.join(CONFUSION_PNG), dir.join(RELIABILITY_PNG));
    confusion_matrix(&cm, m, labels)?;
    reliability(&rel, m)?;
    Ok(vec![cm, rel])
}
