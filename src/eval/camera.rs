//! Camera-like degradation for `portier eval distance`: what a door camera does to a far face
//! besides giving it fewer pixels. Applied to the frame the detector sees (the sweep's canvas)
//! after the exact downscale, in a camera's order:
//!
//! 1. **Blur**: the lens's own blur (`optical_blur`, a Gaussian sigma in pixels, the same at
//!    every distance: lens, demosaicing) and **defocus**. A fixed-focus lens focused where the
//!    eyes are `focus_eye_px` apart blurs a subject at another distance into a disc whose
//!    diameter in pixels is `defocus_px * |1 - e / focus_eye_px|` for a face whose eyes are `e`
//!    px apart (thin lens: the blur circle is proportional to `|1/d - 1/d_focus|`, and `e` to
//!    `1/d`; `defocus_px` is the disc of a subject at infinity). The disc is applied as the
//!    Gaussian of the same variance (sigma = diameter / 4).
//! 2. **Sensor noise**: Gaussian, `noise` levels of 8 bits, independent per sample, from a
//!    deterministic generator seeded per photo and size (runs are repeatable).
//! 3. **MJPEG**: encoded at `jpeg_quality` (the `image` crate's encoder, 4:2:0 chroma; a UVC
//!    camera usually sends 4:2:2, so this loses a little more colour) and decoded by the
//!    appliance's own libjpeg-turbo decoder.
//!
//! Only the neighbourhood of the face is degraded ([`CameraArgs::degrade_around`]: the face box
//! and twice its size on every side, on the 16-pixel grid of the frame's JPEG blocks): that is
//! all the measurement looks at, and it keeps the sweep's run time near that of the clean sweep.
//!
//! Must not: pretend to be a measured camera. The numbers are a technician's choice (README,
//! "NPU and routing", gives the ones behind docs/distance/); `eval distance` reports them.

use clap::Args;
use serde::Serialize;

use crate::frame::RgbImage;

/// The degradation options of `portier eval distance`; all zero: none.
#[derive(Args, Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct CameraArgs {
    /// Defocus: blur-disc diameter in frame pixels of a subject at infinity; a face whose eyes
    /// are `e` px apart gets `DEFOCUS_PX * |1 - e / FOCUS_EYE_PX|` (0: none).
    #[arg(long, default_value_t = 0.0)]
    pub defocus_px: f32,
    /// Where the lens is focused, as the eye distance in pixels of a face at that distance.
    #[arg(long, default_value_t = 48.0)]
    pub focus_eye_px: f32,
    /// Blur of the optics at every distance: Gaussian sigma in frame pixels (0: none).
    #[arg(long, default_value_t = 0.0)]
    pub optical_blur: f32,
    /// Sensor noise: Gaussian sigma in 8-bit levels (0: none).
    #[arg(long, default_value_t = 0.0)]
    pub noise: f32,
    /// MJPEG re-compression at this JPEG quality, 1 to 100 (0: none).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub jpeg_quality: u8,
}

impl CameraArgs {
    /// Whether any degradation is asked for.
    pub fn any(&self) -> bool {
        self.defocus_px > 0.0
            || self.optical_blur > 0.0
            || self.noise > 0.0
            || self.jpeg_quality > 0
    }

    /// Checks the values (finite, not negative, a focus distance above zero).
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("--defocus-px", self.defocus_px),
            ("--optical-blur", self.optical_blur),
            ("--noise", self.noise),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("{name}: must be a number >= 0, got {v}"));
            }
        }
        if !(self.focus_eye_px.is_finite() && self.focus_eye_px > 0.0) {
            return Err(format!("--focus-eye-px: must be > 0, got {}", self.focus_eye_px));
        }
        Ok(())
    }

    /// One line for the report: what was applied.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.defocus_px > 0.0 {
            parts.push(format!(
                "defocus {} px at infinity, focused at {} px eye distance",
                self.defocus_px, self.focus_eye_px
            ));
        }
        if self.optical_blur > 0.0 {
            parts.push(format!("optical blur sigma {} px", self.optical_blur));
        }
        if self.noise > 0.0 {
            parts.push(format!("sensor noise sigma {} levels", self.noise));
        }
        if self.jpeg_quality > 0 {
            parts.push(format!("MJPEG quality {}", self.jpeg_quality));
        }
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join(", ")
        }
    }

    /// The Gaussian sigma, in pixels, of the blur a face `eye_px` apart gets.
    pub fn blur_sigma(&self, eye_px: f32) -> f32 {
        let disc = self.defocus_px * (1.0 - eye_px / self.focus_eye_px).abs();
        (self.optical_blur.powi(2) + (disc / 4.0).powi(2)).sqrt()
    }

    /// Degrades `frame` (holding a face `eye_px` apart) in place; `seed` makes the noise
    /// repeatable.
    pub fn degrade(&self, frame: &mut RgbImage, eye_px: f32, seed: u64) -> Result<(), String> {
        let sigma = self.blur_sigma(eye_px);
        if sigma >= 0.05 {
            gaussian_blur(frame, sigma);
        }
        if self.noise > 0.0 {
            add_noise(frame, self.noise, seed);
        }
        if self.jpeg_quality > 0 {
            *frame = jpeg_round_trip(frame, self.jpeg_quality)?;
        }
        Ok(())
    }
}

impl CameraArgs {
    /// [`CameraArgs::degrade`] on the part of `frame` around `face_box` (x0, y0, x1, y1): the
    /// box grown by twice its width and height on every side, widened to multiples of 16
    /// pixels (whole JPEG blocks of the frame), clamped to the frame.
    pub fn degrade_around(
        &self,
        frame: &mut RgbImage,
        face_box: [f32; 4],
        eye_px: f32,
        seed: u64,
    ) -> Result<(), String> {
        let (fw, fh) = (frame.width(), frame.height());
        let (bw, bh) = ((face_box[2] - face_box[0]).abs(), (face_box[3] - face_box[1]).abs());
        let snap_down = |v: f32, max: u32| ((v.max(0.0) as u32) / 16 * 16).min(max);
        let snap_up =
            |v: f32, max: u32| (v.max(0.0).ceil() as u32).div_ceil(16).saturating_mul(16).min(max);
        let x0 = snap_down(face_box[0] - 2.0 * bw, fw);
        let y0 = snap_down(face_box[1] - 2.0 * bh, fh);
        let x1 = snap_up(face_box[2] + 2.0 * bw, fw);
        let y1 = snap_up(face_box[3] + 2.0 * bh, fh);
        if x1 <= x0 || y1 <= y0 {
            return Ok(());
        }
        let (w, h) = ((x1 - x0) as usize, (y1 - y0) as usize);
        let stride = fw as usize * 3;
        let mut crop = vec![0u8; w * h * 3];
        for y in 0..h {
            let src = (y0 as usize + y) * stride + x0 as usize * 3;
            crop[y * w * 3..(y + 1) * w * 3].copy_from_slice(&frame.as_bytes()[src..src + w * 3]);
        }
        let mut crop = RgbImage::from_raw(w as u32, h as u32, crop).map_err(|e| e.to_string())?;
        self.degrade(&mut crop, eye_px, seed)?;
        let out = frame.as_bytes_mut();
        for y in 0..h {
            let dst = (y0 as usize + y) * stride + x0 as usize * 3;
            out[dst..dst + w * 3].copy_from_slice(&crop.as_bytes()[y * w * 3..(y + 1) * w * 3]);
        }
        Ok(())
    }
}

/// A normalised 1-D Gaussian kernel of radius ceil(3 sigma).
fn kernel(sigma: f32) -> Vec<f32> {
    let r = (3.0 * sigma).ceil().max(1.0) as i32;
    let k: Vec<f32> = (-r..=r).map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp()).collect();
    let sum: f32 = k.iter().sum();
    k.into_iter().map(|v| v / sum).collect()
}

/// Separable Gaussian blur of an RGB image, edges clamped.
fn gaussian_blur(img: &mut RgbImage, sigma: f32) {
    let (w, h) = (img.width() as usize, img.height() as usize);
    if w == 0 || h == 0 {
        return;
    }
    let k = kernel(sigma);
    let r = (k.len() / 2) as isize;
    let src = img.as_bytes().to_vec();
    let mut tmp = vec![0f32; src.len()];
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                let mut acc = 0.0;
                for (t, kv) in k.iter().enumerate() {
                    let xx = (x as isize + t as isize - r).clamp(0, w as isize - 1) as usize;
                    acc += kv * f32::from(src[(y * w + xx) * 3 + c]);
                }
                tmp[(y * w + x) * 3 + c] = acc;
            }
        }
    }
    let out = img.as_bytes_mut();
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                let mut acc = 0.0;
                for (t, kv) in k.iter().enumerate() {
                    let yy = (y as isize + t as isize - r).clamp(0, h as isize - 1) as usize;
                    acc += kv * tmp[(yy * w + x) * 3 + c];
                }
                out[(y * w + x) * 3 + c] = acc.round().clamp(0.0, 255.0) as u8;
            }
        }
    }
}

/// SplitMix64: a small, well-mixed generator (repeatable noise and draws, no dependency).
pub(super) struct SplitMix(pub(super) u64);

impl SplitMix {
    pub(super) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0; the modulo bias is below 2^-40 for n below 2^24).
    pub(super) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Uniform in (0, 1].
    pub(super) fn unit(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    /// Two independent standard normal values (Box-Muller).
    fn normal_pair(&mut self) -> (f64, f64) {
        let (u, v) = (self.unit(), self.unit());
        let r = (-2.0 * u.ln()).sqrt();
        let a = std::f64::consts::TAU * v;
        (r * a.cos(), r * a.sin())
    }
}

/// Adds Gaussian noise of `sigma` levels to every sample.
fn add_noise(img: &mut RgbImage, sigma: f32, seed: u64) {
    let mut rng = SplitMix(seed);
    let noisy =
        |v: u8, n: f64| (f64::from(v) + n * f64::from(sigma)).round().clamp(0.0, 255.0) as u8;
    for pair in img.as_bytes_mut().chunks_mut(2) {
        let (a, b) = rng.normal_pair();
        pair[0] = noisy(pair[0], a);
        if let Some(second) = pair.get_mut(1) {
            *second = noisy(*second, b);
        }
    }
}

/// Encodes at `quality` and decodes with the appliance's decoder.
fn jpeg_round_trip(img: &RgbImage, quality: u8) -> Result<RgbImage, String> {
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, quality)
        .encode(img.as_bytes(), img.width(), img.height(), image::ExtendedColorType::Rgb8)
        .map_err(|e| format!("JPEG encoding: {e}"))?;
    crate::frame::decode_image(&bytes, std::path::Path::new("camera-like frame"))
        .map_err(|e| e.to_string())
}

/// The noise seed of a photo at a sweep size (repeatable, different for every pair).
pub fn seed(photo: usize, eye_px: u32) -> u64 {
    (photo as u64) << 32 | u64::from(eye_px)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sharp_edge() -> RgbImage {
        let mut img = RgbImage::new(32, 8);
        for (i, px) in img.as_bytes_mut().chunks_mut(3).enumerate() {
            px.fill(if i % 32 < 16 { 0 } else { 255 });
        }
        img
    }

    #[test]
    fn defocus_grows_away_from_the_focus_and_saturates() {
        let c = CameraArgs { defocus_px: 2.0, focus_eye_px: 48.0, ..Default::default() };
        assert_eq!(c.blur_sigma(48.0), 0.0);
        assert!((c.blur_sigma(12.0) - 0.375).abs() < 1e-6, "{}", c.blur_sigma(12.0));
        assert!(c.blur_sigma(8.0) > c.blur_sigma(12.0));
        assert!(c.blur_sigma(8.0) < 0.5, "never above the disc at infinity");
        let optics = CameraArgs { optical_blur: 0.5, ..c };
        assert!((optics.blur_sigma(48.0) - 0.5).abs() < 1e-6);
        assert!(!CameraArgs::default().any() && c.any());
        assert!(CameraArgs { noise: -1.0, ..c }.validate().is_err());
        assert!(CameraArgs { focus_eye_px: 0.0, ..c }.validate().is_err());
    }

    #[test]
    fn blur_softens_an_edge_and_keeps_flat_areas() {
        let mut img = sharp_edge();
        gaussian_blur(&mut img, 1.0);
        let row: Vec<u8> = img.as_bytes()[..32 * 3].chunks(3).map(|p| p[0]).collect();
        assert_eq!((row[0], row[31]), (0, 255), "flat areas stay");
        assert!(row[15] > 0 && row[16] < 255, "the edge is soft: {row:?}");
        assert!(row.windows(2).all(|w| w[0] <= w[1]), "monotone: {row:?}");
    }

    #[test]
    fn noise_is_repeatable_and_of_the_asked_size() {
        let mut a = RgbImage::new(64, 64);
        a.as_bytes_mut().fill(128);
        let mut b = a.clone();
        add_noise(&mut a, 3.0, seed(1, 12));
        add_noise(&mut b, 3.0, seed(1, 12));
        assert_eq!(a.as_bytes(), b.as_bytes());
        let n = a.as_bytes().len() as f64;
        let var = a.as_bytes().iter().map(|&v| (f64::from(v) - 128.0).powi(2)).sum::<f64>() / n;
        assert!((var.sqrt() - 3.0).abs() < 0.2, "sigma {}", var.sqrt());
        let mut c = RgbImage::new(64, 64);
        c.as_bytes_mut().fill(128);
        add_noise(&mut c, 3.0, seed(2, 12));
        assert_ne!(a.as_bytes(), c.as_bytes(), "another photo, other noise");
    }

    #[test]
    fn only_the_faces_neighbourhood_is_degraded() {
        let mut frame = RgbImage::new(256, 256);
        frame.as_bytes_mut().fill(128);
        let c = CameraArgs { noise: 5.0, ..Default::default() };
        c.degrade_around(&mut frame, [100.0, 100.0, 120.0, 124.0], 8.0, 7).unwrap();
        let at = |x: usize, y: usize| frame.as_bytes()[(y * 256 + x) * 3];
        // Box 20x24: x from 60 (snapped to 48) to 160, y from 52 (48) to 172 (176).
        assert_eq!((at(47, 110), at(110, 47), at(160, 110), at(110, 176)), (128, 128, 128, 128));
        let changed = (48..160).flat_map(|x| (48..176).map(move |y| (x, y)));
        assert!(changed.filter(|&(x, y)| at(x, y) != 128).count() > 1000);
    }

    #[test]
    fn jpeg_round_trip_keeps_the_picture_roughly() {
        // An edge inside a JPEG block (at x = 13): ringing, but nothing far off.
        let mut img = RgbImage::new(32, 8);
        for (i, px) in img.as_bytes_mut().chunks_mut(3).enumerate() {
            px.fill(if i % 32 < 13 { 40 } else { 200 });
        }
        let out = jpeg_round_trip(&img, 85).unwrap();
        assert_eq!((out.width(), out.height()), (32, 8));
        let err = img.as_bytes().iter().zip(out.as_bytes()).map(|(a, b)| a.abs_diff(*b)).max();
        assert!(err.unwrap() > 0 && err.unwrap() < 64, "{err:?}");
    }
}
