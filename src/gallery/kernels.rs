//! The matcher's scan: every template row against one query, as a per-person maximum. Rows are
//! float32, float16 (half the bytes, widened in the loop) or int8 with one scale per row (a
//! quarter of the bytes: the scan of a large gallery is a read of memory, so the bytes are its
//! cost); against int8 rows the query is quantised too (its own scale) and the products summed
//! as integers, which keeps the arithmetic below the memory read (`portier bench match`). The loops are written so the compiler
//! vectorises them (NEON on the Pi, baseline on aarch64); on x86-64 the same code is compiled a
//! second time with AVX2 and chosen at run time when the CPU has it.
//!
//! Must not: allocate, or depend on the row count beyond the slices it is given.

/// Template rows in one of the storages.
#[derive(Debug, Clone, Copy)]
pub enum RowsRef<'a> {
    /// Row-major float32.
    F32(&'a [f32]),
    /// Row-major IEEE half precision, as bits.
    F16(&'a [u16]),
    /// Row-major int8, row `r` standing for `data[r] * scales[r]`.
    I8 {
        /// The quantised rows.
        data: &'a [i8],
        /// One scale per row.
        scales: &'a [f32],
    },
}

/// Calls `f(person, best)` for every person: the largest dot product of `query` with the rows
/// of that person (`person_end[i]` is the exclusive end row of person `i`).
pub fn scan(
    rows: RowsRef<'_>,
    dim: usize,
    person_end: &[usize],
    query: &[f32],
    f: &mut dyn FnMut(usize, f32),
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above), the only requirement of a
        // `#[target_feature]` function; the function itself is safe code.
        unsafe { scan_avx2(rows, dim, person_end, query, f) };
        return;
    }
    scan_portable(rows, dim, person_end, query, f);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn scan_avx2(
    rows: RowsRef<'_>,
    dim: usize,
    person_end: &[usize],
    query: &[f32],
    f: &mut dyn FnMut(usize, f32),
) {
    scan_portable(rows, dim, person_end, query, f);
}

/// The longest query quantised on the stack; longer ones are matched in float32 against the
/// int8 rows.
pub const MAX_I8_QUERY: usize = 1024;

#[inline(always)]
fn scan_portable(
    rows: RowsRef<'_>,
    dim: usize,
    person_end: &[usize],
    query: &[f32],
    f: &mut dyn FnMut(usize, f32),
) {
    let mut q8 = [0i8; MAX_I8_QUERY];
    let q_scale = match rows {
        RowsRef::I8 { .. } if dim <= MAX_I8_QUERY => Some(quantise_i8(query, &mut q8[..dim])),
        _ => None,
    };
    let q8 = &q8[..dim.min(MAX_I8_QUERY)];
    let mut start = 0;
    for (person, &end) in person_end.iter().enumerate() {
        let mut best = f32::NEG_INFINITY;
        for r in start..end {
            let v = match (rows, q_scale) {
                (RowsRef::F32(data), _) => crate::embed::dot(&data[r * dim..(r + 1) * dim], query),
                (RowsRef::F16(data), _) => dot_f16(&data[r * dim..(r + 1) * dim], query),
                (RowsRef::I8 { data, scales }, Some(qs)) => {
                    dot_i8_i8(&data[r * dim..(r + 1) * dim], q8) as f32 * (scales[r] * qs)
                }
                (RowsRef::I8 { data, scales }, None) => {
                    dot_i8(&data[r * dim..(r + 1) * dim], query) * scales[r]
                }
            };
            best = best.max(v);
        }
        f(person, best);
        start = end;
    }
}

/// Sixteen independent partial sums: two AVX2 registers (four NEON ones) in flight, as in
/// `embed::dot`.
const LANES: usize = 16;

#[inline(always)]
fn dot_f16(a: &[u16], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (ac, bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 =
        ac.remainder().iter().zip(bc.remainder()).map(|(&x, y)| from_f16_finite(x) * y).sum();
    for (x, y) in ac.zip(bc) {
        for k in 0..LANES {
            acc[k] += from_f16_finite(x[k]) * y[k];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
fn dot_i8(a: &[i8], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (ac, bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(&x, y)| f32::from(x) * y).sum();
    for (x, y) in ac.zip(bc) {
        for k in 0..LANES {
            acc[k] += f32::from(x[k]) * y[k];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Integer dot product of two int8 vectors (exact: 127² · 1024 fits an i32 many times over).
#[inline(always)]
fn dot_i8_i8(a: &[i8], b: &[i8]) -> i32 {
    const W: usize = 32;
    let mut acc = [0i32; W];
    let (ac, bc) = (a.chunks_exact(W), b.chunks_exact(W));
    let tail: i32 =
        ac.remainder().iter().zip(bc.remainder()).map(|(&x, &y)| i32::from(x) * i32::from(y)).sum();
    for (x, y) in ac.zip(bc) {
        for k in 0..W {
            acc[k] += i32::from(x[k]) * i32::from(y[k]);
        }
    }
    acc.iter().sum::<i32>() + tail
}

/// [`from_f16`] for finite halves (template rows are unit vectors): four vector instructions
/// per eight values instead of ten, which is what keeps the scan near the memory read.
#[inline(always)]
fn from_f16_finite(h: u16) -> f32 {
    // Sign-extended, so bit 31 holds the sign after the shift; the copies of it that land
    // above the exponent (bits 28 to 30) are masked off.
    let bits = ((i32::from(h as i16) << 13) as u32) & 0x8fff_e000;
    f32::from_bits(bits) * f32::from_bits(0x7780_0000)
}

/// IEEE half precision bits of `x`, rounded to nearest, ties to even (overflow gives infinity,
/// NaN stays NaN; templates are unit vectors, far inside the range).
pub fn to_f16(x: f32) -> u16 {
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let abs = b & 0x7fff_ffff;
    if abs >= 0x7f80_0000 {
        // Infinity, or NaN (kept a NaN with a mantissa bit set).
        return sign | 0x7c00 | if abs > 0x7f80_0000 { 0x200 } else { 0 };
    }
    if abs >= 0x4780_0000 {
        // 2^16 and above: beyond the largest half (65504) by more than half a step.
        return sign | 0x7c00;
    }
    if abs < 0x3880_0000 {
        // Below 2^-14: a subnormal half, a whole number of 2^-24 steps (the scaling is exact;
        // 1024 steps round up into the smallest normal, whose bits are that same 0x400).
        return sign | (f32::from_bits(abs) * 16_777_216.0).round_ties_even() as u16;
    }
    // Float32 bias 127, half bias 15; abs >= 2^-14 here, so the exponent is at least 113.
    let exp = (abs >> 23) - 112;
    let mant = abs & 0x7f_ffff;
    let mut h = (exp << 10) | (mant >> 13);
    let rest = mant & 0x1fff;
    if rest > 0x1000 || (rest == 0x1000 && h & 1 == 1) {
        // A carry out of the mantissa steps the exponent, up to infinity: what rounding means.
        h += 1;
    }
    sign | h as u16
}

/// The value of half precision bits: exact (every half is a float32). Branch-free but for a
/// select, so the scan's loop vectorises.
#[inline(always)]
pub fn from_f16(h: u16) -> f32 {
    let h = u32::from(h);
    let em = h & 0x7fff;
    // Exponent and mantissa moved into float32's fields, then scaled by 2^112 (the difference
    // of the biases): right for normals and subnormals alike.
    let v = f32::from_bits(em << 13) * f32::from_bits(0x7780_0000);
    let v = if em >= 0x7c00 { f32::from_bits((em << 13) | 0x7f80_0000) } else { v };
    f32::from_bits(v.to_bits() | ((h & 0x8000) << 16))
}

/// Quantises a row to int8 with its own scale (the largest magnitude maps to 127, each value
/// rounded to nearest, ties to even); returns the scale. A zero or non-finite row gets scale 0
/// and zeros. Written to vectorise with plain SSE2/NEON: a gallery's every row passes through
/// here as it loads.
pub fn quantise_i8(row: &[f32], out: &mut [i8]) -> f32 {
    const W: usize = 8;
    // `a > m ? a : m` rather than `f32::max`: one vector instruction, and NaNs are skipped
    // either way.
    let bigger = |m: f32, x: f32| if x.abs() > m { x.abs() } else { m };
    let chunks = row.chunks_exact(W);
    let tail = chunks.remainder().iter().fold(0.0f32, |m, &x| bigger(m, x));
    let mut lanes = [0.0f32; W];
    for c in chunks {
        for k in 0..W {
            lanes[k] = bigger(lanes[k], c[k]);
        }
    }
    let max = lanes.iter().fold(tail, |m, &x| bigger(m, x));
    if max == 0.0 || !max.is_finite() {
        out.fill(0);
        return 0.0;
    }
    let inv = 127.0 / max;
    // Adding 1.5 * 2^23 leaves the rounded value in the low mantissa bits (|v| <= 127, far
    // below 2^22): an integer subtraction reads it, with no float-to-int conversion.
    const MAGIC: f32 = 12_582_912.0;
    for (o, &x) in out.iter_mut().zip(row) {
        let r = ((x * inv + MAGIC).to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
        *o = r as i8;
    }
    max / 127.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(n: usize, dim: usize) -> Vec<f32> {
        (0..n * dim).map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0).collect()
    }

    #[test]
    fn both_storages_agree_with_a_plain_dot_per_person() {
        // 37-d: every lane count's remainder path runs.
        let (dim, n) = (37, 9);
        let data = rows(n, dim);
        let query: Vec<f32> = (0..dim).map(|i| (i as f32 * 0.37).sin()).collect();
        let person_end = [2, 3, 7, 9];
        let plain = |r: usize| -> f32 {
            data[r * dim..(r + 1) * dim].iter().zip(&query).map(|(a, b)| a * b).sum()
        };
        let want: Vec<f32> = [0..2, 2..3, 3..7, 7..9]
            .into_iter()
            .map(|r| r.map(plain).fold(f32::NEG_INFINITY, f32::max))
            .collect();
        let mut got = vec![0.0; 4];
        scan(RowsRef::F32(&data), dim, &person_end, &query, &mut |p, v| got[p] = v);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-4, "{got:?} {want:?}");
        }
        let mut q8 = vec![0i8; n * dim];
        let scales: Vec<f32> = (0..n)
            .map(|r| quantise_i8(&data[r * dim..(r + 1) * dim], &mut q8[r * dim..(r + 1) * dim]))
            .collect();
        let rows = RowsRef::I8 { data: &q8, scales: &scales };
        scan(rows, dim, &person_end, &query, &mut |p, v| got[p] = v);
        for (g, w) in got.iter().zip(&want) {
            // Each element of row and query is off by at most half a step.
            assert!((g - w).abs() < 0.08, "{got:?} {want:?}");
        }
        let halves: Vec<u16> = data.iter().map(|&x| to_f16(x)).collect();
        let mut got16 = vec![0.0; 4];
        scan(RowsRef::F16(&halves), dim, &person_end, &query, &mut |p, v| got16[p] = v);
        for (g, w) in got16.iter().zip(&want) {
            // Each row element is off by at most 2^-11 of itself.
            assert!((g - w).abs() < 0.01, "{got16:?} {want:?}");
        }
        let mut portable16 = vec![0.0; 4];
        scan_portable(RowsRef::F16(&halves), dim, &person_end, &query, &mut |p, v| {
            portable16[p] = v
        });
        assert_eq!(portable16, got16);
        // The portable path gives the same as the dispatched one.
        let mut portable = vec![0.0; 4];
        scan_portable(rows, dim, &person_end, &query, &mut |p, v| portable[p] = v);
        assert_eq!(portable, got);
    }

    #[test]
    fn quantisation_keeps_the_largest_value_and_zero_rows() {
        let mut out = [0i8; 3];
        let s = quantise_i8(&[0.5, -1.0, 0.25], &mut out);
        assert_eq!(out, [64, -127, 32]);
        assert!((s - 1.0 / 127.0).abs() < 1e-9);
        assert_eq!(quantise_i8(&[0.0; 3], &mut out), 0.0);
        assert_eq!(out, [0; 3]);
        // Ties to even, both signs, in and past the eight-lane part.
        let row = [127.0, 2.5, -2.5, 1.5, -0.4, 3.5, -126.6, 0.0, 62.5, -63.5];
        let mut out = [0i8; 10];
        assert_eq!(quantise_i8(&row, &mut out), 1.0);
        assert_eq!(out, [127, 2, -2, 2, 0, 4, -127, 0, 62, -64]);
        // A NaN is skipped by the maximum and quantised to some value, not a panic; an
        // infinite row is a zero row.
        assert_eq!(quantise_i8(&[f32::INFINITY, 1.0, 2.0], &mut out[..3]), 0.0);
        assert!(quantise_i8(&[f32::NAN, 1.0, 2.0], &mut out[..3]) > 0.0);
    }

    #[test]
    fn half_precision_round_trips_every_value_and_rounds_to_nearest_even() {
        for h in 0..=u16::MAX {
            let x = from_f16(h);
            if x.is_nan() {
                assert!(from_f16(to_f16(x)).is_nan(), "{h:#x}");
            } else {
                assert_eq!(to_f16(x), h, "{h:#x} = {x}");
            }
        }
        for h in (0..=u16::MAX).filter(|h| h & 0x7c00 != 0x7c00) {
            assert_eq!(from_f16_finite(h).to_bits(), from_f16(h).to_bits(), "{h:#x}");
        }
        // Known values, halfway cases (ties to even), the subnormal edge and overflow.
        assert_eq!(to_f16(1.0), 0x3c00);
        assert_eq!(to_f16(-2.0), 0xc000);
        assert_eq!(to_f16(1.0 + 1.0 / 2048.0), 0x3c00);
        assert_eq!(to_f16(1.0 + 3.0 / 2048.0), 0x3c02);
        assert_eq!(to_f16(65504.0), 0x7bff);
        assert_eq!(to_f16(65520.0), 0x7c00);
        assert_eq!(to_f16(1e9), 0x7c00);
        assert_eq!(to_f16(f32::from_bits(0x3880_0000)), 0x0400);
        assert_eq!(to_f16(2f32.powi(-24)), 0x0001);
        assert_eq!(to_f16(2f32.powi(-26)), 0x0000);
        assert_eq!(to_f16(0.1), 0x2e66);
        // Every float32 between two halves goes to the nearer one.
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..100_000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            // Finite halves only (below 65280), either sign.
            let sign = if rng >> 40 & 1 == 1 { -1.0 } else { 1.0 };
            let x = f32::from_bits(rng as u32 & 0x477e_ffff) * sign;
            let h = to_f16(x);
            let err = (from_f16(h) - x).abs();
            for n in [h.wrapping_add(1), h.wrapping_sub(1)].map(from_f16) {
                assert!(n.is_nan() || err <= (n - x).abs(), "{x}");
            }
        }
    }
}
