//! Status display: what the person at the door and the technician see.
//!
//! The loop hands [`Display::update`] a [`Status`] (plain values borrowed from the appliance's
//! state, mirrored here so this module depends on nothing being built around it) and the time
//! since start. [`Screen::choose`] turns them into a [`Screen`], a small `Copy`-free but
//! heap-free value naming what should be on the panel; only when that value differs from what is
//! shown is anything drawn. [`render`] draws a screen onto any embedded-graphics
//! [`DrawTarget`](embedded_graphics::draw_target::DrawTarget) with `Rgb565` colours, laid out
//! for 240x240, 240x320 and 320x240 panels (and anything larger).
//!
//! Where the pixels go is a [`Sink`]:
//! * any [`Surface`] (an in-memory [`Canvas`] plus a `present` step) is drawn synchronously:
//!   [`Canvas`] itself (tests, benchmarks), [`Snapshots`] (PNG files, `--snapshot-dir`), and the
//!   Linux framebuffer (`fbdev`, feature `display-fb`), whose `present` is one `memcpy` into the
//!   mapped device memory;
//! * [`Worker`] runs a surface on its own thread behind a one-slot mailbox; the loop only
//!   overwrites the slot. The SPI panel (`spi`, feature `display-spi`) runs this way because
//!   streaming a frame over SPI takes tens of milliseconds.
//!
//! A failing sink is reported once through the returned error and then left alone for
//! [`DisplayConfig::retry_after`]: the loop logs it and carries on; the door never waits for the
//! screen.
//!
//! This module must not: read clocks, sleep, block on the panel, allocate per frame (screens hold
//! fixed-capacity text; canvases are sized once), or show more of a person's name than
//! [`NameDisplay`] allows.

use std::fmt::{self, Write as _};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{DisplayBackend, DisplaySection, NamesShown};

mod canvas;
mod draw;
#[cfg(feature = "display-fb")]
pub mod fbdev;
#[cfg(feature = "display-spi")]
pub mod spi;
mod worker;

#[cfg(test)]
mod tests;

pub use canvas::{Canvas, Field, PixelFormat, Rotation, Snapshots};
pub use draw::render;
pub use worker::Worker;

/// Display errors. Every variant is recoverable from the loop's point of view: report, go on.
#[derive(Debug, thiserror::Error)]
pub enum DisplayError {
    /// A device node or file could not be opened or read.
    #[error("cannot open display device {path}: {source}")]
    Open {
        /// The device or file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// An ioctl or mmap on the device failed.
    #[error("display device {path}: {what} failed: {source}")]
    Device {
        /// The device or file.
        path: PathBuf,
        /// The failing call (e.g. `FBIOGET_VSCREENINFO`).
        what: &'static str,
        /// The cause.
        source: std::io::Error,
    },
    /// The device's pixel layout is not one we can pack.
    #[error("unsupported pixel format: {0}")]
    Format(String),
    /// A snapshot could not be written.
    #[error("cannot write snapshot {path}: {source}")]
    Snapshot {
        /// The PNG file.
        path: PathBuf,
        /// The cause.
        source: image::ImageError,
    },
    /// The panel or its bus failed.
    #[error("panel error: {0}")]
    Panel(String),
    /// The display thread has stopped.
    #[error("display thread stopped: {0}")]
    Stopped(String),
    /// The configured backend is not compiled into this binary.
    #[error(
        "key `display.backend`: {backend} is not built into this binary (build with the \
         `{feature}` feature)"
    )]
    NotBuilt {
        /// The backend as the config names it.
        backend: &'static str,
        /// The cargo feature that builds it.
        feature: &'static str,
    },
}

/// Any display sink, chosen at start-up.
pub struct AnySink(Box<dyn Sink + Send>);

impl Sink for AnySink {
    fn show(&mut self, screen: &Screen) -> Result<(), DisplayError> {
        self.0.show(screen)
    }
}

impl std::fmt::Debug for AnySink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AnySink")
    }
}

/// Opens the display the config names (`None` for `backend = "none"`; as [`camera::open`]
/// opens the camera, a backend not built in is [`DisplayError::NotBuilt`]).
///
/// [`camera::open`]: crate::camera::open
pub fn open(section: &DisplaySection) -> Result<Option<Display<AnySink>>, DisplayError> {
    let config = DisplayConfig {
        names: match section.names {
            NamesShown::First => NameDisplay::FirstName,
            NamesShown::Full => NameDisplay::Full,
            NamesShown::Hidden => NameDisplay::Hidden,
        },
        ..DisplayConfig::default()
    };
    let sink: Box<dyn Sink + Send> = match section.backend {
        DisplayBackend::None => return Ok(None),
        DisplayBackend::Snapshots => {
            let dir = section.snapshot_dir.clone().unwrap_or_else(|| PathBuf::from("."));
            std::fs::create_dir_all(&dir)
                .map_err(|source| DisplayError::Open { path: dir.clone(), source })?;
            Box::new(Snapshots::new(dir, section.width, section.height))
        }
        #[cfg(feature = "display-fb")]
        DisplayBackend::Framebuffer => {
            let device = section.device.clone().unwrap_or_else(|| PathBuf::from("/dev/fb0"));
            let rotation = Rotation::from_degrees(section.rotation_deg).unwrap_or(Rotation::Deg0);
            Box::new(fbdev::Framebuffer::open(&device, rotation)?)
        }
        #[cfg(feature = "display-spi")]
        DisplayBackend::Spi => {
            use spi::{spawn, Controller, PanelConfig};
            let Some(spi) = &section.spi else {
                return Err(DisplayError::Panel("[display.spi] is missing".into()));
            };
            let size = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
            Box::new(spawn(PanelConfig {
                controller: if spi.controller == "ili9341" {
                    Controller::Ili9341
                } else {
                    Controller::St7789
                },
                spidev: spi.spidev.clone(),
                spi_hz: spi.spi_hz,
                gpiochip: spi.gpiochip.clone(),
                dc_line: spi.dc_line,
                reset_line: spi.reset_line,
                width: size(section.width),
                height: size(section.height),
                offset: (spi.offset_x, spi.offset_y),
                rotation: Rotation::from_degrees(section.rotation_deg).unwrap_or(Rotation::Deg0),
                invert: spi.invert,
                bgr: spi.bgr,
            })?)
        }
        #[cfg(not(feature = "display-fb"))]
        DisplayBackend::Framebuffer => {
            return Err(DisplayError::NotBuilt { backend: "framebuffer", feature: "display-fb" })
        }
        #[cfg(not(feature = "display-spi"))]
        DisplayBackend::Spi => {
            return Err(DisplayError::NotBuilt { backend: "spi", feature: "display-spi" })
        }
    };
    Ok(Some(Display::new(config, AnySink(sink))))
}

/// Fixed-capacity UTF-8 text: truncates (at a character boundary) instead of allocating.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ShortText<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> ShortText<N> {
    /// Empty text.
    pub const fn new() -> Self {
        Self { buf: [0; N], len: 0 }
    }

    /// `s`, cut to at most `N` bytes at a character boundary.
    pub fn from_str_truncated(s: &str) -> Self {
        let mut t = Self::new();
        t.push_truncated(s);
        t
    }

    /// Appends as much of `s` as fits; returns whether all of it did.
    pub fn push_truncated(&mut self, s: &str) -> bool {
        let room = N - self.len;
        let mut take = s.len().min(room);
        while !s.is_char_boundary(take) {
            take -= 1;
        }
        self.buf[self.len..self.len + take].copy_from_slice(&s.as_bytes()[..take]);
        self.len += take;
        take == s.len()
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        // Only whole characters of `&str`s are ever copied in, so this cannot fail.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }

    /// Whether the text is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<const N: usize> Default for ShortText<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> fmt::Write for ShortText<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // Truncation is the contract; never fail a formatting call over it.
        self.push_truncated(s);
        Ok(())
    }
}

impl<const N: usize> fmt::Debug for ShortText<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl<const N: usize> fmt::Display for ShortText<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Text of a name on screen (bytes; longer names are cut).
pub type NameText = ShortText<32>;

// ---------------------------------------------------------------------------------------------
// Inputs: what the appliance knows, as the display needs it.
// ---------------------------------------------------------------------------------------------

/// Wall-clock time of day (local), supplied by the caller; `None` in [`Status`] when the clock
/// is not synchronised yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockTime {
    /// Hour, 0..=23.
    pub hour: u8,
    /// Minute, 0..=59.
    pub minute: u8,
}

/// A door alarm (mirrors `door::Alarm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlarmView {
    /// Open too long after an authorised opening.
    HeldOpen,
    /// Opened while locked.
    Forced,
}

/// The door as the display shows it (mirrors `door::DoorState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DoorView {
    /// The lock is commanded locked.
    pub locked: bool,
    /// The contact says the door is open.
    pub open: bool,
    /// The current alarm.
    pub alarm: Option<AlarmView>,
}

impl Default for DoorView {
    fn default() -> Self {
        Self { locked: true, open: false, alarm: None }
    }
}

/// The outcome of one access decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// A known person was let in; `name` is the gallery name (cut per [`NameDisplay`]).
    Granted {
        /// The gallery name.
        name: &'a str,
    },
    /// A known person who may not enter now (schedule, revoked).
    Denied,
    /// Nobody in the gallery matched.
    Unknown,
    /// An enrolled person's face failed the liveness check (a photo or screen is suspected).
    SpoofSuspected,
}

/// The latest access decision and when it was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccessView<'a> {
    /// Monotonic time of the decision (same clock as `now`).
    pub at: Duration,
    /// The decision.
    pub outcome: Outcome<'a>,
}

/// Which backend embeds faces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EmbedBackend {
    /// The NPU, as configured.
    #[default]
    Npu,
    /// The CPU, by configuration (no NPU fitted).
    Cpu,
    /// The CPU because the NPU failed: a fault worth showing.
    CpuFallback,
}

/// State of the MQTT link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LinkState {
    /// Connected to the broker.
    #[default]
    Up,
    /// Configured but not connected: a fault worth showing.
    Down,
    /// Not configured.
    Off,
}

/// Device health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    /// Frames are arriving.
    pub camera_ok: bool,
    /// Embedding backend in use.
    pub embed: EmbedBackend,
    /// MQTT link.
    pub mqtt: LinkState,
}

impl Default for Health {
    fn default() -> Self {
        Self { camera_ok: true, embed: EmbedBackend::Npu, mqtt: LinkState::Up }
    }
}

/// Enrolment in progress at the door.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnrolmentView<'a> {
    /// The name being enrolled.
    pub name: &'a str,
    /// Good captures so far.
    pub captured: u8,
    /// Captures needed.
    pub needed: u8,
}

/// Counters for the technician screen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters {
    /// Doors opened for recognised faces.
    pub granted: u32,
    /// Known faces refused.
    pub denied: u32,
    /// Unknown faces.
    pub unknown: u32,
    /// Faces embedded on the CPU because the NPU's embedding was not trustworthy.
    pub cpu_fallbacks: u32,
}

/// What the technician screen shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TechInfo<'a> {
    /// The appliance's address, if it has one.
    pub ip: Option<IpAddr>,
    /// Software version (e.g. `env!("CARGO_PKG_VERSION")`).
    pub version: &'a str,
    /// Recognition model in use.
    pub model: &'a str,
    /// People enrolled.
    pub enrolled: u32,
    /// Time since start.
    pub uptime: Duration,
    /// Event counters.
    pub counters: Counters,
}

/// Everything the display needs for one update; built by the loop from its own state without
/// allocating (names are borrowed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Status<'a> {
    /// Local time of day, if known.
    pub clock: Option<ClockTime>,
    /// The door.
    pub door: DoorView,
    /// The latest access decision.
    pub last: Option<AccessView<'a>>,
    /// A face is in view but too small to decide: ask the person to step closer.
    pub step_closer: bool,
    /// Device health.
    pub health: Health,
    /// Enrolment in progress.
    pub enrolment: Option<EnrolmentView<'a>>,
    /// Technician mode is on (e.g. by a long press or a signed command): show this.
    pub technician: Option<TechInfo<'a>>,
}

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/// How much of a name the screen shows (privacy: a door screen is visible to passers-by).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NameDisplay {
    /// The first word of the gallery name.
    #[default]
    FirstName,
    /// The whole gallery name.
    Full,
    /// No name, only "Welcome".
    Hidden,
}

/// Display behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DisplayConfig {
    /// How much of a name to show.
    pub names: NameDisplay,
    /// How long an access result stays on screen.
    pub result_hold: Duration,
    /// Shortest time a low-priority screen (idle, step closer, enrolment, technician, error)
    /// stays before the next low-priority change: stops a flickering hint from redrawing every
    /// frame. Results and alarms are shown at once.
    pub min_dwell: Duration,
    /// After a sink error, how long to leave the display alone before trying again.
    pub retry_after: Duration,
}

impl Default for DisplayConfig {
    /// First names, results held 3 s, 500 ms dwell, retry after 10 s.
    fn default() -> Self {
        Self {
            names: NameDisplay::FirstName,
            result_hold: Duration::from_secs(3),
            min_dwell: Duration::from_millis(500),
            retry_after: Duration::from_secs(10),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Screens
// ---------------------------------------------------------------------------------------------

/// Faults shown on the idle footer and the error screen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Faults {
    /// No frames from the camera.
    pub camera_lost: bool,
    /// The NPU failed; the CPU embeds every face.
    pub npu_fallback: bool,
    /// The MQTT broker is unreachable.
    pub broker_down: bool,
}

impl Faults {
    fn of(health: &Health) -> Self {
        Self {
            camera_lost: !health.camera_ok,
            npu_fallback: health.embed == EmbedBackend::CpuFallback,
            broker_down: health.mqtt == LinkState::Down,
        }
    }

    /// Whether any fault is present.
    pub fn any(&self) -> bool {
        self.camera_lost || self.npu_fallback || self.broker_down
    }
}

/// The technician screen's content, pre-formatted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TechView {
    /// `IP 192.168.1.20` or `IP none`.
    pub ip: ShortText<48>,
    /// Software and model versions.
    pub version: ShortText<32>,
    /// Recognition model.
    pub model: ShortText<32>,
    /// Uptime, whole minutes.
    pub uptime_min: u32,
    /// People enrolled.
    pub enrolled: u32,
    /// Counters.
    pub counters: Counters,
    /// Embedding backend.
    pub embed: EmbedBackend,
    /// MQTT link.
    pub mqtt: LinkState,
    /// Camera state.
    pub camera_ok: bool,
}

/// What is on the panel. Comparing two screens decides whether to redraw, so a screen holds
/// exactly what is drawn (the clock to the minute, names already cut for privacy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Screen {
    /// Waiting for someone.
    Idle {
        /// Time of day.
        clock: Option<ClockTime>,
        /// The door.
        door: DoorView,
        /// Embedding backend.
        embed: EmbedBackend,
        /// Faults to show in the footer.
        faults: Faults,
    },
    /// A face is in view but too small to decide.
    StepCloser,
    /// Access granted; `name` is empty when names are hidden.
    Granted {
        /// The name to show.
        name: NameText,
    },
    /// A known person refused.
    Denied,
    /// Nobody matched.
    Unknown,
    /// A face that failed the liveness check.
    SpoofSuspected,
    /// A door alarm.
    Alarm(AlarmView),
    /// Recognition cannot work (camera lost); lists every fault.
    Error(Faults),
    /// Enrolment in progress.
    Enrolling {
        /// Name being enrolled (cut like granted names).
        name: NameText,
        /// Good captures so far.
        captured: u8,
        /// Captures needed.
        needed: u8,
    },
    /// Technician details.
    Technician(TechView),
}

impl Screen {
    /// The screen for `status` at `now` (pure). Priority, highest first: door alarm, a fresh
    /// access result, camera lost, technician, enrolment, step closer, idle.
    pub fn choose(config: &DisplayConfig, status: &Status<'_>, now: Duration) -> Self {
        if let Some(alarm) = status.door.alarm {
            return Screen::Alarm(alarm);
        }
        if let Some(last) = status.last {
            if now.saturating_sub(last.at) < config.result_hold && last.at <= now {
                return match last.outcome {
                    Outcome::Granted { name } => {
                        Screen::Granted { name: shown_name(config.names, name) }
                    }
                    Outcome::Denied => Screen::Denied,
                    Outcome::Unknown => Screen::Unknown,
                    Outcome::SpoofSuspected => Screen::SpoofSuspected,
                };
            }
        }
        let faults = Faults::of(&status.health);
        if faults.camera_lost {
            return Screen::Error(faults);
        }
        if let Some(tech) = status.technician {
            return Screen::Technician(tech_view(&tech, &status.health));
        }
        if let Some(e) = status.enrolment {
            let name = shown_name(
                if config.names == NameDisplay::Hidden {
                    NameDisplay::FirstName
                } else {
                    config.names
                },
                e.name,
            );
            return Screen::Enrolling { name, captured: e.captured, needed: e.needed };
        }
        if status.step_closer {
            return Screen::StepCloser;
        }
        Screen::Idle { clock: status.clock, door: status.door, embed: status.health.embed, faults }
    }

    /// Results and alarms replace any screen at once; the rest respect the dwell time.
    fn urgent(&self) -> bool {
        matches!(
            self,
            Screen::Granted { .. }
                | Screen::Denied
                | Screen::Unknown
                | Screen::SpoofSuspected
                | Screen::Alarm(_)
        )
    }

    /// A short lowercase name for the kind of screen (snapshot file names, logs).
    pub fn kind(&self) -> &'static str {
        match self {
            Screen::Idle { .. } => "idle",
            Screen::StepCloser => "step-closer",
            Screen::Granted { .. } => "granted",
            Screen::Denied => "denied",
            Screen::Unknown => "unknown",
            Screen::SpoofSuspected => "spoof",
            Screen::Alarm(AlarmView::Forced) => "alarm-forced",
            Screen::Alarm(AlarmView::HeldOpen) => "alarm-held-open",
            Screen::Error(_) => "error",
            Screen::Enrolling { .. } => "enrolling",
            Screen::Technician(_) => "technician",
        }
    }
}

fn shown_name(policy: NameDisplay, name: &str) -> NameText {
    match policy {
        NameDisplay::Full => NameText::from_str_truncated(name.trim()),
        NameDisplay::FirstName => {
            NameText::from_str_truncated(name.split_whitespace().next().unwrap_or(""))
        }
        NameDisplay::Hidden => NameText::new(),
    }
}

fn tech_view(tech: &TechInfo<'_>, health: &Health) -> TechView {
    let mut ip = ShortText::new();
    match tech.ip {
        Some(addr) => {
            let _ = write!(ip, "{addr}");
        }
        None => {
            ip.push_truncated("none");
        }
    }
    TechView {
        ip,
        version: ShortText::from_str_truncated(tech.version),
        model: ShortText::from_str_truncated(tech.model),
        uptime_min: u32::try_from(tech.uptime.as_secs() / 60).unwrap_or(u32::MAX),
        enrolled: tech.enrolled,
        counters: tech.counters,
        embed: health.embed,
        mqtt: health.mqtt,
        camera_ok: health.camera_ok,
    }
}

// ---------------------------------------------------------------------------------------------
// Sinks and the driver
// ---------------------------------------------------------------------------------------------

/// Where screens go. [`Display::update`] calls `show` only when the screen changed.
pub trait Sink {
    /// Shows `screen`. Must return within a bounded time (a memcpy, a file write, or a mailbox
    /// post), never wait for a slow panel.
    fn show(&mut self, screen: &Screen) -> Result<(), DisplayError>;
}

/// An in-memory [`Canvas`] plus a step that makes its contents visible.
pub trait Surface {
    /// The canvas to draw on (sized once, at open).
    fn canvas(&mut self) -> &mut Canvas;
    /// Makes the canvas visible (copy to the device, write a file, nothing).
    fn present(&mut self, screen: &Screen) -> Result<(), DisplayError>;
}

impl<S: Surface> Sink for S {
    fn show(&mut self, screen: &Screen) -> Result<(), DisplayError> {
        match render(screen, self.canvas()) {
            Ok(()) => {}
            Err(never) => match never {},
        }
        self.present(screen)
    }
}

/// The display driver: decides what to show and shows it only when it changes.
#[derive(Debug)]
pub struct Display<S> {
    config: DisplayConfig,
    sink: S,
    /// What the sink shows, and since when.
    shown: Option<(Screen, Duration)>,
    /// When the last sink error happened.
    failed_at: Option<Duration>,
}

impl<S: Sink> Display<S> {
    /// A display drawing to `sink`; the first [`update`](Self::update) draws.
    pub fn new(config: DisplayConfig, sink: S) -> Self {
        Self { config, sink, shown: None, failed_at: None }
    }

    /// Shows the screen for `status` if it differs from the one shown. Returns whether it drew.
    ///
    /// On a sink error the error is returned once (for the caller to log) and the display is
    /// left alone for [`DisplayConfig::retry_after`]; then the current screen is drawn again.
    pub fn update(&mut self, status: &Status<'_>, now: Duration) -> Result<bool, DisplayError> {
        if let Some(at) = self.failed_at {
            if now.saturating_sub(at) < self.config.retry_after {
                return Ok(false);
            }
            self.failed_at = None;
        }
        let screen = Screen::choose(&self.config, status, now);
        if let Some((shown, since)) = &self.shown {
            if *shown == screen {
                return Ok(false);
            }
            if !screen.urgent()
                && !shown.urgent()
                && now.saturating_sub(*since) < self.config.min_dwell
            {
                return Ok(false);
            }
        }
        match self.sink.show(&screen) {
            Ok(()) => {
                self.shown = Some((screen, now));
                Ok(true)
            }
            Err(err) => {
                self.shown = None;
                self.failed_at = Some(now);
                Err(err)
            }
        }
    }

    /// The screen on the panel, if any.
    pub fn shown(&self) -> Option<&Screen> {
        self.shown.as_ref().map(|(s, _)| s)
    }

    /// The sink.
    pub fn sink(&self) -> &S {
        &self.sink
    }

    /// The sink, mutably (e.g. to read a canvas in tests).
    pub fn sink_mut(&mut self) -> &mut S {
        &mut self.sink
    }
}
