//! Splitting a recorded MJPEG stream into frames (`split_mjpeg`): any bytes give ordered,
//! disjoint, in-bounds frames, each starting at an SOI followed by a marker, and every SOI
//! that is not inside an earlier frame starts one.

#![no_main]

use libfuzzer_sys::fuzz_target;
use portier::camera::replay::split_mjpeg;

fuzz_target!(|data: &[u8]| {
    let frames = split_mjpeg(data);
    let mut pos = 0;
    for &(start, end) in &frames {
        assert!(pos <= start && start < end && end <= data.len(), "{frames:?}");
        assert!(data[start..].starts_with(&[0xFF, 0xD8, 0xFF]), "{frames:?}");
        // No SOI is skipped between frames.
        assert!(!data[pos..start].windows(3).any(|w| w == [0xFF, 0xD8, 0xFF]), "{frames:?}");
        pos = end;
    }
    assert!(!data[pos..].windows(3).any(|w| w == [0xFF, 0xD8, 0xFF]), "{frames:?}");
});
