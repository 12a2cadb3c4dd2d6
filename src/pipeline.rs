//! Still-image recognition: detect every face, align it, embed it, with per-stage timings.
//! The command-line tools (`enroll`, `identify`, `eval`, `bench`) share it; the appliance loop
//! (issue 9) reuses the same stages frame by frame.
//!
//! Must not: decide access or touch the gallery; it only turns pixels into embeddings.

use std::time::{Duration, Instant};

use crate::align::{align_face, AlignedFace};
use crate::config::Config;
use crate::detect::{DetectError, DetectTimings, Detection, Detector};
use crate::embed::cpu::CpuEmbedder;
use crate::embed::{EmbedError, Embedder};
use crate::frame::ImageView;
use crate::infer::{self, InferError};

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
