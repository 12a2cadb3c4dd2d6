//! Raw camera frames (YUYV 4:2:2 and RGB24) of any declared size, stride and length: decoded
//! exactly when the buffer holds the declared frame (the documented preconditions), an error
//! otherwise, never a panic or an out-of-bounds read.
//!
//! Input: `[format] [width: u16 le] [height: u16 le] [stride: u16 le]` then the frame's bytes
//! (format bit 0: YUYV, else RGB24).

#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use portier::camera::{PixelFormat, RawFrame};
use portier::frame::{yuyv_to_rgb, FrameDecoder, RgbImage, MAX_SIDE};

fuzz_target!(|data: &[u8]| {
    let Some((head, bytes)) = data.split_first_chunk::<7>() else { return };
    let field = |i: usize| u32::from(u16::from_le_bytes([head[i], head[i + 1]]));
    let (width, height, stride) = (field(1), field(3), field(5));
    let yuyv = head[0] & 1 == 1;
    let frame = RawFrame {
        format: if yuyv { PixelFormat::Yuyv } else { PixelFormat::Rgb24 },
        width,
        height,
        stride,
        data: bytes,
        sequence: 0,
        timestamp: Duration::ZERO,
    };
    let mut out = RgbImage::new(0, 0);
    let result = FrameDecoder::new().decode(&frame, &mut out);
    let (w, h, s, len) = (width as usize, height as usize, stride as usize, bytes.len());
    if yuyv {
        let line = 2 * w;
        let s = if s == 0 { line } else { s };
        let fits = w > 0
            && h > 0
            && width <= MAX_SIDE
            && height <= MAX_SIDE
            && w % 2 == 0
            && s >= line
            && len >= s * (h - 1) + line;
        assert_eq!(result.is_ok(), fits, "{width}x{height} stride {stride}, {len} bytes");
        // The direct call agrees with the decoder.
        let mut direct = RgbImage::new(0, 0);
        assert_eq!(yuyv_to_rgb(bytes, width, height, s, &mut direct).is_ok(), fits);
        if fits {
            assert_eq!(direct, out);
        }
    } else {
        let line = 3 * w;
        let s = s.max(line);
        let fits = w > 0 && h > 0 && len >= s * (h - 1) + line;
        assert_eq!(result.is_ok(), fits, "{width}x{height} stride {stride}, {len} bytes");
        if fits {
            for (y, row) in out.as_bytes().chunks_exact(line).enumerate() {
                assert_eq!(row, &bytes[y * s..y * s + line]);
            }
        }
    }
    if result.is_ok() {
        assert_eq!((out.width(), out.height()), (width, height));
    }
});
