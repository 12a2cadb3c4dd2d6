//! Face detection: letterboxing a frame into the detector's input, decoding the raw output
//! tensors of SCRFD or YuNet into boxes with five landmarks, score threshold and NMS, and mapping
//! back to frame coordinates.
//!
//! The decoders (`scrfd`, `yunet`) are pure functions over named float tensors, so the same code
//! decodes ONNX Runtime's outputs here and an NPU's outputs later. Must not: allocate per frame
//! once warmed up (buffers live in [`Detector`]), or know which backend produced the tensors.

pub mod far;
pub mod scrfd;
pub mod yunet;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::frame::{Filter, ImageView, Planes, Resizer};
use crate::infer::{InferError, OnnxModel, OutputTensor, PlanarRows, Preprocess, SessionOptions};
use crate::par::Bands;

/// Landmarks: image-left eye, image-right eye, nose tip, image-left mouth corner, image-right
/// mouth corner (the order of InsightFace and OpenCV models alike).
pub type Landmarks = [[f32; 2]; 5];

/// One detected face in frame pixel coordinates.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Detection {
    /// `[x1, y1, x2, y2]`.
    pub bbox: [f32; 4],
    /// Detector confidence, 0..1.
    pub score: f32,
    /// Five landmarks, see [`Landmarks`].
    pub kps: Landmarks,
}

impl Detection {
    /// Distance between the eyes in pixels: the face-size measure used for routing and
    /// thresholds (robust to how tight each detector draws its box).
    pub fn eye_distance(&self) -> f32 {
        let [l, r] = [self.kps[0], self.kps[1]];
        ((l[0] - r[0]).powi(2) + (l[1] - r[1]).powi(2)).sqrt()
    }

    /// Box area in square pixels.
    pub fn area(&self) -> f32 {
        (self.bbox[2] - self.bbox[0]).max(0.0) * (self.bbox[3] - self.bbox[1]).max(0.0)
    }

    /// Box centre.
    pub fn centre(&self) -> [f32; 2] {
        [(self.bbox[0] + self.bbox[2]) * 0.5, (self.bbox[1] + self.bbox[3]) * 0.5]
    }
}

/// The most faces one frame carries into tracking, enrolment and the decision. The detector
/// may find more (its own buffer holds every candidate of its model); the loop takes the most
/// confident `MAX_FACES` of them ([`keep_most_confident`]) and counts the rest. A door camera
/// sees a handful; a crowd filling a 1080p frame stays under it.
pub const MAX_FACES: usize = 64;

/// One frame's faces: the bound is in the type. In the detector's order (the whole-frame
/// pass's best first, then the far-face pass's), or, when more were found, the most confident
/// [`MAX_FACES`] best first.
pub type Faces = heapless::Vec<Detection, MAX_FACES>;

/// Fills `faces` with `found` when it fits, in its order; otherwise with its most confident
/// [`MAX_FACES`], best first (`found` is reordered to pick them). Returns how many were left
/// out. Never allocates.
pub fn keep_most_confident(found: &mut [Detection], faces: &mut Faces) -> usize {
    faces.clear();
    if found.len() > MAX_FACES {
        let by_score = |a: &Detection, b: &Detection| b.score.total_cmp(&a.score);
        found.select_nth_unstable_by(MAX_FACES - 1, by_score);
        // Best first, as the tracker hands out its free tracks in this order.
        found[..MAX_FACES].sort_unstable_by(by_score);
    }
    let kept = found.len().min(MAX_FACES);
    // Cannot fail: `kept` fits.
    let _ = faces.extend_from_slice(&found[..kept]);
    found.len() - kept
}

/// Intersection over union of two boxes.
pub fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter;
    if union <= 0.0 {
        0.0
    } else {
        inter / union
    }
}

/// Greedy non-maximum suppression in place: sorts by score (highest first) and drops every box
/// overlapping a kept one by more than `threshold` IoU. O(n^2) in the worst case, over the few
/// hundred candidates that pass the score threshold.
pub fn nms(dets: &mut Vec<Detection>, threshold: f32) {
    dets.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept = 0;
    for i in 0..dets.len() {
        let candidate = dets[i];
        if dets[..kept].iter().all(|k| iou(&k.bbox, &candidate.bbox) <= threshold) {
            dets[kept] = candidate;
            kept += 1;
        }
    }
    dets.truncate(kept);
}

/// Which decoder reads the model's outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DetectorKind {
    /// InsightFace SCRFD with keypoints (`_bnkps`), 2 anchors per cell, strides 8/16/32.
    Scrfd,
    /// OpenCV Zoo YuNet 2023mar, 1 anchor per cell, strides 8/16/32, separate objectness.
    Yunet,
}

/// Errors from detection.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    /// The model could not be run.
    #[error(transparent)]
    Infer(#[from] InferError),
    /// The model's outputs do not fit the configured decoder.
    #[error("detector {path}: {reason}")]
    Outputs {
        /// The model file.
        path: PathBuf,
        /// What is missing or mis-shaped.
        reason: String,
    },
}

/// The outputs of one stride, as the decoders consume them.
#[derive(Debug, Clone, Copy)]
pub struct StrideOutputs<'a> {
    /// Stride in input pixels (8, 16 or 32).
    pub stride: u32,
    /// Class score per anchor (SCRFD: sigmoid already applied; YuNet: classification).
    pub score: &'a [f32],
    /// YuNet's objectness per anchor; `None` for SCRFD.
    pub obj: Option<&'a [f32]>,
    /// Box regression, 4 values per anchor.
    pub bbox: &'a [f32],
    /// Landmark regression, 10 values per anchor.
    pub kps: &'a [f32],
}

/// Settings of the detection stage.
#[derive(Debug, Clone, PartialEq)]
pub struct DetectorSettings {
    /// The model file.
    pub path: PathBuf,
    /// Decoder.
    pub kind: DetectorKind,
    /// Input width and height in pixels (multiples of 32); with `fit_input`, the largest.
    pub input_size: [u32; 2],
    /// Shrink the input to the frame's aspect ratio (rounded up to a multiple of 32) instead
    /// of padding to `input_size`, when the model accepts any input size (SCRFD's dynamic
    /// export): a 16:9 frame then costs 640x384 instead of 640x640, 40% less detector work.
    pub fit_input: bool,
    /// Pixel normalisation.
    pub preprocess: Preprocess,
    /// Minimum score kept.
    pub score_threshold: f32,
    /// NMS IoU threshold.
    pub nms_threshold: f32,
    /// How the frame is shrunk into the input.
    pub filter: Filter,
    /// ONNX Runtime options.
    pub session: SessionOptions,
    /// The far-face pass ([`far::FarScan`]) of the appliance and `eval distance`; `None`: off.
    pub far: Option<far::FarSettings>,
}

/// Per-stage times of one detection, for benchmarks.
#[derive(Debug, Clone, Copy, Default)]
pub struct DetectTimings {
    /// Letterbox and normalisation.
    pub pre: Duration,
    /// The model itself.
    pub infer: Duration,
    /// Decoding, threshold, NMS.
    pub post: Duration,
}

/// A face detector on ONNX Runtime with its buffers.
pub struct Detector {
    settings: DetectorSettings,
    model: OnnxModel,
    resizer: Resizer,
    /// The preprocessing of `settings`, prepared for the letterbox's planar rows.
    planar: PlanarRows,
    tensor: Vec<f32>,
    /// Frame pixels per input pixel of the last letterbox.
    scale: f32,
    /// Size of the frame's area in the input at the last letterbox (the rest is padding).
    fitted: [u32; 2],
    /// Input size of the last letterbox.
    input: [u32; 2],
    /// Whether the model's input height and width are free.
    dynamic_input: bool,
}

impl std::fmt::Debug for Detector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Detector").field("settings", &self.settings).finish()
    }
}

impl Detector {
    /// Opens the model and checks that its input and outputs fit the settings.
    pub fn open(settings: DetectorSettings) -> Result<Self, DetectError> {
        let model = OnnxModel::open(&settings.path, settings.session)?;
        let [w, h] = settings.input_size;
        model.check_input(3, h, w)?;
        let dynamic_input = model.input().shape.get(2..4).is_some_and(|d| d.iter().all(|&v| v < 0));
        let mut det = Self {
            model,
            resizer: Resizer::with_bands(Bands::per_core()),
            planar: settings.preprocess.planar_rows(),
            tensor: vec![0.0; (w * h * 3) as usize],
            scale: 1.0,
            fitted: [0; 2],
            input: [w, h],
            dynamic_input,
            settings,
        };
        // One dry run on a black input proves that the outputs decode (a wrong model file or
        // kind fails at start-up, not at the first face) and warms the session up.
        let mut scratch = Vec::new();
        det.infer_and_decode(&mut scratch)?;
        Ok(det)
    }

    /// The settings this detector was opened with.
    pub fn settings(&self) -> &DetectorSettings {
        &self.settings
    }

    /// Detects faces in `frame`, writing them (best first) into `out` in frame coordinates.
    pub fn detect(
        &mut self,
        frame: ImageView<'_>,
        out: &mut Vec<Detection>,
    ) -> Result<DetectTimings, DetectError> {
        self.detect_into(frame, self.settings.input_size, out)
    }

    /// [`Detector::detect`] with the frame letterboxed into `input` (at most the configured
    /// input size) instead: a dynamic-input model then runs at that size, a fixed one in its
    /// own input as always. The far-face pass runs its windows this way, at their own scale.
    pub fn detect_within(
        &mut self,
        frame: ImageView<'_>,
        input: [u32; 2],
        out: &mut Vec<Detection>,
    ) -> Result<DetectTimings, DetectError> {
        let [w, h] = self.settings.input_size;
        let input = if self.dynamic_input {
            [input[0].clamp(32, w), input[1].clamp(32, h)]
        } else {
            [w, h]
        };
        self.detect_into(frame, input, out)
    }

    /// Whether the model takes any input size (SCRFD's dynamic export).
    pub fn dynamic_input(&self) -> bool {
        self.dynamic_input
    }

    fn detect_into(
        &mut self,
        frame: ImageView<'_>,
        target: [u32; 2],
        out: &mut Vec<Detection>,
    ) -> Result<DetectTimings, DetectError> {
        let t0 = Instant::now();
        self.letterbox(frame, target);
        let t1 = Instant::now();
        let infer = self.infer_and_decode(out)?;
        let t2 = Instant::now();
        nms(out, self.settings.nms_threshold);
        // Boxes are not clipped to the frame: a face cut by the edge keeps its true geometry
        // (its size is the routing signal); consumers clip when they crop.
        let s = self.scale;
        for d in out.iter_mut() {
            d.bbox = d.bbox.map(|v| v * s);
            for p in d.kps.iter_mut() {
                *p = p.map(|v| v * s);
            }
        }
        let post = t2.elapsed() + (t2 - t1).saturating_sub(infer);
        Ok(DetectTimings { pre: t1 - t0, infer, post })
    }

    /// Input pixels per frame pixel in the letterbox of a `frame`-sized image.
    pub fn scale_for(&self, frame: [u32; 2]) -> f64 {
        self.letterbox_for(frame, self.settings.input_size).scale
    }

    fn letterbox_for(&self, frame: [u32; 2], [w, h]: [u32; 2]) -> Letterbox {
        let [fw, fh] = frame.map(|v| f64::from(v.max(1)));
        // The frame keeps its aspect ratio: scaled by `s` to fit, rounded to whole pixels,
        // anchored at the top-left corner, and coordinates map back by the one factor 1/s (not
        // per axis by the rounded size): the reference pipeline's convention, which the
        // recognizers' sub-pixel alignment is sensitive to (per-axis factors shift landmarks by
        // up to 1 px and cost up to 0.013 of cosine similarity on the reference photos).
        let s = (f64::from(w) / fw).min(f64::from(h) / fh);
        // Half-way cases round to even, as the reference pipeline (Python's round) does: a
        // 410x512 photo becomes 512x640, not 513x640.
        let nw = ((fw * s).round_ties_even() as u32).clamp(1, w);
        let nh = ((fh * s).round_ties_even() as u32).clamp(1, h);
        let input = if self.settings.fit_input && self.dynamic_input {
            [nw.div_ceil(32) * 32, nh.div_ceil(32) * 32]
        } else {
            [w, h]
        };
        Letterbox { scale: s, fitted: [nw, nh], input }
    }

    /// Letterboxes the frame into the input, top-left anchored (the reference pipeline's
    /// convention: coordinates then map back by one scale factor, no offset).
    fn letterbox(&mut self, frame: ImageView<'_>, target: [u32; 2]) {
        let Letterbox { scale: s, fitted: [nw, nh], input: [w, h] } =
            self.letterbox_for([frame.width(), frame.height()], target);
        self.scale = (1.0 / s) as f32;
        if self.input != [w, h] {
            self.input = [w, h];
            self.fitted = [0; 2];
        }
        // The frame is resized and converted row by row into its area of the input tensor
        // only; the padding (black, normalised) is written when the geometry changes.
        if self.fitted != [nw, nh] {
            self.settings.preprocess.fill_constant(0, &mut self.tensor[..(3 * w * h) as usize]);
            self.fitted = [nw, nh];
        }
        let plane = (w * h) as usize;
        let (p0, rest) = self.tensor[..3 * plane].split_at_mut(plane);
        let (p1, p2) = rest.split_at_mut(plane);
        let planar = self.planar;
        let stride = w as usize;
        self.resizer.resize_to_planes(
            frame,
            nw,
            nh,
            self.settings.filter,
            Planes {
                planes: [p0, p1, p2],
                stride,
                convert: &|row, planes| planar.convert(row, nw as usize, stride, planes),
            },
        );
    }

    /// Runs the model on the prepared tensor and decodes candidates above the score threshold
    /// (in input coordinates) into `out`. Returns the inference time alone.
    fn infer_and_decode(&mut self, out: &mut Vec<Detection>) -> Result<Duration, DetectError> {
        let [w, h] = self.input;
        let t = Instant::now();
        let len = (3 * w * h) as usize;
        let outputs = self.model.run(&self.tensor[..len], [1, 3, h as usize, w as usize])?;
        let infer = t.elapsed();
        out.clear();
        decode(self.settings.kind, outputs, [w, h], self.settings.score_threshold, out)
            .map_err(|reason| DetectError::Outputs { path: self.settings.path.clone(), reason })?;
        Ok(infer)
    }
}

/// Where a frame lands in the detector's input.
struct Letterbox {
    /// Input pixels per frame pixel.
    scale: f64,
    /// The frame's area in the input.
    fitted: [u32; 2],
    /// The input's size.
    input: [u32; 2],
}

/// Decodes raw outputs of a `kind` detector with input `size` into candidates above
/// `threshold`, in input pixel coordinates (before NMS). Backend-neutral: the NPU path calls
/// this with its own output tensors.
pub fn decode(
    kind: DetectorKind,
    outputs: &[OutputTensor],
    size: [u32; 2],
    threshold: f32,
    out: &mut Vec<Detection>,
) -> Result<(), String> {
    match kind {
        DetectorKind::Scrfd => {
            let strides = scrfd::assign(outputs, size)?;
            for s in &strides {
                scrfd::decode_stride(s, size, threshold, out);
            }
        }
        DetectorKind::Yunet => {
            let strides = yunet::assign(outputs, size)?;
            for s in &strides {
                yunet::decode_stride(s, size, threshold, out);
            }
        }
    }
    Ok(())
}

/// Cells of a stride's feature map for an input of `size`.
pub(crate) fn grid(size: [u32; 2], stride: u32) -> (usize, usize) {
    (size[0].div_ceil(stride) as usize, size[1].div_ceil(stride) as usize)
}

/// The three strides every supported detector uses.
pub const STRIDES: [u32; 3] = [8, 16, 32];

/// Builds the outputs of every stride with `f`, in stride order.
pub(crate) fn per_stride<'a>(
    mut f: impl FnMut(usize, u32) -> Result<StrideOutputs<'a>, String>,
) -> Result<[StrideOutputs<'a>; 3], String> {
    Ok([f(0, STRIDES[0])?, f(1, STRIDES[1])?, f(2, STRIDES[2])?])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(b: [f32; 4], score: f32) -> Detection {
        Detection { bbox: b, score, kps: [[0.0; 2]; 5] }
    }

    #[test]
    fn iou_basics() {
        assert_eq!(iou(&[0.0, 0.0, 10.0, 10.0], &[0.0, 0.0, 10.0, 10.0]), 1.0);
        assert_eq!(iou(&[0.0, 0.0, 10.0, 10.0], &[20.0, 20.0, 30.0, 30.0]), 0.0);
        let v = iou(&[0.0, 0.0, 10.0, 10.0], &[5.0, 0.0, 15.0, 10.0]);
        assert!((v - 50.0 / 150.0).abs() < 1e-6);
    }

    #[test]
    fn nms_keeps_best_of_overlapping_and_all_disjoint() {
        let mut d = vec![
            det([0.0, 0.0, 10.0, 10.0], 0.6),
            det([1.0, 1.0, 11.0, 11.0], 0.9),
            det([50.0, 50.0, 60.0, 60.0], 0.7),
            det([0.5, 0.0, 10.5, 10.0], 0.8),
        ];
        nms(&mut d, 0.4);
        let scores: Vec<f32> = d.iter().map(|d| d.score).collect();
        assert_eq!(scores, vec![0.9, 0.7]);
    }

    #[test]
    fn a_frame_keeps_its_faces_in_order_or_the_most_confident_when_too_many() {
        let mut faces = Faces::new();
        let mut few = vec![det([0.0; 4], 0.5), det([1.0; 4], 0.9)];
        assert_eq!(keep_most_confident(&mut few, &mut faces), 0);
        assert_eq!(faces.iter().map(|d| d.score).collect::<Vec<_>>(), vec![0.5, 0.9]);
        // 100 faces, scores 0.00..0.99 shuffled: the 64 best stay, 36 are counted out.
        let mut many: Vec<_> =
            (0..100).map(|i| det([i as f32; 4], ((i * 37) % 100) as f32 / 100.0)).collect();
        assert_eq!(keep_most_confident(&mut many, &mut faces), 100 - MAX_FACES);
        assert_eq!(faces.len(), MAX_FACES);
        let scores: Vec<f32> = faces.iter().map(|d| d.score).collect();
        assert!(scores.windows(2).all(|w| w[0] >= w[1]), "best first: {scores:?}");
        assert_eq!((scores[0], scores[MAX_FACES - 1]), (0.99, (100 - MAX_FACES) as f32 / 100.0));
    }

    #[test]
    fn eye_distance_is_euclidean() {
        let mut d = det([0.0; 4], 1.0);
        d.kps[0] = [10.0, 10.0];
        d.kps[1] = [13.0, 14.0];
        assert_eq!(d.eye_distance(), 5.0);
    }
}
