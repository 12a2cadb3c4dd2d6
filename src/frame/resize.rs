//! The exact resampler: Pillow's two-pass convolution (horizontal then vertical, 22-bit fixed
//! point weights), bit-identical to it, into caller-owned buffers, optionally split into
//! horizontal bands on every core ([`crate::par`]); the model's planes written straight from
//! the last pass ([`Planes`]).
//!
//! Must not: allocate per frame once warm (scratch rows are kept per band), or differ by one
//! byte between its kernels (scalar, AVX2, AVX-512: `tests` compares them all).

use std::sync::{Mutex, PoisonError};

use super::taps::{clip8, horizontal_row, ResampleTaps, WEIGHT_BITS};
use super::{Filter, ImageView};
use crate::par::{Bands, MAX_BANDS};

/// One thread's buffers for a band of output rows.
#[derive(Debug, Default)]
struct Scratch {
    /// Horizontally resampled source rows, planar per row (rounded between passes, as Pillow
    /// does).
    tmp: Vec<u8>,
    /// One output row's fixed-point sums in the vertical pass.
    acc: Vec<i32>,
}

/// Caller-owned state for resizing: the filter taps, the intermediate buffers and, optionally,
/// helper threads that compute bands of output rows in parallel.
#[derive(Debug, Default)]
pub struct Resizer {
    horizontal: ResampleTaps,
    vertical: ResampleTaps,
    /// One per band.
    scratch: [Mutex<Scratch>; MAX_BANDS],
    /// The last result, planar per row (see [`Resizer::resize_planar`]).
    planar: Vec<u8>,
    bands: Option<Bands>,
}

impl Resizer {
    /// A resizer that splits each resize into bands of output rows computed on `bands` threads
    /// at once (the caller's and helpers started now). The result is the same as with one.
    pub fn with_bands(bands: Bands) -> Self {
        Self { bands: Some(bands), ..Self::default() }
    }

    /// Resizes `src` to `dst_w` x `dst_h` and writes the result into the top-left corner of `dst`
    /// (whose row stride is `dst_stride_px` pixels), interleaved RGB.
    pub fn resize_into(
        &mut self,
        src: ImageView<'_>,
        dst: &mut [u8],
        dst_stride_px: usize,
        dst_w: u32,
        dst_h: u32,
        filter: Filter,
    ) {
        let dw = dst_w as usize;
        let planar = self.resize_planar(src, dst_w, dst_h, filter);
        for (y, row) in planar.chunks_exact(dw * 3).enumerate() {
            let out = &mut dst[y * dst_stride_px * 3..y * dst_stride_px * 3 + dw * 3];
            let (r, rest) = row.split_at(dw);
            let (g, b) = rest.split_at(dw);
            for (o, ((&r, &g), &b)) in out.chunks_exact_mut(3).zip(r.iter().zip(g).zip(b)) {
                o.copy_from_slice(&[r, g, b]);
            }
        }
    }

    /// Resizes `src` to `dst_w` x `dst_h` and returns the result planar per row: each of the
    /// `dst_h` rows is `dst_w` red bytes, then `dst_w` green, then `dst_w` blue. Separable:
    /// horizontal pass, then vertical, bit-identical to Pillow's.
    pub fn resize_planar(
        &mut self,
        src: ImageView<'_>,
        dst_w: u32,
        dst_h: u32,
        filter: Filter,
    ) -> &[u8] {
        self.resize_bands(src, dst_w, dst_h, filter, None);
        &self.planar[..dst_w as usize * dst_h as usize * 3]
    }

    /// Resizes `src` to `dst_w` x `dst_h` into `target`'s float planes (a model's NCHW
    /// input): each output row is handed to the target's converter as soon as it is resized,
    /// on the thread that resized it, while its bytes are still in that core's cache.
    ///
    /// # Panics
    /// If a plane holds fewer than `dst_h` rows of the target's stride, or the stride is
    /// less than `dst_w`.
    pub fn resize_to_planes(
        &mut self,
        src: ImageView<'_>,
        dst_w: u32,
        dst_h: u32,
        filter: Filter,
        target: Planes<'_>,
    ) {
        assert!(target.stride >= dst_w as usize, "plane narrower than the image");
        for p in &target.planes {
            assert!(p.len() >= dst_h as usize * target.stride, "plane shorter than the image");
        }
        self.resize_bands(src, dst_w, dst_h, filter, Some(target));
    }

    /// The resize behind [`Resizer::resize_planar`] and [`Resizer::resize_to_planes`]: equal
    /// bands of output rows, one per thread.
    fn resize_bands(
        &mut self,
        src: ImageView<'_>,
        dst_w: u32,
        dst_h: u32,
        filter: Filter,
        target: Option<Planes<'_>>,
    ) {
        let row_len = dst_w as usize * 3;
        let dh = dst_h as usize;
        let len = row_len * dh;
        self.planar.resize(len, 0);
        if len == 0 || src.width == 0 || src.height == 0 {
            return;
        }
        self.horizontal.prepare(src.width, dst_w, filter);
        self.vertical.prepare(src.height, dst_h, filter);
        let job = Band { h: &self.horizontal, v: &self.vertical, src };
        let n = self.bands.as_ref().map_or(1, Bands::count).min(dh);
        let per = dh.div_ceil(n);
        // Each band's slice of the output and of each plane.
        type Parts<'p> = (&'p mut [u8], [&'p mut [f32]; 3]);
        let mut parts: [Mutex<Option<Parts<'_>>>; MAX_BANDS] = Default::default();
        let (convert, plane_w) = match &target {
            Some(t) => (Some(t.convert), t.stride),
            None => (None, 0),
        };
        let [mut p0, mut p1, mut p2] = match target {
            Some(t) => t.planes.map(|p| &mut p[..dh * plane_w]),
            None => Default::default(),
        };
        let mut out = &mut self.planar[..len];
        for slot in parts.iter_mut().take(n) {
            let rows = per.min(out.len() / row_len);
            let (o, rest) = std::mem::take(&mut out).split_at_mut(rows * row_len);
            out = rest;
            let planes = [&mut p0, &mut p1, &mut p2].map(|p| {
                let k = (rows * plane_w).min(p.len());
                let (head, tail) = std::mem::take(p).split_at_mut(k);
                *p = tail;
                head
            });
            *slot = Mutex::new(Some((o, planes)));
        }
        let scratch = &self.scratch;
        let run_band = |i: usize| {
            let rows = (i * per).min(dh)..((i + 1) * per).min(dh);
            if rows.is_empty() {
                return;
            }
            let Some((out, planes)) =
                parts[i].lock().unwrap_or_else(PoisonError::into_inner).take()
            else {
                return;
            };
            let mut scratch = scratch[i].lock().unwrap_or_else(PoisonError::into_inner);
            match convert {
                Some(convert) => {
                    // Each row goes into the planes while its bytes are still in the cache.
                    let [p0, p1, p2] = planes;
                    job.run(&mut scratch, rows, out, &mut |r, row| {
                        let span = r * plane_w..(r + 1) * plane_w;
                        let planes = [&mut p0[span.clone()], &mut p1[span.clone()], &mut p2[span]];
                        convert(row, planes);
                    });
                }
                None => job.run(&mut scratch, rows, out, &mut |_, _| {}),
            }
        };
        match &mut self.bands {
            Some(bands) if n > 1 => bands.run(&run_band),
            _ => run_band(0),
        }
    }
}

/// Converts one resized row, planar (`width` red bytes, then green, then blue), into the same
/// row of three float planes (each the plane's full stride; the first `width` floats are the
/// image's).
pub type RowConvert<'a> = dyn Fn(&[u8], [&mut [f32]; 3]) + Sync + 'a;

/// Where [`Resizer::resize_to_planes`] writes: three float planes whose rows are `stride`
/// floats apart, and the conversion of each resized row into them.
pub struct Planes<'a> {
    /// The planes, in the order the converter fills them.
    pub planes: [&'a mut [f32]; 3],
    /// Floats from one row of a plane to the next (at least the output width).
    pub stride: usize,
    /// The conversion, called once per output row from whichever thread resized it.
    pub convert: &'a RowConvert<'a>,
}

impl std::fmt::Debug for Planes<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Planes").field("stride", &self.stride).finish_non_exhaustive()
    }
}

/// Most vertical taps summed in registers (more fall back to a row accumulator).
const MAX_FUSED_TAPS: usize = 8;

/// One output row of the vertical pass: the weighted sum of `rows` (one per tap), rounded to
/// bytes. Sixteen columns at a time, every tap summed in registers before one store; the
/// compiler turns the fixed-size loops into vector code.
#[inline(always)]
fn vertical_row(rows: &[&[u8]], w: &[i32], out: &mut [u8]) {
    const L: usize = 16;
    let half = 1i32 << (WEIGHT_BITS - 1);
    let full = out.len() / L * L;
    for (c, o) in out[..full].chunks_exact_mut(L).enumerate() {
        let mut acc = [half; L];
        for (row, &wk) in rows.iter().zip(w) {
            // Always 16 bytes (`full` is a multiple of 16 and no longer than a row).
            let p: &[u8; L] = row[c * L..c * L + L].try_into().unwrap_or(&[0; L]);
            for (a, &p) in acc.iter_mut().zip(p) {
                *a += i32::from(p) * wk;
            }
        }
        for (o, a) in o.iter_mut().zip(acc) {
            *o = clip8(a);
        }
    }
    for (i, o) in out.iter_mut().enumerate().skip(full) {
        let mut a = half;
        for (row, &wk) in rows.iter().zip(w) {
            a += i32::from(row[i]) * wk;
        }
        *o = clip8(a);
    }
}

/// Which code computes the horizontal pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    /// Portable Rust (the only one off x86-64).
    Scalar,
    /// Two output pixels per 256-bit register.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// Four output pixels per 512-bit register, windows gathered with `vpermb`.
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// One output pixel per iteration, its window split into channels by `ld3`.
    #[cfg(target_arch = "aarch64")]
    #[cfg_attr(portier_portable_kernels, allow(dead_code))]
    Neon,
}

/// The prepared taps and source of one resize, shared by the threads that compute its bands.
#[derive(Clone, Copy)]
struct Band<'a> {
    h: &'a ResampleTaps,
    v: &'a ResampleTaps,
    src: ImageView<'a>,
}

impl Band<'_> {
    /// Computes output rows `rows` into `out` (exactly those rows, planar per row).
    /// Computes output rows `rows` into `out` (exactly those rows, planar per row), handing
    /// each row to `on_row` (with its index in `rows`) as soon as it is done.
    fn run(
        &self,
        scratch: &mut Scratch,
        rows: std::ops::Range<usize>,
        out: &mut [u8],
        on_row: &mut dyn FnMut(usize, &[u8]),
    ) {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            let kernel = if super::simd::has_avx512() && !self.h.group_offsets.is_empty() {
                Kernel::Avx512
            } else if self.h.max_taps <= 8 {
                Kernel::Avx2
            } else {
                Kernel::Scalar
            };
            // SAFETY: the CPU supports AVX2 (checked just above), and AVX-512 when that kernel
            // was chosen, the requirements of the `target_feature` functions; `kernel` was
            // chosen by what the CPU has and the taps allow.
            unsafe {
                if kernel == Kernel::Avx512 {
                    self.passes_avx512(scratch, rows, out, kernel, on_row);
                } else {
                    self.passes_avx2(scratch, rows, out, kernel, on_row);
                }
            }
            return;
        }
        // NEON is aarch64's baseline: the vertical pass is vectorised by the compiler in
        // every build, the horizontal one is written out (`portier_portable_kernels`: the
        // portable one, to measure the difference).
        #[cfg(all(target_arch = "aarch64", not(portier_portable_kernels)))]
        if !self.h.weights8.is_empty() {
            self.passes(scratch, rows, out, Kernel::Neon, on_row);
            return;
        }
        self.passes(scratch, rows, out, Kernel::Scalar, on_row);
    }

    /// The two passes compiled for AVX2, where 32-bit multiplies vectorise (x86-64's baseline,
    /// SSE2, has none). Same code, same results.
    ///
    /// # Safety
    /// The CPU must have what `kernel` needs.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn passes_avx2(
        &self,
        scratch: &mut Scratch,
        rows: std::ops::Range<usize>,
        out: &mut [u8],
        kernel: Kernel,
        on_row: &mut dyn FnMut(usize, &[u8]),
    ) {
        self.passes(scratch, rows, out, kernel, on_row);
    }

    /// The two passes compiled for AVX-512: the vertical pass in 512-bit vectors.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F and BW, and what `kernel` needs.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx2")]
    unsafe fn passes_avx512(
        &self,
        scratch: &mut Scratch,
        rows: std::ops::Range<usize>,
        out: &mut [u8],
        kernel: Kernel,
        on_row: &mut dyn FnMut(usize, &[u8]),
    ) {
        self.passes(scratch, rows, out, kernel, on_row);
    }

    /// Horizontal then vertical pass for output rows `rows`, the horizontal one with `kernel`
    /// (whose instructions the caller has checked the CPU has).
    #[inline(always)]
    fn passes(
        &self,
        scratch: &mut Scratch,
        rows: std::ops::Range<usize>,
        out: &mut [u8],
        kernel: Kernel,
        on_row: &mut dyn FnMut(usize, &[u8]),
    ) {
        let (h, v, src) = (self.h, self.v, self.src);
        let (sw, sh, dw) = (src.width as usize, src.height as usize, h.dst_len as usize);
        let row_len = dw * 3;
        if rows.is_empty() {
            return;
        }
        // Source rows are resampled horizontally just before the first output row that reads
        // them, into a ring of `v.max_taps` rows (an output row reads at most that many
        // consecutive source rows, and later output rows never read earlier ones): the
        // intermediate rows stay in the core's cache between the two passes.
        let cap = v.max_taps.max(1);
        scratch.tmp.resize(cap * row_len, 0);
        let half = 1i32 << (WEIGHT_BITS - 1);
        scratch.acc.resize(row_len, 0);
        let mut next = v.starts[rows.start] as usize;
        for (i, (y, out_row)) in rows.zip(out.chunks_exact_mut(row_len)).enumerate() {
            let start = v.starts[y] as usize;
            let n = v.counts[y] as usize;
            next = next.max(start);
            while next < (start + n).min(sh) {
                let src_row = &src.data[next * sw * 3..(next + 1) * sw * 3];
                let slot = next % cap;
                let tmp_row = &mut scratch.tmp[slot * row_len..(slot + 1) * row_len];
                match kernel {
                    // SAFETY: the caller checked the CPU; this kernel was only chosen with at
                    // most 8 taps.
                    #[cfg(target_arch = "x86_64")]
                    Kernel::Avx2 => unsafe {
                        super::simd::horizontal_row_avx2(h, src_row, tmp_row)
                    },
                    // SAFETY: the caller checked the CPU; this kernel was only chosen with the
                    // group tables filled.
                    #[cfg(target_arch = "x86_64")]
                    Kernel::Avx512 => unsafe {
                        super::simd::horizontal_row_avx512(h, src_row, tmp_row);
                    },
                    #[cfg(target_arch = "aarch64")]
                    Kernel::Neon => super::neon::horizontal_row_neon(h, src_row, tmp_row),
                    Kernel::Scalar => horizontal_row(h, src_row, tmp_row, 0),
                }
                next += 1;
            }
            // Vertical pass.
            let w = &v.weights[y * v.max_taps..y * v.max_taps + n];
            let slot = |k: usize| ((start + k) % cap) * row_len;
            if n <= MAX_FUSED_TAPS {
                let mut tap_rows: [&[u8]; MAX_FUSED_TAPS] = [&[]; MAX_FUSED_TAPS];
                for (k, r) in tap_rows.iter_mut().take(n).enumerate() {
                    *r = &scratch.tmp[slot(k)..slot(k) + row_len];
                }
                vertical_row(&tap_rows[..n], w, out_row);
                on_row(i, out_row);
                continue;
            }
            // Many taps (a large shrink): each tap adds a whole weighted row.
            scratch.acc.fill(half);
            for (k, &wk) in w.iter().enumerate() {
                let row = &scratch.tmp[slot(k)..slot(k) + row_len];
                for (a, &p) in scratch.acc.iter_mut().zip(row) {
                    *a += i32::from(p) * wk;
                }
            }
            for (o, &a) in out_row.iter_mut().zip(&scratch.acc) {
                *o = clip8(a);
            }
            on_row(i, out_row);
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::frame::RgbImage;

    pub(crate) fn gradient(w: u32, h: u32) -> RgbImage {
        let mut img = RgbImage::new(w, h);
        for y in 0..h {
            for x in 0..w {
                let i = (y * w + x) as usize * 3;
                img.as_bytes_mut()[i] = (x * 255 / (w - 1).max(1)) as u8;
                img.as_bytes_mut()[i + 1] = (y * 255 / (h - 1).max(1)) as u8;
                img.as_bytes_mut()[i + 2] = 77;
            }
        }
        img
    }

    fn noise(w: u32, h: u32, seed: u32) -> RgbImage {
        let mut state = seed;
        let mut img = RgbImage::new(w, h);
        for v in img.as_bytes_mut() {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
            *v = (state >> 16) as u8;
        }
        img
    }

    /// The two passes as Pillow writes them, with none of the speed-ups: every source row
    /// resampled horizontally into a full intermediate image, then every output row summed
    /// from it. Interleaved RGB out.
    fn reference_resize(src: &RgbImage, dw: u32, dh: u32, filter: Filter) -> Vec<u8> {
        let (mut h, mut v) = (ResampleTaps::default(), ResampleTaps::default());
        h.prepare(src.width(), dw, filter);
        v.prepare(src.height(), dh, filter);
        let (sw, dwu) = (src.width() as usize, dw as usize);
        let mut tmp = vec![0u8; src.height() as usize * dwu * 3];
        for (y, t) in tmp.chunks_exact_mut(dwu * 3).enumerate() {
            horizontal_row(&h, &src.as_bytes()[y * sw * 3..(y + 1) * sw * 3], t, 0);
        }
        let mut out = vec![0u8; dwu * dh as usize * 3];
        for y in 0..dh as usize {
            let (start, n) = (v.starts[y] as usize, v.counts[y] as usize);
            for c in 0..3 {
                for x in 0..dwu {
                    let mut acc = 1i32 << (WEIGHT_BITS - 1);
                    for k in 0..n {
                        let p = tmp[(start + k) * dwu * 3 + c * dwu + x];
                        acc += i32::from(p) * v.weights[y * v.max_taps + k];
                    }
                    out[(y * dwu + x) * 3 + c] = clip8(acc);
                }
            }
        }
        out
    }

    /// Every kernel this CPU has, in bands or not, gives the reference's bytes: the letterbox
    /// of a 1080p frame, odd sizes, enlargements, and shrinks too wide for the SIMD kernels.
    #[test]
    fn every_kernel_and_band_split_gives_the_reference_bytes() {
        let cases: [(u32, u32, u32, u32, Filter); 7] = [
            (1920, 1080, 640, 360, Filter::Antialiased),
            (1382, 1868, 474, 640, Filter::Antialiased),
            (1280, 720, 640, 360, Filter::Antialiased),
            (301, 157, 97, 53, Filter::Antialiased),
            (120, 90, 333, 250, Filter::Antialiased),
            (997, 601, 64, 39, Filter::Antialiased),
            (640, 480, 413, 311, Filter::Bilinear),
        ];
        let mut multi = Resizer::with_bands(Bands::new(3));
        let mut single = Resizer::default();
        for (i, &(sw, sh, dw, dh, filter)) in cases.iter().enumerate() {
            let img = noise(sw, sh, 7 + i as u32);
            let expected = reference_resize(&img, dw, dh, filter);
            for (name, r) in [("3 bands", &mut multi), ("1 band", &mut single)] {
                let mut got = vec![0u8; expected.len()];
                r.resize_into(img.view(), &mut got, dw as usize, dw, dh, filter);
                assert!(got == expected, "{name}: {sw}x{sh} -> {dw}x{dh} {filter:?}");
            }
            // Each kernel on its own, whichever the dispatch would pick: the portable one (what
            // the Pi runs) and every SIMD one this CPU has.
            let (mut h, mut v) = (ResampleTaps::default(), ResampleTaps::default());
            h.prepare(sw, dw, filter);
            v.prepare(sh, dh, filter);
            let band = Band { h: &h, v: &v, src: img.view() };
            for kernel in kernels_for(&h) {
                let mut planar = vec![0u8; expected.len()];
                let rows = 0..dh as usize;
                let mut scratch = Scratch::default();
                match kernel {
                    Kernel::Scalar => {
                        band.passes(&mut scratch, rows, &mut planar, kernel, &mut |_, _| {});
                    }
                    #[cfg(target_arch = "aarch64")]
                    Kernel::Neon => {
                        band.passes(&mut scratch, rows, &mut planar, kernel, &mut |_, _| {});
                    }
                    // SAFETY: `kernels_for` lists only kernels the CPU has and the taps fit.
                    #[cfg(target_arch = "x86_64")]
                    _ => unsafe {
                        band.passes_avx2(&mut scratch, rows, &mut planar, kernel, &mut |_, _| {});
                    },
                }
                let row_len = dw as usize * 3;
                let mut interleaved = vec![0u8; expected.len()];
                for (o, row) in
                    interleaved.chunks_exact_mut(row_len).zip(planar.chunks_exact(row_len))
                {
                    for x in 0..dw as usize {
                        for c in 0..3 {
                            o[x * 3 + c] = row[c * dw as usize + x];
                        }
                    }
                }
                assert!(interleaved == expected, "{kernel:?}: {sw}x{sh} -> {dw}x{dh} {filter:?}");
            }
        }
    }

    /// The horizontal kernels this CPU can run with these taps.
    fn kernels_for(h: &ResampleTaps) -> Vec<Kernel> {
        #[allow(unused_mut)]
        let mut kernels = vec![Kernel::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") && h.max_taps <= 8 {
                kernels.push(Kernel::Avx2);
            }
            if crate::frame::simd::has_avx512() && !h.group_offsets.is_empty() {
                kernels.push(Kernel::Avx512);
            }
        }
        #[cfg(target_arch = "aarch64")]
        if !h.weights8.is_empty() {
            kernels.push(Kernel::Neon);
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        let _ = h;
        kernels
    }

    /// The NEON horizontal pass gives the scalar pass's bytes, row by row, for shrinks and
    /// enlargements (it finishes the row's end with the scalar code). Run in CI under
    /// `qemu-aarch64`.
    #[cfg(target_arch = "aarch64")]
    #[test]
    fn neon_horizontal_pass_is_bit_identical_to_scalar() {
        let mut checked = 0;
        for (src, dst, filter) in [
            (1280, 640, Filter::Antialiased),
            (1920, 640, Filter::Antialiased),
            (1280, 517, Filter::Antialiased),
            (1931, 1931, Filter::Antialiased),
            (1931, 700, Filter::Bilinear),
            (1931, 2500, Filter::Antialiased),
            (1931, 483, Filter::Antialiased),
        ] {
            let row = noise(src, 1, 99 + dst);
            let mut taps = ResampleTaps::default();
            taps.prepare(src, dst, filter);
            if taps.weights8.is_empty() {
                continue;
            }
            let mut scalar = vec![0u8; dst as usize * 3];
            let mut neon = vec![1u8; dst as usize * 3];
            horizontal_row(&taps, row.as_bytes(), &mut scalar, 0);
            crate::frame::neon::horizontal_row_neon(&taps, row.as_bytes(), &mut neon);
            assert_eq!(scalar, neon, "{src} -> {dst} {filter:?}");
            checked += 1;
        }
        assert_eq!(checked, 6, "every case but the 4x shrink (9 taps) has at most 8");
        // Rows narrower than one 8-pixel window (the scalar code does them), and taps without
        // the padded weights (more than 8 taps: the scalar code does the whole row).
        for src in 1..=10 {
            for dst in [1, src, 2 * src] {
                let row = noise(src, 1, dst);
                let mut taps = ResampleTaps::default();
                taps.prepare(src, dst, Filter::Antialiased);
                let mut scalar = vec![0u8; dst as usize * 3];
                let mut neon = vec![1u8; dst as usize * 3];
                horizontal_row(&taps, row.as_bytes(), &mut scalar, 0);
                crate::frame::neon::horizontal_row_neon(&taps, row.as_bytes(), &mut neon);
                assert_eq!(scalar, neon, "{src} -> {dst}");
                taps.weights8.clear();
                crate::frame::neon::horizontal_row_neon(&taps, row.as_bytes(), &mut neon);
                assert_eq!(scalar, neon, "{src} -> {dst}, no padded weights");
            }
        }
    }

    /// Each SIMD horizontal kernel this CPU has gives the scalar pass's bytes, row by row, for
    /// shrinks and enlargements (the kernels finish the row's end with other code).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn simd_horizontal_passes_are_bit_identical_to_scalar() {
        type Pass = unsafe fn(&ResampleTaps, &[u8], &mut [u8]);
        type Usable = fn(&ResampleTaps) -> bool;
        let kernels: [(&str, bool, Pass, Usable); 2] = [
            (
                "AVX2",
                std::is_x86_feature_detected!("avx2"),
                crate::frame::simd::horizontal_row_avx2,
                |t| t.max_taps <= 8,
            ),
            (
                "AVX-512",
                crate::frame::simd::has_avx512(),
                crate::frame::simd::horizontal_row_avx512,
                |t| !t.group_offsets.is_empty(),
            ),
        ];
        let row = noise(1931, 1, 99);
        for (name, present, pass, usable) in kernels {
            if !present {
                eprintln!("notice: no {name} on this CPU; that kernel is never chosen");
                continue;
            }
            for (dst, filter) in [
                (640, Filter::Antialiased),
                (517, Filter::Antialiased),
                (1931, Filter::Antialiased),
                (700, Filter::Bilinear),
                (2500, Filter::Antialiased),
                (483, Filter::Antialiased),
            ] {
                let mut taps = ResampleTaps::default();
                taps.prepare(1931, dst, filter);
                if !usable(&taps) {
                    continue;
                }
                let mut scalar = vec![0u8; dst as usize * 3];
                let mut simd = vec![1u8; dst as usize * 3];
                horizontal_row(&taps, row.as_bytes(), &mut scalar, 0);
                // SAFETY: the CPU has the kernel's features (`present`) and the taps fit it
                // (`usable`).
                unsafe { pass(&taps, row.as_bytes(), &mut simd) };
                assert_eq!(scalar, simd, "{name}: {dst} {filter:?}");
            }
        }
    }

    #[test]
    fn identity_resize_is_exact() {
        let img = gradient(37, 23);
        for filter in [Filter::Bilinear, Filter::Antialiased] {
            let mut out = vec![0u8; 37 * 23 * 3];
            Resizer::default().resize_into(img.view(), &mut out, 37, 37, 23, filter);
            assert_eq!(out, img.as_bytes());
        }
    }

    #[test]
    fn constant_image_stays_constant() {
        let mut img = RgbImage::new(300, 200);
        img.as_bytes_mut().fill(200);
        for filter in [Filter::Bilinear, Filter::Antialiased] {
            for (w, h) in [(64, 43), (640, 427), (7, 5)] {
                let mut out = vec![0u8; w * h * 3];
                Resizer::default().resize_into(img.view(), &mut out, w, w as u32, h as u32, filter);
                assert!(out.iter().all(|&v| v == 200), "{filter:?} {w}x{h}");
            }
        }
    }

    #[test]
    fn downscale_of_gradient_is_monotonic_and_centred() {
        let img = gradient(1000, 10);
        let mut out = vec![0u8; 100 * 10 * 3];
        Resizer::default().resize_into(img.view(), &mut out, 100, 100, 10, Filter::Antialiased);
        let reds: Vec<u8> = (0..100).map(|x| out[x * 3]).collect();
        assert!(reds.windows(2).all(|w| w[0] <= w[1]));
        // Output pixel 50 covers source 500..510, whose mean red is ~129.
        assert!((i32::from(reds[50]) - 129).abs() <= 1, "{}", reds[50]);
    }

    #[test]
    fn writes_into_padded_destination() {
        let img = gradient(20, 20);
        let mut out = vec![9u8; 16 * 16 * 3];
        Resizer::default().resize_into(img.view(), &mut out, 16, 10, 10, Filter::Bilinear);
        // Outside the 10x10 corner nothing changed.
        assert_eq!(out[(15 * 16 + 15) * 3], 9);
        assert_eq!(out[(2 * 16 + 12) * 3], 9);
    }
}
