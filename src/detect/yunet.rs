//! YuNet (OpenCV Zoo, 2023mar) output decoding, as OpenCV's `FaceDetectorYN` does it: per
//! stride and cell, score = sqrt(clamp(cls) * clamp(obj)); the box centre is
//! `(cell + d) * stride`, its size `exp(d) * stride`; landmarks are `(cell + d) * stride`.
//! One anchor per cell. Outputs are found by name (`cls_8`, `obj_8`, `bbox_8`, `kps_8`, ...).

use super::{grid, per_stride, Detection, StrideOutputs};
use crate::infer::OutputTensor;

/// Finds each stride's `cls`, `obj`, `bbox` and `kps` outputs by name and checks their sizes.
pub fn assign(outputs: &[OutputTensor], size: [u32; 2]) -> Result<[StrideOutputs<'_>; 3], String> {
    let get = |kind: &str, stride: u32, width: usize| -> Result<&[f32], String> {
        // Matched without formatting the name: this runs every frame and must not allocate.
        let is = |o: &&OutputTensor| {
            o.name.strip_prefix(kind).and_then(|r| r.strip_prefix('_')).and_then(|r| r.parse().ok())
                == Some(stride)
        };
        let name = || format!("{kind}_{stride}");
        let t = outputs
            .iter()
            .find(is)
            .ok_or_else(|| format!("no output `{}`: is this a YuNet 2023mar model?", name()))?;
        let (gw, gh) = grid(size, stride);
        if t.data.len() != gw * gh * width {
            return Err(format!(
                "output `{}` has {} values, {} expected at input {}x{}",
                name(),
                t.data.len(),
                gw * gh * width,
                size[0],
                size[1]
            ));
        }
        Ok(&t.data)
    };
    per_stride(|_, stride| {
        Ok(StrideOutputs {
            stride,
            score: get("cls", stride, 1)?,
            obj: Some(get("obj", stride, 1)?),
            bbox: get("bbox", stride, 4)?,
            kps: get("kps", stride, 10)?,
        })
    })
}

/// Decodes one stride's cells whose score reaches `threshold` into `out` (input coordinates).
pub fn decode_stride(
    s: &StrideOutputs<'_>,
    size: [u32; 2],
    threshold: f32,
    out: &mut Vec<Detection>,
) {
    let (gw, _) = grid(size, s.stride);
    let st = s.stride as f32;
    let obj = s.obj.unwrap_or(s.score);
    for (idx, (&cls, &ob)) in s.score.iter().zip(obj).enumerate() {
        let score = (cls.clamp(0.0, 1.0) * ob.clamp(0.0, 1.0)).sqrt();
        // NaN (a broken output) survives the clamps and fails every comparison.
        if score.is_nan() || score < threshold {
            continue;
        }
        let (col, row) = ((idx % gw) as f32, (idx / gw) as f32);
        let b = &s.bbox[idx * 4..idx * 4 + 4];
        let cx = (col + b[0]) * st;
        let cy = (row + b[1]) * st;
        let w = b[2].exp() * st;
        let h = b[3].exp() * st;
        let k = &s.kps[idx * 10..idx * 10 + 10];
        let mut kps = [[0f32; 2]; 5];
        for (p, pair) in kps.iter_mut().zip(k.chunks_exact(2)) {
            *p = [(pair[0] + col) * st, (pair[1] + row) * st];
        }
        out.push(Detection {
            bbox: [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0],
            score,
            kps,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_cell_geometry() {
        // 64x64 input, stride 32: 2x2 cells. Cell 3 = (col 1, row 1).
        let cls = [0.0, 0.0, 0.0, 0.81];
        let obj = [1.0, 1.0, 1.0, 1.0];
        let mut bbox = [0.0; 16];
        bbox[12..16].copy_from_slice(&[0.5, 0.25, 0.0, 1.0f32.ln()]);
        let mut kps = [0.0; 40];
        kps[30] = 0.5;
        let s = StrideOutputs { stride: 32, score: &cls, obj: Some(&obj), bbox: &bbox, kps: &kps };
        let mut out = Vec::new();
        decode_stride(&s, [64, 64], 0.5, &mut out);
        assert_eq!(out.len(), 1);
        assert!((out[0].score - 0.9).abs() < 1e-6);
        assert_eq!(out[0].bbox, [32.0, 24.0, 64.0, 56.0]);
        assert_eq!(out[0].kps[0], [48.0, 32.0]);
    }

    /// Found by the `detect_decode` fuzz target (there with SCRFD): a NaN score passed the
    /// threshold.
    #[test]
    fn nan_score_is_not_a_candidate() {
        let cls = [f32::NAN, 1.0, 0.81, 1.0];
        let obj = [1.0, f32::NAN, 1.0, 0.0];
        let (bbox, kps) = ([0.0; 16], [0.0; 40]);
        let s = StrideOutputs { stride: 32, score: &cls, obj: Some(&obj), bbox: &bbox, kps: &kps };
        let mut out = Vec::new();
        decode_stride(&s, [64, 64], 0.5, &mut out);
        assert_eq!(out.len(), 1);
        assert!((out[0].score - 0.9).abs() < 1e-6);
    }

    #[test]
    fn missing_output_is_named() {
        let err = assign(&[], [640, 640]).unwrap_err();
        assert!(err.contains("cls_8"), "{err}");
    }
}
