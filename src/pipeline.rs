//! Still-image recognition: detect every face, align it, embed it, with per-stage timings.
//! The command-line tools (`enroll`, `identify`, `eval`, `bench`) share it; the appliance loop
//! (issue 9) reuses the same stages frame by frame.
//!
//! Must not: decide access or touch the gallery; it only turns pixels into embeddings.

use std::time::{Duration, Instant};

use crate::align::{align_face, AlignedFace};
use crate::app::{NpuParts, Parts};
use crate::camera::FrameSource;
use crate::config::Config;
use crate::detect::{DetectError, DetectTimings, Detection, Detector};
use crate::door::DoorControl;
use crate::embed::cpu::CpuEmbedder;
use crate::embed::{EmbedError, Embedder, MAX_DIM};
use crate::frame::ImageView;
use crate::gallery::Matcher;
use crate::infer::{self, InferError};
use crate::route::Router;

/// Errors from the pipeline.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// ONNX Runtime could not be loaded.
    #[error(transparent)]
    Runtime(#[from] InferError),
    /// Detection failed.
    #[error(transparent)]
    Detect(#[from] DetectError),
    /// Embedding failed.
    #[error(transparent)]
    Embed(#[from] EmbedError),
}

/// One face found in an image, with its embedding.
#[derive(Debug, Clone)]
pub struct Face {
    /// Where the detector found it.
    pub detection: Detection,
    /// L2-normalised embedding.
    pub embedding: Vec<f32>,
    /// Norm of the embedding before normalisation (quality signal).
    pub norm: f32,
}

/// Times of one image's pass through the stages.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    /// Detection stages.
    pub detect: DetectTimings,
    /// Alignment of all faces.
    pub align: Duration,
    /// Embedding of all faces (of which `embed_infer` is the model itself).
    pub embed: Duration,
    /// The recognizer model's own time.
    pub embed_infer: Duration,
}

/// Detector and recognizer, opened once.
pub struct Pipeline {
    /// The face detector.
    pub detector: Detector,
    /// The recognizer.
    pub embedder: CpuEmbedder,
    detections: Vec<Detection>,
    crop: Box<AlignedFace>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("detector", &self.detector)
            .field("embedder", &self.embedder)
            .finish()
    }
}

/// How faces are chosen from an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Select {
    /// Every face.
    All,
    /// Only the face whose box centre is nearest the image centre (LFW's convention).
    NearestCentre,
}

impl Pipeline {
    /// Loads ONNX Runtime and opens both models of `config`.
    pub fn open(config: &Config) -> Result<Self, PipelineError> {
        infer::init(config.onnxruntime.library.as_deref(), config.onnxruntime.intra_threads)?;
        let detector = Detector::open(config.detector.clone())?;
        let embedder = CpuEmbedder::open(config.recognizer.clone())?;
        Ok(Self { detector, embedder, detections: Vec::new(), crop: Box::default() })
    }

    /// Detects faces only (best first), without embedding them.
    pub fn detect(&mut self, image: ImageView<'_>) -> Result<&[Detection], PipelineError> {
        self.detector.detect(image, &mut self.detections)?;
        Ok(&self.detections)
    }

    /// Detects, aligns and embeds the selected faces of `image`.
    pub fn faces(
        &mut self,
        image: ImageView<'_>,
        select: Select,
        timings: Option<&mut Timings>,
    ) -> Result<Vec<Face>, PipelineError> {
        self.faces_by(image, select, timings, None)
    }

    /// [`Pipeline::faces`], the faces embedded by `embedder` instead of the recognizer when
    /// given (the NPU's model, for evaluations of it).
    pub fn faces_by<'e>(
        &mut self,
        image: ImageView<'_>,
        select: Select,
        timings: Option<&mut Timings>,
        mut embedder: Option<&mut (dyn Embedder + 'e)>,
    ) -> Result<Vec<Face>, PipelineError> {
        let detect = self.detector.detect(image, &mut self.detections)?;
        if select == Select::NearestCentre && self.detections.len() > 1 {
            let c = [image.width() as f32 / 2.0, image.height() as f32 / 2.0];
            let dist = |d: &Detection| {
                let m = d.centre();
                (m[0] - c[0]).powi(2) + (m[1] - c[1]).powi(2)
            };
            if let Some(best) =
                self.detections.iter().copied().min_by(|a, b| dist(a).total_cmp(&dist(b)))
            {
                self.detections.clear();
                self.detections.push(best);
            }
        }
        let mut t = Timings { detect, ..Timings::default() };
        let mut faces = Vec::with_capacity(self.detections.len());
        for det in &self.detections {
            let t0 = Instant::now();
            if align_face(image, &det.kps, &mut self.crop).is_none() {
                log::debug!("skipping a face with degenerate landmarks at {:?}", det.bbox);
                continue;
            }
            let t1 = Instant::now();
            let e: &mut dyn Embedder = match embedder.as_deref_mut() {
                Some(other) => other,
                None => &mut self.embedder,
            };
            let mut embedding = vec![0.0; e.dim()];
            let norm = e.embed(&self.crop, &mut embedding)?;
            if embedder.is_none() {
                t.embed_infer += self.embedder.last_infer();
            }
            let t2 = Instant::now();
            t.align += t1 - t0;
            t.embed += t2 - t1;
            faces.push(Face { detection: *det, embedding, norm });
        }
        if let Some(out) = timings {
            *out = t;
        }
        Ok(faces)
    }

    /// The recognizer's model id (the embedding space templates are tagged with).
    pub fn embedder_model_id(&self) -> String {
        self.embedder.model_id().to_string()
    }

    /// The last aligned crop (for debugging and parity tests).
    pub fn last_crop(&self) -> &AlignedFace {
        &self.crop
    }
}
/// The loop's parts from a pipeline (here, so that `app.rs` does not import this module).
impl Parts {
    /// The parts of a CPU-only loop: the pipeline's detector and recognizer (backend `cpu`).
    pub fn cpu(
        pipeline: Pipeline,
        source: Box<dyn FrameSource>,
        matcher: Matcher,
        door: Box<dyn DoorControl>,
    ) -> Self {
        Self {
            source,
            detector: pipeline.detector,
            embedder: Box::new(pipeline.embedder),
            backend: "cpu",
            matcher,
            door,
            npu: None,
            liveness: None,
        }
    }
}

/// Opening the NPU side of `portier run` from the config (here, above `config.rs`: the loop
/// in `app.rs` takes its parts and knows no config).
impl NpuParts {
    /// The NPU side of `portier run` when `[npu]` names one (`None` otherwise): its recognizer
    /// opened and probed ([`crate::embed::open_npu_probed`]), its templates `matcher`, and the
    /// router (`[routing]`, or CPU below 12 px eye distance and no norm cliff by default).
    ///
    /// An NPU that cannot be opened, or whose model is degenerate, does not stop the door: the
    /// loop starts on the CPU (one `npu_fallback` event with the reason) and the NPU is opened
    /// (and probed) again with back-off ([`crate::embed::reopen::Reopening`]), so a HEF that is
    /// replaced on disk is picked up; so is an NPU lost while running (a device reset). The
    /// error is a `[routing]` that cannot be used.
    pub fn open(
        config: &crate::config::Config,
        matcher: Matcher,
    ) -> Result<Option<Self>, crate::route::RouteConfigError> {
        use crate::embed::reopen::{Opener, Reopening};
        use crate::embed::{open_npu_probed, EmbedError};
        let Some(id) = config.npu.model_id() else { return Ok(None) };
        let routing = config
            .routing
            .clone()
            .unwrap_or_else(|| crate::route::RoutingConfig::default_for(config.matching.threshold));
        let mut router = Router::new(routing, true)?;
        let mut fallback = None;
        // An image built without the HEF runs on the CPU and says so: a missing model file is
        // "not installed", not a fault (it is opened once the file is copied in).
        let not_installed = crate::npu_state::not_installed(&config.npu);
        let for_later = config.clone();
        let mut open: Opener = Box::new(move || {
            // Still not installed: say so without opening the device (a second on a Hailo).
            if let Some(model) = crate::npu_state::not_installed(&for_later.npu) {
                return Err(crate::npu_state::not_installed_error(&model));
            }
            open_npu_probed(&for_later.npu, &for_later.recognizer)?.ok_or_else(|| {
                EmbedError::Output {
                    path: for_later.npu.model.clone().unwrap_or_default(),
                    reason: "no NPU configured".into(),
                }
            })
        });
        let first = Duration::from_millis(router.config().npu_retry_ms);
        let max = Duration::from_secs(300);
        // The first attempt is the opener's own; opened or not, the NPU is opened (and probed)
        // again with back-off whenever it is lost (a device reset).
        let embedder: Box<dyn Embedder> = match open() {
            Ok(e) => Box::new(Reopening::opened(e, open, first, max)),
            Err(e) => {
                if let Some(model) = &not_installed {
                    log::warn!(
                        "npu: cannot open {id}: {e}; portier runs CPU only (install the HEF: \
                         yocto/README.md; it is opened once it is there)"
                    );
                    fallback = Some(format!(
                        "not installed: {} does not exist; every face runs on the CPU (CPU only)",
                        model.display()
                    ));
                } else {
                    log::error!(
                        "npu: cannot use {id}: {e}; running every face on the CPU and opening \
                         it again in the background"
                    );
                    fallback = Some(format!(
                        "the NPU could not be used at start ({e}); faces run on the CPU while it \
                         is opened again"
                    ));
                }
                // The router starts with the NPU down: the first retry after npu_retry_ms.
                router.npu_result(false, Duration::ZERO);
                let dim = if matcher.is_empty() { MAX_DIM } else { matcher.dim() };
                Box::new(Reopening::new(id.clone(), dim, open, &e, first, max))
            }
        };
        log::info!(
            "npu: {id} for faces from {} px between the eyes, {} people enrolled for it",
            router.config().npu_min_eye_distance_px,
            matcher.people()
        );
        Ok(Some(Self { embedder, matcher, router, fallback, not_installed }))
    }
}
