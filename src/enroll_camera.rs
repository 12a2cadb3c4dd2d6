//! `portier enroll --from-camera`, and the live enrolment's settings from the config: the
//! command-line driver around [`crate::enroll_live`]'s state machine (which knows no config:
//! `portier run` hands it to the loop, below `config.rs`).

use std::path::PathBuf;
use std::time::Duration;

use crate::camera::replay::ReplaySettings;
use crate::camera::{CameraConfig, FrameSource};
use crate::config::Config;
use crate::enroll_live::*;
use crate::gallery::{EnrollMode, Gallery, GalleryError, PersonId};
use crate::pipeline::{Pipeline, PipelineError};

/// A pipeline that cannot be opened, as the enrolment's error (the stage's own error).
impl From<PipelineError> for EnrolError {
    fn from(e: PipelineError) -> Self {
        match e {
            PipelineError::Runtime(e) => EnrolError::Runtime(e),
            PipelineError::Detect(e) => EnrolError::Detect(e),
            PipelineError::Embed(e) => EnrolError::Embed(e),
        }
    }
}

impl EnrolSettings {
    /// The defaults, with the tracker and the access threshold of `config`.
    pub fn from_config(config: &Config) -> Self {
        Self {
            duration: Duration::from_secs_f64(DEFAULT_SECONDS),
            templates: DEFAULT_TEMPLATES,
            min_templates: DEFAULT_MIN_TEMPLATES,
            min_eye_px: MIN_EYE_PX,
            min_frontal: MIN_FRONTAL,
            min_sharpness: MIN_SHARPNESS,
            min_consistency: MIN_CONSISTENCY,
            resemblance_threshold: config.matching.threshold,
            tracker: config.app.tracker,
            wait_for_face: None,
        }
    }

    /// The settings of an enrolment started from Home Assistant: [`EnrolSettings::from_config`]
    /// that waits up to [`REMOTE_WAIT`] for the person to come close.
    pub fn remote(config: &Config) -> Self {
        Self { wait_for_face: Some(REMOTE_WAIT), ..Self::from_config(config) }
    }
}

/// What `portier enroll --from-camera` was given.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveArgs {
    /// The person's name.
    pub name: String,
    /// Add to an existing person instead of refusing a taken name.
    pub append: bool,
    /// Capture length, seconds (default [`DEFAULT_SECONDS`]).
    pub seconds: Option<f64>,
    /// Replay this MJPEG stream, image folder or image instead of the configured camera.
    pub replay: Option<PathBuf>,
    /// Frame rate of the replay (default: the configured camera's, else 30).
    pub fps: Option<f64>,
    /// Enrol even when the person already resembles someone enrolled.
    pub allow_similar: bool,
}

/// Opens the camera of `config` (`[camera]`), or a replay of `replay` at `fps` (default: the
/// configured camera's rate, else 30). Replays are not paced: the capture runs on the frames'
/// timestamps.
pub fn open_camera(
    config: &Config,
    replay: Option<PathBuf>,
    fps: Option<f64>,
) -> Result<Box<dyn FrameSource>, EnrolError> {
    let configured_fps = match &config.camera {
        Some(CameraConfig::Replay(r)) => Some(r.fps),
        Some(CameraConfig::V4l2 { fps, .. }) => Some(*fps),
        None => None,
    };
    let camera = match replay {
        Some(path) => CameraConfig::Replay(ReplaySettings {
            path,
            fps: fps.or(configured_fps).unwrap_or(30.0),
            looped: false,
            pace: false,
        }),
        None => match config.camera.clone() {
            Some(CameraConfig::Replay(r)) => CameraConfig::Replay(ReplaySettings {
                fps: fps.unwrap_or(r.fps),
                looped: false,
                pace: false,
                ..r
            }),
            Some(c) => c,
            None => return Err(EnrolError::NoCamera { config: config.source.clone() }),
        },
    };
    Ok(crate::camera::open(&camera, config.frame_timeout)?)
}

/// `portier enroll --name NAME --from-camera`: checks the gallery and the name, captures,
/// checks, prints what it kept and any resemblance, and stores the person (refusing a
/// resemblance unless `allow_similar`). Returns the new person's id.
pub fn command(config: &Config, args: &LiveArgs) -> Result<PersonId, EnrolError> {
    let mut settings = EnrolSettings::from_config(config);
    let seconds = args.seconds.unwrap_or(DEFAULT_SECONDS);
    if !(seconds.is_finite() && seconds > 0.0 && seconds <= MAX_SECONDS) {
        return Err(EnrolError::Usage(format!(
            "--seconds {seconds}: must be in (0, {MAX_SECONDS}]"
        )));
    }
    settings.duration = Duration::from_secs_f64(seconds);
    // The gallery and the name first: a corrupt file or a taken name is reported before anyone
    // stands in front of the camera.
    if let Some(dir) = config.gallery_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|source| EnrolError::GalleryFolder { path: dir.to_path_buf(), source })?;
    }
    let mut gallery = Gallery::open(&config.gallery_path, &config.gallery_key_file)?;
    let name = args.name.trim();
    if !args.append && gallery.list()?.iter().any(|p| p.name == name) {
        return Err(GalleryError::NameTaken {
            path: config.gallery_path.clone(),
            name: name.to_string(),
        }
        .into());
    }
    let mut source = open_camera(config, args.replay.clone(), args.fps)?;
    let mut pipeline = Pipeline::open(config)?;
    let matcher = gallery.matcher(&pipeline.embedder_model_id())?;
    eprintln!(
        "enrolling {name}: look at the camera for {seconds} s, alone ({})",
        source.describe()
    );
    // The NPU (when configured) is opened before the capture, so a broken one is reported
    // before anyone stands in front of the camera.
    let mut npu = crate::npu_state::open_for_enrolment(&config.npu, &config.recognizer)?;
    let live = capture(source.as_mut(), &mut pipeline.detector, settings, config.frame_timeout)?;
    let mut captured = live.finish(&mut pipeline.embedder, &matcher, name)?;
    if let Some(npu) = npu.as_mut() {
        captured.embed_also(npu.as_mut())?;
    }
    for f in &captured.faces {
        println!(
            "  frame {:4} at {:5.2} s: eye distance {:.0} px, frontal {:.2}, sharpness {:.0}, \
             quality {:.2}, norm {:.1}",
            f.frame,
            f.at.as_secs_f32(),
            f.quality.eye_distance,
            f.quality.frontal,
            f.quality.sharpness,
            f.quality.score,
            f.norm
        );
    }
    if let Some(r) = &captured.resemblance {
        let warning = format!(
            "warning: {name} resembles enrolled {} (similarity {:.3})",
            r.name, r.similarity
        );
        eprintln!("portier: {warning}");
        log::warn!("{warning}");
        if !args.allow_similar {
            return Err(EnrolError::Resembles {
                name: name.to_string(),
                other: r.name.clone(),
                similarity: r.similarity,
                threshold: config.matching.threshold,
            });
        }
    }
    let mode = if args.append { EnrollMode::Append } else { EnrollMode::New };
    let person = captured.commit(&mut gallery, name, mode)?;
    let npu_note: String = captured.more.iter().map(|(id, _)| format!(" and `{id}`")).collect();
    println!(
        "enrolled {name} with {} template(s) from the camera (lowest agreement {:.3}) for model \
         `{}`{npu_note} in {}",
        captured.templates.len(),
        captured.lowest_agreement,
        captured.model_id,
        config.gallery_path.display()
    );
    Ok(person)
}
