//! `portier npu check`: the acceptance check of the NPU model (a HEF, or the emulated QDQ
//! model) before it serves a door, on aligned face crops of known people.
//!
//! Every crop goes through the configured NPU recognizer and, when `[npu] twin` names the
//! model's float32 ONNX parent, through that on the CPU with the same preprocessing. Reported:
//! per crop the norm before normalisation and the cosine NPU↔twin; the norms' spread; the
//! same-person and different-person similarities of the NPU's embeddings, the largest
//! different-person one against the lowest threshold the NPU model is matched at; and the
//! built-in probe `portier run` uses. The model is refused when
//! - its norms are (nearly) constant: coefficient of variation below [`MIN_NORM_CV`];
//! - two different people are at or above the NPU model's match threshold;
//! - with a twin: a crop's cosine to the twin is below [`TWIN_MIN_COSINE`], or the median
//!   below [`TWIN_MIN_MEDIAN_COSINE`];
//! - the probe finds it degenerate ([`crate::embed::probe`]).
//!
//! Crops: 112x112 RGB PNG files in one folder (the shared assets' `golden/aligned_112`; on a
//! device the technician copies that folder to [`DEFAULT_CROPS`]). Identities come from a
//! `labels.csv` (`path,identity`) in the folder, else from the `labels` of the
//! `embeddings.json` beside it (the assets' `golden/` layout).
//!
//! Must not: change the model, the gallery or the config; it only measures and judges.

use std::path::{Path, PathBuf};

use clap::Args;
use serde::Serialize;

use super::metrics::{score_stats, ScoreStats};
use super::EvalError;
use crate::align::{AlignedFace, CROP};
use crate::config::Config;
use crate::embed::cpu::CpuEmbedder;
use crate::embed::probe::{probe, ProbeReport};
use crate::embed::{cosine, dot, Embedder};

/// Where `portier npu check` and `portier selftest` look for the crops on a device.
pub const DEFAULT_CROPS: &str = "/var/lib/portier/golden/aligned_112";

/// The NPU's norms before normalisation are "near-constant" below this coefficient of variation
/// (standard deviation / mean) over the crops. Measured on the 77 golden crops
/// (`tests/it/npu_check.rs`): w600k_mbf QDQ INT8 (the emulated NPU) 0.070, its reduce-range
/// copy and the dynamic INT8 0.072, PaddleX A16W8 0.078; PaddleX INT8, whose embeddings
/// collapsed, 0.044 (refused on its twin cosine and its impostors instead); a constant output 0.
/// 0.02 is under a third of the lowest healthy value.
pub const MIN_NORM_CV: f64 = 0.02;

/// Every crop's cosine NPU↔twin must be at least this. Measured on the golden crops against
/// the float32 parent: w600k_mbf QDQ INT8 min 0.966 (median 0.985), reduce-range 0.966
/// (0.982), dynamic INT8 0.984 (0.993); PaddleX A16W8 0.982 (0.996); PaddleX INT8 (collapsed)
/// 0.475 (0.613). `eval distance` calls an embedding below 0.9 collapsed.
pub const TWIN_MIN_COSINE: f64 = 0.9;

/// The median cosine NPU↔twin must be at least this (`eval distance`'s reliability bar).
pub const TWIN_MIN_MEDIAN_COSINE: f64 = 0.95;

/// Arguments of `portier npu check`.
#[derive(Args, Debug, Clone)]
pub struct NpuCheckArgs {
    /// Folder of aligned 112x112 face crops (PNG) with their identities (`labels.csv`, or
    /// `../embeddings.json` as in the assets' `golden/`).
    #[arg(long, default_value = DEFAULT_CROPS)]
    pub crops: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// One crop's measurements.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CropResult {
    /// File name.
    pub file: String,
    /// Identity label.
    pub identity: String,
    /// The NPU embedding's norm before normalisation.
    pub norm: f32,
    /// Cosine of the NPU's embedding to the twin's on this crop.
    pub twin_cosine: Option<f32>,
}

/// A different-person pair.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Pair {
    /// Similarity of the NPU embeddings.
    pub similarity: f32,
    /// The two crops.
    pub files: [String; 2],
}

/// The report of `portier npu check`.
#[derive(Debug, Clone, Serialize)]
pub struct NpuCheckReport {
    /// The NPU model file.
    pub model: PathBuf,
    /// Its id (embedding space).
    pub model_id: String,
    /// The twin, when configured and installed.
    pub twin: Option<PathBuf>,
    /// The twin `[npu] twin` names when its file is not there (the check runs without it: the
    /// image installs it only when its build names it).
    pub twin_not_installed: Option<PathBuf>,
    /// The crops folder.
    pub crops_dir: PathBuf,
    /// Per crop.
    pub crops: Vec<CropResult>,
    /// Identities among the crops.
    pub identities: usize,
    /// The norms before normalisation.
    pub norm: ScoreStats,
    /// Their coefficient of variation (std / mean).
    pub norm_cv: f64,
    /// Cosine NPU↔twin over the crops.
    pub twin_cosine: Option<ScoreStats>,
    /// Same-person similarities.
    pub genuine: Option<ScoreStats>,
    /// Different-person similarities.
    pub impostor: Option<ScoreStats>,
    /// The most similar different-person pair.
    pub max_impostor: Option<Pair>,
    /// Different-person pairs at or above `threshold`.
    pub impostors_above: usize,
    /// The lowest threshold the NPU model is matched at (`[routing] bands` from
    /// `npu_min_eye_distance_px` up, else `matching.threshold`).
    pub threshold: f32,
    /// The built-in probe `portier run` uses.
    pub probe: ProbeReport,
    /// Why the model is refused; empty: accepted.
    pub failures: Vec<String>,
}

impl NpuCheckReport {
    /// Whether the model is accepted.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    /// One line: the verdict and the figures behind it.
    pub fn summary(&self) -> String {
        let twin = match (self.twin_cosine, &self.twin_not_installed) {
            (Some(c), _) => format!("cosine to twin min {:.3} median {:.3}", c.min, c.p50),
            (None, Some(path)) => format!("twin {} not installed", path.display()),
            (None, None) => "no twin configured".to_string(),
        };
        let verdict = if self.passed() {
            "accepted".to_string()
        } else {
            format!("REFUSED: {}", self.failures.join("; "))
        };
        format!(
            "{} crops ({} people): norm cv {:.3}, max impostor {:.3} (threshold {:.3}), {twin}, \
             probe {}: {verdict}",
            self.crops.len(),
            self.identities,
            self.norm_cv,
            self.max_impostor.as_ref().map_or(f32::NAN, |p| p.similarity),
            self.threshold,
            if self.probe.degenerate.is_none() { "ok" } else { "degenerate" },
        )
    }
}

/// The aligned crops of `dir` with their identities, in file-name order.
pub fn read_crops(dir: &Path) -> Result<Vec<(String, String, Box<AlignedFace>)>, EvalError> {
    let bad = |path: &Path, reason: String| EvalError::Input { path: path.to_path_buf(), reason };
    let labels = crop_labels(dir)?;
    let entries = std::fs::read_dir(dir).map_err(|e| {
        bad(dir, format!("cannot read the crops folder: {e} (copy golden/aligned_112 there)"))
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x.eq_ignore_ascii_case("png")))
        .collect();
    files.sort();
    let mut crops = Vec::with_capacity(files.len());
    for path in files {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let Some(identity) = labels.iter().find(|(f, _)| *f == name).map(|(_, i)| i.clone()) else {
            return Err(bad(&path, "no identity for this crop in the labels".into()));
        };
        let img = crate::frame::load_image(&path).map_err(|e| bad(&path, e.to_string()))?;
        if (img.width(), img.height()) != (CROP as u32, CROP as u32) {
            return Err(bad(
                &path,
                format!("is {}x{}, an aligned crop is {CROP}x{CROP}", img.width(), img.height()),
            ));
        }
        let mut crop = Box::<AlignedFace>::default();
        crop.pixels.copy_from_slice(img.as_bytes());
        crops.push((name, identity, crop));
    }
    let people = people(&crops);
    if people < 2 {
        return Err(bad(
            dir,
            format!("{} crops of {people} people: at least two people are needed", crops.len()),
        ));
    }
    Ok(crops)
}

/// How many identities the crops show.
fn people(crops: &[(String, String, Box<AlignedFace>)]) -> usize {
    let mut ids: Vec<&str> = crops.iter().map(|c| c.1.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    ids.len()
}

/// (file name, identity) from `dir/labels.csv`, else from `dir/../embeddings.json`'s `labels`.
fn crop_labels(dir: &Path) -> Result<Vec<(String, String)>, EvalError> {
    let csv = dir.join("labels.csv");
    if csv.is_file() {
        let listed = super::verify::read_labels(&csv, Path::new(""))?;
        return Ok(listed
            .into_iter()
            .map(|l| (l.path.to_string_lossy().into_owned(), l.identity))
            .collect());
    }
    let json = dir.parent().map(|p| p.join("embeddings.json")).unwrap_or_default();
    let bad = |reason: String| EvalError::Input { path: json.clone(), reason };
    let text = std::fs::read_to_string(&json).map_err(|e| {
        bad(format!("cannot read ({e}); the crops need a labels.csv (path,identity) or this file"))
    })?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let labels = value
        .get("labels")
        .and_then(|l| l.as_object())
        .ok_or_else(|| bad("no `labels` object".into()))?;
    Ok(labels
        .iter()
        .filter_map(|(file, id)| Some((file.clone(), id.as_str()?.to_string())))
        .collect())
}

/// The lowest similarity threshold the NPU model's embeddings are matched at: the `[routing]
/// bands` that hold faces from `npu_min_eye_distance_px` up (the NPU never sees smaller ones).
pub fn npu_threshold(config: &Config) -> f32 {
    let routing = config
        .routing
        .clone()
        .unwrap_or_else(|| crate::route::RoutingConfig::default_for(config.matching.threshold));
    let from = routing.npu_min_eye_distance_px;
    let bands = &routing.bands;
    bands
        .iter()
        .enumerate()
        .filter(|(i, _)| bands.get(i + 1).is_none_or(|next| next.min_eye_distance_px > from))
        .map(|(_, b)| b.threshold_cosine)
        .fold(f32::INFINITY, f32::min)
}

/// Runs the check on the crops of `crops_dir`.
pub fn check(config: &Config, crops_dir: &Path) -> Result<NpuCheckReport, EvalError> {
    let crops = read_crops(crops_dir)?;
    // A configured twin that is not installed: checked without it, and said so.
    let (twin_path, twin_not_installed) = match &config.npu.twin {
        Some(path) if matches!(path.try_exists(), Ok(false)) => {
            log::warn!(
                "npu.twin {}: not installed: checking without the float32 comparison",
                path.display()
            );
            (None, Some(path.clone()))
        }
        twin => (twin.clone(), None),
    };
    if twin_path.is_some() || config.npu.backend == crate::config::NpuBackend::Emulated {
        let o = &config.onnxruntime;
        crate::infer::init(o.library.as_deref(), o.intra_threads)?;
    }
    let model = config.npu.model.clone().unwrap_or_default();
    let mut npu = crate::embed::open_npu(&config.npu, &config.recognizer)?.ok_or_else(|| {
        EvalError::Usage(format!(
            "config {}: no NPU configured (`[npu] backend` and `model`)",
            config.source.display()
        ))
    })?;
    let mut twin = match &twin_path {
        None => None,
        Some(path) => {
            let twin = CpuEmbedder::open(config.npu.twin_settings(path))?;
            if twin.dim() != npu.dim() {
                return Err(EvalError::Usage(format!(
                    "npu.twin {} gives {}-d embeddings, the NPU model {}-d: not its parent",
                    path.display(),
                    twin.dim(),
                    npu.dim()
                )));
            }
            Some(twin)
        }
    };
    let dim = npu.dim();
    let mut results = Vec::with_capacity(crops.len());
    let mut embeddings = Vec::with_capacity(crops.len());
    let (mut t, mut norms, mut twin_cosines) = (vec![0.0; dim], Vec::new(), Vec::new());
    for (file, identity, crop) in &crops {
        let mut e = vec![0.0; dim];
        let norm = npu.embed(crop, &mut e)?;
        let twin_cosine = match twin.as_mut() {
            Some(tw) => {
                tw.embed(crop, &mut t)?;
                Some(cosine(&e, &t))
            }
            None => None,
        };
        norms.push(norm);
        twin_cosines.extend(twin_cosine);
        embeddings.push(e);
        results.push(CropResult {
            file: file.clone(),
            identity: identity.clone(),
            norm,
            twin_cosine,
        });
    }
    let (mut genuine, mut impostor, mut max_impostor) = (Vec::new(), Vec::new(), None::<Pair>);
    for i in 0..crops.len() {
        for j in i + 1..crops.len() {
            let s = dot(&embeddings[i], &embeddings[j]);
            if crops[i].1 == crops[j].1 {
                genuine.push(s);
            } else {
                impostor.push(s);
                if max_impostor.as_ref().is_none_or(|p| s > p.similarity) {
                    max_impostor = Some(Pair {
                        similarity: s,
                        files: [crops[i].0.clone(), crops[j].0.clone()],
                    });
                }
            }
        }
    }
    let probe = probe(npu.as_mut())?;
    let threshold = npu_threshold(config);
    let norm = score_stats(&norms).ok_or_else(|| EvalError::Usage("no crops".into()))?;
    let norm_cv = if norm.mean > 0.0 { norm.std / norm.mean } else { 0.0 };
    let mut report = NpuCheckReport {
        model,
        model_id: npu.model_id().to_string(),
        twin: twin_path,
        twin_not_installed,
        crops_dir: crops_dir.to_path_buf(),
        identities: people(&crops),
        crops: results,
        norm,
        norm_cv,
        twin_cosine: score_stats(&twin_cosines),
        genuine: score_stats(&genuine),
        impostor: score_stats(&impostor),
        impostors_above: impostor.iter().filter(|&&s| s >= threshold).count(),
        max_impostor,
        threshold,
        probe,
        failures: Vec::new(),
    };
    report.failures = judge(&report);
    Ok(report)
}

/// The reasons to refuse the model (see the module documentation).
fn judge(r: &NpuCheckReport) -> Vec<String> {
    let mut failures = Vec::new();
    if below(r.norm_cv, MIN_NORM_CV) {
        failures.push(format!(
            "near-constant norm before normalisation: coefficient of variation {:.4} < \
             {MIN_NORM_CV} (min {:.3}, max {:.3})",
            r.norm_cv, r.norm.min, r.norm.max
        ));
    }
    if let Some(p) =
        r.max_impostor.as_ref().filter(|p| p.similarity.is_nan() || p.similarity >= r.threshold)
    {
        failures.push(format!(
            "different people match: {} and {} at {:.3} >= the NPU threshold {:.3} ({} \
             different-person pairs at or above it)",
            p.files[0], p.files[1], p.similarity, r.threshold, r.impostors_above
        ));
    }
    if let Some(c) = r.twin_cosine {
        if below(c.min, TWIN_MIN_COSINE) || below(c.p50, TWIN_MIN_MEDIAN_COSINE) {
            let worst = r
                .crops
                .iter()
                .min_by(|a, b| {
                    a.twin_cosine.unwrap_or(1.0).total_cmp(&b.twin_cosine.unwrap_or(1.0))
                })
                .map_or(String::new(), |c| format!(" (worst {})", c.file));
            failures.push(format!(
                "far from its float32 twin: cosine min {:.3} (needs >= {TWIN_MIN_COSINE}), \
                 median {:.3} (needs >= {TWIN_MIN_MEDIAN_COSINE}){worst}",
                c.min, c.p50
            ));
        }
    }
    if let Some(why) = &r.probe.degenerate {
        failures.push(format!("built-in probe: {why}"));
    }
    failures
}

/// `v < limit`, or `v` not a number.
fn below(v: f64, limit: f64) -> bool {
    v.is_nan() || v < limit
}

/// The report as a text table: one row per crop, then the figures and the verdict.
pub fn table(r: &NpuCheckReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "npu model {} as `{}`; twin {}; crops {}",
        r.model.display(),
        r.model_id,
        r.twin.as_ref().map_or("none ([npu] twin)".into(), |t| t.display().to_string()),
        r.crops_dir.display()
    );
    let _ = writeln!(s, "{:32} {:18} {:>8} {:>8}", "crop", "identity", "norm", "cos twin");
    for c in &r.crops {
        let cos = c.twin_cosine.map_or("-".into(), |v| format!("{v:.4}"));
        let _ = writeln!(s, "{:32} {:18} {:8.3} {cos:>8}", c.file, c.identity, c.norm);
    }
    let n = &r.norm;
    let _ = writeln!(
        s,
        "norm before normalisation: min {:.3} p50 {:.3} max {:.3}, cv {:.4} (refused below \
         {MIN_NORM_CV})",
        n.min, n.p50, n.max, r.norm_cv
    );
    if let Some(c) = r.twin_cosine {
        let _ = writeln!(
            s,
            "cosine NPU to twin: min {:.4} p01 {:.4} p50 {:.4} (refused below {TWIN_MIN_COSINE} \
             / median {TWIN_MIN_MEDIAN_COSINE})",
            c.min, c.p01, c.p50
        );
    }
    for (what, st) in [("same person", r.genuine), ("different people", r.impostor)] {
        if let Some(st) = st {
            let _ = writeln!(
                s,
                "{what}: {} pairs, mean {:.3} min {:.3} max {:.3}",
                st.count, st.mean, st.min, st.max
            );
        }
    }
    if let Some(p) = &r.max_impostor {
        let _ = writeln!(
            s,
            "most similar different people: {} / {} at {:.3}; NPU threshold {:.3}",
            p.files[0], p.files[1], p.similarity, r.threshold
        );
    }
    let _ = writeln!(s, "{}", r.probe.summary());
    let _ = write!(s, "npu check: {}", r.summary());
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A config with `[routing]` bands, for the threshold rule.
    fn config(routing: &str) -> Config {
        crate::config::test_config(&format!("[matching]\nthreshold = 0.4\n{routing}"))
    }

    #[test]
    fn the_threshold_is_the_lowest_of_the_bands_the_npu_sees() {
        assert_eq!(npu_threshold(&config("")), 0.4);
        let bands = "[routing]\nnpu_min_eye_distance_px = 20.0\n\
                     [[routing.bands]]\nmin_eye_distance_px = 0.0\nthreshold_cosine = 0.2\n\
                     [[routing.bands]]\nmin_eye_distance_px = 16.0\nthreshold_cosine = 0.25\n\
                     [[routing.bands]]\nmin_eye_distance_px = 32.0\nthreshold_cosine = 0.3\n";
        // The NPU sees faces from 20 px: the 16 px band (0.25) and up, not the 0 px one.
        assert_eq!(npu_threshold(&config(bands)), 0.25);
    }
}

/// The acceptance check and `run`'s probe on a HEF, through the HailoRT double.
#[cfg(all(test, feature = "hailo"))]
#[allow(clippy::unwrap_used)]
mod hef_tests {
    use super::*;
    use crate::infer::hailo::double::Double;

    /// Six synthetic crops of three "people" and their `labels.csv`.
    fn crops(dir: &Path) -> PathBuf {
        let crops = dir.join("crops");
        std::fs::create_dir_all(&crops).unwrap();
        let mut labels = String::from("path,identity\n");
        for k in 0..6u32 {
            let img = image::RgbImage::from_fn(112, 112, |x, y| {
                let v = ((x * (k + 1) + y * (7 - k)) % 256) as u8;
                image::Rgb([v, v.wrapping_mul(3), 255 - v])
            });
            let name = format!("c{k}.png");
            img.save(crops.join(&name)).unwrap();
            labels.push_str(&format!("{name},p{}\n", k / 2));
        }
        std::fs::write(crops.join("labels.csv"), labels).unwrap();
        crops
    }

    pub(crate) fn hef_config(d: &Double, kind: &str) -> Config {
        crate::config::test_config(&format!(
            "[matching]\nthreshold = 0.4\n\
             [npu]\nbackend = \"hailo\"\nmodel = \"{}\"\nid = \"r50-hailo8\"\nlibrary = \"{}\"\n",
            d.hef(kind).display(),
            d.path.display()
        ))
    }

    #[test]
    fn npu_check_refuses_the_degenerate_hef_and_runs_the_real_one() {
        let dir = tempfile::tempdir().unwrap();
        let crops = crops(dir.path());
        let d = Double::new();
        let r = check(&hef_config(&d, "recognizer"), &crops).unwrap();
        assert_eq!((r.crops.len(), r.identities, r.model_id.as_str()), (6, 3, "r50-hailo8"));
        assert_eq!(r.probe.degenerate, None, "{}", r.probe.summary());
        assert!(r.norm_cv > MIN_NORM_CV, "{}", r.summary());
        assert!(table(&r).contains("c5.png"));

        let r = check(&hef_config(&d, "recognizer-degenerate"), &crops).unwrap();
        assert!(!r.passed());
        let text = table(&r);
        for why in ["near-constant norm", "different people match", "probe"] {
            assert!(r.failures.iter().any(|f| f.contains(why)), "{why}: {text}");
        }
        assert!(text.contains("REFUSED"), "{text}");
        assert_eq!(r.impostors_above, 12, "every different-person pair matches: {text}");
    }

    #[test]
    fn run_keeps_the_degenerate_hef_off_and_says_why() {
        let d = Double::new();
        let matcher = || crate::gallery::Gallery::open_in_memory().unwrap().matcher("r50-hailo8");
        let parts = crate::app::NpuParts::open(
            &hef_config(&d, "recognizer-degenerate"),
            matcher().unwrap(),
        )
        .unwrap()
        .unwrap();
        assert!(!parts.router.npu_up(), "the router starts with the NPU down");
        let why = parts.fallback.unwrap();
        assert!(why.contains("degenerate") && why.contains("r50-hailo8"), "{why}");
        // Its reopening probes again: still degenerate, still not used.
        let mut embedder = parts.embedder;
        let face = crate::align::AlignedFace::default();
        let mut out = vec![0.0; crate::embed::MAX_DIM];
        assert!(embedder.embed(&face, &mut out).is_err());

        let parts = crate::app::NpuParts::open(&hef_config(&d, "recognizer"), matcher().unwrap())
            .unwrap()
            .unwrap();
        assert!(parts.router.npu_up() && parts.fallback.is_none());
    }
}
