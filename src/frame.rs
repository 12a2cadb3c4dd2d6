//! Image types and pixel operations shared by every stage: an owned RGB image, a borrowed view,
//! decoding of still photos, and resampling into caller-owned buffers.
//!
//! Must not: know about models, faces or devices. Everything here is pure pixel arithmetic (plus
//! file decoding for the command-line tools).

use std::path::{Path, PathBuf};

/// Errors from decoding or validating images.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The file could not be read at all.
    #[error("image {path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The bytes are not a decodable image (truncated, corrupt, unknown format).
    #[error("image {path}: cannot decode: {reason}")]
    Decode {
        /// The file, or a label for in-memory data.
        path: PathBuf,
        /// What the decoder said.
        reason: String,
    },
    /// A buffer does not hold `width * height * 3` bytes.
    #[error("image buffer of {len} bytes does not match {width}x{height} RGB")]
    Size {
        /// Bytes present.
        len: usize,
        /// Declared width.
        width: u32,
        /// Declared height.
        height: u32,
    },
    /// Zero-sized or absurdly large image.
    #[error("image {path}: unusable size {width}x{height}")]
    Dimensions {
        /// The file, or a label for in-memory data.
        path: PathBuf,
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
    },
}

/// Largest side accepted from a decoder: bounds memory for hostile files (a 16k x 16k RGB image
/// is 768 MiB already).
pub const MAX_SIDE: u32 = 16_384;

/// An owned 8-bit RGB image, rows top to bottom, pixels interleaved `R G B`.
#[derive(Clone, PartialEq, Eq)]
pub struct RgbImage {
    width: u32,
    height: u32,
    data: Vec<u8>,
}

impl std::fmt::Debug for RgbImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RgbImage({}x{})", self.width, self.height)
    }
}

impl RgbImage {
    /// A black image.
    pub fn new(width: u32, height: u32) -> Self {
        Self { width, height, data: vec![0; width as usize * height as usize * 3] }
    }

    /// Wraps an existing buffer; fails when its length does not match.
    pub fn from_raw(width: u32, height: u32, data: Vec<u8>) -> Result<Self, FrameError> {
        if data.len() != width as usize * height as usize * 3 {
            return Err(FrameError::Size { len: data.len(), width, height });
        }
        Ok(Self { width, height, data })
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// The interleaved RGB bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.data
    }

    /// The interleaved RGB bytes, writable.
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        &mut self.data
    }

    /// A borrowed view of the whole image.
    pub fn view(&self) -> ImageView<'_> {
        ImageView { width: self.width, height: self.height, data: &self.data }
    }

    /// Changes the size, reusing the allocation when it is large enough (camera frames of a
    /// fixed format never reallocate).
    pub fn reshape(&mut self, width: u32, height: u32) {
        self.width = width;
        self.height = height;
        self.data.resize(width as usize * height as usize * 3, 0);
    }
}

/// A borrowed 8-bit RGB image (for example a camera buffer after colour conversion).
#[derive(Clone, Copy)]
pub struct ImageView<'a> {
    width: u32,
    height: u32,
    data: &'a [u8],
}

impl<'a> ImageView<'a> {
    /// Wraps a borrowed RGB buffer; fails when its length does not match.
    pub fn new(width: u32, height: u32, data: &'a [u8]) -> Result<Self, FrameError> {
        if data.len() != width as usize * height as usize * 3 {
            return Err(FrameError::Size { len: data.len(), width, height });
        }
        Ok(Self { width, height, data })
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// The interleaved RGB bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.data
    }

    /// Copies into an owned image.
    pub fn to_owned_image(&self) -> RgbImage {
        RgbImage { width: self.width, height: self.height, data: self.data.to_vec() }
    }
}

/// Reads and decodes a photo (JPEG or PNG) into RGB.
///
/// EXIF orientation is applied, as phones store portrait photos rotated and every other tool
/// (OpenCV's `imread`, viewers) shows them upright.
pub fn load_image(path: &Path) -> Result<RgbImage, FrameError> {
    let bytes =
        std::fs::read(path).map_err(|source| FrameError::Read { path: path.into(), source })?;
    decode_image(&bytes, path)
}

/// Decodes an encoded image held in memory; `label` names it in errors.
pub fn decode_image(bytes: &[u8], label: &Path) -> Result<RgbImage, FrameError> {
    use image::ImageDecoder;
    let decode_err =
        |e: image::ImageError| FrameError::Decode { path: label.into(), reason: e.to_string() };
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| FrameError::Decode { path: label.into(), reason: e.to_string() })?;
    let mut decoder = reader.into_decoder().map_err(decode_err)?;
    let (width, height) = decoder.dimensions();
    if width == 0 || height == 0 || width > MAX_SIDE || height > MAX_SIDE {
        return Err(FrameError::Dimensions { path: label.into(), width, height });
    }
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = image::DynamicImage::from_decoder(decoder).map_err(decode_err)?;
    img.apply_orientation(orientation);
    let rgb = img.into_rgb8();
    let (width, height) = rgb.dimensions();
    RgbImage::from_raw(width, height, rgb.into_raw())
}

/// How to filter when resampling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// Plain bilinear from the four nearest pixels (OpenCV `INTER_LINEAR`). Aliases when
    /// shrinking by more than 2x.
    Bilinear,
    /// Triangle filter widened by the shrink factor (Pillow's `BILINEAR`): averages every
    /// source pixel under the footprint, so a 1080p frame shrunk to 640 keeps small faces
    /// intact instead of sampling a sparse grid.
    Antialiased,
}

/// Precomputed taps of a 1-D resampling filter, kept by the caller so that resizing a stream of
/// frames of one size computes them once.
#[derive(Debug, Clone, Default)]
pub struct ResampleTaps {
    src_len: u32,
    dst_len: u32,
    filter: Option<Filter>,
    /// For each output index, the first source index.
    starts: Vec<u32>,
    /// For each output index, the number of taps.
    counts: Vec<u32>,
    /// Weights in 1/2^14 fixed point, `max_taps` per output index.
    weights: Vec<i32>,
    max_taps: usize,
}

const WEIGHT_BITS: u32 = 14;

impl ResampleTaps {
    /// Recomputes the taps unless they already fit these lengths and filter.
    pub fn prepare(&mut self, src_len: u32, dst_len: u32, filter: Filter) {
        if self.src_len == src_len && self.dst_len == dst_len && self.filter == Some(filter) {
            return;
        }
        let scale = f64::from(src_len) / f64::from(dst_len);
        let support = match filter {
            Filter::Bilinear => 1.0,
            Filter::Antialiased => scale.max(1.0),
        };
        let max_taps = (support * 2.0).ceil() as usize + 1;
        self.starts.clear();
        self.counts.clear();
        self.weights.clear();
        self.weights.resize(max_taps * dst_len as usize, 0);
        let mut tmp = vec![0f64; max_taps];
        for i in 0..dst_len as usize {
            // Pixel centres at +0.5: the convention of OpenCV and Pillow.
            let centre = (i as f64 + 0.5) * scale;
            let (lo, hi) = match filter {
                Filter::Bilinear => {
                    let c = (centre - 0.5).max(0.0);
                    let lo = (c.floor() as i64).min(i64::from(src_len) - 1);
                    (lo, (lo + 2).min(i64::from(src_len)))
                }
                Filter::Antialiased => {
                    let lo = ((centre - support).floor() as i64).max(0);
                    let hi = ((centre + support).ceil() as i64).min(i64::from(src_len));
                    (lo, hi)
                }
            };
            let n = ((hi - lo) as usize).min(max_taps);
            let mut sum = 0.0;
            for (k, t) in tmp.iter_mut().enumerate().take(n) {
                let x = lo as f64 + k as f64 + 0.5;
                let w = match filter {
                    Filter::Bilinear => {
                        let c = (centre - 0.5).max(0.0).min(f64::from(src_len) - 1.0);
                        (1.0 - (x - 0.5 - c).abs()).max(0.0)
                    }
                    Filter::Antialiased => (1.0 - ((x - centre) / support).abs()).max(0.0),
                };
                *t = w;
                sum += w;
            }
            // Normalise in fixed point so the taps add up to exactly 1 << WEIGHT_BITS.
            let row = &mut self.weights[i * max_taps..i * max_taps + max_taps];
            let mut acc = 0i32;
            let mut largest = 0;
            for k in 0..n {
                let w = if sum > 0.0 { tmp[k] / sum } else { 0.0 };
                row[k] = (w * f64::from(1u32 << WEIGHT_BITS)).round() as i32;
                acc += row[k];
                if row[k] > row[largest] {
                    largest = k;
                }
            }
            row[largest] += (1 << WEIGHT_BITS) - acc;
            self.starts.push(lo as u32);
            self.counts.push(n as u32);
        }
        self.src_len = src_len;
        self.dst_len = dst_len;
        self.filter = Some(filter);
        self.max_taps = max_taps;
    }
}

/// Caller-owned state for [`resize_into`]: the filter taps and the intermediate row buffer.
#[derive(Debug, Default)]
pub struct Resizer {
    horizontal: ResampleTaps,
    vertical: ResampleTaps,
    /// Horizontally filtered rows, 3 channels, 1/2^14 fixed point kept as i32 for precision.
    tmp: Vec<i32>,
}

impl Resizer {
    /// Resizes `src` to `dst_w` x `dst_h` and writes the result into the top-left corner of `dst`
    /// (whose row stride is `dst_stride_px` pixels). Separable: horizontal pass, then vertical.
    pub fn resize_into(
        &mut self,
        src: ImageView<'_>,
        dst: &mut [u8],
        dst_stride_px: usize,
        dst_w: u32,
        dst_h: u32,
        filter: Filter,
    ) {
        if dst_w == 0 || dst_h == 0 || src.width == 0 || src.height == 0 {
            return;
        }
        self.horizontal.prepare(src.width, dst_w, filter);
        self.vertical.prepare(src.height, dst_h, filter);
        let (sw, sh, dw) = (src.width as usize, src.height as usize, dst_w as usize);
        self.tmp.resize(sh * dw * 3, 0);
        let h = &self.horizontal;
        let s = src.data;
        // Only the source rows some output row needs are filtered horizontally.
        let v = &self.vertical;
        let first_row = v.starts.first().copied().unwrap_or(0) as usize;
        let last_row = v
            .starts
            .iter()
            .zip(&v.counts)
            .map(|(&a, &n)| (a + n) as usize)
            .max()
            .unwrap_or(sh)
            .min(sh);
        for y in first_row..last_row {
            let src_row = &s[y * sw * 3..(y + 1) * sw * 3];
            let out = &mut self.tmp[y * dw * 3..(y + 1) * dw * 3];
            for x in 0..dw {
                let start = h.starts[x] as usize;
                let n = h.counts[x] as usize;
                let w = &h.weights[x * h.max_taps..x * h.max_taps + n];
                let (mut r, mut g, mut b) = (0i32, 0i32, 0i32);
                for (k, &wk) in w.iter().enumerate() {
                    let p = (start + k) * 3;
                    r += i32::from(src_row[p]) * wk;
                    g += i32::from(src_row[p + 1]) * wk;
                    b += i32::from(src_row[p + 2]) * wk;
                }
                out[x * 3] = r;
                out[x * 3 + 1] = g;
                out[x * 3 + 2] = b;
            }
        }
        let round = 1i64 << (2 * WEIGHT_BITS - 1);
        for y in 0..dst_h as usize {
            let start = v.starts[y] as usize;
            let n = v.counts[y] as usize;
            let w = &v.weights[y * v.max_taps..y * v.max_taps + n];
            let out = &mut dst[y * dst_stride_px * 3..y * dst_stride_px * 3 + dw * 3];
            for (x3, o) in out.iter_mut().enumerate() {
                let mut acc = 0i64;
                for (k, &wk) in w.iter().enumerate() {
                    acc += i64::from(self.tmp[(start + k) * dw * 3 + x3]) * i64::from(wk);
                }
                *o = ((acc + round) >> (2 * WEIGHT_BITS)).clamp(0, 255) as u8;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: u32, h: u32) -> RgbImage {
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

    #[test]
    fn decode_rejects_garbage_and_truncation() {
        let err = decode_image(b"not an image at all", Path::new("x.jpg")).unwrap_err();
        assert!(err.to_string().starts_with("image x.jpg: cannot decode"), "{err}");
        let mut png = Vec::new();
        image::RgbImage::new(8, 8)
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        let err = decode_image(&png[..png.len() / 2], Path::new("half.png")).unwrap_err();
        assert!(matches!(err, FrameError::Decode { .. }), "{err}");
    }
}
