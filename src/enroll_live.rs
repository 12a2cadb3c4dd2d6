//! Live enrolment at the door: a few seconds of camera frames become the templates of one
//! person, stored in one transaction.
//!
//! Role: [`LiveEnrolment`] is a state machine fed frame by frame with the frame and its
//! detections ([`LiveEnrolment::offer`]); it tracks the faces (its own [`Tracker`]), refuses as
//! soon as two people are in view, gates the one person's faces by quality (eye distance,
//! frontality, sharpness, not cut by the frame's edge) and keeps the best crop of each of a
//! fixed number of time slots, so the templates come from moments spread over the capture, not
//! from consecutive frames. [`LiveEnrolment::finish`] embeds the best `templates` of those crops
//! with the configured recognizer, refuses when they disagree (the track may have switched
//! people) and reports whom the person already resembles; [`Capture::embed_also`] adds the same
//! faces' templates for the NPU's model when one is configured, and [`Capture::commit`] stores
//! every model's templates with one [`Gallery::enroll_models`] call (one transaction).
//! [`capture`] drives a [`FrameSource`] through the state machine; [`crate::enroll_camera::command`] is
//! `portier enroll --from-camera`. The state machine takes frames and detections it is handed,
//! so the running service's loop feeds it too (Home Assistant's enrol button:
//! `crate::app::RemoteCommand::Enrol`), with the frames it sees anyway.
//!
//! Time is the frames' own (`now`, a replay's nominal timestamps), so a replay enrols without
//! real-time pacing and tests are deterministic.
//!
//! Must not: write the gallery before every check has passed (nothing is stored until
//! [`Capture::commit`]; dropping a capture, or a kill before the commit, leaves the gallery
//! untouched), decide access, or drive the door. It is not on the frame loop's hot path:
//! the crops it keeps are allocated once per slot, not per frame, but it is not allocation-free.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::align::{align_face, AlignedFace};
use crate::camera::{CameraError, FrameSource};
use crate::detect::{keep_most_confident, DetectError, Detection, Detector, Faces, MAX_FACES};
use crate::embed::{dot, EmbedError, Embedder};
use crate::frame::{FrameDecoder, ImageView, RgbImage};
use crate::gallery::{EnrollMode, Gallery, GalleryError, Matcher, PersonId};
use crate::track::{quality, Assignment, Ended, Quality, TrackId, Tracker, TrackerConfig};

/// Templates kept by default.
pub const DEFAULT_TEMPLATES: usize = 5;
/// Fewest good templates an enrolment accepts by default.
pub const DEFAULT_MIN_TEMPLATES: usize = 3;
/// Default capture length, seconds of stream time.
pub const DEFAULT_SECONDS: f64 = 5.0;
/// Longest capture accepted.
pub const MAX_SECONDS: f64 = 60.0;
/// How long an enrolment started from Home Assistant waits for the person to come close to
/// the camera (they press the button on a phone, then walk up).
pub const REMOTE_WAIT: Duration = Duration::from_secs(60);

// Thresholds of the quality gate and the consistency check, measured with the shipped laptop
// pair (SCRFD-500M + w600k_mbf) on the 640x480 streams of `../shared/assets/video`, every frame
// with one face of at least `MIN_EYE_PX`.

/// Smallest eye distance (pixels) of an enrolment face: the ArcFace template's own eye distance
/// (73.53 - 38.29 = 35.2 px in the 112x112 crop, see [`crate::align::ARCFACE_TEMPLATE`]),
/// rounded up, so the crop is never upsampled. Measured: the selfie stream's face 37-68 px,
/// Hamilton's facing segment (frames 82-210) 40-53 px, its profile segment 8-21 px, its
/// audience 5-23 px.
pub const MIN_EYE_PX: f32 = 36.0;
/// Lowest [`crate::track::frontality`] of an enrolment face. Measured: faces of the selfie
/// stream 0.00-0.89 (median 0.75), of Hamilton's facing segment 0.17-0.96 (median 0.64), of his
/// profile segment 0.00. Gating at 0.5 still lets in views that disagree with the person's own
/// other views (lowest same-person similarity 0.163 on the selfie stream); at 0.6 the lowest is
/// 0.598 (selfie) and 0.311 (Hamilton).
pub const MIN_FRONTAL: f32 = 0.6;
/// Lowest [`crate::track::sharpness`] (variance of the Laplacian of the aligned crop's luma) of
/// an enrolment face. Measured: the selfie stream 51-870 (median 230; its motion-blurred frames
/// 51-130 still embed consistently), Hamilton's facing segment 190-494 (median 315), the soft
/// background faces of his frames 44-80 1-5, the audience's (upsampled) crops 9-48. Sharper
/// faces rank higher anyway (the sharpness term of [`quality`]).
pub const MIN_SHARPNESS: f32 = 40.0;
/// Lowest cosine similarity between any two templates of one capture. Measured between every
/// two faces passing the gate: one person's faces 0.598-0.99 (selfie, median 0.90) and
/// 0.311-0.95 (Hamilton, median 0.575); the five templates kept 0.789 (selfie) and 0.440
/// (Hamilton) at the lowest; the selfie person against Lin-Manuel Miranda at most 0.164. On the
/// shared labelled photos, different people reach 0.277 (`portier eval verify`): a switch to a
/// close look-alike can pass this check, which is why a resemblance to someone enrolled is
/// reported separately.
pub const MIN_CONSISTENCY: f32 = 0.25;
/// A face box may reach past the frame's edge by this fraction of its width or height; more is
/// a face cut by the edge, whose aligned crop would carry black fill into the template.
pub const EDGE_TOLERANCE: f32 = 0.1;
/// Longest wait for a frame during a capture before the camera counts as stalled.
pub const STALL: Duration = Duration::from_secs(5);
/// Time slots per kept template: the capture is cut into `templates * SLOTS_PER_TEMPLATE`
/// equal slots, each keeping its best face, and templates come from non-adjacent slots first.
const SLOTS_PER_TEMPLATE: usize = 3;

/// Settings of one live enrolment.
#[derive(Debug, Clone, PartialEq)]
pub struct EnrolSettings {
    /// Length of the capture in stream time (frame timestamps).
    pub duration: Duration,
    /// Templates kept (the best faces, spread over the capture).
    pub templates: usize,
    /// Fewest good faces accepted; fewer refuses the enrolment.
    pub min_templates: usize,
    /// See [`MIN_EYE_PX`].
    pub min_eye_px: f32,
    /// See [`MIN_FRONTAL`].
    pub min_frontal: f32,
    /// See [`MIN_SHARPNESS`].
    pub min_sharpness: f32,
    /// See [`MIN_CONSISTENCY`].
    pub min_consistency: f32,
    /// A template at least this similar to an enrolled person is reported as a resemblance
    /// (the access threshold: such a person could be granted as the other).
    pub resemblance_threshold: f32,
    /// Tracking (the loop's settings: a person is in view once their track is confirmed).
    pub tracker: TrackerConfig,
    /// For an enrolment started from afar (Home Assistant's button, inside the running
    /// service): the capture waits up to this long for one face close enough to enrol
    /// (`min_eye_px`) before its time starts, and ends (rather than refuses) when that person
    /// has left and someone else is in view. `None` (the CLI, where the person stands at the
    /// camera when the command starts): the first frame starts the capture.
    pub wait_for_face: Option<Duration>,
}

/// Faces of the person that did not pass the quality gate, by reason (each face counts once,
/// for the first gate it failed, in this order).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rejections {
    /// Box reaching past the frame's edge (see [`EDGE_TOLERANCE`]).
    pub cut: u32,
    /// Eye distance below the minimum.
    pub small: u32,
    /// Frontality below the minimum (or landmarks that do not align).
    pub turned: u32,
    /// Sharpness below the minimum.
    pub blurred: u32,
}

impl std::fmt::Display for Rejections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} too small, {} turned away, {} blurred, {} cut by the frame's edge",
            self.small, self.turned, self.blurred, self.cut
        )
    }
}

/// Why a capture cannot become an enrolment. Nothing was stored.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    /// Two or more people were in view at once.
    #[error(
        "two people in view ({faces} faces in frame {frame} of the capture): enrol one person \
         at a time, with nobody else in view"
    )]
    TwoPeople {
        /// Frame of the capture (from 0) where it happened.
        frame: u64,
        /// Confirmed faces in view in that frame.
        faces: usize,
    },
    /// No face was in view long enough to be tracked.
    #[error("no face in view during the capture ({frames} frames)")]
    NoFace {
        /// Frames watched.
        frames: u64,
    },
    /// Too few faces of the person passed the quality gate.
    #[error(
        "only {good} good view(s) of the face, {needed} needed: of {seen} faces seen, \
         {rejected}; face the camera from closer, and hold still"
    )]
    TooFewGoodFaces {
        /// Good faces kept (at most one per time slot).
        good: usize,
        /// Needed.
        needed: usize,
        /// Faces of the person seen.
        seen: u32,
        /// Why the others failed.
        rejected: Rejections,
    },
    /// The templates do not agree with each other.
    #[error(
        "the captured faces disagree (lowest similarity between two of them {lowest:.3}, below \
         {bound:.3}): the tracked face may have switched people; try again"
    )]
    Inconsistent {
        /// Lowest pairwise cosine similarity.
        lowest: f32,
        /// The bound.
        bound: f32,
    },
}

/// Everything that can stop a live enrolment.
#[derive(Debug, thiserror::Error)]
pub enum EnrolError {
    /// The scene was not suitable; nothing was stored.
    #[error("enrolment refused: {0}")]
    Refused(#[from] Refusal),
    /// The person already resembles someone enrolled, and that was not allowed.
    #[error(
        "enrolment refused: {name:?} already resembles enrolled {other:?} (similarity \
         {similarity:.3}, at or above the access threshold {threshold:.3}); pass \
         --allow-similar to enrol anyway"
    )]
    Resembles {
        /// The name being enrolled.
        name: String,
        /// The enrolled person.
        other: String,
        /// Highest similarity of a template to them.
        similarity: f32,
        /// The access threshold.
        threshold: f32,
    },
    /// The settings or the command line are unusable.
    #[error("{0}")]
    Usage(String),
    /// No camera is configured and no replay was given.
    #[error(
        "config {config}: key `camera`: required by `portier enroll --from-camera` (or pass \
         --replay FILE)"
    )]
    NoCamera {
        /// The config file.
        config: PathBuf,
    },
    /// The camera (or replay) cannot be opened, or failed during the capture.
    #[error(transparent)]
    Camera(#[from] CameraError),
    /// ONNX Runtime or a model cannot be opened.
    #[error(transparent)]
    Runtime(#[from] crate::infer::InferError),
    /// Detection failed on a frame.
    #[error(transparent)]
    Detect(#[from] DetectError),
    /// Embedding a kept face failed.
    #[error(transparent)]
    Embed(#[from] EmbedError),
    /// The gallery refused or failed.
    #[error(transparent)]
    Gallery(#[from] GalleryError),
    /// The gallery's folder cannot be created.
    #[error("gallery folder {path}: cannot create: {source}")]
    GalleryFolder {
        /// The folder.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Where a capture stands after a frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// Still watching.
    Watching {
        /// Stream time since the capture's first frame.
        elapsed: Duration,
        /// Time slots holding a good face so far.
        good: usize,
        /// Confirmed faces in view in this frame.
        in_view: usize,
    },
    /// The capture is over (its time is up, or the person left the view): call
    /// [`LiveEnrolment::finish`].
    Done,
    /// The capture is refused; further frames change nothing.
    Refused(Refusal),
}

/// The best good face of one time slot.
#[derive(Debug)]
struct Slot {
    crop: Box<AlignedFace>,
    face: CapturedFace,
}

/// One face kept for a template.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CapturedFace {
    /// Frame of the capture (from 0).
    pub frame: u64,
    /// Stream time since the capture's first frame.
    pub at: Duration,
    /// Its quality (eye distance, frontality, sharpness, overall score).
    pub quality: Quality,
    /// Embedding norm before normalisation (0 until embedded).
    pub norm: f32,
}

/// An enrolled person the captured face already resembles.
#[derive(Debug, Clone, PartialEq)]
pub struct Resemblance {
    /// Gallery id.
    pub person: PersonId,
    /// Name.
    pub name: String,
    /// Highest similarity of one of the templates to them.
    pub similarity: f32,
}

/// A finished capture: templates that passed every check, not stored yet.
#[derive(Debug, Clone, PartialEq)]
pub struct Capture {
    /// Model of the templates.
    pub model_id: String,
    /// L2-normalised templates, in capture order.
    pub templates: Vec<Vec<f32>>,
    /// The face behind each template.
    pub faces: Vec<CapturedFace>,
    /// Lowest cosine similarity between two templates (1 for a single template).
    pub lowest_agreement: f32,
    /// The enrolled person (other than the one being enrolled) most similar to a template, when
    /// at or above the resemblance threshold.
    pub resemblance: Option<Resemblance>,
    /// Faces of the person that failed the quality gate.
    pub rejected: Rejections,
    /// Frames watched.
    pub frames: u64,
    /// Templates of the same faces for further models (the NPU's), `(model id, templates)`,
    /// added by [`Capture::embed_also`].
    pub more: Vec<(String, Vec<Vec<f32>>)>,
    /// The aligned crops behind `templates`, for [`Capture::embed_also`]; dropped with the
    /// capture, never stored.
    crops: Vec<Box<AlignedFace>>,
}

impl Capture {
    /// Embeds the kept faces with another model too (the NPU's, whose templates live in their
    /// own embedding space), so the person is recognised on both backends from the first day.
    pub fn embed_also(&mut self, embedder: &mut dyn Embedder) -> Result<(), EmbedError> {
        let mut set = Vec::with_capacity(self.crops.len());
        for crop in &self.crops {
            let mut t = vec![0.0; embedder.dim()];
            embedder.embed(crop, &mut t)?;
            set.push(t);
        }
        self.more.push((embedder.model_id().to_string(), set));
        Ok(())
    }

    /// Stores the templates of every model as `name` in one transaction
    /// ([`Gallery::enroll_models`]).
    pub fn commit(
        &self,
        gallery: &mut Gallery,
        name: &str,
        mode: EnrollMode,
    ) -> Result<PersonId, GalleryError> {
        let mut sets: Vec<(&str, &[Vec<f32>])> = vec![(&self.model_id, &self.templates)];
        sets.extend(self.more.iter().map(|(id, t)| (id.as_str(), t.as_slice())));
        gallery.enroll_models(name, &sets, mode)
    }
}

/// The capture state machine. See the module documentation.
#[derive(Debug)]
pub struct LiveEnrolment {
    settings: EnrolSettings,
    tracker: Tracker,
    assignment: Assignment,
    ended: Ended,
    started: Option<Duration>,
    /// First frame offered while waiting for a close face ([`EnrolSettings::wait_for_face`]).
    waiting_since: Option<Duration>,
    /// Why a capture started from afar had to start again (two people in view), if it did.
    interrupted: Option<Refusal>,
    frames: u64,
    /// The person being enrolled: the first track to be confirmed alone in view.
    subject: Option<TrackId>,
    seen: u32,
    rejected: Rejections,
    slots: Vec<Option<Slot>>,
    crop: Box<AlignedFace>,
    refusal: Option<Refusal>,
    done: bool,
}

impl LiveEnrolment {
    /// A capture with these settings; fails on settings that cannot work.
    pub fn new(settings: EnrolSettings) -> Result<Self, EnrolError> {
        let secs = settings.duration.as_secs_f64();
        if !(secs > 0.0 && secs <= MAX_SECONDS) {
            return Err(EnrolError::Usage(format!(
                "capture length {secs} s: must be in (0, {MAX_SECONDS}]"
            )));
        }
        if settings.min_templates == 0 || settings.templates < settings.min_templates {
            return Err(EnrolError::Usage(format!(
                "templates {} and minimum {}: need 1 <= minimum <= templates",
                settings.templates, settings.min_templates
            )));
        }
        let slots = settings.templates * SLOTS_PER_TEMPLATE;
        Ok(Self {
            tracker: Tracker::new(settings.tracker),
            assignment: Assignment::new(),
            ended: Ended::new(),
            settings,
            started: None,
            waiting_since: None,
            interrupted: None,
            frames: 0,
            subject: None,
            seen: 0,
            rejected: Rejections::default(),
            slots: (0..slots).map(|_| None).collect(),
            crop: Box::default(),
            refusal: None,
            done: false,
        })
    }

    /// The settings.
    pub fn settings(&self) -> &EnrolSettings {
        &self.settings
    }

    /// Feeds one frame and its faces (see [`Faces`], frame coordinates) at frame time `now`
    /// (monotonic, the frame's timestamp). The first frame starts the capture; a frame at or
    /// after `duration` ends it without being used.
    pub fn offer(&mut self, frame: ImageView<'_>, detections: &Faces, now: Duration) -> Progress {
        if let Some(r) = &self.refusal {
            return Progress::Refused(r.clone());
        }
        if self.done {
            return Progress::Done;
        }
        if let (Some(wait), None) = (self.settings.wait_for_face, self.started) {
            let since = *self.waiting_since.get_or_insert(now);
            let close =
                detections.iter().filter(|d| d.eye_distance() >= self.settings.min_eye_px).count();
            if close != 1 {
                if now.saturating_sub(since) >= wait {
                    if let Some(r) = self.interrupted.take() {
                        log::info!("enrolment refused: {r}");
                        self.refusal = Some(r.clone());
                        return Progress::Refused(r);
                    }
                    log::info!("enrolment: nobody came close to the camera");
                    self.done = true;
                    return Progress::Done;
                }
                return Progress::Watching { elapsed: Duration::ZERO, good: 0, in_view: 0 };
            }
        }
        let started = *self.started.get_or_insert(now);
        let elapsed = now.saturating_sub(started);
        if elapsed >= self.settings.duration {
            self.done = true;
            return Progress::Done;
        }
        let index = self.frames;
        self.frames += 1;
        self.tracker.update(detections, now, &mut self.assignment, &mut self.ended);
        if self.subject.is_some_and(|s| self.ended.contains(&s)) {
            // The person left the view for longer than the tracker's patience: whoever comes
            // next is not known to be them.
            log::info!("enrolment: the face left the view at {:.1} s", elapsed.as_secs_f32());
            self.done = true;
            return Progress::Done;
        }
        // In view: confirmed tracks with a detection in this frame (a track coasting through a
        // missed detection is not counted, so a face re-found under a new id is one person).
        let in_view = self.tracker.tracks().iter().filter(|t| t.confirmed && t.last_seen == now);
        let mut count = 0;
        let mut alone = None;
        for t in in_view {
            count += 1;
            alone = Some(t.id);
        }
        if self.settings.wait_for_face.is_some()
            && count >= 1
            && self.subject.is_some_and(|s| {
                !self.tracker.tracks().iter().any(|t| t.id == s && t.last_seen == now)
            })
        {
            // Started from afar: the person left and someone else is in view (a scene that
            // changed): what was captured of them alone stands; nothing more is taken.
            log::info!("enrolment: the person left the view at {:.1} s", elapsed.as_secs_f32());
            self.done = true;
            return Progress::Done;
        }
        if count >= 2 {
            if self.settings.wait_for_face.is_none() {
                let r = Refusal::TwoPeople { frame: index, faces: count };
                log::info!("enrolment refused: {r}");
                self.refusal = Some(r.clone());
                return Progress::Refused(r);
            }
            if self.slots.iter().filter(|s| s.is_some()).count() >= self.settings.min_templates {
                // Started from afar, with enough faces of the person taken while they were
                // alone: the capture ends here (no face of this frame is used).
                log::info!("enrolment: {count} people in view; the capture ends with what it has");
                self.done = true;
                return Progress::Done;
            }
            // Started from afar: a passer-by does not fail the enrolment; what was captured is
            // dropped (it could mix people) and the capture waits for one close face again,
            // within the same wait. Should the wait run out, this is the reason given.
            log::info!("enrolment: {count} people in view; starting the capture again");
            self.interrupted = Some(Refusal::TwoPeople { frame: index, faces: count });
            self.started = None;
            self.subject = None;
            self.seen = 0;
            self.rejected = Rejections::default();
            self.slots.iter_mut().for_each(|s| *s = None);
            return Progress::Watching { elapsed: Duration::ZERO, good: 0, in_view: count };
        }
        if self.subject.is_none() && count == 1 {
            // Started from afar, the person is the face that came close, not one further back.
            let close = |id| {
                self.assignment
                    .iter()
                    .position(|&a| a == Some(id))
                    .is_some_and(|i| detections[i].eye_distance() >= self.settings.min_eye_px)
            };
            if self.settings.wait_for_face.is_none() || alone.is_some_and(close) {
                self.subject = alone;
            }
        }
        if let Some(subject) = self.subject {
            if let Some(i) = self.assignment.iter().position(|&a| a == Some(subject)) {
                self.consider(frame, &detections[i], index, elapsed);
            }
        }
        let good = self.slots.iter().filter(|s| s.is_some()).count();
        Progress::Watching { elapsed, good, in_view: count }
    }

    /// The quality gate, and the slot's best face.
    fn consider(&mut self, frame: ImageView<'_>, det: &Detection, index: u64, elapsed: Duration) {
        self.seen += 1;
        let (w, h) = (frame.width() as f32, frame.height() as f32);
        let [x1, y1, x2, y2] = det.bbox;
        let (tx, ty) = ((x2 - x1) * EDGE_TOLERANCE, (y2 - y1) * EDGE_TOLERANCE);
        if x1 < -tx || y1 < -ty || x2 > w + tx || y2 > h + ty {
            self.rejected.cut += 1;
            return;
        }
        if det.eye_distance() < self.settings.min_eye_px {
            self.rejected.small += 1;
            return;
        }
        if align_face(frame, &det.kps, &mut self.crop).is_none() {
            self.rejected.turned += 1;
            return;
        }
        let q = quality(det, Some(&self.crop));
        log::debug!(
            "enrolment frame {index} at {:.2} s: eye {:.1} px, frontal {:.2}, sharpness {:.0}, \
             quality {:.2}",
            elapsed.as_secs_f32(),
            q.eye_distance,
            q.frontal,
            q.sharpness,
            q.score
        );
        if q.frontal < self.settings.min_frontal {
            self.rejected.turned += 1;
            return;
        }
        if q.sharpness < self.settings.min_sharpness {
            self.rejected.blurred += 1;
            return;
        }
        let n = self.slots.len();
        let part = elapsed.as_secs_f64() / self.settings.duration.as_secs_f64();
        let slot = ((part * n as f64) as usize).min(n - 1);
        let face = CapturedFace { frame: index, at: elapsed, quality: q, norm: 0.0 };
        match &mut self.slots[slot] {
            Some(s) if s.face.quality.score >= q.score => {}
            Some(s) => {
                s.crop.pixels = self.crop.pixels;
                s.face = face;
            }
            empty => *empty = Some(Slot { crop: self.crop.clone(), face }),
        }
    }

    /// Whether the capture is over (done or refused).
    pub fn is_over(&self) -> bool {
        self.done || self.refusal.is_some()
    }

    /// Ends the capture (also early, e.g. when a replay ends): picks the best faces spread over
    /// the capture, embeds them with `embedder`, checks that they agree and looks them up in
    /// `matcher` (the gallery's templates of the embedder's model). `name` is the person being
    /// enrolled: their own templates (when appending) are no resemblance.
    pub fn finish(
        self,
        embedder: &mut dyn Embedder,
        matcher: &Matcher,
        name: &str,
    ) -> Result<Capture, EnrolError> {
        if let Some(r) = self.refusal {
            return Err(r.into());
        }
        if self.subject.is_none() {
            return Err(Refusal::NoFace { frames: self.frames }.into());
        }
        let picked = pick(&self.slots, self.settings.templates);
        if picked.len() < self.settings.min_templates {
            return Err(Refusal::TooFewGoodFaces {
                good: picked.len(),
                needed: self.settings.min_templates,
                seen: self.seen,
                rejected: self.rejected,
            }
            .into());
        }
        let mut templates = Vec::with_capacity(picked.len());
        let mut faces = Vec::with_capacity(picked.len());
        let mut crops = Vec::with_capacity(picked.len());
        let mut slots = self.slots;
        for &i in &picked {
            let Some(slot) = slots[i].take() else { continue };
            let mut t = vec![0.0; embedder.dim()];
            let norm = embedder.embed(&slot.crop, &mut t)?;
            templates.push(t);
            faces.push(CapturedFace { norm, ..slot.face });
            crops.push(slot.crop);
        }
        let mut lowest = 1.0f32;
        for (i, a) in templates.iter().enumerate() {
            for b in &templates[i + 1..] {
                lowest = lowest.min(dot(a, b));
            }
        }
        log::info!(
            "enrolment: {} templates from frames {:?}, lowest agreement {lowest:.3}",
            templates.len(),
            faces.iter().map(|f| f.frame).collect::<Vec<_>>()
        );
        if lowest < self.settings.min_consistency {
            return Err(
                Refusal::Inconsistent { lowest, bound: self.settings.min_consistency }.into()
            );
        }
        let resemblance =
            resemblance(matcher, &templates, name.trim(), self.settings.resemblance_threshold)?;
        Ok(Capture {
            model_id: embedder.model_id().to_string(),
            templates,
            faces,
            lowest_agreement: lowest,
            resemblance,
            rejected: self.rejected,
            frames: self.frames,
            more: Vec::new(),
            crops,
        })
    }
}

/// Indices of up to `k` filled slots: best quality first, no two adjacent, then (when the face
/// was good in too few places) adjacent ones too; returned in time order.
fn pick(slots: &[Option<Slot>], k: usize) -> Vec<usize> {
    let score = |i: usize| slots[i].as_ref().map_or(f32::NEG_INFINITY, |s| s.face.quality.score);
    let mut order: Vec<usize> = (0..slots.len()).filter(|&i| slots[i].is_some()).collect();
    order.sort_by(|&a, &b| score(b).total_cmp(&score(a)).then(a.cmp(&b)));
    let mut picked: Vec<usize> = Vec::with_capacity(k);
    for &i in &order {
        if picked.len() < k && picked.iter().all(|&p| p.abs_diff(i) > 1) {
            picked.push(i);
        }
    }
    for &i in &order {
        if picked.len() < k && !picked.contains(&i) {
            picked.push(i);
        }
    }
    picked.sort_unstable();
    picked
}

/// The enrolled person other than `name` most similar to one of `templates`, if at or above
/// `threshold`.
fn resemblance(
    matcher: &Matcher,
    templates: &[Vec<f32>],
    name: &str,
    threshold: f32,
) -> Result<Option<Resemblance>, GalleryError> {
    let mut found: Option<Resemblance> = None;
    for t in templates {
        let r = matcher.best_two(t)?;
        let other = [r.best, r.second].into_iter().flatten().find(|c| c.name != name);
        if let Some(c) = other {
            if c.similarity >= threshold
                && found.as_ref().is_none_or(|f| c.similarity > f.similarity)
            {
                found =
                    Some(Resemblance { person: c.person, name: c.name, similarity: c.similarity });
            }
        }
    }
    Ok(found)
}

/// Drives `source` through a capture: decodes each frame (corrupt frames are dropped and
/// counted), detects faces and offers them, until the capture is over or the source ends.
/// Returns the capture, ready for [`LiveEnrolment::finish`] (which reports a refusal). A camera
/// that delivers no frame for [`STALL`] is an error; slow processing is not (a replay runs on
/// its frames' timestamps however long detection takes).
pub fn capture(
    source: &mut dyn FrameSource,
    detector: &mut Detector,
    settings: EnrolSettings,
    frame_timeout: Duration,
) -> Result<LiveEnrolment, EnrolError> {
    let mut live = LiveEnrolment::new(settings)?;
    let mut decoder = FrameDecoder::new();
    let mut image = RgbImage::new(0, 0);
    let (mut found, mut detections) = (Vec::with_capacity(256), Faces::new());
    let (mut corrupt, mut crowded) = (0u64, 0u64);
    let mut last_frame = Instant::now();
    while !live.is_over() {
        let raw = match source.next_frame(frame_timeout) {
            Ok(raw) => raw,
            Err(CameraError::Timeout(_)) if last_frame.elapsed() < STALL => continue,
            Err(CameraError::Timeout(_)) => {
                return Err(CameraError::Timeout(last_frame.elapsed()).into());
            }
            Err(CameraError::EndOfStream) => break,
            Err(e) => return Err(e.into()),
        };
        last_frame = Instant::now();
        let now = raw.timestamp;
        if let Err(e) = decoder.decode(&raw, &mut image) {
            corrupt += 1;
            if corrupt == 1 {
                log::warn!("enrolment: dropping frame {}: {e}", raw.sequence);
            }
            continue;
        }
        detector.detect(image.view(), &mut found)?;
        let over = keep_most_confident(&mut found, &mut detections);
        if over > 0 {
            crowded += 1;
            if crowded == 1 {
                log::warn!(
                    "enrolment: frame {}: {over} faces beyond {MAX_FACES} left out",
                    raw.sequence
                );
            }
        }
        if let Progress::Refused(_) = live.offer(image.view(), &detections, now) {
            break;
        }
    }
    if corrupt > 0 {
        log::warn!("enrolment: {corrupt} corrupt frame(s) dropped");
    }
    if crowded > 1 {
        log::warn!("enrolment: {crowded} frames had more than {MAX_FACES} faces");
    }
    Ok(live)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn fs(d: &[Detection]) -> Faces {
        Faces::from_slice(d).unwrap()
    }
    use crate::align::ARCFACE_TEMPLATE;

    fn slot(score: f32) -> Option<Slot> {
        let q = Quality { score, eye_distance: 50.0, detector: 0.9, frontal: 0.9, sharpness: 90.0 };
        Some(Slot {
            crop: Box::default(),
            face: CapturedFace { frame: 0, at: Duration::ZERO, quality: q, norm: 0.0 },
        })
    }

    #[test]
    fn picks_best_non_adjacent_slots_first_then_fills() {
        // Slots 0..6: the two best are adjacent (2, 3).
        let slots = vec![slot(0.5), None, slot(0.9), slot(0.95), slot(0.6), None, slot(0.4)];
        assert_eq!(pick(&slots, 3), [0, 3, 6]);
        // Only adjacent slots left to fill from.
        assert_eq!(pick(&slots, 5), [0, 2, 3, 4, 6]);
        assert_eq!(pick(&slots, 9).len(), 5);
        assert!(pick(&[None, None], 3).is_empty());
    }

    fn settings() -> EnrolSettings {
        EnrolSettings {
            duration: Duration::from_secs(5),
            templates: 5,
            min_templates: 3,
            min_eye_px: MIN_EYE_PX,
            min_frontal: MIN_FRONTAL,
            min_sharpness: MIN_SHARPNESS,
            min_consistency: MIN_CONSISTENCY,
            resemblance_threshold: 0.32,
            tracker: TrackerConfig::default(),
            wait_for_face: None,
        }
    }

    /// A frontal face box of side `s` at `(x, y)`.
    fn face(x: f32, y: f32, s: f32) -> Detection {
        let k = s / 112.0;
        let mut kps = ARCFACE_TEMPLATE;
        for p in kps.iter_mut() {
            *p = [x + p[0] * k, y + p[1] * k];
        }
        Detection { bbox: [x, y, x + s, y + s], score: 0.9, kps }
    }

    fn checker_frame() -> RgbImage {
        let mut img = RgbImage::new(640, 480);
        for (i, px) in img.as_bytes_mut().chunks_exact_mut(3).enumerate() {
            let (x, y) = (i % 640, i / 640);
            px.fill(if (x / 6 + y / 6) % 2 == 0 { 220 } else { 30 });
        }
        img
    }

    const FRAME: Duration = Duration::from_millis(100);

    #[test]
    fn two_people_in_view_refuse_and_stay_refused() {
        let img = checker_frame();
        let mut live = LiveEnrolment::new(settings()).unwrap();
        let one = fs(&[face(100.0, 100.0, 200.0)]);
        let two = fs(&[face(100.0, 100.0, 200.0), face(400.0, 100.0, 150.0)]);
        for i in 0..5 {
            let p = live.offer(img.view(), &one, FRAME * i);
            assert!(matches!(p, Progress::Watching { .. }), "{p:?}");
        }
        // The second face is confirmed on its second frame.
        assert!(matches!(live.offer(img.view(), &two, FRAME * 5), Progress::Watching { .. }));
        let p = live.offer(img.view(), &two, FRAME * 6);
        assert_eq!(p, Progress::Refused(Refusal::TwoPeople { frame: 6, faces: 2 }));
        assert_eq!(live.offer(img.view(), &one, FRAME * 7), p);
        assert!(live.is_over());
        assert!(p_message(&p).contains("two people in view"));
    }

    #[test]
    fn a_remote_capture_waits_for_a_close_face_and_ends_when_the_scene_changes() {
        let img = checker_frame();
        let remote = EnrolSettings { wait_for_face: Some(Duration::from_secs(10)), ..settings() };
        let mut live = LiveEnrolment::new(remote).unwrap();
        // Two faces far away (eye distance about 19 px): waiting, the capture has not begun.
        let far = fs(&[face(50.0, 50.0, 60.0), face(400.0, 50.0, 60.0)]);
        for i in 0..20 {
            let p = live.offer(img.view(), &far, FRAME * i);
            assert_eq!(p, Progress::Watching { elapsed: Duration::ZERO, good: 0, in_view: 0 });
        }
        // One close face (about 63 px): the capture begins there.
        let close = fs(&[face(200.0, 100.0, 200.0)]);
        for i in 20..22 {
            let p = live.offer(img.view(), &close, FRAME * i);
            assert!(matches!(p, Progress::Watching { .. }), "{p:?}");
        }
        // A passer-by next to them before enough faces: the capture starts again (nothing
        // kept), it is not refused.
        let two = fs(&[face(200.0, 100.0, 200.0), face(450.0, 100.0, 150.0)]);
        live.offer(img.view(), &two, FRAME * 22);
        let p = live.offer(img.view(), &two, FRAME * 23);
        assert_eq!(p, Progress::Watching { elapsed: Duration::ZERO, good: 0, in_view: 2 });
        for i in 24..34 {
            let p = live.offer(img.view(), &close, FRAME * i);
            if i == 33 {
                assert_eq!(p, Progress::Watching { elapsed: FRAME * 9, good: 3, in_view: 1 });
            }
        }
        // With enough faces taken alone, a second person ends the capture with them.
        live.offer(img.view(), &two, FRAME * 34);
        assert_eq!(live.offer(img.view(), &two, FRAME * 35), Progress::Done);
        // The person leaves and others are in view: the capture ends, it is not refused.
        let mut left = LiveEnrolment::new(EnrolSettings {
            wait_for_face: Some(Duration::from_secs(10)),
            ..settings()
        })
        .unwrap();
        for i in 0..5 {
            left.offer(img.view(), &close, FRAME * i);
        }
        left.offer(img.view(), &far, FRAME * 5);
        assert_eq!(left.offer(img.view(), &far, FRAME * 6), Progress::Done);
        // Nobody close for the whole wait: over, and finish() says no face.
        let mut idle = LiveEnrolment::new(EnrolSettings {
            wait_for_face: Some(Duration::from_secs(1)),
            ..settings()
        })
        .unwrap();
        for i in 0..=10 {
            idle.offer(img.view(), &far, FRAME * i);
        }
        assert!(idle.is_over());
    }

    fn p_message(p: &Progress) -> String {
        match p {
            Progress::Refused(r) => r.to_string(),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn gates_count_small_cut_and_turned_faces_and_time_ends_the_capture() {
        let img = checker_frame();
        let mut live = LiveEnrolment::new(settings()).unwrap();
        // Small: eye distance 35.2 * 80 / 112 = 25 px.
        live.offer(img.view(), &fs(&[face(100.0, 100.0, 80.0)]), Duration::ZERO);
        live.offer(img.view(), &fs(&[face(100.0, 100.0, 80.0)]), FRAME);
        assert_eq!(live.rejected.small, 1, "the first frame is not confirmed yet");
        // Cut by the right edge.
        let mut l2 = LiveEnrolment::new(settings()).unwrap();
        for i in 0..3 {
            l2.offer(img.view(), &fs(&[face(500.0, 100.0, 200.0)]), FRAME * i);
        }
        assert_eq!(l2.rejected.cut, 2);
        // Turned: the nose over an eye.
        let mut turned = face(100.0, 100.0, 200.0);
        turned.kps[2][0] = turned.kps[0][0];
        let mut l3 = LiveEnrolment::new(settings()).unwrap();
        for i in 0..3 {
            l3.offer(img.view(), &fs(&[turned]), FRAME * i);
        }
        assert_eq!(l3.rejected.turned, 2);
        // Good faces fill slots until the time is up.
        let mut l4 = LiveEnrolment::new(settings()).unwrap();
        for i in 0..50 {
            let p = l4.offer(img.view(), &fs(&[face(100.0, 100.0, 200.0)]), FRAME * i);
            assert!(matches!(p, Progress::Watching { .. }), "{i}: {p:?}");
        }
        assert_eq!(l4.offer(img.view(), &fs(&[]), FRAME * 50), Progress::Done);
        assert_eq!(l4.slots.iter().filter(|s| s.is_some()).count(), 15);
        assert_eq!(l4.rejected, Rejections::default());
    }

    #[test]
    fn settings_are_checked() {
        let bad = |f: fn(&mut EnrolSettings)| {
            let mut s = settings();
            f(&mut s);
            LiveEnrolment::new(s).is_err()
        };
        assert!(bad(|s| s.duration = Duration::ZERO));
        assert!(bad(|s| s.duration = Duration::from_secs(600)));
        assert!(bad(|s| s.min_templates = 0));
        assert!(bad(|s| s.templates = 2));
        assert!(!bad(|_| {}));
    }
}
