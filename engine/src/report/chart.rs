//! One SVG chart of a few series against a shared x axis, drawn with `plotters`' SVG
//! backend. Without font features plotters cannot measure text, but the SVG backend writes
//! every label as an SVG `<text>` element that the browser lays out, so the axes are
//! labelled all the same; only the legend box width is an estimate.

use plotters::prelude::*;

/// The most points a series is drawn with; longer runs are strided (see [`stride`]).
pub const MAX_POINTS: usize = 2000;

/// Width and height of every chart, in SVG user units (the page scales them to fit).
const SIZE: (u32, u32) = (640, 320);

pub type Rgb = RGBColor;

/// A colour-blind-friendly palette (Okabe-Ito).
pub const BLUE: RGBColor = RGBColor(0, 114, 178);
pub const ORANGE: RGBColor = RGBColor(230, 159, 0);
pub const GREEN: RGBColor = RGBColor(0, 158, 115);
pub const VERMILION: RGBColor = RGBColor(213, 94, 0);
pub const PURPLE: RGBColor = RGBColor(204, 121, 167);
pub const GREY: RGBColor = RGBColor(90, 90, 90);

pub enum Kind {
    Line,
    /// A dot per point, no line (validation losses).
    Markers,
    /// Filled down to y = 0 (stacked parts are given as cumulative sums, top one first).
    Area,
}

pub struct Series {
    pub label: String,
    pub color: RGBColor,
    pub kind: Kind,
    pub points: Vec<(f64, f64)>,
}

impl Series {
    /// A series of the finite points among `points` (NaN and infinite values are skipped).
    pub fn new(label: &str, color: RGBColor, kind: Kind, points: impl IntoIterator<Item = (f64, f64)>) -> Self {
        let points = points.into_iter().filter(|(x, y)| x.is_finite() && y.is_finite()).collect();
        Self { label: label.to_string(), color, kind, points }
    }
}

pub struct Chart<'a> {
    pub title: &'a str,
    pub x_desc: &'a str,
    pub y_desc: &'a str,
    pub series: Vec<Series>,
    /// Horizontal reference lines (label, y), e.g. the memory budget.
    pub hlines: Vec<(String, f64)>,
    /// Tick labels of the y axis.
    pub y_fmt: &'a dyn Fn(f64) -> String,
}

/// The step between kept points so that at most [`MAX_POINTS`] of `n` remain.
pub fn stride(n: usize) -> usize {
    n.div_ceil(MAX_POINTS).max(1)
}

/// Every `stride(len)`-th item, and always the last one (the final value of a run matters).
pub fn downsample<T: Copy>(items: &[T]) -> Vec<T> {
    let k = stride(items.len());
    let mut kept: Vec<T> = items.iter().copied().step_by(k).collect();
    if !(items.len() - 1).is_multiple_of(k) {
        kept.push(items[items.len() - 1]);
    }
    kept
}

/// `lo..hi` widened so that it is never empty, with a little room above and below.
fn padded(lo: f64, hi: f64, from_zero: bool) -> (f64, f64) {
    let lo = if from_zero { lo.min(0.0) } else { lo };
    if hi > lo {
        let pad = (hi - lo) * 0.05;
        (if from_zero && lo >= 0.0 { lo } else { lo - pad }, hi + pad)
    } else {
        let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        (lo - pad, hi + pad)
    }
}

/// Tick labels of a step or seconds axis: whole numbers unless the axis spans little.
fn x_label(span: f64) -> impl Fn(&f64) -> String {
    move |x| if span >= 10.0 { format!("{x:.0}") } else { format!("{x:.1}") }
}

/// The chart as an `<svg>` element; `None` when no series has a finite point.
pub fn svg(chart: &Chart) -> Option<String> {
    let all = || chart.series.iter().flat_map(|s| s.points.iter());
    all().next()?;
    let (mut x0, mut x1, mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in all() {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    for (_, y) in &chart.hlines {
        (y0, y1) = (y0.min(*y), y1.max(*y));
    }
    let from_zero = chart.series.iter().any(|s| matches!(s.kind, Kind::Area));
    let (x0, x1) = if x1 > x0 { (x0, x1) } else { (x0 - 1.0, x1 + 1.0) };
    let (y0, mut y1) = padded(y0, y1, from_zero);
    if legend(chart) {
        // Room above the data for the legend box, so it hides no line.
        y1 += (y1 - y0) * 0.08 * (chart.series.len() + chart.hlines.len()) as f64;
    }
    let mut out = String::new();
    // Drawing into a String cannot fail for I/O reasons; a plotters error becomes a note.
    if let Err(e) = draw(chart, &mut out, (x0, x1), (y0, y1)) {
        return Some(format!("<p class=\"note\">chart “{}” could not be drawn: {}</p>", chart.title, super::escape(&e.to_string())));
    }
    // An inline SVG needs no namespace in HTML, and the report names no URL at all.
    Some(out.replacen(" xmlns=\"http://www.w3.org/2000/svg\"", "", 1))
}

fn legend(chart: &Chart) -> bool {
    chart.series.len() + chart.hlines.len() > 1
}

/// `color` blended with white: an opaque fill, so stacked bands keep their own colours.
fn light(color: RGBColor) -> RGBColor {
    let blend = |c: u8| c + ((255 - c) as f64 * 0.45) as u8;
    RGBColor(blend(color.0), blend(color.1), blend(color.2))
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;

fn draw(chart: &Chart, out: &mut String, (x0, x1): (f64, f64), (y0, y1): (f64, f64)) -> DrawResult {
    let root = SVGBackend::with_string(out, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    // plotters' SVG backend writes font sizes at 1/1.24 of the size asked for.
    let mut ctx = ChartBuilder::on(&root)
        .caption(chart.title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(78)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    let x_fmt = x_label(x1 - x0);
    let y_fmt = |y: &f64| (chart.y_fmt)(*y);
    ctx.configure_mesh()
        .max_light_lines(0)
        .bold_line_style(BLACK.mix(0.08))
        .axis_style(BLACK.mix(0.6))
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 15))
        .x_labels(8)
        .y_labels(6)
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt)
        .x_desc(chart.x_desc)
        .y_desc(chart.y_desc)
        .draw()?;
    for s in &chart.series {
        let color = s.color;
        let drawn = match s.kind {
            Kind::Line => ctx.draw_series(LineSeries::new(s.points.iter().copied(), color.stroke_width(2)))?,
            Kind::Markers => ctx.draw_series(s.points.iter().map(|&p| Circle::new(p, 4, color.filled())))?,
            Kind::Area => ctx.draw_series(AreaSeries::new(s.points.iter().copied(), y0.max(0.0), light(color).filled()).border_style(color))?,
        };
        let kind = &s.kind;
        drawn.label(&s.label).legend(move |(x, y)| match kind {
            Kind::Markers => Circle::new((x + 8, y), 4, color.filled()).into_dyn(),
            Kind::Area => Rectangle::new([(x, y - 5), (x + 16, y + 5)], light(color).filled()).into_dyn(),
            Kind::Line => PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(3)).into_dyn(),
        });
    }
    for (label, y) in &chart.hlines {
        let style = VERMILION.stroke_width(2);
        ctx.draw_series(LineSeries::new([(x0, *y), (x1, *y)], style))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], style));
    }
    if legend(chart) {
        ctx.configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font(("sans-serif", 15))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .draw()?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downsample_strides_and_keeps_the_last_point() {
        let v: Vec<usize> = (0..5001).collect();
        let kept = downsample(&v);
        // stride 3: 0, 3, ..., 4998 (1667 points) and then 5000.
        assert_eq!(stride(5001), 3);
        assert_eq!(kept.len(), 1668);
        assert_eq!((kept[1], kept[kept.len() - 2], kept[kept.len() - 1]), (3, 4998, 5000));
        assert!(kept.len() <= MAX_POINTS);
        let short: Vec<usize> = (0..7).collect();
        assert_eq!(downsample(&short), short);
        assert_eq!(downsample(&[42]), vec![42]);
    }

    #[test]
    fn no_finite_point_draws_no_chart() {
        let fmt = |y: f64| format!("{y}");
        let chart = |points: Vec<(f64, f64)>| Chart {
            title: "t",
            x_desc: "step",
            y_desc: "y",
            series: vec![Series::new("a", BLUE, Kind::Line, points)],
            hlines: vec![],
            y_fmt: &fmt,
        };
        assert!(svg(&chart(vec![(1.0, f64::NAN), (2.0, f64::INFINITY)])).is_none());
        // One point: the ranges are widened, not empty; the SVG has no namespace URL.
        let one = svg(&chart(vec![(1.0, 2.5)])).unwrap();
        assert!(one.starts_with("<svg") && !one.contains("http"), "{}", &one[..80]);
    }
}
