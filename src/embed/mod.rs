//! Face embedding: the [`Embedder`] trait that every backend (CPU ONNX Runtime here; the NPU and
//! an emulated INT8 NPU later) implements, and the vector helpers the matcher and the router
//! share.
//!
//! An embedder returns the L2-normalised embedding *and its norm before normalisation*: on INT8
//! backends a small norm marks an embedding that has collapsed into quantisation noise, the
//! signal the router (issue 3) uses to fall back to the CPU. Must not: know about galleries or
//! decisions.

pub mod cpu;
#[cfg(feature = "hailo")]
pub mod npu;
pub mod probe;
pub mod reopen;

use serde::Deserialize;
use std::path::PathBuf;

use crate::align::AlignedFace;
use crate::infer::InferError;

/// Largest embedding dimension supported by fixed-size buffers (ArcFace R50/MBF: 512).
pub const MAX_DIM: usize = 512;

/// Errors from embedding.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// The model could not be run.
    #[error(transparent)]
    Infer(#[from] InferError),
    /// The model's output is not an embedding this code can use.
    #[error("recognizer {path}: {reason}")]
    Output {
        /// The model file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The accelerator or its runtime failed while embedding (a timeout, a driver error, a lost
    /// device): not the face's fault. The router switches every face to the CPU and raises an
    /// event.
    #[error("{backend} device failed: {source}")]
    Device {
        /// Which backend ("hailo").
        backend: &'static str,
        /// The backend's own typed error (`infer::hailo::HailoError`), for logs and downcasting.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The model runs but is degenerate: its built-in probe ([`probe`]) found the same
    /// embedding for structurally different inputs. Not the face's fault and not a passing
    /// device failure: the router keeps faces on the CPU.
    #[error("npu model `{model_id}` is degenerate: {reason}")]
    Degenerate {
        /// The model's id.
        model_id: String,
        /// What the probe measured.
        reason: String,
    },
    /// The caller's buffer is shorter than the embedding.
    #[error("embedding buffer holds {got} values, the model gives {need}")]
    Buffer {
        /// Values the caller offered room for.
        got: usize,
        /// Values the model produces.
        need: usize,
    },
}

/// Turns an aligned face crop into an embedding. `Send`: an NPU recognizer is opened (and a
/// lost one released) on a thread of its own ([`reopen::Reopening`]).
pub trait Embedder: Send {
    /// Identifies the model (and so the embedding space): templates made by one model are only
    /// ever compared with embeddings from the same model.
    fn model_id(&self) -> &str;

    /// Embedding dimension.
    fn dim(&self) -> usize;

    /// Writes the L2-normalised embedding into `out[..dim]` and returns its norm before
    /// normalisation.
    fn embed(&mut self, face: &AlignedFace, out: &mut [f32]) -> Result<f32, EmbedError>;

    /// False once a device failure left this embedder unusable (a reset or lost NPU): its
    /// owner drops it, which releases the device, and opens a new one
    /// ([`reopen::Reopening`]). Embedders without a device are always usable.
    fn usable(&self) -> bool {
        true
    }
}

/// The `[npu]` section: the second recognizer, for close faces (see `route.rs`).
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NpuSection {
    /// none | emulated (an INT8/A16W8 QDQ ONNX model on the CPU: routing without a Hailo) |
    /// hailo (a HEF on the Hailo-8, feature `hailo`).
    #[serde(default)]
    pub backend: NpuBackend,
    /// The model: a QDQ ONNX file (emulated) or a HEF (hailo).
    pub model: Option<PathBuf>,
    /// The embedding space's name (templates are kept per model); default: the file's stem.
    pub id: Option<String>,
    /// `libhailort.so` to load (hailo; default: `HAILORT_LIBRARY`, then the system's).
    pub library: Option<PathBuf>,
    /// hailo: open the Hailo-8 through HailoRT's multi-process service (`hailort_service`,
    /// the `hailort.service` unit), so that several processes share it: `portier enroll` while
    /// `portier run` holds the device. Every process that opens the device needs it, and the
    /// service must run. Off: the first process holds the device exclusively.
    #[serde(default)]
    pub multi_process_service: bool,
    /// The float32 ONNX parent of the NPU model (the same network before quantisation): `portier
    /// npu check` runs it on the CPU and compares every embedding with the NPU's.
    pub twin: Option<PathBuf>,
    /// Channel order of the NPU model's input (a HEF: the order its calibration set was
    /// written in, see `portier export-calib`); default: `[recognizer] channel_order`.
    pub channel_order: Option<crate::infer::ChannelOrder>,
    /// The NPU model's normalisation `(x - mean) / std`, per input channel in its channel order
    /// (a HEF compiles it in with its model script's `normalization`; an emulated model and the
    /// twin are run with it); default: `[recognizer] mean` and `std`.
    pub mean: Option<[f32; 3]>,
    /// See `mean`.
    pub std: Option<[f32; 3]>,
    /// The gallery-size rule's threshold rise per tenfold people for the NPU's model
    /// (`[matching] fpir`; measured by `portier eval identify`).
    pub threshold_rise_per_decade: Option<f32>,
}

/// NPU backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NpuBackend {
    /// Every face on the CPU.
    #[default]
    None,
    /// A quantised ONNX model run on the CPU, standing in for the NPU.
    Emulated,
    /// The Hailo-8.
    Hailo,
}

impl NpuSection {
    /// The NPU model's preprocessing: its channel order and normalisation (filled from
    /// `[recognizer]` where the file leaves them out; ArcFace's RGB, 127.5 and 127.5 for a
    /// section not read from a file).
    pub fn preprocess(&self) -> crate::infer::Preprocess {
        crate::infer::Preprocess {
            order: self.channel_order.unwrap_or(crate::infer::ChannelOrder::Rgb),
            mean: self.mean.unwrap_or([127.5; 3]),
            std: self.std.unwrap_or([127.5; 3]),
        }
    }

    /// The float32 twin `path` of the NPU model as a CPU recognizer: the NPU's preprocessing
    /// (channel order, normalisation), no flip, as the NPU embeds.
    pub fn twin_settings(&self, path: &std::path::Path) -> cpu::RecognizerSettings {
        cpu::RecognizerSettings {
            path: path.to_path_buf(),
            model_id: "twin".into(),
            preprocess: self.preprocess(),
            flip: false,
            session: Default::default(),
        }
    }

    /// The NPU's model id, when an NPU is configured.
    pub fn model_id(&self) -> Option<String> {
        if self.backend == NpuBackend::None {
            return None;
        }
        let model = self.model.as_ref()?;
        Some(self.id.clone().unwrap_or_else(|| {
            model.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
        }))
    }
}

/// Opens the NPU recognizer `[npu]` describes: `None` without one; an emulated NPU is the
/// quantised ONNX model on the CPU; `hailo` needs the `hailo` feature.
pub fn open_npu(
    npu: &NpuSection,
    recognizer: &cpu::RecognizerSettings,
) -> Result<Option<Box<dyn Embedder>>, EmbedError> {
    let (Some(model), Some(id)) = (npu.model.as_ref(), npu.model_id()) else {
        return Ok(None);
    };
    match npu.backend {
        NpuBackend::None => Ok(None),
        NpuBackend::Emulated => {
            let mut settings = recognizer.emulating(&id, model);
            settings.preprocess = npu.preprocess();
            Ok(Some(Box::new(cpu::CpuEmbedder::open(settings)?)))
        }
        #[cfg(feature = "hailo")]
        NpuBackend::Hailo => {
            use crate::infer::hailo::{DeviceOptions, HailoDevice, HailoRuntime, NetworkOptions};
            let device_error = |e: crate::infer::hailo::HailoError| EmbedError::Device {
                backend: "hailo",
                source: Box::new(e),
            };
            let runtime = HailoRuntime::load(npu.library.as_deref()).map_err(device_error)?;
            let options = DeviceOptions {
                multi_process_service: npu.multi_process_service,
                ..DeviceOptions::default()
            };
            let device = HailoDevice::open(&runtime, options).map_err(device_error)?;
            let settings = npu::NpuSettings {
                hef: model.clone(),
                model_id: id,
                network: NetworkOptions::default(),
            };
            let hef = Box::new(npu::NpuEmbedder::open(&device, settings)?);
            Ok(Some(in_channel_order(hef, npu.preprocess().order)))
        }
        #[cfg(not(feature = "hailo"))]
        NpuBackend::Hailo => Err(EmbedError::Output {
            path: model.clone(),
            reason: "[npu] backend = \"hailo\" needs portier built with the `hailo` feature".into(),
        }),
    }
}

/// Opens the NPU recognizer as [`open_npu`] does, then runs the built-in probe
/// ([`probe::probe`]) on it: a degenerate model (the same embedding for every input) is refused
/// with [`EmbedError::Degenerate`]. What `portier run` opens the NPU with, at start and on every
/// reopen.
pub fn open_npu_probed(
    npu: &NpuSection,
    recognizer: &cpu::RecognizerSettings,
) -> Result<Option<Box<dyn Embedder>>, EmbedError> {
    let Some(mut embedder) = open_npu(npu, recognizer)? else { return Ok(None) };
    let report = probe::probe(embedder.as_mut())?;
    match report.degenerate {
        Some(reason) => {
            Err(EmbedError::Degenerate { model_id: embedder.model_id().to_string(), reason })
        }
        None => {
            log::info!("npu: {}: {}", embedder.model_id(), report.summary());
            Ok(Some(embedder))
        }
    }
}

/// `embedder`, fed its crops in `order`: a HEF takes the raw crop as its calibration set had it
/// (`portier export-calib` writes `[npu] channel_order`), while aligned crops are RGB.
pub fn in_channel_order(
    embedder: Box<dyn Embedder>,
    order: crate::infer::ChannelOrder,
) -> Box<dyn Embedder> {
    match order {
        crate::infer::ChannelOrder::Rgb => embedder,
        crate::infer::ChannelOrder::Bgr => Box::new(Bgr { inner: embedder, crop: Box::default() }),
    }
}

/// An embedder whose model takes BGR crops (see [`in_channel_order`]).
struct Bgr {
    inner: Box<dyn Embedder>,
    crop: Box<AlignedFace>,
}

impl Embedder for Bgr {
    fn model_id(&self) -> &str {
        self.inner.model_id()
    }

    fn dim(&self) -> usize {
        self.inner.dim()
    }

    fn embed(&mut self, face: &AlignedFace, out: &mut [f32]) -> Result<f32, EmbedError> {
        for (d, s) in self.crop.pixels.chunks_exact_mut(3).zip(face.pixels.chunks_exact(3)) {
            d.copy_from_slice(&[s[2], s[1], s[0]]);
        }
        self.inner.embed(&self.crop, out)
    }

    fn usable(&self) -> bool {
        self.inner.usable()
    }
}

/// Scales `v` to unit length in place and returns its previous length (0 leaves it untouched).
pub fn l2_normalize(v: &mut [f32]) -> f32 {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 && norm.is_finite() {
        let inv = 1.0 / norm;
        v.iter_mut().for_each(|x| *x *= inv);
    }
    norm
}

/// Dot product; the cosine similarity of two unit vectors. Sixteen independent partial sums
/// (two AVX2 registers, four NEON ones in flight) let the compiler vectorise it; always inlined,
/// so the matcher's scan (`gallery/kernels.rs`) recompiles this one body under AVX2.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0.0f32; LANES];
    let (ac, bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for k in 0..LANES {
            acc[k] += x[k] * y[k];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Cosine similarity of two vectors of any length (0 when either is zero).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (na, nb) = (dot(a, a).sqrt(), dot(b, b).sqrt());
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot(a, b) / (na * nb)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_and_cosine() {
        let mut v = [3.0, 4.0];
        assert_eq!(l2_normalize(&mut v), 5.0);
        assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6);
        let mut z = [0.0f32; 3];
        assert_eq!(l2_normalize(&mut z), 0.0);
        assert!((cosine(&[1.0, 0.0], &[2.0, 2.0]) - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 0.0]), 0.0);
    }

    /// Its embedding is the crop's first pixel.
    struct FirstPixel;

    impl Embedder for FirstPixel {
        fn model_id(&self) -> &str {
            "first-pixel"
        }
        fn dim(&self) -> usize {
            3
        }
        fn embed(&mut self, face: &AlignedFace, out: &mut [f32]) -> Result<f32, EmbedError> {
            for (o, p) in out.iter_mut().zip(&face.pixels[..3]) {
                *o = f32::from(*p);
            }
            Ok(1.0)
        }
    }

    #[test]
    fn a_bgr_model_gets_its_crops_in_bgr() {
        let mut face = AlignedFace::default();
        face.pixels[..3].copy_from_slice(&[10, 20, 30]);
        let mut out = [0.0; 3];
        let mut rgb = in_channel_order(Box::new(FirstPixel), crate::infer::ChannelOrder::Rgb);
        rgb.embed(&face, &mut out).unwrap();
        assert_eq!(out, [10.0, 20.0, 30.0]);
        let mut bgr = in_channel_order(Box::new(FirstPixel), crate::infer::ChannelOrder::Bgr);
        assert_eq!((bgr.model_id(), bgr.dim()), ("first-pixel", 3));
        bgr.embed(&face, &mut out).unwrap();
        assert_eq!(out, [30.0, 20.0, 10.0]);
    }

    #[test]
    fn dot_handles_tails_and_matches_naive_sum() {
        for n in [0, 1, 7, 8, 9, 16, 31, 512] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((dot(&a, &b) - naive).abs() < 1e-4, "n={n}");
        }
    }
}
