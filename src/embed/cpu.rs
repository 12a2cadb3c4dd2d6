//! CPU embedder: any ArcFace-style recognizer (112x112 aligned crop in, one embedding out) on
//! ONNX Runtime in float32. The reference backend: far faces, NPU fallback, and the ground truth
//! that quantised backends are measured against.

use std::path::{Path, PathBuf};

use super::{l2_normalize, EmbedError, Embedder, MAX_DIM};
use crate::align::{AlignedFace, CROP};
use crate::infer::{OnnxModel, Preprocess, SessionOptions};

/// Settings of a recognizer model.
#[derive(Debug, Clone, PartialEq)]
pub struct RecognizerSettings {
    /// The model file.
    pub path: PathBuf,
    /// Name of the embedding space; templates are tagged with it.
    pub model_id: String,
    /// Pixel normalisation.
    pub preprocess: Preprocess,
    /// Also embed the mirrored crop and add the two before normalising (twice the work; a
    /// little more accurate, as in the LFW literature).
    pub flip: bool,
    /// ONNX Runtime options.
    pub session: SessionOptions,
}

impl RecognizerSettings {
    /// The settings of a quantised (QDQ) copy of this recognizer standing in for the NPU: the
    /// same preprocessing, no flip, and ONNX Runtime's graph optimisation off (on x86 its fused
    /// integer kernels can saturate on non-reduce-range QDQ models; the assets' README).
    pub fn emulating(&self, model_id: &str, model: &Path) -> RecognizerSettings {
        RecognizerSettings {
            path: model.to_path_buf(),
            model_id: model_id.to_string(),
            preprocess: self.preprocess,
            flip: false,
            session: SessionOptions { optimization: crate::infer::Optimization::Disabled },
        }
    }
}

/// A recognizer on ONNX Runtime's CPU provider.
pub struct CpuEmbedder {
    settings: RecognizerSettings,
    model: OnnxModel,
    tensor: Vec<f32>,
    mirrored: Box<AlignedFace>,
    dim: usize,
    last_infer: std::time::Duration,
}

impl std::fmt::Debug for CpuEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuEmbedder")
            .field("settings", &self.settings)
            .field("dim", &self.dim)
            .finish()
    }
}

impl CpuEmbedder {
    /// Opens the model, checks it takes a 112x112 crop, and learns the embedding dimension
    /// from one dry run.
    pub fn open(settings: RecognizerSettings) -> Result<Self, EmbedError> {
        let model = OnnxModel::open(&settings.path, settings.session)?;
        model.check_input(3, CROP as u32, CROP as u32)?;
        let mut this = Self {
            model,
            tensor: vec![0.0; 3 * CROP * CROP],
            mirrored: Box::default(),
            dim: 0,
            last_infer: std::time::Duration::ZERO,
            settings,
        };
        let outputs = this.model.run(&this.tensor, [1, 3, CROP, CROP])?;
        let dim = outputs.first().map_or(0, |o| o.data.len());
        if !(2..=MAX_DIM).contains(&dim) {
            return Err(EmbedError::Output {
                path: this.settings.path.clone(),
                reason: format!(
                    "first output has {dim} values for one face; an embedding of 2..={MAX_DIM} \
                     is expected (is this a recognizer?)"
                ),
            });
        }
        this.dim = dim;
        Ok(this)
    }

    /// The model file.
    pub fn path(&self) -> &Path {
        &self.settings.path
    }

    /// Time the model itself took in the last [`Embedder::embed`] call (both passes with
    /// `flip`), for benchmarks.
    pub fn last_infer(&self) -> std::time::Duration {
        self.last_infer
    }

    /// Runs the prepared tensor; writes (or, with `add`, adds) the raw output into `out`.
    fn run_raw(&mut self, out: &mut [f32], add: bool) -> Result<(), EmbedError> {
        let t = std::time::Instant::now();
        let outputs = self.model.run(&self.tensor, [1, 3, CROP, CROP])?;
        if add {
            self.last_infer += t.elapsed();
        } else {
            self.last_infer = t.elapsed();
        }
        let data = outputs.first().map(|o| o.data.as_slice()).unwrap_or_default();
        if data.len() != self.dim {
            return Err(EmbedError::Output {
                path: self.settings.path.clone(),
                reason: format!("output changed size from {} to {}", self.dim, data.len()),
            });
        }
        for (o, v) in out.iter_mut().zip(data) {
            *o = if add { *o + v } else { *v };
        }
        Ok(())
    }
}

impl Embedder for CpuEmbedder {
    fn model_id(&self) -> &str {
        &self.settings.model_id
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn embed(&mut self, face: &AlignedFace, out: &mut [f32]) -> Result<f32, EmbedError> {
        if out.len() < self.dim {
            return Err(EmbedError::Buffer { got: out.len(), need: self.dim });
        }
        let out = &mut out[..self.dim];
        self.settings.preprocess.fill_nchw(&face.pixels, CROP, CROP, &mut self.tensor);
        self.run_raw(out, false)?;
        let mut norm = out.iter().map(|x| x * x).sum::<f32>().sqrt();
        if self.settings.flip {
            for y in 0..CROP {
                for x in 0..CROP {
                    let (s, d) = ((y * CROP + x) * 3, (y * CROP + CROP - 1 - x) * 3);
                    self.mirrored.pixels[d..d + 3].copy_from_slice(&face.pixels[s..s + 3]);
                }
            }
            self.settings.preprocess.fill_nchw(&self.mirrored.pixels, CROP, CROP, &mut self.tensor);
            self.run_raw(out, true)?;
            norm = out.iter().map(|x| x * x).sum::<f32>().sqrt() * 0.5;
        }
        if !norm.is_finite() || norm == 0.0 {
            return Err(EmbedError::Output {
                path: self.settings.path.clone(),
                reason: format!("embedding norm is {norm}"),
            });
        }
        l2_normalize(out);
        Ok(norm)
    }
}
