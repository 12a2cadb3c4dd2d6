//! The horizontal pass with AVX2 intrinsics, bit-identical to the scalar pass: each
//! 22-bit weight is split into 11-bit halves so that 16-bit multiply-adds (`vpmaddwd`)
//! compute the same integer sums.

use std::arch::x86_64::*;

use super::taps::{horizontal_row, ResampleTaps, WEIGHT_BITS};

/// Byte shuffles gathering 8 interleaved RGB pixels into one channel's 8 16-bit lanes
/// (0x80 writes zero): the first 16 bytes hold pixels 0..5 (r5 last), the next 8 bytes the
/// rest (g5 b5 r6 g6 b6 r7 g7 b7).
const Z: i8 = -128;
const LO: [[i8; 16]; 3] = [
    [0, Z, 3, Z, 6, Z, 9, Z, 12, Z, 15, Z, Z, Z, Z, Z],
    [1, Z, 4, Z, 7, Z, 10, Z, 13, Z, Z, Z, Z, Z, Z, Z],
    [2, Z, 5, Z, 8, Z, 11, Z, 14, Z, Z, Z, Z, Z, Z, Z],
];
const HI: [[i8; 16]; 3] = [
    [Z, Z, Z, Z, Z, Z, Z, Z, Z, Z, Z, Z, 2, Z, 5, Z],
    [Z, Z, Z, Z, Z, Z, Z, Z, Z, Z, 0, Z, 3, Z, 6, Z],
    [Z, Z, Z, Z, Z, Z, Z, Z, Z, Z, 1, Z, 4, Z, 7, Z],
];

/// One row of the horizontal pass into a planar row (see [`horizontal_row`]). Output
/// pixels whose 8-pixel window would run past the row's end are finished by the scalar
/// code.
///
/// # Safety
/// The CPU must support AVX2; `h` must hold at most 8 taps per output pixel (so that
/// `h.split` is filled).
#[target_feature(enable = "avx2")]
pub(super) unsafe fn horizontal_row_avx2(h: &ResampleTaps, src_row: &[u8], out: &mut [u8]) {
    // Eight output pixels per iteration: four pairs, each pair's two pixels in the two
    // 128-bit lanes of a register (byte shuffles, multiply-adds and horizontal adds all
    // work within lanes); the horizontal adds then reduce all eight at once.
    let load = |m: &[i8; 16]| {
        // SAFETY: reads 16 bytes from a 16-byte array.
        let m = unsafe { _mm_loadu_si128(m.as_ptr().cast()) };
        _mm256_broadcastsi128_si256(m)
    };
    let (lo, hi) =
        ([load(&LO[0]), load(&LO[1]), load(&LO[2])], [load(&HI[0]), load(&HI[1]), load(&HI[2])]);
    let half = _mm256_set1_epi32(1 << (WEIGHT_BITS - 1));
    let dw = h.dst_len as usize;
    let (r_out, rest) = out.split_at_mut(dw);
    let (g_out, b_out) = rest.split_at_mut(dw);
    // The sums of one pair: R, G, B, each 4 partial sums per lane.
    let pair = |x: usize| {
        let (s0, s1) = (h.starts[x] as usize * 3, h.starts[x + 1] as usize * 3);
        // SAFETY: the caller checked that the last pixel's window (and so, starts never
        // decreasing, every earlier one) ends inside `src_row`.
        let (a, b) = unsafe {
            let p0 = src_row.as_ptr().add(s0);
            let p1 = src_row.as_ptr().add(s1);
            (
                _mm256_set_m128i(_mm_loadu_si128(p1.cast()), _mm_loadu_si128(p0.cast())),
                _mm256_set_m128i(
                    _mm_loadl_epi64(p1.add(16).cast()),
                    _mm_loadl_epi64(p0.add(16).cast()),
                ),
            )
        };
        let w = &h.split[x / 2 * 32..x / 2 * 32 + 32];
        // SAFETY: reads 32 bytes at offsets 0 and 16 (i16 units) of a 32-element i16 slice.
        let (whi, wlo) = unsafe {
            (_mm256_loadu_si256(w.as_ptr().cast()), _mm256_loadu_si256(w.as_ptr().add(16).cast()))
        };
        let sum = |c: usize| {
            let ch = _mm256_or_si256(_mm256_shuffle_epi8(a, lo[c]), _mm256_shuffle_epi8(b, hi[c]));
            let s_hi = _mm256_madd_epi16(ch, whi);
            let s_lo = _mm256_madd_epi16(ch, wlo);
            _mm256_add_epi32(_mm256_slli_epi32(s_hi, 11), s_lo)
        };
        [sum(0), sum(1), sum(2)]
    };
    let mut x = 0;
    while x + 8 <= dw && h.starts[x + 7] as usize * 3 + 24 <= src_row.len() {
        let [p0, p1, p2, p3] = [pair(x), pair(x + 2), pair(x + 4), pair(x + 6)];
        // Per channel, lane 0 ends as pixels x, x+2, x+4, x+6 and lane 1 as the odd ones.
        let reduce = |c: usize| {
            let a = _mm256_hadd_epi32(p0[c], p1[c]);
            let b = _mm256_hadd_epi32(p2[c], p3[c]);
            let v = _mm256_add_epi32(_mm256_hadd_epi32(a, b), half);
            _mm256_srai_epi32(v, WEIGHT_BITS as i32)
        };
        let (r, g, b) = (reduce(0), reduce(1), reduce(2));
        // Lane 0: R0 R2 R4 R6 G0 G2 G4 G6 B0 B2 B4 B6 (bytes, saturated), lane 1 the odd.
        let bytes = _mm256_packus_epi16(_mm256_packs_epi32(r, g), _mm256_packs_epi32(b, b));
        let (even, odd) = (_mm256_castsi256_si128(bytes), _mm256_extracti128_si256::<1>(bytes));
        let rg = _mm_unpacklo_epi8(even, odd);
        let bb = _mm_unpackhi_epi8(even, odd);
        // SAFETY: x + 8 <= dw, so 8 bytes at x fit each plane row.
        unsafe {
            _mm_storel_epi64(r_out.as_mut_ptr().add(x).cast(), rg);
            _mm_storel_epi64(g_out.as_mut_ptr().add(x).cast(), _mm_srli_si128::<8>(rg));
            _mm_storel_epi64(b_out.as_mut_ptr().add(x).cast(), bb);
        }
        x += 8;
    }
    horizontal_row(h, src_row, out, x);
}

/// Whether [`horizontal_row_avx512`] can run here.
pub(super) fn has_avx512() -> bool {
    std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("avx512vbmi")
}

/// One row of the horizontal pass into a planar row, four output pixels per iteration:
/// one 64-byte load covers their four windows, and one cross-lane byte permutation
/// (`vpermb`) per channel gathers each window's bytes of that channel into its pixel's
/// 128-bit lane; the multiply-adds are those of [`horizontal_row_avx2`], so the sums and
/// bytes are the same. Pixels near the row's end go to the AVX2 pass.
///
/// # Safety
/// The CPU must support AVX-512 F, BW and VBMI ([`has_avx512`]); `h.group_offsets` must be
/// filled (which implies at most 8 taps).
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx2")]
pub(super) unsafe fn horizontal_row_avx512(h: &ResampleTaps, src_row: &[u8], out: &mut [u8]) {
    // Byte k*2 of a lane takes tap k's byte of channel c; odd bytes are zeroed by the mask
    // (16-bit lanes for the multiply-adds).
    let pattern = |c: u8| {
        let mut p = [0u8; 64];
        for (j, b) in p.iter_mut().enumerate() {
            *b = ((j % 16) / 2) as u8 * 3 + c;
        }
        // SAFETY: reads 64 bytes from a 64-byte array.
        unsafe { _mm512_loadu_si512(p.as_ptr().cast()) }
    };
    let pat = [pattern(0), pattern(1), pattern(2)];
    let even: __mmask64 = 0x5555_5555_5555_5555;
    let half = _mm512_set1_epi32(1 << (WEIGHT_BITS - 1));
    let zero = _mm512_setzero_si512();
    // From [R0 G0 B0 _ R1 G1 B1 _ …] to [R0 R1 R2 R3 G0 … B3 …].
    let planar = _mm_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    let dw = h.dst_len as usize;
    let mut x = 0;
    {
        let (r_out, rest) = out.split_at_mut(dw);
        let (g_out, b_out) = rest.split_at_mut(dw);
        while x + 4 <= dw {
            let start = h.starts[x] as usize * 3;
            if start + 64 > src_row.len() {
                break;
            }
            let g = x / 4;
            let w = &h.group_split[g * 64..g * 64 + 64];
            // SAFETY: bytes start..start+64 lie inside `src_row` (checked above); the
            // tables hold 64 bytes / 64 i16 per group (`w` is that group's).
            let (data, offsets, whi, wlo) = unsafe {
                (
                    _mm512_loadu_si512(src_row.as_ptr().add(start).cast()),
                    _mm512_loadu_si512(h.group_offsets[g].as_ptr().cast()),
                    _mm512_loadu_si512(w.as_ptr().cast()),
                    _mm512_loadu_si512(w.as_ptr().add(32).cast()),
                )
            };
            let sum = |c: usize| {
                let idx = _mm512_add_epi8(offsets, pat[c]);
                let ch = _mm512_maskz_permutexvar_epi8(even, idx, data);
                let s_hi = _mm512_madd_epi16(ch, whi);
                let s_lo = _mm512_madd_epi16(ch, wlo);
                _mm512_add_epi32(_mm512_slli_epi32::<11>(s_hi), s_lo)
            };
            let (r, gr, b) = (sum(0), sum(1), sum(2));
            // Per lane, a 4x4 transpose of the partial sums, then their sum: [R G B 0].
            let t0 = _mm512_unpacklo_epi32(r, gr);
            let t1 = _mm512_unpackhi_epi32(r, gr);
            let t2 = _mm512_unpacklo_epi32(b, zero);
            let t3 = _mm512_unpackhi_epi32(b, zero);
            let rgb = _mm512_add_epi32(
                _mm512_add_epi32(_mm512_unpacklo_epi64(t0, t2), _mm512_unpackhi_epi64(t0, t2)),
                _mm512_add_epi32(_mm512_unpacklo_epi64(t1, t3), _mm512_unpackhi_epi64(t1, t3)),
            );
            let shifted = _mm512_srai_epi32::<{ WEIGHT_BITS }>(_mm512_add_epi32(rgb, half));
            // Sums are never negative (the weights are not): unsigned saturation is clip8.
            let bytes = _mm_shuffle_epi8(_mm512_cvtusepi32_epi8(shifted), planar);
            let [r4, g4, b4] = [
                _mm_extract_epi32::<0>(bytes),
                _mm_extract_epi32::<1>(bytes),
                _mm_extract_epi32::<2>(bytes),
            ];
            r_out[x..x + 4].copy_from_slice(&r4.to_le_bytes());
            g_out[x..x + 4].copy_from_slice(&g4.to_le_bytes());
            b_out[x..x + 4].copy_from_slice(&b4.to_le_bytes());
            x += 4;
        }
    }
    if x == 0 {
        // SAFETY: AVX2 is implied by AVX-512F; at most 8 taps (the caller's contract).
        unsafe { horizontal_row_avx2(h, src_row, out) };
    } else {
        horizontal_row(h, src_row, out, x);
    }
}
