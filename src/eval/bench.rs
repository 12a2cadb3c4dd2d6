//! `portier bench pipeline`: per-stage times of the still-image pipeline (decode, detect
//! pre/infer/post, align, embed, match), the whole frame, and the models' own inference time
//! for comparison; medians over repeated runs after warm-up.
//!
//! A benchmark, never a test: nothing here asserts a time.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::EvalError;
use crate::gallery::{EnrollMode, Gallery};
use crate::pipeline::{Pipeline, Select, Timings};

/// Median and 90th percentile of one stage, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Stat {
    /// Median.
    pub median_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
}

fn stat(mut v: Vec<f64>) -> Stat {
    if v.is_empty() {
        return Stat { median_ms: f64::NAN, p90_ms: f64::NAN };
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    Stat { median_ms: at(0.5), p90_ms: at(0.9) }
}

/// Results for one photo.
#[derive(Debug, Clone, Serialize)]
pub struct PhotoBench {
    /// The photo.
    pub photo: String,
    /// Its size.
    pub width: u32,
    /// Its size.
    pub height: u32,
    /// Faces found.
    pub faces: usize,
    /// Decoding the file (JPEG/PNG) into RGB.
    pub decode: Stat,
    /// Letterbox + normalisation.
    pub detect_pre: Stat,
    /// Detector model.
    pub detect_infer: Stat,
    /// Decoding outputs + NMS.
    pub detect_post: Stat,
    /// Alignment of all faces.
    pub align: Stat,
    /// Embedding of all faces (preprocessing + model).
    pub embed: Stat,
    /// 1:N matching of all faces against the benchmark gallery.
    pub matching: Stat,
    /// Detect + align + embed + match: one camera frame after decoding.
    pub frame: Stat,
    /// Decode + frame.
    pub frame_with_decode: Stat,
    /// Detector and recognizer inference alone.
    pub models_only: Stat,
    /// frame / models_only (medians).
    pub overhead_ratio: f64,
}

/// The whole benchmark report.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Runs measured per photo.
    pub repeat: usize,
    /// Unmeasured runs first.
    pub warmup: usize,
    /// Templates in the synthetic gallery matched against.
    pub gallery_templates: usize,
    /// CPU model.
    pub cpu: String,
    /// Logical cores.
    pub cores: usize,
    /// Per photo.
    pub photos: Vec<PhotoBench>,
}

/// The CPU model name from /proc/cpuinfo.
pub fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name") || l.starts_with("Model"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// Benchmarks the pipeline on each photo. The match stage runs against an in-memory gallery of
/// `gallery_people` synthetic people with 3 templates each.
pub fn run(
    pipeline: &mut Pipeline,
    photos: &[impl AsRef<Path>],
    repeat: usize,
    warmup: usize,
    gallery_people: usize,
) -> Result<BenchReport, EvalError> {
    use crate::embed::Embedder;
    let dim = pipeline.embedder.dim();
    let model_id = pipeline.embedder.model_id().to_string();
    let gerr = |e: crate::gallery::GalleryError| EvalError::Input {
        path: ":memory:".into(),
        reason: e.to_string(),
    };
    let mut gallery = Gallery::open_in_memory().map_err(gerr)?;
    // Deterministic pseudo-random templates (xorshift): the matcher's cost depends only on
    // their number and dimension.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    for p in 0..gallery_people {
        let templates: Vec<Vec<f32>> = (0..3).map(|_| (0..dim).map(|_| next()).collect()).collect();
        gallery
            .enroll(&format!("person {p:05}"), &model_id, &templates, EnrollMode::New)
            .map_err(gerr)?;
    }
    let matcher = gallery.matcher(&model_id).map_err(gerr)?;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mut out = Vec::new();
    for photo in photos {
        let path = photo.as_ref();
        let bytes = std::fs::read(path)
            .map_err(|e| EvalError::Input { path: path.into(), reason: e.to_string() })?;
        let mut cols: [Vec<f64>; 10] = Default::default();
        let mut faces = 0;
        let (mut width, mut height) = (0, 0);
        for i in 0..warmup + repeat {
            let t0 = Instant::now();
            let img = crate::frame::decode_image(&bytes, path)
                .map_err(|e| EvalError::Input { path: path.into(), reason: e.to_string() })?;
            let decode = t0.elapsed();
            (width, height) = (img.width(), img.height());
            let mut t = Timings::default();
            let t1 = Instant::now();
            let found = pipeline.faces(img.view(), Select::All, Some(&mut t))?;
            let t2 = Instant::now();
            for f in &found {
                let r = matcher.best_two(&f.embedding).map_err(gerr)?;
                std::hint::black_box(r);
            }
            let matching = t2.elapsed();
            let frame = t1.elapsed();
            faces = found.len();
            if i < warmup {
                continue;
            }
            let row = [
                ms(decode),
                ms(t.detect.pre),
                ms(t.detect.infer),
                ms(t.detect.post),
                ms(t.align),
                ms(t.embed),
                ms(matching),
                ms(frame),
                ms(decode + frame),
                ms(t.detect.infer + t.embed_infer),
            ];
            for (c, v) in cols.iter_mut().zip(row) {
                c.push(v);
            }
        }
        let [decode, pre, inf, post, align, embed, matching, frame, fwd, models] = cols.map(stat);
        out.push(PhotoBench {
            photo: path.display().to_string(),
            width,
            height,
            faces,
            decode,
            detect_pre: pre,
            detect_infer: inf,
            detect_post: post,
            align,
            embed,
            matching,
            frame,
            frame_with_decode: fwd,
            models_only: models,
            overhead_ratio: frame.median_ms / models.median_ms,
        });
    }
    Ok(BenchReport {
        repeat,
        warmup,
        gallery_templates: matcher.len(),
        cpu: cpu_name(),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        photos: out,
    })
}
