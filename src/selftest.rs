//! `portier selftest`: one command that tells a field technician what works and what does not.
//! Every check runs, whatever failed before it, and becomes one row of a [`Report`]: the config,
//! ONNX Runtime, the two models (one inference each on a synthetic input), the liveness models
//! when configured (one check on a grey frame), the camera (opened, one frame decoded), the NPU,
//! whether the NPU's model is installed (`npu: model`), the door's GPIO lines, the MQTT broker
//! (a message sent to `<base>/selftest` and received back), the gallery and the free disk space.
//!
//! A check is [`Status::Absent`] when the config does not ask for it or the binary is built
//! without it (no NPU on a laptop is absent, never passed), [`Status::Fail`] when what the
//! config asks for does not work, including a backend it names that this binary does not
//! have (then `portier run` refuses the config too).
//!
//! Must not: change what it checks. It never creates or writes the gallery, pulses the relay
//! only when asked ([`SelftestOptions::pulse_relay`]), publishes nothing retained and only to
//! `<base>/selftest` under its own client id (so the running appliance keeps its session),
//! touches no outbox. Every wait is bounded by the options' timeouts. It reuses the
//! appliance's own opening code for each part (one piece of code for one job) and adds no
//! recovery logic of its own.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::camera::{FrameSource, PixelFormat};
use crate::config::{CameraConfig, Config, DoorBackend};
use crate::frame::{FrameDecoder, RgbImage};

/// Below this much free space a disk check warns (the gallery and the outbox grow).
pub const DISK_WARN_BYTES: u64 = 100 * 1024 * 1024;
/// Below this much free space a disk check fails (SQLite needs room for its journal).
pub const DISK_FAIL_BYTES: u64 = 10 * 1024 * 1024;

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Works.
    Pass,
    /// Works, with something the technician should look at.
    Warn,
    /// Does not work: `portier selftest` exits non-zero.
    Fail,
    /// Not configured, or not built into this binary: not checked, and not passed either.
    Absent,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
            Status::Absent => "ABSENT",
        }
    }
}

/// One row of the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    /// What was checked (`camera`, `mqtt`, `disk: gallery`).
    pub name: &'static str,
    /// The outcome.
    pub status: Status,
    /// What was found, or why it failed, in one line.
    pub detail: String,
    /// How long the check took.
    #[serde(rename = "duration_ms", serialize_with = "as_millis")]
    pub duration: Duration,
}

fn as_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((d.as_secs_f64() * 1e4).round() / 10.0)
}

/// Every check, in the order they ran.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    /// The rows.
    pub checks: Vec<Check>,
}

impl Report {
    /// True when no check failed (warnings and absent checks do not fail a selftest).
    pub fn passed(&self) -> bool {
        self.count(Status::Fail) == 0
    }

    /// How many checks ended with `status`.
    pub fn count(&self, status: Status) -> usize {
        self.checks.iter().filter(|c| c.status == status).count()
    }

    /// The check named `name`, if it ran.
    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }

    /// The report as JSON: the rows, the counts and the verdict.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "checks": self.checks,
            "passed": self.count(Status::Pass),
            "failed": self.count(Status::Fail),
            "absent": self.count(Status::Absent),
            "warned": self.count(Status::Warn),
            "ok": self.passed(),
        })
    }
}

impl fmt::Display for Report {
    /// An aligned table (check, status, time, detail) and the summary line
    /// `selftest: N passed, M failed, K absent, W warned`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name_w = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(0).max(5);
        writeln!(f, "{:name_w$}  {:6}  {:>8}  detail", "check", "status", "time")?;
        for c in &self.checks {
            let ms = format!("{} ms", c.duration.as_millis());
            writeln!(f, "{:name_w$}  {:6}  {ms:>8}  {}", c.name, c.status.label(), c.detail)?;
        }
        write!(
            f,
            "selftest: {} passed, {} failed, {} absent, {} warned",
            self.count(Status::Pass),
            self.count(Status::Fail),
            self.count(Status::Absent),
            self.count(Status::Warn)
        )
    }
}

/// What the technician asked for, and how long each part may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelftestOptions {
    /// Release the lock for the configured pulse and relock it (the door really opens).
    pub pulse_relay: bool,
    /// Longest wait for the camera's first frame.
    pub camera_timeout: Duration,
    /// Longest wait for the MQTT round trip: connect, subscribe, publish, receive.
    pub mqtt_timeout: Duration,
    /// The aligned face crops of the NPU acceptance check (`portier npu check --crops`).
    pub npu_crops: PathBuf,
}

impl Default for SelftestOptions {
    /// No relay pulse; 5 s for the camera's first frame (a UVC camera takes a second or two to
    /// start streaming), 5 s for the MQTT round trip; the NPU crops at
    /// [`crate::eval::npu_check::DEFAULT_CROPS`].
    fn default() -> Self {
        Self {
            pulse_relay: false,
            camera_timeout: Duration::from_secs(5),
            mqtt_timeout: Duration::from_secs(5),
            npu_crops: PathBuf::from(crate::eval::npu_check::DEFAULT_CROPS),
        }
    }
}

/// What a check of this module itself can fail with (the other checks report the errors of
/// the modules they call).
#[derive(Debug, thiserror::Error)]
pub enum SelftestError {
    /// `statvfs` failed on a folder.
    #[error("{path}: cannot read free space: {source}")]
    Statvfs {
        /// The folder asked about.
        path: PathBuf,
        /// What the kernel said.
        source: std::io::Error,
    },
    /// The broker did not answer in time.
    #[error("broker {host}:{port}: no answer within {timeout:?} while {stage}")]
    MqttTimeout {
        /// Broker host.
        host: String,
        /// Broker port.
        port: u16,
        /// The round trip's limit.
        timeout: Duration,
        /// What was being waited for.
        stage: &'static str,
    },
    /// The connection failed or the broker refused something.
    #[error("broker {host}:{port}: {stage}: {reason}")]
    Mqtt {
        /// Broker host.
        host: String,
        /// Broker port.
        port: u16,
        /// What was being done.
        stage: &'static str,
        /// What went wrong.
        reason: String,
    },
}

/// Runs every check against `config` and returns the report. Never stops early.
pub fn run(config: &Config, options: &SelftestOptions) -> Report {
    let mut report = Report::default();
    let mut add = |name: &'static str, check: &mut dyn FnMut() -> (Status, String)| {
        let started = Instant::now();
        let (status, detail) = check();
        report.checks.push(Check { name, status, detail, duration: started.elapsed() });
    };
    add("config", &mut || (Status::Pass, describe_config(config)));
    let mut ort_ok = false;
    add("onnxruntime", &mut || {
        let (status, detail) = onnxruntime(config);
        ort_ok = status == Status::Pass;
        (status, detail)
    });
    add("detector", &mut || if ort_ok { detector(config) } else { no_runtime() });
    add("recognizer", &mut || if ort_ok { recognizer(config) } else { no_runtime() });
    add("liveness", &mut || match config.liveness.as_ref().filter(|l| l.enabled) {
        None => (Status::Absent, "no [liveness] section, or enabled = false".into()),
        Some(_) if !ort_ok => no_runtime(),
        Some(l) => liveness(&l.settings),
    });
    add("camera", &mut || camera(config, options.camera_timeout));
    add("npu", &mut || npu(config, &options.npu_crops));
    add("npu: model", &mut || npu_model(config));
    add("gpio", &mut || gpio(config, options.pulse_relay));
    add("mqtt", &mut || mqtt(config, options.mqtt_timeout));
    add("gallery", &mut || gallery(config));
    add("disk: gallery", &mut || disk(&config.gallery_path));
    add("disk: outbox", &mut || {
        if config.mqtt.enabled {
            disk(&config.mqtt.outbox_dir)
        } else {
            (Status::Absent, "mqtt disabled: no outbox".into())
        }
    });
    report
}

fn describe_config(config: &Config) -> String {
    let camera = match &config.camera {
        None => "camera none".to_string(),
        Some(CameraConfig::Replay(r)) => format!("camera replay {}", r.path.display()),
        Some(CameraConfig::V4l2 { device, width, height, fps, .. }) => {
            format!("camera v4l2 {} {width}x{height}@{fps}", device.display())
        }
    };
    let mqtt = if config.mqtt.enabled {
        format!("mqtt {}:{}", config.mqtt.host, config.mqtt.port)
    } else {
        "mqtt off".to_string()
    };
    let kind = match config.detector.kind {
        crate::detect::DetectorKind::Scrfd => "scrfd",
        crate::detect::DetectorKind::Yunet => "yunet",
    };
    format!(
        "{}: detector {kind} {}, recognizer `{}` {}, {camera}, door {}, {mqtt}",
        config.source.display(),
        file_name(&config.detector.path),
        config.recognizer.model_id,
        file_name(&config.recognizer.path),
        door_backend_name(config.door.backend),
    )
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into())
}

fn door_backend_name(backend: DoorBackend) -> &'static str {
    match backend {
        DoorBackend::Fake => "fake",
        DoorBackend::GpioCdev => "gpio-cdev",
        DoorBackend::Rppal => "rppal",
    }
}

fn no_runtime() -> (Status, String) {
    (Status::Fail, "not run: onnx runtime did not load".into())
}

fn onnxruntime(config: &Config) -> (Status, String) {
    let o = &config.onnxruntime;
    match crate::infer::init(o.library.as_deref(), o.intra_threads) {
        Ok(path) => {
            // ONNX Runtime's build string names its commit, not its release; the release is
            // the one `ort` is pinned to (scripts/fetch-onnxruntime fetches exactly that).
            let build = ort::info().trim_start_matches("ORT Build Info: ");
            (
                Status::Pass,
                format!(
                    "{}: loaded (built for {}; {build})",
                    path.display(),
                    crate::infer::ORT_VERSION
                ),
            )
        }
        Err(e) => (Status::Fail, e.to_string()),
    }
}

/// A mid-grey 640x480 frame: no face, but every stage of the detector runs on it.
fn grey_frame() -> RgbImage {
    let mut frame = RgbImage::new(640, 480);
    frame.as_bytes_mut().fill(128);
    frame
}

fn detector(config: &Config) -> (Status, String) {
    let mut detector = match crate::detect::Detector::open(config.detector.clone()) {
        Ok(d) => d,
        Err(e) => return (Status::Fail, e.to_string()),
    };
    let frame = grey_frame();
    let mut faces = Vec::new();
    match detector.detect(frame.view(), &mut faces) {
        Ok(t) => (
            Status::Pass,
            format!(
                "{}: {} face(s) on a grey 640x480 frame, inference {:.1} ms",
                file_name(&config.detector.path),
                faces.len(),
                t.infer.as_secs_f64() * 1e3
            ),
        ),
        Err(e) => (Status::Fail, e.to_string()),
    }
}

fn recognizer(config: &Config) -> (Status, String) {
    use crate::embed::Embedder;
    let mut embedder = match crate::embed::cpu::CpuEmbedder::open(config.recognizer.clone()) {
        Ok(e) => e,
        Err(e) => return (Status::Fail, e.to_string()),
    };
    let mut crop = Box::<crate::align::AlignedFace>::default();
    crop.pixels.fill(128);
    let mut out = vec![0.0; embedder.dim()];
    match embedder.embed(&crop, &mut out) {
        Ok(norm) if norm.is_finite() && out.iter().all(|v| v.is_finite()) => (
            Status::Pass,
            format!(
                "{} as `{}`: {}-d embedding of a grey crop, inference {:.1} ms",
                file_name(&config.recognizer.path),
                embedder.model_id(),
                embedder.dim(),
                embedder.last_infer().as_secs_f64() * 1e3
            ),
        ),
        Ok(norm) => (
            Status::Fail,
            format!(
                "{}: the embedding is not finite (norm {norm})",
                config.recognizer.path.display()
            ),
        ),
        Err(e) => (Status::Fail, e.to_string()),
    }
}

/// Both liveness models, one check on a grey frame with a face-sized box: the models load,
/// have the expected outputs and give a probability.
fn liveness(settings: &crate::liveness::LivenessSettings) -> (Status, String) {
    use crate::liveness::LivenessCheck;
    let started = Instant::now();
    let mut check = match crate::liveness::MiniFasNet::open(settings) {
        Ok(c) => c,
        Err(e) => return (Status::Fail, e.to_string()),
    };
    let frame = grey_frame();
    match check.check(frame.view(), [260.0, 180.0, 380.0, 320.0]) {
        Ok(s) if (0.0..=1.0).contains(&s.score) => (
            Status::Pass,
            format!(
                "{} + {}: grey frame scored {:.2} (threshold {}), {:.0} ms with loading",
                file_name(&settings.v2),
                file_name(&settings.v1se),
                s.score,
                settings.threshold,
                started.elapsed().as_secs_f64() * 1e3
            ),
        ),
        Ok(s) => (Status::Fail, format!("the liveness score is not a probability: {}", s.score)),
        Err(e) => (Status::Fail, e.to_string()),
    }
}

fn camera(config: &Config, timeout: Duration) -> (Status, String) {
    match &config.camera {
        None => (Status::Absent, "no [camera] section".into()),
        Some(camera) => {
            // No real-time pacing: the first frame is due at once anyway.
            let camera = match camera {
                CameraConfig::Replay(r) => {
                    CameraConfig::Replay(crate::camera::replay::ReplaySettings {
                        pace: false,
                        ..r.clone()
                    })
                }
                other => other.clone(),
            };
            match crate::camera::open(&camera, config.frame_timeout) {
                Ok(mut source) => first_frame(source.as_mut(), timeout),
                Err(e) => (Status::Fail, e.to_string()),
            }
        }
    }
}

/// Takes one frame from `source` and decodes it as the loop does.
fn first_frame(source: &mut dyn FrameSource, timeout: Duration) -> (Status, String) {
    let described = source.describe();
    let frame = match source.next_frame(timeout) {
        Ok(f) => f,
        Err(e) => return (Status::Fail, format!("{described}: no frame: {e}")),
    };
    let format = match frame.format {
        PixelFormat::Mjpeg => "mjpeg",
        PixelFormat::Yuyv => "yuyv",
        PixelFormat::Rgb24 => "rgb24",
    };
    let mut rgb = RgbImage::new(0, 0);
    match FrameDecoder::new().decode(&frame, &mut rgb) {
        Ok(()) => (
            Status::Pass,
            format!("{described}: first frame {format} {}x{} decoded", rgb.width(), rgb.height()),
        ),
        Err(e) => {
            (Status::Fail, format!("{described}: first frame ({format}) does not decode: {e}"))
        }
    }
}

/// The NPU recognizer `[npu]` names, opened as `portier run` opens it and probed with the same
/// built-in probe ([`crate::embed::probe`]), then, when the golden crops are on the device
/// ([`SelftestOptions::npu_crops`]), the acceptance check of `portier npu check`. Absent without
/// an `[npu]`; fails when the model cannot be opened, is degenerate or is refused; warns when
/// the crops for the acceptance check are not there.
fn npu(config: &Config, crops: &Path) -> (Status, String) {
    use crate::eval::npu_check;
    let Some(id) = config.npu.model_id() else {
        return (Status::Absent, format!("no [npu] backend: every face on the CPU; {}", hailo()));
    };
    if let Some(model) = crate::npu_state::not_installed(&config.npu) {
        // Not a fault: an image built without the HEF runs CPU only (row "npu: model").
        return (Status::Warn, format!("`{id}`: {} not installed: CPU only", model.display()));
    }
    let mut embedder = match crate::embed::open_npu(&config.npu, &config.recognizer) {
        Ok(Some(e)) => e,
        Ok(None) => return (Status::Absent, "no [npu] backend".into()),
        Err(e) => return (Status::Fail, format!("`{id}`: {e} (`portier run` stays on the CPU)")),
    };
    let probe = match crate::embed::probe::probe(embedder.as_mut()) {
        Ok(p) => p,
        Err(e) => return (Status::Fail, format!("`{id}`: probe failed: {e}")),
    };
    if probe.degenerate.is_some() {
        return (
            Status::Fail,
            format!("`{id}`: {} (`portier run` stays on the CPU)", probe.summary()),
        );
    }
    drop(embedder);
    if !crops.is_dir() {
        return (
            Status::Warn,
            format!(
                "`{id}`: {}; acceptance check not run: no aligned crops at {} (copy the assets' \
                 golden/aligned_112 and golden/embeddings.json there, or run `portier npu check \
                 --crops DIR`)",
                probe.summary(),
                crops.display()
            ),
        );
    }
    match npu_check::check(config, crops) {
        Ok(r) if r.passed() => (Status::Pass, format!("`{id}`: {}", r.summary())),
        Ok(r) => (Status::Fail, format!("`{id}`: {}", r.summary())),
        Err(e) => (Status::Fail, format!("`{id}`: acceptance check: {e}")),
    }
}

/// Whether HailoRT and a Hailo device are there, for the technician installing one.
#[cfg(feature = "hailo")]
fn hailo() -> String {
    use crate::infer::hailo::{DeviceOptions, HailoDevice, HailoRuntime};
    match HailoRuntime::load(None) {
        Err(e) => format!("hailort: {e}"),
        Ok(runtime) => {
            let (major, minor, revision) = runtime.version();
            let loaded =
                format!("hailort {major}.{minor}.{revision} ({})", runtime.path().display());
            match HailoDevice::open(&runtime, DeviceOptions::default()) {
                Ok(_) => format!("{loaded}, device opened"),
                Err(e) => format!("{loaded}, no device: {e}"),
            }
        }
    }
}

#[cfg(not(feature = "hailo"))]
fn hailo() -> String {
    "HailoRT not built in (feature `hailo`)".into()
}

/// `portier selftest`'s row `npu: model`: whether the NPU's model is installed (a warning, not a
/// failure, when it is not: the image runs CPU only), and whether every enrolled person has
/// templates for it. Reads the gallery when it exists; writes nothing.
fn npu_model(config: &Config) -> (Status, String) {
    use crate::config::NpuBackend;
    use crate::npu_state::{missing_templates, not_installed};
    let Some(model) = config.npu.model.as_ref().filter(|_| config.npu.backend != NpuBackend::None)
    else {
        return (Status::Absent, "no [npu] configured: every face on the CPU".into());
    };
    if let Some(model) = not_installed(&config.npu) {
        return (
            Status::Warn,
            format!(
                "not installed: {} does not exist -> CPU only (every face on the CPU; install the \
                 HEF, see yocto/README.md)",
                model.display()
            ),
        );
    }
    let size = std::fs::metadata(model).map(|m| m.len()).unwrap_or(0);
    let installed = format!("{} installed ({size} bytes)", model.display());
    let (Some(npu_id), true) = (config.npu.model_id(), config.gallery_path.exists()) else {
        return (Status::Pass, installed);
    };
    let counts = crate::gallery::Gallery::open(&config.gallery_path, &config.gallery_key_file)
        .and_then(|g| {
            let cpu = g.matcher(&config.recognizer.model_id)?;
            let npu = g.matcher(&npu_id)?;
            Ok((missing_templates(&cpu, &npu), cpu.people()))
        });
    match counts {
        Ok((0, _)) => (Status::Pass, installed),
        Ok((missing, people)) => (
            Status::Warn,
            format!(
                "{installed}; {missing} of {people} enrolled people have no `{npu_id}` templates \
                 -> every face on the CPU until they are enrolled again with `portier enroll \
                 --append`"
            ),
        ),
        // The gallery row reports what is wrong with the gallery.
        Err(_) => (Status::Pass, installed),
    }
}

fn gpio(config: &Config, pulse_relay: bool) -> (Status, String) {
    match config.door.backend {
        DoorBackend::Fake => (
            Status::Pass,
            if pulse_relay {
                "fake backend: no hardware, no relay to pulse".into()
            } else {
                "fake backend: no hardware".into()
            },
        ),
        #[cfg(feature = "gpio-cdev")]
        DoorBackend::GpioCdev => gpio_cdev(config, pulse_relay),
        #[cfg(not(feature = "gpio-cdev"))]
        DoorBackend::GpioCdev => not_built_in("gpio-cdev"),
        #[cfg(feature = "rppal")]
        DoorBackend::Rppal => (
            Status::Warn,
            "rppal backend: not checked by selftest (only gpio-cdev lines are)".into(),
        ),
        #[cfg(not(feature = "rppal"))]
        DoorBackend::Rppal => not_built_in("rppal"),
    }
}

#[cfg(any(not(feature = "gpio-cdev"), not(feature = "rppal")))]
fn not_built_in(backend: &str) -> (Status, String) {
    (
        Status::Fail,
        format!(
            "door backend {backend} is configured but this portier is built without the \
             `{backend}` feature (`portier run` refuses this config)"
        ),
    )
}

/// Opens the three lines as the appliance does (the relay requested at its secure level, so
/// it does not move), reads both inputs, and with `pulse_relay` runs one unlock through the
/// door state machine until it relocks.
#[cfg(feature = "gpio-cdev")]
fn gpio_cdev(config: &Config, pulse_relay: bool) -> (Status, String) {
    use embedded_hal::digital::InputPin;

    use crate::door::gpio::{open_door_pins, GpioSettings};
    use crate::door::{ContactWiring, Door, DoorEvent, UnlockReason};

    let section = &config.door;
    let settings = match GpioSettings::from_config(section) {
        Ok(s) => s,
        Err(e) => return (Status::Fail, format!("config {}: {e}", config.source.display())),
    };
    let (relay, mut contact, mut button, emergency) = match open_door_pins(&settings) {
        Ok(pins) => pins,
        Err(e @ crate::door::gpio::GpioError::Request { .. }) => {
            return (Status::Fail, format!("{e} (lines in use: is portier.service running?)"))
        }
        Err(e) => return (Status::Fail, e.to_string()),
    };
    let levels = (contact.is_high(), button.is_high());
    let (contact_high, button_high) = match levels {
        (Ok(c), Ok(b)) => (c, b),
        (Err(e), _) | (_, Err(e)) => return (Status::Fail, format!("reading an input: {e}")),
    };
    let level = |high: bool| if high { "high" } else { "low" };
    // Closed is the contact's resting level for its wiring (see the fake backend).
    let closed = contact_high == (section.door.contact == ContactWiring::NormallyOpen);
    let pressed = button_high != section.door.exit_button_active_low;
    let mut detail = format!(
        "relay {} at its secure level; contact {} (door {}), exit button {} ({})",
        settings.relay,
        level(contact_high),
        if closed { "closed" } else { "open" },
        level(button_high),
        if pressed { "pressed" } else { "released" },
    );
    let mut status = if pressed { Status::Warn } else { Status::Pass };
    if pressed {
        detail.push_str("; a button held down now would unlock at every start");
    }
    if !pulse_relay {
        detail.push_str("; relay not pulsed (--pulse-relay)");
        return (status, detail);
    }
    // While the relay is energised, Ctrl-C, SIGTERM or a crash must not leave it so: secure
    // in the handler, then end as the signal would have.
    if let Err(e) = crate::door::relock::secure_on_every_exit(emergency, None) {
        return (Status::Fail, format!("{detail}; relay not pulsed: {e}"));
    }
    let started = Instant::now();
    let mut door = match Door::new(section.door.clone(), relay, contact, button, Duration::ZERO) {
        Ok(d) => d,
        Err(e) => return (Status::Fail, format!("{detail}; {e}")),
    };
    let mut events = Vec::new();
    let pulse = door.unlock(UnlockReason::Remote, started.elapsed()).and_then(|()| {
        let deadline = section.door.pulse + Duration::from_secs(1);
        while !events.contains(&DoorEvent::Locked) && started.elapsed() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            door.poll(started.elapsed(), &mut events)?;
        }
        door.secure()
    });
    match pulse {
        Ok(()) => detail.push_str(&format!(
            "; relay pulsed for {} ms and relocked",
            section.door.pulse.as_millis()
        )),
        Err(e) => {
            status = Status::Fail;
            detail.push_str(&format!("; relay pulse failed: {e}"));
        }
    }
    (status, detail)
}

fn mqtt(config: &Config, timeout: Duration) -> (Status, String) {
    let m = &config.mqtt;
    if !m.enabled {
        return (Status::Absent, "disabled ([mqtt] enabled = false)".into());
    }
    match mqtt_round_trip(m, timeout) {
        Ok(detail) => (Status::Pass, detail),
        Err(e) => (Status::Fail, e.to_string()),
    }
}

/// Connects under `<client id>-selftest` (the appliance's own session stays up), subscribes to
/// `<base>/selftest`, publishes one QoS 1 message there (not retained) and waits for it to come
/// back.
fn mqtt_round_trip(
    m: &crate::mqtt::client::MqttConfig,
    timeout: Duration,
) -> Result<String, SelftestError> {
    use rumqttc::{Client, Event, Incoming, QoS, SubscribeReasonCode};

    let err = |stage: &'static str, reason: String| SelftestError::Mqtt {
        host: m.host.clone(),
        port: m.port,
        stage,
        reason,
    };
    let client_id = format!("{}-selftest", m.effective_client_id());
    let mut options = crate::mqtt::client::connection_options(m, client_id)
        .map_err(|e| err("configuration", e.to_string()))?;
    options.set_clean_session(true);
    let topic = format!("{}/selftest", m.effective_base_topic());
    let payload = format!("portier selftest {}", crate::mqtt::client::run_id());
    let (client, mut connection) = Client::new(options, 10);
    let mut network = connection.eventloop.network_options();
    network.set_connection_timeout(timeout.as_secs().max(1));
    connection.eventloop.set_network_options(network);
    client
        .subscribe(topic.as_str(), QoS::AtLeastOnce)
        .map_err(|e| err("subscribing", e.to_string()))?;

    let started = Instant::now();
    let mut stage = "connecting";
    let result = loop {
        let left = timeout.saturating_sub(started.elapsed());
        if left.is_zero() {
            break Err(SelftestError::MqttTimeout {
                host: m.host.clone(),
                port: m.port,
                timeout,
                stage,
            });
        }
        match connection.recv_timeout(left) {
            Ok(Ok(Event::Incoming(Incoming::ConnAck(_)))) => stage = "subscribing",
            Ok(Ok(Event::Incoming(Incoming::SubAck(ack)))) => {
                if ack.return_codes.contains(&SubscribeReasonCode::Failure) {
                    break Err(err("subscribing", format!("the broker refused {topic}")));
                }
                stage = "waiting for the message to come back";
                if let Err(e) =
                    client.publish(topic.as_str(), QoS::AtLeastOnce, false, payload.as_bytes())
                {
                    break Err(err("publishing", e.to_string()));
                }
            }
            Ok(Ok(Event::Incoming(Incoming::Publish(p))))
                if p.topic == topic && p.payload.as_ref() == payload.as_bytes() =>
            {
                break Ok(format!(
                    "{}:{}: published to {topic} and received it back in {} ms",
                    m.host,
                    m.port,
                    started.elapsed().as_millis()
                ));
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => break Err(err(stage, e.to_string())),
            Err(_) => {
                break Err(SelftestError::MqttTimeout {
                    host: m.host.clone(),
                    port: m.port,
                    timeout,
                    stage,
                })
            }
        }
    };
    if result.is_ok() {
        // A clean DISCONNECT, so the broker logs no lost client; bounded, best effort.
        if client.disconnect().is_ok() {
            let end = Instant::now() + Duration::from_millis(500);
            while let Some(left) = end.checked_duration_since(Instant::now()) {
                match connection.recv_timeout(left) {
                    Ok(Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)))
                    | Ok(Err(_))
                    | Err(_) => break,
                    Ok(Ok(_)) => {}
                }
            }
        }
    }
    result
}

fn gallery(config: &Config) -> (Status, String) {
    let path = &config.gallery_path;
    if !path.exists() {
        return (
            Status::Warn,
            format!(
                "{}: does not exist yet, nobody is enrolled (portier enroll creates it)",
                path.display()
            ),
        );
    }
    let model_id = &config.recognizer.model_id;
    let result = crate::gallery::Gallery::open(path, &config.gallery_key_file).and_then(|g| {
        g.integrity_check()?;
        let everyone = g.list()?.len();
        let people = g.matcher(model_id)?.people();
        Ok((people, everyone))
    });
    match result {
        Ok((0, everyone)) => (
            Status::Warn,
            format!(
                "{}: integrity ok; nobody enrolled for `{model_id}` ({everyone} people for other models)",
                path.display()
            ),
        ),
        Ok((people, everyone)) => (
            Status::Pass,
            format!(
                "{}: integrity ok; {people} enrolled for `{model_id}` ({everyone} people in all)",
                path.display()
            ),
        ),
        Err(e) => (Status::Fail, e.to_string()),
    }
}

/// Free space for the file system holding `path` (or its nearest existing ancestor: the folder
/// may not exist before the first enrolment or event).
fn disk(path: &Path) -> (Status, String) {
    let Some(existing) = path.ancestors().find(|p| !p.as_os_str().is_empty() && p.exists()) else {
        return (Status::Fail, format!("{}: no existing folder above it", path.display()));
    };
    match available_bytes(existing) {
        Ok(free) => {
            let mib = free / (1024 * 1024);
            let status = if free < DISK_FAIL_BYTES {
                Status::Fail
            } else if free < DISK_WARN_BYTES {
                Status::Warn
            } else {
                Status::Pass
            };
            let limits = match status {
                Status::Fail => format!(" (below {} MiB)", DISK_FAIL_BYTES >> 20),
                Status::Warn => format!(" (below {} MiB)", DISK_WARN_BYTES >> 20),
                _ => String::new(),
            };
            (status, format!("{}: {mib} MiB free{limits}", existing.display()))
        }
        Err(e) => (Status::Fail, e.to_string()),
    }
}

/// Bytes available to an unprivileged user on the file system holding `dir` (`statvfs(3)`:
/// `f_bavail * f_frsize`, what `df` reports as available). std has no call for it; libc is
/// already compiled into every build (SQLite, the JPEG decoder and rumqttc's runtime use it),
/// so this costs no new crate, and it needs no external `df` whose output varies (busybox).
fn available_bytes(dir: &Path) -> Result<u64, SelftestError> {
    use std::os::unix::ffi::OsStrExt;
    let statvfs_err = |source| SelftestError::Statvfs { path: dir.to_path_buf(), source };
    let c_path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| statvfs_err(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c_path` is a valid NUL-terminated string that outlives the call, and `stat`
    // points at writable memory of the size and alignment of `struct statvfs`.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return Err(statvfs_err(std::io::Error::last_os_error()));
    }
    // SAFETY: statvfs returned 0, so it filled the whole struct.
    let stat = unsafe { stat.assume_init() };
    #[allow(clippy::unnecessary_cast)] // the field types differ between targets
    Ok((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}
