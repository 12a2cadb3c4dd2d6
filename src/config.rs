//! The configuration file: TOML in, a validated [`Config`] out. Units live in key names
//! (`pulse_ms`), unknown keys are refused, and every error names the file and the exact key.
//!
//! Relative paths in the file are resolved against the file's own directory, so a config and
//! its models can move together. Must not: open models or devices; it only describes them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::detect::far::{self, FarSettings};
use crate::detect::{DetectorKind, DetectorSettings, MAX_FACES};
use crate::embed::cpu::RecognizerSettings;
use crate::frame::Filter;
use crate::gallery::MatchPolicy;
use crate::infer::{ChannelOrder, Optimization, Preprocess, SessionOptions};
use crate::track::MAX_TRACKS;

/// The largest `[tracker] max_tracks` accepted before the track table had a fixed bound.
const LEGACY_MAX_TRACKS: usize = 256;

// The stages' settings types, parsed and validated here (config.rs imports them; they import
// nothing from config.rs).
pub use crate::camera::{CameraConfig, CameraFormat};
pub use crate::door::{DoorBackend, DoorSection, GpioLines, LineId};
pub use crate::embed::{NpuBackend, NpuSection};

/// A configuration problem (the process exits with `Exit::Config`: `exit.rs`).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config {path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// TOML syntax error, unknown key or wrong type.
    #[error("config {path}: {location}{message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// `key `a.b`: ` and/or `line N: ` prefix.
        location: String,
        /// What the parser said.
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("config {path}: key `{key}`: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Dotted key.
        key: String,
        /// Why it is refused.
        reason: String,
    },
}

/// ONNX Runtime settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct OnnxRuntimeConfig {
    /// Path of `libonnxruntime.so`; default: `ORT_DYLIB_PATH`, the development cache, then the
    /// system library directories.
    pub library: Option<PathBuf>,
    /// Threads of each model's pool (they sleep between runs); 0 = one per core.
    #[serde(default)]
    pub intra_threads: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDetector {
    model: PathBuf,
    kind: DetectorKind,
    #[serde(default = "default_input")]
    input_width: u32,
    #[serde(default = "default_input")]
    input_height: u32,
    channel_order: Option<ChannelOrder>,
    mean: Option<[f32; 3]>,
    std: Option<[f32; 3]>,
    score_threshold: Option<f32>,
    nms_threshold: Option<f32>,
    #[serde(default = "default_filter")]
    resize_filter: FilterName,
    #[serde(default)]
    optimization: Optimization,
    #[serde(default)]
    fit_input: bool,
    #[serde(default)]
    far_faces: bool,
    far_scale: Option<f32>,
    far_max_eye_px: Option<f32>,
    far_window_width: Option<u32>,
    far_window_height: Option<u32>,
}

fn default_input() -> u32 {
    640
}

fn default_filter() -> FilterName {
    FilterName::Antialiased
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum FilterName {
    Bilinear,
    Antialiased,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecognizer {
    model: PathBuf,
    id: Option<String>,
    #[serde(default = "default_rgb")]
    channel_order: ChannelOrder,
    #[serde(default = "default_arcface_mean")]
    mean: [f32; 3],
    #[serde(default = "default_arcface_mean")]
    std: [f32; 3],
    #[serde(default)]
    flip: bool,
    #[serde(default)]
    optimization: Optimization,
    /// The gallery-size rule's threshold rise per tenfold people for this model.
    threshold_rise_per_decade: Option<f32>,
}

fn default_rgb() -> ChannelOrder {
    ChannelOrder::Rgb
}

fn default_arcface_mean() -> [f32; 3] {
    [127.5; 3]
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGallery {
    path: PathBuf,
    key_file: Option<PathBuf>,
    /// How the loop keeps the templates in memory (`gallery::Storage`).
    #[serde(default)]
    storage: crate::gallery::Storage,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatching {
    threshold: f32,
    #[serde(default)]
    margin: f32,
    /// The gallery-size rule (`decide::GalleryRule`): the false-positive identification
    /// rate per search to hold as people are enrolled. Absent: the bands at any size.
    fpir: Option<f32>,
    /// The per-comparison false-accept rate the bands (or `threshold`) were chosen at.
    #[serde(default = "default_bands_far")]
    bands_far: f32,
}

fn default_bands_far() -> f32 {
    1e-3
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCamera {
    source: CameraKind,
    path: Option<PathBuf>,
    #[serde(default = "default_fps")]
    fps: f64,
    #[serde(default, rename = "loop")]
    looped: bool,
    #[serde(default = "default_true")]
    real_time: bool,
    device: Option<PathBuf>,
    #[serde(default = "default_width")]
    width: u32,
    #[serde(default = "default_height")]
    height: u32,
    #[serde(default)]
    format: CameraFormat,
    #[serde(default = "default_buffers")]
    buffers: u32,
    #[serde(default = "default_frame_timeout")]
    frame_timeout_ms: u64,
}

fn default_fps() -> f64 {
    30.0
}
fn default_true() -> bool {
    true
}
fn default_width() -> u32 {
    1280
}
fn default_height() -> u32 {
    720
}
fn default_buffers() -> u32 {
    4
}
fn default_frame_timeout() -> u64 {
    500
}

/// Which frame source `portier run` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CameraKind {
    /// Files (MJPEG stream, image folder, one image).
    Replay,
    /// A V4L2 (UVC) camera.
    V4l2,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDoor {
    #[serde(default)]
    backend: DoorBackend,
    pulse_ms: Option<u64>,
    held_open_s: Option<u64>,
    contact: Option<ContactName>,
    lock: Option<LockName>,
    relay_active_high: Option<bool>,
    /// `relay_active_high = false` is refused unless this says the installer knows why.
    accept_active_low_relay: Option<bool>,
    exit_button_active_low: Option<bool>,
    debounce_ms: Option<u64>,
    gpio: Option<GpioLines>,
}

/// Only the `[door]` table of a config file, every other table ignored unread (see
/// [`Config::load_door`]).
#[derive(Debug, Deserialize)]
struct DoorOnly {
    #[serde(default)]
    door: RawDoor,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum ContactName {
    NormallyClosed,
    NormallyOpen,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum LockName {
    FailSecure,
    FailSafe,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDecision {
    votes: Option<usize>,
    window: Option<usize>,
    cooldown_s: Option<u64>,
    min_eye_px: Option<f32>,
    min_quality: Option<f32>,
    max_embeds_per_frame: Option<usize>,
    min_face_height_pct: Option<f32>,
    bands: Option<Vec<RawBand>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBand {
    min_eye_px: f32,
    threshold: f32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLiveness {
    #[serde(default = "default_true")]
    enabled: bool,
    v2_model: PathBuf,
    v1se_model: PathBuf,
    threshold: Option<f32>,
    passes: Option<usize>,
    v2_scale: Option<f64>,
    v1se_scale: Option<f64>,
}

/// The `[liveness]` section: the models and how a decision uses them (`liveness.rs`).
#[derive(Debug, Clone, PartialEq)]
pub struct LivenessSection {
    /// Whether the loop checks liveness before a grant (`portier eval liveness` works either
    /// way).
    pub enabled: bool,
    /// Models, scales, threshold and required passes.
    pub settings: crate::liveness::LivenessSettings,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTracker {
    iou_min: Option<f32>,
    max_age_ms: Option<u64>,
    max_tracks: Option<usize>,
    min_hits: Option<u32>,
}

/// The `[display]` section: which status display, and how it is mounted.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DisplaySection {
    /// none | snapshots (PNG files, for tests and demos) | framebuffer (feature `display-fb`) |
    /// spi (feature `display-spi`).
    #[serde(default)]
    pub backend: DisplayBackend,
    /// Panel width in pixels as mounted (snapshots, spi).
    #[serde(default = "default_panel_width")]
    pub width: u32,
    /// Panel height in pixels as mounted.
    #[serde(default = "default_panel_height")]
    pub height: u32,
    /// How the panel is mounted: 0, 90, 180 or 270 degrees.
    #[serde(default)]
    pub rotation_deg: u32,
    /// How much of a name the screen shows: first (default) | full | hidden.
    #[serde(default)]
    pub names: NamesShown,
    /// Framebuffer device (`/dev/fb0`).
    pub device: Option<PathBuf>,
    /// Where `snapshots` writes its PNG files.
    pub snapshot_dir: Option<PathBuf>,
    /// SPI panel wiring (backend = "spi").
    pub spi: Option<SpiPanelSection>,
}

impl Default for DisplaySection {
    /// No display; a 240x320 panel mounted upright, first names.
    fn default() -> Self {
        Self {
            backend: DisplayBackend::None,
            width: default_panel_width(),
            height: default_panel_height(),
            rotation_deg: 0,
            names: NamesShown::First,
            device: None,
            snapshot_dir: None,
            spi: None,
        }
    }
}

fn default_panel_width() -> u32 {
    240
}
fn default_panel_height() -> u32 {
    320
}

/// Status display backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DisplayBackend {
    /// No display.
    #[default]
    None,
    /// Every shown screen written as a PNG file.
    Snapshots,
    /// A Linux framebuffer.
    Framebuffer,
    /// An SPI panel (ST7789, ILI9341).
    Spi,
}

/// How much of a name the display shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NamesShown {
    /// The first word.
    #[default]
    First,
    /// The whole name.
    Full,
    /// No name.
    Hidden,
}

/// The `[display.spi]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpiPanelSection {
    /// `st7789` or `ili9341`.
    pub controller: String,
    /// spidev node.
    pub spidev: PathBuf,
    /// SPI clock.
    pub spi_hz: u32,
    /// GPIO chip of the D/C and reset lines.
    pub gpiochip: PathBuf,
    /// D/C line offset.
    pub dc_line: u32,
    /// Reset line offset, if wired.
    pub reset_line: Option<u32>,
    /// Panel offset in controller memory.
    #[serde(default)]
    pub offset_x: u16,
    /// See `offset_x`.
    #[serde(default)]
    pub offset_y: u16,
    /// Inverted colours (most ST7789 modules).
    #[serde(default)]
    pub invert: bool,
    /// BGR subpixel order.
    #[serde(default)]
    pub bgr: bool,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawService {
    camera_lost_restart_s: Option<u64>,
    counters_interval_s: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    onnxruntime: OnnxRuntimeConfig,
    detector: RawDetector,
    recognizer: RawRecognizer,
    gallery: RawGallery,
    matching: RawMatching,
    camera: Option<RawCamera>,
    #[serde(default)]
    door: RawDoor,
    #[serde(default)]
    decision: RawDecision,
    #[serde(default)]
    tracker: RawTracker,
    #[serde(default)]
    service: RawService,
    #[serde(default)]
    mqtt: crate::mqtt::client::MqttConfig,
    #[serde(default)]
    display: DisplaySection,
    #[serde(default)]
    npu: NpuSection,
    routing: Option<crate::route::RoutingConfig>,
    liveness: Option<RawLiveness>,
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where it was read from.
    pub source: PathBuf,
    /// ONNX Runtime.
    pub onnxruntime: OnnxRuntimeConfig,
    /// Face detector.
    pub detector: DetectorSettings,
    /// Face recognizer (CPU).
    pub recognizer: RecognizerSettings,
    /// Gallery database file.
    pub gallery_path: PathBuf,
    /// Device key that seals the gallery's templates (`gallery.key_file`; default: the gallery
    /// path with the extension `.key`). Created 0600 on first use.
    pub gallery_key_file: PathBuf,
    /// When a match counts.
    pub matching: MatchPolicy,
    /// The camera (`portier run`, live enrolment); `None` when the file has no `[camera]`.
    pub camera: Option<CameraConfig>,
    /// Longest wait for one camera frame.
    pub frame_timeout: std::time::Duration,
    /// The door.
    pub door: DoorSection,
    /// The loop: tracking, decision, watchdog.
    pub app: crate::app::AppSettings,
    /// MQTT (disabled unless `[mqtt] enabled = true`).
    pub mqtt: crate::mqtt::client::MqttConfig,
    /// The status display.
    pub display: DisplaySection,
    /// The NPU recognizer.
    pub npu: NpuSection,
    /// Routing between NPU and CPU (with an NPU; defaults from `route.rs` otherwise).
    pub routing: Option<crate::route::RoutingConfig>,
    /// Liveness (`None` without a `[liveness]` section).
    pub liveness: Option<LivenessSection>,
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let config = Self::parse(&text, path)?;
        // A password written into the config makes the config a secret file: the same
        // owner-only rule as `mqtt.password_file` (which is the better place for it).
        if config.mqtt.enabled && config.mqtt.password.is_some() {
            crate::secret::check_private(path).map_err(|e| ConfigError::Invalid {
                path: path.into(),
                key: "mqtt.password".into(),
                reason: format!(
                    "this file holds a password, so it must be private: {e}; or move the \
                     password to mqtt.password_file"
                ),
            })?;
        }
        Ok(config)
    }

    /// Reads and validates only the `[door]` table of a config file: what `portier secure-door`
    /// needs to drive the relay secure when the service has failed, even for a config that
    /// fails elsewhere (a bad key in `[mqtt]` is what made it fail, for example).
    pub fn load_door(path: &Path) -> Result<DoorSection, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let de = toml::Deserializer::parse(&text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            location: String::new(),
            message: e.message().replace('\n', " ").trim().to_string(),
        })?;
        let raw: DoorOnly = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            ConfigError::Parse {
                path: path.into(),
                location: format!("key `{key}`: "),
                message: e.into_inner().message().replace('\n', " ").trim().to_string(),
            }
        })?;
        let invalid = |key: &str, reason: String| ConfigError::Invalid {
            path: path.into(),
            key: key.into(),
            reason,
        };
        door_config(&raw.door, &invalid)
    }

    /// Parses and validates config text; `path` names it in errors and anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let parse_err = |e: toml::de::Error, key: String| {
            let line = e.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            let mut location = String::new();
            if !key.is_empty() && key != "." {
                location.push_str(&format!("key `{key}`: "));
            }
            if let Some(l) = line {
                location.push_str(&format!("line {l}: "));
            }
            let message = e.message().replace('\n', " ").trim().to_string();
            ConfigError::Parse { path: path.into(), location, message }
        };
        let de = toml::Deserializer::parse(text).map_err(|e| parse_err(e, String::new()))?;
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            parse_err(e.into_inner(), key)
        })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let resolve = |p: &Path| if p.is_absolute() { p.to_path_buf() } else { base.join(p) };
        let invalid = |key: &str, reason: String| ConfigError::Invalid {
            path: path.into(),
            key: key.into(),
            reason,
        };
        let session = |optimization| SessionOptions { optimization };

        let d = &raw.detector;
        for (key, v) in
            [("detector.input_width", d.input_width), ("detector.input_height", d.input_height)]
        {
            if v == 0 || v % 32 != 0 || v > 4096 {
                return Err(invalid(
                    key,
                    format!("must be a multiple of 32 in 32..=4096, got {v}"),
                ));
            }
        }
        // Each detector family's own normalisation (model cards: InsightFace scrfd.py; OpenCV
        // Zoo YuNet takes raw BGR).
        let (order, mean, std, score, nms) = match d.kind {
            DetectorKind::Scrfd => (ChannelOrder::Rgb, [127.5; 3], [128.0; 3], 0.5, 0.4),
            DetectorKind::Yunet => (ChannelOrder::Bgr, [0.0; 3], [1.0; 3], 0.6, 0.3),
        };
        let detector = DetectorSettings {
            path: resolve(&d.model),
            kind: d.kind,
            input_size: [d.input_width, d.input_height],
            fit_input: d.fit_input,
            preprocess: Preprocess {
                order: d.channel_order.unwrap_or(order),
                mean: d.mean.unwrap_or(mean),
                std: d.std.unwrap_or(std),
            },
            score_threshold: d.score_threshold.unwrap_or(score),
            nms_threshold: d.nms_threshold.unwrap_or(nms),
            filter: match d.resize_filter {
                FilterName::Bilinear => Filter::Bilinear,
                FilterName::Antialiased => Filter::Antialiased,
            },
            session: session(d.optimization),
            far: None,
        };
        check_unit(&invalid, "detector.score_threshold", detector.score_threshold)?;
        let far_keys = [
            d.far_scale.is_some(),
            d.far_max_eye_px.is_some(),
            d.far_window_width.is_some(),
            d.far_window_height.is_some(),
        ];
        if !d.far_faces && far_keys.contains(&true) {
            return Err(invalid(
                "detector.far_faces",
                "a far_* key is set but far_faces is off: set far_faces = true".into(),
            ));
        }
        let far = if d.far_faces { Some(far_settings(d, &invalid)?) } else { None };
        let detector = DetectorSettings { far, ..detector };
        check_unit(&invalid, "detector.nms_threshold", detector.nms_threshold)?;
        check_std(&invalid, "detector.std", detector.preprocess.std)?;

        let r = &raw.recognizer;
        let model_path = resolve(&r.model);
        let model_id = match &r.id {
            Some(id) => id.trim().to_string(),
            None => {
                model_path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
            }
        };
        if model_id.is_empty() || model_id.len() > 128 || model_id.chars().any(char::is_control) {
            return Err(invalid(
                "recognizer.id",
                format!("must be 1..=128 printable characters, got {model_id:?}"),
            ));
        }
        check_std(&invalid, "recognizer.std", r.std)?;
        let recognizer = RecognizerSettings {
            path: model_path,
            model_id,
            preprocess: Preprocess { order: r.channel_order, mean: r.mean, std: r.std },
            flip: r.flip,
            session: session(r.optimization),
        };

        let m = &raw.matching;
        if !(-1.0..=1.0).contains(&m.threshold) {
            return Err(invalid(
                "matching.threshold",
                format!("a cosine similarity in -1..=1, got {}", m.threshold),
            ));
        }
        if !(0.0..=1.0).contains(&m.margin) {
            return Err(invalid("matching.margin", format!("must be in 0..=1, got {}", m.margin)));
        }
        let (camera, frame_timeout) = camera_config(raw.camera.as_ref(), &resolve, &invalid)?;
        let door = door_config(&raw.door, &invalid)?;
        let app = app_settings(&raw, m.threshold, m.margin, frame_timeout, &invalid)?;
        let mut mqtt = raw.mqtt.clone();
        mqtt.resolve_paths(&base);
        if mqtt.enabled {
            mqtt.validate().map_err(|(key, reason)| invalid(key, reason))?;
        }
        let mut display = raw.display.clone();
        check_display(&mut display, &resolve, &invalid)?;
        let mut npu = raw.npu.clone();
        npu.model = npu.model.as_deref().map(resolve);
        npu.library = npu.library.as_deref().map(resolve);
        if npu.backend != NpuBackend::None && npu.model.is_none() {
            return Err(invalid("npu.model", "required when an NPU backend is set".into()));
        }
        if npu.multi_process_service && npu.backend != NpuBackend::Hailo {
            return Err(invalid(
                "npu.multi_process_service",
                "HailoRT's multi-process service applies to backend = \"hailo\" only; remove \
                 the key or set the backend"
                    .into(),
            ));
        }
        npu_preprocess_and_twin(&mut npu, &recognizer.preprocess, &resolve, &invalid)?;
        let routing = raw.routing.clone();
        let mut app = app;
        if let Some(r) = &routing {
            r.validate().map_err(|e| invalid(&format!("routing.{}", e.key), e.reason))?;
            // Each embedding space keeps its own thresholds: `[routing] bands` are the NPU
            // model's; the CPU recognizer's are `[decision] bands`, else `[routing] cpu_bands`,
            // else one band at `matching.threshold` (issue 16: a CPU fallback judged with the
            // NPU's thresholds admitted the CPU model's impostors).
            let size_bands = |bands: &[crate::route::BandThreshold]| -> Vec<_> {
                bands
                    .iter()
                    .map(|b| crate::decide::SizeBand {
                        min_eye_px: b.min_eye_distance_px,
                        threshold: b.threshold_cosine,
                    })
                    .collect()
            };
            app.decision.npu_bands = size_bands(&r.bands);
            if raw.decision.bands.is_none() && !r.cpu_bands.is_empty() {
                app.decision.bands = size_bands(&r.cpu_bands);
            }
            app.decision.validate().map_err(|reason| {
                let key = if reason.starts_with("npu_bands") {
                    "routing.bands"
                } else {
                    "routing.cpu_bands"
                };
                invalid(key, reason)
            })?;
        }
        app.decision.gallery = gallery_rule(&raw, &npu, &invalid)?;
        app.storage = raw.gallery.storage;
        app.decision.validate().map_err(|reason| invalid("matching", reason))?;
        let gallery_path = resolve(&raw.gallery.path);
        let gallery_key_file = raw
            .gallery
            .key_file
            .as_deref()
            .map_or_else(|| gallery_path.with_extension("key"), resolve);
        if gallery_key_file == gallery_path {
            return Err(invalid(
                "gallery.key_file",
                "must not be the gallery file itself (the key is kept outside the database)"
                    .to_owned(),
            ));
        }
        let liveness = match &raw.liveness {
            Some(l) => Some(liveness_config(l, &resolve, app.decision.votes, &invalid)?),
            None => None,
        };
        if let Some(l) = liveness.as_ref().filter(|l| l.enabled) {
            app.decision.liveness = Some(crate::decide::LivenessPolicy {
                threshold: l.settings.threshold,
                passes: l.settings.passes,
            });
        }
        Ok(Config {
            liveness,
            npu,
            routing,
            display,
            mqtt,
            camera,
            frame_timeout,
            door,
            app,
            source: path.into(),
            onnxruntime: OnnxRuntimeConfig {
                library: raw.onnxruntime.library.as_deref().map(resolve),
                intra_threads: raw.onnxruntime.intra_threads,
            },
            detector,
            recognizer,
            gallery_path,
            gallery_key_file,
            matching: MatchPolicy { threshold: m.threshold, margin: m.margin },
        })
    }
}

type Invalid<'a> = &'a dyn Fn(&str, String) -> ConfigError;

/// Fills the NPU model's channel order and normalisation from the CPU recognizer's where
/// The gallery-size rule from `[matching] fpir` and each model's `threshold_rise_per_decade`
/// (both required once `fpir` is set; the NPU's only with an NPU).
fn gallery_rule(
    raw: &RawConfig,
    npu: &NpuSection,
    invalid: Invalid<'_>,
) -> Result<Option<crate::decide::GalleryRule>, ConfigError> {
    let m = &raw.matching;
    let Some(fpir) = m.fpir else {
        for (key, set) in [
            ("recognizer.threshold_rise_per_decade", raw.recognizer.threshold_rise_per_decade),
            ("npu.threshold_rise_per_decade", npu.threshold_rise_per_decade),
        ] {
            if set.is_some() {
                return Err(invalid(key, "takes effect with `[matching] fpir`: set both".into()));
            }
        }
        return Ok(None);
    };
    let unit = |key: &str, v: f32, range: std::ops::RangeInclusive<f32>| {
        if range.contains(&v) {
            Ok(v)
        } else {
            Err(invalid(key, format!("must be in {range:?}, got {v}")))
        }
    };
    let fpir = unit("matching.fpir", fpir, 1e-6..=0.5)?;
    let bands_far = unit("matching.bands_far", m.bands_far, 1e-6..=0.5)?;
    let rise = |key: &str, v: Option<f32>| match v {
        Some(v) => unit(key, v, 0.0..=0.2),
        None => Err(invalid(
            key,
            "required with `[matching] fpir`: the model's threshold rise per tenfold people, \
             from `portier eval identify`"
                .into(),
        )),
    };
    let cpu_rise =
        rise("recognizer.threshold_rise_per_decade", raw.recognizer.threshold_rise_per_decade)?;
    let npu_rise = if npu.backend == NpuBackend::None {
        0.0
    } else {
        rise("npu.threshold_rise_per_decade", npu.threshold_rise_per_decade)?
    };
    Ok(Some(crate::decide::GalleryRule { fpir, bands_far, cpu_rise, npu_rise }))
}

/// `[npu]` leaves them out, checks them, and checks and resolves `npu.twin`.
fn npu_preprocess_and_twin(
    npu: &mut NpuSection,
    recognizer: &Preprocess,
    resolve: &dyn Fn(&Path) -> PathBuf,
    invalid: Invalid<'_>,
) -> Result<(), ConfigError> {
    npu.channel_order.get_or_insert(recognizer.order);
    let mean = *npu.mean.get_or_insert(recognizer.mean);
    let std = *npu.std.get_or_insert(recognizer.std);
    if !mean.iter().all(|m| m.is_finite()) {
        return Err(invalid("npu.mean", format!("every value must be finite, got {mean:?}")));
    }
    check_std(&invalid, "npu.std", std)?;
    let Some(twin) = npu.twin.as_deref().map(resolve) else { return Ok(()) };
    if npu.backend == NpuBackend::None {
        return Err(invalid(
            "npu.twin",
            "the float32 twin of an NPU model needs an NPU (`npu.backend`)".into(),
        ));
    }
    if twin.extension().is_none_or(|e| !e.eq_ignore_ascii_case("onnx")) {
        return Err(invalid(
            "npu.twin",
            format!(
                "the NPU model's float32 parent as an ONNX file (it runs on the CPU), got {}",
                twin.display()
            ),
        ));
    }
    if npu.model.as_deref() == Some(twin.as_path()) {
        return Err(invalid(
            "npu.twin",
            "is the NPU model itself: name its float32 parent (the network before \
             quantisation)"
                .into(),
        ));
    }
    npu.twin = Some(twin);
    Ok(())
}

fn liveness_config(
    raw: &RawLiveness,
    resolve: &dyn Fn(&Path) -> PathBuf,
    votes: usize,
    invalid: Invalid<'_>,
) -> Result<LivenessSection, ConfigError> {
    use crate::liveness::{LivenessSettings, DEFAULT_THRESHOLD, V1SE_SCALE, V2_SCALE};
    let settings = LivenessSettings {
        v2: resolve(&raw.v2_model),
        v1se: resolve(&raw.v1se_model),
        v2_scale: raw.v2_scale.unwrap_or(V2_SCALE),
        v1se_scale: raw.v1se_scale.unwrap_or(V1SE_SCALE),
        threshold: raw.threshold.unwrap_or(DEFAULT_THRESHOLD),
        // Two passes of the (default three) confirming votes: one unlucky frame of a live
        // person does not refuse them, one lucky frame of a photo does not open the door.
        passes: raw.passes.unwrap_or(2.min(votes)),
    };
    if !(settings.threshold > 0.0 && settings.threshold < 1.0) {
        return Err(invalid(
            "liveness.threshold",
            format!("a live probability in (0, 1), got {}", settings.threshold),
        ));
    }
    if settings.passes == 0 || settings.passes > votes {
        return Err(invalid(
            "liveness.passes",
            format!(
                "must be in 1..=decision.votes ({votes}): passes are counted among the votes \
                 that confirmed the identity, got {}",
                settings.passes
            ),
        ));
    }
    for (key, v) in
        [("liveness.v2_scale", settings.v2_scale), ("liveness.v1se_scale", settings.v1se_scale)]
    {
        if !(1.0..=10.0).contains(&v) {
            return Err(invalid(key, format!("must be in 1..=10 (face boxes), got {v}")));
        }
    }
    Ok(LivenessSection { enabled: raw.enabled, settings })
}

fn camera_config(
    raw: Option<&RawCamera>,
    resolve: &dyn Fn(&Path) -> PathBuf,
    invalid: Invalid<'_>,
) -> Result<(Option<CameraConfig>, Duration), ConfigError> {
    let Some(c) = raw else { return Ok((None, Duration::from_millis(default_frame_timeout()))) };
    if !(10..=10_000).contains(&c.frame_timeout_ms) {
        return Err(invalid(
            "camera.frame_timeout_ms",
            format!("must be in 10..=10000, got {}", c.frame_timeout_ms),
        ));
    }
    if !(c.fps.is_finite() && c.fps > 0.0 && c.fps <= 240.0) {
        return Err(invalid("camera.fps", format!("must be in (0, 240], got {}", c.fps)));
    }
    let timeout = Duration::from_millis(c.frame_timeout_ms);
    let camera = match c.source {
        CameraKind::Replay => {
            let Some(p) = &c.path else {
                return Err(invalid("camera.path", "required when source = \"replay\"".into()));
            };
            CameraConfig::Replay(crate::camera::replay::ReplaySettings {
                path: resolve(p),
                fps: c.fps,
                looped: c.looped,
                pace: c.real_time,
            })
        }
        CameraKind::V4l2 => {
            if !(16..=8192).contains(&c.width) || c.width % 2 != 0 {
                return Err(invalid(
                    "camera.width",
                    format!("must be even, 16..=8192, got {}", c.width),
                ));
            }
            if !(16..=8192).contains(&c.height) {
                return Err(invalid(
                    "camera.height",
                    format!("must be in 16..=8192, got {}", c.height),
                ));
            }
            if !(2..=32).contains(&c.buffers) {
                return Err(invalid(
                    "camera.buffers",
                    format!("must be in 2..=32, got {}", c.buffers),
                ));
            }
            CameraConfig::V4l2 {
                device: c.device.clone().unwrap_or_else(|| PathBuf::from("/dev/video0")),
                width: c.width,
                height: c.height,
                fps: c.fps,
                format: c.format,
                buffers: c.buffers,
            }
        }
    };
    Ok((Some(camera), timeout))
}

fn check_display(
    d: &mut DisplaySection,
    resolve: &dyn Fn(&Path) -> PathBuf,
    invalid: Invalid<'_>,
) -> Result<(), ConfigError> {
    if ![0, 90, 180, 270].contains(&d.rotation_deg) {
        return Err(invalid(
            "display.rotation_deg",
            format!("must be 0, 90, 180 or 270, got {}", d.rotation_deg),
        ));
    }
    for (key, v) in [("display.width", d.width), ("display.height", d.height)] {
        if !(64..=2048).contains(&v) {
            return Err(invalid(key, format!("must be in 64..=2048, got {v}")));
        }
    }
    d.snapshot_dir = d.snapshot_dir.as_deref().map(resolve);
    match d.backend {
        DisplayBackend::Snapshots if d.snapshot_dir.is_none() => {
            return Err(invalid(
                "display.snapshot_dir",
                "required by backend = \"snapshots\"".into(),
            ))
        }
        DisplayBackend::Spi => match &d.spi {
            None => return Err(invalid("display.spi", "required by backend = \"spi\"".into())),
            Some(spi) if !["st7789", "ili9341"].contains(&spi.controller.as_str()) => {
                return Err(invalid(
                    "display.spi.controller",
                    format!("must be st7789 or ili9341, got {:?}", spi.controller),
                ))
            }
            Some(_) => {}
        },
        _ => {}
    }
    Ok(())
}

fn door_config(raw: &RawDoor, invalid: Invalid<'_>) -> Result<DoorSection, ConfigError> {
    let mut door = crate::door::DoorConfig::default();
    if let Some(v) = raw.pulse_ms {
        door.pulse = Duration::from_millis(v);
    }
    if let Some(v) = raw.held_open_s {
        door.held_open_after = Duration::from_secs(v);
    }
    if let Some(v) = raw.debounce_ms {
        door.debounce = Duration::from_millis(v);
    }
    if let Some(c) = raw.contact {
        door.contact = match c {
            ContactName::NormallyClosed => crate::door::ContactWiring::NormallyClosed,
            ContactName::NormallyOpen => crate::door::ContactWiring::NormallyOpen,
        };
    }
    if let Some(l) = raw.lock {
        door.lock = match l {
            LockName::FailSecure => crate::door::LockWiring::FailSecure,
            LockName::FailSafe => crate::door::LockWiring::FailSafe,
        };
    }
    if let Some(v) = raw.relay_active_high {
        door.relay_active_high = v;
    }
    if !door.relay_active_high && raw.accept_active_low_relay != Some(true) {
        return Err(invalid(
            "door.relay_active_high",
            "an active-low relay input energises whenever the GPIO is not driven (boot, a line \
             released with dtparam=strict_gpiod, a crash, the Pi unplugged): with a fail-secure \
             strike the door opens. Use an active-high input (board/pi5-hailo8/WIRING.md), or \
             set door.accept_active_low_relay = true if the wiring holds it off another way"
                .into(),
        ));
    }
    if let Some(v) = raw.exit_button_active_low {
        door.exit_button_active_low = v;
    }
    if let Err(reason) = door.validate() {
        // DoorConfig names its fields; map them to the file's keys.
        let key = if reason.starts_with("pulse") {
            "door.pulse_ms"
        } else if reason.starts_with("held_open") {
            "door.held_open_s"
        } else {
            "door.debounce_ms"
        };
        return Err(invalid(key, reason));
    }
    if raw.backend != DoorBackend::Fake && raw.gpio.is_none() {
        return Err(invalid(
            "door.gpio",
            "required by the GPIO backends (relay, contact, exit_button lines)".into(),
        ));
    }
    Ok(DoorSection { backend: raw.backend, door, gpio: raw.gpio.clone() })
}

fn app_settings(
    raw: &RawConfig,
    threshold: f32,
    margin: f32,
    frame_timeout: Duration,
    invalid: Invalid<'_>,
) -> Result<crate::app::AppSettings, ConfigError> {
    use crate::decide::{DecisionConfig, SizeBand};
    let d = &raw.decision;
    let mut decision = DecisionConfig::single(threshold, margin);
    if let Some(v) = d.votes {
        decision.votes = v;
    }
    if let Some(v) = d.window {
        decision.window = v;
    }
    if let Some(v) = d.cooldown_s {
        if v > 86_400 {
            return Err(invalid("decision.cooldown_s", format!("must be at most 86400, got {v}")));
        }
        decision.cooldown = Duration::from_secs(v);
    }
    if let Some(v) = d.min_face_height_pct {
        decision.min_face_height_pct = v;
    }
    if let Some(bands) = &d.bands {
        decision.bands = bands
            .iter()
            .map(|b| SizeBand { min_eye_px: b.min_eye_px, threshold: b.threshold })
            .collect();
    }
    if let Err(reason) = decision.validate() {
        let field = reason.split([' ', '[', '.']).next().unwrap_or_default();
        return Err(invalid(&format!("decision.{field}"), reason));
    }
    let mut app = crate::app::AppSettings::new(decision);
    app.frame_timeout = frame_timeout;
    if let Some(v) = d.min_eye_px {
        if !(0.0..=1000.0).contains(&v) {
            return Err(invalid("decision.min_eye_px", format!("must be in 0..=1000, got {v}")));
        }
        app.min_eye_px = v;
    }
    if let Some(v) = d.min_quality {
        check_unit(&invalid, "decision.min_quality", v)?;
        app.min_quality = v;
    }
    if let Some(v) = d.max_embeds_per_frame {
        if !(1..=MAX_FACES).contains(&v) {
            return Err(invalid(
                "decision.max_embeds_per_frame",
                format!("must be in 1..={MAX_FACES}, got {v}"),
            ));
        }
        app.max_embeds_per_frame = v;
    }
    let t = &raw.tracker;
    if let Some(v) = t.iou_min {
        if !(v > 0.0 && v < 1.0) {
            return Err(invalid("tracker.iou_min", format!("must be in (0, 1), got {v}")));
        }
        app.tracker.iou_min = v;
    }
    if let Some(v) = t.max_age_ms {
        if !(50..=60_000).contains(&v) {
            return Err(invalid("tracker.max_age_ms", format!("must be in 50..=60000, got {v}")));
        }
        app.tracker.max_age = Duration::from_millis(v);
    }
    if let Some(v) = t.max_tracks {
        // Up to 256 was accepted before the track table had its bound: such a config still
        // starts (a door must not stay down after an upgrade), with the bound and a warning.
        if !(1..=LEGACY_MAX_TRACKS).contains(&v) {
            return Err(invalid(
                "tracker.max_tracks",
                format!("must be in 1..={MAX_TRACKS}, got {v}"),
            ));
        }
        if v > MAX_TRACKS {
            log::warn!(
                "config: key `tracker.max_tracks` = {v}: at most {MAX_TRACKS} tracks are \
                 followed (the track table's bound); using {MAX_TRACKS}"
            );
        }
        app.tracker.max_tracks = v.min(MAX_TRACKS);
    }
    if let Some(v) = t.min_hits {
        if !(1..=30).contains(&v) {
            return Err(invalid("tracker.min_hits", format!("must be in 1..=30, got {v}")));
        }
        app.tracker.min_hits = v;
    }
    let s = &raw.service;
    if let Some(v) = s.camera_lost_restart_s {
        app.camera_lost_restart = (v > 0).then(|| Duration::from_secs(v));
    }
    if let Some(v) = s.counters_interval_s {
        if v == 0 {
            return Err(invalid("service.counters_interval_s", "must be at least 1".into()));
        }
        app.counters_interval = Duration::from_secs(v);
    }
    Ok(app)
}

fn check_unit(
    invalid: &impl Fn(&str, String) -> ConfigError,
    key: &str,
    v: f32,
) -> Result<(), ConfigError> {
    if (0.0..=1.0).contains(&v) {
        Ok(())
    } else {
        Err(invalid(key, format!("must be in 0..=1, got {v}")))
    }
}

fn check_std(
    invalid: &impl Fn(&str, String) -> ConfigError,
    key: &str,
    v: [f32; 3],
) -> Result<(), ConfigError> {
    if v.iter().all(|s| s.is_finite() && *s != 0.0) {
        Ok(())
    } else {
        Err(invalid(key, format!("every divisor must be finite and non-zero, got {v:?}")))
    }
}

/// The far-face pass's settings of a `[detector]` with `far_faces = true`: defaults within the
/// input size, every value checked, and the windows large enough for the tiles to overlap by
/// one far face and still advance (a bounded rotation).
fn far_settings(d: &RawDetector, invalid: Invalid<'_>) -> Result<FarSettings, ConfigError> {
    let default = FarSettings::default();
    let far = FarSettings {
        scale: d.far_scale.unwrap_or(default.scale),
        max_eye_px: d.far_max_eye_px.unwrap_or(default.max_eye_px),
        window: [
            d.far_window_width.unwrap_or(default.window[0].min(d.input_width)),
            d.far_window_height.unwrap_or(default.window[1].min(d.input_height)),
        ],
    };
    for (key, v, most) in [
        ("detector.far_window_width", far.window[0], d.input_width),
        ("detector.far_window_height", far.window[1], d.input_height),
    ] {
        if v % 32 != 0 || !(32..=most).contains(&v) {
            return Err(invalid(
                key,
                format!("must be a multiple of 32 in 32..={most} (the input size), got {v}"),
            ));
        }
    }
    if !(far.scale.is_finite() && (0.25..=4.0).contains(&far.scale)) {
        return Err(invalid(
            "detector.far_scale",
            format!("must be in 0.25..=4 (1: native resolution), got {}", far.scale),
        ));
    }
    if !(far.max_eye_px.is_finite() && (4.0..=256.0).contains(&far.max_eye_px)) {
        return Err(invalid(
            "detector.far_max_eye_px",
            format!("must be in 4..=256 pixels, got {}", far.max_eye_px),
        ));
    }
    // The smallest window side in frame pixels must hold two far faces' overlap.
    let side = far.window[0].min(far.window[1]) as f32 / far.scale;
    let most = (side / 2.0 - 2.0 * far::EDGE_MARGIN) / far::FACE_WIDTH_PER_EYE;
    if far.max_eye_px > most {
        return Err(invalid(
            "detector.far_max_eye_px",
            format!(
                "must be at most {most:.0} for far windows of {}x{} at far_scale {} (tiles \
                 overlap by one far face and advance by half a window at least): lower it, or \
                 raise far_window_* or lower far_scale; got {}",
                far.window[0], far.window[1], far.scale, far.max_eye_px
            ),
        ));
    }
    Ok(far)
}

/// A config for unit tests elsewhere: the smallest detector, recognizer and gallery (files that
/// need not exist, relative to `/nonexistent`) followed by `extra` (`[matching]` and the
/// sections under test).
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) fn test_config(extra: &str) -> Config {
    let text = format!(
        "[detector]\nmodel = \"d.onnx\"\nkind = \"scrfd\"\n[recognizer]\nmodel = \"r.onnx\"\n\
         [gallery]\npath = \"g.db\"\n{extra}"
    );
    Config::parse(&text, Path::new("/nonexistent/portier.toml")).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[detector]
model = "det.onnx"
kind = "scrfd"

[recognizer]
model = "/abs/rec.onnx"

[gallery]
path = "gallery.db"

[matching]
threshold = 0.3
margin = 0.05
"#;

    #[test]
    fn parses_with_defaults_and_resolves_paths() {
        let c = Config::parse(GOOD, Path::new("/etc/portier/portier.toml")).unwrap();
        assert_eq!(c.detector.path, Path::new("/etc/portier/det.onnx"));
        assert_eq!(c.recognizer.path, Path::new("/abs/rec.onnx"));
        assert_eq!(c.recognizer.model_id, "rec");
        assert_eq!(c.detector.preprocess.std, [128.0; 3]);
        assert_eq!(c.detector.score_threshold, 0.5);
        assert_eq!(c.gallery_path, Path::new("/etc/portier/gallery.db"));
        assert_eq!(c.gallery_key_file, Path::new("/etc/portier/gallery.key"));
    }

    #[test]
    fn unknown_key_is_named() {
        let text = GOOD.replace("kind = \"scrfd\"", "kind = \"scrfd\"\nscore_treshold = 0.5");
        let err = Config::parse(&text, Path::new("c.toml")).unwrap_err().to_string();
        assert!(err.contains("c.toml") && err.contains("score_treshold"), "{err}");
        assert!(err.contains("line 5"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn wrong_type_names_the_dotted_key() {
        let text = GOOD.replace("threshold = 0.3", "threshold = \"high\"");
        let err = Config::parse(&text, Path::new("c.toml")).unwrap_err().to_string();
        assert!(err.contains("key `matching.threshold`"), "{err}");
    }

    #[test]
    fn out_of_range_names_the_key() {
        let text = GOOD.replace("kind = \"scrfd\"", "kind = \"scrfd\"\ninput_width = 100");
        let err = Config::parse(&text, Path::new("c.toml")).unwrap_err().to_string();
        assert!(err.contains("key `detector.input_width`"), "{err}");
        let text = GOOD.replace("margin = 0.05", "margin = 2.0");
        let err = Config::parse(&text, Path::new("c.toml")).unwrap_err().to_string();
        assert!(err.contains("key `matching.margin`"), "{err}");
        let text = GOOD.replace("kind = \"scrfd\"", "kind = \"retina\"");
        let err = Config::parse(&text, Path::new("c.toml")).unwrap_err().to_string();
        assert!(err.contains("detector.kind"), "{err}");
    }

    #[test]
    fn the_far_face_pass_is_off_by_default_and_its_keys_are_checked() {
        let c = Config::parse(GOOD, Path::new("c.toml")).unwrap();
        assert_eq!(c.detector.far, None);
        let on =
            |extra: &str| GOOD.replace("kind = \"scrfd\"", &format!("kind = \"scrfd\"\n{extra}"));
        let c = Config::parse(&on("far_faces = true\nfar_window_width = 480"), Path::new("c.toml"))
            .unwrap();
        let far = c.detector.far.unwrap();
        assert_eq!((far.scale, far.max_eye_px, far.window), (1.0, 32.0, [480, 192]));
        // A small detector input: the default window shrinks to it, and with the pass off the
        // far keys are not checked at all.
        let small = |extra: &str| {
            GOOD.replace(
                "kind = \"scrfd\"",
                &format!("kind = \"scrfd\"\ninput_width = 160\ninput_height = 160\n{extra}"),
            )
        };
        assert!(Config::parse(&small(""), Path::new("c.toml")).unwrap().detector.far.is_none());
        let err = Config::parse(&small("far_faces = true"), Path::new("c.toml")).unwrap_err();
        assert!(err.to_string().contains("key `detector.far_max_eye_px`"), "{err}");
        let c = Config::parse(&small("far_faces = true\nfar_max_eye_px = 12"), Path::new("c.toml"))
            .unwrap();
        assert_eq!(c.detector.far.unwrap().window, [160, 160]);
        for (extra, key) in [
            ("far_faces = true\nfar_scale = 0", "detector.far_scale"),
            ("far_faces = true\nfar_max_eye_px = 1000", "detector.far_max_eye_px"),
            ("far_faces = true\nfar_window_width = 100", "detector.far_window_width"),
            ("far_faces = true\nfar_window_height = 1024", "detector.far_window_height"),
            ("far_scale = 1.5", "detector.far_faces"),
            // 48 px faces overlap by 124 px: a 192 px window would barely advance.
            ("far_faces = true\nfar_max_eye_px = 48", "detector.far_max_eye_px"),
            ("far_faces = true\nfar_scale = 4", "detector.far_max_eye_px"),
        ] {
            let err = Config::parse(&on(extra), Path::new("c.toml")).unwrap_err().to_string();
            assert!(err.contains(&format!("key `{key}`")), "{extra}: {err}");
        }
    }

    #[test]
    fn appliance_sections_default_and_are_checked() {
        let c = Config::parse(GOOD, Path::new("c.toml")).unwrap();
        assert_eq!(c.display, DisplaySection::default());
        assert_eq!(c.camera, None);
        let text = format!("{GOOD}\n[display]\nbackend = \"snapshots\"\n");
        let err = Config::parse(&text, Path::new("c.toml")).unwrap_err().to_string();
        assert!(err.contains("key `display.snapshot_dir`"), "{err}");
        let text = format!("{GOOD}\n[decision]\nvotes = 2\nwindow = 5\n");
        let err = Config::parse(&text, Path::new("c.toml")).unwrap_err().to_string();
        assert!(err.contains("key `decision.votes`"), "{err}");
        let text = format!("{GOOD}\n[door]\npulse_ms = 0\n");
        let err = Config::parse(&text, Path::new("c.toml")).unwrap_err().to_string();
        assert!(err.contains("key `door.pulse_ms`"), "{err}");
        let text = format!("{GOOD}\n[camera]\nsource = \"replay\"\n");
        let err = Config::parse(&text, Path::new("c.toml")).unwrap_err().to_string();
        assert!(err.contains("key `camera.path`"), "{err}");
        let text = format!("{GOOD}\n[tracker]\nmax_tracks = 0\n");
        let err = Config::parse(&text, Path::new("c.toml")).unwrap_err().to_string();
        assert!(err.contains("key `tracker.max_tracks`"), "{err}");
        // What was accepted before the table's bound still starts, at the bound.
        let text = format!("{GOOD}\n[tracker]\nmax_tracks = 200\n");
        let c = Config::parse(&text, Path::new("c.toml")).unwrap();
        assert_eq!(c.app.tracker.max_tracks, MAX_TRACKS);
        let text = format!("{GOOD}\n[tracker]\nmax_tracks = 257\n");
        let err = Config::parse(&text, Path::new("c.toml")).unwrap_err().to_string();
        assert!(err.contains("must be in 1..=64, got 257"), "{err}");
    }

    #[test]
    fn multi_process_service_is_read_and_checked() {
        let npu = "\n[npu]\nbackend = \"hailo\"\nmodel = \"r.hef\"\n";
        let c = Config::parse(&format!("{GOOD}{npu}"), Path::new("c.toml")).unwrap();
        assert!(!c.npu.multi_process_service);
        let text = format!("{GOOD}{npu}multi_process_service = true\n");
        assert!(Config::parse(&text, Path::new("c.toml")).unwrap().npu.multi_process_service);
        let text = text.replace("\"hailo\"", "\"emulated\"");
        let err = Config::parse(&text, Path::new("c.toml")).unwrap_err().to_string();
        assert!(err.contains("key `npu.multi_process_service`"), "{err}");
        let text = format!("{GOOD}{npu}multi_process_service = \"yes\"\n");
        let err = Config::parse(&text, Path::new("c.toml")).unwrap_err().to_string();
        assert!(err.contains("npu.multi_process_service"), "{err}");
    }

    #[test]
    fn gallery_key_file_is_resolved_and_kept_apart_from_the_gallery() {
        let text = GOOD
            .replace("path = \"gallery.db\"", "path = \"gallery.db\"\nkey_file = \"keys/g.key\"");
        let c = Config::parse(&text, Path::new("/etc/portier/portier.toml")).unwrap();
        assert_eq!(c.gallery_key_file, Path::new("/etc/portier/keys/g.key"));
        let text = GOOD
            .replace("path = \"gallery.db\"", "path = \"gallery.db\"\nkey_file = \"gallery.db\"");
        let err = Config::parse(&text, Path::new("c.toml")).unwrap_err().to_string();
        assert!(err.contains("key `gallery.key_file`"), "{err}");
    }

    #[test]
    fn the_gallery_rule_needs_fpir_and_each_models_rise() {
        let parse =
            |text: &str| Config::parse(text, Path::new("c.toml")).map_err(|e| e.to_string());
        assert_eq!(parse(GOOD).unwrap().app.decision.gallery, None);
        let with_fpir = GOOD.replace("margin = 0.05", "margin = 0.05\nfpir = 0.01");
        let err = parse(&with_fpir).unwrap_err();
        assert!(err.contains("recognizer.threshold_rise_per_decade"), "{err}");
        let rise = |text: &str| {
            text.replace(
                "model = \"/abs/rec.onnx\"",
                "model = \"/abs/rec.onnx\"\nthreshold_rise_per_decade = 0.05",
            )
        };
        let g = parse(&rise(&with_fpir)).unwrap().app.decision.gallery.unwrap();
        assert_eq!((g.fpir, g.bands_far, g.cpu_rise, g.npu_rise), (0.01, 1e-3, 0.05, 0.0));
        let err = parse(&rise(GOOD)).unwrap_err();
        assert!(
            err.contains("recognizer.threshold_rise_per_decade") && err.contains("fpir"),
            "{err}"
        );
        let err = parse(&rise(&with_fpir.replace("0.01", "0.9"))).unwrap_err();
        assert!(err.contains("matching.fpir"), "{err}");
        // With an NPU, its model's rise is required too.
        let npu = "\n[npu]\nbackend = \"emulated\"\nmodel = \"/abs/npu.onnx\"\n";
        let err = parse(&format!("{}{npu}", rise(&with_fpir))).unwrap_err();
        assert!(err.contains("npu.threshold_rise_per_decade"), "{err}");
        let npu = format!("{npu}threshold_rise_per_decade = 0.04\n");
        let g = parse(&format!("{}{npu}", rise(&with_fpir))).unwrap().app.decision.gallery;
        assert_eq!(g.unwrap().npu_rise, 0.04);
    }

    #[test]
    fn routing_bands_are_the_npus_and_cpu_bands_the_cpus() {
        let routing = "\n[routing]\nnpu_min_eye_distance_px = 12.0\n\
                       [[routing.bands]]\nmin_eye_distance_px = 0.0\nthreshold_cosine = 0.25\n";
        // Without cpu_bands the CPU keeps matching.threshold (0.3), the NPU gets its bands.
        let c = Config::parse(&format!("{GOOD}{routing}"), Path::new("c.toml")).unwrap();
        let d = &c.app.decision;
        assert_eq!(d.threshold_in(crate::decide::Space::Cpu, 50.0), 0.3);
        assert_eq!(d.threshold_in(crate::decide::Space::Npu, 50.0), 0.25);
        let cpu = "[[routing.cpu_bands]]\nmin_eye_distance_px = 0.0\nthreshold_cosine = 0.41\n";
        let c = Config::parse(&format!("{GOOD}{routing}{cpu}"), Path::new("c.toml")).unwrap();
        assert_eq!(c.app.decision.threshold_in(crate::decide::Space::Cpu, 50.0), 0.41);
        let bad = cpu.replace("0.41", "1.41");
        let err = Config::parse(&format!("{GOOD}{routing}{bad}"), Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("routing.cpu_bands"), "{err}");
    }

    #[test]
    fn npu_twin_and_preprocessing_are_resolved_and_checked() {
        let npu = "\n[npu]\nbackend = \"hailo\"\nmodel = \"m/r.hef\"\n";
        // Without keys the NPU model takes the CPU recognizer's preprocessing.
        let c = Config::parse(&format!("{GOOD}{npu}"), Path::new("/etc/p/c.toml")).unwrap();
        assert_eq!(c.npu.preprocess(), c.recognizer.preprocess);
        assert_eq!(c.npu.twin, None);
        let keys = "twin = \"m/r.onnx\"\nchannel_order = \"bgr\"\nmean = [1.0, 2.0, 3.0]\n\
                    std = [4.0, 5.0, 6.0]\n";
        let c = Config::parse(&format!("{GOOD}{npu}{keys}"), Path::new("/etc/p/c.toml")).unwrap();
        assert_eq!(c.npu.twin.as_deref(), Some(Path::new("/etc/p/m/r.onnx")));
        assert_eq!(
            c.npu.preprocess(),
            Preprocess { order: ChannelOrder::Bgr, mean: [1.0, 2.0, 3.0], std: [4.0, 5.0, 6.0] }
        );
        for (line, key) in [
            ("twin = \"m/r.hef\"", "npu.twin"),
            ("twin = \"r.onnx\"\nmodel = \"r.onnx\"", "npu.twin"),
            ("std = [1.0, 0.0, 1.0]", "npu.std"),
            ("mean = [1.0, nan, 1.0]", "npu.mean"),
            ("channel_order = \"rgba\"", "npu.channel_order"),
        ] {
            let text = format!("{GOOD}\n[npu]\nbackend = \"emulated\"\n{line}\n");
            let text =
                if line.contains("model") { text } else { format!("{text}model = \"q.onnx\"\n") };
            let err = Config::parse(&text, Path::new("c.toml")).unwrap_err().to_string();
            assert!(err.contains(&format!("key `{key}`")), "{line}: {err}");
        }
        let text = format!("{GOOD}\n[npu]\ntwin = \"r.onnx\"\n");
        let err = Config::parse(&text, Path::new("c.toml")).unwrap_err().to_string();
        assert!(err.contains("key `npu.twin`") && err.contains("needs an NPU"), "{err}");
    }

    #[test]
    fn an_active_low_relay_needs_the_installer_to_accept_it() {
        let low = format!("{GOOD}\n[door]\nrelay_active_high = false\n");
        let err = Config::parse(&low, Path::new("c.toml")).unwrap_err().to_string();
        assert!(err.contains("key `door.relay_active_high`"), "{err}");
        assert!(err.contains("accept_active_low_relay"), "{err}");
        let accepted = format!("{low}accept_active_low_relay = true\n");
        let c = Config::parse(&accepted, Path::new("c.toml")).unwrap();
        assert!(!c.door.door.relay_active_high);
    }

    #[test]
    fn the_door_table_loads_even_when_the_rest_is_broken() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("portier.toml");
        // A bad key elsewhere (what made the service fail) and no [detector] at all.
        let text = "[mqtt]\nno_such_key = 1\n[door]\npulse_ms = 1500\nlock = \"fail-safe\"\n";
        std::fs::write(&path, text).unwrap();
        assert!(Config::load(&path).is_err());
        let door = Config::load_door(&path).unwrap();
        assert_eq!(door.door.pulse, Duration::from_millis(1500));
        assert_eq!(door.door.lock, crate::door::LockWiring::FailSafe);
        // A broken [door] itself is still named.
        std::fs::write(&path, "[door]\npulse_ms = 0\n").unwrap();
        let err = Config::load_door(&path).unwrap_err().to_string();
        assert!(err.contains("door.pulse_ms"), "{err}");
    }

    #[test]
    fn liveness_section_resolves_and_is_checked() {
        let c = Config::parse(GOOD, Path::new("c.toml")).unwrap();
        assert_eq!((c.liveness, c.app.decision.liveness), (None, None));
        let section = "\n[liveness]\nv2_model = \"l/v2.onnx\"\nv1se_model = \"/m/v1se.onnx\"\n";
        let c = Config::parse(&format!("{GOOD}{section}"), Path::new("/etc/p/c.toml")).unwrap();
        let l = c.liveness.unwrap();
        assert!(l.enabled);
        assert_eq!(l.settings.v2, Path::new("/etc/p/l/v2.onnx"));
        assert_eq!(l.settings.v1se, Path::new("/m/v1se.onnx"));
        assert_eq!((l.settings.passes, l.settings.v2_scale), (2, 2.7));
        assert_eq!(
            c.app.decision.liveness,
            Some(crate::decide::LivenessPolicy { threshold: 0.5, passes: 2 })
        );
        let off = format!("{GOOD}{section}enabled = false\n");
        assert_eq!(Config::parse(&off, Path::new("c.toml")).unwrap().app.decision.liveness, None);
        for (line, key) in [
            ("threshold = 1.5", "liveness.threshold"),
            ("passes = 4", "liveness.passes"),
            ("v1se_scale = 0.5", "liveness.v1se_scale"),
        ] {
            let text = format!("{GOOD}{section}{line}\n");
            let err = Config::parse(&text, Path::new("c.toml")).unwrap_err().to_string();
            assert!(err.contains(&format!("key `{key}`")), "{err}");
        }
    }

    #[test]
    fn missing_section_is_named() {
        let text = GOOD.replace("[gallery]\npath = \"gallery.db\"\n", "");
        let err = Config::parse(&text, Path::new("c.toml")).unwrap_err().to_string();
        assert!(err.contains("gallery"), "{err}");
    }
}
