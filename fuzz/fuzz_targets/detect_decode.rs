//! The detector output decoders (SCRFD, YuNet) over fuzzed tensors: the right shapes, shapes
//! one row off, missing or re-shaped tensors, NHWC head outputs of an NPU, and any values
//! (NaN, infinities, huge). Wrong shapes are an error, right shapes always decode, and every
//! candidate reaches the score threshold; then NMS. Never a panic or an out-of-bounds read.
//!
//! Input: `[flags] [width] [height] [threshold] [anchors]`, one mode byte per tensor, then the
//! values (f32, little-endian), repeated as often as the tensors need. Flags: bit 0 YuNet, bit
//! 1 SCRFD with named outputs (`score_8`, ...), bit 2 SCRFD as NHWC head outputs.

#![no_main]

use libfuzzer_sys::fuzz_target;
use portier::detect::{decode, nms, scrfd, DetectorKind, STRIDES};
use portier::infer::OutputTensor;

fn grid(size: [u32; 2], stride: u32) -> (usize, usize) {
    (size[0].div_ceil(stride) as usize, size[1].div_ceil(stride) as usize)
}

fuzz_target!(|data: &[u8]| {
    let Some((head, rest)) = data.split_first_chunk::<5>() else { return };
    let yunet = head[0] & 1 == 1;
    let (named, nhwc) = (head[0] & 2 != 0, head[0] & 4 != 0 && !yunet);
    // Sizes the detector runs at (multiples of 32, see `config.rs`), small enough for a fuzzer.
    let size = [32 * (1 + u32::from(head[1] % 4)), 32 * (1 + u32::from(head[2] % 4))];
    let threshold = f32::from(head[3]) / 255.0;
    let anchors = if yunet { 1 } else { 1 + usize::from(head[4] % 3) };
    let (roles, count): (&[(&str, usize)], usize) = if yunet {
        (&[("cls", 1), ("obj", 1), ("bbox", 4), ("kps", 10)], 12)
    } else {
        (&[("score", 1), ("bbox", 4), ("kps", 10)], 9)
    };
    let (modes, values) = rest.split_at(count.min(rest.len()));
    let values: Vec<f32> =
        values.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    let mut next = 0;
    let mut outputs = Vec::new();
    let mut right_shapes = true;
    for (r, &(role, k)) in roles.iter().enumerate() {
        for (i, stride) in STRIDES.into_iter().enumerate() {
            let t = r * 3 + i;
            let mode = modes.get(t).copied().unwrap_or(0) % 8;
            let (gw, gh) = grid(size, stride);
            let mut rows = gw * gh * anchors;
            let name = if yunet || named {
                format!("{role}_{stride}")
            } else {
                (440 + t).to_string() // the dynamic SCRFD export's numeric names
            };
            let mut shape = if nhwc {
                vec![1, gh as i64, gw as i64, (anchors * k) as i64]
            } else {
                vec![rows as i64, k as i64]
            };
            match mode {
                4 => rows += 1,
                5 => rows -= 1,
                6 => {
                    right_shapes = false;
                    continue;
                }
                7 => {
                    let dims =
                        [modes.get(t + 1), modes.get(t + 2)].map(|b| b.copied().unwrap_or(1));
                    shape = dims.iter().map(|&d| i64::from(d) - 2).collect();
                    rows = dims.iter().map(|&d| usize::from(d)).product::<usize>() / k.max(1);
                }
                _ => {}
            }
            if mode >= 4 {
                right_shapes = false;
                if !nhwc && mode != 7 {
                    shape[0] = rows as i64;
                }
            }
            let data = (0..rows * k)
                .map(|_| {
                    next += 1;
                    values.get(next % values.len().max(1)).copied().unwrap_or(0.0)
                })
                .collect();
            outputs.push(OutputTensor { name, shape, data });
        }
    }
    if nhwc {
        scrfd::rows_from_nhwc(&mut outputs, anchors);
    }
    let kind = if yunet { DetectorKind::Yunet } else { DetectorKind::Scrfd };
    let mut dets = Vec::new();
    let result = decode(kind, &outputs, size, threshold, &mut dets);
    if right_shapes {
        assert!(result.is_ok(), "right shapes refused: {result:?}");
    }
    for d in &dets {
        assert!(d.score >= threshold, "candidate below the threshold {threshold}: {d:?}");
    }
    let before = dets.len();
    nms(&mut dets, 0.4);
    assert!(dets.len() <= before);
    assert!(dets.windows(2).all(|w| w[0].score >= w[1].score));
});
