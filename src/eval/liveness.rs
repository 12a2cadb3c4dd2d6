//! `portier eval liveness` and `portier bench liveness`: the liveness check on labelled photos
//! (live or spoof), with the appliance's own detector finding the face box, reported in the
//! terms of ISO/IEC 30107-3: APCER (attack presentations accepted as live, overall and per
//! attack type) and BPCER (live presentations refused) at the configured threshold, each
//! sample's scores, and a score histogram; and the time one check adds to a decision.
//!
//! Must not: be on the appliance's hot path, or hide a sample: a photo without a face is
//! listed, and a live sample that fails is listed as failed.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::config::{Config, LivenessSection};
use crate::detect::{Detection, Detector};
use crate::frame::load_image;
use crate::liveness::{LivenessCheck, MiniFasNet};

use super::bench_loop::Percentiles;
use super::EvalError;

/// One labelled photo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LivenessLabel {
    /// The photo.
    pub path: PathBuf,
    /// Whether it shows a live person (else an attack).
    pub live: bool,
    /// The attack (presentation attack instrument), for spoofs.
    pub attack: Option<String>,
}

#[derive(serde::Deserialize)]
struct RawLabel {
    label: String,
    attack: Option<String>,
}

/// Reads a labels file: a JSON object from file name (relative to the file's folder) to
/// `{"label": "live" | "spoof", "attack": ...}` (the shared samples' `labels.json`), in file
/// name order.
pub fn read_labels(path: &Path) -> Result<Vec<LivenessLabel>, EvalError> {
    let bad = |reason: String| EvalError::Input { path: path.into(), reason };
    let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read: {e}")))?;
    let raw: std::collections::BTreeMap<String, RawLabel> =
        serde_json::from_str(&text).map_err(|e| bad(format!("not a labels object: {e}")))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    raw.into_iter()
        .map(|(file, l)| {
            let live = match l.label.as_str() {
                "live" => true,
                "spoof" => false,
                other => {
                    return Err(bad(format!("{file}: label {other:?}, expected live or spoof")))
                }
            };
            Ok(LivenessLabel { path: dir.join(file), live, attack: l.attack })
        })
        .collect()
}

/// One sample's result.
#[derive(Debug, Clone, Serialize)]
pub struct SampleResult {
    /// File name.
    pub file: String,
    /// `live` or `spoof`.
    pub label: &'static str,
    /// The attack, for spoofs.
    pub attack: Option<String>,
    /// The face box used (`[x1, y1, x2, y2]`), the largest the detector found; `None`: no
    /// face (counted as refused).
    pub bbox: Option<[f32; 4]>,
    /// Ensemble live score.
    pub score: Option<f32>,
    /// MiniFASNetV2's live probability.
    pub v2: Option<f32>,
    /// MiniFASNetV1SE's live probability.
    pub v1se: Option<f32>,
    /// Whether the check accepted it as live at the threshold.
    pub accepted: bool,
    /// Whether that is right.
    pub correct: bool,
}

/// APCER of one attack type.
#[derive(Debug, Clone, Serialize)]
pub struct AttackRate {
    /// The attack.
    pub attack: String,
    /// Presentations.
    pub samples: usize,
    /// Accepted as live.
    pub accepted: usize,
    /// accepted / samples.
    pub apcer: f64,
}

/// The `portier eval liveness` report.
#[derive(Debug, Clone, Serialize)]
pub struct LivenessReport {
    /// The check.
    pub model: &'static str,
    /// Detector model file.
    pub detector: String,
    /// Threshold applied.
    pub threshold: f32,
    /// Per sample, in file name order.
    pub samples: Vec<SampleResult>,
    /// Attack presentations.
    pub attacks: usize,
    /// Live presentations.
    pub bona_fide: usize,
    /// Attack presentations accepted / attacks (NaN without attacks).
    pub apcer: f64,
    /// Per attack type.
    pub apcer_by_attack: Vec<AttackRate>,
    /// Live presentations refused / live presentations (NaN without any).
    pub bpcer: f64,
    /// Highest score of an attack (the margin below the threshold).
    pub max_attack_score: Option<f32>,
    /// Lowest score of a live sample.
    pub min_live_score: Option<f32>,
    /// Ten bins over 0..1: (attacks, live) per bin.
    pub histogram: Vec<(usize, usize)>,
}

fn liveness_section(config: &Config) -> Result<&LivenessSection, EvalError> {
    config.liveness.as_ref().ok_or_else(|| EvalError::NoLivenessSection(config.source.clone()))
}

/// The largest face of a photo (the one in front of the camera).
fn largest(dets: &[Detection]) -> Option<Detection> {
    dets.iter().copied().max_by(|a, b| a.area().total_cmp(&b.area()))
}

/// Runs the check on every labelled photo with the config's detector and liveness models.
pub fn run(config: &Config, labels: &[LivenessLabel]) -> Result<LivenessReport, EvalError> {
    let section = liveness_section(config)?;
    crate::infer::init(config.onnxruntime.library.as_deref(), config.onnxruntime.intra_threads)?;
    let mut detector = Detector::open(config.detector.clone())?;
    let mut check = MiniFasNet::open(&section.settings)?;
    let threshold = section.settings.threshold;
    let mut dets = Vec::new();
    let mut samples = Vec::new();
    for l in labels {
        let image = load_image(&l.path)
            .map_err(|e| EvalError::Input { path: l.path.clone(), reason: e.to_string() })?;
        detector.detect(image.view(), &mut dets)?;
        let face = largest(&dets);
        let score = match face {
            Some(d) => Some(check.check(image.view(), d.bbox)?),
            None => None,
        };
        let accepted = score.is_some_and(|s| s.score >= threshold);
        samples.push(SampleResult {
            file: l.path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default(),
            label: if l.live { "live" } else { "spoof" },
            attack: l.attack.clone(),
            bbox: face.map(|d| d.bbox),
            score: score.map(|s| s.score),
            v2: score.map(|s| s.models[0]),
            v1se: score.map(|s| s.models[1]),
            accepted,
            correct: accepted == l.live,
        });
    }
    Ok(report(check.model(), config, threshold, samples))
}

fn report(
    model: &'static str,
    config: &Config,
    threshold: f32,
    samples: Vec<SampleResult>,
) -> LivenessReport {
    let attacks: Vec<&SampleResult> = samples.iter().filter(|s| s.label == "spoof").collect();
    let live: Vec<&SampleResult> = samples.iter().filter(|s| s.label == "live").collect();
    let rate = |n: usize, d: usize| if d == 0 { f64::NAN } else { n as f64 / d as f64 };
    let mut kinds: Vec<String> =
        attacks.iter().map(|s| s.attack.clone().unwrap_or_else(|| "unspecified".into())).collect();
    kinds.sort();
    kinds.dedup();
    let apcer_by_attack = kinds
        .into_iter()
        .map(|attack| {
            let of: Vec<_> = attacks
                .iter()
                .filter(|s| s.attack.as_deref().unwrap_or("unspecified") == attack)
                .collect();
            let accepted = of.iter().filter(|s| s.accepted).count();
            AttackRate { samples: of.len(), accepted, apcer: rate(accepted, of.len()), attack }
        })
        .collect();
    let mut histogram = vec![(0, 0); 10];
    for s in &samples {
        if let Some(score) = s.score {
            let bin = ((score * 10.0) as usize).min(9);
            if s.label == "live" {
                histogram[bin].1 += 1;
            } else {
                histogram[bin].0 += 1;
            }
        }
    }
    let scores = |v: &[&SampleResult]| v.iter().filter_map(|s| s.score).collect::<Vec<_>>();
    LivenessReport {
        model,
        detector: config.detector.path.display().to_string(),
        threshold,
        attacks: attacks.len(),
        bona_fide: live.len(),
        apcer: rate(attacks.iter().filter(|s| s.accepted).count(), attacks.len()),
        apcer_by_attack,
        bpcer: rate(live.iter().filter(|s| !s.accepted).count(), live.len()),
        max_attack_score: scores(&attacks).into_iter().reduce(f32::max),
        min_live_score: scores(&live).into_iter().reduce(f32::min),
        histogram,
        samples,
    }
}

/// The `portier bench liveness` report: the time one liveness check (two crops, two models)
/// takes, and so what it adds to an access decision.
#[derive(Debug, Clone, Serialize)]
pub struct LivenessBench {
    /// CPU model.
    pub cpu: String,
    /// Logical cores.
    pub cores: usize,
    /// Photos the faces came from.
    pub photos: usize,
    /// Measured checks.
    pub checks: usize,
    /// One check: crops, tensors, both models.
    pub check: Percentiles,
    /// Both models' run time alone.
    pub models: Percentiles,
    /// Liveness checks per decision (one per confirming vote: `decision.votes`).
    pub checks_per_decision: usize,
}

/// Times `repeat` checks on the largest face of each photo, after `warmup` unmeasured ones.
pub fn bench(
    config: &Config,
    photos: &[PathBuf],
    repeat: usize,
    warmup: usize,
) -> Result<LivenessBench, EvalError> {
    let section = liveness_section(config)?;
    crate::infer::init(config.onnxruntime.library.as_deref(), config.onnxruntime.intra_threads)?;
    let mut detector = Detector::open(config.detector.clone())?;
    let mut check = MiniFasNet::open(&section.settings)?;
    let mut dets = Vec::new();
    let (mut total, mut models) = (Vec::new(), Vec::new());
    for path in photos {
        let image = load_image(path)
            .map_err(|e| EvalError::Input { path: path.clone(), reason: e.to_string() })?;
        detector.detect(image.view(), &mut dets)?;
        let Some(face) = largest(&dets) else { continue };
        for i in 0..warmup + repeat {
            let t = Instant::now();
            check.check(image.view(), face.bbox)?;
            if i >= warmup {
                total.push(t.elapsed().as_secs_f64() * 1e3);
                models.push(check.last_infer().as_secs_f64() * 1e3);
            }
        }
    }
    Ok(LivenessBench {
        cpu: super::bench::cpu_name(),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        photos: photos.len(),
        checks: total.len(),
        check: Percentiles::of(total),
        models: Percentiles::of(models),
        checks_per_decision: config.app.decision.votes,
    })
}

/// The report as text: the per-sample table, the error rates, the histogram.
pub fn print(r: &LivenessReport) {
    println!(
        "liveness check {} at threshold {:.3}; face boxes from {}",
        r.model, r.threshold, r.detector
    );
    println!(
        "\n{:<28} {:<6} {:>7} {:>7} {:>7}  {:<8} attack",
        "sample", "label", "score", "v2", "v1se", "verdict"
    );
    let f = |v: Option<f32>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
    for s in &r.samples {
        let verdict = match (s.bbox, s.accepted) {
            (None, _) => "no face",
            (_, true) => "live",
            (_, false) => "spoof",
        };
        println!(
            "{:<28} {:<6} {:>7} {:>7} {:>7}  {:<8} {}{}",
            s.file,
            s.label,
            f(s.score),
            f(s.v2),
            f(s.v1se),
            verdict,
            s.attack.as_deref().unwrap_or(""),
            if s.correct { "" } else { "  <- WRONG" }
        );
    }
    let pct = |v: f64| if v.is_nan() { "n/a".to_string() } else { format!("{:.1}%", v * 100.0) };
    println!(
        "\nAPCER {} ({} attack presentation(s) accepted of {}); BPCER {} ({} live refused of {})",
        pct(r.apcer),
        r.samples.iter().filter(|s| s.label == "spoof" && s.accepted).count(),
        r.attacks,
        pct(r.bpcer),
        r.samples.iter().filter(|s| s.label == "live" && !s.accepted).count(),
        r.bona_fide
    );
    for a in &r.apcer_by_attack {
        println!("  APCER {:>6}  {} ({}/{})", pct(a.apcer), a.attack, a.accepted, a.samples);
    }
    if let (Some(a), Some(l)) = (r.max_attack_score, r.min_live_score) {
        println!("highest attack score {a:.3}, lowest live score {l:.3}");
    }
    println!("\nscore histogram (s = spoof, L = live)");
    for (i, (s, l)) in r.histogram.iter().enumerate() {
        println!(
            "  {:.1}-{:.1} |{}{}",
            i as f32 / 10.0,
            (i + 1) as f32 / 10.0,
            "s".repeat(*s),
            "L".repeat(*l)
        );
    }
}
