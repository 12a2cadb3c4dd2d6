//! Passive liveness (presentation-attack detection): is the face in front of the camera a live
//! person, or a photo or screen showing one? Run on a candidate of a grant (a face whose vote
//! names an enrolled person), never on every face of every frame.
//!
//! The check behind the [`LivenessCheck`] trait is minivision's Silent-Face pair, MiniFASNetV2
//! and MiniFASNetV1SE, on ONNX Runtime's CPU provider: each model sees the face box enlarged by
//! its own scale (2.7 and 4.0, so it sees the face's surroundings: a paper edge, a bezel, moiré),
//! cropped and resized to 80x80 BGR with raw 0..255 values, and says three logits; class 1 of
//! the softmax is "live". The score is the two models' mean live probability. The crop follows
//! Silent-Face's `CropImage` (the box shifted to stay inside the frame) and the resize OpenCV's
//! `cv2.resize(INTER_LINEAR)` fixed-point arithmetic, because the score depends on exactly
//! which pixels the models see (the assets' README: another detector's boxes turned a live
//! photo into a spoof at 0.91).
//!
//! Another sensor (an IR or depth camera) plugs in as another [`LivenessCheck`]: the loop only
//! asks for a score in 0..1 for a face box in the frame.
//!
//! Must not: decide access (the decider counts passes over frames), allocate per check after
//! [`MiniFasNet::open`] (crop and tensor buffers are sized once), or read clocks beyond timing
//! its own run for benchmarks.

use std::path::{Path, PathBuf};

use crate::frame::ImageView;
use crate::infer::{ChannelOrder, InferError, OnnxModel, Preprocess, SessionOptions};

/// Input side of both MiniFASNet models (Silent-Face's `80x80` model names).
pub const INPUT: usize = 80;

/// Crop scale of MiniFASNetV2 (Silent-Face's `2.7_80x80_MiniFASNetV2.pth`).
pub const V2_SCALE: f64 = 2.7;

/// Crop scale of MiniFASNetV1SE (Silent-Face's `4_0_0_80x80_MiniFASNetV1SE.pth`).
pub const V1SE_SCALE: f64 = 4.0;

/// Name of the ensemble in events and reports.
pub const MINIFASNET: &str = "minifasnet_v2+v1se";

/// Default live-score threshold, chosen on the shared liveness samples with the appliance's
/// own SCRFD-500M boxes (README, "Liveness"): the highest spoof (a printed poster) scored 0.292,
/// the lowest live sample 0.806; 0.5 refuses every spoof with a margin of 0.21 and passes every
/// live sample with a margin of 0.31.
pub const DEFAULT_THRESHOLD: f32 = 0.5;

/// Settings of the liveness stage (the config file's `[liveness]`).
#[derive(Debug, Clone, PartialEq)]
pub struct LivenessSettings {
    /// MiniFASNetV2 model file.
    pub v2: PathBuf,
    /// MiniFASNetV1SE model file.
    pub v1se: PathBuf,
    /// Crop scale of V2.
    pub v2_scale: f64,
    /// Crop scale of V1SE.
    pub v1se_scale: f64,
    /// A check passes when the mean live probability is at least this.
    pub threshold: f32,
    /// Checks that must pass among the votes that confirmed the identity (K).
    pub passes: usize,
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LivenessScore {
    /// Mean live probability of the models (0..1).
    pub score: f32,
    /// Live probability per model (V2, V1SE).
    pub models: [f32; 2],
}

/// Errors of the liveness stage.
#[derive(Debug, thiserror::Error)]
pub enum LivenessError {
    /// Loading or running a model failed.
    #[error(transparent)]
    Infer(#[from] InferError),
    /// A model does not say three class logits.
    #[error("liveness model {path}: {reason}")]
    Output {
        /// The model file.
        path: PathBuf,
        /// What does not fit.
        reason: String,
    },
    /// The face box has no area inside the frame.
    #[error("liveness: the face box {bbox:?} has no area inside the {width}x{height} frame")]
    EmptyBox {
        /// The box, `[x1, y1, x2, y2]`.
        bbox: [f32; 4],
        /// Frame width.
        width: u32,
        /// Frame height.
        height: u32,
    },
}

/// A liveness check of one face: the seam where another sensor's check (IR, depth) replaces
/// the RGB models.
pub trait LivenessCheck {
    /// Name of the check for events (e.g. [`MINIFASNET`]).
    fn model(&self) -> &'static str;

    /// Scores the face at `bbox` (`[x1, y1, x2, y2]`, frame pixels, not clipped) in `frame`:
    /// 1 is certainly live.
    fn check(
        &mut self,
        frame: ImageView<'_>,
        bbox: [f32; 4],
    ) -> Result<LivenessScore, LivenessError>;
}

/// Silent-Face's crop of a face box `[x, y, w, h]` enlarged by `scale` in a `src_w` x `src_h`
/// image: the scale is limited so the box fits, the box is centred on the face and shifted
/// back inside the image. Returns the inclusive pixel box `[x1, y1, x2, y2]` (`CropImage.
/// _get_new_box`, then `int()` of each corner).
pub fn crop_box(src_w: u32, src_h: u32, bbox: [i32; 4], scale: f64) -> [u32; 4] {
    let (sw, sh) = (f64::from(src_w), f64::from(src_h));
    let [x, y, bw, bh] = bbox.map(f64::from);
    let scale = scale.min((sw - 1.0) / bw.max(1.0)).min((sh - 1.0) / bh.max(1.0));
    let (nw, nh) = (bw * scale, bh * scale);
    let (cx, cy) = (bw / 2.0 + x, bh / 2.0 + y);
    let (mut x1, mut y1) = (cx - nw / 2.0, cy - nh / 2.0);
    let (mut x2, mut y2) = (cx + nw / 2.0, cy + nh / 2.0);
    if x1 < 0.0 {
        x2 -= x1;
        x1 = 0.0;
    }
    if y1 < 0.0 {
        y2 -= y1;
        y1 = 0.0;
    }
    if x2 > sw - 1.0 {
        x1 -= x2 - sw + 1.0;
        x2 = sw - 1.0;
    }
    if y2 > sh - 1.0 {
        y1 -= y2 - sh + 1.0;
        y2 = sh - 1.0;
    }
    // Python's int() truncates toward zero; the slice then clips to the image.
    let clip = |v: f64, hi: f64| (v.trunc().max(0.0).min(hi)) as u32;
    [clip(x1, sw - 1.0), clip(y1, sh - 1.0), clip(x2, sw - 1.0), clip(y2, sh - 1.0)]
}

/// Silent-Face's box of a detection: `[int(left), int(top), int(right - left + 1),
/// int(bottom - top + 1)]` (its `get_bbox`).
pub fn detection_box(bbox: [f32; 4]) -> [i32; 4] {
    [
        bbox[0] as i32,
        bbox[1] as i32,
        (bbox[2] - bbox[0] + 1.0) as i32,
        (bbox[3] - bbox[1] + 1.0) as i32,
    ]
}

/// OpenCV's fixed-point scale of linear-resize weights (`INTER_RESIZE_COEF_SCALE`, 2^11).
const COEF_SCALE: f32 = 2048.0;

/// Source index and the two 11-bit weights of output index `i` of a linear resize from `src`
/// to `dst` samples, as `cv::resize` computes them (half-pixel centres, clamped at the edges,
/// each weight rounded half to even).
fn linear_tap(src: u32, dst: usize, i: usize) -> (usize, usize, i32, i32) {
    let scale = f64::from(src) / dst as f64;
    let mut f = ((i as f64 + 0.5) * scale - 0.5) as f32;
    let mut s = f.floor() as i64;
    f -= s as f32;
    if s < 0 {
        f = 0.0;
        s = 0;
    }
    let last = i64::from(src) - 1;
    if s >= last {
        f = 0.0;
        s = last.max(0);
    }
    let w = |v: f32| (v * COEF_SCALE).round_ties_even().clamp(-32768.0, 32767.0) as i32;
    let s = s as usize;
    (s, (s + 1).min(last.max(0) as usize), w(1.0 - f), w(f))
}

/// Resizes the inclusive `region` of `src` to `dst_w` x `dst_h` interleaved 3-channel pixels
/// in `out` with `cv2.resize(..., INTER_LINEAR)`'s arithmetic: 11-bit weights, integer
/// horizontal sums, and the vertical pass of its SIMD path (`VResizeLinearVec_32s8u`:
/// `((s0 >> 4) * b0 >> 16) + ((s1 >> 4) * b1 >> 16) + 2 >> 2`), which computes all but the
/// last few bytes of a row there.
pub fn resize_linear(
    src: ImageView<'_>,
    region: [u32; 4],
    out: &mut [u8],
    dst_w: usize,
    dst_h: usize,
) {
    let [x1, y1, x2, y2] = region;
    let (rw, rh) = (x2.saturating_sub(x1) + 1, y2.saturating_sub(y1) + 1);
    let stride = src.width() as usize * 3;
    let bytes = src.as_bytes();
    for oy in 0..dst_h {
        let (sy0, sy1, b0, b1) = linear_tap(rh, dst_h, oy);
        let row0 = (y1 as usize + sy0) * stride;
        let row1 = (y1 as usize + sy1) * stride;
        for ox in 0..dst_w {
            let (sx0, sx1, a0, a1) = linear_tap(rw, dst_w, ox);
            let (c0, c1) = ((x1 as usize + sx0) * 3, (x1 as usize + sx1) * 3);
            for c in 0..3 {
                let h = |row: usize| {
                    i32::from(bytes[row + c0 + c]) * a0 + i32::from(bytes[row + c1 + c]) * a1
                };
                let v = (((h(row0) >> 4) * b0) >> 16) + (((h(row1) >> 4) * b1) >> 16);
                out[(oy * dst_w + ox) * 3 + c] = ((v + 2) >> 2).clamp(0, 255) as u8;
            }
        }
    }
}

/// The softmax probability of class 1 ("live") of three logits.
pub fn live_probability(logits: &[f32]) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = logits.iter().map(|v| (v - max).exp()).sum();
    logits.get(1).map_or(0.0, |v| (v - max).exp() / sum)
}

/// One MiniFASNet model and its crop scale.
struct Model {
    net: OnnxModel,
    scale: f64,
}

/// The MiniFASNetV2 + MiniFASNetV1SE ensemble. See the module documentation.
pub struct MiniFasNet {
    models: [Model; 2],
    preprocess: Preprocess,
    crop: Vec<u8>,
    tensor: Vec<f32>,
    last_infer: std::time::Duration,
}

impl std::fmt::Debug for MiniFasNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MiniFasNet")
            .field("v2", &self.models[0].net.path())
            .field("v1se", &self.models[1].net.path())
            .finish()
    }
}

impl MiniFasNet {
    /// Opens both models, checks that they take 80x80 BGR and say three logits (one dry run
    /// each, which also warms the sessions up).
    pub fn open(settings: &LivenessSettings) -> Result<Self, LivenessError> {
        let open = |path: &Path, scale: f64| -> Result<Model, LivenessError> {
            let net = OnnxModel::open(path, SessionOptions::default())?;
            net.check_input(3, INPUT as u32, INPUT as u32)?;
            Ok(Model { net, scale })
        };
        let mut this = Self {
            models: [
                open(&settings.v2, settings.v2_scale)?,
                open(&settings.v1se, settings.v1se_scale)?,
            ],
            // Silent-Face feeds raw BGR bytes as floats (its ToTensor does not divide by 255).
            preprocess: Preprocess { order: ChannelOrder::Bgr, mean: [0.0; 3], std: [1.0; 3] },
            crop: vec![0; INPUT * INPUT * 3],
            tensor: vec![0.0; INPUT * INPUT * 3],
            last_infer: std::time::Duration::ZERO,
        };
        for i in 0..2 {
            this.run(i)?;
        }
        Ok(this)
    }

    /// Time both models took in the last check (without the crops), for benchmarks.
    pub fn last_infer(&self) -> std::time::Duration {
        self.last_infer
    }

    /// The 80x80 crop the model `i` (0: V2, 1: V1SE) saw last, interleaved RGB.
    pub fn last_crop(&self) -> &[u8] {
        &self.crop
    }

    fn run(&mut self, i: usize) -> Result<f32, LivenessError> {
        let model = &mut self.models[i];
        let outputs = model.net.run(&self.tensor, [1, 3, INPUT, INPUT])?;
        let logits = outputs.first().map(|o| o.data.as_slice()).unwrap_or_default();
        if logits.len() == 3 {
            return Ok(live_probability(logits));
        }
        let reason = format!("{} output values, 3 class logits expected", logits.len());
        Err(LivenessError::Output { path: model.net.path().to_path_buf(), reason })
    }
}

impl LivenessCheck for MiniFasNet {
    fn model(&self) -> &'static str {
        MINIFASNET
    }

    fn check(
        &mut self,
        frame: ImageView<'_>,
        bbox: [f32; 4],
    ) -> Result<LivenessScore, LivenessError> {
        let (w, h) = (frame.width(), frame.height());
        let b = detection_box(bbox);
        let inside = b[0] < w as i32 && b[1] < h as i32 && b[0] + b[2] > 0 && b[1] + b[3] > 0;
        if w < 2 || h < 2 || b[2] < 1 || b[3] < 1 || !inside {
            return Err(LivenessError::EmptyBox { bbox, width: w, height: h });
        }
        let mut models = [0.0; 2];
        let mut infer = std::time::Duration::ZERO;
        for (i, m) in models.iter_mut().enumerate() {
            let region = crop_box(w, h, b, self.models[i].scale);
            resize_linear(frame, region, &mut self.crop, INPUT, INPUT);
            self.preprocess.fill_nchw(&self.crop, INPUT, INPUT, &mut self.tensor);
            let t = std::time::Instant::now();
            *m = self.run(i)?;
            infer += t.elapsed();
        }
        self.last_infer = infer;
        Ok(LivenessScore { score: (models[0] + models[1]) * 0.5, models })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn crop_box_is_centred_limited_and_shifted_inside() {
        // A 100x100 face in the middle of 1000x800: 2.7 times, centred.
        assert_eq!(crop_box(1000, 800, [450, 350, 100, 100], 2.7), [365, 265, 635, 535]);
        // Near the left edge: shifted right, same size.
        assert_eq!(crop_box(1000, 800, [0, 350, 100, 100], 2.7), [0, 265, 270, 535]);
        // Too big for the image: the scale is limited by the height ((800-1)/300).
        let b = crop_box(1000, 800, [300, 200, 300, 300], 4.0);
        assert_eq!((b[1], b[3]), (0, 799));
    }

    #[test]
    fn resize_of_a_flat_image_is_flat_and_identity_is_exact() {
        let px: Vec<u8> = (0..10 * 10 * 3).map(|i| (i * 7 % 251) as u8).collect();
        let img = ImageView::new(10, 10, &px).unwrap();
        let mut out = vec![0; 10 * 10 * 3];
        resize_linear(img, [0, 0, 9, 9], &mut out, 10, 10);
        assert_eq!(out, px);
        let flat = vec![200u8; 30 * 20 * 3];
        let img = ImageView::new(30, 20, &flat).unwrap();
        let mut out = vec![0; INPUT * INPUT * 3];
        resize_linear(img, [3, 2, 25, 17], &mut out, INPUT, INPUT);
        assert!(out.iter().all(|&v| v == 200));
    }

    #[test]
    fn softmax_class_one() {
        assert!((live_probability(&[0.0, 0.0, 0.0]) - 1.0 / 3.0).abs() < 1e-6);
        assert!(live_probability(&[-5.0, 5.0, -5.0]) > 0.99);
    }
}
