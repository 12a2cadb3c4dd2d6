//! Evaluation and benchmarking behind `portier eval` and `portier bench`: verification and
//! identification statistics on labelled photos, the LFW protocol, and per-stage timings.
//!
//! Must not: be on the appliance's hot path; these are offline tools.

pub mod bench;
pub mod bench_display;
pub mod bench_loop;
pub mod bench_match;
pub mod bench_startup;
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

use std::path::PathBuf;

use crate::detect::DetectError;
use crate::embed::EmbedError;
use crate::infer::InferError;
use crate::liveness::LivenessError;
use crate::pipeline::PipelineError;

/// Errors of the evaluation and benchmark tools: one family, mapped to an exit status once
/// (`exit.rs`). A model's failure keeps its own variant (`Runtime`, `Detect`, `Embed`,
/// `Liveness`), never re-wrapped.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A labels, pairs or photo file is unreadable or malformed.
    #[error("{path}: {reason}")]
    Input {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A command-line value is unusable.
    #[error("{0}")]
    Usage(String),
    /// The config names no liveness models.
    #[error("config {0}: no [liveness] section (it names the models to evaluate)")]
    NoLivenessSection(PathBuf),
    /// The routing file is unreadable or invalid.
    #[error("routing file {path}: {reason}")]
    Routing {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The measurements do not support a decision (e.g. a backend unreliable at every size).
    #[error("calibration: {0}")]
    Calibration(String),
    /// An output file could not be written.
    #[error("{path}: cannot write: {reason}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// ONNX Runtime could not be loaded, or a model not opened.
    #[error(transparent)]
    Runtime(#[from] InferError),
    /// The detector failed.
    #[error(transparent)]
    Detect(#[from] DetectError),
    /// A recognizer failed.
    #[error(transparent)]
    Embed(#[from] EmbedError),
    /// The liveness models failed.
    #[error(transparent)]
    Liveness(#[from] LivenessError),
}

impl From<PipelineError> for EvalError {
    fn from(e: PipelineError) -> Self {
        match e {
            PipelineError::Runtime(i) => Self::Runtime(i),
            PipelineError::Detect(d) => Self::Detect(d),
            PipelineError::Embed(m) => Self::Embed(m),
        }
    }
}
