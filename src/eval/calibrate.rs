//! `portier calibrate`: chooses the router's numbers from a distance sweep and writes them as a
//! `[routing]` TOML fragment whose comments give the measurements behind each number.
//!
//! - Size threshold (0 when it is the smallest size swept): the smallest sweep size from which, in every larger band, the NPU
//!   backend's median cosine to float32 is at least 0.95 and its match rate (TAR at FAR 1e-3)
//!   is within [`ROUTE_MAX_LOSS`] of the CPU recognizer's, the model the face would go to
//!   instead (the float32 reference itself, or with `[npu] twin` the configured
//!   `[recognizer]`, which may be a better or a worse model). A backend `eval distance`
//!   judges unreliable is refused outright.
//! - Norm cliff: an embedding *collapsed* when its cosine to float32 on the same crop is below
//!   [`COLLAPSE_COSINE`]; the cliff is the lowest norm such that, among the NPU's faces at or
//!   above it (all sizes), at most [`COLLAPSE_BUDGET`] collapsed. No collapsed face: 0 (off).
//! - Per-band thresholds: in each band, the threshold at FAR 1e-3 of the backend the router
//!   uses there (probes at that size against the full-size gallery); the top band pools the
//!   largest sweep size and the original photos. `cpu_bands`: the same for the CPU
//!   recognizer at every size (its far faces and its fallbacks).
//! - With camera options (`--blur-at-16px` ...) everything above is measured on the
//!   camera-like frames (`eval::camera`) instead of the clean downscaled ones.
//!
//! Must not: guess. Every number written comes from the sweep, with the sample it came from.

use std::path::PathBuf;

use clap::Args;

use super::camera::CameraArgs;
use super::distance::{
    npu_index, sweep_with_camera, Line, Mode, Outcome, Sample, Sweep, SweepArgs,
    MIN_FACES_TO_JUDGE, RELIABLE_MEDIAN_COSINE,
};
use super::metrics;
use super::EvalError;
use crate::config::Config;
use crate::embed::dot;
use crate::route::{BandThreshold, RoutingConfig};

/// An NPU embedding below this cosine to float32 on the same crop has collapsed.
pub const COLLAPSE_COSINE: f32 = 0.9;

/// Fraction of collapsed embeddings tolerated above the norm cliff.
pub const COLLAPSE_BUDGET: f64 = 0.01;

/// The most match rate (TAR at FAR 1e-3) the NPU may lose to float32 in a band it takes.
pub const ROUTE_MAX_LOSS: f64 = 0.01;

/// The false-accept rate the per-band thresholds are chosen at.
pub const BAND_FAR: f64 = 1e-3;

/// Arguments of `portier calibrate`.
#[derive(Args, Debug, Clone)]
pub struct CalibrateArgs {
    #[command(flatten)]
    /// The sweep.
    pub sweep: SweepArgs,
    /// The backend to calibrate routing for (default: the first `--backend`).
    #[arg(long)]
    pub npu: Option<String>,
    /// Write the fragment here instead of standard output.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// Calibrate on camera-like frames (defocus, noise, MJPEG) instead of clean downscaling.
    #[command(flatten)]
    pub camera: CameraArgs,
}

/// The calibration's result: the configuration and the fragment text with its reasons.
#[derive(Debug, Clone)]
pub struct Calibration {
    /// The chosen numbers.
    pub routing: RoutingConfig,
    /// The TOML fragment, with comments.
    pub toml: String,
}

/// Chooses the routing numbers for backend `npu` from a sweep: on its camera-like frames when
/// it has them, else on the clean downscaled ones (detected landmarks either way).
pub fn calibrate(sweep: &Sweep, npu: usize) -> Result<Calibration, EvalError> {
    let report = sweep.report(&super::distance::Thresholds::Fixed(1.0), None);
    let mode = sweep.modes.iter().position(|m| *m == Mode::Camera).unwrap_or(0);
    let (cpu, cpu_name) = (sweep.cpu, &sweep.backends[sweep.cpu]);
    let name = &sweep.backends[npu];
    let verdict = report
        .verdicts
        .iter()
        .find(|v| &v.backend == name)
        .ok_or_else(|| EvalError::Calibration(format!("no verdict for {name}")))?;
    if verdict.reliable_from_px.is_none() {
        return Err(EvalError::Calibration(format!(
            "backend {name} is {}: route no face to it (see `portier eval distance`)",
            verdict.verdict
        )));
    }
    // The routing threshold is stricter than the reliability verdict: the door should lose
    // (almost) nothing by routing, so the NPU takes a band only when its match rate is within
    // ROUTE_MAX_LOSS of the CPU recognizer's there and in every larger band.
    let mut from: Option<Option<u32>> = None;
    for band in report.modes[mode].bands.iter().rev() {
        let (Some(r), Some(x)) = (band.lines.get(cpu), band.lines.get(npu)) else { continue };
        if x.stats.faces < MIN_FACES_TO_JUDGE {
            continue;
        }
        let cos = x.stats.cosine_to_float32.map_or(0.0, |c| c.p50);
        let loss = r.stats.match_rate - x.stats.match_rate;
        if cos < RELIABLE_MEDIAN_COSINE || loss > ROUTE_MAX_LOSS {
            break;
        }
        from = Some(band.eye_distance_px);
    }
    let npu_min = match from {
        None => {
            return Err(EvalError::Calibration(format!(
                "backend {name} loses more than {ROUTE_MAX_LOSS} of match rate to the CPU \
                 recognizer ({cpu_name}) even at the original size: route no face to it"
            )))
        }
        // Only the originals pass: every size of the sweep goes to the CPU.
        Some(None) => sweep.sizes.iter().flatten().max().map_or(0, |m| m + 1),
        // From the smallest size swept, where the NPU is at least as good as the CPU: every
        // face (a detected "8 px" face measures 7.x px and would go to the CPU, the worse).
        Some(Some(px)) if sweep.sizes.iter().flatten().min() == Some(&px) => 0,
        Some(Some(px)) => px,
    };
    let mut notes = vec![
        format!("# {name}: {} ({})", verdict.verdict, report.criterion),
        format!(
            "# npu_min_eye_distance_px: the smallest size from which, in every larger band, {name}'s \
             median cosine to float32 >= {RELIABLE_MEDIAN_COSINE} and its match rate is at most \
             {ROUTE_MAX_LOSS} below the CPU recognizer's ({cpu_name}){} (0 when that is the \
             smallest size swept: every face):",
            if mode == 0 { "" } else { ", on camera-like frames" }
        ),
    ];
    for band in &report.modes[mode].bands {
        if let Some(l) = band.lines.get(npu) {
            notes.push(format!(
                "#   {:>8} px: {} faces, median cosine to float32 {:.3}, match rate {:.3} \
                 ({cpu_name} {:.3}), norm p01 {:.2} p50 {:.2}",
                band.label,
                l.stats.faces,
                l.stats.cosine_to_float32.map_or(f64::NAN, |c| c.p50),
                l.stats.match_rate,
                band.lines[cpu].stats.match_rate,
                l.stats.norm.map_or(f64::NAN, |n| n.p01),
                l.stats.norm.map_or(f64::NAN, |n| n.p50),
            ));
        }
    }

    // Norm cliff over every face the NPU embedded (detected landmarks, all sizes).
    let mut faces = sweep.norm_and_cosine(mode, npu);
    faces.sort_by(|a, b| a.0.total_cmp(&b.0));
    let collapsed_total = faces.iter().filter(|f| f.1 < COLLAPSE_COSINE).count();
    let mut cliff = 0.0f32;
    if collapsed_total > 0 {
        // Walk up the norms until the collapsed share of the rest is within budget.
        let mut collapsed_above = collapsed_total;
        for (k, f) in faces.iter().enumerate() {
            let rest = faces.len() - k;
            if collapsed_above as f64 <= COLLAPSE_BUDGET * rest as f64 {
                cliff = f.0;
                break;
            }
            collapsed_above -= usize::from(f.1 < COLLAPSE_COSINE);
            cliff = f32::INFINITY;
        }
    }
    if !cliff.is_finite() {
        return Err(EvalError::Calibration(format!(
            "backend {name}: no norm separates collapsed embeddings (cosine < {COLLAPSE_COSINE}) \
             from good ones: route no face to it"
        )));
    }
    let good_below = faces.iter().filter(|f| f.0 < cliff && f.1 >= COLLAPSE_COSINE).count();
    let collapsed_below = faces.iter().filter(|f| f.0 < cliff && f.1 < COLLAPSE_COSINE).count();
    let cliff_note = if collapsed_total == 0 {
        format!(
            "# npu_norm_cliff: none of {} faces collapsed (cosine to float32 < {COLLAPSE_COSINE}): \
             no cliff, the check is off",
            faces.len()
        )
    } else {
        format!(
            "# npu_norm_cliff: {collapsed_total} of {} faces collapsed (cosine to float32 < \
             {COLLAPSE_COSINE}); below {cliff:.3}: {collapsed_below} collapsed and {good_below} good \
             faces go back to the CPU; at most {:.0}% collapsed above",
            faces.len(),
            COLLAPSE_BUDGET * 100.0
        )
    };

    // Per-band thresholds with the router's choice of backend in each band.
    let routing_probe = RoutingConfig {
        npu_min_eye_distance_px: npu_min as f32,
        npu_norm_cliff: cliff,
        npu_retry_ms: 5_000,
        bands: vec![BandThreshold { min_eye_distance_px: 0.0, threshold_cosine: 1.0 }],
        cpu_bands: Vec::new(),
    };
    let mut router = crate::route::Router::new(routing_probe.clone(), true)
        .map_err(|e| EvalError::Calibration(e.to_string()))?;
    let sizes: Vec<u32> = sweep.sizes.iter().flatten().copied().collect();
    let gallery: Vec<Vec<Option<&[f32]>>> = (0..sweep.backends.len())
        .map(|b| {
            sweep.outcomes[mode][sweep.sizes.len() - 1]
                .iter()
                .map(|o| match o {
                    Outcome::Embedded(s) => Some(s.embeddings[b].as_slice()),
                    _ => None,
                })
                .collect()
        })
        .collect();
    // The NPU model's thresholds (the router's choice of backend in each band, so the bands
    // below its minimum size are the CPU's), and the CPU recognizer's at every size: a CPU
    // embedding of a close face (a fallback) is judged by the CPU's own scale (issue 16).
    let npu_label = |size: u32| if size >= npu_min { name.clone() } else { cpu_name.clone() };
    let (bands, band_notes) = measure_bands(
        sweep,
        mode,
        &sizes,
        &gallery,
        &mut |s| sweep.backend_for(Line::Routed { npu }, s, Some(&mut router)),
        &npu_label,
    )?;
    let (cpu_bands, cpu_notes) =
        measure_bands(sweep, mode, &sizes, &gallery, &mut |_| cpu, &|_| cpu_name.clone())?;
    let routing = RoutingConfig {
        npu_min_eye_distance_px: npu_min as f32,
        npu_norm_cliff: round3(cliff),
        npu_retry_ms: 5_000,
        bands,
        cpu_bands,
    };
    routing.validate().map_err(|e| EvalError::Calibration(e.to_string()))?;
    let mut toml = String::new();
    toml.push_str(&format!(
        "# Written by `portier calibrate` from a sweep of {} photos ({} identities) at eye \
         distances {:?} px and the originals;\n# detected landmarks; probes at each size against \
         the other photos at full size.\n",
        sweep.photos.len(),
        sweep.identities,
        sizes
    ));
    if let (Some(c), true) = (&sweep.camera, mode != 0) {
        toml.push_str(&format!("# Camera-like frames: {}.\n", c.describe()));
    }
    for n in &notes {
        toml.push_str(n);
        toml.push('\n');
    }
    toml.push_str(&cliff_note);
    toml.push('\n');
    toml.push_str(&format!(
        "# bands: threshold at FAR {BAND_FAR:.0e} for the backend the router uses in the band:\n"
    ));
    for n in &band_notes {
        toml.push_str(n);
        toml.push('\n');
    }
    toml.push_str(&format!(
        "# cpu_bands: threshold at FAR {BAND_FAR:.0e} of the CPU recognizer at every size (far \
         faces, and close ones after a fallback from the NPU):\n"
    ));
    for n in &cpu_notes {
        toml.push_str(n);
        toml.push('\n');
    }
    let body = toml::to_string(&Wrapper { routing: &routing })
        .map_err(|e| EvalError::Calibration(format!("cannot encode TOML: {e}")))?;
    toml.push_str(&body);
    Ok(Calibration { routing, toml })
}

/// Thresholds at [`BAND_FAR`] by face size, each size's probes embedded by the backend
/// `choose` picks for them, against the other photos' original-size embeddings of the same
/// backend; a size without pairs merges into the band below. Also the notes that explain them.
fn measure_bands(
    sweep: &Sweep,
    mode: usize,
    sizes: &[u32],
    gallery: &[Vec<Option<&[f32]>>],
    choose: &mut dyn FnMut(&Sample) -> usize,
    label: &dyn Fn(u32) -> String,
) -> Result<(Vec<BandThreshold>, Vec<String>), EvalError> {
    let mut bands = Vec::new();
    let mut band_notes = Vec::new();
    for (k, &size) in sizes.iter().enumerate() {
        // The top band pools the largest size and the original photos.
        let mut size_indices = vec![k];
        if k + 1 == sizes.len() {
            size_indices.push(sweep.sizes.len() - 1);
        }
        let (mut genuine, mut impostor) = (Vec::new(), Vec::new());
        for &si in &size_indices {
            for (i, o) in sweep.outcomes[mode][si].iter().enumerate() {
                let Outcome::Embedded(s) = o else { continue };
                let b = choose(s);
                for (j, g) in gallery[b].iter().enumerate() {
                    let Some(g) = g else { continue };
                    if j == i {
                        continue;
                    }
                    let v = dot(&s.embeddings[b], g);
                    if sweep.classes[i] == sweep.classes[j] {
                        genuine.push(v);
                    } else {
                        impostor.push(v);
                    }
                }
            }
        }
        let Some(t) = metrics::tar_at_far(&genuine, &impostor, BAND_FAR) else {
            band_notes
                .push(format!("#   band from {size} px: no pairs, merged into the band below"));
            continue;
        };
        let start = if bands.is_empty() { 0.0 } else { size as f32 };
        bands.push(BandThreshold {
            min_eye_distance_px: start,
            threshold_cosine: round3(t.threshold),
        });
        band_notes.push(format!(
            "#   band from {start} px (measured at {size} px{}, on {}): threshold {:.3} = FAR {:.1e} \
             over {} impostor pairs, TAR {:.3} over {} genuine pairs",
            if size_indices.len() > 1 { " and the originals" } else { "" },
            label(size),
            t.threshold,
            t.far_achieved,
            impostor.len(),
            t.tar,
            genuine.len()
        ));
    }
    if bands.is_empty() {
        return Err(EvalError::Calibration("no band had any pair to measure".into()));
    }
    Ok((bands, band_notes))
}

#[derive(serde::Serialize)]
struct Wrapper<'a> {
    routing: &'a RoutingConfig,
}

/// Rounds up to three decimals: a threshold (or cliff) never ends below what was measured.
fn round3(v: f32) -> f32 {
    (v * 1000.0).ceil() / 1000.0
}

/// `portier calibrate`: runs the sweep and writes (or prints) the fragment.
pub fn command(config: &Config, args: &CalibrateArgs) -> Result<Calibration, EvalError> {
    let (sweep, _) = sweep_with_camera(config, &args.sweep, Some(&args.camera))?;
    let npu = npu_index(&sweep, args.npu.as_deref())?;
    let mut c = calibrate(&sweep, npu)?;
    if let Some(twin) = &config.npu.twin {
        let file = |p: &std::path::Path| p.file_name().map(|f| f.to_string_lossy().into_owned());
        c.toml.insert_str(
            0,
            &format!(
                "# The models: float32 = [npu] twin {}; {} = [recognizer] {} (the CPU).\n",
                file(twin).unwrap_or_default(),
                sweep.backends[sweep.cpu],
                file(&config.recognizer.path).unwrap_or_default()
            ),
        );
    }
    match &args.output {
        Some(path) => std::fs::write(path, &c.toml)
            .map_err(|e| EvalError::Write { path: path.clone(), reason: e.to_string() })?,
        None => print!("{}", c.toml),
    }
    Ok(c)
}
