//! `portier bench display`: what one redraw of the status display costs, per screen, at each
//! panel size: choosing the screen, drawing it with embedded-graphics into the RGB565 canvas
//! (what the framebuffer backend then copies out in one memcpy; an SPI panel sends the canvas on
//! its own thread).
//!
//! Must not: touch a device; it draws into memory only.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::display::{
    AccessView, AlarmView, Canvas, ClockTime, Display, DisplayConfig, DoorView, Outcome, Status,
};

/// Cost of redrawing one screen.
#[derive(Debug, Clone, Serialize)]
pub struct ScreenCost {
    /// Panel size, `WxH`.
    pub panel: String,
    /// Which screen.
    pub screen: &'static str,
    /// Median time of one state change (choose + draw), microseconds.
    pub median_us: f64,
    /// 99th percentile, microseconds.
    pub p99_us: f64,
}

fn statuses<'a>() -> Vec<(&'static str, Status<'a>)> {
    let clock = Some(ClockTime { hour: 8, minute: 30 });
    let idle = Status { clock, ..Status::default() };
    let at = Duration::from_secs(1);
    vec![
        ("idle", idle),
        ("step closer", Status { step_closer: true, ..idle }),
        (
            "granted",
            Status {
                last: Some(AccessView { at, outcome: Outcome::Granted { name: "Ada Lovelace" } }),
                door: DoorView { locked: false, open: false, alarm: None },
                ..idle
            },
        ),
        ("unknown", Status { last: Some(AccessView { at, outcome: Outcome::Unknown }), ..idle }),
        (
            "spoof",
            Status { last: Some(AccessView { at, outcome: Outcome::SpoofSuspected }), ..idle },
        ),
        (
            "forced",
            Status {
                door: DoorView { locked: true, open: true, alarm: Some(AlarmView::Forced) },
                ..idle
            },
        ),
    ]
}

/// Redraws each screen `repeat` times (alternating with the idle screen so every update is a
/// state change) on 240x240, 240x320 and 320x240 canvases.
pub fn run(repeat: usize) -> Vec<ScreenCost> {
    let mut out = Vec::new();
    for (w, h) in [(240, 240), (240, 320), (320, 240)] {
        for (name, status) in statuses() {
            let config = DisplayConfig { min_dwell: Duration::ZERO, ..DisplayConfig::default() };
            let mut display = Display::new(config, Canvas::rgb565(w, h));
            let other = if name == "idle" { statuses()[3].1 } else { statuses()[0].1 };
            let mut times = Vec::with_capacity(repeat);
            for i in 0..repeat.max(1) {
                // The same monotonic time keeps the result on screen (held 3 s).
                let now = Duration::from_millis(1000 + i as u64);
                let _ = display.update(&other, now);
                let t0 = Instant::now();
                let _ = display.update(&status, now);
                times.push(t0.elapsed().as_secs_f64() * 1e6);
            }
            times.sort_by(f64::total_cmp);
            let pick = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
            out.push(ScreenCost {
                panel: format!("{w}x{h}"),
                screen: name,
                median_us: pick(0.5),
                p99_us: pick(0.99),
            });
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    #[test]
    fn every_screen_and_size_is_measured() {
        let r = super::run(3);
        assert_eq!(r.len(), 18);
        assert!(r.iter().all(|c| c.median_us > 0.0 && c.p99_us >= c.median_us));
    }
}
