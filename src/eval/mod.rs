//! Evaluation and benchmarking behind `portier eval` and `portier bench`: verification and
//! identification statistics on labelled photos, the LFW protocol, and per-stage timings.
//!
//! Must not: be on the appliance's hot path; these are offline tools.

pub mod bench;
pub mod bench_display;
pub mod bench_loop;
pub mod bench_match;
pub mod calibrate;
pub mod camera;
pub mod distance;
pub mod export_calib;
pub mod identify;
pub mod lfw;
pub mod liveness;
pub mod metrics;
pub mod npu_check;
pub mod pairs;
pub mod plot;
pub mod verify;
