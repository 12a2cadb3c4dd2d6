//! The start-up's phases, timed. After a crash or a watchdog restart the door is unusable
//! until portier decides on a frame again, so `portier run` logs how long each phase took
//! (`startup: door 0.4 ms, camera 1.2 ms, models 290.1 ms, ... (loop starts 300.2 ms after
//! the process did)`) and the loop logs when its first frame was decided; `portier bench
//! startup` starts the real binary, reads both lines and times them from the spawn.
//!
//! Must not: read anything but the monotonic clock, or allocate per mark beyond its list.

use std::fmt;
use std::time::{Duration, Instant};

/// The prefix of the phases' log line.
pub const PHASES_LINE: &str = "startup: ";

/// The text of the loop's line once its first frame is decided.
pub const FIRST_DECIDED: &str = "first frame decided";

/// Phases since a start, each timed from the end of the one before.
#[derive(Debug, Clone)]
pub struct Phases {
    start: Instant,
    last: Instant,
    phases: Vec<(&'static str, Duration)>,
}

impl Phases {
    /// Phases timed from `start` (the process's first instruction in `main`).
    pub fn new(start: Instant) -> Self {
        Self { start, last: start, phases: Vec::with_capacity(12) }
    }

    /// Ends the phase `name` now.
    pub fn mark(&mut self, name: &'static str) {
        let now = Instant::now();
        self.phases.push((name, now.saturating_duration_since(self.last)));
        self.last = now;
    }

    /// The phases so far.
    pub fn phases(&self) -> &[(&'static str, Duration)] {
        &self.phases
    }

    /// Time since the start.
    pub fn total(&self) -> Duration {
        self.last.saturating_duration_since(self.start)
    }
}

impl fmt::Display for Phases {
    /// `startup: name 1.2 ms, ... (loop starts 300.2 ms after the process did)`, the line
    /// [`parse_phases`] reads.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(PHASES_LINE)?;
        for (i, (name, d)) in self.phases.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{name} {:.1} ms", d.as_secs_f64() * 1e3)?;
        }
        write!(f, " (loop starts {:.1} ms after the process did)", self.total().as_secs_f64() * 1e3)
    }
}

/// The phases (name, milliseconds) and the total of a log line holding [`Phases`]'s text;
/// `None` when the line has none.
pub fn parse_phases(line: &str) -> Option<(Vec<(String, f64)>, f64)> {
    let rest = &line[line.find(PHASES_LINE)? + PHASES_LINE.len()..];
    let (list, total) = rest.split_once(" (loop starts ")?;
    let total = total.split_once(" ms")?.0.parse().ok()?;
    let mut phases = Vec::new();
    for item in list.split(", ") {
        let (name, ms) = item.strip_suffix(" ms")?.rsplit_once(' ')?;
        phases.push((name.to_string(), ms.parse().ok()?));
    }
    Some((phases, total))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_line_reads_back() {
        let start = Instant::now();
        let mut p = Phases::new(start);
        p.mark("door");
        std::thread::sleep(Duration::from_millis(2));
        p.mark("models");
        let line = format!("[2026-12-08T01:00:00Z INFO ] {p}");
        let (phases, total) = parse_phases(&line).unwrap();
        let names: Vec<_> = phases.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["door", "models"]);
        assert!(phases[1].1 >= 2.0, "{phases:?}");
        let sum: f64 = phases.iter().map(|(_, ms)| ms).sum();
        assert!((sum - total).abs() < 0.2, "{sum} vs {total}");
        assert_eq!(parse_phases("[INFO] running: replay"), None);
    }
}
