//! The appliance loop: one frame per [`App::step`], from the camera through detection,
//! tracking, embedding and the access decision to the door, with every outcome reported as an
//! [`AppEvent`] and counted in [`Counters`].
//!
//! `step(now)` is a function of the source's next frame and the time the caller passes, so
//! tests drive it with a synthetic clock; [`App::run`] is the thin shell around it (stop flag,
//! watchdog, periodic counters, securing the door on the way out). `run` passes the monotonic
//! clock for a camera and the stream's own timestamps for a replay ([`SourceClock`]): the
//! door's pulse, the cooldown and every vote window then run on the clip's time, so a replay
//! gives byte-identical decisions and counters paced, with `--fast`, or on a loaded machine.
//!
//! Must not: block longer than the frame timeout, allocate per frame after warm-up (events,
//! which are rare, carry names), or let anything but a configuration or start-up error stop
//! it: corrupt frames are dropped and counted, a lost camera is reported and retried, a
//! failing door pin is counted and the door secured.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::align::{align_face, AlignedFace};
use crate::camera::{CameraError, FrameSource, SourceClock};
use crate::decide::{Decider, DecisionConfig, FaceSize, Space, Verdict};
use crate::detect::far::FarScan;
use crate::detect::{keep_most_confident, Detection, Detector, Faces, MAX_FACES};
use crate::door::{DoorControl, DoorError, DoorEvent, UnlockReason};
use crate::embed::{Embedder, MAX_DIM};
use crate::enroll_live::{LiveEnrolment, Progress};
use crate::frame::{FrameDecoder, RgbImage};
use crate::gallery::{Matcher, PersonId, Storage};
use crate::liveness::LivenessCheck;
use crate::route::{NpuEvent, Route, Router};
use crate::service::Notifier;
use crate::track::{quality, Assignment, Ended, TrackId, Tracker, TrackerConfig, MAX_TRACKS};

/// How often the loop polls the door once a replay has ended (waiting for it to relock).
const IDLE_POLL: Duration = Duration::from_millis(20);

/// While the far-face pass yields to faces being decided, it still searches the next tile on
/// every this-many-th frame.
const FAR_SEARCH_EVERY: u32 = 4;

/// One face embedded and matched ([`App`]'s `embed_and_match`): the best two are indices of
/// the CPU matcher's people, whichever backend embedded it.
struct Embedded {
    /// Norm of the embedding before normalisation.
    norm: f32,
    /// The backend that embedded it (`cpu`, `npu`).
    backend: &'static str,
    /// Whose thresholds judge it.
    space: Space,
    /// Best person and similarity.
    best: Option<(usize, f32)>,
    /// Second-best person and similarity.
    second: Option<(usize, f32)>,
}

/// Loop settings (from the config file's `[tracker]`, `[decision]` and `[camera]` sections).
#[derive(Debug, Clone, PartialEq)]
pub struct AppSettings {
    /// Tracking.
    pub tracker: TrackerConfig,
    /// Votes, thresholds by size, cooldown.
    pub decision: DecisionConfig,
    /// Faces with a smaller eye distance (pixels) are tracked but not embedded.
    pub min_eye_px: f32,
    /// Faces of lower quality (0..1, see [`crate::track::quality`]) are not embedded.
    pub min_quality: f32,
    /// Most faces embedded per frame; the tracks that voted longest ago go first.
    pub max_embeds_per_frame: usize,
    /// Longest wait for a frame in one step.
    pub frame_timeout: Duration,
    /// Stop feeding the watchdog when no frame arrived for this long (systemd then restarts
    /// the service, which re-opens the camera from scratch); `None` = always feed.
    pub camera_lost_restart: Option<Duration>,
    /// How often [`App::run`] logs the counters.
    pub counters_interval: Duration,
    /// How the loop keeps the matchers' template rows (`[gallery] storage`).
    pub storage: Storage,
}

impl AppSettings {
    /// Defaults around a decision config.
    pub fn new(decision: DecisionConfig) -> Self {
        Self {
            tracker: TrackerConfig::default(),
            decision,
            min_eye_px: 12.0,
            min_quality: 0.2,
            max_embeds_per_frame: 4,
            frame_timeout: Duration::from_millis(500),
            camera_lost_restart: Some(Duration::from_secs(120)),
            counters_interval: Duration::from_secs(300),
            storage: Storage::default(),
        }
    }
}

/// Something the loop reports (to the log, MQTT and the display).
#[derive(Debug, Clone, PartialEq)]
pub enum AppEvent {
    /// The door was opened for a recognised person.
    Granted {
        /// Track of the face.
        track: TrackId,
        /// Gallery id.
        person: PersonId,
        /// Gallery name.
        name: String,
        /// Mean similarity of the agreeing votes.
        similarity: f32,
        /// Similarity of the deciding face to the second-best person (`None` with one person
        /// enrolled): the margin says how sure the match was.
        second_similarity: Option<f32>,
        /// Agreeing votes.
        votes: usize,
        /// Eye distance of the deciding face, pixels.
        eye_px: f32,
        /// Embedding norm before normalisation of the deciding face.
        norm: f32,
        /// Which backend embedded it.
        backend: &'static str,
        /// Mean live score of the agreeing votes (`None` when liveness is off); the check
        /// passed on enough of them, or the door would not have opened.
        liveness: Option<f32>,
        /// The liveness check that scored it (`None` when liveness is off).
        liveness_model: Option<&'static str>,
        /// Source frame sequence number.
        frame: u64,
    },
    /// An enrolled person was recognised but too few of the confirming faces passed the
    /// liveness check: a photo or screen is suspected. The door stays locked (once per track).
    SpoofSuspected {
        /// Track of the face.
        track: TrackId,
        /// Gallery id of the person shown.
        person: PersonId,
        /// Gallery name of the person shown.
        name: String,
        /// Mean similarity of the agreeing votes.
        similarity: f32,
        /// Mean live score of the agreeing votes (NaN when no check ran).
        liveness: f32,
        /// Agreeing votes whose check passed.
        passes: usize,
        /// Agreeing votes.
        votes: usize,
        /// The liveness check.
        liveness_model: &'static str,
        /// Eye distance of the deciding face, pixels.
        eye_px: f32,
        /// Source frame sequence number.
        frame: u64,
    },
    /// A recognised person within the cooldown: not opened again.
    CoolingDown {
        /// Track of the face.
        track: TrackId,
        /// Gallery name.
        name: String,
        /// Source frame sequence number.
        frame: u64,
    },
    /// A face nobody in the gallery matches (reported once per track).
    Unknown {
        /// Track of the face.
        track: TrackId,
        /// Best similarity seen (NaN with an empty gallery).
        similarity: f32,
        /// Eye distance of the last face, pixels.
        eye_px: f32,
        /// Embedding norm before normalisation of the last face.
        norm: f32,
        /// Which backend embedded it.
        backend: &'static str,
        /// Source frame sequence number.
        frame: u64,
    },
    /// Someone not granted came into view while the door was unlocked for someone else.
    Tailgating {
        /// Track of the newcomer.
        track: TrackId,
        /// Source frame sequence number.
        frame: u64,
    },
    /// The door reported something.
    Door(DoorEvent),
    /// The camera failed; frames stop until it comes back.
    CameraLost {
        /// What happened.
        reason: String,
    },
    /// Frames flow again after [`AppEvent::CameraLost`].
    CameraBack,
    /// The NPU failed: every face is embedded on the CPU until it recovers.
    NpuFallback {
        /// What failed.
        reason: String,
    },
    /// The NPU works again.
    NpuBack,
    /// A live enrolment asked for from outside (Home Assistant's enrol button) began: the
    /// person should look at the camera, alone. The door keeps working meanwhile.
    EnrolStarted {
        /// The name being enrolled.
        name: String,
        /// Seconds of capture.
        seconds: u32,
    },
    /// A live enrolment ended: the templates that passed every check (not stored yet: the
    /// shell stores them), or why it was refused.
    EnrolCaptured {
        /// The name being enrolled.
        name: String,
        /// The capture, or the refusal.
        result: Result<Box<crate::enroll_live::Capture>, String>,
    },
    /// The counters, every `counters_interval` (from [`App::run`]).
    Counters {
        /// The counters so far.
        counters: Counters,
        /// Time since the loop started.
        uptime: Duration,
    },
}

/// Everything the loop counts, in one place.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Frames decoded and processed.
    pub frames: u64,
    /// Frames dropped because they did not decode.
    pub corrupt_frames: u64,
    /// Steps without a frame within the timeout.
    pub timeouts: u64,
    /// Camera failures.
    pub camera_errors: u64,
    /// Faces detected and carried into tracking (summed over frames; those past the frame's
    /// bound are in `faces_over_bound`).
    pub faces: u64,
    /// Embeddings computed.
    pub embeddings: u64,
    /// Embedding failures.
    pub embed_errors: u64,
    /// Embeddings made on the NPU (included in `embeddings`).
    pub npu_embeddings: u64,
    /// NPU embeddings rejected by the norm cliff and redone on the CPU.
    pub cpu_fallbacks: u64,
    /// Access grants.
    pub grants: u64,
    /// Grants suppressed by the cooldown.
    pub cooldowns: u64,
    /// Tracks reported unknown.
    pub unknowns: u64,
    /// Tailgating reports.
    pub tailgates: u64,
    /// Liveness checks run.
    pub liveness_checks: u64,
    /// Liveness checks that failed to run (counted as not live).
    pub liveness_errors: u64,
    /// Suspected spoofs (tracks refused by liveness).
    pub spoofs: u64,
    /// Door pin errors.
    pub door_errors: u64,
    /// Faces found only by the far-face pass (included in `faces`).
    pub far_faces: u64,
    /// Frames whose far-face pass failed (their whole-frame faces were still used).
    pub far_errors: u64,
    /// Faces left out of their frame beyond the [`MAX_FACES`] a frame carries (the least
    /// confident; not in `faces`).
    pub faces_over_bound: u64,
}

impl std::fmt::Display for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "frames {} (corrupt {}, timeouts {}, camera errors {}), faces {}, embeddings {} \
             (npu {}, norm fallbacks {}, errors {}), grants {}, cooldowns {}, unknown {}, \
             tailgating {}, liveness checks {} (errors {}), spoofs {}, door errors {}, \
             far-pass faces {} (errors {})",
            self.frames,
            self.corrupt_frames,
            self.timeouts,
            self.camera_errors,
            self.faces,
            self.embeddings,
            self.npu_embeddings,
            self.cpu_fallbacks,
            self.embed_errors,
            self.grants,
            self.cooldowns,
            self.unknowns,
            self.tailgates,
            self.liveness_checks,
            self.liveness_errors,
            self.spoofs,
            self.door_errors,
            self.far_faces,
            self.far_errors
        )?;
        if self.faces_over_bound > 0 {
            write!(f, ", faces over the frame bound {}", self.faces_over_bound)?;
        }
        Ok(())
    }
}

/// Where the last processed frame's time went, for `portier bench loop` (four clock reads per
/// frame).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StageTimes {
    /// JPEG/YUYV decoding into RGB.
    pub decode: Duration,
    /// Letterbox, detector model, output decoding and NMS.
    pub detect: Duration,
    /// Tracking.
    pub track: Duration,
    /// Alignment, embedding, matching, liveness, votes and the door.
    pub decide: Duration,
    /// Liveness checks (crops and models; part of `decide`).
    pub liveness: Duration,
}

/// The face behind a verdict, as the event reports it.
#[derive(Debug, Clone, Copy)]
struct Deciding {
    eye_px: f32,
    norm: f32,
    backend: &'static str,
    second: Option<f32>,
}

/// A command from outside the loop (MQTT, the service's control socket), already
/// authenticated by whoever hands it over.
#[derive(Debug)]
pub enum RemoteCommand {
    /// Release the door as for a recognised face.
    Unlock,
    /// Lock now, ending any release (a signed command).
    Lock,
    /// Lock now if the release is a remote unlock's only: an unsigned LOCK (Home Assistant's
    /// lock card, which anyone on the broker can send) never ends a release a face or the exit
    /// button made, so a flood of them cannot keep residents out.
    EndRemoteRelease,
    /// Use these templates from now on (reloaded or changed by an enrolment): the CPU model's
    /// and, with an NPU, the NPU model's.
    SetMatcher(Box<(Matcher, Option<Matcher>)>),
    /// Enrol the person at the door under this name with this capture, from the frames the
    /// loop sees anyway (the door keeps working); ends in [`AppEvent::EnrolCaptured`].
    Enrol(Box<(String, LiveEnrolment)>),
    /// Stop recognising the person of this name (a removal after which the gallery could not
    /// be read back): their templates leave the loop's matchers until the next reload.
    Forget(String),
}

/// What [`App::run`] calls besides the loop itself: the shell's side (MQTT, the display, the
/// summary) without the loop knowing about any of them.
pub trait Hooks {
    /// Called for every event, in order.
    fn event(&mut self, _event: &AppEvent) {}
    /// Polled before every step until it returns `None`.
    fn command(&mut self) -> Option<RemoteCommand> {
        None
    }
    /// Called after every step, with the loop's state and time (e.g. to update the display).
    fn tick(&mut self, _app: &App, _now: Duration) {}
}

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepOutcome {
    /// A frame was processed.
    Frame {
        /// Its sequence number.
        sequence: u64,
        /// Faces detected in it.
        faces: usize,
    },
    /// A frame arrived but did not decode (counted, dropped).
    Dropped,
    /// No frame this time (timeout, or the camera is away).
    NoFrame,
    /// The replay ended.
    EndOfStream,
}

/// Errors that stop the loop.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The door cannot be driven (its relay write failed and could not be secured).
    #[error(transparent)]
    Door(#[from] DoorError),
    /// The decision settings are inconsistent.
    #[error("decision settings: {0}")]
    Config(String),
}

/// Warnings that outside input can trigger at frame rate: at most one per interval, with the
/// number suppressed since.
#[derive(Debug, Default)]
struct RateLimit {
    last: Option<Duration>,
    suppressed: u64,
}

impl RateLimit {
    const INTERVAL: Duration = Duration::from_secs(10);

    /// Whether to log now; `Some(suppressed)` when yes.
    fn allow(&mut self, now: Duration) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_sub(last) < Self::INTERVAL => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// The loop's state. See the module documentation.
pub struct App {
    settings: AppSettings,
    source: Box<dyn FrameSource>,
    decoder: FrameDecoder,
    frame: RgbImage,
    detector: Detector,
    /// Everything the detector (and the far-face pass) found in this frame: its buffer.
    found: Vec<Detection>,
    /// This frame's faces: `found`, or its most confident [`MAX_FACES`].
    faces: Faces,
    /// The far-face pass (`[detector] far_faces`).
    far: Option<FarScan>,
    tracker: Tracker,
    assignment: Assignment,
    ended: Ended,
    embedder: Box<dyn Embedder>,
    backend: &'static str,
    cpu_dim: usize,
    npu: Option<Npu>,
    crop: Box<AlignedFace>,
    embedding: Vec<f32>,
    matcher: Matcher,
    decider: Decider,
    door: Box<dyn DoorControl>,
    door_events: Vec<DoorEvent>,
    events: Vec<AppEvent>,
    counters: Counters,
    /// (when due, face index) of this frame's embedding candidates
    /// ([`Decider::embed_due`]); the `max_embeds_per_frame` due first are embedded.
    candidates: heapless::Vec<(Duration, usize), MAX_FACES>,
    camera_lost: bool,
    last_frame_at: Duration,
    /// The frame time before `last_frame_at`: a track last seen before it missed a frame.
    previous_frame_at: Duration,
    /// The previous frame had more faces wanting an embedding than its budget, or a near face
    /// (larger than the far pass finds) wanting one: the far-face pass yields this frame.
    far_yields: bool,
    /// Far passes run, and frames since the last one.
    far_runs: u64,
    far_skipped: u32,
    /// While the door is unlocked for a face: the tracks that were in view at the grant.
    grant_witnesses: heapless::Vec<TrackId, MAX_TRACKS>,
    grant_open: bool,
    corrupt_log: RateLimit,
    detect_log: RateLimit,
    /// Frames with more faces than [`MAX_FACES`].
    crowd_log: RateLimit,
    door_log: RateLimit,
    embed_log: RateLimit,
    liveness: Option<Box<dyn LivenessCheck>>,
    liveness_log: RateLimit,
    last_latency: Option<Duration>,
    last_stages: StageTimes,
    /// A face in view is being decided but is too small or too far to be granted yet.
    step_closer: bool,
    /// A live enrolment in progress: the name, the capture, good faces so far.
    enrolment: Option<(String, LiveEnrolment, usize)>,
    /// A face or the exit button released the door since it was last locked.
    local_release: bool,
    /// Frames taken through detection and the decision (a detector failure's frame is not).
    frames_decided: u64,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("source", &self.source.describe())
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

/// The parts an [`App`] is made of, chosen in `main` (or a test).
pub struct Parts {
    /// Where frames come from.
    pub source: Box<dyn FrameSource>,
    /// Face detector.
    pub detector: Detector,
    /// Face recognizer.
    pub embedder: Box<dyn Embedder>,
    /// Name of the embedder's backend for events (`cpu`, `npu`).
    pub backend: &'static str,
    /// Enrolled people for the embedder's model.
    pub matcher: Matcher,
    /// The door.
    pub door: Box<dyn DoorControl>,
    /// The NPU side, if any: close faces are embedded there.
    pub npu: Option<NpuParts>,
    /// The liveness check, required when the decision settings ask for liveness.
    pub liveness: Option<Box<dyn LivenessCheck>>,
}

/// The NPU recognizer, its gallery templates (its own embedding space) and the router.
pub struct NpuParts {
    /// The NPU recognizer (the Hailo, or an emulated INT8 model).
    pub embedder: Box<dyn Embedder>,
    /// The gallery's templates for the NPU's model.
    pub matcher: Matcher,
    /// Which face goes where.
    pub router: Router,
    /// Why the NPU is not used at start (it could not be opened, or its model is degenerate):
    /// the router starts with it down and the loop's first event is an `npu_fallback` with this
    /// reason. `None` when it opened and passed its probe.
    pub fallback: Option<String>,
    /// The NPU's model file was missing at start (an image built without a HEF): the loop runs
    /// on the CPU and reports the NPU as not installed ([`NpuUse::NotInstalled`]) until the file
    /// appears and opens.
    pub not_installed: Option<std::path::PathBuf>,
}

/// What the NPU is doing for the loop, for the log, the display and MQTT's retained state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NpuUse {
    /// No NPU configured: every face on the CPU by design.
    Off,
    /// Close faces are embedded on the NPU.
    Active,
    /// The NPU failed (or could not be opened): every face on the CPU while it is retried.
    Fallback,
    /// The NPU's model file is not installed: every face on the CPU (CPU only).
    NotInstalled,
    /// The NPU works, but some enrolled people have no templates for its model (enrolled
    /// while it was not installed): every face on the CPU until they are enrolled again.
    TemplatesMissing,
}

/// The NPU side of a running loop.
struct Npu {
    embedder: Box<dyn Embedder>,
    matcher: Matcher,
    router: Router,
    dim: usize,
    /// The model file was missing at start and the NPU has not opened since.
    not_installed: bool,
    /// Every person enrolled for the CPU's model has templates for the NPU's model too.
    covers: bool,
}

impl Npu {
    /// Whether every person enrolled for the CPU's model has templates for the NPU's model
    /// too. A person enrolled while the NPU's model was not installed has CPU templates only:
    /// a close face of theirs embedded on the NPU would match nobody, so until they are
    /// enrolled again (`portier enroll --append`, with the model in place) every face stays on
    /// the CPU, where everyone can be recognised. Logged whenever it is found.
    fn check_templates(&mut self, cpu: &Matcher) {
        let missing = crate::npu_state::missing_templates(cpu, &self.matcher);
        self.covers = missing == 0;
        if missing > 0 {
            log::warn!(
                "npu: {missing} of {} enrolled people have no templates for {} (enrolled while \
                 it was not installed): every face runs on the CPU until they are enrolled \
                 again with `portier enroll --append`",
                cpu.people(),
                self.matcher.model_id()
            );
        }
    }
}

impl App {
    /// Assembles the loop; buffers are sized here, once.
    pub fn new(settings: AppSettings, parts: Parts) -> Result<Self, AppError> {
        let storage = settings.storage;
        let decider = Decider::new(settings.decision.clone()).map_err(AppError::Config)?;
        if settings.decision.liveness.is_some() && parts.liveness.is_none() {
            return Err(AppError::Config(
                "liveness is on in the decision settings but no liveness check was given".into(),
            ));
        }
        let cpu_dim = parts.embedder.dim().min(MAX_DIM);
        let mut events = Vec::with_capacity(16);
        let npu = parts.npu.map(|n| {
            if !n.router.npu_up() {
                // Opened late (see `embed::reopen`): say so with the first events, not at the
                // first close face.
                events.push(AppEvent::NpuFallback {
                    reason: n.fallback.clone().unwrap_or_else(|| {
                        "the NPU could not be opened at start; faces run on the CPU while it is \
                         opened again"
                            .into()
                    }),
                });
            }
            let mut npu = Npu {
                dim: n.embedder.dim().min(MAX_DIM),
                embedder: n.embedder,
                matcher: n.matcher.with_storage(storage),
                router: n.router,
                not_installed: n.not_installed.is_some(),
                covers: true,
            };
            npu.check_templates(&parts.matcher);
            npu
        });
        let dim = cpu_dim.max(npu.as_ref().map_or(0, |n| n.dim));
        let mut app = Self {
            tracker: Tracker::new(settings.tracker),
            settings,
            source: parts.source,
            decoder: FrameDecoder::new(),
            frame: RgbImage::new(0, 0),
            far: parts.detector.settings().far.map(FarScan::new),
            detector: parts.detector,
            found: Vec::with_capacity(256),
            faces: Faces::new(),
            assignment: Assignment::new(),
            ended: Ended::new(),
            embedder: parts.embedder,
            backend: parts.backend,
            cpu_dim,
            npu,
            crop: Box::default(),
            embedding: vec![0.0; dim],
            matcher: parts.matcher.with_storage(storage),
            decider,
            door: parts.door,
            door_events: Vec::with_capacity(8),
            events,
            counters: Counters::default(),
            candidates: heapless::Vec::new(),
            camera_lost: false,
            last_frame_at: Duration::ZERO,
            previous_frame_at: Duration::ZERO,
            far_yields: false,
            far_runs: 0,
            far_skipped: 0,
            grant_witnesses: heapless::Vec::new(),
            grant_open: false,
            corrupt_log: RateLimit::default(),
            detect_log: RateLimit::default(),
            crowd_log: RateLimit::default(),
            door_log: RateLimit::default(),
            embed_log: RateLimit::default(),
            liveness: parts.liveness,
            liveness_log: RateLimit::default(),
            last_latency: None,
            last_stages: StageTimes::default(),
            step_closer: false,
            enrolment: None,
            local_release: false,
            frames_decided: 0,
        };
        app.people_changed();
        Ok(app)
    }

    /// The gallery-size rule follows the number of people enrolled for each model.
    fn people_changed(&mut self) {
        let npu = self.npu.as_ref().map_or(0, |n| n.matcher.people());
        self.decider.set_people(self.matcher.people(), npu);
        if let Some(g) = self.decider.config().gallery {
            log::info!(
                "gallery: {} people: thresholds raised by {:.3} (CPU) and {:.3} (NPU) to hold \
                 FPIR {} per search",
                self.matcher.people(),
                g.lift(g.cpu_rise, self.matcher.people()),
                g.lift(g.npu_rise, npu),
                g.fpir
            );
        }
    }

    /// The counters so far.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// The door (state for the display, commands from MQTT).
    pub fn door(&mut self) -> &mut dyn DoorControl {
        self.door.as_mut()
    }

    /// Whether a face in view is too small or too far to be granted yet (the display asks the
    /// person to step closer).
    pub fn step_closer(&self) -> bool {
        self.step_closer
    }

    /// The door's state.
    pub fn door_state(&self) -> crate::door::DoorState {
        self.door.state()
    }

    /// One line describing the frame source.
    pub fn describe_source(&self) -> String {
        self.source.describe()
    }

    /// Time from the last processed frame's arrival to the end of its decision.
    pub fn last_latency(&self) -> Option<Duration> {
        self.last_latency
    }

    /// Per-stage times of the last processed frame.
    pub fn last_stages(&self) -> StageTimes {
        self.last_stages
    }

    /// Events since the last call, oldest first.
    pub fn drain_events(&mut self) -> std::vec::Drain<'_, AppEvent> {
        self.events.drain(..)
    }

    /// Replaces the gallery (after an enrolment or a reload command): the CPU model's
    /// templates and, when given, the NPU's, which are then checked against the new CPU ones.
    /// Votes start over and the gallery-size rule follows the new counts. `with_storage` is a
    /// no-op for the store's matchers (`Gallery::matcher_stored` builds them in the configured
    /// storage); it keeps the guarantee for matchers from anywhere else.
    pub fn set_matchers(&mut self, matcher: Matcher, npu_matcher: Option<Matcher>) {
        self.matcher = matcher.with_storage(self.settings.storage);
        if let Some(npu) = self.npu.as_mut() {
            if let Some(m) = npu_matcher {
                npu.matcher = m.with_storage(self.settings.storage);
            }
            npu.check_templates(&self.matcher);
        }
        self.decider.reset();
        self.people_changed();
    }

    /// Whether faces are embedded on the NPU now (configured and healthy).
    pub fn npu_up(&self) -> bool {
        self.npu.as_ref().is_some_and(|n| n.router.npu_up())
    }

    /// What the NPU is doing for the loop now.
    pub fn npu_use(&self) -> NpuUse {
        match &self.npu {
            None => NpuUse::Off,
            Some(n) if n.router.npu_up() && !n.covers => NpuUse::TemplatesMissing,
            Some(n) if n.router.npu_up() => NpuUse::Active,
            Some(n) if n.not_installed => NpuUse::NotInstalled,
            Some(_) => NpuUse::Fallback,
        }
    }

    /// Whether an NPU is configured at all.
    pub fn has_npu(&self) -> bool {
        self.npu.is_some()
    }

    /// Unlocks for a remote command (already authenticated by the caller).
    pub fn remote_unlock(&mut self, now: Duration) -> Result<(), DoorError> {
        self.door.unlock(UnlockReason::Remote, now)
    }

    /// Polls the door, takes the next frame (waiting at most the frame timeout) and runs it
    /// through detection, tracking, embedding and the decision. `now` is the loop's monotonic
    /// time; the door and the tracker run on it.
    pub fn step(&mut self, now: Duration) -> Result<StepOutcome, AppError> {
        self.poll_door(now);
        let timeout = self.settings.frame_timeout;
        let raw = match self.source.next_frame(timeout) {
            Ok(raw) => raw,
            Err(CameraError::Timeout(_)) => {
                self.counters.timeouts += 1;
                return Ok(StepOutcome::NoFrame);
            }
            Err(CameraError::EndOfStream) => {
                // A replay that ends mid-capture: the capture ends with it.
                self.finish_enrolment();
                return Ok(StepOutcome::EndOfStream);
            }
            Err(e) => {
                self.counters.camera_errors += 1;
                if !self.camera_lost {
                    self.camera_lost = true;
                    log::warn!("{e}");
                    self.events.push(AppEvent::CameraLost { reason: e.to_string() });
                }
                return Ok(StepOutcome::NoFrame);
            }
        };
        let arrived = Instant::now();
        let sequence = raw.sequence;
        if let Err(e) = self.decoder.decode(&raw, &mut self.frame) {
            self.counters.corrupt_frames += 1;
            if let Some(suppressed) = self.corrupt_log.allow(now) {
                log::warn!("dropping frame {sequence}: {e} ({suppressed} more since the last)");
            }
            return Ok(StepOutcome::Dropped);
        }
        if self.camera_lost {
            self.camera_lost = false;
            log::info!("camera back: {}", self.source.describe());
            self.events.push(AppEvent::CameraBack);
        }
        self.previous_frame_at = self.last_frame_at;
        self.last_frame_at = now;
        self.counters.frames += 1;
        self.last_stages = StageTimes { decode: arrived.elapsed(), ..StageTimes::default() };
        let faces = self.process_frame(sequence, now)?;
        self.last_latency = Some(arrived.elapsed());
        Ok(StepOutcome::Frame { sequence, faces })
    }

    fn poll_door(&mut self, now: Duration) {
        self.door_events.clear();
        if let Err(e) = self.door.poll(now, &mut self.door_events) {
            self.counters.door_errors += 1;
            if let Some(suppressed) = self.door_log.allow(now) {
                log::error!("{e} ({suppressed} more since the last)");
            }
        }
        for ev in self.door_events.drain(..) {
            match &ev {
                DoorEvent::Locked => self.local_release = false,
                DoorEvent::Unlocked { reason } if *reason != UnlockReason::Remote => {
                    self.local_release = true;
                }
                _ => {}
            }
            self.events.push(AppEvent::Door(ev));
        }
        if self.grant_open && self.door.state().locked {
            self.grant_open = false;
            self.grant_witnesses.clear();
        }
    }

    fn process_frame(&mut self, sequence: u64, now: Duration) -> Result<usize, AppError> {
        let t0 = Instant::now();
        if let Err(e) = self.detector.detect(self.frame.view(), &mut self.found) {
            // A model failure on one frame: count it like a bad frame and go on.
            self.counters.corrupt_frames += 1;
            if let Some(suppressed) = self.corrupt_log.allow(now) {
                log::warn!("detector failed on frame {sequence}: {e} ({suppressed} more)");
            }
            return Ok(0);
        }
        if let Err(e) = self.far_pass() {
            // The whole-frame faces stand: the frame goes on without the far window's.
            self.counters.far_errors += 1;
            if let Some(suppressed) = self.detect_log.allow(now) {
                log::warn!("far-face pass failed on frame {sequence}: {e} ({suppressed} more)");
            }
        }
        let over = keep_most_confident(&mut self.found, &mut self.faces);
        if over > 0 {
            self.counters.faces_over_bound += over as u64;
            if let Some(suppressed) = self.crowd_log.allow(now) {
                log::warn!(
                    "frame {sequence}: {} faces, more than the {MAX_FACES} a frame carries: the \
                     {over} least confident are left out ({suppressed} such frames since the last)",
                    self.found.len()
                );
            }
        }
        let t1 = Instant::now();
        let faces = self.faces.len();
        self.counters.faces += faces as u64;
        if let Some((_, live, good)) = &mut self.enrolment {
            if let Progress::Watching { good: g, .. } =
                live.offer(self.frame.view(), &self.faces, now)
            {
                *good = g;
            }
            if live.is_over() {
                self.finish_enrolment();
            }
        }
        self.tracker.update(&self.faces, now, &mut self.assignment, &mut self.ended);
        self.decider.end_tracks(&self.ended);
        let t2 = Instant::now();
        self.last_stages.detect = t1 - t0;
        self.last_stages.track = t2 - t1;

        // Embedding candidates: confirmed tracks not yet granted, faces large enough.
        self.candidates.clear();
        self.step_closer = false;
        let frame_h = self.frame.height().max(1) as f32;
        for (i, det) in self.faces.iter().enumerate() {
            let Some(track) = self.assignment[i] else { continue };
            let confirmed = self.tracker.get(track).is_some_and(|t| t.confirmed);
            if confirmed && !self.decider.granted(track) {
                let height_pct = 100.0 * (det.bbox[3] - det.bbox[1]) / frame_h;
                self.step_closer |= det.eye_distance() < self.settings.min_eye_px
                    || height_pct < self.settings.decision.min_face_height_pct;
            }
            let first_seen = self.tracker.get(track).map(|t| t.first_seen);
            if let Some(first_seen) = first_seen.filter(|_| {
                confirmed
                    && self.decider.wants(track, now)
                    && det.eye_distance() >= self.settings.min_eye_px
            }) {
                // Cannot fail: one candidate per face.
                let _ = self.candidates.push((self.decider.embed_due(track, first_seen), i));
            }
        }
        // Ties (same due time) go by face index: the order stays the same run after run.
        self.candidates.sort_unstable();
        // The next frame's far pass yields when faces are left waiting, or when a face too
        // large for the far pass to find wants an embedding: a face at the door is being
        // decided, and its embedding, not a search for far faces, is what that frame is for.
        let far_eye = self.far.as_ref().map_or(f32::INFINITY, |f| f.settings().max_eye_px);
        self.far_yields = self.candidates.len() > self.settings.max_embeds_per_frame
            || self.candidates.iter().any(|&(_, i)| self.faces[i].eye_distance() > far_eye);
        self.candidates.truncate(self.settings.max_embeds_per_frame);

        for c in 0..self.candidates.len() {
            let i = self.candidates[c].1;
            let det = self.faces[i];
            let Some(track) = self.assignment[i] else { continue };
            // Picked: due later whatever comes of it (a crop that fails alignment or quality
            // must not hold the budget frame after frame).
            self.decider.attempted(track, now);
            if align_face(self.frame.view(), &det.kps, &mut self.crop).is_none() {
                continue;
            }
            let q = quality(&det, Some(&self.crop));
            self.tracker.offer(track, &det, q);
            if q.score < self.settings.min_quality {
                log::trace!(
                    "frame {sequence} track {track}: quality {:.2} (size {:.0} px, frontal {:.2}, \
                     sharpness {:.0}) below {}",
                    q.score,
                    q.eye_distance,
                    q.frontal,
                    q.sharpness,
                    self.settings.min_quality
                );
                continue;
            }
            let Some(Embedded { norm, backend, space, best, second }) =
                self.embed_and_match(q.eye_distance, now)
            else {
                continue;
            };
            if log::log_enabled!(log::Level::Debug) {
                let name = |b: Option<(usize, f32)>| {
                    b.map(|(p, s)| format!("{} {s:.3}", self.matcher.person_name(p)))
                };
                log::debug!(
                    "frame {sequence} track {track}: best {:?}, second {:?}, eye {:.0} px, \
                     quality {:.2}, norm {norm:.1}",
                    name(best),
                    name(second),
                    q.eye_distance,
                    q.score
                );
            }
            let height = det.bbox[3] - det.bbox[1];
            let face = FaceSize {
                eye_px: q.eye_distance,
                height_pct: 100.0 * height / self.frame.height().max(1) as f32,
            };
            let live = if self.decider.wants_liveness_in(space, track, best, second, q.eye_distance)
            {
                self.check_liveness(&det, sequence, track, now)
            } else {
                None
            };
            let matcher = &self.matcher;
            let verdict = self.decider.vote_in(
                space,
                track,
                best,
                second,
                face,
                live,
                |p| matcher.person_id(p),
                now,
            );
            if let Some(v) = verdict {
                let face = Deciding {
                    eye_px: q.eye_distance,
                    norm,
                    backend,
                    second: second.map(|(_, s)| s),
                };
                self.apply(v, sequence, face, now)?;
            }
        }
        self.check_tailgating(sequence);
        self.last_stages.decide = t2.elapsed();
        self.frames_decided += 1;
        Ok(faces)
    }

    /// The far-face pass of this frame, its faces merged into `found`: on every other
    /// pass a window around the small track that has gone unseen longest (one the whole-frame
    /// pass is losing: it missed the previous frame), else the next tile of the rotation. After
    /// a frame that left faces waiting for an embedding or that embedded a near face, only the
    /// window around such a track, or the next tile every [`FAR_SEARCH_EVERY`]-th frame.
    fn far_pass(&mut self) -> Result<(), crate::detect::DetectError> {
        let Some(far) = &mut self.far else { return Ok(()) };
        let max_eye = far.settings().max_eye_px;
        // The small track the whole-frame pass is losing (it missed the previous frame) that
        // has gone unseen longest, where its constant-velocity motion has taken it by now.
        let lost = self
            .tracker
            .tracks()
            .iter()
            .filter(|t| t.last_seen < self.previous_frame_at && t.last.eye_distance() <= max_eye)
            .min_by_key(|t| t.last_seen)
            .map(|t| {
                let dt = self.last_frame_at.saturating_sub(t.last_seen).as_secs_f32();
                let [dx, dy] = t.velocity.map(|v| v * dt);
                [t.bbox[0] + dx, t.bbox[1] + dy, t.bbox[2] + dx, t.bbox[3] + dy]
            });
        let around = if self.far_yields {
            // The previous frame left faces waiting for an embedding, or was deciding a near
            // face: this one likely will too, and the faces found come first. A small track
            // being lost is still followed (its votes would go with it), and the search for
            // new far faces still runs every FAR_SEARCH_EVERY-th frame (a face that stays at
            // the door undecided must not stop it).
            self.far_skipped += 1;
            if lost.is_none() && self.far_skipped < FAR_SEARCH_EVERY {
                return Ok(());
            }
            lost
        } else {
            // Every other pass follows a lost small track, the others search.
            lost.filter(|_| self.far_runs.is_multiple_of(2))
        };
        self.far_skipped = 0;
        self.far_runs += 1;
        let before = self.found.len();
        far.pass(&mut self.detector, self.frame.view(), around, &mut self.found)?;
        self.counters.far_faces += self.found.len().saturating_sub(before) as u64;
        Ok(())
    }

    /// Runs the liveness check on a candidate of a grant, from the full frame and its
    /// detection box. `None` when there is no check or it failed to run (counted, rate-limited
    /// warning): the decider counts that as not live.
    fn check_liveness(
        &mut self,
        det: &Detection,
        sequence: u64,
        track: TrackId,
        now: Duration,
    ) -> Option<f32> {
        let check = self.liveness.as_mut()?;
        let t = Instant::now();
        let result = check.check(self.frame.view(), det.bbox);
        self.last_stages.liveness += t.elapsed();
        match result {
            Ok(s) => {
                self.counters.liveness_checks += 1;
                log::debug!(
                    "frame {sequence} track {track}: live score {:.3} (v2 {:.3}, v1se {:.3})",
                    s.score,
                    s.models[0],
                    s.models[1]
                );
                Some(s.score)
            }
            Err(e) => {
                self.counters.liveness_errors += 1;
                if let Some(suppressed) = self.liveness_log.allow(now) {
                    log::warn!("liveness check failed: {e} ({suppressed} more)");
                }
                None
            }
        }
    }

    /// Embeds the aligned crop where the router says (NPU for close faces while it is healthy
    /// and its norm is above the cliff, the CPU otherwise) and matches it against the templates
    /// of that same model. The best two come back as indices of the CPU matcher's people, so
    /// votes from both backends count for the same person, each judged by its own model's
    /// thresholds ([`Space`]). `None` when the face cannot be embedded or matched (counted,
    /// rate-limited warning).
    fn embed_and_match(&mut self, eye_px: f32, now: Duration) -> Option<Embedded> {
        if let Some(npu) = self.npu.as_mut().filter(|n| n.covers) {
            if npu.router.route(eye_px, now) == Route::Npu {
                let result = npu.embedder.embed(&self.crop, &mut self.embedding);
                let event = npu.router.npu_result(result.is_ok(), now);
                match (&result, event) {
                    (Err(e), Some(NpuEvent::Failed)) => {
                        log::warn!("npu failed, every face on the CPU now: {e}");
                        self.events.push(AppEvent::NpuFallback { reason: e.to_string() });
                    }
                    (_, Some(NpuEvent::Recovered)) => {
                        log::info!("npu back");
                        npu.not_installed = false;
                        self.events.push(AppEvent::NpuBack);
                    }
                    _ => {}
                }
                if let Ok(norm) = result {
                    if npu.router.check_norm(norm) == Route::Npu {
                        self.counters.embeddings += 1;
                        self.counters.npu_embeddings += 1;
                        match npu.matcher.best_two_indices(&self.embedding[..npu.dim]) {
                            Ok((best, second)) => {
                                // Onto the CPU matcher's people (same gallery ids).
                                let map = |b: Option<(usize, f32)>| {
                                    b.and_then(|(i, sim)| {
                                        let id = npu.matcher.person_id(i);
                                        self.matcher.index_of(id).map(|j| (j, sim))
                                    })
                                };
                                return Some(Embedded {
                                    norm,
                                    backend: "npu",
                                    space: Space::Npu,
                                    best: map(best),
                                    second: map(second),
                                });
                            }
                            Err(e) => {
                                self.counters.embed_errors += 1;
                                if let Some(suppressed) = self.embed_log.allow(now) {
                                    log::warn!("npu matching failed: {e} ({suppressed} more)");
                                }
                                return None;
                            }
                        }
                    }
                    self.counters.cpu_fallbacks += 1;
                }
            }
        }
        let norm = match self.embedder.embed(&self.crop, &mut self.embedding) {
            Ok(norm) => norm,
            Err(e) => {
                self.counters.embed_errors += 1;
                if let Some(suppressed) = self.embed_log.allow(now) {
                    log::warn!("embedding failed: {e} ({suppressed} more)");
                }
                return None;
            }
        };
        self.counters.embeddings += 1;
        match self.matcher.best_two_indices(&self.embedding[..self.cpu_dim]) {
            Ok((best, second)) => {
                Some(Embedded { norm, backend: self.backend, space: Space::Cpu, best, second })
            }
            Err(e) => {
                self.counters.embed_errors += 1;
                if let Some(suppressed) = self.embed_log.allow(now) {
                    log::warn!("matching failed: {e} ({suppressed} more)");
                }
                None
            }
        }
    }

    fn apply(
        &mut self,
        verdict: Verdict,
        frame: u64,
        face: Deciding,
        now: Duration,
    ) -> Result<(), AppError> {
        let Deciding { eye_px, norm, backend, second } = face;
        match verdict {
            Verdict::Granted { track, person_index, person, similarity, votes, liveness } => {
                let name = self.matcher.person_name(person_index).to_string();
                self.counters.grants += 1;
                log::info!(
                    "granted {name} (track {track}, similarity {similarity:.3}, {votes} votes, \
                     eye distance {eye_px:.0} px, frame {frame})"
                );
                if let Err(e) = self.door.unlock(UnlockReason::Face { person: name.clone() }, now) {
                    self.counters.door_errors += 1;
                    log::error!("cannot unlock for {name}: {e}");
                    // unlock() already tried to secure; if even that fails the door is in an
                    // unknown state and the loop must stop (the caller secures on exit).
                    self.door.secure()?;
                }
                self.grant_open = true;
                // At once, not at the next poll: an unsigned LOCK taken before that poll must
                // not end this release.
                self.local_release = true;
                self.grant_witnesses.clear();
                for t in self.tracker.tracks() {
                    if t.last_seen == now {
                        // Cannot fail: one per live track.
                        let _ = self.grant_witnesses.push(t.id);
                    }
                }
                self.events.push(AppEvent::Granted {
                    track,
                    person,
                    name,
                    similarity,
                    second_similarity: second,
                    votes,
                    eye_px,
                    norm,
                    backend,
                    liveness,
                    liveness_model: liveness.and(self.liveness.as_ref().map(|l| l.model())),
                    frame,
                });
            }
            Verdict::SpoofSuspected {
                track,
                person_index,
                person,
                similarity,
                liveness,
                passes,
                votes,
            } => {
                let name = self.matcher.person_name(person_index).to_string();
                self.counters.spoofs += 1;
                log::warn!(
                    "spoof suspected: {name} recognised but only {passes} of {votes} faces passed \
                     the liveness check (mean live score {liveness:.3}, track {track}, frame \
                     {frame}); the door stays locked"
                );
                self.events.push(AppEvent::SpoofSuspected {
                    track,
                    person,
                    name,
                    similarity,
                    liveness,
                    passes,
                    votes,
                    liveness_model: self.liveness.as_ref().map_or("none", |l| l.model()),
                    eye_px,
                    frame,
                });
            }
            Verdict::CoolingDown { track, person } => {
                self.counters.cooldowns += 1;
                let name = (0..self.matcher.people())
                    .find(|&i| self.matcher.person_id(i) == person)
                    .map(|i| self.matcher.person_name(i).to_string())
                    .unwrap_or_default();
                log::info!("{name} recognised again within the cooldown (track {track})");
                self.events.push(AppEvent::CoolingDown { track, name, frame });
            }
            Verdict::Unknown { track, best_similarity } => {
                self.counters.unknowns += 1;
                log::info!(
                    "unknown face (track {track}, best similarity {best_similarity:.3}, eye \
                     distance {eye_px:.0} px, frame {frame})"
                );
                self.events.push(AppEvent::Unknown {
                    track,
                    similarity: best_similarity,
                    eye_px,
                    norm,
                    backend,
                    frame,
                });
            }
        }
        Ok(())
    }

    /// While the door is unlocked for a face, a confirmed track that was not in view at the
    /// grant and is not granted itself is a tailgater (reported once per track).
    fn check_tailgating(&mut self, frame: u64) {
        if !self.grant_open {
            return;
        }
        for i in 0..self.tracker.tracks().len() {
            let t = &self.tracker.tracks()[i];
            let id = t.id;
            if !t.confirmed || self.grant_witnesses.contains(&id) || self.decider.granted(id) {
                continue;
            }
            // While the far-face pass runs (not at a frame size it skips), a face in its band is
            // far from the door and may be someone there at the grant whom the rotation reached
            // only now: tailgating is someone coming through, reported once the face is larger.
            let far_band =
                self.far.as_ref().filter(|f| f.tiles() > 0).map(|f| f.settings().max_eye_px);
            if far_band.is_some_and(|band| t.last.eye_distance() <= band) {
                continue;
            }
            if self.decider.report_tailgate(id) {
                self.counters.tailgates += 1;
                log::warn!("tailgating: track {id} entered while the door was unlocked");
                self.events.push(AppEvent::Tailgating { track: id, frame });
            }
        }
    }

    /// Carries out a remote command.
    pub fn apply_command(&mut self, command: RemoteCommand, now: Duration) {
        match command {
            RemoteCommand::Unlock => {
                log::info!("remote unlock");
                if let Err(e) = self.door.unlock(UnlockReason::Remote, now) {
                    self.counters.door_errors += 1;
                    log::error!("remote unlock failed: {e}");
                }
            }
            RemoteCommand::EndRemoteRelease if self.local_release => {
                log::info!(
                    "unsigned remote lock ignored: the release is a face's or the exit button's"
                );
            }
            RemoteCommand::Lock | RemoteCommand::EndRemoteRelease => {
                log::info!("remote lock");
                if let Err(e) = self.door.secure() {
                    self.counters.door_errors += 1;
                    log::error!("remote lock failed: {e}");
                }
            }
            RemoteCommand::Enrol(enrol) => {
                let (name, live) = *enrol;
                if let Some((running, ..)) = &self.enrolment {
                    let why = format!("the enrolment of {running} is still running");
                    log::warn!("enrolment of {name} refused: {why}");
                    self.events.push(AppEvent::EnrolCaptured { name, result: Err(why) });
                    return;
                }
                let seconds = live.settings().duration.as_secs_f32().round() as u32;
                log::info!(
                    "enrolling {name}: {seconds} s of camera frames, the door keeps working"
                );
                self.events.push(AppEvent::EnrolStarted { name: name.clone(), seconds });
                self.enrolment = Some((name, live, 0));
            }
            RemoteCommand::Forget(name) => {
                let m = self.matcher.without(&name);
                let npu = self.npu.as_ref().map(|n| n.matcher.without(&name));
                log::warn!("gallery: {name} forgotten by the loop ({} people now)", m.people());
                self.set_matchers(m, npu);
            }
            RemoteCommand::SetMatcher(matchers) => {
                let (m, npu) = *matchers;
                log::info!("gallery: {} people enrolled now", m.people());
                self.set_matchers(m, npu);
            }
        }
    }

    /// The live enrolment in progress: name, good faces so far, faces needed.
    pub fn enrolment(&self) -> Option<(&str, usize, usize)> {
        self.enrolment
            .as_ref()
            .map(|(name, live, good)| (name.as_str(), *good, live.settings().min_templates))
    }

    /// Ends the live enrolment in progress, if any: embeds its best faces (and, with an NPU
    /// that works, embeds them for the NPU's model too) and reports the capture.
    fn finish_enrolment(&mut self) {
        let Some((name, live, _)) = self.enrolment.take() else { return };
        let result = live
            .finish(self.embedder.as_mut(), &self.matcher, &name)
            .map(|mut capture| {
                if let Some(npu) = self.npu.as_mut().filter(|n| n.embedder.usable()) {
                    if let Err(e) = capture.embed_also(npu.embedder.as_mut()) {
                        // The person is still recognised on the CPU; the NPU state says
                        // templates_missing until they are enrolled again.
                        log::warn!("enrolment of {name}: no templates for the NPU's model: {e}");
                    }
                }
                Box::new(capture)
            })
            .map_err(|e| e.to_string());
        if let Err(why) = &result {
            log::warn!("enrolment of {name} refused: {why}");
        }
        self.events.push(AppEvent::EnrolCaptured { name, result });
    }

    /// Secures the door (relay to its locked level).
    pub fn secure(&mut self) -> Result<(), DoorError> {
        self.door.secure()
    }

    /// The loop's time for the next step, and whether the loop runs in real time: the
    /// monotonic clock since `start` for a camera; for a replay the stream's own clock (the
    /// timestamp of the frame it hands out next), so a clip gives the same decisions paced or
    /// not, on any machine. Once a replay has ended its clock goes on in steps of
    /// `IDLE_POLL` (20 ms) after `last` (the door still relocks on it).
    /// A caller driving [`App::step`] itself (`bench loop`) takes its `now` from here too.
    pub fn loop_time(&self, start: Instant, last: Duration) -> (Duration, bool) {
        match self.source.clock() {
            SourceClock::Monotonic => (start.elapsed(), true),
            SourceClock::Stream { next: Some(t), paced } => (t, paced),
            SourceClock::Stream { next: None, paced } => (last + IDLE_POLL, paced),
        }
    }

    /// Runs until `stop` is set or a replay ends (then until the door has relocked), handing
    /// every event to `hooks`, feeding the watchdog on progress, and securing the door on
    /// the way out (also when the loop fails).
    pub fn run(
        &mut self,
        stop: &AtomicBool,
        notifier: &Notifier,
        hooks: &mut dyn Hooks,
    ) -> Result<Counters, AppError> {
        let start = Instant::now();
        let mut last_counters = Duration::ZERO;
        let mut ended = false;
        let mut now = Duration::ZERO;
        notifier.ready(&self.source.describe());
        let result = loop {
            if stop.load(Ordering::SeqCst) {
                log::info!("stopping on request");
                break Ok(());
            }
            let (next, real_time) = self.loop_time(start, now);
            now = next;
            while let Some(command) = hooks.command() {
                self.apply_command(command, now);
            }
            let outcome = if ended {
                self.poll_door(now);
                // Unpaced, the clip's clock runs on without waiting; a short pause still keeps
                // a door that never relocks (a failing pin) from spinning a core.
                std::thread::sleep(if real_time { IDLE_POLL } else { Duration::from_micros(200) });
                StepOutcome::NoFrame
            } else {
                let decided_before = self.frames_decided;
                match self.step(now) {
                    Ok(o) => {
                        if decided_before == 0 && self.frames_decided > 0 {
                            log::info!(
                                "{} {:.1?} after the loop started",
                                crate::startup::FIRST_DECIDED,
                                start.elapsed()
                            );
                        }
                        o
                    }
                    Err(e) => break Err(e),
                }
            };
            for ev in self.events.drain(..) {
                hooks.event(&ev);
            }
            hooks.tick(self, now);
            if outcome == StepOutcome::EndOfStream {
                ended = true;
                log::info!("replay ended; waiting for the door to relock");
            }
            if ended && self.door.state().locked {
                break Ok(());
            }
            let camera_ok = self
                .settings
                .camera_lost_restart
                .is_none_or(|limit| now.saturating_sub(self.last_frame_at) < limit || ended);
            if camera_ok {
                notifier.watchdog();
            }
            if now.saturating_sub(last_counters) >= self.settings.counters_interval {
                last_counters = now;
                log::info!("counters: {}", self.counters);
                hooks.event(&AppEvent::Counters { counters: self.counters, uptime: now });
            }
        };
        notifier.stopping();
        let secured = self.door.secure();
        let (now, _) = self.loop_time(start, now);
        self.poll_door(now);
        for ev in self.events.drain(..) {
            hooks.event(&ev);
        }
        result?;
        secured?;
        Ok(self.counters)
    }
}
