//! portier: face-recognition door access for a Raspberry Pi 5 with a Hailo-8 NPU.
//!
//! The crate is the appliance's library; `src/main.rs` is only its command line. One frame
//! flows through the modules in this order, each handing a plain value to the next:
//!
//! ```text
//! frame ─▶ detect ─▶ align (112x112) ─▶ embed (cpu | npu) ─▶ gallery match ─▶ decision
//! ```
//!
//! - [`frame`]: image types, decoding, resampling.
//! - [`infer`]: ONNX Runtime loading and sessions.
//! - [`detect`]: SCRFD / YuNet decoding, letterbox, NMS.
//! - [`align`]: 5-point similarity transform and warp.
//! - [`embed`]: the `Embedder` trait and the CPU backend.
//! - [`gallery`]: enrolled people in SQLite, 1:N matching.
//! - [`camera`]: frame sources (V4L2, replayed streams and folders), `camera::open`.
//! - [`door`]: the door controller state machine over embedded-hal pins, the relock guard,
//!   `door::open`.
//! - [`display`]: the status screens (embedded-graphics) and their sinks, `display::open`.
//! - [`track`]: faces across frames and each track's best-quality face.
//! - [`app`]: the loop (`App::step(now)`), the decision core's shell around the stages.
//! - [`shell`]: the loop's outside world while `portier run` runs (MQTT, display, gallery jobs).
//! - [`enroll_live`]: live enrolment's state machine, fed the frames the loop sees anyway.
//! - [`pipeline`]: detect → align → embed for a still image, with stage timings; the loop's
//!   parts opened from the config (`Parts::cpu`, `NpuParts::open`).
//! - [`enroll_camera`]: `portier enroll --from-camera` and the enrolment's settings from the
//!   config.
//! - [`config`]: the TOML configuration, parsed and validated into the stages' own settings
//!   types (which import nothing from it: `scripts/import-cycles` finds no circle).
//! - [`eval`]: verification statistics, LFW protocol, benchmarks.
//! - [`exit`]: the process's exit statuses, one `From` per error family.
//! - [`mqtt`]: MQTT payloads, Home Assistant discovery, signed commands, the client thread.
//! - [`npu_state`]: whether the NPU's model is installed (CPU only when it is not).
//! - [`par`]: bands of a pixel pass on several cores (the letterbox).
//! - [`secret`]: permission checks for files holding keys and passwords.
//! - [`selftest`]: `portier selftest`, every part of the appliance checked in one table.

pub mod align;
pub mod app;
pub mod camera;
pub mod config;
pub mod decide;
pub mod detect;
pub mod display;
pub mod door;
pub mod embed;
pub mod enroll_camera;
pub mod enroll_live;
pub mod eval;
pub mod exit;
pub mod frame;
pub mod gallery;
pub mod infer;
pub mod liveness;
pub mod mqtt;
pub mod npu_state;
pub mod par;
pub mod pipeline;
pub mod route;
pub mod secret;
pub mod selftest;
pub mod service;
pub mod shell;
pub mod track;
