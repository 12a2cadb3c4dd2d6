//! `portier eval lfw`: the standard LFW verification protocol on pair files in LFW's format,
//! through our own detection and alignment on the raw photos (the face nearest the image
//! centre).
//!
//! With several folds (View 2), the threshold of each fold is chosen on the other folds. With
//! a separate training file (View 1: `pairsDevTrain.txt`), the threshold is chosen there and
//! accuracy measured on the test pairs. A pair whose photo has no detected face counts as
//! "different" (an error if it is a same-person pair), as a deployed system would decide.

use std::collections::HashMap;
use std::path::Path;

use serde::Serialize;

use super::metrics;
use super::pairs::{read_pairs, ImageRef, PairSet};
use super::verify::embed_photos;
use super::EvalError;
use crate::embed::dot;
use crate::pipeline::{Pipeline, Select};

/// The report of `eval lfw`.
#[derive(Debug, Clone, Serialize)]
pub struct LfwReport {
    /// Mean accuracy (over folds, or on the test pairs).
    pub accuracy: f64,
    /// Standard deviation over folds (0 with a training file).
    pub accuracy_std: f64,
    /// The threshold used (mean over folds).
    pub threshold: f32,
    /// Pairs measured.
    pub pairs: usize,
    /// Folds in the measured file.
    pub folds: usize,
    /// Per-fold accuracy.
    pub fold_accuracies: Vec<f64>,
    /// Pairs used to choose the threshold with `--train-pairs`.
    pub train_pairs: usize,
    /// Accuracy on the training pairs at the chosen threshold.
    pub train_accuracy: Option<f64>,
    /// Images in which no face was found.
    pub failed_detections: usize,
    /// Their names.
    pub failed_images: Vec<String>,
    /// Genuine similarity statistics.
    pub genuine: Option<metrics::ScoreStats>,
    /// Impostor similarity statistics.
    pub impostor: Option<metrics::ScoreStats>,
}

/// Similarity of each pair; -1 (certainly "different") where either face is missing.
fn pair_scores(set: &PairSet, emb: &HashMap<ImageRef, Option<Vec<f32>>>) -> (Vec<f32>, Vec<bool>) {
    let scores = set
        .pairs
        .iter()
        .map(|p| match (emb.get(&p.a), emb.get(&p.b)) {
            (Some(Some(a)), Some(Some(b))) => dot(a, b),
            _ => -1.0,
        })
        .collect();
    (scores, set.pairs.iter().map(|p| p.same).collect())
}

/// Each image's embedding (`None`: no face), by image.
pub type Embeddings = HashMap<ImageRef, Option<Vec<f32>>>;

/// Runs the protocol. `progress(done, total)` is called as images are embedded.
pub fn run(
    pipeline: &mut Pipeline,
    pairs_path: &Path,
    train_path: Option<&Path>,
    root: &Path,
    progress: impl FnMut(usize, usize),
) -> Result<LfwReport, EvalError> {
    run_keeping(pipeline, pairs_path, train_path, root, progress).map(|(r, _)| r)
}

/// [`run`], and the embeddings it measured (for other protocols on the same images, such
/// as `eval identify`'s).
pub fn run_keeping(
    pipeline: &mut Pipeline,
    pairs_path: &Path,
    train_path: Option<&Path>,
    root: &Path,
    mut progress: impl FnMut(usize, usize),
) -> Result<(LfwReport, Embeddings), EvalError> {
    let to_eval = |e: super::pairs::PairsError| EvalError::Input {
        path: pairs_path.into(),
        reason: e.to_string(),
    };
    let test = read_pairs(pairs_path).map_err(to_eval)?;
    let train = match train_path {
        Some(p) => Some(
            read_pairs(p)
                .map_err(|e| EvalError::Input { path: p.into(), reason: e.to_string() })?,
        ),
        None => None,
    };
    if train.is_none() && test.folds < 2 {
        return Err(EvalError::Input {
            path: pairs_path.into(),
            reason: "one fold only: give --train-pairs to choose the threshold on other pairs \
                     (choosing it on the test pairs themselves would overstate accuracy)"
                .into(),
        });
    }
    let mut images = test.images();
    if let Some(t) = &train {
        images.extend(t.images());
        images.sort();
        images.dedup();
    }
    let paths: Vec<_> = images.iter().map(|r| r.path(root)).collect();
    let total = paths.len();
    let embeddings = embed_photos(pipeline, &paths, Select::NearestCentre, |d| progress(d, total))?;
    let failed_images: Vec<String> = images
        .iter()
        .zip(&embeddings)
        .filter(|(_, e)| e.is_none())
        .map(|(r, _)| r.to_string())
        .collect();
    let emb: Embeddings = images.into_iter().zip(embeddings).collect();
    let (scores, same) = pair_scores(&test, &emb);
    let split = |want: bool| -> Vec<f32> {
        scores.iter().zip(&same).filter(|(_, &s)| s == want).map(|(&v, _)| v).collect()
    };
    let (genuine, impostor) = (split(true), split(false));
    let mut report = LfwReport {
        accuracy: 0.0,
        accuracy_std: 0.0,
        threshold: 0.0,
        pairs: test.pairs.len(),
        folds: test.folds,
        fold_accuracies: Vec::new(),
        train_pairs: 0,
        train_accuracy: None,
        failed_detections: failed_images.len(),
        failed_images,
        genuine: metrics::score_stats(&genuine),
        impostor: metrics::score_stats(&impostor),
    };
    if let Some(train) = &train {
        let (ts, tsame) = pair_scores(train, &emb);
        let (threshold, train_acc) = metrics::best_threshold(&ts, &tsame);
        report.threshold = threshold;
        report.train_pairs = train.pairs.len();
        report.train_accuracy = Some(train_acc);
        report.accuracy = metrics::accuracy_at(&scores, &same, threshold);
        report.fold_accuracies = vec![report.accuracy];
    } else {
        let folds: Vec<usize> = test.pairs.iter().map(|p| p.fold).collect();
        let k = metrics::kfold_accuracy(&scores, &same, &folds);
        report.accuracy = k.accuracy;
        report.accuracy_std = k.accuracy_std;
        report.threshold = k.threshold;
        report.fold_accuracies = k.fold_accuracies;
    }
    Ok((report, emb))
}
