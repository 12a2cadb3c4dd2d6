//! MJPEG camera frames through libjpeg-turbo: a hostile frame is an error, never a crash, an
//! abort or a read outside the buffer (libjpeg's error exits unwind through C to a
//! `catch_unwind`). One decoder serves every input, as it serves a camera stream, and must
//! decode a known frame identically after whatever came before (the reset after an error).
//! Frames that look like JPEG also go through `decode_image` (a fresh decoder plus EXIF
//! orientation, the path of enrolment photos), which must agree on success or failure.

#![no_main]

use std::cell::RefCell;
use std::path::Path;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use portier::camera::{PixelFormat, RawFrame};
use portier::frame::{decode_image, FrameDecoder, RgbImage, MAX_SIDE};

/// A 16x16 4:2:0 baseline JPEG (one of the seeds).
const KNOWN: &[u8] = include_bytes!("../corpus/frame_mjpeg/baseline_420.jpg");

struct State {
    decoder: FrameDecoder,
    out: RgbImage,
    known: RgbImage,
}

thread_local! {
    static STATE: RefCell<Option<State>> = const { RefCell::new(None) };
}

fn mjpeg(data: &[u8]) -> RawFrame<'_> {
    RawFrame {
        format: PixelFormat::Mjpeg,
        // Unknown size (as a replay hands frames over): the header decides, as in
        // `decode_image`, which this target compares against.
        width: 0,
        height: 0,
        stride: 0,
        data,
        sequence: 0,
        timestamp: Duration::ZERO,
    }
}

fuzz_target!(|data: &[u8]| {
    STATE.with_borrow_mut(|state| {
        let state = state.get_or_insert_with(|| {
            let mut known = RgbImage::new(0, 0);
            if let Err(e) = FrameDecoder::new().decode(&mjpeg(KNOWN), &mut known) {
                panic!("the known frame does not decode: {e}");
            }
            State { decoder: FrameDecoder::new(), out: RgbImage::new(0, 0), known }
        });
        let result = state.decoder.decode(&mjpeg(data), &mut state.out);
        if result.is_ok() {
            let (w, h) = (state.out.width(), state.out.height());
            assert!((1..=MAX_SIDE).contains(&w) && (1..=MAX_SIDE).contains(&h), "{w}x{h}");
        }
        if data.starts_with(&[0xFF, 0xD8, 0xFF]) {
            let still = decode_image(data, Path::new("fuzz.jpg"));
            assert_eq!(still.is_ok(), result.is_ok(), "{:?} vs {:?}", still.err(), result.err());
        }
        // The stream goes on: the next good frame decodes as if nothing had happened.
        if let Err(e) = state.decoder.decode(&mjpeg(KNOWN), &mut state.out) {
            panic!("known frame refused after {result:?}: {e}");
        }
        assert!(state.out == state.known, "known frame decoded differently after {result:?}");
    });
});
