//! Frame sources: where camera frames come from.
//!
//! A [`FrameSource`] hands out one encoded or raw frame at a time ([`RawFrame`], borrowed from
//! the source's own buffers) and never decodes: decoding happens in the loop through
//! [`crate::frame::FrameDecoder`], so a corrupt frame is counted and dropped in one place
//! whatever delivered it. Backends: [`replay`] (MJPEG stream files, image folders, one image;
//! what runs without a camera and in tests) and `v4l2` (feature `v4l2`, a UVC camera).
//!
//! Must not: decode, allocate per frame once streaming, block longer than the timeout it is
//! given, or panic on anything a camera or a file can deliver.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

pub mod replay;
#[cfg(feature = "v4l2")]
pub mod v4l2;

pub use crate::frame::{PixelFormat, RawFrame};

/// Pixel format asked of a V4L2 camera.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CameraFormat {
    /// MJPEG if offered, else YUYV.
    #[default]
    Auto,
    /// MJPEG only.
    Mjpeg,
    /// YUYV only.
    Yuyv,
}

/// The camera section, validated.
#[derive(Debug, Clone, PartialEq)]
pub enum CameraConfig {
    /// Replay files.
    Replay(replay::ReplaySettings),
    /// A V4L2 camera.
    V4l2 {
        /// Device node.
        device: PathBuf,
        /// Requested width.
        width: u32,
        /// Requested height.
        height: u32,
        /// Requested frame rate.
        fps: f64,
        /// Requested format.
        format: CameraFormat,
        /// Memory-mapped buffers.
        buffers: u32,
    },
}

/// Why no frame came.
#[derive(Debug, thiserror::Error)]
pub enum CameraError {
    /// No frame within the timeout; the source is still usable.
    #[error("no frame within {0:?}")]
    Timeout(Duration),
    /// A replay reached its end (never for a looping replay or a camera).
    #[error("end of stream")]
    EndOfStream,
    /// The device went away or failed; the source reconnects with backoff on later calls and
    /// reports this once per loss.
    #[error("camera {device}: {reason}")]
    Disconnected {
        /// Device path or name.
        device: String,
        /// What happened.
        reason: String,
    },
    /// The source cannot be opened or configured at all (wrong path, no usable format).
    #[error("camera {device}: {reason}")]
    Open {
        /// Device path, file or folder.
        device: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Opens the camera a config describes: the one place that turns a [`CameraConfig`] into a
/// [`FrameSource`] (`portier run`, live enrolment, selftest). `frame_timeout` is the loop's
/// wait for one frame; a V4L2 camera silent for four of them is treated as lost and reopened.
/// A V4L2 camera in a binary built without the `v4l2` feature is [`CameraError::Open`].
pub fn open(
    camera: &CameraConfig,
    frame_timeout: Duration,
) -> Result<Box<dyn FrameSource>, CameraError> {
    match camera {
        CameraConfig::Replay(settings) => {
            Ok(Box::new(replay::ReplaySource::open(settings.clone())?))
        }
        #[cfg(feature = "v4l2")]
        CameraConfig::V4l2 { device, width, height, fps, format, buffers } => {
            let settings = v4l2::V4l2Settings::from_config(
                device.clone(),
                *width,
                *height,
                *fps,
                *format,
                *buffers,
                frame_timeout,
            );
            Ok(Box::new(v4l2::V4l2Source::open(settings)?))
        }
        #[cfg(not(feature = "v4l2"))]
        CameraConfig::V4l2 { device, .. } => {
            let _ = frame_timeout;
            Err(CameraError::Open {
                device: device.clone(),
                reason: "v4l2 is configured but this portier is built without the `v4l2` feature"
                    .into(),
            })
        }
    }
}

/// The clock the loop runs on for a source ([`crate::app::App::run`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceClock {
    /// The monotonic clock: a live camera, whose frames come when they come.
    Monotonic,
    /// The stream's own timestamps (a replay), so a clip gives the same decisions at any
    /// speed: `next` is the timestamp of the frame [`FrameSource::next_frame`] hands out next
    /// (`None` once the replay has ended), `paced` whether frames are handed out in real time.
    Stream {
        /// The next frame's timestamp.
        next: Option<Duration>,
        /// Whether `next_frame` waits in real time until a frame is due.
        paced: bool,
    },
}

/// Where frames come from.
pub trait FrameSource {
    /// Waits at most `timeout` for the next frame.
    fn next_frame(&mut self, timeout: Duration) -> Result<RawFrame<'_>, CameraError>;

    /// One line for logs: backend, device or file, format, size, rate.
    fn describe(&self) -> String;

    /// The frame rate the source delivers (nominal), when known.
    fn fps(&self) -> Option<f64> {
        None
    }

    /// The clock the loop runs on: the monotonic clock unless the source carries its own.
    fn clock(&self) -> SourceClock {
        SourceClock::Monotonic
    }
}
