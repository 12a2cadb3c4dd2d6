//! The horizontal pass with NEON (aarch64's baseline: always there, no run-time check),
//! bit-identical to the scalar pass: one output pixel per iteration, its window's (at most 8)
//! pixels loaded and split into R, G and B by one structure load (`ld3`), widened to 32 bits
//! and multiplied by the 22-bit weights in 32-bit lanes (the same integer products and sums as
//! the scalar code), the three channels' sums reduced together.

use std::arch::aarch64::*;

use super::taps::{horizontal_row, ResampleTaps, WEIGHT_BITS};

/// One row of the horizontal pass into a planar row (see [`horizontal_row`]). Output pixels
/// whose 8-pixel window would run past the row's end are finished by the scalar code.
///
/// `h.weights8` must be filled (at most 8 taps per output pixel); otherwise the scalar code
/// does the whole row.
pub(super) fn horizontal_row_neon(h: &ResampleTaps, src_row: &[u8], out: &mut [u8]) {
    let dw = h.dst_len as usize;
    if h.weights8.len() < dw * 8 {
        horizontal_row(h, src_row, out, 0);
        return;
    }
    let (r_out, rest) = out.split_at_mut(dw);
    let (g_out, b_out) = rest.split_at_mut(dw);
    let mut x = 0;
    // SAFETY: NEON is part of aarch64's baseline. Every load reads inside its slice: the
    // window's 24 bytes from `start * 3` are checked against the row's length (and the
    // starts never decrease, so the first window that does not fit ends the loop), and
    // `weights8` holds 8 weights per output pixel (checked above).
    unsafe {
        let half = vdupq_n_s32(1 << (WEIGHT_BITS - 1));
        let zero = vdupq_n_s32(0);
        while x < dw {
            let start = h.starts[x] as usize * 3;
            if start + 24 > src_row.len() {
                break;
            }
            let px = vld3_u8(src_row.as_ptr().add(start));
            let w = h.weights8.as_ptr().add(x * 8);
            let (w0, w1) = (vld1q_s32(w), vld1q_s32(w.add(4)));
            // Taps past the pixel's count have weight 0: their bytes add nothing.
            let sum = |c: uint8x8_t| {
                let wide = vmovl_u8(c);
                let lo = vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(wide)));
                let hi = vreinterpretq_s32_u32(vmovl_high_u16(wide));
                vmlaq_s32(vmulq_s32(lo, w0), hi, w1)
            };
            let (r, g, b) = (sum(px.0), sum(px.1), sum(px.2));
            // [R, G, B, 0]: pairwise adds of the partial sums.
            let rgb = vpaddq_s32(vpaddq_s32(r, g), vpaddq_s32(b, zero));
            let shifted = vshrq_n_s32::<{ WEIGHT_BITS as i32 }>(vaddq_s32(rgb, half));
            // Saturating narrows: below 0 to 0, above 255 to 255, as `clip8`.
            let bytes = vqmovn_u16(vcombine_u16(vqmovun_s32(shifted), vdup_n_u16(0)));
            r_out[x] = vget_lane_u8::<0>(bytes);
            g_out[x] = vget_lane_u8::<1>(bytes);
            b_out[x] = vget_lane_u8::<2>(bytes);
            x += 1;
        }
    }
    horizontal_row(h, src_row, out, x);
}
