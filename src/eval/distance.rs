//! `portier eval distance`: recognition against face size, per backend.
//!
//! Every labelled photo is shrunk (with the exact resizer of `frame.rs`) so that its face's eye
//! distance spans a sweep (8 to 64 px by default, and the original), pasted 1:1 into a canvas of
//! the detector's input size (so the detector sees the face at exactly that size), or with
//! `--frame` into a frame of the camera's size that the detector letterboxes to its input as the
//! appliance does (so a far face reaches the detector smaller still, as from the camera),
//! detected, aligned and embedded by every backend: the float32 reference (the
//! configuration's recognizer) and any number of NPU backends: emulated NPUs (INT8 or A16W8 QDQ
//! models run on ONNX Runtime's CPU provider) or recognizer HEFs on the Hailo-8 (feature
//! `hailo`). Probes at each size are matched against a gallery made of the
//! other photos at their original size by the same backend (templates are per model; like is
//! compared with like).
//!
//! Two landmark modes, both reported:
//! - `detected`: the detector's own landmarks on the small face: what the appliance sees, with
//!   detection misses counted per band ("not detected") rather than hidden.
//! - `reference`: the full-size photo's landmarks scaled down: recognition only, so that the
//!   recognizer's loss with size is measured apart from the detector's misses and landmark noise.
//!
//! The appliance's thresholds are calibrated on `detected` (what the router will see); the
//! `reference` curve explains how much of the loss is the recognizer's. With camera options
//! (`eval::camera`: defocus growing with distance, optical blur, sensor noise, MJPEG) a third
//! mode, `camera`, runs the detected pipeline on the degraded frame as well: a far face as a
//! camera sees it, beside the same face only downscaled. The original size (which is also every
//! probe's gallery) stays as photographed: enrolment photos are good photos.
//!
//! A backend is *reliable* in a band when the median cosine of its embeddings to float32's on
//! the same crops is at least [`RELIABLE_MEDIAN_COSINE`] and its match rate (TAR at FAR 1e-3,
//! misses counted) is at most [`RELIABLE_RATE_LOSS`] below float32's; it is *reliable from* the smallest size from which
//! every larger band (and the original) passes, and *unreliable* when even the original fails.
//!
//! Must not: be on the appliance's hot path, or compute statistics itself: scores go to
//! `eval::metrics`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde::Serialize;

use super::metrics::{self, Probe, ScoreStats, TarAtFar};
use super::verify::{read_labels, Labelled};
use super::EvalError;
use crate::align::{align_face, AlignedFace};
use crate::config::Config;
use crate::detect::far::FarScan;
use crate::detect::{iou, Detection, Detector, Landmarks};
use crate::embed::cpu::CpuEmbedder;
use crate::embed::{dot, Embedder};
use crate::frame::{load_image, Filter, ImageView, Resizer, RgbImage};
use crate::infer;
use crate::route::{Route, Router, RoutingConfig};

use super::camera::CameraArgs;

/// The default sweep of eye distances in pixels (the original size is always added).
pub const DEFAULT_SIZES: [u32; 7] = [8, 12, 16, 24, 32, 48, 64];

/// A band passes when the median cosine to float32 on the same crops is at least this. INT8
/// that works stays near 0.98 (assets README); a collapsed model sits near 0.6.
pub const RELIABLE_MEDIAN_COSINE: f64 = 0.95;

/// A band passes when the match rate (TAR at FAR 1e-3) is at most this much below float32's.
pub const RELIABLE_RATE_LOSS: f64 = 0.05;

/// Bands with fewer embedded faces than this are not judged.
pub const MIN_FACES_TO_JUDGE: usize = 10;

/// The false-accept rates reported (a door's security budget: 1e-3 at least).
pub const FARS: [f64; 2] = [1e-3, 1e-4];

/// Arguments of `portier eval distance` (and the sweep part of `calibrate`).
#[derive(Args, Debug, Clone)]
pub struct SweepArgs {
    /// CSV with `path` and `identity` columns.
    #[arg(long, required_unless_present = "root")]
    pub labels: Option<PathBuf>,
    /// Folder the CSV's paths are relative to (default: `full/` beside the CSV if it exists,
    /// else the CSV's folder); without `--labels`, identity folders
    /// (`<root>/<Name>/<photo>.jpg`, LFW's layout).
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// An NPU backend, `NAME=MODEL` (repeatable): a QDQ `.onnx` model run on the CPU with the
    /// configured recognizer's preprocessing and graph optimisation off (ONNX Runtime's fused
    /// integer kernels can saturate on x86), or a `.hef` run on the Hailo-8 (feature `hailo`;
    /// HailoRT from `[npu] library`).
    #[arg(long = "backend", value_parser = parse_backend)]
    pub backends: Vec<(String, PathBuf)>,
    /// Eye distances of the sweep in pixels (the original size is always added).
    #[arg(long, value_delimiter = ',', default_values_t = DEFAULT_SIZES)]
    pub sizes: Vec<u32>,
    /// Only the first N photos (quick runs).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Only identities with at least N photos, their first N each (before `--limit`): with
    /// 2, every probe has a mate (LFW has thousands of one-photo identities).
    #[arg(long)]
    pub per_identity: Option<usize>,
    /// Place each shrunk face in a frame of this size (`WIDTHxHEIGHT`, or `camera` for the
    /// config's V4L2 `[camera]` width and height) that the detector letterboxes to its input, as
    /// the appliance's camera frames are; default: the detector's input size (no scaling).
    #[arg(long, value_parser = parse_frame)]
    pub frame: Option<FrameArg>,
}

/// `--frame`: a frame size, or the configured camera's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameArg {
    /// `[camera] width` x `height`.
    Camera,
    /// Width and height in pixels.
    Size([u32; 2]),
}

impl FrameArg {
    /// The frame size this stands for.
    pub fn size(self, config: &Config) -> Result<[u32; 2], EvalError> {
        match (self, &config.camera) {
            (FrameArg::Size(s), _) => Ok(s),
            (FrameArg::Camera, Some(crate::config::CameraConfig::V4l2 { width, height, .. })) => {
                Ok([*width, *height])
            }
            (FrameArg::Camera, _) => Err(EvalError::Usage(
                "--frame camera: the config has no V4L2 [camera] with a size (a replay's is \
                 its stream's); give WIDTHxHEIGHT"
                    .into(),
            )),
        }
    }
}

fn parse_frame(s: &str) -> Result<FrameArg, String> {
    if s == "camera" {
        return Ok(FrameArg::Camera);
    }
    let size = s.split_once('x').and_then(|(w, h)| Some([w.parse().ok()?, h.parse().ok()?]));
    match size {
        Some([w, h]) if (16..=8192).contains(&w) && (16..=8192).contains(&h) => {
            Ok(FrameArg::Size([w, h]))
        }
        _ => Err(format!("expected WIDTHxHEIGHT (16 to 8192 each) or `camera`, got `{s}`")),
    }
}

/// Arguments of `portier eval distance`.
#[derive(Args, Debug, Clone)]
pub struct DistanceArgs {
    #[command(flatten)]
    /// The sweep.
    pub sweep: SweepArgs,
    /// A TOML file with a `[routing]` table (as `portier calibrate` writes): adds a "routed"
    /// line, and its per-band thresholds become the operating thresholds.
    #[arg(long)]
    pub routing: Option<PathBuf>,
    /// The backend the router treats as the NPU (default: the first `--backend`).
    #[arg(long)]
    pub npu: Option<String>,
    /// Write a PNG plot of identification rate against face size here.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Camera-like degradation of the swept frames (a third mode, `camera`).
    #[command(flatten)]
    pub camera: CameraArgs,
}

fn parse_backend(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((name, path)) if !name.trim().is_empty() && !path.is_empty() => {
            Ok((name.trim().to_string(), PathBuf::from(path)))
        }
        _ => Err(format!("expected NAME=MODEL.onnx or NAME=MODEL.hef, got `{s}`")),
    }
}

/// The photo folder for a labels CSV: `full/` beside it if present, else its folder.
pub fn default_root(labels: &Path) -> PathBuf {
    let dir = labels.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.join("full").is_dir() {
        dir.join("full")
    } else {
        dir
    }
}

/// How the small face's landmarks were obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// The detector's landmarks on the shrunk face (end to end).
    Detected,
    /// The full-size photo's landmarks scaled down (recognition only).
    Reference,
    /// End to end on the shrunk face after camera-like degradation (`eval::camera`).
    Camera,
}

/// The two modes, in report order.
pub const MODES: [Mode; 2] = [Mode::Detected, Mode::Reference];

/// One face embedded by every backend.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Eye distance the router would see: the detection's (detected) or the nominal (reference).
    pub eye_px: f32,
    /// Per backend: the L2-normalised embedding.
    pub embeddings: Vec<Vec<f32>>,
    /// Per backend: the norm before normalisation.
    pub norms: Vec<f32>,
}

/// What happened to one photo at one size.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Embedded.
    Embedded(Sample),
    /// The detector found no face where the face is.
    NotDetected,
    /// The photo's face is already smaller than this size (it is never enlarged).
    SourceTooSmall,
    /// No face at all in the full-size photo.
    NoFace,
}

/// The raw measurements of a sweep: `outcomes[mode][size][photo]`; sizes in ascending order,
/// `None` (the original) last.
#[derive(Debug, Clone)]
pub struct Sweep {
    /// The photos.
    pub photos: Vec<Labelled>,
    /// Backend names; index 0 is the float32 reference.
    pub backends: Vec<String>,
    /// Index of the CPU recognizer's backend: 0 when it is the reference, else the last one
    /// (another model, named by its `[recognizer] id`: see [`Backends::open`]).
    pub cpu: usize,
    /// Eye distances of the sweep; `None` is the original size.
    pub sizes: Vec<Option<u32>>,
    /// The landmark modes measured, in `outcomes` order ([`MODES`], then [`Mode::Camera`] when
    /// the sweep degraded the frames).
    pub modes: Vec<Mode>,
    /// The camera-like degradation of [`Mode::Camera`], if any.
    pub camera: Option<CameraArgs>,
    /// The frame each shrunk face was placed in, when not the detector's input (`--frame`).
    pub frame: Option<[u32; 2]>,
    /// The far-face pass the detection ran with, in words (`[detector] far_faces`).
    pub far: Option<String>,
    /// See the type's docs.
    pub outcomes: Vec<Vec<Vec<Outcome>>>,
    /// Class index per photo.
    pub classes: Vec<usize>,
    /// Number of identities.
    pub identities: usize,
}

/// The detector and every backend, opened once.
pub struct Backends {
    detector: Detector,
    embedders: Vec<Box<dyn Embedder>>,
    names: Vec<String>,
    cpu: usize,
    resizer: Resizer,
    detections: Vec<Detection>,
    /// The appliance's far-face pass (`[detector] far_faces`), every tile of its rotation on
    /// each swept frame.
    far: Option<FarScan>,
    crop: Box<AlignedFace>,
}

impl std::fmt::Debug for Backends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backends").field("names", &self.names).finish()
    }
}

impl Backends {
    /// Loads ONNX Runtime and opens the detector, the float32 reference (named `float32`), the
    /// NPU backends (`extra`), and the CPU recognizer when it is another model.
    ///
    /// The reference is the NPU network's float32 parent: `[npu] twin` when configured (run
    /// with the NPU's preprocessing), else `[recognizer]`. With a twin, `[recognizer]` is the
    /// model the router falls back to (the Pi's PaddleX beside the HEF's MobileFaceNet): it
    /// joins last, named by its `id`, with its own dimension and no cosine to the reference,
    /// so that the CPU's bands and the routed line are measured on the model the door runs.
    pub fn open(config: &Config, extra: &[(String, PathBuf)]) -> Result<Self, EvalError> {
        infer::init(config.onnxruntime.library.as_deref(), config.onnxruntime.intra_threads)?;
        let detector = Detector::open(config.detector.clone())?;
        let (reference, cpu) = match &config.npu.twin {
            Some(twin) if matches!(twin.try_exists(), Ok(false)) => {
                return Err(EvalError::Usage(format!(
                    "npu.twin {}: not installed; the sweep measures the NPU model against its \
                     float32 twin (install it, or remove `twin` to use [recognizer])",
                    twin.display()
                )))
            }
            Some(twin) => (config.npu.twin_settings(twin), Some(&config.recognizer)),
            None => (config.recognizer.clone(), None),
        };
        let mut names = vec!["float32".to_string()];
        let mut paths = vec![reference.path.clone()];
        let mut embedders: Vec<Box<dyn Embedder>> =
            vec![Box::new(CpuEmbedder::open(reference.clone())?)];
        for (name, path) in extra {
            if names.contains(name) || cpu.is_some_and(|c| *name == c.model_id) {
                return Err(EvalError::Usage(format!("backend name `{name}` given twice")));
            }
            embedders.push(if is_hef(path) {
                open_hef(config, name, path)?
            } else {
                Box::new(CpuEmbedder::open(reference.emulating(name, path))?)
            });
            names.push(name.clone());
            paths.push(path.clone());
        }
        let dim = embedders[0].dim();
        if let Some((e, path)) = embedders.iter().zip(&paths).find(|(e, _)| e.dim() != dim) {
            return Err(EvalError::Usage(format!(
                "backend {} gives {}-d embeddings, the reference {dim}-d: not the same model",
                path.display(),
                e.dim()
            )));
        }
        let cpu = match cpu {
            None => 0,
            Some(settings) => {
                embedders.push(Box::new(CpuEmbedder::open(settings.clone())?));
                names.push(settings.model_id.clone());
                names.len() - 1
            }
        };
        Ok(Self {
            detector,
            embedders,
            names,
            cpu,
            resizer: Resizer::default(),
            detections: Vec::new(),
            far: config.detector.far.map(FarScan::new),
            crop: Box::default(),
        })
    }

    /// Backend names; index 0 is the reference.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Index of the CPU recognizer (see [`Sweep::cpu`]).
    pub fn cpu(&self) -> usize {
        self.cpu
    }

    /// The largest face of a full-size image.
    fn largest_face(&mut self, image: ImageView<'_>) -> Result<Option<Detection>, EvalError> {
        self.detector.detect(image, &mut self.detections)?;
        Ok(self.detections.iter().copied().max_by(|a, b| a.area().total_cmp(&b.area())))
    }

    /// Detects faces in `frame`, takes the one at `expected` and embeds it with its own
    /// landmarks.
    fn detect_and_embed(
        &mut self,
        frame: &RgbImage,
        expected: &[f32; 4],
    ) -> Result<Outcome, EvalError> {
        self.detector.detect(frame.view(), &mut self.detections)?;
        if let Some(far) = &mut self.far {
            far.sweep(&mut self.detector, frame.view(), &mut self.detections)?;
        }
        let Some(d) = find_expected(&self.detections, expected) else {
            return Ok(Outcome::NotDetected);
        };
        Ok(match self.embed_all(frame.view(), &d.kps, d.eye_distance())? {
            Some(sample) => Outcome::Embedded(sample),
            None => Outcome::NotDetected,
        })
    }

    /// Aligns with `kps` and embeds with every backend.
    fn embed_all(
        &mut self,
        image: ImageView<'_>,
        kps: &Landmarks,
        eye_px: f32,
    ) -> Result<Option<Sample>, EvalError> {
        if align_face(image, kps, &mut self.crop).is_none() {
            return Ok(None);
        }
        let mut sample = Sample { eye_px, embeddings: Vec::new(), norms: Vec::new() };
        for e in &mut self.embedders {
            let mut v = vec![0.0; e.dim()];
            let norm = e.embed(&self.crop, &mut v)?;
            sample.embeddings.push(v);
            sample.norms.push(norm);
        }
        Ok(Some(sample))
    }
}

/// Whether a backend's model is a HEF (run on the Hailo) rather than an ONNX model.
fn is_hef(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("hef"))
}

/// A HEF backend: the recognizer HEF on the Hailo-8, opened as `portier run` opens the NPU
/// (`[npu] library` and the device options of the config), its embedding space named `name`.
#[cfg(feature = "hailo")]
fn open_hef(config: &Config, name: &str, hef: &Path) -> Result<Box<dyn Embedder>, EvalError> {
    let mut npu = config.clone();
    npu.npu.backend = crate::config::NpuBackend::Hailo;
    npu.npu.model = Some(hef.to_path_buf());
    npu.npu.id = Some(name.to_string());
    crate::embed::open_npu(&npu.npu, &npu.recognizer)?
        .ok_or_else(|| EvalError::Usage(format!("backend {name}={}: not opened", hef.display())))
}

/// Without the `hailo` feature a HEF backend cannot run.
#[cfg(not(feature = "hailo"))]
fn open_hef(_: &Config, name: &str, hef: &Path) -> Result<Box<dyn Embedder>, EvalError> {
    Err(EvalError::Usage(format!(
        "--backend {name}={}: a HEF runs on the Hailo-8 through HailoRT, and this portier is \
         built without the `hailo` feature (build with --features hailo)",
        hef.display()
    )))
}

/// A shrunk face placed 1:1 in a canvas of the detector's input size.
#[derive(Debug, Clone)]
pub struct Shrunk {
    /// The canvas (black outside the photo).
    pub canvas: RgbImage,
    /// Where the face's box is expected in the canvas.
    pub expected_box: [f32; 4],
    /// The full-size landmarks mapped into the canvas.
    pub reference_kps: Landmarks,
}

/// Shrinks `image` by `factor` (< 1) with the exact antialiased resizer and copies the
/// `canvas_size` window centred on the face into a black canvas of that size, so that a
/// detector with that input sees the face at its shrunk size without any further scaling.
/// With `place`, a shrunk photo smaller than the canvas lands at a position drawn from that
/// seed instead of the top-left corner (a camera frame's faces are anywhere in it: tile edges
/// of the far-face pass are met as in the field).
pub fn shrink_into_canvas(
    resizer: &mut Resizer,
    image: ImageView<'_>,
    face: &Detection,
    factor: f64,
    canvas_size: [u32; 2],
    place: Option<u64>,
) -> Shrunk {
    let nw = ((f64::from(image.width()) * factor).round_ties_even() as u32).max(1);
    let nh = ((f64::from(image.height()) * factor).round_ties_even() as u32).max(1);
    let mut small = vec![0u8; nw as usize * nh as usize * 3];
    resizer.resize_into(image, &mut small, nw as usize, nw, nh, Filter::Antialiased);
    // Map with the per-axis factors the resizer used, so landmarks land on the same pixels.
    let (fx, fy) =
        (f64::from(nw) / f64::from(image.width()), f64::from(nh) / f64::from(image.height()));
    let c = face.centre();
    let [cw, ch] = canvas_size;
    let x0 = window_start(f64::from(c[0]) * fx, cw, nw);
    let y0 = window_start(f64::from(c[1]) * fy, ch, nh);
    let (w, h) = (cw.min(nw - x0), ch.min(nh - y0));
    let [ox, oy] = match place {
        Some(seed) => {
            let r = splitmix(seed);
            [(r as u32) % (cw - w + 1), ((r >> 32) as u32) % (ch - h + 1)]
        }
        None => [0, 0],
    };
    let mut canvas = RgbImage::new(cw, ch);
    for y in 0..h as usize {
        let src = ((y0 as usize + y) * nw as usize + x0 as usize) * 3;
        let dst = ((oy as usize + y) * cw as usize + ox as usize) * 3;
        canvas.as_bytes_mut()[dst..dst + w as usize * 3]
            .copy_from_slice(&small[src..src + w as usize * 3]);
    }
    let map = |p: [f32; 2]| {
        [
            (f64::from(p[0]) * fx - f64::from(x0) + f64::from(ox)) as f32,
            (f64::from(p[1]) * fy - f64::from(y0) + f64::from(oy)) as f32,
        ]
    };
    let [a, b] = [map([face.bbox[0], face.bbox[1]]), map([face.bbox[2], face.bbox[3]])];
    Shrunk { canvas, expected_box: [a[0], a[1], b[0], b[1]], reference_kps: face.kps.map(map) }
}

/// SplitMix64: a well-mixed 64-bit value from a seed.
fn splitmix(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// First column (or row) of a `window`-wide window centred on `centre` inside `0..len`.
fn window_start(centre: f64, window: u32, len: u32) -> u32 {
    if len <= window {
        return 0;
    }
    let start = (centre - f64::from(window) / 2.0).round().max(0.0) as u32;
    start.min(len - window)
}

/// The detection that is the expected face: best IoU with the expected box (at least 0.3), or
/// failing that the nearest whose centre lies within half the expected box's width.
pub fn find_expected(detections: &[Detection], expected: &[f32; 4]) -> Option<Detection> {
    let by_iou = detections
        .iter()
        .map(|d| (iou(&d.bbox, expected), d))
        .filter(|(v, _)| *v >= 0.3)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, d)| *d);
    by_iou.or_else(|| {
        let e = [(expected[0] + expected[2]) / 2.0, (expected[1] + expected[3]) / 2.0];
        let reach = (expected[2] - expected[0]).abs() / 2.0;
        let dist = |d: &Detection| {
            let c = d.centre();
            ((c[0] - e[0]).powi(2) + (c[1] - e[1]).powi(2)).sqrt()
        };
        detections
            .iter()
            .filter(|d| dist(d) <= reach)
            .min_by(|a, b| dist(a).total_cmp(&dist(b)))
            .copied()
    })
}

/// Runs the sweep over the labelled photos. `progress(done, total)` after each photo.
pub fn run_sweep(
    backends: &mut Backends,
    photos: Vec<Labelled>,
    sizes: &[u32],
    progress: impl FnMut(usize, usize),
) -> Result<Sweep, EvalError> {
    run_sweep_with_camera(backends, photos, sizes, None, None, progress)
}

/// [`run_sweep`], and with `camera` also the [`Mode::Camera`] measurements; with `frame` each
/// shrunk face is placed in a frame of that size instead of the detector's input.
pub fn run_sweep_with_camera(
    backends: &mut Backends,
    photos: Vec<Labelled>,
    sizes: &[u32],
    camera: Option<&CameraArgs>,
    frame: Option<[u32; 2]>,
    mut progress: impl FnMut(usize, usize),
) -> Result<Sweep, EvalError> {
    let camera = camera.filter(|c| c.any());
    if let Some(c) = camera {
        c.validate().map_err(EvalError::Usage)?;
    }
    let mut modes = MODES.to_vec();
    if camera.is_some() {
        modes.push(Mode::Camera);
    }
    let mut sizes: Vec<Option<u32>> = sizes.iter().map(|&s| Some(s)).collect();
    sizes.sort_unstable();
    sizes.dedup();
    if sizes.iter().any(|s| s.is_some_and(|v| v < 2)) {
        return Err(EvalError::Usage("--sizes: eye distances must be at least 2 px".into()));
    }
    sizes.push(None);
    let canvas_size = frame.unwrap_or(backends.detector.settings().input_size);
    let mut outcomes = vec![vec![Vec::with_capacity(photos.len()); sizes.len()]; modes.len()];
    for (i, photo) in photos.iter().enumerate() {
        let img = load_image(&photo.path)
            .map_err(|e| EvalError::Input { path: photo.path.clone(), reason: e.to_string() })?;
        let Some(face) = backends.largest_face(img.view())? else {
            log::warn!("{}: no face at full size", photo.path.display());
            for mode in &mut outcomes {
                for per_size in mode.iter_mut() {
                    per_size.push(Outcome::NoFace);
                }
            }
            progress(i + 1, photos.len());
            continue;
        };
        let e0 = face.eye_distance();
        for (si, size) in sizes.iter().enumerate() {
            let Some(s) = *size else {
                let out = match backends.embed_all(img.view(), &face.kps, e0)? {
                    Some(sample) => Outcome::Embedded(sample),
                    None => Outcome::NotDetected,
                };
                for mode in &mut outcomes {
                    mode[si].push(out.clone());
                }
                continue;
            };
            let factor = f64::from(s) / f64::from(e0);
            if factor >= 1.0 {
                for mode in &mut outcomes {
                    mode[si].push(Outcome::SourceTooSmall);
                }
                continue;
            }
            let place = frame.map(|_| super::camera::seed(i, s));
            let shrunk = shrink_into_canvas(
                &mut backends.resizer,
                img.view(),
                &face,
                factor,
                canvas_size,
                place,
            );
            let detected = backends.detect_and_embed(&shrunk.canvas, &shrunk.expected_box)?;
            let reference =
                match backends.embed_all(shrunk.canvas.view(), &shrunk.reference_kps, s as f32)? {
                    Some(sample) => Outcome::Embedded(sample),
                    None => Outcome::NotDetected,
                };
            outcomes[0][si].push(detected);
            outcomes[1][si].push(reference);
            if let Some(c) = camera {
                let mut frame = shrunk.canvas;
                c.degrade_around(
                    &mut frame,
                    shrunk.expected_box,
                    s as f32,
                    super::camera::seed(i, s),
                )
                .map_err(EvalError::Usage)?;
                outcomes[2][si].push(backends.detect_and_embed(&frame, &shrunk.expected_box)?);
            }
        }
        progress(i + 1, photos.len());
    }
    let mut ids: Vec<&str> = photos.iter().map(|p| p.identity.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    let classes =
        photos.iter().map(|p| ids.binary_search(&p.identity.as_str()).unwrap_or(0)).collect();
    let identities = ids.len();
    Ok(Sweep {
        photos,
        backends: backends.names().to_vec(),
        cpu: backends.cpu(),
        sizes,
        modes,
        camera: camera.copied(),
        frame,
        far: backends.far.as_ref().map(|f| {
            format!(
                "every tile of its rotation ({} of them) at {} detector px per frame px, faces up \
                 to {} px between the eyes",
                f.tiles(),
                f.settings().scale,
                f.settings().max_eye_px
            )
        }),
        outcomes,
        classes,
        identities,
    })
}

/// How the operating threshold is chosen for a face.
#[derive(Debug, Clone)]
pub enum Thresholds {
    /// One threshold for every size (`matching.threshold`).
    Fixed(f32),
    /// By size band (a routing configuration).
    Bands(RoutingConfig),
}

impl Thresholds {
    /// The threshold for a face of `eye_px` embedded by the CPU recognizer (`on_cpu`) or by
    /// the NPU model (or its reference): each model by its own bands, as the appliance does.
    fn at(&self, eye_px: f32, on_cpu: bool) -> f32 {
        match self {
            Self::Fixed(t) => *t,
            Self::Bands(r) if on_cpu => r.cpu_threshold(eye_px),
            Self::Bands(r) => r.threshold(eye_px),
        }
    }
}

/// Which embedding of a sample a line uses, and against which gallery.
#[derive(Debug, Clone, Copy)]
pub enum Line {
    /// One backend for every face.
    Backend(usize),
    /// The router's choice between the CPU recognizer and `npu` per face.
    Routed {
        /// Index of the backend acting as the NPU.
        npu: usize,
    },
}

impl Sweep {
    /// The gallery of backend `b`: each photo's original-size embedding.
    fn gallery(&self, b: usize) -> Vec<Option<&[f32]>> {
        let original = self.sizes.len() - 1;
        self.outcomes[0][original]
            .iter()
            .map(|o| match o {
                Outcome::Embedded(s) => Some(s.embeddings[b].as_slice()),
                _ => None,
            })
            .collect()
    }

    /// Which backend embeds this sample on `line`, with the router's rules.
    pub fn backend_for(&self, line: Line, sample: &Sample, router: Option<&mut Router>) -> usize {
        match (line, router) {
            (Line::Backend(b), _) => b,
            (Line::Routed { npu }, Some(r)) => {
                // No NPU failures in an evaluation: `now` does not matter.
                match r.route(sample.eye_px, Duration::ZERO) {
                    Route::Npu => match r.check_norm(sample.norms[npu]) {
                        Route::Npu => npu,
                        Route::Cpu(_) => self.cpu,
                    },
                    Route::Cpu(_) => self.cpu,
                }
            }
            (Line::Routed { .. }, None) => self.cpu,
        }
    }

    /// Statistics of one line at one size in one mode.
    pub fn band_stats(
        &self,
        mode: usize,
        size: usize,
        line: Line,
        thresholds: &Thresholds,
        mut router: Option<&mut Router>,
    ) -> LineBand {
        let galleries: Vec<Vec<Option<&[f32]>>> =
            (0..self.backends.len()).map(|b| self.gallery(b)).collect();
        let (mut genuine, mut impostor) = (Vec::new(), Vec::new());
        let (mut tar_hits, mut far_hits) = (0usize, 0usize);
        let (mut closed, mut open) = (Vec::new(), Vec::new());
        let (mut norms, mut cosines) = (Vec::new(), Vec::new());
        let (mut faces, mut npu_faces, mut missed) = (0usize, 0usize, 0usize);
        let (mut missed_genuine, mut missed_impostor) = (0usize, 0usize);
        for (i, outcome) in self.outcomes[mode][size].iter().enumerate() {
            let class = self.classes[i];
            let has_mate = self
                .classes
                .iter()
                .enumerate()
                .any(|(j, &c)| j != i && c == class && galleries[0][j].is_some());
            let Outcome::Embedded(sample) = outcome else {
                missed += usize::from(matches!(outcome, Outcome::NotDetected));
                if matches!(outcome, Outcome::NotDetected) {
                    // A missed face fails its genuine pairs and rejects its impostors, as
                    // LFW's protocol scores a pair with no face (-1).
                    for (j, g) in galleries[0].iter().enumerate() {
                        if j != i && g.is_some() {
                            match self.classes[j] == class {
                                true => missed_genuine += 1,
                                false => missed_impostor += 1,
                            }
                        }
                    }
                }
                if has_mate && matches!(outcome, Outcome::NotDetected) {
                    // A missed face is a missed identification.
                    closed.push(Probe { class, candidates: Vec::new() });
                    open.push(Probe { class, candidates: Vec::new() });
                }
                continue;
            };
            let b = self.backend_for(line, sample, router.as_deref_mut());
            faces += 1;
            npu_faces += usize::from(b != self.cpu);
            let emb = &sample.embeddings[b];
            norms.push(sample.norms[b]);
            if self.same_model_as_reference(b) {
                cosines.push(dot(emb, &sample.embeddings[0]));
            }
            let t = thresholds.at(sample.eye_px, b == self.cpu);
            let mut candidates = Vec::new();
            for (j, g) in galleries[b].iter().enumerate() {
                let Some(g) = g else { continue };
                if j == i {
                    continue;
                }
                let s = dot(emb, g);
                candidates.push((self.classes[j], s));
                if self.classes[j] == class {
                    genuine.push(s);
                    tar_hits += usize::from(s >= t);
                } else {
                    impostor.push(s);
                    far_hits += usize::from(s >= t);
                }
            }
            if has_mate {
                let above = candidates.iter().copied().filter(|c| c.1 >= t).collect();
                closed.push(Probe { class, candidates });
                open.push(Probe { class, candidates: above });
            }
        }
        let rate = |hits: usize, n: usize| if n == 0 { f64::NAN } else { hits as f64 / n as f64 };
        let tar_at_far: Vec<TarAtFar> =
            FARS.iter().filter_map(|&f| metrics::tar_at_far(&genuine, &impostor, f)).collect();
        let verification = {
            let mut g = genuine.clone();
            g.resize(genuine.len() + missed_genuine, -1.0);
            let mut i = impostor.clone();
            i.resize(impostor.len() + missed_impostor, -1.0);
            metrics::best_balanced_accuracy(&g, &i)
        };
        LineBand {
            verification,
            match_rate: tar_at_far.first().map_or(f64::NAN, |t| t.tar)
                * rate(faces, faces + missed),
            faces,
            npu_share: matches!(line, Line::Routed { .. }).then(|| rate(npu_faces, faces)),
            tar_at_far,
            tar_at_threshold: rate(tar_hits, genuine.len()),
            far_at_threshold: rate(far_hits, impostor.len()),
            identification_rate: metrics::rank1_accuracy(&open),
            rank1: metrics::rank1_accuracy(&closed),
            probes: open.len(),
            genuine: metrics::score_stats(&genuine),
            impostor: metrics::score_stats(&impostor),
            norm: metrics::score_stats(&norms),
            cosine_to_float32: metrics::score_stats(&cosines),
        }
    }

    /// Whether backend `b` embeds in the reference's space (every backend but a separate CPU
    /// recognizer): only then is its cosine to float32 a measurement.
    pub fn same_model_as_reference(&self, b: usize) -> bool {
        self.cpu == 0 || b != self.cpu
    }

    /// (norm, cosine to float32) of every face backend `b` embedded in `mode`, all sizes.
    pub fn norm_and_cosine(&self, mode: usize, b: usize) -> Vec<(f32, f32)> {
        self.outcomes[mode]
            .iter()
            .flatten()
            .filter_map(|o| match o {
                Outcome::Embedded(s) => Some((s.norms[b], dot(&s.embeddings[b], &s.embeddings[0]))),
                _ => None,
            })
            .collect()
    }

    /// The full report; `routed`: the router and the NPU backend's index for a "routed" line.
    pub fn report(
        &self,
        thresholds: &Thresholds,
        routed: Option<(RoutingConfig, usize)>,
    ) -> DistanceReport {
        let mut lines: Vec<(String, Line)> =
            self.backends.iter().enumerate().map(|(b, n)| (n.clone(), Line::Backend(b))).collect();
        if let Some((_, npu)) = &routed {
            lines.push((format!("routed({})", self.backends[*npu]), Line::Routed { npu: *npu }));
        }
        let mut modes = Vec::new();
        for (mi, mode) in self.modes.iter().enumerate() {
            let mut bands = Vec::new();
            for (si, size) in self.sizes.iter().enumerate() {
                let count =
                    |f: fn(&Outcome) -> bool| self.outcomes[mi][si].iter().filter(|o| f(o)).count();
                let mut band = BandReport {
                    eye_distance_px: *size,
                    label: size.map_or("original".into(), |s| s.to_string()),
                    embedded: count(|o| matches!(o, Outcome::Embedded(_))),
                    not_detected: count(|o| matches!(o, Outcome::NotDetected)),
                    source_too_small: count(|o| matches!(o, Outcome::SourceTooSmall)),
                    no_face: count(|o| matches!(o, Outcome::NoFace)),
                    lines: Vec::new(),
                };
                for (name, line) in &lines {
                    let mut router =
                        routed.as_ref().and_then(|(cfg, _)| Router::new(cfg.clone(), true).ok());
                    let stats = self.band_stats(mi, si, *line, thresholds, router.as_mut());
                    band.lines.push(NamedLine { backend: name.clone(), stats });
                }
                bands.push(band);
            }
            modes.push(ModeReport { mode: *mode, bands });
        }
        let verdicts = (1..self.backends.len())
            .filter(|&b| self.same_model_as_reference(b))
            .map(|b| self.verdict(&modes, b))
            .collect();
        DistanceReport {
            photos: self.photos.len(),
            identities: self.identities,
            backends: lines.iter().map(|(n, _)| n.clone()).collect(),
            thresholds: match thresholds {
                Thresholds::Fixed(t) => format!("matching.threshold {t}"),
                Thresholds::Bands(_) => "routing bands".into(),
            },
            criterion: format!(
                "reliable in a band: median cosine to float32 >= {RELIABLE_MEDIAN_COSINE} and \
                 match rate (TAR at FAR 1e-3) at most {RELIABLE_RATE_LOSS} below float32's (bands with \
                 >= {MIN_FACES_TO_JUDGE} faces, detected landmarks)"
            ),
            verdicts,
            modes,
            camera: self.camera.map(|c| c.describe()),
            frame: self.frame.map(|[w, h]| format!("{w}x{h}")),
            far: self.far.clone(),
            routing: routed.map(|(r, _)| r),
        }
    }

    /// Judges backend `b` band by band in the `detected` mode.
    fn verdict(&self, modes: &[ModeReport], b: usize) -> Verdict {
        let bands = &modes[0].bands;
        let mut passes = Vec::new();
        for band in bands {
            let (Some(r), Some(x)) = (band.lines.first(), band.lines.get(b)) else { continue };
            if x.stats.faces < MIN_FACES_TO_JUDGE {
                passes.push((band.eye_distance_px, None));
                continue;
            }
            let cos = x.stats.cosine_to_float32.map_or(0.0, |c| c.p50);
            let loss = r.stats.match_rate - x.stats.match_rate;
            passes.push((
                band.eye_distance_px,
                Some(
                    cos >= RELIABLE_MEDIAN_COSINE && (loss.is_nan() || loss <= RELIABLE_RATE_LOSS),
                ),
            ));
        }
        // Smallest size from which every judged band passes.
        let mut from: Option<Option<u32>> = None;
        for (size, pass) in passes.iter().rev() {
            match pass {
                Some(true) => from = Some(*size),
                Some(false) => break,
                None => {}
            }
        }
        let original_passes = passes.last().and_then(|p| p.1) == Some(true);
        let reliable_from_px =
            if original_passes { from.flatten().or(Some(u32::MAX)) } else { None };
        let text = match reliable_from_px {
            None => "unreliable: fails at the original size".to_string(),
            Some(u32::MAX) => "reliable at the original size only".to_string(),
            Some(px) => format!("reliable from {px} px"),
        };
        Verdict { backend: self.backends[b].clone(), reliable_from_px, verdict: text }
    }
}

/// Statistics of one line (backend or routed) in one band.
#[derive(Debug, Clone, Serialize)]
pub struct LineBand {
    /// Faces embedded.
    pub faces: usize,
    /// Routed line only: the fraction of faces the router kept on the NPU.
    pub npu_share: Option<f64>,
    /// The match rate plotted and judged: TAR at FAR 1e-3 (each line at its own threshold for
    /// this band, so a backend whose similarities are all inflated gains nothing), times the
    /// fraction of faces detected (a missed face is a missed match).
    pub match_rate: f64,
    /// Verification accuracy as LFW measures it: genuine pairs accepted and impostor pairs
    /// rejected, each class half the weight, at this band's best threshold; a missed face's
    /// pairs score -1 (its genuine pairs fail).
    pub verification: f64,
    /// TAR at FAR 1e-3 and 1e-4 (probe at this size against the original-size gallery).
    pub tar_at_far: Vec<TarAtFar>,
    /// Fraction of genuine pairs at or above the operating threshold.
    pub tar_at_threshold: f64,
    /// Fraction of impostor pairs at or above the operating threshold.
    pub far_at_threshold: f64,
    /// Identification rate: the best match is the right person and at or above the operating
    /// threshold; faces not detected count as misses.
    pub identification_rate: f64,
    /// Closed-set rank-1 (no threshold; misses count).
    pub rank1: f64,
    /// Probes in the identification rates.
    pub probes: usize,
    /// Same-person similarities.
    pub genuine: Option<ScoreStats>,
    /// Different-person similarities.
    pub impostor: Option<ScoreStats>,
    /// The embedding's norm before normalisation.
    pub norm: Option<ScoreStats>,
    /// Cosine to the float32 embedding of the same crop.
    pub cosine_to_float32: Option<ScoreStats>,
}

/// A line's statistics with its name.
#[derive(Debug, Clone, Serialize)]
pub struct NamedLine {
    /// Backend name, or `routed(NPU)`.
    pub backend: String,
    /// Its statistics.
    pub stats: LineBand,
}

/// One size band.
#[derive(Debug, Clone, Serialize)]
pub struct BandReport {
    /// Eye distance in pixels; `None` for the original size.
    pub eye_distance_px: Option<u32>,
    /// `8`, ..., `original`.
    pub label: String,
    /// Faces embedded.
    pub embedded: usize,
    /// Faces the detector missed at this size.
    pub not_detected: usize,
    /// Photos whose face is already smaller than this size.
    pub source_too_small: usize,
    /// Photos with no face at full size.
    pub no_face: usize,
    /// Per line.
    pub lines: Vec<NamedLine>,
}

/// All bands in one landmark mode.
#[derive(Debug, Clone, Serialize)]
pub struct ModeReport {
    /// How landmarks were obtained.
    pub mode: Mode,
    /// Bands in ascending size, the original last.
    pub bands: Vec<BandReport>,
}

/// The reliability verdict on one backend.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// Backend name.
    pub backend: String,
    /// Smallest size from which it is reliable (`u32::MAX`: the original only); `None`:
    /// unreliable.
    pub reliable_from_px: Option<u32>,
    /// In words.
    pub verdict: String,
}

/// The report of `portier eval distance`.
#[derive(Debug, Clone, Serialize)]
pub struct DistanceReport {
    /// Photos listed.
    pub photos: usize,
    /// Identities.
    pub identities: usize,
    /// Lines, in order.
    pub backends: Vec<String>,
    /// Where the operating thresholds come from.
    pub thresholds: String,
    /// The reliability criterion in words.
    pub criterion: String,
    /// Per non-reference backend.
    pub verdicts: Vec<Verdict>,
    /// The camera-like degradation of the `camera` mode, in words.
    pub camera: Option<String>,
    /// The frame size the shrunk faces were placed in (`WIDTHxHEIGHT`), when not the
    /// detector's input.
    pub frame: Option<String>,
    /// The far-face pass (`[detector] far_faces`) beside the whole-frame detection, in words.
    pub far: Option<String>,
    /// The routing of the routed line (its bands are the operating thresholds).
    pub routing: Option<RoutingConfig>,
    /// Per landmark mode.
    pub modes: Vec<ModeReport>,
}

/// Reads the `[routing]` table of a TOML file and validates it.
pub fn read_routing(path: &Path) -> Result<RoutingConfig, EvalError> {
    let bad = |reason: String| EvalError::Routing { path: path.into(), reason };
    let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read: {e}")))?;
    #[derive(serde::Deserialize)]
    struct File {
        routing: RoutingConfig,
    }
    let f: File = toml::from_str(&text).map_err(|e| bad(e.message().replace('\n', " ")))?;
    f.routing.validate().map_err(|e| bad(e.to_string()))?;
    Ok(f.routing)
}

/// Reads the labels and runs the sweep with a progress bar on standard error.
pub fn sweep(config: &Config, args: &SweepArgs) -> Result<(Sweep, Backends), EvalError> {
    sweep_with_camera(config, args, None)
}

/// [`sweep`], with the [`Mode::Camera`] measurements when `camera` asks for any.
pub fn sweep_with_camera(
    config: &Config,
    args: &SweepArgs,
    camera: Option<&CameraArgs>,
) -> Result<(Sweep, Backends), EvalError> {
    let mut photos = match (&args.labels, &args.root) {
        (Some(labels), root) => {
            let root = root.clone().unwrap_or_else(|| default_root(labels));
            read_labels(labels, &root)?
        }
        (None, Some(root)) => super::identify::read_folders(root)?,
        (None, None) => return Err(EvalError::Usage("give --labels or --root".into())),
    };
    if let Some(n) = args.per_identity {
        photos = per_identity(photos, n.max(1));
    }
    if let Some(n) = args.limit {
        photos.truncate(n.max(1));
    }
    let mut backends = Backends::open(config, &args.backends)?;
    let bar = indicatif::ProgressBar::new(photos.len() as u64);
    bar.set_message("shrinking and embedding photos");
    let frame = args.frame.map(|f| f.size(config)).transpose()?;
    let sweep =
        run_sweep_with_camera(&mut backends, photos, &args.sizes, camera, frame, |d, _| {
            bar.set_position(d as u64)
        })?;
    bar.finish_and_clear();
    Ok((sweep, backends))
}

/// The first `n` photos of every identity that has at least `n`, in the given order.
fn per_identity(photos: Vec<Labelled>, n: usize) -> Vec<Labelled> {
    let mut count: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for p in &photos {
        *count.entry(p.identity.as_str()).or_default() += 1;
    }
    let keep: std::collections::HashSet<String> =
        count.into_iter().filter(|&(_, c)| c >= n).map(|(id, _)| id.to_owned()).collect();
    let mut taken: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    photos
        .into_iter()
        .filter(|p| {
            keep.contains(&p.identity) && {
                let t = taken.entry(p.identity.clone()).or_default();
                *t += 1;
                *t <= n
            }
        })
        .collect()
}

/// The index of the NPU backend: `name`, or the first `--backend`.
pub fn npu_index(sweep: &Sweep, name: Option<&str>) -> Result<usize, EvalError> {
    let backends = &sweep.backends;
    let npu_like = |i: &usize| *i > 0 && *i != sweep.cpu;
    match name {
        Some(n) => backends.iter().position(|b| b == n).filter(npu_like).ok_or_else(|| {
            EvalError::Usage(format!("--npu {n}: no such --backend (have {backends:?})"))
        }),
        None if (1..backends.len()).any(|i| npu_like(&i)) => Ok(1),
        None => Err(EvalError::Usage(
            "give at least one --backend NAME=MODEL.onnx (or NAME=MODEL.hef)".into(),
        )),
    }
}

/// `portier eval distance`: runs the sweep, prints the table or JSON, writes the plot.
pub fn command(config: &Config, args: &DistanceArgs) -> Result<DistanceReport, EvalError> {
    let routing = args.routing.as_deref().map(read_routing).transpose()?;
    let (sweep, _) = sweep_with_camera(config, &args.sweep, Some(&args.camera))?;
    let routed = match &routing {
        Some(r) => Some((r.clone(), npu_index(&sweep, args.npu.as_deref())?)),
        None => None,
    };
    let thresholds = match &routing {
        Some(r) => Thresholds::Bands(r.clone()),
        None => Thresholds::Fixed(config.matching.threshold),
    };
    let report = sweep.report(&thresholds, routed);
    if args.json {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| EvalError::Usage(format!("cannot encode JSON: {e}")))?;
        println!("{text}");
    } else {
        print!("{}", table(&report));
    }
    Ok(report)
}

/// The report as a text table: per mode, per band, one row per line.
pub fn table(r: &DistanceReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} photos, {} identities; probes at each size against the other photos at full size; \
         operating thresholds: {}",
        r.photos, r.identities, r.thresholds
    );
    if let Some(c) = &r.camera {
        let _ = writeln!(s, "camera-like frames: {c} (swept sizes; the originals as photographed)");
    }
    if let Some(f) = &r.frame {
        let _ = writeln!(
            s,
            "swept faces placed in {f} frames, letterboxed to the detector's input (found = \
             detection recall per size)"
        );
    }
    if let Some(f) = &r.far {
        let _ = writeln!(s, "far-face pass: {f}");
    }
    let f =
        |v: Option<f64>| v.filter(|x| x.is_finite()).map_or("    -".into(), |x| format!("{x:5.3}"));
    for m in &r.modes {
        let _ = writeln!(
            s,
            "\n[{}] eye px | found/missed/small found% | backend        | verif | genuine mean  p01 | impostor mean   max | TAR@1e-3 TAR@1e-4 | TAR@thr FAR@thr | ident  rank1 | norm  p01   p50   p99 | cos32 p01  p50",
            match m.mode {
                Mode::Detected => "detected landmarks",
                Mode::Reference => "reference landmarks (recognition only)",
                Mode::Camera => "camera-like frames, detected landmarks",
            }
        );
        for b in &m.bands {
            for (k, l) in b.lines.iter().enumerate() {
                let head = if k == 0 {
                    let seen = b.embedded + b.not_detected;
                    let found = match seen {
                        0 => "     -".to_string(),
                        n => format!("{:5.1}%", 100.0 * b.embedded as f64 / n as f64),
                    };
                    format!(
                        "{:>8} | {:>5}/{:>3}/{:>3}      {found}",
                        b.label, b.embedded, b.not_detected, b.source_too_small
                    )
                } else {
                    format!("{:>8} | {:>24}", "", "")
                };
                let st = &l.stats;
                let tar = |i: usize| {
                    st.tar_at_far.get(i).map_or("    -".into(), |t| {
                        format!("{:5.3}{}", t.tar, if t.supported { " " } else { "*" })
                    })
                };
                let _ = writeln!(
                    s,
                    "{head} | {:14} | {} | {} {} | {} {} | {}    {} | {}   {} | {} {} | {:5.1} {:5.1} {:5.1} | {} {}{}",
                    l.backend,
                    f(Some(st.verification)),
                    f(st.genuine.map(|g| g.mean)),
                    f(st.genuine.map(|g| g.p01)),
                    f(st.impostor.map(|g| g.mean)),
                    f(st.impostor.map(|g| g.max)),
                    tar(0),
                    tar(1),
                    f(Some(st.tar_at_threshold)),
                    f(Some(st.far_at_threshold)),
                    f(Some(st.identification_rate)),
                    f(Some(st.rank1)),
                    st.norm.map_or(f64::NAN, |n| n.p01),
                    st.norm.map_or(f64::NAN, |n| n.p50),
                    st.norm.map_or(f64::NAN, |n| n.p99),
                    f(st.cosine_to_float32.map(|c| c.p01)),
                    f(st.cosine_to_float32.map(|c| c.p50)),
                    st.npu_share.map_or(String::new(), |x| format!("  npu {:.0}%", x * 100.0)),
                );
            }
        }
    }
    let _ = writeln!(s, "\n* fewer than 1/FAR impostor pairs: that FAR cannot be measured, the threshold only sits above every impostor seen");
    let _ = writeln!(s, "criterion: {}", r.criterion);
    for v in &r.verdicts {
        let _ = writeln!(s, "  {}: {}", v.backend, v.verdict);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(bbox: [f32; 4]) -> Detection {
        Detection { bbox, score: 0.9, kps: [[0.0; 2]; 5] }
    }

    #[test]
    fn window_is_centred_and_clamped() {
        assert_eq!(window_start(100.0, 640, 500), 0);
        assert_eq!(window_start(1000.0, 640, 1920), 680);
        assert_eq!(window_start(100.0, 640, 1920), 0);
        assert_eq!(window_start(1900.0, 640, 1920), 1280);
    }

    #[test]
    fn expected_face_by_iou_then_by_centre() {
        let want = [10.0, 10.0, 30.0, 30.0];
        let dets = [det([200.0, 200.0, 220.0, 220.0]), det([11.0, 11.0, 31.0, 31.0])];
        assert_eq!(find_expected(&dets, &want).unwrap().bbox, dets[1].bbox);
        // A box of a different size around the same centre: low IoU, near centre.
        let loose = [det([0.0, 0.0, 42.0, 42.0])];
        assert!(find_expected(&loose, &want).is_some());
        assert!(find_expected(&dets[..1], &want).is_none());
    }

    #[test]
    fn frame_sizes_parse_or_name_what_is_wrong() {
        assert_eq!(parse_frame("1280x720"), Ok(FrameArg::Size([1280, 720])));
        assert_eq!(parse_frame("camera"), Ok(FrameArg::Camera));
        for bad in ["1280", "1280x", "x720", "8x720", "1280x720x3", "wide"] {
            assert!(parse_frame(bad).unwrap_err().contains(&format!("`{bad}`")), "{bad}");
        }
    }

    #[test]
    fn shrink_maps_the_face_into_the_canvas() {
        let mut img = RgbImage::new(400, 300);
        img.as_bytes_mut().fill(255);
        let mut face = det([200.0, 100.0, 300.0, 220.0]);
        face.kps = [[230.0, 150.0], [270.0, 150.0], [250.0, 175.0], [235.0, 195.0], [265.0, 195.0]];
        let s =
            shrink_into_canvas(&mut Resizer::default(), img.view(), &face, 0.25, [64, 64], None);
        assert_eq!((s.canvas.width(), s.canvas.height()), (64, 64));
        // 400x300 → 100x75; the 64-wide window centred on x = 62.5 starts at 31.
        assert_eq!(s.expected_box[0], 50.0 - 31.0);
        let eye = s.reference_kps[1][0] - s.reference_kps[0][0];
        assert!((eye - 10.0).abs() < 1e-4, "{eye}");
        // Inside the photo white, outside black.
        assert_eq!(s.canvas.as_bytes()[0], 255);
    }

    #[test]
    fn per_identity_keeps_the_first_photos_of_identities_with_enough() {
        let l = |id: &str, n: u32| Labelled {
            path: format!("{id}/{n}.jpg").into(),
            identity: id.into(),
        };
        let photos = vec![l("a", 1), l("b", 1), l("a", 2), l("c", 1), l("a", 3), l("c", 2)];
        let kept: Vec<_> = per_identity(photos, 2).into_iter().map(|p| p.path).collect();
        let want: Vec<PathBuf> =
            ["a/1.jpg", "a/2.jpg", "c/1.jpg", "c/2.jpg"].map(PathBuf::from).into();
        assert_eq!(kept, want);
    }

    #[test]
    fn backend_argument() {
        assert_eq!(parse_backend("int8=/m/a.onnx").unwrap(), ("int8".into(), "/m/a.onnx".into()));
        assert!(parse_backend("int8").is_err());
        assert!(parse_backend("=a.onnx").is_err());
    }
}

/// `--backend NAME=MODEL.hef`: the sweep and the calibration through a HEF on the HailoRT
/// double (its numbers are arbitrary: the plumbing is under test).
#[cfg(all(test, feature = "hailo"))]
#[allow(clippy::unwrap_used)]
mod hef_tests {
    use super::*;
    use crate::infer::hailo::double::{Double, REC_DIM};

    fn config(assets: &Path, d: &Double) -> Config {
        let m = assets.join("models");
        let text = format!(
            "[detector]\nmodel = \"{}\"\nkind = \"scrfd\"\n[recognizer]\nmodel = \"{}\"\n\
             [gallery]\npath = \"g.db\"\n[matching]\nthreshold = 0.32\n\
             [npu]\nlibrary = \"{}\"\n",
            m.join("detectors/scrfd_500m_det_500m.onnx").display(),
            m.join("derived/w600k_mbf_dq_fp32.onnx").display(),
            d.path.display()
        );
        Config::parse(&text, Path::new("/c.toml")).unwrap()
    }

    #[test]
    fn eval_distance_and_calibrate_run_a_hef_backend() {
        // The shared assets: missing, the test passes with a notice, except under CI=true.
        let a = std::env::var_os("PORTIER_ASSETS").map_or_else(
            || Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/assets"),
            PathBuf::from,
        );
        if !a.join("README.md").is_file() {
            assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "assets missing: {a:?}");
            return eprintln!("notice: test assets missing at {}, skipping", a.display());
        }
        let d = Double::new();
        let config = config(&a, &d);
        let sweep_args = SweepArgs {
            labels: Some(a.join("faces/labels.csv")),
            root: None,
            backends: vec![
                parse_backend(&format!("npu={}", d.hef("recognizer").display())).unwrap()
            ],
            sizes: vec![24],
            limit: Some(3),
            per_identity: None,
            frame: None,
        };
        let (s, _) = sweep(&config, &sweep_args).unwrap();
        assert_eq!(s.backends, ["float32", "npu"]);
        let embedded: Vec<&Sample> = s.outcomes[0]
            .iter()
            .flatten()
            .filter_map(|o| match o {
                Outcome::Embedded(x) => Some(x),
                _ => None,
            })
            .collect();
        assert!(embedded.len() >= 3, "{}", embedded.len());
        for x in embedded {
            assert_eq!(x.embeddings[1].len(), REC_DIM);
            assert!(x.norms[1] > 0.0);
        }
        // The HEF ran: the double logged its inference calls.
        assert!(d.calls().iter().any(|c| c == "hailo_vstream_read_raw_buffer"));
        let report = s.report(&Thresholds::Fixed(0.32), None);
        assert!(table(&report).contains("npu"));
        // Calibration takes the HEF as its NPU and judges it (the double is no face model).
        let args = super::super::calibrate::CalibrateArgs {
            sweep: sweep_args,
            npu: Some("npu".into()),
            output: None,
            camera: Default::default(),
        };
        let err = super::super::calibrate::command(&config, &args).unwrap_err();
        assert!(matches!(err, EvalError::Calibration(_)), "{err}");
        assert!(err.to_string().contains("npu"), "{err}");
    }
}

#[cfg(all(test, not(feature = "hailo")))]
#[allow(clippy::unwrap_used)]
mod no_hailo_tests {
    use super::*;

    #[test]
    fn a_hef_backend_without_the_hailo_feature_is_a_clear_usage_error() {
        let config = crate::config::test_config("[matching]\nthreshold = 0.3\n");
        assert!(is_hef(Path::new("/m/r50.HEF")) && !is_hef(Path::new("/m/r50.onnx")));
        let err = open_hef(&config, "npu", Path::new("/m/r50.hef")).err().unwrap();
        assert_eq!(crate::exit::Exit::from(&err), crate::exit::Exit::Usage);
        assert!(err.to_string().contains("`hailo` feature"), "{err}");
    }
}
