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
    let (sw, sh) = (src.width() as usize, src.height() as usize);
    let data = src.as_bytes();
    let [[a, b, c], [d, e, f]] = inverse.0;
    for y in 0..height {
        let yc = y as f64 + 0.5;
        for x in 0..width {
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
