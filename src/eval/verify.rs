//! `portier eval verify`: verification and closed-set identification on a labelled photo set
//! (CSV with `path,identity` columns, as `faces/labels.csv` in the shared assets).
//!
//! Every photo gives one embedding (its largest face). All pairs are scored: same identity →
//! genuine, different → impostor. Identification is leave-one-out: each photo is a probe
//! against every other photo, a person's score being the best over their photos.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::metrics::{self, Probe, ScoreStats, TarAtFar};
use super::EvalError;
use crate::embed::dot;
use crate::frame::load_image;
use crate::pipeline::{Pipeline, Select};

/// One labelled photo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Labelled {
    /// Path of the photo.
    pub path: PathBuf,
    /// Identity label.
    pub identity: String,
}

/// Reads a labels CSV (header row naming at least `path` and `identity`); photo paths are
/// resolved against `root`.
pub fn read_labels(csv: &Path, root: &Path) -> Result<Vec<Labelled>, EvalError> {
    let bad = |reason: String| EvalError::Input { path: csv.into(), reason };
    let text = std::fs::read_to_string(csv).map_err(|e| bad(format!("cannot read: {e}")))?;
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    let (_, header) = lines.next().ok_or_else(|| bad("empty file".into()))?;
    let cols: Vec<&str> = header.split(',').map(str::trim).collect();
    let col = |name: &str| {
        cols.iter()
            .position(|c| *c == name)
            .ok_or_else(|| bad(format!("no `{name}` column in the header")))
    };
    let (pi, ii) = (col("path")?, col("identity")?);
    let mut out = Vec::new();
    for (n, line) in lines {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let (Some(p), Some(id)) = (fields.get(pi), fields.get(ii)) else {
            return Err(bad(format!("line {}: expected {} columns", n + 1, cols.len())));
        };
        if p.is_empty() || id.is_empty() {
            return Err(bad(format!("line {}: empty path or identity", n + 1)));
        }
        out.push(Labelled { path: root.join(p), identity: (*id).to_string() });
    }
    if out.is_empty() {
        return Err(bad("no photos listed".into()));
    }
    Ok(out)
}

/// Embeds each photo's largest face; `None` where no face was found. `progress` is called
/// after each photo.
pub fn embed_photos(
    pipeline: &mut Pipeline,
    photos: &[PathBuf],
    select: Select,
    progress: impl FnMut(usize),
) -> Result<Vec<Option<Vec<f32>>>, EvalError> {
    embed_photos_by(pipeline, photos, select, None, progress)
}

/// [`embed_photos`], embedded by `embedder` instead of the pipeline's recognizer when given.
pub fn embed_photos_by<'e>(
    pipeline: &mut Pipeline,
    photos: &[PathBuf],
    select: Select,
    mut embedder: Option<&mut (dyn crate::embed::Embedder + 'e)>,
    mut progress: impl FnMut(usize),
) -> Result<Vec<Option<Vec<f32>>>, EvalError> {
    let mut out = Vec::with_capacity(photos.len());
    for (i, path) in photos.iter().enumerate() {
        let img = load_image(path)
            .map_err(|e| EvalError::Input { path: path.clone(), reason: e.to_string() })?;
        let faces = pipeline.faces_by(img.view(), select, None, embedder.as_deref_mut())?;
        let largest =
            faces.into_iter().max_by(|a, b| a.detection.area().total_cmp(&b.detection.area()));
        out.push(largest.map(|f| f.embedding));
        progress(i + 1);
    }
    Ok(out)
}

/// The report of `eval verify`.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// Photos listed.
    pub photos: usize,
    /// Identities listed.
    pub identities: usize,
    /// Photos where no face was found (left out of every pair).
    pub failed_detections: Vec<String>,
    /// Same-identity similarities.
    pub genuine: Option<ScoreStats>,
    /// Different-identity similarities.
    pub impostor: Option<ScoreStats>,
    /// TAR at FAR 1e-2, 1e-3, 1e-4.
    pub tar_at_far: Vec<TarAtFar>,
    /// Equal error rate.
    pub eer: f64,
    /// Leave-one-out rank-1 identification accuracy.
    pub rank1: f64,
    /// Probes in the rank-1 measurement (photos whose identity has another photo).
    pub rank1_probes: usize,
    /// The operating threshold from the configuration.
    pub threshold: f32,
    /// Impostor pairs at or above the operating threshold.
    pub impostors_above_threshold: usize,
    /// Genuine pairs below the operating threshold.
    pub genuine_below_threshold: usize,
}

/// Scores all pairs of `photos` whose embeddings are `embeddings`.
pub fn verify_report(
    photos: &[Labelled],
    embeddings: &[Option<Vec<f32>>],
    threshold: f32,
) -> VerifyReport {
    let mut classes: Vec<&str> = photos.iter().map(|p| p.identity.as_str()).collect();
    classes.sort_unstable();
    classes.dedup();
    let class = |id: &str| classes.binary_search(&id).unwrap_or(0);
    let (mut genuine, mut impostor) = (Vec::new(), Vec::new());
    let mut probes = Vec::new();
    for (i, (pi, ei)) in photos.iter().zip(embeddings).enumerate() {
        let Some(ei) = ei else { continue };
        let mut candidates = Vec::new();
        for (j, (pj, ej)) in photos.iter().zip(embeddings).enumerate() {
            let Some(ej) = ej else { continue };
            if i == j {
                continue;
            }
            let s = dot(ei, ej);
            candidates.push((class(&pj.identity), s));
            if j > i {
                if pi.identity == pj.identity {
                    genuine.push(s);
                } else {
                    impostor.push(s);
                }
            }
        }
        let c = class(&pi.identity);
        if candidates.iter().any(|&(k, _)| k == c) {
            probes.push(Probe { class: c, candidates });
        }
    }
    VerifyReport {
        photos: photos.len(),
        identities: classes.len(),
        failed_detections: photos
            .iter()
            .zip(embeddings)
            .filter(|(_, e)| e.is_none())
            .map(|(p, _)| p.path.display().to_string())
            .collect(),
        genuine: metrics::score_stats(&genuine),
        impostor: metrics::score_stats(&impostor),
        tar_at_far: [1e-2, 1e-3, 1e-4]
            .iter()
            .filter_map(|&far| metrics::tar_at_far(&genuine, &impostor, far))
            .collect(),
        eer: metrics::roc_eer(&genuine, &impostor),
        rank1: metrics::rank1_accuracy(&probes),
        rank1_probes: probes.len(),
        threshold,
        impostors_above_threshold: impostor.iter().filter(|&&s| s >= threshold).count(),
        genuine_below_threshold: genuine.iter().filter(|&&s| s < threshold).count(),
    }
}
