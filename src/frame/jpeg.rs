//! libjpeg-turbo (as vendored by mozjpeg) behind a strict error manager: corrupt data is
//! an error, never a silently grey-filled picture.

use std::os::raw::c_int;
use std::path::Path;

use mozjpeg_sys::{
    jpeg_abort_decompress, jpeg_common_struct, jpeg_create_decompress, jpeg_decompress_struct,
    jpeg_destroy_decompress, jpeg_error_mgr, jpeg_finish_decompress, jpeg_mem_src,
    jpeg_read_header, jpeg_read_scanlines, jpeg_start_decompress, jpeg_std_error, J_COLOR_SPACE,
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
