//! A quick built-in check that a recognizer is not degenerate: a handful of deterministic,
//! structurally different synthetic 112x112 crops (no data files, so it runs on a device
//! before the first face), embedded through the [`Embedder`] trait, so it applies to the HEF on
//! the Hailo and to the emulated NPU (a QDQ ONNX model) alike.
//!
//! Role: issue 16, "`run` never uses a degenerate NPU model". A HEF compiled with a broken
//! model script or a collapsed quantisation can put out (almost) the same vector for every
//! input: every face then looks like every other, and whoever is enrolled first matches
//! everyone. `portier run` probes the NPU model each time it opens it (at start and on every
//! reopen) and keeps faces on the CPU when the probe fails.
//!
//! What is degenerate: the embeddings of the [`PROBE_INPUTS`] synthetic crops all point the
//! same way (their *least* similar pair still has cosine >= [`PROBE_MAX_MIN_COSINE`]), or their
//! norms before normalisation barely differ (relative spread (max - min) / median below
//! [`PROBE_MIN_NORM_SPREAD`]; every embedding zero counts as no spread), or an embedding is not
//! finite. The limits are measured
//! on every recognizer in the shared assets (see the constants).
//!
//! Must not: need data files, change the embedder's state beyond running it, or decide what
//! to do with a failing model (the caller falls back to the CPU).

use super::{cosine, EmbedError, Embedder, MAX_DIM};
use crate::align::{AlignedFace, ARCFACE_TEMPLATE, CROP};

/// How many synthetic crops the probe embeds.
pub const PROBE_INPUTS: usize = 7;

/// A model is degenerate when even the least similar pair of probe embeddings has at least
/// this cosine. Measured (`tests/it/npu_check.rs`, `probe_passes_every_healthy_recognizer`):
/// the least similar pair of the seven crops has cosine -0.11 to 0.05 on every healthy
/// recognizer of the assets (w600k_mbf float32 0.053, dynamic INT8 0.032, QDQ INT8 0.034 and
/// its reduce-range copy 0.029; PaddleX float32 -0.107 and A16W8 -0.057); PaddleX with INT8
/// activations, whose embeddings have collapsed (cosine to float32 about 0.62), has 0.749; a
/// constant output has 1.0. 0.5 sits 0.45 above every healthy model and 0.25 below the
/// collapsed one.
pub const PROBE_MAX_MIN_COSINE: f32 = 0.5;

/// A model is degenerate when the relative spread of the probe embeddings' norms before
/// normalisation ((max - min) / median) is below this. Measured as above: 0.76 to 1.17 on the
/// healthy recognizers, 0.22 on the collapsed PaddleX INT8, 0 for a constant output.
pub const PROBE_MIN_NORM_SPREAD: f32 = 0.1;

/// What the probe measured, and its verdict.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ProbeReport {
    /// The norm before normalisation of each synthetic crop's embedding.
    pub norms: Vec<f32>,
    /// Cosine of the least similar pair of embeddings (1.0: all the same direction).
    pub min_pair_cosine: f32,
    /// Cosine of the most similar pair.
    pub max_pair_cosine: f32,
    /// (max - min) / median of the norms.
    pub norm_spread: f32,
    /// Why the model is degenerate, or `None` when it passed.
    pub degenerate: Option<String>,
}

impl ProbeReport {
    /// One line for logs and reports.
    pub fn summary(&self) -> String {
        let verdict = match &self.degenerate {
            None => "ok".to_string(),
            Some(why) => format!("DEGENERATE: {why}"),
        };
        format!(
            "probe of {} synthetic crops: least similar pair cosine {:.3} (degenerate from {}), \
             norm spread {:.3} (degenerate below {}): {verdict}",
            self.norms.len(),
            self.min_pair_cosine,
            PROBE_MAX_MIN_COSINE,
            self.norm_spread,
            PROBE_MIN_NORM_SPREAD
        )
    }
}

/// The synthetic crops: mid grey, a horizontal grey ramp, a vertical colour ramp, a
/// checkerboard, concentric rings, seeded noise, and a drawn face (a skin-coloured oval with
/// dark eyes, nose and mouth at the ArcFace template's landmarks).
pub fn synthetic_crops() -> Vec<AlignedFace> {
    let mut crops = vec![AlignedFace::default(); PROBE_INPUTS];
    let mut noise = 0x2545_f491_u32;
    let [le, re, nose, lm, rm] = ARCFACE_TEMPLATE;
    for y in 0..CROP {
        for x in 0..CROP {
            let i = (y * CROP + x) * 3;
            let (fx, fy) = (x as f32, y as f32);
            let ramp = (x * 255 / (CROP - 1)) as u8;
            let vramp = (y * 255 / (CROP - 1)) as u8;
            let checker = if (x / 14 + y / 14) % 2 == 0 { 230 } else { 25 };
            let r = ((fx - 56.0).powi(2) + (fy - 56.0).powi(2)).sqrt();
            let ring = if ((r / 8.0) as u32).is_multiple_of(2) { 200 } else { 60 };
            let mut rand = [0u8; 3];
            for v in &mut rand {
                noise ^= noise << 13;
                noise ^= noise >> 17;
                noise ^= noise << 5;
                *v = (noise >> 24) as u8;
            }
            let near = |p: [f32; 2], rx: f32, ry: f32| {
                ((fx - p[0]) / rx).powi(2) + ((fy - p[1]) / ry).powi(2) <= 1.0
            };
            let mouth = fy >= lm[1] - 3.0 && fy <= rm[1] + 3.0 && fx >= lm[0] && fx <= rm[0];
            let face = if near(le, 7.0, 4.0) || near(re, 7.0, 4.0) || mouth {
                [60, 30, 30]
            } else if near(nose, 5.0, 8.0) {
                [170, 120, 100]
            } else if near([56.0, 62.0], 42.0, 56.0) {
                [210, 160, 135]
            } else {
                [40, 40, 45]
            };
            let pixels = [
                [128, 128, 128],
                [ramp; 3],
                [vramp, 255 - vramp, 128],
                [checker; 3],
                [ring, ring / 2, 255 - ring],
                rand,
                face,
            ];
            for (crop, px) in crops.iter_mut().zip(pixels) {
                crop.pixels[i..i + 3].copy_from_slice(&px);
            }
        }
    }
    crops
}

/// Embeds the synthetic crops with `embedder` and judges the result. An embedding failure is
/// returned as is (a device error is the device's, not the model's).
pub fn probe(embedder: &mut dyn Embedder) -> Result<ProbeReport, EmbedError> {
    let dim = embedder.dim().min(MAX_DIM);
    let mut embeddings = Vec::with_capacity(PROBE_INPUTS);
    let mut norms = Vec::with_capacity(PROBE_INPUTS);
    let mut bad = None;
    for (k, crop) in synthetic_crops().iter().enumerate() {
        let mut out = vec![0.0f32; dim];
        let norm = match embedder.embed(crop, &mut out) {
            Ok(n) => n,
            // The CPU embedder refuses a zero or non-finite norm: for the probe that is the
            // model's output, not a failure to run it.
            Err(EmbedError::Output { reason, .. }) if reason.starts_with("embedding norm is") => {
                out.fill(0.0);
                if reason != "embedding norm is 0" {
                    bad.get_or_insert(format!("synthetic crop {k}: {reason}"));
                }
                0.0
            }
            Err(e) => return Err(e),
        };
        // A zero embedding on one featureless crop is an output like any other (its cosine to
        // the others is 0); all of them zero is a constant output (the spread is not a number).
        if !norm.is_finite() || out.iter().any(|v| !v.is_finite()) {
            bad.get_or_insert(format!("synthetic crop {k}: embedding norm is {norm}"));
        }
        norms.push(norm);
        embeddings.push(out);
    }
    let (mut min_pair, mut max_pair) = (f32::INFINITY, f32::NEG_INFINITY);
    for i in 0..embeddings.len() {
        for j in i + 1..embeddings.len() {
            let c = cosine(&embeddings[i], &embeddings[j]);
            min_pair = min_pair.min(c);
            max_pair = max_pair.max(c);
        }
    }
    let norm_spread = spread(&norms);
    let degenerate = bad.or_else(|| {
        if min_pair >= PROBE_MAX_MIN_COSINE {
            Some(format!(
                "every synthetic crop gives the same embedding (least similar pair cosine \
                 {min_pair:.4} >= {PROBE_MAX_MIN_COSINE})"
            ))
        } else if norm_spread.is_nan() || norm_spread < PROBE_MIN_NORM_SPREAD {
            Some(format!(
                "the norm before normalisation is the same for every synthetic crop (spread \
                 {norm_spread:.4} < {PROBE_MIN_NORM_SPREAD})"
            ))
        } else {
            None
        }
    });
    Ok(ProbeReport {
        norms,
        min_pair_cosine: min_pair,
        max_pair_cosine: max_pair,
        norm_spread,
        degenerate,
    })
}

/// (max - min) / median of `v` (NaN when empty or the median is 0).
pub fn spread(v: &[f32]) -> f32 {
    let mut s: Vec<f32> = v.to_vec();
    s.sort_by(f32::total_cmp);
    let (Some(&lo), Some(&hi)) = (s.first(), s.last()) else { return f32::NAN };
    let median = s[s.len() / 2];
    if median == 0.0 {
        f32::NAN
    } else {
        (hi - lo) / median
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A toy 8-d model whose raw output the function writes.
    struct Toy(fn(&AlignedFace, &mut [f32]));

    impl Embedder for Toy {
        fn model_id(&self) -> &str {
            "toy"
        }
        fn dim(&self) -> usize {
            8
        }
        fn embed(&mut self, face: &AlignedFace, out: &mut [f32]) -> Result<f32, EmbedError> {
            (self.0)(face, &mut out[..8]);
            Ok(super::super::l2_normalize(&mut out[..8]))
        }
    }

    /// Always the same vector (a degenerate HEF).
    fn constant(_: &AlignedFace, out: &mut [f32]) {
        out.copy_from_slice(&[3.0, -1.0, 0.5, 2.0, 0.0, 1.0, -2.0, 0.25]);
    }

    /// Each eighth of the crop's mean against the whole crop's, plus one fixed unit: an output
    /// that follows the input (a healthy model, as far as the probe can see).
    fn follows(face: &AlignedFace, out: &mut [f32]) {
        let mean = |p: &[u8]| p.iter().map(|&v| f32::from(v)).sum::<f32>() / p.len() as f32;
        let all = mean(&face.pixels);
        for (k, o) in out.iter_mut().enumerate() {
            *o = mean(&face.pixels[k * 4704..(k + 1) * 4704]) - all + f32::from(k == 0);
        }
    }

    #[test]
    fn a_constant_output_is_degenerate_and_a_varying_one_is_not() {
        let r = probe(&mut Toy(constant)).unwrap();
        assert!((r.min_pair_cosine - 1.0).abs() < 1e-6, "{r:?}");
        assert!(r.degenerate.as_deref().unwrap().contains("same embedding"), "{r:?}");
        assert!(r.summary().contains("DEGENERATE"));
        let r = probe(&mut Toy(follows)).unwrap();
        assert_eq!(r.degenerate, None, "{r:?}");
        assert_eq!(r.norms.len(), PROBE_INPUTS);
    }

    #[test]
    fn the_crops_are_deterministic_and_different() {
        let a = synthetic_crops();
        assert_eq!(a, synthetic_crops());
        for i in 0..a.len() {
            for j in i + 1..a.len() {
                assert_ne!(a[i], a[j], "{i} {j}");
            }
        }
    }

    #[test]
    fn spread_of_norms() {
        assert_eq!(spread(&[10.0, 10.0, 10.0]), 0.0);
        assert!((spread(&[8.0, 10.0, 12.0]) - 0.4).abs() < 1e-6);
        assert!(spread(&[]).is_nan());
    }
}
