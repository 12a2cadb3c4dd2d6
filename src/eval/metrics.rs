//! Face verification and identification statistics.
//!
//! Role: turn similarity scores produced elsewhere (higher = more alike) into the numbers an
//! evaluation reports: score summaries, TAR at a fixed FAR, equal error rate, pair-verification
//! accuracy with the LFW k-fold protocol, rank-1 identification accuracy and histograms.
//!
//! Must not: do I/O or run models. Every function here is pure and deterministic so that results
//! can be unit-tested by hand and reproduced exactly.
//!
//! Conventions shared by all functions:
//! - A comparison is *accepted* (predicted "same person") iff `score >= threshold`.
//! - Scores are expected to be finite. NaN never causes a panic (orderings use
//!   [`f32::total_cmp`]), but results computed from NaN scores are unspecified: an embedding
//!   pipeline emitting NaN is a bug to catch upstream, not something to average over.
//! - Undefined statistics of empty input are `None` where the signature allows it, otherwise NaN
//!   (`serde_json` prints NaN as `null`).

use std::collections::BTreeSet;

use serde::Serialize;

/// Summary of a set of scores, for printing genuine/impostor distributions side by side.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ScoreStats {
    /// Number of scores.
    pub count: usize,
    /// Arithmetic mean.
    pub mean: f64,
    /// Population standard deviation (divides by `count`, not `count - 1`).
    pub std: f64,
    /// Smallest score.
    pub min: f64,
    /// Largest score.
    pub max: f64,
    /// 1st percentile (linear interpolation between order statistics, as numpy's default).
    pub p01: f64,
    /// Median (linear interpolation, as numpy's default).
    pub p50: f64,
    /// 99th percentile (linear interpolation, as numpy's default).
    pub p99: f64,
}

/// Count, mean, population standard deviation, extremes and 1/50/99th percentiles of `scores`.
///
/// Percentiles use linear interpolation between the closest ranks (numpy's default `linear`
/// method): percentile `p` of the ascending `x[0..n]` is `x` at fractional rank `p * (n - 1)`.
/// Returns `None` when `scores` is empty.
pub fn score_stats(scores: &[f32]) -> Option<ScoreStats> {
    if scores.is_empty() {
        return None;
    }
    let mut sorted: Vec<f64> = scores.iter().map(|&s| f64::from(s)).collect();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len() as f64;
    let mean = sorted.iter().sum::<f64>() / n;
    // Two-pass variance: numerically stabler than sum-of-squares for scores clustered near 1.
    let var = sorted.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
    Some(ScoreStats {
        count: sorted.len(),
        mean,
        std: var.sqrt(),
        min: sorted[0],
        max: sorted[sorted.len() - 1],
        p01: percentile_sorted(&sorted, 0.01),
        p50: percentile_sorted(&sorted, 0.50),
        p99: percentile_sorted(&sorted, 0.99),
    })
}

/// Percentile `p` in `[0, 1]` of non-empty ascending `sorted`, linearly interpolated.
fn percentile_sorted(sorted: &[f64], p: f64) -> f64 {
    let rank = p * (sorted.len() - 1) as f64;
    // `rank` is within [0, len - 1], so both indices are in bounds; the float-to-usize casts
    // truncate towards zero, which is the floor for non-negative values.
    let lo = rank.floor() as usize;
    let hi = (rank.ceil() as usize).min(sorted.len() - 1);
    let frac = rank - rank.floor();
    sorted[lo] + (sorted[hi] - sorted[lo]) * frac
}

/// True-accept rate at a target false-accept rate; see [`tar_at_far`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TarAtFar {
    /// The requested false-accept rate.
    pub far_target: f64,
    /// Lowest threshold (accept iff `score >= threshold`) whose FAR is at most `far_target`.
    pub threshold: f32,
    /// Fraction of genuine scores `>= threshold`.
    pub tar: f64,
    /// Fraction of impostor scores `>= threshold` (at most `far_target`, up to rounding).
    pub far_achieved: f64,
    /// `false` when there are fewer than `1 / far_target` impostor scores, so that a FAR that
    /// small cannot be measured: the only achievable FAR is then 0, and the threshold merely sits
    /// above every impostor seen. The numbers are still computed, but should not be reported as
    /// TAR at that FAR.
    pub supported: bool,
}

/// Relative slack when turning `far * n` into a count, so that e.g. `0.001 * 1000` allows exactly
/// one false accept despite `0.001` not being representable in binary.
const COUNT_EPS: f64 = 1e-9;

/// TAR at a fixed FAR: the operating point a deployment would choose for a security budget.
///
/// Precisely: with `k = floor(far * impostor.len())` false accepts allowed, the threshold is the
/// lowest `f32` value `t` such that at most `k` impostor scores are `>= t`, i.e. FAR(t) <= `far`.
/// If `s` is the `(k+1)`-th highest impostor score, that is the next `f32` above `s`: accept iff
/// `score >= t` is the same as accept iff `score > s`. Tied impostor scores are therefore never
/// split (ties at `s` are all rejected), so `far_achieved` can be below `far`. When `k` covers
/// every impostor (`far` = 1), the threshold is the lowest score of either set and everything is
/// accepted.
///
/// `supported` is `false` when `impostor.len() < 1 / far` (always for `far` = 0); see
/// [`TarAtFar::supported`].
///
/// Returns `None` when either set is empty or `far` is not within `[0, 1]`.
pub fn tar_at_far(genuine: &[f32], impostor: &[f32], far: f64) -> Option<TarAtFar> {
    if genuine.is_empty() || impostor.is_empty() || !(0.0..=1.0).contains(&far) {
        return None;
    }
    let n_imp = impostor.len();
    let mut imp_desc = impostor.to_vec();
    imp_desc.sort_by(|a, b| b.total_cmp(a));
    // Allowed false accepts; the product is non-negative and at most n_imp, so the cast is exact.
    let allowed = (far * n_imp as f64 * (1.0 + COUNT_EPS)).floor() as usize;
    let threshold = if allowed >= n_imp {
        let lowest_imp = imp_desc[n_imp - 1];
        genuine.iter().copied().fold(lowest_imp, |m, s| if s.total_cmp(&m).is_lt() { s } else { m })
    } else {
        next_up(imp_desc[allowed])
    };
    let tar = fraction_at_or_above(genuine, threshold);
    let far_achieved = fraction_at_or_above(impostor, threshold);
    let supported = far * n_imp as f64 >= 1.0 - COUNT_EPS;
    Some(TarAtFar { far_target: far, threshold, tar, far_achieved, supported })
}

/// Fraction of `scores` that are `>= threshold` (the accepted fraction). `scores` is non-empty.
fn fraction_at_or_above(scores: &[f32], threshold: f32) -> f64 {
    scores.iter().filter(|&&s| s >= threshold).count() as f64 / scores.len() as f64
}

/// The smallest `f32` greater than `x` (`f32::next_up` needs Rust 1.86; the crate supports 1.85).
fn next_up(x: f32) -> f32 {
    if x.is_nan() || x == f32::INFINITY {
        return x;
    }
    if x == 0.0 {
        // Covers -0.0 too: the successor of either zero is the smallest positive subnormal.
        return f32::from_bits(1);
    }
    let bits = x.to_bits();
    // For positive floats the bit pattern grows with the value; for negative ones it shrinks.
    if x > 0.0 {
        f32::from_bits(bits + 1)
    } else {
        f32::from_bits(bits - 1)
    }
}

/// Equal error rate: the rate at which false accepts equal false rejects.
///
/// The operating points (FAR(t), FRR(t)) for accept iff `score >= t` are taken at every distinct
/// score, plus t = -inf (FAR 1, FRR 0) and t = +inf (FAR 0, FRR 1). They are joined by straight
/// lines (the usual piecewise-linear ROC) and the EER is where that curve crosses FAR = FRR. An
/// operating point exactly on the diagonal gives its rate directly. Perfectly separated sets give
/// 0; perfectly inverted ones give 1. O(n log n).
///
/// Returns NaN when either set is empty.
pub fn roc_eer(genuine: &[f32], impostor: &[f32]) -> f64 {
    if genuine.is_empty() || impostor.is_empty() {
        return f64::NAN;
    }
    let mut gen = genuine.to_vec();
    let mut imp = impostor.to_vec();
    gen.sort_by(f32::total_cmp);
    imp.sort_by(f32::total_cmp);
    let (n_gen, n_imp) = (gen.len() as f64, imp.len() as f64);

    // Sweep the thresholds upwards; `gi`/`ii` count genuine/impostor scores below the threshold.
    let (mut gi, mut ii) = (0usize, 0usize);
    let mut prev = (1.0f64, 0.0f64); // (FAR, FRR) at t = -inf
    loop {
        let next_t = match (gen.get(gi), imp.get(ii)) {
            (Some(&g), Some(&i)) => Some(if g.total_cmp(&i).is_le() { g } else { i }),
            (Some(&g), None) => Some(g),
            (None, Some(&i)) => Some(i),
            (None, None) => None,
        };
        let point = match next_t {
            Some(t) => {
                let far = (n_imp - ii as f64) / n_imp;
                let frr = gi as f64 / n_gen;
                // Scores equal to t are accepted at this threshold but not at the next one.
                while gen.get(gi).is_some_and(|g| g.total_cmp(&t).is_le()) {
                    gi += 1;
                }
                while imp.get(ii).is_some_and(|i| i.total_cmp(&t).is_le()) {
                    ii += 1;
                }
                (far, frr)
            }
            None => (0.0, 1.0), // t = +inf
        };
        let d = point.0 - point.1;
        if d == 0.0 {
            return point.0;
        }
        if d < 0.0 {
            // `prev` has FAR > FRR (d > 0), `point` has FAR < FRR: interpolate the crossing.
            let d_prev = prev.0 - prev.1;
            let lambda = d_prev / (d_prev - d);
            return prev.0 + lambda * (point.0 - prev.0);
        }
        prev = point;
        if next_t.is_none() {
            // Unreachable: the +inf point has d = -1 < 0 and returned above. Kept as a guard so
            // the loop provably terminates.
            return f64::NAN;
        }
    }
}

/// The threshold maximising pair-verification accuracy, and that accuracy.
///
/// A pair is predicted "same" iff `score >= threshold`. Accuracy only changes at score values,
/// so the candidates are: the lowest score (accept all), the midpoints between consecutive
/// distinct sorted scores, and the next `f32` above the highest score (reject all). O(n log n).
///
/// Ties: consecutive candidates with the same maximal accuracy form a plateau; the returned
/// threshold is the midpoint between the plateau's lowest and highest candidate, which lies in
/// the middle of the score interval where that accuracy holds (the largest margin either way).
/// If several separate plateaus reach the maximum, the lowest-threshold one is used.
///
/// Returns `(NaN, NaN)` for empty input.
///
/// # Panics
/// If `scores` and `same` differ in length (a caller bug: labels would be misaligned).
pub fn best_threshold(scores: &[f32], same: &[bool]) -> (f32, f64) {
    assert_eq!(scores.len(), same.len(), "best_threshold: one label per score");
    if scores.is_empty() {
        return (f32::NAN, f64::NAN);
    }
    let mut order: Vec<(f32, bool)> = scores.iter().copied().zip(same.iter().copied()).collect();
    order.sort_by(|a, b| a.0.total_cmp(&b.0));

    // Group equal scores: (value, same count, different count).
    let mut groups: Vec<(f32, usize, usize)> = Vec::new();
    for &(s, is_same) in &order {
        match groups.last_mut() {
            Some(g) if g.0.total_cmp(&s).is_eq() => {
                if is_same {
                    g.1 += 1;
                } else {
                    g.2 += 1;
                }
            }
            _ => groups.push((s, usize::from(is_same), usize::from(!is_same))),
        }
    }

    // Candidate j accepts groups j.. and rejects groups ..j, for j in 0..=groups.len().
    let total_same: usize = groups.iter().map(|g| g.1).sum();
    let candidate = |j: usize| -> f32 {
        if j == 0 {
            groups[0].0
        } else if j == groups.len() {
            next_up(groups[j - 1].0)
        } else {
            midpoint_above(groups[j - 1].0, groups[j].0)
        }
    };
    let mut correct = total_same; // j = 0: every same pair right, every different pair wrong
    let (mut best, mut plateau) = (correct, (0usize, 0usize));
    let mut in_best_run = true;
    for (j, g) in groups.iter().enumerate().map(|(i, g)| (i + 1, g)) {
        // Moving group j-1 from accepted to rejected: its different pairs become right and its
        // same pairs wrong.
        correct = correct + g.2 - g.1;
        if correct > best {
            best = correct;
            plateau = (j, j);
            in_best_run = true;
        } else if correct == best && in_best_run {
            plateau.1 = j;
        } else {
            // A later plateau of equal accuracy does not replace the first one.
            in_best_run = false;
        }
    }
    let (lo, hi) = (candidate(plateau.0), candidate(plateau.1));
    let threshold = midpoint_f32(lo, hi);
    (threshold, best as f64 / scores.len() as f64)
}

/// A threshold in `(lo, hi]` near their midpoint, for `lo < hi`.
///
/// Rounding the exact midpoint to `f32` can land on `lo` when the two are adjacent floats, and
/// `lo` would then accept the lower group as well, so fall back to `hi` in that case.
fn midpoint_above(lo: f32, hi: f32) -> f32 {
    let m = midpoint_f32(lo, hi);
    if m > lo {
        m
    } else {
        hi
    }
}

/// Midpoint of two floats computed in `f64` (no overflow), rounded to `f32`; lies in `[a, b]`.
fn midpoint_f32(a: f32, b: f32) -> f32 {
    ((f64::from(a) + f64::from(b)) / 2.0) as f32
}

/// Verification accuracy as on LFW's balanced pairs: the best, over thresholds, of the mean of
/// the genuine pairs accepted and the impostor pairs rejected (each class half the weight,
/// however many pairs it has), predicting "same" iff `score >= threshold`. NaN when either
/// class is empty.
pub fn best_balanced_accuracy(genuine: &[f32], impostor: &[f32]) -> f64 {
    if genuine.is_empty() || impostor.is_empty() {
        return f64::NAN;
    }
    let mut all: Vec<(f32, bool)> =
        genuine.iter().map(|&s| (s, true)).chain(impostor.iter().map(|&s| (s, false))).collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (g, i) = (genuine.len() as f64, impostor.len() as f64);
    // Threshold below everything: every genuine accepted, every impostor accepted.
    let (mut genuine_below, mut impostor_below) = (0usize, 0usize);
    let mut best = 0.5;
    let mut k = 0;
    while k < all.len() {
        // Move the threshold just above the score `all[k].0` (ties move together).
        let v = all[k].0;
        // `total_cmp`: ties (NaN with NaN too) move together, so `k` always advances.
        while k < all.len() && all[k].0.total_cmp(&v).is_eq() {
            if all[k].1 {
                genuine_below += 1;
            } else {
                impostor_below += 1;
            }
            k += 1;
        }
        let acc = 0.5 * ((g - genuine_below as f64) / g + impostor_below as f64 / i);
        best = f64::max(best, acc);
    }
    best
}

/// Fraction of pairs classified correctly, predicting "same" iff `score >= threshold`.
///
/// Returns NaN for empty input.
///
/// # Panics
/// If `scores` and `same` differ in length.
pub fn accuracy_at(scores: &[f32], same: &[bool], threshold: f32) -> f64 {
    assert_eq!(scores.len(), same.len(), "accuracy_at: one label per score");
    if scores.is_empty() {
        return f64::NAN;
    }
    let correct = scores.iter().zip(same).filter(|&(&s, &is_same)| (s >= threshold) == is_same);
    correct.count() as f64 / scores.len() as f64
}

/// Result of the k-fold verification protocol; see [`kfold_accuracy`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KFoldResult {
    /// Mean of `fold_accuracies`.
    pub accuracy: f64,
    /// Population standard deviation of `fold_accuracies` (divides by the number of folds), as
    /// the LFW protocol reports it.
    pub accuracy_std: f64,
    /// Accuracy on each held-out fold, in ascending order of fold index.
    pub fold_accuracies: Vec<f64>,
    /// Threshold used for each fold (chosen on the other folds), same order.
    pub thresholds: Vec<f32>,
    /// Mean of `thresholds`: a single operating point to quote or deploy.
    pub threshold: f32,
}

/// Verification accuracy by cross-validation, as in the LFW View 2 protocol.
///
/// `folds[i]` is the fold index of pair `i` (any `usize` values; folds are visited in ascending
/// order of index). For each fold, the threshold is chosen by [`best_threshold`] on all the other
/// folds and accuracy is measured with [`accuracy_at`] on that fold alone, so no pair is scored
/// with a threshold fitted to it.
///
/// With fewer than two distinct folds there is no held-out data: the vectors are empty and the
/// scalars NaN. For a single train/test split (LFW View 1), call [`best_threshold`] on the
/// training pairs and [`accuracy_at`] on the test pairs instead.
///
/// # Panics
/// If `scores`, `same` and `folds` differ in length.
pub fn kfold_accuracy(scores: &[f32], same: &[bool], folds: &[usize]) -> KFoldResult {
    assert_eq!(scores.len(), same.len(), "kfold_accuracy: one label per score");
    assert_eq!(scores.len(), folds.len(), "kfold_accuracy: one fold index per score");
    let fold_ids: BTreeSet<usize> = folds.iter().copied().collect();
    if fold_ids.len() < 2 {
        return KFoldResult {
            accuracy: f64::NAN,
            accuracy_std: f64::NAN,
            fold_accuracies: Vec::new(),
            thresholds: Vec::new(),
            threshold: f32::NAN,
        };
    }
    let mut fold_accuracies = Vec::with_capacity(fold_ids.len());
    let mut thresholds = Vec::with_capacity(fold_ids.len());
    for &fold in &fold_ids {
        let (mut train_s, mut train_l, mut test_s, mut test_l) = (vec![], vec![], vec![], vec![]);
        for ((&s, &l), &f) in scores.iter().zip(same).zip(folds) {
            if f == fold {
                test_s.push(s);
                test_l.push(l);
            } else {
                train_s.push(s);
                train_l.push(l);
            }
        }
        let (threshold, _) = best_threshold(&train_s, &train_l);
        fold_accuracies.push(accuracy_at(&test_s, &test_l, threshold));
        thresholds.push(threshold);
    }
    let k = fold_accuracies.len() as f64;
    let accuracy = fold_accuracies.iter().sum::<f64>() / k;
    let var = fold_accuracies.iter().map(|a| (a - accuracy) * (a - accuracy)).sum::<f64>() / k;
    let threshold = (thresholds.iter().map(|&t| f64::from(t)).sum::<f64>() / k) as f32;
    KFoldResult { accuracy, accuracy_std: var.sqrt(), fold_accuracies, thresholds, threshold }
}

/// One closed-set identification query: a probe face compared with gallery entries.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Probe {
    /// The probe's true identity.
    pub class: usize,
    /// `(gallery class, score)` for each gallery entry compared; a class may appear several
    /// times (several enrolled templates per person) and order does not matter.
    pub candidates: Vec<(usize, f32)>,
}

/// Rank-1 identification accuracy: the fraction of probes whose highest-scoring candidate has
/// the probe's class.
///
/// A probe whose top score is shared by candidates of different classes counts as a miss (the
/// pessimistic reading: a door must not open on a coin toss), as does a probe with no
/// candidates. Returns NaN when `probes` is empty.
pub fn rank1_accuracy(probes: &[Probe]) -> f64 {
    if probes.is_empty() {
        return f64::NAN;
    }
    let hits = probes.iter().filter(|p| rank1_hit(p)).count();
    hits as f64 / probes.len() as f64
}

/// Whether every candidate at the probe's top score has the probe's class.
fn rank1_hit(probe: &Probe) -> bool {
    let top = probe.candidates.iter().map(|c| c.1).max_by(f32::total_cmp);
    match top {
        Some(top) => probe
            .candidates
            .iter()
            .filter(|c| c.1.total_cmp(&top).is_eq())
            .all(|c| c.0 == probe.class),
        None => false,
    }
}

/// Counts of `scores` in `bins` equal-width bins spanning `[lo, hi]`, for text histograms.
///
/// Bin `i` covers `[lo + i*w, lo + (i+1)*w)` with `w = (hi - lo) / bins`; the last bin also
/// includes `hi`. Scores outside `[lo, hi]` (and NaN) are not counted, so the counts can sum to
/// less than `scores.len()`; pass the score range from [`score_stats`] to count everything.
/// Returns `bins` zeros when the range is empty or not finite, and an empty vector for 0 bins.
pub fn histogram(scores: &[f32], lo: f32, hi: f32, bins: usize) -> Vec<usize> {
    let mut counts = vec![0usize; bins];
    if bins == 0 || !lo.is_finite() || !hi.is_finite() || hi <= lo {
        return counts;
    }
    let (lo, hi) = (f64::from(lo), f64::from(hi));
    let scale = bins as f64 / (hi - lo);
    for &s in scores {
        let s = f64::from(s);
        // `contains` is false for NaN too.
        if (lo..=hi).contains(&s) {
            // Non-negative and finite, so the truncating cast is the floor; `hi` maps to `bins`.
            let i = (((s - lo) * scale) as usize).min(bins - 1);
            counts[i] += 1;
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    /// Deterministic xorshift generator so the synthetic data is identical on every run.
    struct Rng(u64);
    impl Rng {
        fn uniform(&mut self) -> f64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }
        /// Approximately normal (Irwin-Hall with 12 terms), mean 0, std 1.
        fn normal(&mut self) -> f64 {
            (0..12).map(|_| self.uniform()).sum::<f64>() - 6.0
        }
    }

    /// Brute-force best accuracy over every threshold that can make a difference.
    fn brute_best_accuracy(scores: &[f32], same: &[bool]) -> f64 {
        let mut cands: Vec<f32> = scores.to_vec();
        cands.push(f32::INFINITY);
        cands.iter().map(|&t| accuracy_at(scores, same, t)).fold(0.0, f64::max)
    }

    #[test]
    fn score_stats_empty_is_none() {
        assert_eq!(score_stats(&[]), None);
    }

    #[test]
    fn score_stats_hand_computed() {
        // 1..=5: mean 3, population variance (4+1+0+1+4)/5 = 2.
        let s = score_stats(&[5.0, 1.0, 3.0, 2.0, 4.0]).unwrap();
        assert_eq!(s.count, 5);
        assert!(close(s.mean, 3.0));
        assert!(close(s.std, 2f64.sqrt()));
        assert_eq!((s.min, s.max), (1.0, 5.0));
        // Fractional rank p * 4: 0.04 -> 1.04, 2 -> 3, 3.96 -> 4.96.
        assert!(close(s.p01, 1.04));
        assert!(close(s.p50, 3.0));
        assert!(close(s.p99, 4.96));
    }

    #[test]
    fn score_stats_single_value() {
        let s = score_stats(&[0.5]).unwrap();
        assert_eq!((s.count, s.mean, s.std, s.min, s.max), (1, 0.5, 0.0, 0.5, 0.5));
        assert_eq!((s.p01, s.p50, s.p99), (0.5, 0.5, 0.5));
    }

    #[test]
    fn tar_at_far_exact_threshold() {
        // Ten impostors 0.1..=1.0; FAR 0.1 allows one false accept, so the threshold sits just
        // above the second-highest impostor (0.9): only 1.0 is accepted.
        let imp: Vec<f32> = (1..=10).map(|i| i as f32 / 10.0).collect();
        let gen = [0.85, 0.95, 0.99, 1.0];
        let r = tar_at_far(&gen, &imp, 0.1).unwrap();
        assert_eq!(r.threshold, next_up(0.9));
        assert!(r.threshold > 0.9 && r.threshold < 0.900_001);
        assert!(close(r.far_achieved, 0.1));
        assert!(close(r.tar, 0.75)); // 0.85 rejected
        assert!(r.supported);
        // FAR 0.2 allows two: threshold just above 0.8, and 0.85 is now accepted.
        let r = tar_at_far(&gen, &imp, 0.2).unwrap();
        assert_eq!(r.threshold, next_up(0.8));
        assert!(close(r.far_achieved, 0.2));
        assert!(close(r.tar, 1.0));
        // FAR 0.15 still allows only one (floor).
        let r = tar_at_far(&gen, &imp, 0.15).unwrap();
        assert_eq!(r.threshold, next_up(0.9));
        assert!(close(r.far_achieved, 0.1));
    }

    #[test]
    fn tar_at_far_is_lowest_threshold() {
        let imp: Vec<f32> = (1..=10).map(|i| i as f32 / 10.0).collect();
        let r = tar_at_far(&[0.5], &imp, 0.1).unwrap();
        // One step lower the FAR target is violated.
        assert!(fraction_at_or_above(&imp, r.threshold) <= 0.1);
        assert!(fraction_at_or_above(&imp, 0.9) > 0.1);
    }

    #[test]
    fn tar_at_far_ties_are_not_split() {
        // Allowing one false accept among tied top impostors accepts none of them.
        let imp = [0.7, 0.7, 0.2, 0.1];
        let r = tar_at_far(&[0.7, 0.8], &imp, 0.25).unwrap();
        assert_eq!(r.threshold, next_up(0.7));
        assert_eq!(r.far_achieved, 0.0);
        assert!(close(r.tar, 0.5)); // the genuine 0.7 ties with impostors and is rejected too
        assert!(r.supported);
    }

    #[test]
    fn tar_at_far_rounding_of_far_times_n() {
        // 0.001 * 1000 must allow exactly one false accept.
        let imp: Vec<f32> = (0..1000).map(|i| i as f32 / 1000.0).collect();
        let r = tar_at_far(&[1.0], &imp, 0.001).unwrap();
        assert_eq!(r.threshold, next_up(0.998));
        assert!(close(r.far_achieved, 0.001));
        assert!(r.supported);
    }

    #[test]
    fn tar_at_far_unsupported_when_too_few_impostors() {
        // FAR 1e-3 needs at least 1000 impostors.
        let imp = [0.1, 0.2, 0.3];
        let r = tar_at_far(&[0.25, 0.5], &imp, 1e-3).unwrap();
        assert!(!r.supported);
        assert_eq!(r.threshold, next_up(0.3));
        assert_eq!(r.far_achieved, 0.0);
        assert!(close(r.tar, 0.5));
        // FAR 0 is never measurable, but still computed.
        let r = tar_at_far(&[0.25, 0.5], &imp, 0.0).unwrap();
        assert!(!r.supported);
        assert_eq!(r.threshold, next_up(0.3));
    }

    #[test]
    fn tar_at_far_all_genuine_above_impostor() {
        let r = tar_at_far(&[0.8, 0.9], &[0.1, 0.2, 0.3, 0.4], 0.25).unwrap();
        assert_eq!(r.threshold, next_up(0.3));
        assert_eq!((r.tar, r.far_achieved, r.supported), (1.0, 0.25, true));
    }

    #[test]
    fn tar_at_far_one_accepts_everything() {
        let r = tar_at_far(&[0.05, 0.9], &[0.1, 0.2], 1.0).unwrap();
        assert_eq!(r.threshold, 0.05);
        assert_eq!((r.tar, r.far_achieved), (1.0, 1.0));
    }

    #[test]
    fn tar_at_far_rejects_bad_input() {
        assert!(tar_at_far(&[], &[0.1], 0.1).is_none());
        assert!(tar_at_far(&[0.1], &[], 0.1).is_none());
        assert!(tar_at_far(&[0.1], &[0.1], -0.1).is_none());
        assert!(tar_at_far(&[0.1], &[0.1], 1.5).is_none());
        assert!(tar_at_far(&[0.1], &[0.1], f64::NAN).is_none());
    }

    #[test]
    fn next_up_steps_one_ulp() {
        assert_eq!(next_up(1.0), 1.0 + f32::EPSILON);
        assert_eq!(next_up(0.0), f32::from_bits(1));
        assert_eq!(next_up(-0.0), f32::from_bits(1));
        assert!(next_up(-1.0) > -1.0 && next_up(-1.0) < -0.999_999);
        assert_eq!(next_up(f32::MAX), f32::INFINITY);
    }

    #[test]
    fn eer_separated_and_inverted() {
        assert_eq!(roc_eer(&[0.8, 0.9], &[0.1, 0.2]), 0.0);
        assert_eq!(roc_eer(&[0.1], &[0.9]), 1.0);
    }

    #[test]
    fn eer_point_on_diagonal() {
        // At t = 0.7: genuine 0.6 rejected (FRR 1/2), impostor 0.7 accepted (FAR 1/2).
        assert!(close(roc_eer(&[0.6, 0.8], &[0.4, 0.7]), 0.5));
    }

    #[test]
    fn eer_interpolated() {
        // Points ... (FAR 1/2, FRR 1/3) at t = 0.6, then (0, 1/3) at t = 0.9: the segment between
        // them crosses the diagonal at 1/3.
        assert!(close(roc_eer(&[0.5, 0.9, 0.95], &[0.1, 0.6]), 1.0 / 3.0));
    }

    #[test]
    fn eer_ties_between_sets() {
        // Everything tied: the only points are (1, 0) and (0, 1), crossing at 1/2.
        assert!(close(roc_eer(&[0.5, 0.5], &[0.5]), 0.5));
    }

    #[test]
    fn eer_empty_is_nan() {
        assert!(roc_eer(&[], &[0.1]).is_nan());
        assert!(roc_eer(&[0.1], &[]).is_nan());
    }

    #[test]
    fn best_threshold_separable() {
        let (t, acc) = best_threshold(&[0.1, 0.9, 0.2, 0.8], &[false, true, false, true]);
        assert_eq!(t, 0.5);
        assert_eq!(acc, 1.0);
    }

    #[test]
    fn best_threshold_plateau_midpoint() {
        // A tie at 0.5 between a same and a different pair: thresholds 0.25 and 0.75 both give
        // 3/4, so the plateau midpoint 0.5 is returned.
        let (t, acc) = best_threshold(&[0.0, 0.5, 0.5, 1.0], &[false, true, false, true]);
        assert_eq!(t, 0.5);
        assert_eq!(acc, 0.75);
        assert_eq!(accuracy_at(&[0.0, 0.5, 0.5, 1.0], &[false, true, false, true], t), 0.75);
    }

    #[test]
    fn best_threshold_first_of_separate_plateaus() {
        // 0.25 and 0.75 both give 3/4, with worse 0.5 between them: the lower one wins.
        let (t, acc) = best_threshold(&[0.125, 0.375, 0.625, 0.875], &[false, true, false, true]);
        assert_eq!(t, 0.25);
        assert_eq!(acc, 0.75);
    }

    #[test]
    fn best_threshold_all_same_or_all_different() {
        // All same: accept everything, i.e. threshold at the lowest score.
        assert_eq!(best_threshold(&[0.3, 0.1, 0.2], &[true, true, true]), (0.1, 1.0));
        // All different: reject everything, just above the highest score.
        assert_eq!(best_threshold(&[0.3, 0.1, 0.2], &[false, false, false]), (next_up(0.3), 1.0));
        // One pair, same: plateau from "accept all" (0.4) only.
        assert_eq!(best_threshold(&[0.4], &[true]), (0.4, 1.0));
    }

    #[test]
    fn best_threshold_adjacent_floats() {
        // The midpoint of two adjacent floats is not representable; the threshold must still
        // separate them.
        let hi = next_up(1.0);
        let (t, acc) = best_threshold(&[1.0, hi], &[false, true]);
        assert_eq!(acc, 1.0);
        assert!(t > 1.0 && t <= hi);
    }

    #[test]
    fn best_threshold_empty_is_nan() {
        let (t, acc) = best_threshold(&[], &[]);
        assert!(t.is_nan() && acc.is_nan());
    }

    #[test]
    #[should_panic(expected = "one label per score")]
    fn best_threshold_length_mismatch_panics() {
        best_threshold(&[0.1, 0.2], &[true]);
    }

    #[test]
    fn best_threshold_matches_brute_force() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for round in 0..50 {
            let n = 1 + round * 3;
            // Coarse scores so that ties between same and different pairs are common.
            let scores: Vec<f32> =
                (0..n).map(|_| (rng.uniform() * 8.0).floor() as f32 / 8.0).collect();
            let same: Vec<bool> = scores.iter().map(|&s| rng.uniform() < f64::from(s)).collect();
            let (t, acc) = best_threshold(&scores, &same);
            assert_eq!(acc, brute_best_accuracy(&scores, &same), "round {round}");
            assert_eq!(accuracy_at(&scores, &same, t), acc, "round {round}");
        }
    }

    #[test]
    fn balanced_accuracy_weighs_both_classes_alike() {
        // Separable: 1.0 whatever the class sizes.
        assert_eq!(best_balanced_accuracy(&[0.9, 0.8], &[0.1; 100]), 1.0);
        // One genuine pair below every impostor: accept it and lose all 4 impostors, or reject
        // it and lose a quarter of the genuine pairs.
        let v = best_balanced_accuracy(&[0.9, 0.8, 0.7, -1.0], &[0.1, 0.2, 0.3, 0.0]);
        assert!((v - 0.875).abs() < 1e-12, "{v}");
        assert!(best_balanced_accuracy(&[], &[0.1]).is_nan());
        // A NaN score ends the sweep (sorted last by `total_cmp`) instead of hanging it.
        let v = best_balanced_accuracy(&[0.9, f32::NAN], &[0.1, f32::NAN]);
        assert!((0.5..=1.0).contains(&v), "{v}");
    }

    #[test]
    fn accuracy_at_hand_computed() {
        let scores = [0.1, 0.4, 0.5, 0.9];
        let same = [false, true, false, true];
        assert_eq!(accuracy_at(&scores, &same, 0.45), 0.5); // 0.4 rejected, 0.5 accepted: wrong
        assert_eq!(accuracy_at(&scores, &same, 0.4), 0.75); // >= includes 0.4
        assert_eq!(accuracy_at(&scores, &same, 0.95), 0.5);
        assert!(accuracy_at(&[], &[], 0.5).is_nan());
    }

    /// 10 folds x 60 pairs; same pairs score around `same_mean`, different pairs around 0.2.
    fn synthetic(noise: f64, seed: u64) -> (Vec<f32>, Vec<bool>, Vec<usize>) {
        let mut rng = Rng(seed);
        let (mut scores, mut same, mut folds) = (vec![], vec![], vec![]);
        for fold in 0..10 {
            for i in 0..60 {
                let is_same = i % 2 == 0;
                let mean = if is_same { 0.7 } else { 0.2 };
                scores.push((mean + noise * rng.normal()) as f32);
                same.push(is_same);
                folds.push(fold);
            }
        }
        (scores, same, folds)
    }

    #[test]
    fn kfold_separable() {
        // Irwin-Hall noise is bounded by 6 sigma = 0.24: same >= 0.46 > 0.44 >= different.
        let (scores, same, folds) = synthetic(0.04, 1);
        let r = kfold_accuracy(&scores, &same, &folds);
        assert_eq!(r.fold_accuracies, vec![1.0; 10]);
        assert_eq!((r.accuracy, r.accuracy_std), (1.0, 0.0));
        assert_eq!(r.thresholds.len(), 10);
        for &t in &r.thresholds {
            assert!(t > 0.3 && t < 0.6, "threshold {t}");
        }
        assert!(r.threshold > 0.3 && r.threshold < 0.6);
    }

    #[test]
    fn kfold_noisy_uses_other_folds() {
        let (scores, same, folds) = synthetic(0.2, 7);
        let r = kfold_accuracy(&scores, &same, &folds);
        assert_eq!(r.fold_accuracies.len(), 10);
        for fold in 0..10 {
            let train: Vec<usize> = (0..scores.len()).filter(|&i| folds[i] != fold).collect();
            let test: Vec<usize> = (0..scores.len()).filter(|&i| folds[i] == fold).collect();
            let pick = |idx: &[usize]| -> (Vec<f32>, Vec<bool>) {
                (idx.iter().map(|&i| scores[i]).collect(), idx.iter().map(|&i| same[i]).collect())
            };
            let (ts, tl) = pick(&train);
            let (vs, vl) = pick(&test);
            let (t, _) = best_threshold(&ts, &tl);
            assert_eq!(r.thresholds[fold], t);
            assert_eq!(r.fold_accuracies[fold], accuracy_at(&vs, &vl, t));
        }
        let mean = r.fold_accuracies.iter().sum::<f64>() / 10.0;
        let var = r.fold_accuracies.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / 10.0;
        assert!(close(r.accuracy, mean));
        assert!(close(r.accuracy_std, var.sqrt()));
        assert!(r.accuracy_std > 0.0);
        // Means 0.5 apart with std 0.2 each: Bayes accuracy is Phi(1.25) ~ 0.89.
        assert!(r.accuracy > 0.8 && r.accuracy < 0.97, "accuracy {}", r.accuracy);
        let mean_t = r.thresholds.iter().map(|&t| f64::from(t)).sum::<f64>() / 10.0;
        assert_eq!(r.threshold, mean_t as f32);
    }

    #[test]
    fn kfold_hand_computed_two_folds() {
        // Dyadic scores so every threshold is exact.
        let scores = [0.25, 0.5, 0.75, 0.125, 0.625, 0.375];
        let same = [false, false, true, false, true, true];
        let folds = [0, 0, 0, 1, 1, 1];
        // Each fold alone is separable: fold 0 at 0.625, fold 1 at 0.25.
        assert_eq!(best_threshold(&scores[..3], &same[..3]), (0.625, 1.0));
        assert_eq!(best_threshold(&scores[3..], &same[3..]), (0.25, 1.0));
        let r = kfold_accuracy(&scores, &same, &folds);
        // Fold 0 is scored with fold 1's threshold and vice versa.
        assert_eq!(r.thresholds, vec![0.25, 0.625]);
        // Fold 0 at 0.25: 0.25 F wrong (>=), 0.5 F wrong, 0.75 T right. Fold 1 at 0.625:
        // 0.125 F right, 0.625 T right, 0.375 T wrong.
        assert_eq!(r.fold_accuracies, vec![1.0 / 3.0, 2.0 / 3.0]);
        assert!(close(r.accuracy, 0.5));
        assert!(close(r.accuracy_std, 1.0 / 6.0));
        assert_eq!(r.threshold, 0.4375);
    }

    #[test]
    fn kfold_single_fold_is_nan() {
        let r = kfold_accuracy(&[0.1, 0.9], &[false, true], &[3, 3]);
        assert!(r.accuracy.is_nan() && r.accuracy_std.is_nan() && r.threshold.is_nan());
        assert!(r.fold_accuracies.is_empty() && r.thresholds.is_empty());
        let r = kfold_accuracy(&[], &[], &[]);
        assert!(r.accuracy.is_nan());
    }

    #[test]
    fn kfold_sparse_fold_ids_in_ascending_order() {
        let scores = [0.1, 0.9, 0.2, 0.8];
        let same = [false, true, false, true];
        let r = kfold_accuracy(&scores, &same, &[7, 7, 2, 2]);
        assert_eq!(r.fold_accuracies, vec![1.0, 1.0]);
        // Fold id 2 (first) trains on {0.1, 0.9}, fold id 7 on {0.2, 0.8}.
        assert_eq!(r.thresholds, vec![0.5, 0.5]);
    }

    #[test]
    fn rank1_hand_computed() {
        let probes = vec![
            // Hit: best is class 1 (two templates).
            Probe { class: 1, candidates: vec![(0, 0.3), (1, 0.9), (1, 0.2), (2, 0.5)] },
            // Miss: class 2 scores higher.
            Probe { class: 0, candidates: vec![(0, 0.6), (2, 0.7)] },
            // Miss: tie between the true class and another.
            Probe { class: 0, candidates: vec![(0, 0.8), (1, 0.8)] },
            // Hit: tie between two templates of the true class.
            Probe { class: 2, candidates: vec![(2, 0.8), (2, 0.8), (1, 0.1)] },
            // Miss: nothing to compare with.
            Probe { class: 2, candidates: vec![] },
        ];
        assert!(close(rank1_accuracy(&probes), 2.0 / 5.0));
        assert!(rank1_accuracy(&[]).is_nan());
    }

    #[test]
    fn histogram_hand_computed() {
        let scores = [0.0, 0.1, 0.25, 0.5, 0.74, 0.75, 1.0, -0.1, 1.1, f32::NAN];
        // Bins [0, .25) [.25, .5) [.5, .75) [.75, 1]; -0.1, 1.1 and NaN are not counted.
        assert_eq!(histogram(&scores, 0.0, 1.0, 4), vec![2, 1, 2, 2]);
        assert_eq!(histogram(&scores, 0.0, 1.0, 1), vec![7]);
        assert_eq!(histogram(&scores, 0.0, 1.0, 0), Vec::<usize>::new());
        assert_eq!(histogram(&scores, 1.0, 1.0, 3), vec![0, 0, 0]);
        assert_eq!(histogram(&[], 0.0, 1.0, 2), vec![0, 0]);
    }
}
