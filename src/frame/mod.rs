//! Image types and pixel operations shared by every stage: an owned RGB image, a borrowed view,
//! decoding of still photos and camera frames, and resampling into caller-owned buffers.
//!
//! Files: `mod.rs` the image types, photo decoding and the camera frame decoder; `jpeg.rs`
//! libjpeg-turbo behind a strict error manager; `taps.rs` the filter's fixed-point taps and
//! the scalar horizontal pass; `resize.rs` the exact (Pillow-identical) resampler with its band
//! split; `simd.rs` its AVX2/AVX-512 horizontal pass (x86_64).
//!
//! Must not: know about models, faces or devices. Everything here is pure pixel arithmetic (plus
//! file decoding for the command-line tools).

use std::path::{Path, PathBuf};
use std::time::Duration;

mod jpeg;
#[cfg(target_arch = "aarch64")]
mod neon;
mod resize;
#[cfg(target_arch = "x86_64")]
mod simd;
mod taps;

pub use resize::{Planes, Resizer, RowConvert};
pub use taps::{Filter, ResampleTaps};

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
    /// A camera frame whose JPEG header names another size than the camera's negotiated one
    /// (a damaged header; refused before the decoder allocates for the size it claims).
    #[error("{path}: the JPEG says {width}x{height}, the camera delivers {expected_width}x{expected_height}")]
    SizeMismatch {
        /// A label for the frame.
        path: PathBuf,
        /// Width in the JPEG header.
        width: u32,
        /// Height in the JPEG header.
        height: u32,
        /// The camera's width.
        expected_width: u32,
        /// The camera's height.
        expected_height: u32,
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
///
/// JPEG goes through libjpeg-turbo's decoder (accurate integer IDCT, fancy upsampling: the
/// pixels OpenCV and Pillow produce); everything else through the `image` crate.
pub fn decode_image(bytes: &[u8], label: &Path) -> Result<RgbImage, FrameError> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        let img = jpeg::decode(bytes, label)?;
        let orientation = exif_orientation(bytes);
        if orientation == image::metadata::Orientation::NoTransforms {
            return Ok(img);
        }
        let (width, height, data) = (img.width, img.height, img.data);
        let buf = image::RgbImage::from_raw(width, height, data).ok_or(FrameError::Size {
            len: 0,
            width,
            height,
        })?;
        return oriented(image::DynamicImage::ImageRgb8(buf), orientation);
    }
    decode_with_image_crate(bytes, label)
}

/// Turns a decoded picture upright and into our RGB type.
fn oriented(
    mut img: image::DynamicImage,
    orientation: image::metadata::Orientation,
) -> Result<RgbImage, FrameError> {
    img.apply_orientation(orientation);
    let rgb = img.into_rgb8();
    let (width, height) = rgb.dimensions();
    RgbImage::from_raw(width, height, rgb.into_raw())
}

/// The EXIF orientation of a JPEG, from its APP1 segment (none when absent or unreadable).
fn exif_orientation(bytes: &[u8]) -> image::metadata::Orientation {
    use image::ImageDecoder;
    image::codecs::jpeg::JpegDecoder::new(std::io::Cursor::new(bytes))
        .ok()
        .and_then(|mut d| d.orientation().ok())
        .unwrap_or(image::metadata::Orientation::NoTransforms)
}

fn decode_with_image_crate(bytes: &[u8], label: &Path) -> Result<RgbImage, FrameError> {
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
    oriented(image::DynamicImage::from_decoder(decoder).map_err(decode_err)?, orientation)
}

/// How a frame's bytes are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelFormat {
    /// One JPEG image (baseline; the Huffman tables may be omitted, as UVC cameras do).
    Mjpeg,
    /// Packed YUV 4:2:2, Y0 U Y1 V (V4L2_PIX_FMT_YUYV), BT.601 limited range.
    Yuyv,
    /// Packed 8-bit RGB, `stride` bytes per line (replayed stills that are not JPEG).
    Rgb24,
}

/// One frame as the source delivered it, borrowed until the next call to
/// [`crate::camera::FrameSource::next_frame`].
#[derive(Debug, Clone, Copy)]
pub struct RawFrame<'a> {
    /// Layout of `data`.
    pub format: PixelFormat,
    /// Width in pixels (from the negotiated format; a JPEG's own header is authoritative).
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Bytes per line for raw formats (0 for MJPEG).
    pub stride: u32,
    /// The frame's bytes.
    pub data: &'a [u8],
    /// Frame counter of the source, from 0 (gaps mean the source dropped frames).
    pub sequence: u64,
    /// When the frame was captured, on the source's clock (time since the source opened; for a
    /// replay, the frame's place in the stream at its nominal rate).
    pub timestamp: Duration,
}

/// Decodes camera frames ([`RawFrame`]: MJPEG or YUYV) into one reused RGB
/// buffer. Create one per stream: the JPEG decompressor and the output keep their memory.
pub struct FrameDecoder {
    jpeg: jpeg::Decoder,
}

impl std::fmt::Debug for FrameDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FrameDecoder")
    }
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    /// A decoder with its JPEG decompressor created.
    pub fn new() -> Self {
        Self { jpeg: jpeg::Decoder::new() }
    }

    /// Decodes `frame` into `out`. A corrupt or truncated JPEG, a YUYV buffer shorter than its
    /// declared size, or an odd YUYV width is an error; `out` is then unspecified (but valid).
    pub fn decode(&mut self, frame: &RawFrame<'_>, out: &mut RgbImage) -> Result<(), FrameError> {
        const LABEL: &str = "camera frame";
        match frame.format {
            PixelFormat::Mjpeg => {
                // A replay does not know its frames' size (0x0): the header decides then.
                let expected =
                    (frame.width > 0 && frame.height > 0).then_some((frame.width, frame.height));
                self.jpeg.decode_into(frame.data, out, Path::new(LABEL), expected)
            }
            PixelFormat::Yuyv => {
                yuyv_to_rgb(frame.data, frame.width, frame.height, frame.stride as usize, out)
            }
            PixelFormat::Rgb24 => {
                let (w, h) = (frame.width, frame.height);
                let line = w as usize * 3;
                let stride = (frame.stride as usize).max(line);
                if w == 0 || h == 0 || frame.data.len() < stride * (h as usize - 1) + line {
                    return Err(FrameError::Size { len: frame.data.len(), width: w, height: h });
                }
                out.reshape(w, h);
                for (y, dst) in out.as_bytes_mut().chunks_exact_mut(line).enumerate() {
                    dst.copy_from_slice(&frame.data[y * stride..y * stride + line]);
                }
                Ok(())
            }
        }
    }
}

/// Converts packed YUYV 4:2:2 (Y0 U Y1 V, BT.601 limited range, as V4L2_PIX_FMT_YUYV) into
/// RGB, `stride` bytes per source line (0 = packed, `2 * width`). The chroma of each pixel pair
/// is shared (no interpolation), as libv4lconvert and OpenCV's COLOR_YUV2RGB_YUYV do; integer
/// coefficients are OpenCV's, so the result is cv2.cvtColor's.
pub fn yuyv_to_rgb(
    src: &[u8],
    width: u32,
    height: u32,
    stride: usize,
    out: &mut RgbImage,
) -> Result<(), FrameError> {
    let label = || PathBuf::from("yuyv frame");
    if width == 0
        || height == 0
        || width > MAX_SIDE
        || height > MAX_SIDE
        || !width.is_multiple_of(2)
    {
        return Err(FrameError::Dimensions { path: label(), width, height });
    }
    let line = width as usize * 2;
    let stride = if stride == 0 { line } else { stride };
    let need = stride * (height as usize - 1) + line;
    if stride < line || src.len() < need {
        return Err(FrameError::Decode {
            path: label(),
            reason: format!("{} bytes for {width}x{height} with stride {stride}", src.len()),
        });
    }
    out.reshape(width, height);
    // ITU-R BT.601 limited range: R = 1.164(Y-16) + 1.596(V-128), G = 1.164(Y-16) - 0.391(U-128)
    // - 0.813(V-128), B = 1.164(Y-16) + 2.018(U-128); OpenCV's ITUR_BT_601_* fixed-point
    // constants (20 fractional bits), so results equal cv2.cvtColor(..., COLOR_YUV2RGB_YUYV).
    const SHIFT: u32 = 20;
    const CY: i32 = 1_220_542;
    const CVR: i32 = 1_673_527;
    const CUG: i32 = -409_993;
    const CVG: i32 = -852_492;
    const CUB: i32 = 2_116_026;
    const HALF: i32 = 1 << (SHIFT - 1);
    let clamp = |v: i32| (v >> SHIFT).clamp(0, 255) as u8;
    for (y, dst) in out.as_bytes_mut().chunks_exact_mut(width as usize * 3).enumerate() {
        let row = &src[y * stride..y * stride + line];
        for (quad, px) in row.chunks_exact(4).zip(dst.chunks_exact_mut(6)) {
            let u = i32::from(quad[1]) - 128;
            let v = i32::from(quad[3]) - 128;
            let r = CVR * v + HALF;
            let g = CUG * u + CVG * v + HALF;
            let b = CUB * u + HALF;
            for (k, luma) in [quad[0], quad[2]].into_iter().enumerate() {
                let yy = (i32::from(luma) - 16).max(0) * CY;
                px[k * 3] = clamp(yy + r);
                px[k * 3 + 1] = clamp(yy + g);
                px[k * 3 + 2] = clamp(yy + b);
            }
        }
    }
    Ok(())
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::resize::tests::gradient;

    /// A camera frame whose header claims another size (a damaged SOF) is refused before the
    /// decoder allocates for it: a hostile or broken camera cannot make the loop allocate
    /// hundreds of MiB (found while fuzzing: a header may claim 16384x16384).
    #[test]
    fn camera_frames_must_have_the_negotiated_size() {
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 80)
            .encode(gradient(16, 8).as_bytes(), 16, 8, image::ExtendedColorType::Rgb8)
            .unwrap();
        let frame = |width, height| RawFrame {
            format: PixelFormat::Mjpeg,
            width,
            height,
            stride: 0,
            data: &jpeg,
            sequence: 0,
            timestamp: std::time::Duration::ZERO,
        };
        let mut out = RgbImage::new(0, 0);
        let mut decoder = FrameDecoder::new();
        decoder.decode(&frame(16, 8), &mut out).unwrap();
        decoder.decode(&frame(0, 0), &mut out).unwrap();
        let err = decoder.decode(&frame(640, 480), &mut out).unwrap_err().to_string();
        assert!(err.contains("says 16x8") && err.contains("delivers 640x480"), "{err}");
        // The decoder goes on with the next good frame.
        decoder.decode(&frame(16, 8), &mut out).unwrap();
        assert_eq!((out.width(), out.height()), (16, 8));
    }

    /// Found by the `frame_mjpeg` fuzz target: a frame whose DQT marker was damaged (FF DB
    /// became FF E3, an APP3 segment) decoded with the previous frame's quantization tables in
    /// a reused decoder, while a fresh decoder refused it.
    #[test]
    fn stream_decoder_keeps_no_tables_between_frames() {
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 80)
            .encode(gradient(16, 16).as_bytes(), 16, 16, image::ExtendedColorType::Rgb8)
            .unwrap();
        // Every DQT marker segment (FF DB) becomes an APP3 segment (FF E3): no tables.
        let mut damaged = jpeg.clone();
        let mut pos = 2;
        while pos + 4 <= damaged.len() && damaged[pos] == 0xFF && damaged[pos + 1] != 0xDA {
            if damaged[pos + 1] == 0xDB {
                damaged[pos + 1] = 0xE3;
            }
            pos += 2 + usize::from(u16::from_be_bytes([damaged[pos + 2], damaged[pos + 3]]));
        }
        assert_ne!(damaged, jpeg);
        let frame = |data| RawFrame {
            format: PixelFormat::Mjpeg,
            width: 16,
            height: 16,
            stride: 0,
            data,
            sequence: 0,
            timestamp: std::time::Duration::ZERO,
        };
        let mut out = RgbImage::new(0, 0);
        assert!(FrameDecoder::new().decode(&frame(&damaged), &mut out).is_err());
        let mut decoder = FrameDecoder::new();
        decoder.decode(&frame(&jpeg), &mut out).unwrap();
        let err = decoder.decode(&frame(&damaged), &mut out).unwrap_err();
        assert!(err.to_string().contains("quantization table"), "{err}");
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
