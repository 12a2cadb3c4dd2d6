//! Drawing of each [`Screen`] onto any `Rgb565` embedded-graphics draw target.
//!
//! Layout is proportional to the target's size: icons scale with the short side, text uses the
//! 10x20 and 9x15 Latin-1 bitmap fonts, magnified 2x or 3x (pixel doubling) for what must be
//! read at arm's length. Designed for 240x240, 240x320 and 320x240; larger targets get larger
//! magnifications. Every screen clears the whole target first, so drawing is idempotent.
//!
//! This module must not: allocate, read clocks, or decide what to show (that is
//! [`Screen::choose`]).

use std::fmt::Write as _;

use embedded_graphics::mono_font::iso_8859_1::{FONT_10X20, FONT_9X15};
use embedded_graphics::mono_font::{MonoFont, MonoTextStyle};
use embedded_graphics::pixelcolor::Rgb565;
use embedded_graphics::prelude::*;
use embedded_graphics::primitives::{
    Arc, Circle, Line, Polyline, PrimitiveStyle, Rectangle, RoundedRectangle, Triangle,
};
use embedded_graphics::text::{Baseline, Text, TextStyleBuilder};

use super::{AlarmView, ClockTime, EmbedBackend, Faults, LinkState, Screen, ShortText, TechView};

/// An `Rgb565` from 8-bit channels.
const fn rgb(r: u8, g: u8, b: u8) -> Rgb565 {
    Rgb565::new(r >> 3, g >> 2, b >> 3)
}

/// Background of the calm screens.
pub(crate) const BG: Rgb565 = rgb(16, 22, 34);
/// Main text.
pub(crate) const FG: Rgb565 = rgb(255, 255, 255);
/// Secondary text.
pub(crate) const DIM: Rgb565 = rgb(150, 160, 176);
/// Granted background.
pub(crate) const GREEN: Rgb565 = rgb(0, 136, 64);
/// Denied / forced background.
pub(crate) const RED: Rgb565 = rgb(192, 24, 32);
/// Warnings, "step closer", held-open background.
pub(crate) const AMBER: Rgb565 = rgb(255, 176, 0);
/// Enrolment background.
pub(crate) const BLUE: Rgb565 = rgb(24, 88, 176);
/// Dark text on amber.
pub(crate) const INK: Rgb565 = rgb(24, 24, 24);

/// Draws `screen` over the whole of `target`.
pub fn render<D>(screen: &Screen, target: &mut D) -> Result<(), D::Error>
where
    D: DrawTarget<Color = Rgb565>,
{
    let area = target.bounding_box();
    let l = Layout::of(area);
    match screen {
        Screen::Idle { clock, door, embed, faults } => {
            target.clear(BG)?;
            header(target, &l, *clock, *embed)?;
            lock_icon(target, l.icon_center(), l.icon, door.locked && !door.open)?;
            let y = l.text_top();
            line(target, &l, "Look at the camera", &FONT_10X20, 1, FG, y)?;
            let state = if door.open {
                "Door open"
            } else if door.locked {
                "Locked"
            } else {
                "Unlocked"
            };
            let mut foot_y = l.bottom() - l.small_h();
            if faults.any() {
                let mut t = ShortText::<48>::new();
                fault_summary(faults, &mut t);
                line(target, &l, t.as_str(), &FONT_9X15, 1, AMBER, foot_y)?;
                foot_y -= l.small_h() + 2;
            }
            line(target, &l, state, &FONT_9X15, 1, DIM, foot_y).map(|_| ())
        }
        Screen::StepCloser => {
            target.clear(BG)?;
            framing_icon(target, l.icon_center(), l.icon, AMBER)?;
            let y = l.text_top();
            let y = big_lines(target, &l, &["Step closer"], AMBER, y)?;
            line(target, &l, "Look at the camera", &FONT_10X20, 1, FG, y + l.gap).map(|_| ())
        }
        Screen::Granted { name } => {
            target.clear(GREEN)?;
            check_icon(target, l.icon_center(), l.icon, FG, GREEN)?;
            let y = l.text_top();
            if name.is_empty() {
                big_lines(target, &l, &["Welcome"], FG, y).map(|_| ())
            } else {
                let y = line(target, &l, "Welcome", &FONT_10X20, l.k_small, FG, y)?;
                fitted(target, &l, name.as_str(), l.k_big + 1, FG, y + l.gap / 2).map(|_| ())
            }
        }
        Screen::Denied | Screen::Unknown => {
            target.clear(RED)?;
            cross_icon(target, l.icon_center(), l.icon, FG)?;
            let lines: &[&str] = if *screen == Screen::Denied {
                &["Access", "denied"]
            } else {
                &["Not", "recognised"]
            };
            big_lines(target, &l, lines, FG, l.text_top()).map(|_| ())
        }
        Screen::SpoofSuspected => {
            // Says why, so a person refused by mistake knows to face the camera in person.
            target.clear(RED)?;
            cross_icon(target, l.icon_center(), l.icon, FG)?;
            let y = big_lines(target, &l, &["Access", "denied"], FG, l.text_top())?;
            line(target, &l, "Live face required", &FONT_10X20, 1, FG, y + l.gap / 2).map(|_| ())
        }
        Screen::Alarm(alarm) => {
            let (bg, fg, lines, sub): (_, _, &[&str], _) = match alarm {
                AlarmView::Forced => (RED, FG, &["Door", "forced"], "Alarm raised"),
                AlarmView::HeldOpen => (AMBER, INK, &["Close", "the door"], "Door held open"),
            };
            target.clear(bg)?;
            warning_icon(target, l.icon_center(), l.icon, fg, bg)?;
            let y = big_lines(target, &l, lines, fg, l.text_top())?;
            line(target, &l, sub, &FONT_10X20, 1, fg, y + l.gap / 2).map(|_| ())
        }
        Screen::Error(faults) => {
            target.clear(BG)?;
            warning_icon(target, l.icon_center(), l.icon, AMBER, BG)?;
            let mut y = fitted(target, &l, "Out of service", l.k_big, FG, l.text_top())?;
            y += l.gap / 2;
            for (on, text) in [
                (faults.camera_lost, "Camera lost"),
                (faults.npu_fallback, "NPU failed: on CPU"),
                (faults.broker_down, "MQTT broker down"),
            ] {
                if on {
                    y = line(target, &l, text, &FONT_10X20, l.k_small, AMBER, y)?;
                }
            }
            Ok(())
        }
        Screen::Enrolling { name, captured, needed } => {
            target.clear(BLUE)?;
            let y = l.top + l.gap;
            let y = big_lines(target, &l, &["Enrolling"], FG, y)?;
            let y = fitted(target, &l, name.as_str(), l.k_big, FG, y + l.gap / 2)?;
            let y = y + l.gap;
            let bar_h = l.icon / 4;
            progress(target, &l, *captured, *needed, y, bar_h)?;
            let mut t = ShortText::<24>::new();
            let _ = write!(t, "{captured} of {needed}");
            let y = line(
                target,
                &l,
                t.as_str(),
                &FONT_10X20,
                l.k_small,
                FG,
                y + bar_h as i32 + l.gap / 2,
            )?;
            line(target, &l, "Turn your head slowly", &FONT_9X15, l.k_small, FG, y + l.gap / 2)
                .map(|_| ())
        }
        Screen::Technician(t) => technician(target, &l, t),
    }
}

/// Proportions derived from the target's size.
struct Layout {
    area: Rectangle,
    top: i32,
    /// Icon size (short side x 0.3).
    icon: u32,
    /// Magnification of large text.
    k_big: u32,
    /// Magnification of ordinary text.
    k_small: u32,
    /// Vertical gap between blocks.
    gap: i32,
    /// Horizontal margin.
    margin: i32,
}

impl Layout {
    fn of(area: Rectangle) -> Self {
        let short = area.size.width.min(area.size.height).max(1);
        let k_small = (short / 240).max(1);
        Self {
            area,
            top: area.top_left.y,
            icon: short * 3 / 10,
            k_big: 2 * k_small,
            k_small,
            gap: (short / 20) as i32,
            margin: (8 * k_small) as i32,
        }
    }

    fn center_x(&self) -> i32 {
        self.area.top_left.x + (self.area.size.width / 2) as i32
    }

    fn width(&self) -> u32 {
        self.area.size.width
    }

    fn bottom(&self) -> i32 {
        self.area.top_left.y + self.area.size.height as i32
    }

    /// Height of a line of 9x15 text plus spacing.
    fn small_h(&self) -> i32 {
        (17 * self.k_small) as i32
    }

    /// Tall panels push the icon down a little to centre the whole block.
    fn extra(&self) -> i32 {
        (self.area.size.height.saturating_sub(self.area.size.width.min(240 * self.k_small)) / 4)
            as i32
    }

    fn icon_center(&self) -> Point {
        // Below the 36 px header band of the idle screen, on every screen alike.
        Point::new(
            self.center_x(),
            self.top + (36 * self.k_small) as i32 + self.icon as i32 / 2 + self.extra(),
        )
    }

    fn text_top(&self) -> i32 {
        self.icon_center().y + self.icon as i32 / 2 + self.gap
    }
}

/// A draw target seen through a magnifying glass: each pixel drawn becomes a k x k square.
struct Scaled<'a, D> {
    inner: &'a mut D,
    k: u32,
    origin: Point,
}

impl<D: DrawTarget> OriginDimensions for Scaled<'_, D> {
    fn size(&self) -> Size {
        self.inner.bounding_box().size / self.k
    }
}

impl<D: DrawTarget> DrawTarget for Scaled<'_, D> {
    type Color = D::Color;
    type Error = D::Error;

    fn draw_iter<I>(&mut self, pixels: I) -> Result<(), Self::Error>
    where
        I: IntoIterator<Item = Pixel<Self::Color>>,
    {
        let k = self.k;
        for Pixel(p, c) in pixels {
            let at = self.origin + Point::new(p.x * k as i32, p.y * k as i32);
            self.inner.fill_solid(&Rectangle::new(at, Size::new(k, k)), c)?;
        }
        Ok(())
    }
}

fn advance(font: &MonoFont<'_>) -> u32 {
    font.character_size.width + font.character_spacing
}

/// Width in pixels of `s` in `font` at magnification `k`.
fn text_width(s: &str, font: &MonoFont<'_>, k: u32) -> u32 {
    (s.chars().count() as u32 * advance(font)).saturating_sub(font.character_spacing) * k
}

/// Draws `s` with its top-left at `at`, magnified `k` times.
fn text_at<D>(
    target: &mut D,
    s: &str,
    font: &MonoFont<'_>,
    k: u32,
    color: Rgb565,
    at: Point,
) -> Result<(), D::Error>
where
    D: DrawTarget<Color = Rgb565>,
{
    let style = MonoTextStyle::new(font, color);
    let top = TextStyleBuilder::new().baseline(Baseline::Top).build();
    if k <= 1 {
        Text::with_text_style(s, at, style, top).draw(target)?;
    } else {
        let mut scaled = Scaled { inner: target, k, origin: at };
        Text::with_text_style(s, Point::zero(), style, top).draw(&mut scaled)?;
    }
    Ok(())
}

/// One centred line, cut to the width; returns the y below it.
fn line<D>(
    target: &mut D,
    l: &Layout,
    s: &str,
    font: &MonoFont<'_>,
    k: u32,
    color: Rgb565,
    y: i32,
) -> Result<i32, D::Error>
where
    D: DrawTarget<Color = Rgb565>,
{
    let max = l.width().saturating_sub(2 * l.margin as u32);
    let cols = (max / (advance(font) * k)).max(1) as usize;
    let s = match s.char_indices().nth(cols) {
        Some((cut, _)) => &s[..cut],
        None => s,
    };
    let w = text_width(s, font, k) as i32;
    text_at(target, s, font, k, color, Point::new(l.center_x() - w / 2, y))?;
    Ok(y + (font.character_size.height * k) as i32)
}

/// Large centred lines (10x20 at the big magnification, reduced if a line does not fit).
fn big_lines<D>(
    target: &mut D,
    l: &Layout,
    lines: &[&str],
    color: Rgb565,
    mut y: i32,
) -> Result<i32, D::Error>
where
    D: DrawTarget<Color = Rgb565>,
{
    for s in lines {
        y = fitted(target, l, s, l.k_big, color, y)? + 2;
    }
    Ok(y)
}

/// One centred line at the largest magnification up to `k_max` at which it fits.
fn fitted<D>(
    target: &mut D,
    l: &Layout,
    s: &str,
    k_max: u32,
    color: Rgb565,
    y: i32,
) -> Result<i32, D::Error>
where
    D: DrawTarget<Color = Rgb565>,
{
    let max = l.width().saturating_sub(2 * l.margin as u32);
    let mut k = k_max.max(1);
    while k > 1 && text_width(s, &FONT_10X20, k) > max {
        k -= 1;
    }
    line(target, l, s, &FONT_10X20, k, color, y)
}

fn header<D>(
    target: &mut D,
    l: &Layout,
    clock: Option<ClockTime>,
    embed: EmbedBackend,
) -> Result<(), D::Error>
where
    D: DrawTarget<Color = Rgb565>,
{
    let mut t = ShortText::<8>::new();
    match clock {
        Some(c) => {
            let _ = write!(t, "{:02}:{:02}", c.hour, c.minute);
        }
        None => {
            t.push_truncated("--:--");
        }
    }
    let x = l.area.top_left.x + l.margin;
    let y = l.top + (6 * l.k_small) as i32;
    text_at(target, t.as_str(), &FONT_10X20, l.k_small, FG, Point::new(x, y))?;
    let (badge, color) = match embed {
        EmbedBackend::Npu => ("NPU", DIM),
        EmbedBackend::Cpu => ("CPU", DIM),
        EmbedBackend::CpuFallback => ("CPU!", AMBER),
    };
    let w = text_width(badge, &FONT_10X20, l.k_small) as i32;
    let right = l.area.top_left.x + l.width() as i32 - l.margin;
    text_at(target, badge, &FONT_10X20, l.k_small, color, Point::new(right - w, y))?;
    let rule_y = y + (24 * l.k_small) as i32;
    Line::new(Point::new(x, rule_y), Point::new(right, rule_y))
        .into_styled(PrimitiveStyle::with_stroke(DIM, 1))
        .draw(target)
}

fn fault_summary(f: &Faults, out: &mut ShortText<48>) {
    let mut first = true;
    for (on, s) in
        [(f.camera_lost, "camera lost"), (f.npu_fallback, "NPU down"), (f.broker_down, "MQTT down")]
    {
        if on {
            if !first {
                out.push_truncated(", ");
            }
            out.push_truncated(s);
            first = false;
        }
    }
}

fn stroke(s: u32) -> u32 {
    (s / 10).max(2)
}

/// A padlock: closed (white) or open (green, shackle lifted).
fn lock_icon<D>(target: &mut D, c: Point, s: u32, closed: bool) -> Result<(), D::Error>
where
    D: DrawTarget<Color = Rgb565>,
{
    let color = if closed { FG } else { GREEN };
    let si = s as i32;
    let body = Rectangle::new(
        Point::new(c.x - si * 7 / 20, c.y - si / 20),
        Size::new(s * 7 / 10, s / 2 + s / 20),
    );
    RoundedRectangle::with_equal_corners(body, Size::new(s / 12, s / 12))
        .into_styled(PrimitiveStyle::with_fill(color))
        .draw(target)?;
    let lift = if closed { 0 } else { si / 6 };
    let d = s * 9 / 20;
    let w = stroke(s) as i32;
    let shackle_c = Point::new(c.x, c.y - si / 5 - lift);
    Arc::with_center(shackle_c, d, Angle::from_degrees(180.0), Angle::from_degrees(180.0))
        .into_styled(PrimitiveStyle::with_stroke(color, w as u32))
        .draw(target)?;
    let r = d as i32 / 2;
    let legs: &[i32] = if closed { &[-r, r] } else { &[-r] };
    for &dx in legs {
        Line::new(Point::new(c.x + dx, shackle_c.y), Point::new(c.x + dx, c.y))
            .into_styled(PrimitiveStyle::with_stroke(color, w as u32))
            .draw(target)?;
    }
    // Keyhole.
    Circle::with_center(Point::new(c.x, c.y + si / 5), s / 8)
        .into_styled(PrimitiveStyle::with_fill(BG))
        .draw(target)
}

/// Camera framing corners around a small face: "come closer".
fn framing_icon<D>(target: &mut D, c: Point, s: u32, color: Rgb565) -> Result<(), D::Error>
where
    D: DrawTarget<Color = Rgb565>,
{
    let h = s as i32 / 2;
    let arm = s as i32 / 4;
    let st = PrimitiveStyle::with_stroke(color, stroke(s));
    for (sx, sy) in [(-1, -1), (1, -1), (-1, 1), (1, 1)] {
        let corner = Point::new(c.x + sx * h, c.y + sy * h);
        Polyline::new(&[
            Point::new(corner.x - sx * arm, corner.y),
            corner,
            Point::new(corner.x, corner.y - sy * arm),
        ])
        .into_styled(st)
        .draw(target)?;
    }
    Circle::with_center(c, s * 3 / 10).into_styled(PrimitiveStyle::with_fill(FG)).draw(target)?;
    // Arrows from the face towards the corners: "fill the frame".
    for (sx, sy) in [(-1, -1), (1, -1), (-1, 1), (1, 1)] {
        let from = Point::new(c.x + sx * h / 3, c.y + sy * h / 3);
        let to = Point::new(c.x + sx * h * 2 / 3, c.y + sy * h * 2 / 3);
        Line::new(from, to)
            .into_styled(PrimitiveStyle::with_stroke(color, stroke(s) / 2 + 1))
            .draw(target)?;
    }
    Ok(())
}

fn check_icon<D>(target: &mut D, c: Point, s: u32, fg: Rgb565, bg: Rgb565) -> Result<(), D::Error>
where
    D: DrawTarget<Color = Rgb565>,
{
    Circle::with_center(c, s).into_styled(PrimitiveStyle::with_fill(fg)).draw(target)?;
    let si = s as i32;
    Polyline::new(&[
        Point::new(c.x - si * 6 / 25, c.y),
        Point::new(c.x - si / 14, c.y + si * 4 / 25),
        Point::new(c.x + si / 4, c.y - si * 4 / 25),
    ])
    .into_styled(PrimitiveStyle::with_stroke(bg, stroke(s) + 2))
    .draw(target)
}

fn cross_icon<D>(target: &mut D, c: Point, s: u32, fg: Rgb565) -> Result<(), D::Error>
where
    D: DrawTarget<Color = Rgb565>,
{
    Circle::with_center(c, s).into_styled(PrimitiveStyle::with_fill(fg)).draw(target)?;
    let h = s as i32 / 5;
    let st = PrimitiveStyle::with_stroke(RED, stroke(s) + 2);
    Line::new(Point::new(c.x - h, c.y - h), Point::new(c.x + h, c.y + h))
        .into_styled(st)
        .draw(target)?;
    Line::new(Point::new(c.x - h, c.y + h), Point::new(c.x + h, c.y - h))
        .into_styled(st)
        .draw(target)
}

fn warning_icon<D>(target: &mut D, c: Point, s: u32, fg: Rgb565, bg: Rgb565) -> Result<(), D::Error>
where
    D: DrawTarget<Color = Rgb565>,
{
    let h = s as i32 / 2;
    Triangle::new(
        Point::new(c.x, c.y - h),
        Point::new(c.x - h - h / 8, c.y + h),
        Point::new(c.x + h + h / 8, c.y + h),
    )
    .into_styled(PrimitiveStyle::with_fill(fg))
    .draw(target)?;
    let w = stroke(s);
    Rectangle::new(Point::new(c.x - w as i32 / 2, c.y - h / 3), Size::new(w, (h * 3 / 5) as u32))
        .into_styled(PrimitiveStyle::with_fill(bg))
        .draw(target)?;
    Rectangle::new(Point::new(c.x - w as i32 / 2, c.y + h * 2 / 5), Size::new(w, w))
        .into_styled(PrimitiveStyle::with_fill(bg))
        .draw(target)
}

fn progress<D>(
    target: &mut D,
    l: &Layout,
    done: u8,
    needed: u8,
    y: i32,
    h: u32,
) -> Result<(), D::Error>
where
    D: DrawTarget<Color = Rgb565>,
{
    let w = l.width().saturating_sub(4 * l.margin as u32);
    let x = l.center_x() - w as i32 / 2;
    let frame = Rectangle::new(Point::new(x, y), Size::new(w, h));
    let filled = if needed == 0 { w } else { w * u32::from(done.min(needed)) / u32::from(needed) };
    Rectangle::new(Point::new(x, y), Size::new(filled, h))
        .into_styled(PrimitiveStyle::with_fill(FG))
        .draw(target)?;
    frame.into_styled(PrimitiveStyle::with_stroke(FG, 2)).draw(target)
}

/// Writes one technician row's value.
type RowFn<'a> = dyn Fn(&mut ShortText<40>) + 'a;

fn technician<D>(target: &mut D, l: &Layout, t: &TechView) -> Result<(), D::Error>
where
    D: DrawTarget<Color = Rgb565>,
{
    target.clear(BG)?;
    let k = l.k_small;
    let x = l.area.top_left.x + l.margin;
    let mut y = l.top + (6 * k) as i32;
    text_at(target, "Technician", &FONT_10X20, k, AMBER, Point::new(x, y))?;
    y += (24 * k) as i32;
    Line::new(Point::new(x, y), Point::new(x + l.width() as i32 - 2 * l.margin, y))
        .into_styled(PrimitiveStyle::with_stroke(DIM, 1))
        .draw(target)?;
    y += (6 * k) as i32;
    let c = &t.counters;
    let value_x = x + (advance(&FONT_9X15) * 9 * k) as i32;
    let rows: [(&str, &RowFn<'_>); 10] = [
        ("IP", &|s| s.push_truncated_str(t.ip.as_str())),
        ("version", &|s| s.push_truncated_str(t.version.as_str())),
        ("model", &|s| s.push_truncated_str(t.model.as_str())),
        ("camera", &|s| s.push_truncated_str(if t.camera_ok { "ok" } else { "LOST" })),
        ("embed", &|s| {
            s.push_truncated_str(match t.embed {
                EmbedBackend::Npu => "NPU",
                EmbedBackend::Cpu => "CPU",
                EmbedBackend::CpuFallback => "CPU (NPU err)",
            })
        }),
        ("mqtt", &|s| {
            s.push_truncated_str(match t.mqtt {
                LinkState::Up => "up",
                LinkState::Down => "DOWN",
                LinkState::Off => "off",
            })
        }),
        ("enrolled", &|s| {
            let _ = write!(s, "{}", t.enrolled);
        }),
        ("uptime", &|s| {
            let m = t.uptime_min;
            let _ = write!(s, "{}d {:02}:{:02}", m / 1440, m / 60 % 24, m % 60);
        }),
        ("granted", &|s| {
            let _ = write!(s, "{}  denied {}", c.granted, c.denied);
        }),
        ("unknown", &|s| {
            let _ = write!(s, "{}  cpu {}", c.unknown, c.cpu_fallbacks);
        }),
    ];
    let row_h = (17 * k) as i32;
    for (label, value) in rows {
        if y + row_h > l.bottom() {
            break;
        }
        text_at(target, label, &FONT_9X15, k, DIM, Point::new(x, y))?;
        let mut v = ShortText::<40>::new();
        value(&mut v);
        let warn = matches!(v.as_str(), "LOST" | "DOWN" | "CPU (NPU err)");
        text_at(
            target,
            v.as_str(),
            &FONT_9X15,
            k,
            if warn { AMBER } else { FG },
            Point::new(value_x, y),
        )?;
        y += row_h;
    }
    Ok(())
}

impl<const N: usize> ShortText<N> {
    /// `push_truncated` without the "did it fit" answer (for the technician rows).
    fn push_truncated_str(&mut self, s: &str) {
        self.push_truncated(s);
    }
}

#[cfg(test)]
mod tests {
    use embedded_graphics::mock_display::MockDisplay;
    use embedded_graphics::mono_font::ascii::FONT_6X10;

    use super::*;

    #[test]
    fn magnified_text_doubles_every_pixel() {
        let mut one = MockDisplay::<Rgb565>::new();
        text_at(&mut one, "Ab", &FONT_6X10, 1, FG, Point::zero()).unwrap();
        let mut two = MockDisplay::<Rgb565>::new();
        two.set_allow_overdraw(true);
        text_at(&mut two, "Ab", &FONT_6X10, 2, FG, Point::new(3, 4)).unwrap();
        let mut lit = 0;
        for y in 0..20 {
            for x in 0..24 {
                let small = one.get_pixel(Point::new(x / 2, y / 2));
                assert_eq!(two.get_pixel(Point::new(3 + x, 4 + y)), small, "at {x},{y}");
                lit += usize::from(small == Some(FG));
            }
        }
        assert!(lit > 40, "text drew almost nothing");
    }

    #[test]
    fn check_icon_is_a_disc_with_a_background_coloured_tick() {
        let mut d = MockDisplay::<Rgb565>::new();
        d.set_allow_overdraw(true);
        check_icon(&mut d, Point::new(32, 32), 60, FG, GREEN).unwrap();
        // Rim of the disc is foreground, outside is untouched, the tick's elbow is background.
        assert_eq!(d.get_pixel(Point::new(32, 4)), Some(FG));
        assert_eq!(d.get_pixel(Point::new(1, 1)), None);
        assert_eq!(d.get_pixel(Point::new(32 - 60 / 14, 32 + 60 * 4 / 25)), Some(GREEN));
    }

    #[test]
    fn long_lines_are_cut_to_the_width() {
        let mut d = MockDisplay::<Rgb565>::new();
        let l = Layout::of(Rectangle::new(Point::zero(), Size::new(64, 64)));
        // 64 px - 2 x 8 px margin = 48 px: eight 6x10 columns.
        line(&mut d, &l, "abcdefghijklmnop", &FONT_6X10, 1, FG, 0).unwrap();
        let area = d.affected_area();
        assert!(area.size.width <= 48, "{area:?}");
        assert!(area.top_left.x >= 8, "{area:?}");
    }
}
