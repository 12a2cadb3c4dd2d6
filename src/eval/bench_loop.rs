//! `portier bench loop`: the appliance loop on a replayed stream as fast as it goes, with the
//! latency from each frame's arrival to its access decision ([`App::last_latency`]), its split
//! over the stages ([`App::last_stages`]) and the frames per second.
//!
//! The door is always the logging fake (a benchmark never drives a relay), frames are not
//! paced, and the gallery is the configured one when it exists (empty otherwise: every face is
//! embedded until its track is decided). A benchmark, never a test: nothing here asserts a time.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::bench::cpu_name;
use super::EvalError;
use crate::app::{App, Parts, StepOutcome};
use crate::camera::replay::{ReplaySettings, ReplaySource};
use crate::config::Config;
use crate::gallery::Gallery;
use crate::pipeline::Pipeline;

/// Distribution of one per-frame time, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Percentiles {
    /// Median.
    pub median_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest frame.
    pub max_ms: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `v` (NaN when empty).
    pub fn of(mut v: Vec<f64>) -> Self {
        if v.is_empty() {
            return Self {
                median_ms: f64::NAN,
                p90_ms: f64::NAN,
                p99_ms: f64::NAN,
                max_ms: f64::NAN,
            };
        }
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        Self { median_ms: at(0.5), p90_ms: at(0.9), p99_ms: at(0.99), max_ms: at(1.0) }
    }
}

/// The `portier bench loop` report.
#[derive(Debug, Clone, Serialize)]
pub struct LoopReport {
    /// The replayed stream.
    pub stream: String,
    /// Frame size.
    pub width: u32,
    /// Frame size.
    pub height: u32,
    /// Unmeasured frames first (buffers and ONNX Runtime's arena sized).
    pub warmup: usize,
    /// Frames measured.
    pub frames: usize,
    /// People in the gallery.
    pub gallery_people: usize,
    /// Faces detected in the measured frames.
    pub faces: u64,
    /// Embeddings computed in the measured frames.
    pub embeddings: u64,
    /// Grants in the whole replay.
    pub grants: u64,
    /// CPU model.
    pub cpu: String,
    /// Logical cores.
    pub cores: usize,
    /// From a frame's arrival (the source handed it over) to its decision.
    pub latency: Percentiles,
    /// Decoding (part of the latency).
    pub decode: Percentiles,
    /// Detection (part of the latency).
    pub detect: Percentiles,
    /// Tracking (part of the latency).
    pub track: Percentiles,
    /// Alignment, embedding, matching and the decision (part of the latency).
    pub embed_match_decide: Percentiles,
    /// Measured frames over the wall time of their steps (source included).
    pub frames_per_s: f64,
}

/// Replays `stream` through the loop built from `config` (detector, recognizer, gallery,
/// decision settings), skipping `warmup` frames and measuring up to `frames` (all when `None`;
/// the stream is looped when it is shorter than `warmup + frames`).
pub fn run(
    config: &Config,
    stream: &Path,
    frames: Option<usize>,
    warmup: usize,
) -> Result<LoopReport, EvalError> {
    let input = |reason: String| EvalError::Input { path: stream.into(), reason };
    let pipeline = Pipeline::open(config)?;
    let model = pipeline.embedder_model_id();
    let gallery_err = |e: crate::gallery::GalleryError| EvalError::Input {
        path: config.gallery_path.clone(),
        reason: e.to_string(),
    };
    let gallery = if config.gallery_path.is_file() {
        Gallery::open(&config.gallery_path, &config.gallery_key_file)
    } else {
        Gallery::open_in_memory()
    }
    .map_err(gallery_err)?;
    let matcher = gallery.matcher(&model).map_err(gallery_err)?;
    let gallery_people = matcher.people();
    let source = ReplaySource::open(ReplaySettings {
        path: stream.into(),
        fps: 30.0,
        looped: frames.is_some(),
        pace: false,
    })
    .map_err(|e| input(e.to_string()))?;
    let (door, _, _) = crate::door::fake::idle_door(&config.door.door)
        .map_err(|e| input(format!("fake door: {e}")))?;
    let parts = Parts::cpu(pipeline, Box::new(source), matcher, Box::new(door));
    let mut app = App::new(config.app.clone(), parts).map_err(|e| input(e.to_string()))?;

    let limit = frames.map_or(usize::MAX, |f| warmup.saturating_add(f));
    let mut cols: [Vec<f64>; 5] = Default::default();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let (mut seen, mut wall) = (0usize, Duration::ZERO);
    let mut at_warm = app.counters();
    let (start, mut now) = (Instant::now(), Duration::ZERO);
    while seen < limit {
        // The loop's clock as `App::run` passes it: the stream's own for a replay (a 30 fps
        // camera's time, whatever this machine's speed).
        now = app.loop_time(start, now).0;
        let t = Instant::now();
        let outcome = app.step(now).map_err(|e| input(e.to_string()))?;
        let took = t.elapsed();
        app.drain_events().for_each(drop);
        match outcome {
            StepOutcome::EndOfStream => break,
            StepOutcome::Frame { .. } => {}
            StepOutcome::Dropped | StepOutcome::NoFrame => continue,
        }
        seen += 1;
        if seen == warmup {
            at_warm = app.counters();
        }
        if seen <= warmup {
            continue;
        }
        wall += took;
        let s = app.last_stages();
        let row = [
            app.last_latency().map_or(f64::NAN, ms),
            ms(s.decode),
            ms(s.detect),
            ms(s.track),
            ms(s.decide),
        ];
        for (c, v) in cols.iter_mut().zip(row) {
            c.push(v);
        }
    }
    let measured = cols[0].len();
    if measured == 0 {
        return Err(input(format!("no frames measured ({seen} frames, {warmup} warm-up)")));
    }
    let end = app.counters();
    let (width, height) = frame_size(stream).unwrap_or((0, 0));
    let [latency, decode, detect, track, decide] = cols.map(Percentiles::of);
    Ok(LoopReport {
        stream: stream.display().to_string(),
        width,
        height,
        warmup,
        frames: measured,
        gallery_people,
        faces: end.faces - at_warm.faces,
        embeddings: end.embeddings - at_warm.embeddings,
        grants: end.grants,
        cpu: cpu_name(),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        latency,
        decode,
        detect,
        track,
        embed_match_decide: decide,
        frames_per_s: measured as f64 / wall.as_secs_f64(),
    })
}

/// Width and height of the stream's first frame.
fn frame_size(stream: &Path) -> Option<(u32, u32)> {
    let bytes = std::fs::read(stream).ok()?;
    let &(s, e) = crate::camera::replay::split_mjpeg(&bytes).first()?;
    let img = crate::frame::decode_image(&bytes[s..e], stream).ok()?;
    Some((img.width(), img.height()))
}
