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
        if score < threshold {
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
