//! The resampling filter's taps: for each output pixel of one axis, its first source pixel and
//! its weights in 22-bit fixed point (Pillow's), computed once per frame size, and the scalar
//! horizontal pass every vectorised kernel ([`super::simd`]) must match byte for byte.

/// How to filter when resampling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// Plain bilinear from the two nearest pixels per axis. Aliases when shrinking by more
    /// than 2x.
    Bilinear,
    /// Triangle filter widened by the shrink factor: averages every source pixel under the
    /// footprint, so a 1080p frame shrunk to 640 keeps small faces intact instead of sampling
    /// a sparse grid. Bit-exact with Pillow's `Image.resize(..., BILINEAR)`, which the
    /// reference pipeline used.
    Antialiased,
}

/// Fixed-point precision of the filter weights (Pillow's `PRECISION_BITS` for 8-bit images:
/// 32 - 8 - 2, so a sum of weighted bytes never overflows an i32).
pub(super) const WEIGHT_BITS: u32 = 22;

/// Precomputed taps of a 1-D resampling filter, kept by the caller so that resizing a stream of
/// frames of one size computes them once.
#[derive(Debug, Clone, Default)]
pub struct ResampleTaps {
    pub(super) src_len: u32,
    pub(super) dst_len: u32,
    pub(super) filter: Option<Filter>,
    /// For each output index, the first source index.
    pub(super) starts: Vec<u32>,
    /// For each output index, the number of taps.
    pub(super) counts: Vec<u32>,
    /// Weights in 1/2^22 fixed point, `max_taps` per output index.
    pub(super) weights: Vec<i32>,
    pub(super) max_taps: usize,
    /// With at most 8 taps: the weights of each pair of output indices (0 and 1, 2 and 3, …)
    /// split for the AVX2 pass ([`split_weights`], 32 lanes per pair: two 256-bit vectors).
    pub(super) split: Vec<i16>,
    /// For the AVX-512 pass, per group of four output indices (4g..4g+4) whose windows all lie
    /// within 64 source bytes of the first one's start (always when shrinking by up to about
    /// 4x): each index's byte offset from the group's start, repeated over its 16-byte lane.
    /// Empty when some group's windows spread wider.
    pub(super) group_offsets: Vec<[u8; 64]>,
    /// The weights of each group of four split likewise ([`split_weights`], 64 lanes per
    /// group: two 512-bit vectors).
    pub(super) group_split: Vec<i16>,
    /// For the NEON pass, with at most 8 taps: each output index's weights padded with zeros
    /// to 8 (two 4-lane vectors).
    #[cfg(target_arch = "aarch64")]
    pub(super) weights8: Vec<i32>,
}

impl ResampleTaps {
    /// Recomputes the taps unless they already fit these lengths and filter. Follows Pillow's
    /// `precompute_coeffs` and `normalize_coeffs_8bpc` step by step (the same truncations), so
    /// that the pixels match the reference pipeline's.
    pub fn prepare(&mut self, src_len: u32, dst_len: u32, filter: Filter) {
        if self.src_len == src_len && self.dst_len == dst_len && self.filter == Some(filter) {
            return;
        }
        let scale = f64::from(src_len) / f64::from(dst_len);
        let filterscale = match filter {
            Filter::Bilinear => 1.0,
            Filter::Antialiased => scale.max(1.0),
        };
        let support = filterscale; // the triangle's support is 1
        let max_taps = support.ceil() as usize * 2 + 1;
        self.starts.clear();
        self.counts.clear();
        self.weights.clear();
        self.weights.resize(max_taps * dst_len as usize, 0);
        let mut k = vec![0f64; max_taps];
        for xx in 0..dst_len as usize {
            let center = (xx as f64 + 0.5) * scale;
            // `as i64` truncates toward zero, like C's (int) cast.
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(i64::from(src_len)) - xmin;
            let n = (xmax.max(0) as usize).min(max_taps);
            let mut ww = 0.0;
            for (x, kx) in k.iter_mut().enumerate().take(n) {
                let t = ((x as i64 + xmin) as f64 - center + 0.5) / filterscale;
                let w = (1.0 - t.abs()).max(0.0);
                *kx = w;
                ww += w;
            }
            let row = &mut self.weights[xx * max_taps..(xx + 1) * max_taps];
            for (x, slot) in row.iter_mut().enumerate().take(n) {
                let w = if ww != 0.0 { k[x] / ww } else { 0.0 };
                let fixed = w * f64::from(1u32 << WEIGHT_BITS);
                *slot = if w < 0.0 { (fixed - 0.5) as i32 } else { (fixed + 0.5) as i32 };
            }
            self.starts.push(xmin as u32);
            self.counts.push(n as u32);
        }
        self.split.clear();
        self.group_offsets.clear();
        self.group_split.clear();
        #[cfg(target_arch = "aarch64")]
        {
            self.weights8.clear();
            if max_taps <= 8 {
                for w in self.weights.chunks_exact(max_taps) {
                    self.weights8.extend_from_slice(w);
                    self.weights8.extend(std::iter::repeat_n(0, 8 - max_taps));
                }
            }
        }
        if max_taps <= 8 {
            split_weights(&self.weights, max_taps, 2, &mut self.split);
            for group in self.starts.chunks(4) {
                let mut offsets = [0u8; 64];
                for (lane, &start) in offsets.chunks_exact_mut(16).zip(group) {
                    lane.fill(u8::try_from((start - group[0]) * 3).unwrap_or(u8::MAX));
                }
                self.group_offsets.push(offsets);
            }
            // Each window is 24 bytes from its offset; all must fit the 64 loaded.
            if self.group_offsets.iter().all(|o| o[48] <= 40) {
                split_weights(&self.weights, max_taps, 4, &mut self.group_split);
            } else {
                self.group_offsets.clear();
            }
        }
        self.src_len = src_len;
        self.dst_len = dst_len;
        self.filter = Some(filter);
        self.max_taps = max_taps;
    }
}

/// Splits the weights of each group of `group` consecutive output indices into high and low
/// 11-bit halves for the SIMD passes: per group, the high halves of its indices (8 lanes of
/// i16 each, zero-padded), then the low halves likewise, `16 * group` lanes in all. With these
/// halves 16-bit multiply-adds compute the same integer sums as the 22-bit weights.
fn split_weights(weights: &[i32], max_taps: usize, group: usize, out: &mut Vec<i16>) {
    for g in weights.chunks(group * max_taps) {
        let base = out.len();
        out.resize(base + 16 * group, 0);
        for (i, w) in g.chunks_exact(max_taps).enumerate() {
            for (k, &wk) in w.iter().enumerate() {
                // 0 <= wk <= 2^22: both halves fit an i16.
                out[base + 8 * i + k] = (wk >> 11) as i16;
                out[base + 8 * group + 8 * i + k] = (wk & 0x7ff) as i16;
            }
        }
    }
}

/// The horizontal pass for output pixels `first..` of one row, one pixel at a time. `out` is
/// one planar row: `dw` red bytes, then `dw` green, then `dw` blue.
pub(super) fn horizontal_row(h: &ResampleTaps, src_row: &[u8], out: &mut [u8], first: usize) {
    let half = 1i32 << (WEIGHT_BITS - 1);
    let dw = h.dst_len as usize;
    let (r_out, rest) = out.split_at_mut(dw);
    let (g_out, b_out) = rest.split_at_mut(dw);
    let taps = h.starts.iter().zip(&h.counts).zip(h.weights.chunks_exact(h.max_taps));
    for (x, ((&start, &n), w)) in taps.enumerate().skip(first) {
        let (start, n) = (start as usize, n as usize);
        let px = &src_row[start * 3..(start + n) * 3];
        let (mut r, mut g, mut b) = (half, half, half);
        for (p, &wk) in px.chunks_exact(3).zip(&w[..n]) {
            r += i32::from(p[0]) * wk;
            g += i32::from(p[1]) * wk;
            b += i32::from(p[2]) * wk;
        }
        r_out[x] = clip8(r);
        g_out[x] = clip8(g);
        b_out[x] = clip8(b);
    }
}

/// Rounds a fixed-point sum back to a byte, as Pillow's `clip8`.
#[inline]
pub(super) fn clip8(acc: i32) -> u8 {
    (acc >> WEIGHT_BITS).clamp(0, 255) as u8
}
