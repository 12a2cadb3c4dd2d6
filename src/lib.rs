//! portier: face-recognition door access for a Raspberry Pi 5 with a Hailo-8 NPU.
//!
//! The crate is the appliance's library; `src/main.rs` is only its command line. One frame
//! flows through the modules in this order, each handing a plain value to the next:
//!
//! ```text
//! frame ─▶ detect ─▶ align (112x112) ─▶ embed (cpu | npu) ─▶ gallery match ─▶ decision
//! ```
//!
//! The modules fall in four groups. The files sit side by side in `src/` (a module's path is
//! its file's: `crate::detect` is `src/detect/`); this map and ARCHITECTURE.md's layout group
//! them. No import circle joins any of them (`scripts/import-cycles`, a CI step).
//!
//! **Stages and the pure core** (functions or state machines of inputs and `now`; no I/O of
//! their own but their backends' files):
//! - [`frame`]: image types, decoding, resampling.
//! - [`detect`]: SCRFD / YuNet decoding, letterbox, NMS, the far-face pass; a frame's
//!   [`detect::Faces`].
//! - [`align`]: 5-point similarity transform and warp.
//! - [`embed`]: the `Embedder` trait, the CPU and NPU backends, reopening a failed NPU.
//! - [`route`]: which face goes to which backend (size, norm cliff, fallback).
//! - [`liveness`]: passive presentation-attack detection on a grant's candidates.
//! - [`gallery`]: enrolled people in SQLite (sealed templates), 1:N matching.
//! - [`track`]: faces across frames and each track's best-quality face.
//! - [`decide`]: the vote window per track, thresholds by face size and gallery size.
//! - [`door`]: the door controller state machine over embedded-hal pins, the relock guard,
//!   `door::open`.
//!
//! **The loop and its shells** (the one place frames, time and the outside world meet):
//! - [`camera`]: frame sources (V4L2, replayed streams and folders), `camera::open`.
//! - [`app`]: the loop (`App::step(now)`), the decision core's shell around the stages.
//! - [`shell`]: the loop's outside world while `portier run` runs (MQTT, display, gallery jobs).
//! - [`display`]: the status screens (embedded-graphics) and their sinks, `display::open`.
//! - [`mqtt`]: MQTT payloads, Home Assistant discovery, signed commands, the client thread.
//! - [`enroll_live`]: live enrolment's state machine, fed the frames the loop sees anyway.
//! - [`service`]: systemd's notify protocol (ready, watchdog, status) without libsystemd.
//!
//! **Tools** (the commands beside `run`):
//! - [`pipeline`]: detect → align → embed for a still image, with stage timings; the loop's
//!   parts opened from the config (`Parts::cpu`, `NpuParts::open`).
//! - [`enroll_camera`]: `portier enroll --from-camera` and the enrolment's settings from the
//!   config.
//! - [`eval`]: verification statistics, LFW protocol, calibration, benchmarks.
//! - [`selftest`]: `portier selftest`, every part of the appliance checked in one table.
//!
//! **Plumbing**:
//! - [`config`]: the TOML configuration, parsed and validated into the stages' own settings
//!   types (which import nothing from it).
//! - [`infer`]: ONNX Runtime loading and sessions; the HailoRT binding.
//! - [`exit`]: the process's exit statuses, one `From` per error family.
//! - [`npu_state`]: whether the NPU's model is installed (CPU only when it is not).
//! - [`par`]: bands of a pixel pass on several cores (the letterbox).
//! - [`secret`]: permission checks for files holding keys and passwords.
//! - [`startup`]: the start-up's phases, timed (`portier run` logs them, `bench startup` reads
//!   them).

// Stages and the pure core.
pub mod align;
pub mod decide;
pub mod detect;
pub mod door;
pub mod embed;
pub mod frame;
pub mod gallery;
pub mod liveness;
pub mod route;
pub mod track;

// The loop and its shells.
pub mod app;
pub mod camera;
pub mod display;
pub mod enroll_live;
pub mod mqtt;
pub mod service;
pub mod shell;

// Tools.
pub mod enroll_camera;
pub mod eval;
pub mod pipeline;
pub mod selftest;

// Plumbing.
pub mod config;
pub mod exit;
pub mod infer;
pub mod npu_state;
pub mod par;
pub mod secret;
pub mod startup;
