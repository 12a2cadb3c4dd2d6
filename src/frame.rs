//! Image types and pixel operations shared by every stage: an owned RGB image, a borrowed view,
//! decoding of still photos, and resampling into caller-owned buffers.
//!
//! Must not: know about models, faces or devices. Everything here is pure pixel arithmetic (plus
//! file decoding for the command-line tools).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use crate::par::{Bands, MAX_BANDS};

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

mod jpeg {
    //! libjpeg-turbo (as vendored by mozjpeg) behind a strict error manager: corrupt data is
    //! an error, never a silently grey-filled picture.

    use std::os::raw::c_int;
    use std::path::Path;

    use mozjpeg_sys::{
        jpeg_abort_decompress, jpeg_common_struct, jpeg_create_decompress, jpeg_decompress_struct,
        jpeg_destroy_decompress, jpeg_error_mgr, jpeg_finish_decompress, jpeg_mem_src,
        jpeg_read_header, jpeg_read_scanlines, jpeg_start_decompress, jpeg_std_error,
        J_COLOR_SPACE,
    };

    use super::{FrameError, RgbImage, MAX_SIDE};

    /// The text libjpeg has for the message in `cinfo.err`.
    fn message(cinfo: &mut jpeg_common_struct) -> String {
        type Format = unsafe extern "C-unwind" fn(&mut jpeg_common_struct, &[u8; 80]);
        type FormatMut = unsafe extern "C-unwind" fn(&mut jpeg_common_struct, &mut [u8; 80]);
        let mut buffer = [0u8; 80];
        // SAFETY: `cinfo.err` points at the error manager libjpeg is reporting through, set up
        // by `jpeg_std_error`. Its `format_message` writes at most 80 bytes, NUL-terminated, into
        // the buffer; the binding declares that buffer `&[u8; 80]`, so the function pointer is
        // re-typed to take it mutably (same ABI, a pointer either way) rather than writing
        // through a shared reference.
        unsafe {
            if let Some(format) = cinfo.err.as_ref().and_then(|e| e.format_message) {
                let format = std::mem::transmute::<Format, FormatMut>(format);
                format(cinfo, &mut buffer);
            }
        }
        let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
        String::from_utf8_lossy(&buffer[..end]).into_owned()
    }

    /// Fatal errors unwind out of the C decoder (compiled with -fexceptions) to
    /// `catch_unwind` below, without running the panic hook.
    extern "C-unwind" fn error_exit(cinfo: &mut jpeg_common_struct) {
        std::panic::resume_unwind(Box::new(message(cinfo)));
    }

    /// Warnings (level -1: corrupt or truncated data) are errors too; trace messages are not.
    extern "C-unwind" fn emit_message(cinfo: &mut jpeg_common_struct, level: c_int) {
        if level < 0 {
            std::panic::resume_unwind(Box::new(message(cinfo)));
        }
    }

    /// A libjpeg decompressor kept for a stream of images: its error manager lives as long as
    /// the stream; the decompressor's state is created afresh for every frame (no tables carry
    /// over from one frame to the next), and aborted after an error. Missing Huffman tables
    /// (UVC cameras omit them) are supplied by libjpeg-turbo's standard tables.
    pub(super) struct Decoder {
        /// Boxed: `cinfo.common.err` points at `err`, so neither may move.
        inner: Box<Inner>,
    }

    struct Inner {
        cinfo: jpeg_decompress_struct,
        err: jpeg_error_mgr,
    }

    // SAFETY: the decompressor is plain C state with no thread affinity; `&mut self` on every
    // use keeps it single-threaded.
    unsafe impl Send for Decoder {}

    impl Decoder {
        pub(super) fn new() -> Self {
            // SAFETY: both are plain C structs for which all-zero is a valid starting value;
            // `jpeg_std_error` initialises the error manager before use.
            let mut inner: Box<Inner> = Box::new(unsafe { std::mem::zeroed() });
            // SAFETY: `inner.err` is a valid, exclusively borrowed error manager.
            unsafe { jpeg_std_error(&mut inner.err) };
            inner.err.error_exit = Some(error_exit);
            inner.err.emit_message = Some(emit_message);
            inner.cinfo.common.err = &mut inner.err;
            // SAFETY: `cinfo.common.err` points at an initialised error manager that lives as
            // long as `cinfo` (same box); jpeg_CreateDecompress keeps `err` and zeroes the rest.
            // Creation only fails on out-of-memory or a version mismatch, both fatal anyway.
            unsafe { jpeg_create_decompress(&mut inner.cinfo) };
            Self { inner }
        }

        /// Decodes one JPEG into `out` (resized to the picture, reusing its allocation).
        /// `expected`: the size the camera negotiated, when known; a header that says
        /// otherwise is refused before anything is allocated for it.
        pub(super) fn decode_into(
            &mut self,
            bytes: &[u8],
            out: &mut RgbImage,
            label: &Path,
            expected: Option<(u32, u32)>,
        ) -> Result<(), FrameError> {
            let cinfo = &mut self.inner.cinfo;
            let run = std::panic::AssertUnwindSafe(|| -> Result<(), (u32, u32, bool)> {
                // SAFETY: `bytes` outlives this call, in which libjpeg reads it; the
                // decompressor was created in `new` and is idle (every frame ends with finish
                // or abort); destroying and creating it again keeps `cinfo.err` (see `new`).
                // Errors unwind out of these calls to the catch_unwind below.
                unsafe {
                    // Each frame decodes alone, as in a fresh decompressor: libjpeg keeps the
                    // quantization and Huffman tables of earlier images (JPEG's abbreviated
                    // datastreams), so a frame whose DQT marker is damaged, or a UVC frame
                    // without Huffman tables after one with tables of its own, would decode
                    // with an earlier frame's tables. Found by the `frame_mjpeg` fuzz target.
                    // A few small allocations per frame, next to libjpeg's per-image ones.
                    jpeg_destroy_decompress(cinfo);
                    jpeg_create_decompress(cinfo);
                    jpeg_mem_src(cinfo, bytes.as_ptr(), bytes.len() as std::os::raw::c_ulong);
                    jpeg_read_header(cinfo, 1);
                    cinfo.out_color_space = J_COLOR_SPACE::JCS_RGB;
                    let (w, h) = (cinfo.image_width, cinfo.image_height);
                    if w == 0 || h == 0 || w > MAX_SIDE || h > MAX_SIDE {
                        return Err((w, h, false));
                    }
                    if expected.is_some_and(|e| e != (w, h)) {
                        return Err((w, h, true));
                    }
                    jpeg_start_decompress(cinfo);
                    let (w, h) = (cinfo.output_width, cinfo.output_height);
                    out.reshape(w, h);
                    let row = w as usize * 3;
                    let data = out.as_bytes_mut();
                    while cinfo.output_scanline < h {
                        let mut rows = [std::ptr::null_mut::<u8>(); 16];
                        let first = cinfo.output_scanline as usize;
                        let n = (h as usize - first).min(rows.len());
                        for (i, r) in rows.iter_mut().take(n).enumerate() {
                            *r = data[(first + i) * row..].as_mut_ptr();
                        }
                        if jpeg_read_scanlines(cinfo, rows.as_mut_ptr(), n as u32) == 0 {
                            // Only a suspending data source returns 0; ours cannot.
                            break;
                        }
                    }
                    jpeg_finish_decompress(cinfo);
                }
                Ok(())
            });
            let result = std::panic::catch_unwind(run);
            let failed = !matches!(result, Ok(Ok(())));
            if failed {
                // SAFETY: returns the decompressor to its idle state after an error at any
                // point, keeping its tables and memory for the next frame.
                unsafe { jpeg_abort_decompress(&mut self.inner.cinfo) };
            }
            match result {
                Ok(Ok(())) => Ok(()),
                Ok(Err((width, height, false))) => {
                    Err(FrameError::Dimensions { path: label.into(), width, height })
                }
                Ok(Err((width, height, true))) => {
                    let (expected_width, expected_height) = expected.unwrap_or_default();
                    Err(FrameError::SizeMismatch {
                        path: label.into(),
                        width,
                        height,
                        expected_width,
                        expected_height,
                    })
                }
                Err(payload) => {
                    let reason = payload
                        .downcast_ref::<String>()
                        .cloned()
                        .unwrap_or_else(|| "libjpeg failed".into());
                    Err(FrameError::Decode { path: label.into(), reason: reason.to_lowercase() })
                }
            }
        }
    }

    impl Drop for Decoder {
        fn drop(&mut self) {
            // SAFETY: the decompressor was created in `new` and is not used afterwards.
            unsafe { jpeg_destroy_decompress(&mut self.inner.cinfo) };
        }
    }

    /// Decodes a baseline or progressive JPEG into a new RGB image.
    pub(super) fn decode(bytes: &[u8], label: &Path) -> Result<RgbImage, FrameError> {
        let mut img = RgbImage::new(0, 0);
        Decoder::new().decode_into(bytes, &mut img, label, None)?;
        Ok(img)
    }
}

/// Decodes camera frames ([`crate::camera::RawFrame`]: MJPEG or YUYV) into one reused RGB
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
    pub fn decode(
        &mut self,
        frame: &crate::camera::RawFrame<'_>,
        out: &mut RgbImage,
    ) -> Result<(), FrameError> {
        const LABEL: &str = "camera frame";
        match frame.format {
            crate::camera::PixelFormat::Mjpeg => {
                // A replay does not know its frames' size (0x0): the header decides then.
                let expected =
                    (frame.width > 0 && frame.height > 0).then_some((frame.width, frame.height));
                self.jpeg.decode_into(frame.data, out, Path::new(LABEL), expected)
            }
            crate::camera::PixelFormat::Yuyv => {
                yuyv_to_rgb(frame.data, frame.width, frame.height, frame.stride as usize, out)
            }
            crate::camera::PixelFormat::Rgb24 => {
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
const WEIGHT_BITS: u32 = 22;

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
    /// Weights in 1/2^22 fixed point, `max_taps` per output index.
    weights: Vec<i32>,
    max_taps: usize,
    /// With at most 8 taps: the weights of each pair of output indices (0 and 1, 2 and 3, …)
    /// split for the AVX2 pass ([`split_weights`], 32 lanes per pair: two 256-bit vectors).
    split: Vec<i16>,
    /// For the AVX-512 pass, per group of four output indices (4g..4g+4) whose windows all lie
    /// within 64 source bytes of the first one's start (always when shrinking by up to about
    /// 4x): each index's byte offset from the group's start, repeated over its 16-byte lane.
    /// Empty when some group's windows spread wider.
    group_offsets: Vec<[u8; 64]>,
    /// The weights of each group of four split likewise ([`split_weights`], 64 lanes per
    /// group: two 512-bit vectors).
    group_split: Vec<i16>,
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
fn horizontal_row(h: &ResampleTaps, src_row: &[u8], out: &mut [u8], first: usize) {
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

#[cfg(target_arch = "x86_64")]
mod simd {
    //! The horizontal pass with AVX2 intrinsics, bit-identical to the scalar pass: each
    //! 22-bit weight is split into 11-bit halves so that 16-bit multiply-adds (`vpmaddwd`)
    //! compute the same integer sums.

    use std::arch::x86_64::*;

    use super::{horizontal_row, ResampleTaps, WEIGHT_BITS};

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
        let (lo, hi) = (
            [load(&LO[0]), load(&LO[1]), load(&LO[2])],
            [load(&HI[0]), load(&HI[1]), load(&HI[2])],
        );
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
                (
                    _mm256_loadu_si256(w.as_ptr().cast()),
                    _mm256_loadu_si256(w.as_ptr().add(16).cast()),
                )
            };
            let sum = |c: usize| {
                let ch =
                    _mm256_or_si256(_mm256_shuffle_epi8(a, lo[c]), _mm256_shuffle_epi8(b, hi[c]));
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
}

/// Rounds a fixed-point sum back to a byte, as Pillow's `clip8`.
#[inline]
fn clip8(acc: i32) -> u8 {
    (acc >> WEIGHT_BITS).clamp(0, 255) as u8
}

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
            let kernel = if simd::has_avx512() && !self.h.group_offsets.is_empty() {
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
                    Kernel::Avx2 => unsafe { simd::horizontal_row_avx2(h, src_row, tmp_row) },
                    // SAFETY: the caller checked the CPU; this kernel was only chosen with the
                    // group tables filled.
                    #[cfg(target_arch = "x86_64")]
                    Kernel::Avx512 => unsafe {
                        simd::horizontal_row_avx512(h, src_row, tmp_row);
                    },
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
            if simd::has_avx512() && !h.group_offsets.is_empty() {
                kernels.push(Kernel::Avx512);
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = h;
        kernels
    }

    /// Each SIMD horizontal kernel this CPU has gives the scalar pass's bytes, row by row, for
    /// shrinks and enlargements (the kernels finish the row's end with other code).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn simd_horizontal_passes_are_bit_identical_to_scalar() {
        type Pass = unsafe fn(&ResampleTaps, &[u8], &mut [u8]);
        type Usable = fn(&ResampleTaps) -> bool;
        let kernels: [(&str, bool, Pass, Usable); 2] = [
            ("AVX2", std::is_x86_feature_detected!("avx2"), simd::horizontal_row_avx2, |t| {
                t.max_taps <= 8
            }),
            ("AVX-512", simd::has_avx512(), simd::horizontal_row_avx512, |t| {
                !t.group_offsets.is_empty()
            }),
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

    /// Found by the `frame_mjpeg` fuzz target: a frame whose DQT marker was damaged (FF DB
    /// became FF E3, an APP3 segment) decoded with the previous frame's quantization tables in
    /// a reused decoder, while a fresh decoder refused it.
    /// A camera frame whose header claims another size (a damaged SOF) is refused before the
    /// decoder allocates for it: a hostile or broken camera cannot make the loop allocate
    /// hundreds of MiB (found while fuzzing: a header may claim 16384x16384).
    #[test]
    fn camera_frames_must_have_the_negotiated_size() {
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 80)
            .encode(gradient(16, 8).as_bytes(), 16, 8, image::ExtendedColorType::Rgb8)
            .unwrap();
        let frame = |width, height| crate::camera::RawFrame {
            format: crate::camera::PixelFormat::Mjpeg,
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
        let frame = |data| crate::camera::RawFrame {
            format: crate::camera::PixelFormat::Mjpeg,
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
