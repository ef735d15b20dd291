//! Figures, each written as PNG and SVG into `analysis/figures/`:
//!
//! - `<run>__<method>__evolution`: the per-step mean and interquartile band
//!   of the norm (`frobenius`) and the entropy (`entropy_abs`) over the seen
//!   and the unseen probe images, beside the train and test loss;
//! - `<run>__<method>__heatmaps`: the maps of a few probe images at a few
//!   checkpoints over the grayscale input image.
//!
//! Text is drawn with a TrueType font found at run time (see [`ensure_font`]).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{anyhow, Context};
use common::artifacts::write_atomic;
use common::image::ImageShape;
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::element::{Drawable, PointCollection};
use plotters::prelude::*;
use plotters::style::FontStyle;

use common::artifacts::tables::by_step::SplitSelection;
use common::artifacts::tables::metrics::Metric;
use common::measures::Measure;

use crate::by_step::StepTable;
use crate::inputs::Metrics;

/// Environment variable naming a TTF/OTF font file to draw text with.
pub const FONT_ENV: &str = "ATTRIBUTION_TRENDS_FONT";

/// Fonts tried in order when [`FONT_ENV`] is not set.
pub const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
    "/Library/Fonts/Arial.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
];

const FAMILY: &str = "sans-serif";

static FONT: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// Registers a font for the figures' text, once per process: the file named
/// by `ATTRIBUTION_TRENDS_FONT` if set, else the first of
/// [`FONT_CANDIDATES`] that loads. Fails with a message saying what to
/// install when none does.
pub fn ensure_font() -> anyhow::Result<PathBuf> {
    FONT.get_or_init(|| {
        let candidates: Vec<PathBuf> = match std::env::var_os(FONT_ENV) {
            Some(p) => vec![PathBuf::from(p)],
            None => FONT_CANDIDATES.iter().map(PathBuf::from).collect(),
        };
        let mut tried = Vec::new();
        for path in candidates {
            match std::fs::read(&path) {
                Ok(bytes) => {
                    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                    let ok = [FontStyle::Normal, FontStyle::Bold]
                        .into_iter()
                        .all(|style| plotters::style::register_font(FAMILY, style, bytes).is_ok());
                    if ok {
                        tracing::debug!("figures: text font {}", path.display());
                        return Ok(path);
                    }
                    tried.push(format!("{} (not a TrueType/OpenType font)", path.display()));
                }
                Err(e) => tried.push(format!("{} ({e})", path.display())),
            }
        }
        Err(no_font_message(&tried))
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

/// The error when no font loads: what was tried and what to install.
pub fn no_font_message(tried: &[String]) -> String {
    format!(
        "no font for the figures' text; tried: {}. Install Debian's `fonts-dejavu-core` (apt-get install \
         fonts-dejavu-core) or set {FONT_ENV} to a .ttf file (or pass --no-figures)",
        tried.join(", ")
    )
}

/// Something drawable on any plotters backend.
pub trait Figure {
    fn size(&self) -> (u32, u32);
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> anyhow::Result<()>;
}

fn drawing<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("drawing failed: {e}")
}

/// Draws the grid and axes of a chart over training steps, in the figures'
/// common style.
fn draw_step_mesh<DB: DrawingBackend>(
    chart: &mut ChartContext<'_, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    y_desc: &str,
) -> anyhow::Result<()> {
    chart
        .configure_mesh()
        .x_desc("training step")
        .y_desc(y_desc)
        .label_style((FAMILY, 14))
        .axis_desc_style((FAMILY, 16))
        .x_labels(6)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| tick(*v))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(drawing)
}

/// Draws a chart's series labels in the figures' common style at `corner`.
fn draw_legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    corner: SeriesLabelPosition,
) -> anyhow::Result<()> {
    chart
        .configure_series_labels()
        .label_font((FAMILY, 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .position(corner)
        .draw()
        .map_err(drawing)
}

/// Writes `<dir>/<stem>.png` and `<dir>/<stem>.svg` (each atomically);
/// returns their paths.
pub fn save<F: Figure>(figure: &F, dir: &Path, stem: &str) -> anyhow::Result<[PathBuf; 2]> {
    ensure_font()?;
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create folder", dir.display()))?;
    let png = dir.join(format!("{stem}.png"));
    let svg = dir.join(format!("{stem}.svg"));
    let (width, height) = figure.size();
    let mut pixels = vec![0u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(drawing)?;
        figure.draw(&root).with_context(|| format!("{}", png.display()))?;
        root.present().map_err(drawing)?;
    }
    write_atomic(&png, &encode_png(&pixels, width, height).with_context(|| format!("{}", png.display()))?)?;

    let mut text = String::new();
    {
        let root = SVGBackend::with_string(&mut text, figure.size()).into_drawing_area();
        root.fill(&WHITE).map_err(drawing)?;
        figure.draw(&root).with_context(|| format!("{}", svg.display()))?;
        root.present().map_err(drawing)?;
    }
    write_atomic(&svg, text.as_bytes())?;
    Ok([png, svg])
}

/// 8-bit RGB pixels as PNG bytes (written atomically by the caller, like
/// every other artifact).
fn encode_png(pixels: &[u8], width: u32, height: u32) -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.write_header()?.write_image_data(pixels)?;
    Ok(bytes)
}

const SEEN: RGBColor = RGBColor(31, 119, 180);
const UNSEEN: RGBColor = RGBColor(255, 127, 14);
const TRAIN: RGBColor = RGBColor(44, 160, 44);
const TEST: RGBColor = RGBColor(214, 39, 40);

/// The evolution figure of one (run, method).
pub struct Evolution<'a> {
    pub title: String,
    /// The seen and unseen tables of this (run, method) (others ignored).
    pub tables: Vec<&'a StepTable>,
    /// (measure, panel title) for each measure panel.
    pub measures: Vec<(Measure, String)>,
    pub metrics: &'a Metrics,
}

struct Band {
    x: Vec<f64>,
    mean: Vec<f64>,
    q25: Vec<f64>,
    q75: Vec<f64>,
}

fn band(table: &StepTable, measure: Measure) -> Option<Band> {
    let i = table.measures.iter().position(|m| *m == measure)?;
    let mut b = Band { x: Vec::new(), mean: Vec::new(), q25: Vec::new(), q75: Vec::new() };
    for (k, d) in table.stats[i].iter().enumerate() {
        if let (Some(m), Some(lo), Some(hi)) = (d.mean, d.q25, d.q75) {
            b.x.push(table.steps[k] as f64);
            b.mean.push(m);
            b.q25.push(lo);
            b.q75.push(hi);
        }
    }
    (!b.x.is_empty()).then_some(b)
}

/// The legend corner covering the fewest data points (legend box taken
/// as 45% of the width and 35% of the height of the plot).
fn legend_corner(points: &[(f64, f64)], x: &std::ops::Range<f64>, y: &std::ops::Range<f64>) -> SeriesLabelPosition {
    let fx = |v: f64| (v - x.start) / (x.end - x.start);
    let fy = |v: f64| (v - y.start) / (y.end - y.start);
    let corners = [
        (SeriesLabelPosition::UpperRight, 0.55, 1.0, 0.65, 1.0),
        (SeriesLabelPosition::UpperLeft, 0.0, 0.45, 0.65, 1.0),
        (SeriesLabelPosition::LowerRight, 0.55, 1.0, 0.0, 0.35),
        (SeriesLabelPosition::LowerLeft, 0.0, 0.45, 0.0, 0.35),
    ];
    let mut best = (usize::MAX, SeriesLabelPosition::UpperRight);
    for (corner, x0, x1, y0, y1) in corners {
        let n = points.iter().filter(|(a, b)| (x0..=x1).contains(&fx(*a)) && (y0..=y1).contains(&fy(*b))).count();
        if n < best.0 {
            best = (n, corner);
        }
    }
    best.1
}

/// A compact axis label: no trailing zeros, scientific only for extremes.
fn tick(v: f64) -> String {
    let a = v.abs();
    if v == 0.0 {
        return "0".into();
    }
    if a >= 1e5 || a < 1e-3 {
        return format!("{v:.1e}");
    }
    let text = if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    };
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

/// A padded range covering `values` (never empty).
fn range(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (lo, hi) = values.filter(|v| v.is_finite()).fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    if !lo.is_finite() {
        return 0.0..1.0;
    }
    let pad = if hi > lo { (hi - lo) * 0.05 } else { lo.abs().max(1.0) * 0.05 };
    (lo - pad)..(hi + pad)
}

impl Figure for Evolution<'_> {
    fn size(&self) -> (u32, u32) {
        (520 * (self.measures.len() as u32 + 1), 500)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> anyhow::Result<()> {
        let root = root.titled(&self.title, (FAMILY, 24).into_font()).map_err(drawing)?;
        let panels = root.split_evenly((1, self.measures.len() + 1));
        let seen_unseen: Vec<(&StepTable, RGBColor)> = self
            .tables
            .iter()
            .filter_map(|t| match t.split {
                SplitSelection::Seen => Some((*t, SEEN)),
                SplitSelection::Unseen => Some((*t, UNSEEN)),
                SplitSelection::All => None,
            })
            .collect();
        let all_steps = self.tables.iter().flat_map(|t| t.steps.iter().map(|&s| s as f64));
        let x_range = range(all_steps.chain(self.metrics.step.iter().map(|&s| s as f64)));
        for ((measure, panel_title), area) in self.measures.iter().zip(&panels) {
            let bands: Vec<(Band, RGBColor, SplitSelection)> =
                seen_unseen.iter().filter_map(|(t, c)| band(t, *measure).map(|b| (b, *c, t.split))).collect();
            let y_range = range(bands.iter().flat_map(|(b, _, _)| b.q25.iter().chain(&b.q75).chain(&b.mean).copied()));
            let points: Vec<(f64, f64)> = bands
                .iter()
                .flat_map(|(b, _, _)| {
                    let x = b.x.iter().copied();
                    x.clone()
                        .zip(b.q25.iter().copied())
                        .chain(x.clone().zip(b.q75.iter().copied()))
                        .chain(x.zip(b.mean.iter().copied()))
                })
                .collect();
            let corner = legend_corner(&points, &x_range, &y_range);
            let mut chart = ChartBuilder::on(area)
                .caption(panel_title, (FAMILY, 20))
                .margin(12)
                .x_label_area_size(45)
                .y_label_area_size(70)
                .build_cartesian_2d(x_range.clone(), y_range)
                .map_err(drawing)?;
            draw_step_mesh(&mut chart, measure.name())?;
            for (b, color, split) in &bands {
                let mut outline: Vec<(f64, f64)> = b.x.iter().copied().zip(b.q75.iter().copied()).collect();
                outline.extend(b.x.iter().copied().zip(b.q25.iter().copied()).rev());
                chart
                    .draw_series(std::iter::once(Polygon::new(outline, color.mix(0.18).filled())))
                    .map_err(drawing)?
                    .label(format!("{split}: interquartile range"))
                    .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 18, y + 5)], color.mix(0.25).filled()));
                chart
                    .draw_series(LineSeries::new(b.x.iter().copied().zip(b.mean.iter().copied()), color.stroke_width(2)))
                    .map_err(drawing)?
                    .label(format!("{split}: mean"))
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
            }
            draw_legend(&mut chart, corner)?;
        }

        // Losses.
        let area = panels.last().expect("at least one panel");
        let series: Vec<(&str, RGBColor, Vec<(f64, f64)>)> =
            [("train loss (batch)", TRAIN, Metric::TrainLoss), ("test loss", TEST, Metric::TestLoss)]
                .into_iter()
                .map(|(label, color, metric)| {
                    let values = self.metrics.column(metric);
                    let points = self.metrics.step.iter().zip(values).filter_map(|(&s, v)| v.map(|v| (s as f64, v))).collect();
                    (label, color, points)
                })
                .collect();
        let y_range = range(series.iter().flat_map(|(_, _, p)| p.iter().map(|(_, y)| *y)));
        let y_range = y_range.start.min(0.0)..y_range.end;
        let points: Vec<(f64, f64)> = series.iter().flat_map(|(_, _, p)| p.iter().copied()).collect();
        let corner = legend_corner(&points, &x_range, &y_range);
        let mut chart = ChartBuilder::on(area)
            .caption("loss", (FAMILY, 20))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(x_range, y_range)
            .map_err(drawing)?;
        draw_step_mesh(&mut chart, "cross-entropy loss")?;
        for (label, color, points) in series {
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(drawing)?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        }
        draw_legend(&mut chart, corner)?;
        Ok(())
    }
}

/// One map in the heatmap strip.
pub struct HeatmapCell {
    pub step: i64,
    pub epoch: f64,
    pub height: usize,
    pub width: usize,
    pub map: Vec<f32>,
    pub prediction: i64,
}

/// One probe image and its maps at the chosen checkpoints.
pub struct HeatmapRow {
    pub probe_id: i64,
    pub split: String,
    pub label: i64,
    /// The image's bytes, C·H·W.
    pub image: Vec<u8>,
    pub shape: ImageShape,
    pub cells: Vec<HeatmapCell>,
}

/// The heatmap strip of one (run, method): rows are probe images, the first
/// column the input, the others the maps at increasing steps.
pub struct Heatmaps {
    pub title: String,
    pub rows: Vec<HeatmapRow>,
}

const LABEL_W: i32 = 150;
const HEADER_H: i32 = 70;
const FOOTER_H: i32 = 80;
const GAP: i32 = 10;
const CAPTION_H: i32 = 22;

impl Heatmaps {
    fn scale(&self) -> i32 {
        let side = self.rows.first().map(|r| r.shape.height.max(r.shape.width)).unwrap_or(28) as i32;
        (150 / side).max(1)
    }

    fn cell_size(&self) -> (i32, i32) {
        let s = self.scale();
        let shape = self.rows.first().map(|r| r.shape).unwrap_or(ImageShape::GRAY_28);
        (shape.width as i32 * s, shape.height as i32 * s)
    }

    fn columns(&self) -> usize {
        1 + self.rows.iter().map(|r| r.cells.len()).max().unwrap_or(0)
    }
}

/// Luminance of an image in [0, 1] per pixel (H·W).
fn grayscale(image: &[u8], shape: ImageShape) -> Vec<f64> {
    let plane = shape.height * shape.width;
    (0..plane)
        .map(|p| {
            if shape.channels >= 3 {
                (0.299 * image[p] as f64 + 0.587 * image[plane + p] as f64 + 0.114 * image[2 * plane + p] as f64) / 255.0
            } else {
                image[p] as f64 / 255.0
            }
        })
        .collect()
}

/// The 99.5th percentile of |map| (robust to a few extreme pixels); 1 for
/// an all-zero map.
fn robust_scale(map: &[f32]) -> f64 {
    let mut a: Vec<f64> = map.iter().map(|v| (*v as f64).abs()).filter(|v| v.is_finite()).collect();
    if a.is_empty() {
        return 1.0;
    }
    a.sort_by(|x, y| x.total_cmp(y));
    let s = a[((a.len() - 1) as f64 * 0.995).round() as usize];
    if s > 0.0 {
        s
    } else {
        a.last().copied().filter(|v| *v > 0.0).unwrap_or(1.0)
    }
}

/// Overlay colour of a gray level `g` in [0, 1] and a relevance `v` in
/// [-1, 1]: red for positive, blue for negative, opacity growing with |v|.
fn overlay(g: f64, v: f64) -> RGBColor {
    let base = 30.0 + 0.75 * 255.0 * g;
    let (r, gr, b) = if v >= 0.0 { (230.0, 25.0, 25.0) } else { (25.0, 90.0, 240.0) };
    let alpha = v.abs().clamp(0.0, 1.0).powf(0.7) * 0.9;
    let mix = |c: f64| (base * (1.0 - alpha) + c * alpha).round().clamp(0.0, 255.0) as u8;
    RGBColor(mix(r), mix(gr), mix(b))
}

impl Figure for Heatmaps {
    fn size(&self) -> (u32, u32) {
        let (cw, ch) = self.cell_size();
        let w = LABEL_W + self.columns() as i32 * (cw + GAP) + GAP;
        let h = HEADER_H + self.rows.len() as i32 * (ch + CAPTION_H + GAP) + FOOTER_H;
        (w.max(700) as u32, h as u32)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> anyhow::Result<()> {
        let s = self.scale();
        let (cw, ch) = self.cell_size();
        let text = |size: u32| TextStyle::from((FAMILY, size).into_font()).color(&BLACK);
        root.draw(&Text::new(self.title.clone(), (GAP, 10), text(20))).map_err(drawing)?;
        let x_of = |col: usize| LABEL_W + col as i32 * (cw + GAP);
        root.draw(&Text::new("input", (x_of(0), HEADER_H - 22), text(15))).map_err(drawing)?;
        if let Some(first) = self.rows.first() {
            for (c, cell) in first.cells.iter().enumerate() {
                root.draw(&Text::new(format!("step {}", cell.step), (x_of(c + 1), HEADER_H - 40), text(15))).map_err(drawing)?;
                root.draw(&Text::new(format!("epoch {:.2}", cell.epoch), (x_of(c + 1), HEADER_H - 22), text(13)))
                    .map_err(drawing)?;
            }
        }
        for (r, row) in self.rows.iter().enumerate() {
            let y0 = HEADER_H + r as i32 * (ch + CAPTION_H + GAP);
            root.draw(&Text::new(format!("probe #{}", row.probe_id), (GAP, y0 + ch / 2 - 20), text(15))).map_err(drawing)?;
            root.draw(&Text::new(format!("{}, label {}", row.split, row.label), (GAP, y0 + ch / 2), text(13)))
                .map_err(drawing)?;
            let gray = grayscale(&row.image, row.shape);
            let (h, w) = (row.shape.height, row.shape.width);
            let pixel = |x0: i32, px: usize, py: usize, color: RGBColor| {
                let (x, y) = (x0 + px as i32 * s, y0 + py as i32 * s);
                Rectangle::new([(x, y), (x + s, y + s)], color.filled())
            };
            let input = (0..h * w).map(|p| {
                let v = (gray[p] * 255.0).round() as u8;
                pixel(x_of(0), p % w, p / w, RGBColor(v, v, v))
            });
            draw_all(root, input)?;
            for (c, cell) in row.cells.iter().enumerate() {
                let scale = robust_scale(&cell.map);
                let x0 = x_of(c + 1);
                let pixels = (0..h * w).map(|p| {
                    let (px, py) = (p % w, p / w);
                    // nearest map pixel (maps may be coarser than the image)
                    let (mx, my) = (px * cell.width / w, py * cell.height / h);
                    let v = cell.map.get(my * cell.width + mx).copied().unwrap_or(0.0) as f64 / scale;
                    pixel(x0, px, py, overlay(gray[p], if v.is_finite() { v } else { 0.0 }))
                });
                draw_all(root, pixels)?;
                let correct = cell.prediction == row.label;
                let color = if correct { RGBColor(30, 130, 40) } else { RGBColor(200, 30, 30) };
                root.draw(&Text::new(
                    format!("pred {}{}", cell.prediction, if correct { "" } else { " (wrong)" }),
                    (x0, y0 + ch + 3),
                    TextStyle::from((FAMILY, 13).into_font()).color(&color),
                ))
                .map_err(drawing)?;
            }
        }
        // Colour key.
        let y = HEADER_H + self.rows.len() as i32 * (ch + CAPTION_H + GAP) + 8;
        let bar_w = 240;
        for i in 0..bar_w {
            let v = i as f64 / (bar_w - 1) as f64 * 2.0 - 1.0;
            root.draw(&Rectangle::new([(GAP + i, y), (GAP + i + 1, y + 14)], overlay(0.5, v).filled())).map_err(drawing)?;
        }
        root.draw(&Text::new("negative", (GAP, y + 18), text(13))).map_err(drawing)?;
        root.draw(&Text::new("0", (GAP + bar_w / 2 - 3, y + 18), text(13))).map_err(drawing)?;
        root.draw(&Text::new("positive", (GAP + bar_w - 50, y + 18), text(13))).map_err(drawing)?;
        root.draw(&Text::new(
            "relevance over the grayscale input; each map scaled to its own 99.5th percentile of |value|",
            (GAP, y + 40),
            text(13),
        ))
        .map_err(drawing)?;
        Ok(())
    }
}

/// Draws many elements on a drawing area.
fn draw_all<DB, E, I>(root: &DrawingArea<DB, Shift>, elements: I) -> anyhow::Result<()>
where
    DB: DrawingBackend,
    I: IntoIterator<Item = E>,
    for<'b> &'b E: PointCollection<'b, (i32, i32)>,
    E: Drawable<DB>,
{
    for e in elements {
        root.draw(&e).map_err(drawing)?;
    }
    Ok(())
}

/// Evenly spaced picks of `k` items out of `n` (first and last included).
pub fn spread(n: usize, k: usize) -> Vec<usize> {
    if n <= k {
        return (0..n).collect();
    }
    let mut picks: Vec<usize> = (0..k).map(|i| ((i * (n - 1)) as f64 / (k - 1).max(1) as f64).round() as usize).collect();
    picks.dedup();
    picks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_picks_first_and_last() {
        assert_eq!(spread(3, 5), [0, 1, 2]);
        assert_eq!(spread(11, 5), [0, 3, 5, 8, 10]);
        assert_eq!(spread(100, 1), [0]);
    }

    #[test]
    fn missing_font_message_says_what_to_install() {
        let m = no_font_message(&["/nope.ttf (No such file)".into()]);
        assert!(m.contains("/nope.ttf") && m.contains("fonts-dejavu-core") && m.contains(FONT_ENV), "{m}");
    }

    #[test]
    fn ticks_are_compact() {
        assert_eq!(tick(2000.0), "2000");
        assert_eq!(tick(1.5), "1.5");
        assert_eq!(tick(0.25), "0.25");
        assert_eq!(tick(0.0), "0");
        assert_eq!(tick(2.5e-5), "2.5e-5");
    }

    #[test]
    fn robust_scale_ignores_extremes() {
        let mut map = vec![1.0f32; 999];
        map.push(1000.0);
        assert_eq!(robust_scale(&map), 1.0);
        assert_eq!(robust_scale(&[0.0, 0.0]), 1.0);
    }
}
