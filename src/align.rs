//! Face alignment: the least-squares similarity transform (Umeyama) that takes five detected
//! landmarks onto the standard ArcFace 112x112 template, and a bilinear warp of the frame into a
//! caller-owned 112x112 crop.
//!
//! Must not: allocate, or know about models. Pure arithmetic.

use crate::detect::Landmarks;
use crate::frame::ImageView;

/// Side of an aligned face crop in pixels.
pub const CROP: usize = 112;

/// The ArcFace 5-point template for 112x112 crops (InsightFace `arcface_dst`,
/// `insightface/utils/face_align.py`): eyes, nose tip, mouth corners.
pub const ARCFACE_TEMPLATE: Landmarks = [
    [38.2946, 51.6963],
    [73.5318, 51.5014],
    [56.0252, 71.7366],
    [41.5493, 92.3655],
    [70.7299, 92.2041],
];

/// A 2x3 affine matrix `[[a, b, c], [d, e, f]]` mapping `(x, y)` to
/// `(a x + b y + c, d x + e y + f)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Affine(pub [[f64; 3]; 2]);

impl Affine {
    /// Applies the transform to a point.
    pub fn apply(&self, p: [f64; 2]) -> [f64; 2] {
        let m = &self.0;
        [m[0][0] * p[0] + m[0][1] * p[1] + m[0][2], m[1][0] * p[0] + m[1][1] * p[1] + m[1][2]]
    }

    /// The inverse transform, or `None` when the matrix is singular.
    pub fn inverse(&self) -> Option<Affine> {
        let [[a, b, c], [d, e, f]] = self.0;
        let det = a * e - b * d;
        if det.abs() < 1e-12 || !det.is_finite() {
            return None;
        }
        let (ia, ib, id, ie) = (e / det, -b / det, -d / det, a / det);
        Some(Affine([[ia, ib, -(ia * c + ib * f)], [id, ie, -(id * c + ie * f)]]))
    }

    /// The scale factor of a similarity transform (sqrt of the determinant).
    pub fn scale(&self) -> f64 {
        let [[a, b, _], [d, e, _]] = self.0;
        (a * e - b * d).abs().sqrt()
    }
}

/// The least-squares similarity transform (rotation, uniform scale, translation; no reflection)
/// taking `src` onto `dst`.
///
/// This is Umeyama's (1991) estimate in two dimensions, written in closed form: a 2-D similarity
/// is `[[a, -b], [b, a]]` plus a translation, so the least-squares problem over `(a, b, t)` is
/// linear and its solution is the same global minimum that Umeyama's SVD finds over rotations
/// and scales. Returns `None` for degenerate input (all points equal).
pub fn similarity(src: &[[f32; 2]], dst: &[[f32; 2]]) -> Option<Affine> {
    let n = src.len().min(dst.len());
    if n < 2 {
        return None;
    }
    let nf = n as f64;
    let mean = |pts: &[[f32; 2]]| {
        let (sx, sy) = pts[..n]
            .iter()
            .fold((0.0, 0.0), |(x, y), p| (x + f64::from(p[0]), y + f64::from(p[1])));
        [sx / nf, sy / nf]
    };
    let (ms, md) = (mean(src), mean(dst));
    let (mut dot, mut cross, mut var) = (0.0, 0.0, 0.0);
    for (s, d) in src[..n].iter().zip(&dst[..n]) {
        let (sx, sy) = (f64::from(s[0]) - ms[0], f64::from(s[1]) - ms[1]);
        let (dx, dy) = (f64::from(d[0]) - md[0], f64::from(d[1]) - md[1]);
        dot += sx * dx + sy * dy;
        cross += sx * dy - sy * dx;
        var += sx * sx + sy * sy;
    }
    if var < 1e-12 || !var.is_finite() {
        return None;
    }
    let (a, b) = (dot / var, cross / var);
    let tx = md[0] - (a * ms[0] - b * ms[1]);
    let ty = md[1] - (b * ms[0] + a * ms[1]);
    Some(Affine([[a, -b, tx], [b, a, ty]]))
}

/// The transform from frame coordinates to the 112x112 ArcFace crop for these landmarks.
pub fn arcface_transform(kps: &Landmarks) -> Option<Affine> {
    similarity(kps, &ARCFACE_TEMPLATE)
}

/// An aligned 112x112 RGB face crop, interleaved, in a fixed-size buffer.
#[derive(Clone, PartialEq, Eq)]
pub struct AlignedFace {
    /// `112 * 112 * 3` bytes, RGB.
    pub pixels: [u8; CROP * CROP * 3],
}

impl Default for AlignedFace {
    fn default() -> Self {
        Self { pixels: [0; CROP * CROP * 3] }
    }
}

impl std::fmt::Debug for AlignedFace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedFace(112x112)")
    }
}

/// Warps `frame` into `out` so that the landmarks land on the ArcFace template. Returns the
/// transform used, or `None` (leaving `out` untouched) for degenerate landmarks.
pub fn align_face(frame: ImageView<'_>, kps: &Landmarks, out: &mut AlignedFace) -> Option<Affine> {
    let m = arcface_transform(kps)?;
    let inv = m.inverse()?;
    warp_bilinear(frame, &inv, &mut out.pixels, CROP, CROP);
    Some(m)
}

/// Fills a `width x height` RGB `out` by sampling `src` at `inverse(x + 0.5, y + 0.5) - 0.5`
/// bilinearly (pixel centres at +0.5, as Pillow's affine transform does, which the reference
/// crops were made with). Points outside the frame are black; the two pixels of an edge
/// neighbourhood are clamped to the border.
pub fn warp_bilinear(
    src: ImageView<'_>,
    inverse: &Affine,
    out: &mut [u8],
    width: usize,
    height: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above), the only requirement of a
        // `target_feature(enable = "avx2")` function.
        unsafe { warp_avx2(src, inverse, out, width, height) };
        return;
    }
    // `portier_portable_kernels`: the portable warp on aarch64, to measure the difference.
    #[cfg(all(target_arch = "aarch64", not(portier_portable_kernels)))]
    warp_neon(src, inverse, out, width, height);
    #[cfg(not(all(target_arch = "aarch64", not(portier_portable_kernels))))]
    warp(src, inverse, out, width, height);
}

/// [`warp`] with AVX2, four output pixels at a time: the same double-precision operations in
/// the same order (no fused multiply-adds), so the same bytes; `floor` and `round` as
/// instructions instead of calls into libm (x86-64's baseline has no rounding instruction);
/// each source pixel fetched with one 4-byte gather. Quads that would read past the frame's
/// last byte, and the row's last pixels, go through [`warp`]'s code.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn warp_avx2(src: ImageView<'_>, inverse: &Affine, out: &mut [u8], width: usize, height: usize) {
    use std::arch::x86_64::*;
    let (sw, sh) = (src.width() as usize, src.height() as usize);
    let data = src.as_bytes();
    let [[a, b, c], [d, e, f]] = inverse.0;
    let set = _mm256_set1_pd;
    let (a4, c4, d4, f4) = (set(a), set(c), set(d), set(f));
    let (zero, one, half_px) = (set(0.0), set(1.0), set(0.5));
    let (swf, shf) = (set(sw as f64), set(sh as f64));
    let (max_x, max_y) = (_mm_set1_epi32(sw as i32 - 1), _mm_set1_epi32(sh as i32 - 1));
    let sw3 = _mm_set1_epi32(sw as i32 * 3);
    let three = _mm_set1_epi32(3);
    // Round half away from zero, as `f64::round`: truncate after adding the largest double
    // below 0.5 with the value's sign.
    let sign = set(-0.0);
    let below_half = set(0.499_999_999_999_999_94);
    let byte_max = set(255.0);
    // The last byte offset a 4-byte gather may start at.
    let last_ok = data.len().saturating_sub(4);
    // `frame` offsets fit an i32: at most MAX_SIDE^2 * 3 bytes.
    let clamp_idx =
        |v: __m256d, max: __m128i| _mm_min_epi32(_mm256_cvttpd_epi32(_mm256_max_pd(v, zero)), max);
    for y in 0..height {
        let yc = y as f64 + 0.5;
        let (byc, eyc) = (set(b * yc), set(e * yc));
        let mut x = 0;
        while x + 4 <= width {
            let x0f = x as f64 + 0.5;
            let xc = _mm256_setr_pd(x0f, x0f + 1.0, x0f + 2.0, x0f + 3.0);
            let xin = _mm256_add_pd(_mm256_add_pd(_mm256_mul_pd(a4, xc), byc), c4);
            let yin = _mm256_add_pd(_mm256_add_pd(_mm256_mul_pd(d4, xc), eyc), f4);
            let inside = _mm256_and_pd(
                _mm256_and_pd(
                    _mm256_cmp_pd::<_CMP_GE_OQ>(xin, zero),
                    _mm256_cmp_pd::<_CMP_GE_OQ>(yin, zero),
                ),
                _mm256_and_pd(
                    _mm256_cmp_pd::<_CMP_LT_OQ>(xin, swf),
                    _mm256_cmp_pd::<_CMP_LT_OQ>(yin, shf),
                ),
            );
            let (xs, ys) = (_mm256_sub_pd(xin, half_px), _mm256_sub_pd(yin, half_px));
            let (x0, y0) = (_mm256_floor_pd(xs), _mm256_floor_pd(ys));
            let (dx, dy) = (_mm256_sub_pd(xs, x0), _mm256_sub_pd(ys, y0));
            // Outside pixels get index 0 (read, then discarded).
            let keep = _mm256_cvtpd_epi32(_mm256_and_pd(inside, one));
            let keep = _mm_cmpeq_epi32(keep, _mm_set1_epi32(1));
            let idx = |v: __m256d, max: __m128i| _mm_and_si128(clamp_idx(v, max), keep);
            let (xa, xb) = (idx(x0, max_x), idx(_mm256_add_pd(x0, one), max_x));
            let (ya, yb) = (idx(y0, max_y), idx(_mm256_add_pd(y0, one), max_y));
            let (ra, rb) = (_mm_mullo_epi32(ya, sw3), _mm_mullo_epi32(yb, sw3));
            let (ca, cb) = (_mm_mullo_epi32(xa, three), _mm_mullo_epi32(xb, three));
            let offs = [
                _mm_add_epi32(ra, ca),
                _mm_add_epi32(ra, cb),
                _mm_add_epi32(rb, ca),
                _mm_add_epi32(rb, cb),
            ];
            let mut furthest = [0i32; 4];
            // SAFETY: writes 16 bytes into a 16-byte array.
            unsafe {
                _mm_storeu_si128(
                    furthest.as_mut_ptr().cast(),
                    _mm_max_epi32(_mm_max_epi32(offs[0], offs[1]), _mm_max_epi32(offs[2], offs[3])),
                );
            }
            if furthest.iter().any(|&o| o as usize > last_ok) {
                break;
            }
            // SAFETY: every offset is at most `last_ok`, so each 4-byte read lies in `data`.
            let [aa, ba, ab, bb] =
                offs.map(|o| unsafe { _mm_i32gather_epi32::<1>(data.as_ptr().cast(), o) });
            let mut channels = [_mm_setzero_si128(); 3];
            for (ch, slot) in channels.iter_mut().enumerate() {
                let byte = |v: __m128i| {
                    let shifted = _mm_srlv_epi32(v, _mm_set1_epi32(8 * ch as i32));
                    _mm256_cvtepi32_pd(_mm_and_si128(shifted, _mm_set1_epi32(0xff)))
                };
                let (paa, pba, pab, pbb) = (byte(aa), byte(ba), byte(ab), byte(bb));
                let top = _mm256_add_pd(paa, _mm256_mul_pd(_mm256_sub_pd(pba, paa), dx));
                let bottom = _mm256_add_pd(pab, _mm256_mul_pd(_mm256_sub_pd(pbb, pab), dx));
                let v = _mm256_add_pd(top, _mm256_mul_pd(_mm256_sub_pd(bottom, top), dy));
                let half = _mm256_or_pd(_mm256_and_pd(v, sign), below_half);
                let r = _mm256_round_pd::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(
                    _mm256_add_pd(v, half),
                );
                let r = _mm256_min_pd(_mm256_max_pd(r, zero), byte_max);
                *slot = _mm_and_si128(_mm256_cvttpd_epi32(r), keep);
            }
            // [R G B 0] per pixel, then the four pixels' 12 bytes.
            let rgb = _mm_or_si128(
                _mm_or_si128(channels[0], _mm_slli_epi32::<8>(channels[1])),
                _mm_slli_epi32::<16>(channels[2]),
            );
            let packed = _mm_shuffle_epi8(
                rgb,
                _mm_setr_epi8(0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1, -1, -1),
            );
            let mut bytes = [0u8; 16];
            // SAFETY: writes 16 bytes into a 16-byte array.
            unsafe { _mm_storeu_si128(bytes.as_mut_ptr().cast(), packed) };
            let o = (y * width + x) * 3;
            out[o..o + 12].copy_from_slice(&bytes[..12]);
            x += 4;
        }
        warp_span(src, inverse, out, width, y, x..width);
    }
}

/// [`warp`] with NEON (aarch64's baseline), the three channels of one output pixel at a time:
/// the pixel's 2x2 neighbourhood is two 8-byte loads (its two source rows, each the left and
/// right pixel's RGB), widened to doubles in two 2-lane vectors per neighbour (R and G, then B),
/// and interpolated with the scalar code's double-precision operations in its order (separate
/// multiplies and adds, never fused), so the same bytes. The position, `floor` and the bounds
/// are the scalar code's; a pixel whose neighbourhood is clamped at the frame's edge, or whose
/// second load would read past the frame's last byte, goes through [`warp`]'s code.
#[cfg(target_arch = "aarch64")]
#[cfg_attr(portier_portable_kernels, allow(dead_code))]
fn warp_neon(src: ImageView<'_>, inverse: &Affine, out: &mut [u8], width: usize, height: usize) {
    use std::arch::aarch64::*;
    let (sw, sh) = (src.width() as usize, src.height() as usize);
    let data = src.as_bytes();
    let [[a, b, c], [d, e, f]] = inverse.0;
    let (last_x, last_y) = (sw.saturating_sub(1) as f64, sh.saturating_sub(1) as f64);
    for y in 0..height {
        let yc = y as f64 + 0.5;
        for x in 0..width {
            let xc = x as f64 + 0.5;
            let xin = a * xc + b * yc + c;
            let yin = d * xc + e * yc + f;
            let o = (y * width + x) * 3;
            if !(xin >= 0.0 && yin >= 0.0 && xin < sw as f64 && yin < sh as f64) {
                out[o..o + 3].fill(0);
                continue;
            }
            let (xs, ys) = (xin - 0.5, yin - 0.5);
            let (x0, y0) = (xs.floor(), ys.floor());
            // Both neighbours of each axis inside the frame (no clamping), and 8 bytes from the
            // lower row's start inside the data.
            let top = (y0 as usize * sw + x0 as usize) * 3;
            if x0 < 0.0 || y0 < 0.0 || x0 >= last_x || y0 >= last_y || top + sw * 3 + 8 > data.len()
            {
                warp_span(src, inverse, out, width, y, x..x + 1);
                continue;
            }
            let (dx, dy) = (xs - x0, ys - y0);
            // SAFETY: NEON is part of aarch64's baseline; both 8-byte loads lie inside `data`
            // (the lower one ends at most at its end, checked above, and the upper one starts a
            // row earlier).
            let rgb = unsafe {
                let (upper, lower) =
                    (vld1_u8(data.as_ptr().add(top)), vld1_u8(data.as_ptr().add(top + sw * 3)));
                // [R G] and [B _] of the left and the right pixel of a row, as doubles.
                let row = |v: uint8x8_t| {
                    let wide = vmovl_u8(v);
                    let (lo, hi) = (vmovl_u16(vget_low_u16(wide)), vmovl_high_u16(wide));
                    let rg = vcvtq_f64_u64(vmovl_u32(vget_low_u32(lo))); // R0 G0
                    let br = vcvtq_f64_u64(vmovl_high_u32(lo)); // B0 R1
                    let gb = vcvtq_f64_u64(vmovl_u32(vget_low_u32(hi))); // G1 B1
                    (rg, br, vextq_f64::<1>(br, gb), vextq_f64::<1>(gb, gb))
                };
                let (a_rg, a_b, b_rg, b_b) = row(upper);
                let (c_rg, c_b, d_rg, d_b) = row(lower);
                let (vdx, vdy) = (vdupq_n_f64(dx), vdupq_n_f64(dy));
                let lerp = |p: float64x2_t, q: float64x2_t, t: float64x2_t| {
                    vaddq_f64(p, vmulq_f64(vsubq_f64(q, p), t))
                };
                let to_bytes = |v: float64x2_t| {
                    let v =
                        vminq_f64(vmaxq_f64(vrndaq_f64(v), vdupq_n_f64(0.0)), vdupq_n_f64(255.0));
                    vcvtq_u64_f64(v)
                };
                let rg = to_bytes(lerp(lerp(a_rg, b_rg, vdx), lerp(c_rg, d_rg, vdx), vdy));
                let bb = to_bytes(lerp(lerp(a_b, b_b, vdx), lerp(c_b, d_b, vdx), vdy));
                [
                    vgetq_lane_u64::<0>(rg) as u8,
                    vgetq_lane_u64::<1>(rg) as u8,
                    vgetq_lane_u64::<0>(bb) as u8,
                ]
            };
            out[o..o + 3].copy_from_slice(&rgb);
        }
    }
}

/// The warp of [`warp_bilinear`] (on aarch64 the tests' reference).
#[cfg(any(test, not(all(target_arch = "aarch64", not(portier_portable_kernels)))))]
#[inline(always)]
fn warp(src: ImageView<'_>, inverse: &Affine, out: &mut [u8], width: usize, height: usize) {
    for y in 0..height {
        warp_span(src, inverse, out, width, y, 0..width);
    }
}

/// Output pixels `xs` of row `y` of the warp.
#[inline(always)]
fn warp_span(
    src: ImageView<'_>,
    inverse: &Affine,
    out: &mut [u8],
    width: usize,
    y: usize,
    xs: std::ops::Range<usize>,
) {
    let (sw, sh) = (src.width() as usize, src.height() as usize);
    let data = src.as_bytes();
    let [[a, b, c], [d, e, f]] = inverse.0;
    let yc = y as f64 + 0.5;
    for x in xs {
        let xc = x as f64 + 0.5;
        let xin = a * xc + b * yc + c;
        let yin = d * xc + e * yc + f;
        let o = &mut out[(y * width + x) * 3..(y * width + x) * 3 + 3];
        if !(xin >= 0.0 && yin >= 0.0 && xin < sw as f64 && yin < sh as f64) {
            o.fill(0);
            continue;
        }
        let (xs, ys) = (xin - 0.5, yin - 0.5);
        let (x0, y0) = (xs.floor(), ys.floor());
        let (dx, dy) = (xs - x0, ys - y0);
        let clamp_x = |v: f64| (v.max(0.0) as usize).min(sw - 1);
        let clamp_y = |v: f64| (v.max(0.0) as usize).min(sh - 1);
        let (xa, xb) = (clamp_x(x0), clamp_x(x0 + 1.0));
        let (ya, yb) = (clamp_y(y0), clamp_y(y0 + 1.0));
        for ch in 0..3 {
            let p = |xx: usize, yy: usize| f64::from(data[(yy * sw + xx) * 3 + ch]);
            let top = p(xa, ya) + (p(xb, ya) - p(xa, ya)) * dx;
            let bottom = p(xa, yb) + (p(xb, yb) - p(xa, yb)) * dx;
            o[ch] = (top + (bottom - top) * dy).round().clamp(0.0, 255.0) as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::RgbImage;

    #[test]
    fn recovers_an_exact_similarity() {
        let (s, th, tx, ty) = (2.5f64, 0.3f64, 40.0, -7.0);
        let truth = Affine([[s * th.cos(), -s * th.sin(), tx], [s * th.sin(), s * th.cos(), ty]]);
        let dst: Vec<[f32; 2]> = ARCFACE_TEMPLATE
            .iter()
            .map(|p| {
                let q = truth.apply([f64::from(p[0]), f64::from(p[1])]);
                [q[0] as f32, q[1] as f32]
            })
            .collect();
        let m = similarity(&ARCFACE_TEMPLATE, &dst).unwrap();
        for i in 0..2 {
            for j in 0..3 {
                assert!((m.0[i][j] - truth.0[i][j]).abs() < 1e-3, "{m:?}");
            }
        }
        assert!((m.scale() - 2.5).abs() < 1e-5);
        let back = m.inverse().unwrap().apply(m.apply([3.0, 4.0]));
        assert!((back[0] - 3.0).abs() < 1e-9 && (back[1] - 4.0).abs() < 1e-9);
    }

    #[test]
    fn least_squares_beats_perturbations() {
        let src = [[10.0, 10.0], [30.0, 12.0], [20.0, 25.0], [12.0, 35.0], [28.0, 36.0]];
        let m = similarity(&src, &ARCFACE_TEMPLATE).unwrap();
        let cost = |m: &Affine| -> f64 {
            src.iter()
                .zip(&ARCFACE_TEMPLATE)
                .map(|(s, d)| {
                    let p = m.apply([f64::from(s[0]), f64::from(s[1])]);
                    (p[0] - f64::from(d[0])).powi(2) + (p[1] - f64::from(d[1])).powi(2)
                })
                .sum()
        };
        let best = cost(&m);
        for (i, j) in [(0, 0), (0, 1), (0, 2), (1, 2)] {
            for delta in [-1e-3, 1e-3] {
                let mut p = m;
                p.0[i][j] += delta;
                if (i, j) == (0, 0) {
                    p.0[1][1] += delta;
                }
                if (i, j) == (0, 1) {
                    p.0[1][0] -= delta;
                }
                assert!(cost(&p) > best);
            }
        }
    }

    #[test]
    fn degenerate_landmarks_are_refused() {
        assert!(similarity(&[[5.0, 5.0]; 5], &ARCFACE_TEMPLATE).is_none());
        let img = RgbImage::new(10, 10);
        let mut out = AlignedFace::default();
        assert!(align_face(img.view(), &[[1.0, 1.0]; 5], &mut out).is_none());
    }

    /// A SIMD warp's signature.
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    type Kernel = dyn Fn(ImageView<'_>, &Affine, &mut [u8], usize, usize);

    /// `kernel` gives [`warp`]'s bytes: 200 random similarity transforms (scales from 0.2 to 3,
    /// any rotation, parts of the crop outside the frame and across its last pixels; odd crop
    /// widths end rows with the scalar code) on a 203x151 frame, then frames of one row, one
    /// column, 2x2 and 3x3 (every neighbourhood clamped or at the last bytes) and crops over a
    /// frame's bottom-right corner.
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    fn assert_warp_matches(kernel: &Kernel) {
        let mut state = 0x9e37_79b9u32;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state
        };
        let image = |w: u32, h: u32, next: &mut dyn FnMut() -> u32| {
            let mut img = RgbImage::new(w, h);
            for v in img.as_bytes_mut() {
                *v = next() as u8;
            }
            img
        };
        let check = |img: &RgbImage, inv: &Affine, ow: usize, oh: usize| {
            let mut scalar = vec![1u8; ow * oh * 3];
            let mut simd = vec![2u8; ow * oh * 3];
            warp(img.view(), inv, &mut scalar, ow, oh);
            kernel(img.view(), inv, &mut simd, ow, oh);
            assert!(scalar == simd, "{}x{}: {inv:?}", img.width(), img.height());
        };
        let img = image(203, 151, &mut next);
        for case in 0..200 {
            let unit = |v: u32| f64::from(v % 10_000) / 10_000.0;
            let (s, th) = (0.2 + 2.8 * unit(next()), 6.3 * unit(next()));
            let (tx, ty) = (-60.0 + 320.0 * unit(next()), -60.0 + 270.0 * unit(next()));
            let inv = Affine([[s * th.cos(), -s * th.sin(), tx], [s * th.sin(), s * th.cos(), ty]]);
            check(&img, &inv, if case % 3 == 0 { 37 } else { 112 }, 112);
        }
        for (w, h) in [(1, 9), (9, 1), (2, 2), (3, 3), (40, 30)] {
            let img = image(w, h, &mut next);
            for s in [0.05, 0.3, 1.0] {
                let (tx, ty) = (f64::from(w) - 3.0, f64::from(h) - 3.0);
                check(&img, &Affine([[s, 0.01, tx], [-0.01, s, ty]]), 16, 16);
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_warp_is_bit_identical_to_scalar() {
        if !std::is_x86_feature_detected!("avx2") {
            eprintln!("notice: no AVX2 on this CPU; the scalar warp is the only one used");
            return;
        }
        // SAFETY: AVX2 checked above, the only requirement of `warp_avx2`.
        assert_warp_matches(&|s, i, o, w, h| unsafe { warp_avx2(s, i, o, w, h) });
    }

    /// Run in CI under `qemu-aarch64`.
    #[cfg(target_arch = "aarch64")]
    #[test]
    fn neon_warp_is_bit_identical_to_scalar() {
        assert_warp_matches(&warp_neon);
    }

    #[test]
    fn identity_warp_copies_and_outside_is_black() {
        let mut img = RgbImage::new(4, 4);
        for (i, v) in img.as_bytes_mut().iter_mut().enumerate() {
            *v = i as u8;
        }
        let id = Affine([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]);
        let mut out = vec![0u8; 48];
        warp_bilinear(img.view(), &id, &mut out, 4, 4);
        assert_eq!(out, img.as_bytes());
        let shifted = Affine([[1.0, 0.0, -10.0], [0.0, 1.0, 0.0]]);
        warp_bilinear(img.view(), &shifted, &mut out, 4, 4);
        assert!(out.iter().all(|&v| v == 0));
    }
}
