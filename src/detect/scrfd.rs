//! SCRFD output decoding (InsightFace `scrfd.py`): per stride, a score per anchor (sigmoid
//! applied in the graph), box distances (left, top, right, bottom) and five landmark offsets, all
//! in units of the stride, relative to the anchor centre. Two anchors share each cell.
//!
//! Both exports are read: the dynamic-input one whose outputs have numeric names and are
//! recognised by shape, and the static 640x640 one with outputs named `score_8`, `bbox_16`, ...

use super::{grid, per_stride, Detection, StrideOutputs, STRIDES};
use crate::infer::OutputTensor;

fn rows_and_width(t: &OutputTensor) -> (usize, usize) {
    let width = t.shape.last().copied().unwrap_or(0).max(0) as usize;
    let rows = t.data.len().checked_div(width).unwrap_or(0);
    (rows, width)
}

/// Finds the score, box and landmark tensors of each stride among `outputs`, by name
/// (`score_8`, `bbox_8`, `kps_8`, ...) when present, else by shape (last dimension 1, 4 or 10;
/// row count = cells x anchors of exactly one stride).
pub fn assign(outputs: &[OutputTensor], size: [u32; 2]) -> Result<[StrideOutputs<'_>; 3], String> {
    let mut found: [[Option<&OutputTensor>; 3]; 3] = [[None; 3]; 3]; // [stride][score,bbox,kps]
    let named = outputs.iter().any(|o| o.name.starts_with("score_"));
    for o in outputs {
        let (rows, width) = rows_and_width(o);
        let role = match width {
            1 => 0,
            4 => 1,
            10 => 2,
            _ => continue,
        };
        let slot = if named {
            let prefix = ["score_", "bbox_", "kps_"][role];
            let Some(s) = o.name.strip_prefix(prefix).and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            STRIDES.iter().position(|&x| x == s)
        } else {
            STRIDES.iter().position(|&s| {
                let (gw, gh) = grid(size, s);
                rows > 0 && rows % (gw * gh) == 0 && rows / (gw * gh) <= 3
            })
        };
        if let Some(i) = slot {
            if found[i][role].is_some() {
                return Err(format!("two outputs look like the same tensor (`{}`)", o.name));
            }
            found[i][role] = Some(o);
        }
    }
    per_stride(|i, stride| {
        let [Some(score), Some(bbox), Some(kps)] = found[i] else {
            return Err(format!(
                "no score/bbox/kps outputs for stride {stride} at input {}x{}: is this an SCRFD \
                 model with keypoints, and is input_size right?",
                size[0], size[1]
            ));
        };
        let (n, _) = rows_and_width(score);
        if rows_and_width(bbox).0 != n || rows_and_width(kps).0 != n {
            return Err(format!("stride {stride}: score, bbox and kps row counts differ"));
        }
        Ok(StrideOutputs {
            stride,
            score: &score.data,
            obj: None,
            bbox: &bbox.data,
            kps: &kps.data,
        })
    })
}

/// Reshapes an SCRFD compiled for an NPU (a Hailo HEF) into what [`assign`] reads: the HEF's
/// outputs are the head convolutions before the export's final reshape, NHWC
/// `[1, h, w, anchors * k]` with the channels of one anchor adjacent (k = 1 score, 4 box
/// distances, 10 landmark offsets). Flattening NHWC already gives the ONNX export's row order
/// (cell by cell, the anchors of a cell adjacent), so only the shape changes, to
/// `[h * w * anchors, k]`: no copy. Tensors of any other shape are left as they are.
pub fn rows_from_nhwc(outputs: &mut [OutputTensor], anchors: usize) {
    for o in outputs {
        let [n, h, w, c] = o.shape[..] else { continue };
        if n != 1 || anchors == 0 || c <= 0 || !(c as usize).is_multiple_of(anchors) {
            continue;
        }
        let k = c as usize / anchors;
        if matches!(k, 1 | 4 | 10) {
            o.shape.clear();
            o.shape.extend_from_slice(&[h * w * anchors as i64, k as i64]);
        }
    }
}

/// Decodes one stride's anchors whose score reaches `threshold` into `out` (input coordinates).
pub fn decode_stride(
    s: &StrideOutputs<'_>,
    size: [u32; 2],
    threshold: f32,
    out: &mut Vec<Detection>,
) {
    let (gw, gh) = grid(size, s.stride);
    let anchors = (s.score.len() / (gw * gh)).max(1);
    let st = s.stride as f32;
    for (idx, &score) in s.score.iter().enumerate() {
        // NaN (a broken output) fails every comparison, so `score < threshold` alone lets it
        // through as a candidate with a NaN score.
        if score.is_nan() || score < threshold {
            continue;
        }
        // Anchor order: row-major cells, the anchors of one cell adjacent.
        let cell = idx / anchors;
        let cx = (cell % gw) as f32 * st;
        let cy = (cell / gw) as f32 * st;
        let b = &s.bbox[idx * 4..idx * 4 + 4];
        let k = &s.kps[idx * 10..idx * 10 + 10];
        let mut kps = [[0f32; 2]; 5];
        for (p, pair) in kps.iter_mut().zip(k.chunks_exact(2)) {
            *p = [cx + pair[0] * st, cy + pair[1] * st];
        }
        out.push(Detection {
            bbox: [cx - b[0] * st, cy - b[1] * st, cx + b[2] * st, cy + b[3] * st],
            score,
            kps,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(name: &str, rows: usize, width: usize) -> OutputTensor {
        OutputTensor {
            name: name.into(),
            shape: vec![rows as i64, width as i64],
            data: vec![0.0; rows * width],
        }
    }

    fn outputs(names: [&str; 9], size: [u32; 2]) -> Vec<OutputTensor> {
        let mut v = Vec::new();
        for (role, width) in [1, 4, 10].into_iter().enumerate() {
            for (i, s) in STRIDES.into_iter().enumerate() {
                let (gw, gh) = grid(size, s);
                v.push(tensor(names[role * 3 + i], gw * gh * 2, width));
            }
        }
        v
    }

    /// An NPU's NHWC head outputs, reshaped, decode like the ONNX export's: one face planted
    /// at stride 16, cell (5, 3), anchor 1.
    #[test]
    fn npu_nhwc_outputs_decode_after_reshape() {
        let size = [640u32, 640];
        let mut o = Vec::new();
        for (name, k) in [("conv_score", 1usize), ("conv_bbox", 4), ("conv_kps", 10)] {
            for s in STRIDES {
                let (gw, gh) = grid(size, s);
                o.push(OutputTensor {
                    name: format!("scrfd/{name}_{s}"),
                    shape: vec![1, gh as i64, gw as i64, (2 * k) as i64],
                    data: vec![0.0; gw * gh * 2 * k],
                });
            }
        }
        let (gw, _) = grid(size, 16);
        let idx = (3 * gw + 5) * 2 + 1; // row of (cell, anchor)
        o[1].data[idx] = 0.9; // score, stride 16
        o[4].data[idx * 4..idx * 4 + 4].copy_from_slice(&[1.0, 1.0, 1.0, 1.0]);
        rows_from_nhwc(&mut o, 2);
        assert_eq!(o[1].shape, vec![40 * 40 * 2, 1]);
        let a = assign(&o, size).unwrap();
        let mut dets = Vec::new();
        decode_stride(&a[1], size, 0.5, &mut dets);
        assert_eq!(dets.len(), 1);
        // Cell centre (80, 48), one stride (16 px) each way.
        assert_eq!(dets[0].bbox, [64.0, 32.0, 96.0, 64.0]);
    }

    #[test]
    fn assigns_by_shape_and_by_name() {
        let numeric = ["443", "468", "493", "446", "471", "496", "449", "474", "499"];
        let o = outputs(numeric, [640, 640]);
        let a = assign(&o, [640, 640]).unwrap();
        assert_eq!(a[0].score.len(), 12800);
        assert_eq!(a[2].kps.len(), 8000);
        let named = [
            "score_8", "score_16", "score_32", "bbox_8", "bbox_16", "bbox_32", "kps_8", "kps_16",
            "kps_32",
        ];
        let o = outputs(named, [320, 256]);
        let a = assign(&o, [320, 256]).unwrap();
        assert_eq!(a[1].score.len(), 20 * 16 * 2);
        // Wrong input size for these outputs: a clear error.
        let err = assign(&outputs(numeric, [640, 640]), [320, 320]).unwrap_err();
        assert!(err.contains("stride"), "{err}");
    }

    /// Found by the `detect_decode` fuzz target: a NaN score passed the threshold.
    #[test]
    fn nan_score_is_not_a_candidate() {
        let score = [f32::NAN, 0.9];
        let bbox = [0.0; 8];
        let kps = [0.0; 20];
        let s = StrideOutputs { stride: 32, score: &score, obj: None, bbox: &bbox, kps: &kps };
        let mut out = Vec::new();
        decode_stride(&s, [32, 32], 0.5, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].score, 0.9);
    }

    #[test]
    fn decodes_anchor_geometry() {
        // 64x64 input, stride 32: 2x2 cells, 2 anchors each. Anchor 5 = cell 2 (x=0, y=1).
        let mut score = vec![0.0; 8];
        score[5] = 0.9;
        let mut bbox = vec![0.0; 32];
        bbox[20..24].copy_from_slice(&[0.5, 0.25, 1.0, 0.5]);
        let mut kps = vec![0.0; 80];
        kps[50] = 0.5;
        kps[51] = -0.25;
        let s = StrideOutputs { stride: 32, score: &score, obj: None, bbox: &bbox, kps: &kps };
        let mut out = Vec::new();
        decode_stride(&s, [64, 64], 0.5, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].bbox, [-16.0, 24.0, 32.0, 48.0]);
        assert_eq!(out[0].kps[0], [16.0, 24.0]);
        assert_eq!(out[0].kps[1], [0.0, 32.0]);
    }
}
