//! The matcher's scan: every template row against one query, as a per-person maximum. Rows are
//! float32, or int8 with one scale per row (a quarter of the bytes: the scan of a large gallery
//! is a read of memory, so the bytes are its cost); against int8 rows the query is quantised
//! too (its own scale) and the products summed as integers, which keeps the arithmetic below
//! the memory read (`portier bench match`). The loops are written so the compiler
//! vectorises them (NEON on the Pi, baseline on aarch64); on x86-64 the same code is compiled a
//! second time with AVX2 and FMA and chosen at run time when the CPU has them.
//!
//! Must not: allocate, or depend on the row count beyond the slices it is given.

/// Template rows in one of the storages.
#[derive(Debug, Clone, Copy)]
pub enum RowsRef<'a> {
    /// Row-major float32.
    F32(&'a [f32]),
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
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA (checked just above), the only requirement of a
        // `#[target_feature]` function; the function itself is safe code.
        unsafe { scan_avx2(rows, dim, person_end, query, f) };
        return;
    }
    scan_portable(rows, dim, person_end, query, f);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
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
                (RowsRef::F32(data), _) => dot_f32(&data[r * dim..(r + 1) * dim], query),
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

/// Sixteen independent partial sums: two AVX2 registers (four NEON ones) in flight.
const LANES: usize = 16;

#[inline(always)]
fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (ac, bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for k in 0..LANES {
            acc[k] = x[k].mul_add(y[k], acc[k]);
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
            acc[k] = f32::from(x[k]).mul_add(y[k], acc[k]);
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

/// Quantises a row to int8 with its own scale (the largest magnitude maps to 127); returns the
/// scale. A zero row gets scale 0.
pub fn quantise_i8(row: &[f32], out: &mut [i8]) -> f32 {
    let max = row.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    if max == 0.0 || !max.is_finite() {
        out.fill(0);
        return 0.0;
    }
    let scale = max / 127.0;
    for (o, x) in out.iter_mut().zip(row) {
        *o = (x / scale).round().clamp(-127.0, 127.0) as i8;
    }
    scale
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
    }
}
