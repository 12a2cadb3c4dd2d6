//! The HailoRT test double (`src/infer/hailo/double.rs`, shared with the library's unit
//! tests), for driving the real binary against it: `[npu] library` names a copy, and every
//! process that loads that copy shares its one device.

pub use portier::infer::hailo::ffi;

#[path = "../../src/infer/hailo/double.rs"]
pub mod double;
