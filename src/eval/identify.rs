//! `portier eval identify`: open-set 1:N identification against the gallery's size. A door
//! searches every face against everyone enrolled, so a stranger gets one chance per enrolled
//! person: at a fixed threshold the false-positive identification rate (FPIR) grows with the
//! number of people N (≈ 1 − (1 − FAR)^N for independent comparisons). This measures it.
//!
//! Protocol, one template per person as a door enrols from one photo:
//! - every identity's first photo with a face is its template; each identity with another
//!   photo gives one probe (that photo; a probe without a face counts as a miss);
//! - for a gallery of N people, each probe is searched `repeats` times against a seeded draw of
//!   N other identities (non-mated: a false positive when the best score reaches the
//!   threshold), and against its own template with N − 1 of those others (mated: a hit when
//!   its own template scores best and reaches the threshold; FNIR = 1 − hit rate);
//! - the threshold holding an FPIR at N is the quantile of the non-mated best scores; the
//!   rise of that threshold per tenfold more people is fitted over the sizes, the number the
//!   gallery-size rule (`[recognizer]`/`[npu] threshold_rise_per_decade`) takes.
//!
//! Must not: choose anything. It measures and prints; the configuration decides.

use std::path::Path;

use serde::Serialize;

use super::camera::SplitMix;
use super::verify::{embed_photos_by, Labelled};
use super::EvalError;
use crate::gallery::{Matcher, Storage};
use crate::pipeline::{Pipeline, Select};

/// Each photo's embedding; `None` where no face was found.
pub type Embeddings = Vec<Option<Vec<f32>>>;

/// Per-search FPIRs the thresholds are measured at.
pub const FPIRS: [f64; 2] = [1e-2, 1e-3];

/// The scores every search draws from: probes against every gallery template.
#[derive(Debug, Clone)]
pub struct Searches {
    /// Gallery identities (one template each).
    pub identities: usize,
    /// Per probe: its identity's gallery index.
    pub mates: Vec<usize>,
    /// `probes x identities`, row-major: cosine of probe and template.
    pub scores: Vec<f32>,
    /// Probes whose photo has no face (mated searches they miss).
    pub probes_without_face: usize,
}

impl Searches {
    /// Builds the score table from each photo's identity (`classes`, any ids) and embedding
    /// (`None`: no face), photos in a fixed order: an identity's first photo with a face is
    /// its template, its next photo its probe. Scores are the matcher's own, with its
    /// templates stored as `storage`.
    pub fn new(classes: &[usize], embeddings: &[Option<Vec<f32>>], storage: Storage) -> Self {
        let mut template_of: std::collections::HashMap<usize, usize> = Default::default();
        let mut templates: Vec<&[f32]> = Vec::new();
        let mut used = vec![false; classes.len()];
        for (i, (c, e)) in classes.iter().zip(embeddings).enumerate() {
            if let (Some(e), false) = (e, template_of.contains_key(c)) {
                template_of.insert(*c, templates.len());
                templates.push(e);
                used[i] = true;
            }
        }
        let dim = templates.first().map_or(0, |t| t.len());
        let matcher =
            Matcher::from_rows("identify", dim, 1, &templates.concat()).with_storage(storage);
        let mut scores = Vec::new();
        let mut probed = vec![false; templates.len()];
        let (mut mates, mut rows, mut without_face) = (Vec::new(), Vec::new(), 0);
        for (i, c) in classes.iter().enumerate() {
            let Some(&g) = template_of.get(c) else { continue };
            if used[i] || probed[g] {
                continue;
            }
            probed[g] = true;
            match &embeddings[i] {
                Some(e) if matcher.scores_into(e, &mut scores).is_ok() => {
                    mates.push(g);
                    rows.extend_from_slice(&scores);
                }
                _ => without_face += 1,
            }
        }
        Self { identities: templates.len(), mates, scores: rows, probes_without_face: without_face }
    }

    /// Probes with a face.
    pub fn probes(&self) -> usize {
        self.mates.len()
    }

    fn row(&self, p: usize) -> &[f32] {
        &self.scores[p * self.identities..(p + 1) * self.identities]
    }
}

/// What one gallery size gives.
#[derive(Debug, Clone, Serialize)]
pub struct SizeReport {
    /// People in the gallery.
    pub people: usize,
    /// Non-mated (and as many mated) searches.
    pub searches: usize,
    /// Per [`FPIRS`] entry: the threshold holding it, and the FNIR there.
    pub at_fpir: Vec<AtFpir>,
    /// At the rule's threshold for this size, when one was given.
    pub at_rule: Option<AtThreshold>,
    /// At the rule's threshold for one person, kept at every size (what the rule prevents).
    pub at_fixed: Option<AtThreshold>,
}

/// The threshold that holds an FPIR.
#[derive(Debug, Clone, Serialize)]
pub struct AtFpir {
    /// The FPIR asked for.
    pub fpir: f64,
    /// The lowest threshold at which at most that share of non-mated searches names someone.
    pub threshold: f32,
    /// Mated searches missed there (wrong person first, or below the threshold).
    pub fnir: f64,
    /// Whether it is measured: at least 10 different probes among the non-mated searches
    /// above it (repeated draws of one probe are not independent: a probe that resembles
    /// another identity names it in most draws).
    pub supported: bool,
}

/// Rates at one threshold.
#[derive(Debug, Clone, Serialize)]
pub struct AtThreshold {
    /// The threshold.
    pub threshold: f32,
    /// Non-mated searches that named someone.
    pub fpir: f64,
    /// Mated searches missed.
    pub fnir: f64,
}

/// The report of `eval identify`.
#[derive(Debug, Clone, Serialize)]
pub struct IdentifyReport {
    /// Gallery identities available.
    pub identities: usize,
    /// Probes with a face.
    pub probes: usize,
    /// Probes without a face (counted as misses).
    pub probes_without_face: usize,
    /// Draws per probe and size.
    pub repeats: usize,
    /// Per gallery size, ascending.
    pub sizes: Vec<SizeReport>,
    /// Per [`FPIRS`] entry: the threshold's rise per tenfold more people (least squares over
    /// the sizes whose threshold was supported), `None` with fewer than two.
    pub rise_per_decade: Vec<Option<f32>>,
    /// With a rule: its threshold for one person (the bands') and the share of all
    /// different-identity comparisons (probes against every other template) at or above it,
    /// the `[matching] bands_far` it stands for.
    pub rule_base: Option<AtThreshold>,
}

/// Measures every size in `people` (sizes above the gallery's identities − 1 are left out);
/// `rule(n)` gives the configuration's threshold for a gallery of `n`, if any.
pub fn measure(
    s: &Searches,
    people: &[usize],
    repeats: usize,
    rule: Option<&dyn Fn(usize) -> f32>,
) -> IdentifyReport {
    let mut sizes = Vec::new();
    let mut order: Vec<usize> = Vec::with_capacity(s.identities);
    let repeats = repeats.max(1);
    for &n in people {
        if n == 0 || n >= s.identities {
            continue;
        }
        // Per search: the best non-mated score, and the mate's score with the best of the
        // other n − 1.
        let mut nonmated = Vec::with_capacity(s.probes() * repeats);
        let mut mated = Vec::with_capacity(s.probes() * repeats);
        for (p, &mate) in s.mates.iter().enumerate() {
            let row = s.row(p);
            let mut draw = SplitMix((n as u64) << 32 | p as u64);
            for _ in 0..repeats {
                // Partial Fisher-Yates over every identity but the mate.
                order.clear();
                order.extend((0..s.identities).filter(|&g| g != mate));
                let (mut best_first, mut best_all) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
                for k in 0..n {
                    let j = k + draw.below(order.len() - k);
                    order.swap(k, j);
                    let v = row[order[k]];
                    if k + 1 < n {
                        best_first = best_first.max(v);
                    }
                    best_all = best_all.max(v);
                }
                nonmated.push(best_all);
                mated.push((row[mate], best_first));
            }
        }
        let searches = nonmated.len();
        let missed_without_face = s.probes_without_face * repeats;
        let at = |t: f32| {
            let fp = nonmated.iter().filter(|&&v| v >= t).count();
            let hits = mated.iter().filter(|&&(m, o)| m >= t && m > o).count();
            let mated_total = mated.len() + missed_without_face;
            AtThreshold {
                threshold: t,
                fpir: fp as f64 / searches.max(1) as f64,
                fnir: 1.0 - hits as f64 / mated_total.max(1) as f64,
            }
        };
        // Searches by best score, highest first (search k is probe k / repeats's).
        let mut ranked: Vec<usize> = (0..searches).collect();
        ranked.sort_by(|&a, &b| nonmated[b].total_cmp(&nonmated[a]));
        let at_fpir = FPIRS
            .iter()
            .map(|&fpir| {
                // At most floor(fpir · searches) non-mated searches at or above: just above
                // the score ranked one past that.
                let allowed = (fpir * searches as f64).floor() as usize;
                let t = ranked.get(allowed).map_or(f32::NEG_INFINITY, |&k| nonmated[k].next_up());
                let mut probes: Vec<usize> =
                    ranked[..allowed].iter().map(|k| k / repeats).collect();
                probes.sort_unstable();
                probes.dedup();
                let r = at(t);
                AtFpir { fpir, threshold: t, fnir: r.fnir, supported: probes.len() >= 10 }
            })
            .collect();
        sizes.push(SizeReport {
            people: n,
            searches,
            at_fpir,
            at_rule: rule.map(|f| at(f(n))),
            at_fixed: rule.map(|f| at(f(1))),
        });
    }
    let rise_per_decade = (0..FPIRS.len())
        .map(|k| {
            let pts: Vec<(f64, f64)> = sizes
                .iter()
                .filter(|r| r.at_fpir[k].supported)
                .map(|r| ((r.people as f64).log10(), f64::from(r.at_fpir[k].threshold)))
                .collect();
            slope(&pts).map(|v| v as f32)
        })
        .collect();
    let rule_base = rule.map(|f| {
        let t = f(1);
        let (mut above, mut total) = (0usize, 0usize);
        for (p, &mate) in s.mates.iter().enumerate() {
            for (g, &v) in s.row(p).iter().enumerate() {
                if g != mate {
                    total += 1;
                    above += usize::from(v >= t);
                }
            }
        }
        AtThreshold { threshold: t, fpir: above as f64 / total.max(1) as f64, fnir: f64::NAN }
    });
    IdentifyReport {
        rule_base,
        identities: s.identities,
        probes: s.probes(),
        probes_without_face: s.probes_without_face,
        repeats,
        sizes,
        rise_per_decade,
    }
}

/// The photos of a folder of identity folders (`root/<Name>/<photo>`, LFW's layout), sorted
/// by identity then file name.
pub fn read_folders(root: &Path) -> Result<Vec<Labelled>, EvalError> {
    let bad = |path: &Path, e: std::io::Error| EvalError::Input {
        path: path.to_path_buf(),
        reason: format!("cannot read the folder: {e}"),
    };
    let mut photos = Vec::new();
    let mut dirs: Vec<_> = std::fs::read_dir(root)
        .map_err(|e| bad(root, e))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    for dir in dirs {
        let identity =
            dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .map_err(|e| bad(&dir, e))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.extension().is_some_and(|x| {
                    ["jpg", "jpeg", "png"].iter().any(|k| x.eq_ignore_ascii_case(k))
                })
            })
            .collect();
        files.sort();
        photos.extend(files.into_iter().map(|path| Labelled { path, identity: identity.clone() }));
    }
    if photos.is_empty() {
        return Err(EvalError::Input {
            path: root.to_path_buf(),
            reason: "no photos in identity folders (<root>/<Name>/<photo>.jpg)".into(),
        });
    }
    Ok(photos)
}

/// Embeds the photos (the face `select` picks, the largest of them; by `embedder` instead of
/// the pipeline's recognizer when given): each photo's identity as a number and its
/// embedding, for [`Searches::new`].
pub fn embed<'e>(
    pipeline: &mut Pipeline,
    photos: &[Labelled],
    select: Select,
    embedder: Option<&mut (dyn crate::embed::Embedder + 'e)>,
    progress: impl FnMut(usize),
) -> Result<(Vec<usize>, Embeddings), EvalError> {
    let paths: Vec<_> = photos.iter().map(|p| p.path.clone()).collect();
    let embeddings = embed_photos_by(pipeline, &paths, select, embedder, progress)?;
    let mut names: Vec<&str> = photos.iter().map(|p| p.identity.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let classes: Vec<usize> =
        photos.iter().map(|p| names.binary_search(&p.identity.as_str()).unwrap_or(0)).collect();
    Ok((classes, embeddings))
}

/// Least-squares slope of y on x; `None` with fewer than two distinct x.
fn slope(pts: &[(f64, f64)]) -> Option<f64> {
    let n = pts.len() as f64;
    let (mx, my) = pts.iter().fold((0.0, 0.0), |a, p| (a.0 + p.0 / n, a.1 + p.1 / n));
    let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (pts.len() >= 2 && sxx > 0.0).then(|| sxy / sxx)
}

/// The report as a table.
pub fn table(r: &IdentifyReport, rule: Option<&str>) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "open-set identification: {} identities (one template each), {} probes ({} without a \
         face), {} draws per probe and size",
        r.identities, r.probes, r.probes_without_face, r.repeats
    );
    let mut head = String::from("   people | searches");
    for f in FPIRS {
        let _ = write!(head, " | thr@FPIR {f:.0e}  FNIR");
    }
    if let Some(rule) = rule {
        let _ = write!(head, " | {rule}: thr   FPIR    FNIR | fixed: FPIR    FNIR");
    }
    let _ = writeln!(s, "{head}");
    for z in &r.sizes {
        let _ = write!(s, "{:>9} | {:>8}", z.people, z.searches);
        for a in &z.at_fpir {
            let _ = write!(
                s,
                " | {:>6.3}{}     {:>6.4}",
                a.threshold,
                if a.supported { " " } else { "*" },
                a.fnir
            );
        }
        if let (Some(a), Some(f)) = (&z.at_rule, &z.at_fixed) {
            let _ = write!(s, " | {:>14.3} {:>7.5} {:>7.4}", a.threshold, a.fpir, a.fnir);
            let _ = write!(s, " | {:>11.5} {:>7.4}", f.fpir, f.fnir);
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(s, "* fewer than 10 different probes above it: not measured, only bounded");
    if let Some(b) = &r.rule_base {
        let _ = writeln!(
            s,
            "the rule's threshold for one person {:.3}: per-comparison FAR {:.2e} (`bands_far`)",
            b.threshold, b.fpir
        );
    }
    for (f, v) in FPIRS.iter().zip(&r.rise_per_decade) {
        match v {
            Some(v) => {
                let _ = writeln!(s, "threshold rise per tenfold people at FPIR {f:.0e}: {v:.4}");
            }
            None => {
                let _ =
                    writeln!(s, "threshold rise at FPIR {f:.0e}: fewer than two sizes measured");
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::dot;

    /// Identities on a circle: each identity's two photos 0.1 rad apart, identities spread.
    fn circle(identities: usize) -> (Vec<usize>, Vec<Option<Vec<f32>>>) {
        let (mut classes, mut emb) = (Vec::new(), Vec::new());
        for i in 0..identities {
            let a = i as f32 * std::f32::consts::TAU / identities as f32;
            for d in [0.0f32, 0.02] {
                classes.push(i);
                emb.push(Some(vec![(a + d).cos(), (a + d).sin()]));
            }
        }
        (classes, emb)
    }

    #[test]
    fn templates_probes_and_missing_faces() {
        let (mut classes, mut emb) = circle(5);
        // A sixth identity with one photo: a template, no probe; a seventh with no face.
        classes.extend([5, 6, 6]);
        emb.extend([Some(vec![0.0, 1.0]), None, None]);
        let s = Searches::new(&classes, &emb, Storage::Float32);
        assert_eq!((s.identities, s.probes(), s.probes_without_face), (6, 5, 0));
        assert_eq!(s.mates, [0, 1, 2, 3, 4]);
        assert!((s.row(0)[0] - 0.02f32.cos()).abs() < 1e-6);
        // An identity whose second photo has no face: a probe without a face.
        classes.extend([7, 7]);
        emb.extend([Some(vec![1.0, 0.0]), None]);
        let s = Searches::new(&classes, &emb, Storage::Float32);
        assert_eq!((s.identities, s.probes(), s.probes_without_face), (7, 5, 1));
    }

    /// Identities as random directions in 32 dimensions, each probe its template plus noise.
    fn random(identities: usize) -> (Vec<usize>, Vec<Option<Vec<f32>>>) {
        let mut d = SplitMix(7);
        let mut gauss =
            || (0..12).map(|_| (d.next() >> 11) as f32 / (1u64 << 53) as f32).sum::<f32>() - 6.0;
        let (mut classes, mut emb) = (Vec::new(), Vec::new());
        for i in 0..identities {
            let t: Vec<f32> = (0..32).map(|_| gauss()).collect();
            let p: Vec<f32> = t.iter().map(|x| x + 0.5 * gauss()).collect();
            for v in [t, p] {
                let n = dot(&v, &v).sqrt();
                classes.push(i);
                emb.push(Some(v.iter().map(|x| x / n).collect()));
            }
        }
        (classes, emb)
    }

    #[test]
    fn more_people_need_a_higher_threshold_for_the_same_fpir() {
        let (classes, emb) = random(300);
        let s = Searches::new(&classes, &emb, Storage::Float32);
        let r = measure(&s, &[5, 30, 200], 20, Some(&|_| 0.99));
        let t: Vec<f32> = r.sizes.iter().map(|z| z.at_fpir[0].threshold).collect();
        assert!(t[0] < t[1] && t[1] < t[2], "{t:?}");
        assert!(r.rise_per_decade[0].unwrap() > 0.05, "{:?}", r.rise_per_decade);
        for z in &r.sizes {
            // Probes sit near their mates (cosine ~0.9), strangers near 0: found first.
            assert!(z.at_fpir[0].fnir < 0.01, "{z:?}");
            // At 0.99 nobody is named, mates included.
            let a = z.at_rule.as_ref().unwrap();
            assert_eq!((a.fpir, a.fnir), (0.0, 1.0), "{z:?}");
        }
        // Repeatable.
        let again = measure(&s, &[5, 30, 200], 20, None);
        assert_eq!(again.sizes[1].at_fpir[0].threshold, r.sizes[1].at_fpir[0].threshold);
    }
}
