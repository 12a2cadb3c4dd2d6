//! The PNG plot of `portier eval distance`: match rate (TAR at FAR 1e-3, misses counted)
//! against face size, one line per
//! backend (and the routed line), for detected landmarks (solid) with the recognition-only
//! curve (reference landmarks) as dots in the same colour.
//!
//! Drawn with embedded-graphics (lines, circles, its built-in mono fonts: no system fonts, no
//! font files) into an RGB buffer that the `image` crate writes as PNG. embedded-graphics is
//! the display stack's library anyway; a plotting crate would add a font stack for one chart.
//!
//! Must not: compute statistics; it draws what the report says.

use std::path::Path;

use embedded_graphics::mono_font::ascii::{FONT_6X10, FONT_7X13_BOLD};
use embedded_graphics::mono_font::MonoTextStyle;
use embedded_graphics::pixelcolor::Rgb888;
use embedded_graphics::prelude::*;
use embedded_graphics::primitives::{Circle, Line, PrimitiveStyle, Rectangle};
use embedded_graphics::text::{Alignment, Text};

use super::distance::{DistanceError, DistanceReport};

const W: u32 = 760;
const H: u32 = 480;
const LEFT: i32 = 60;
const RIGHT: i32 = 190;
const TOP: i32 = 40;
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

/// Draws the match rate of every line against eye distance and writes a PNG.
pub fn identification_vs_size(report: &DistanceReport, path: &Path) -> Result<(), DistanceError> {
    let mut c = Canvas { pixels: vec![255; (W * H * 3) as usize] };
    // Drawing into memory cannot fail (Infallible); results are ignored for that reason.
    let text = MonoTextStyle::new(&FONT_6X10, Rgb888::BLACK);
    let title = MonoTextStyle::new(&FONT_7X13_BOLD, Rgb888::BLACK);
    let grid = PrimitiveStyle::with_stroke(Rgb888::new(220, 220, 220), 1);
    let axis = PrimitiveStyle::with_stroke(Rgb888::BLACK, 1);
    let (x0, x1, y0, y1) = (LEFT, W as i32 - RIGHT, TOP, H as i32 - BOTTOM);
    let _ = Text::new(
        "match rate (TAR at FAR 1e-3) vs eye distance; solid: detected, dots: recognition only",
        Point::new(10, 20),
        title,
    )
    .draw(&mut c);
    let Some(bands) = report.modes.first().map(|m| &m.bands) else {
        return save(&c, path);
    };
    let n = bands.len().max(2) as i32;
    let x_at = |i: usize| x0 + (x1 - x0) * i as i32 / (n - 1);
    let y_at = |v: f64| y1 - (f64::from(y1 - y0) * v.clamp(0.0, 1.0)).round() as i32;
    for k in 0..=5 {
        let v = f64::from(k) / 5.0;
        let y = y_at(v);
        let _ = Line::new(Point::new(x0, y), Point::new(x1, y)).into_styled(grid).draw(&mut c);
        let _ = Text::with_alignment(
            &format!("{v:.1}"),
            Point::new(x0 - 6, y + 3),
            text,
            Alignment::Right,
        )
        .draw(&mut c);
    }
    for (i, b) in bands.iter().enumerate() {
        let x = x_at(i);
        let _ = Line::new(Point::new(x, y1), Point::new(x, y1 + 4)).into_styled(axis).draw(&mut c);
        let _ = Text::with_alignment(&b.label, Point::new(x, y1 + 16), text, Alignment::Center)
            .draw(&mut c);
    }
    let _ = Text::with_alignment(
        "eye distance (px)",
        Point::new((x0 + x1) / 2, y1 + 34),
        text,
        Alignment::Center,
    )
    .draw(&mut c);
    let _ = Rectangle::with_corners(Point::new(x0, y0), Point::new(x1, y1))
        .into_styled(axis)
        .draw(&mut c);
    for (li, name) in report.backends.iter().enumerate() {
        let colour = COLOURS[li % COLOURS.len()];
        let solid = PrimitiveStyle::with_stroke(colour, 2);
        let fill = PrimitiveStyle::with_fill(colour);
        for (mi, mode) in report.modes.iter().enumerate() {
            let points: Vec<Option<Point>> = mode
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
                if mi == 0 {
                    if let Some(Some(q)) = points.get(k + 1) {
                        let _ = Line::new(p, *q).into_styled(solid).draw(&mut c);
                    }
                    let _ = Circle::with_center(p, 5).into_styled(fill).draw(&mut c);
                } else {
                    let _ = Circle::with_center(p, 3).into_styled(fill).draw(&mut c);
                }
            }
        }
        let y = y0 + 10 + 16 * li as i32;
        let _ = Line::new(Point::new(x1 + 14, y), Point::new(x1 + 34, y))
            .into_styled(solid)
            .draw(&mut c);
        let _ = Text::new(name, Point::new(x1 + 40, y + 3), text).draw(&mut c);
    }
    let _ = Text::new(&report.thresholds, Point::new(x1 + 14, y1 - 4), text).draw(&mut c);
    save(&c, path)
}

fn save(c: &Canvas, path: &Path) -> Result<(), DistanceError> {
    let err = |reason: String| DistanceError::Write { path: path.into(), reason };
    let img = image::RgbImage::from_raw(W, H, c.pixels.clone())
        .ok_or_else(|| err("internal: canvas size".into()))?;
    img.save_with_format(path, image::ImageFormat::Png).map_err(|e| err(e.to_string()))
}
