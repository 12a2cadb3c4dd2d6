//! The PNG plot of `portier eval distance`: match rate (TAR at FAR 1e-3, misses counted)
//! against face size, one colour per backend (and the routed line). Thin lines with hollow
//! markers: the face only downscaled (detected landmarks); thick lines with filled markers: the
//! same face in a camera-like frame (defocus, noise, MJPEG), when the sweep made one. The
//! y axis is zoomed to the data; with a routing, the CPU and NPU parts of the size axis are
//! shaded and each threshold band's start and threshold drawn; crosses mark the operating point:
//! the routed line (else the reference) at the operating thresholds, not at FAR 1e-3.
//!
//! Drawn with embedded-graphics (lines, circles, its built-in mono fonts: no system fonts, no
//! font files) into an RGB buffer that the `image` crate writes as PNG. embedded-graphics is
//! the display stack's library anyway; a plotting crate would add a font stack for one chart.
//!
//! Must not: compute statistics; it draws what the report says (the operating point is the
//! report's TAR at the operating threshold times its detected fraction, as the match rate is).

use std::path::Path;

use embedded_graphics::mono_font::ascii::{FONT_6X10, FONT_7X13_BOLD};
use embedded_graphics::mono_font::MonoTextStyle;
use embedded_graphics::pixelcolor::Rgb888;
use embedded_graphics::prelude::*;
use embedded_graphics::primitives::{Circle, Line, PrimitiveStyle, Rectangle};
use embedded_graphics::text::{Alignment, Text};

use super::distance::{BandReport, DistanceReport, Mode};
use super::EvalError;

const W: u32 = 860;
const H: u32 = 520;
const LEFT: i32 = 60;
const RIGHT: i32 = 250;
const TOP: i32 = 62;
const BOTTOM: i32 = 60;

/// Distinct colours for up to eight lines (Okabe-Ito, readable by colour-blind viewers).
const COLOURS: [Rgb888; 8] = [
    Rgb888::new(0, 0, 0),
    Rgb888::new(230, 159, 0),
    Rgb888::new(0, 114, 178),
    Rgb888::new(0, 158, 115),
    Rgb888::new(204, 121, 167),
    Rgb888::new(213, 94, 0),
    Rgb888::new(86, 180, 233),
    Rgb888::new(240, 228, 66),
];

/// An RGB canvas that embedded-graphics draws on.
struct Canvas {
    pixels: Vec<u8>,
}

impl OriginDimensions for Canvas {
    fn size(&self) -> Size {
        Size::new(W, H)
    }
}

impl DrawTarget for Canvas {
    type Color = Rgb888;
    type Error = std::convert::Infallible;

    fn draw_iter<I>(&mut self, pixels: I) -> Result<(), Self::Error>
    where
        I: IntoIterator<Item = Pixel<Self::Color>>,
    {
        for Pixel(p, c) in pixels {
            if (0..W as i32).contains(&p.x) && (0..H as i32).contains(&p.y) {
                let i = (p.y as usize * W as usize + p.x as usize) * 3;
                self.pixels[i..i + 3].copy_from_slice(&[c.r(), c.g(), c.b()]);
            }
        }
        Ok(())
    }
}

/// The match rate a band's line reaches at the operating threshold: TAR at that threshold
/// times the fraction of faces detected (the match rate's own definition, at another point).
fn operating_rate(band: &BandReport, line: usize) -> Option<f64> {
    let st = &band.lines.get(line)?.stats;
    let seen = band.embedded + band.not_detected;
    let v = st.tar_at_threshold * band.embedded as f64 / seen.max(1) as f64;
    (v.is_finite() && seen > 0).then_some(v)
}

/// The fraction of a band's faces the detector found (detection recall).
fn found_rate(band: &BandReport) -> Option<f64> {
    let seen = band.embedded + band.not_detected;
    (seen > 0).then(|| band.embedded as f64 / seen as f64)
}

/// The lower end of the y axis: a round value a little under the lowest point, so the curves
/// fill the plot instead of hugging its top.
fn axis_floor(values: impl Iterator<Item = f64>) -> f64 {
    let lowest = values.filter(|v| v.is_finite()).fold(1.0f64, f64::min);
    ((lowest - 0.02) * 20.0).floor().clamp(0.0, 18.0) / 20.0
}

/// Draws the match rate of every line against eye distance and writes a PNG.
pub fn identification_vs_size(report: &DistanceReport, path: &Path) -> Result<(), EvalError> {
    let mut c = Canvas { pixels: vec![255; (W * H * 3) as usize] };
    // Drawing into memory cannot fail (Infallible); results are ignored for that reason.
    let text = MonoTextStyle::new(&FONT_6X10, Rgb888::BLACK);
    let grey_text = MonoTextStyle::new(&FONT_6X10, Rgb888::new(110, 110, 110));
    let title = MonoTextStyle::new(&FONT_7X13_BOLD, Rgb888::BLACK);
    let grid = PrimitiveStyle::with_stroke(Rgb888::new(225, 225, 225), 1);
    let axis = PrimitiveStyle::with_stroke(Rgb888::BLACK, 1);
    let (x0, x1, y0, y1) = (LEFT, W as i32 - RIGHT, TOP, H as i32 - BOTTOM);
    let _ = Text::new(
        "match rate (TAR at FAR 1e-3, missed faces count) and faces found vs eye distance",
        Point::new(10, 18),
        title,
    )
    .draw(&mut c);
    let clean = report.modes.iter().position(|m| m.mode == Mode::Detected);
    let camera = report.modes.iter().position(|m| m.mode == Mode::Camera);
    let subtitle = match &report.camera {
        Some(desc) => vec![
            "detected landmarks; thin, hollow: downscaled only; thick, filled: camera-like frame:"
                .to_owned(),
            desc.clone(),
        ],
        None => vec!["detected landmarks on the downscaled face".to_owned()],
    };
    for (k, line) in subtitle.iter().enumerate() {
        let _ = Text::new(line, Point::new(10, 32 + 12 * k as i32), text).draw(&mut c);
    }
    let Some(bands) = clean.map(|m| &report.modes[m].bands) else {
        return save(&c, path);
    };
    // The operating point: the routed line (the appliance's choice per face), else the
    // reference, on the camera-like frames when there are any.
    let op_line = report.backends.iter().position(|b| b.starts_with("routed(")).unwrap_or(0);
    let op_mode = camera.or(clean).unwrap_or(0);
    let op_points: Vec<Option<f64>> =
        report.modes[op_mode].bands.iter().map(|b| operating_rate(b, op_line)).collect();
    let plotted = [clean, camera].into_iter().flatten().flat_map(|m| {
        report.modes[m].bands.iter().flat_map(|b| b.lines.iter().map(|l| l.stats.match_rate))
    });
    // Detection recall beside recognition, on the frames the operating point is read on.
    let found: Vec<Option<f64>> = report.modes[op_mode].bands.iter().map(found_rate).collect();
    let lo = axis_floor(
        plotted.chain(op_points.iter().flatten().copied()).chain(found.iter().flatten().copied()),
    );
    let n = bands.len().max(2) as i32;
    let x_at = |i: usize| x0 + (x1 - x0) * i as i32 / (n - 1);
    let y_at =
        |v: f64| y1 - (f64::from(y1 - y0) * ((v - lo) / (1.0 - lo)).clamp(0.0, 1.0)).round() as i32;
    // Where an eye distance falls on the (categorical) size axis: between the neighbouring
    // sweep sizes, linearly; beyond the largest size, at the originals.
    let sizes: Vec<(usize, f32)> = bands
        .iter()
        .enumerate()
        .filter_map(|(i, b)| b.eye_distance_px.map(|px| (i, px as f32)))
        .collect();
    let x_of_px = |px: f32| -> i32 {
        let Some(&(_, first)) = sizes.first() else { return x0 };
        if px <= first {
            return x0;
        }
        for w in sizes.windows(2) {
            let ((ia, a), (ib, b)) = (w[0], w[1]);
            if px <= b {
                let t = (px - a) / (b - a);
                return x_at(ia) + ((x_at(ib) - x_at(ia)) as f32 * t).round() as i32;
            }
        }
        x_at(bands.len() - 1)
    };
    if let Some(r) = &report.routing {
        // Above the plot, so no curve runs through the labels.
        let split = x_of_px(r.npu_min_eye_distance_px).clamp(x0, x1);
        if split > x0 {
            let _ = Rectangle::with_corners(Point::new(x0, y0), Point::new(split, y1))
                .into_styled(PrimitiveStyle::with_fill(Rgb888::new(236, 236, 236)))
                .draw(&mut c);
            let _ = Text::with_alignment(
                "<- CPU",
                Point::new(split - 3, y0 - 3),
                grey_text,
                Alignment::Right,
            )
            .draw(&mut c);
        }
        let _ = Text::new("NPU ->", Point::new(split + 3, y0 - 3), grey_text).draw(&mut c);
        let mut last_label = i32::MIN;
        for (k, b) in r.bands.iter().enumerate() {
            let x = x_of_px(b.min_eye_distance_px);
            if k > 0 {
                for y in (y0..y1).step_by(6) {
                    let _ = Line::new(Point::new(x, y), Point::new(x, (y + 2).min(y1)))
                        .into_styled(PrimitiveStyle::with_stroke(Rgb888::new(150, 150, 150), 1))
                        .draw(&mut c);
                }
            }
            // Bands that start beyond the sweep's largest size all sit at the originals: only
            // the first of them gets its number.
            if x >= last_label + 36 {
                let _ = Text::new(
                    &format!("{:.3}", b.threshold_cosine),
                    Point::new(x + 3, y1 - 5),
                    grey_text,
                )
                .draw(&mut c);
                last_label = x;
            }
        }
    }
    let step = if 1.0 - lo <= 0.3 {
        0.05
    } else if 1.0 - lo <= 0.6 {
        0.1
    } else {
        0.2
    };
    let mut v = 1.0;
    while v >= lo - 1e-9 {
        let y = y_at(v);
        let _ = Line::new(Point::new(x0, y), Point::new(x1, y)).into_styled(grid).draw(&mut c);
        let _ = Text::with_alignment(
            &format!("{v:.2}"),
            Point::new(x0 - 6, y + 3),
            text,
            Alignment::Right,
        )
        .draw(&mut c);
        v -= step;
    }
    for (i, b) in bands.iter().enumerate() {
        let x = x_at(i);
        let _ = Line::new(Point::new(x, y1), Point::new(x, y1 + 4)).into_styled(axis).draw(&mut c);
        let _ = Text::with_alignment(&b.label, Point::new(x, y1 + 16), text, Alignment::Center)
            .draw(&mut c);
    }
    let _ = Text::with_alignment(
        "eye distance (px); grey numbers: the threshold of each routing band",
        Point::new((x0 + x1) / 2, y1 + 34),
        text,
        Alignment::Center,
    )
    .draw(&mut c);
    let _ = Rectangle::with_corners(Point::new(x0, y0), Point::new(x1, y1))
        .into_styled(axis)
        .draw(&mut c);
    let white = PrimitiveStyle::with_fill(Rgb888::WHITE);
    for (li, name) in report.backends.iter().enumerate() {
        let colour = COLOURS[li % COLOURS.len()];
        let fill = PrimitiveStyle::with_fill(colour);
        for (m, thick) in [(clean, false), (camera, true)] {
            let Some(m) = m else { continue };
            let stroke = PrimitiveStyle::with_stroke(colour, if thick { 3 } else { 1 });
            let points: Vec<Option<Point>> = report.modes[m]
                .bands
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    let v = b.lines.get(li)?.stats.match_rate;
                    v.is_finite().then(|| Point::new(x_at(i), y_at(v)))
                })
                .collect();
            for (k, p) in points.iter().enumerate() {
                let Some(p) = *p else { continue };
                if let Some(Some(q)) = points.get(k + 1) {
                    let _ = Line::new(p, *q).into_styled(stroke).draw(&mut c);
                }
                let _ = Circle::with_center(p, 7).into_styled(fill).draw(&mut c);
                if !thick {
                    let _ = Circle::with_center(p, 4).into_styled(white).draw(&mut c);
                }
            }
        }
        let y = y0 + 10 + 16 * li as i32;
        let _ = Line::new(Point::new(x1 + 14, y), Point::new(x1 + 34, y))
            .into_styled(PrimitiveStyle::with_stroke(colour, 3))
            .draw(&mut c);
        let _ = Text::new(name, Point::new(x1 + 40, y + 3), text).draw(&mut c);
    }
    // Detection recall: a dashed black line with square markers.
    let black = PrimitiveStyle::with_stroke(Rgb888::BLACK, 1);
    let found_points: Vec<Option<Point>> =
        found.iter().enumerate().map(|(i, v)| v.map(|v| Point::new(x_at(i), y_at(v)))).collect();
    for (k, p) in found_points.iter().enumerate() {
        let Some(p) = *p else { continue };
        if let Some(Some(q)) = found_points.get(k + 1) {
            let steps = ((q.x - p.x).abs().max((q.y - p.y).abs()) / 4).max(1);
            for t in (0..steps).step_by(2) {
                let at = |t: i32| p + (*q - p) * t / steps;
                let _ = Line::new(at(t), at(t + 1)).into_styled(black).draw(&mut c);
            }
        }
        let _ = Rectangle::with_center(p, Size::new(5, 5))
            .into_styled(PrimitiveStyle::with_fill(Rgb888::BLACK))
            .draw(&mut c);
    }
    let y = y0 + 10 + 16 * report.backends.len() as i32;
    let _ = Rectangle::with_center(Point::new(x1 + 24, y), Size::new(5, 5))
        .into_styled(PrimitiveStyle::with_fill(Rgb888::BLACK))
        .draw(&mut c);
    let _ = Text::new("faces found", Point::new(x1 + 40, y + 3), text).draw(&mut c);
    // The operating point: crosses in the operating line's colour.
    let op_colour = COLOURS[op_line % COLOURS.len()];
    let cross = |c: &mut Canvas, p: Point| {
        let s = PrimitiveStyle::with_stroke(op_colour, 2);
        let _ = Line::new(p + Point::new(-5, -5), p + Point::new(5, 5)).into_styled(s).draw(c);
        let _ = Line::new(p + Point::new(-5, 5), p + Point::new(5, -5)).into_styled(s).draw(c);
    };
    for (i, v) in op_points.iter().enumerate() {
        if let Some(v) = v {
            cross(&mut c, Point::new(x_at(i), y_at(*v)));
        }
    }
    let mut y = y0 + 10 + 16 * (report.backends.len() as i32 + 1) + 12;
    cross(&mut c, Point::new(x1 + 24, y));
    for line in [
        report.backends[op_line].clone(),
        "at the operating thresholds".into(),
        format!("({})", report.thresholds),
        if camera.is_some() { "on camera-like frames".into() } else { String::new() },
    ] {
        let _ = Text::new(&line, Point::new(x1 + 40, y + 3), text).draw(&mut c);
        y += 12;
    }
    save(&c, path)
}

fn save(c: &Canvas, path: &Path) -> Result<(), EvalError> {
    let err = |reason: String| EvalError::Write { path: path.into(), reason };
    let img = image::RgbImage::from_raw(W, H, c.pixels.clone())
        .ok_or_else(|| err("internal: canvas size".into()))?;
    img.save_with_format(path, image::ImageFormat::Png).map_err(|e| err(e.to_string()))
}
