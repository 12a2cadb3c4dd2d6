//! `portier bench match`: what one 1:N query costs as the gallery grows, per storage, next to
//! the time it takes merely to read the same bytes from memory (measured in the same run: a
//! scan can hardly beat that, so the ratio says how much the arithmetic adds), and the
//! process's resident memory with the gallery loaded.
//!
//! The templates are random unit vectors (a query's cost does not depend on their values), so
//! no gallery file, key or model is needed.
//!
//! Must not: present one machine's numbers as another's; the report names the CPU.

use std::hint::black_box;
use std::time::Instant;

use serde::Serialize;

use super::camera::SplitMix;
use crate::gallery::{Matcher, Storage};

/// One gallery size in one storage.
#[derive(Debug, Clone, Serialize)]
pub struct MatchCost {
    /// People.
    pub people: usize,
    /// Templates per person.
    pub templates: usize,
    /// Embedding length.
    pub dim: usize,
    /// The storage.
    pub storage: Storage,
    /// Bytes of template rows one query reads.
    pub bytes: usize,
    /// Median query (best two people), milliseconds.
    pub median_ms: f64,
    /// 99th percentile, milliseconds.
    pub p99_ms: f64,
    /// Median time to read `bytes` once, milliseconds.
    pub read_ms: f64,
    /// `median_ms / read_ms`.
    pub ratio_to_read: f64,
    /// Resident memory with this gallery loaded, MB (`VmRSS`).
    pub rss_mb: f64,
}

/// Opening a gallery file, as the appliance does at start and on every reload: the file's
/// checks, then each model's templates decrypted (one XChaCha20-Poly1305 open per template),
/// re-normalised and stored in the configured storage.
#[derive(Debug, Clone, Serialize)]
pub struct OpenCost {
    /// People in the file.
    pub people: usize,
    /// Templates per person and model.
    pub templates: usize,
    /// Each model's embedding length (the Pi's pair: the NPU's and the CPU's).
    pub dims: Vec<usize>,
    /// The matchers' storage.
    pub storage: Storage,
    /// Size of the file, MB.
    pub file_mb: f64,
    /// Writing it (sealing every template; 5,000 people per transaction), seconds.
    pub write_s: f64,
    /// Each run of `Gallery::load_matchers` (open, `quick_check` of every page beside the load,
    /// every model's matcher built: what the appliance does at start-up), milliseconds.
    pub runs_ms: Vec<f64>,
    /// The median run, milliseconds.
    pub total_ms: f64,
    /// CPU time the process used per run (all threads; the median run's), milliseconds:
    /// against `total_ms`, how well the load spreads over the cores.
    pub cpu_ms: f64,
    /// Resident memory with the matchers loaded, MB.
    pub rss_mb: f64,
}

/// The report.
#[derive(Debug, Clone, Serialize)]
pub struct MatchReport {
    /// CPU model.
    pub cpu: String,
    /// Queries per configuration.
    pub queries: usize,
    /// Every configuration.
    pub costs: Vec<MatchCost>,
    /// Resident memory with `people.last()` people loaded for two models at once (the Pi's
    /// pair: `dim` on the NPU and 128-d on the CPU), each in every storage, MB.
    pub both_models_rss_mb: Vec<(Storage, f64)>,
    /// Opening a gallery file of that many people with both models (`--open`).
    pub open: Option<OpenCost>,
}

/// A matcher of `people × templates` random unit rows.
fn gallery(people: usize, templates: usize, dim: usize, seed: u64) -> Matcher {
    let mut rng = SplitMix(seed);
    let rows: Vec<f32> = (0..people * templates).flat_map(|_| unit_row(&mut rng, dim)).collect();
    Matcher::from_rows("bench", dim, templates, &rows)
}

/// A random unit vector of `dim` values (templates and queries alike).
fn unit_row(rng: &mut SplitMix, dim: usize) -> Vec<f32> {
    let mut row: Vec<f32> = (0..dim).map(|_| rng.unit() as f32 - 0.5).collect();
    crate::embed::l2_normalize(&mut row);
    row
}

/// How many times [`open_cost`] opens the file (it reports the median).
pub const OPEN_RUNS: usize = 5;

/// Writes a gallery file of `people` people in `dir` (random unit templates of every model in
/// `dims`), then times opening it and building every model's matcher in `storage`, as the
/// appliance does ([`crate::gallery::Gallery::load_matchers`]), [`OPEN_RUNS`] times. The file's pages are in
/// the OS cache (just written), as after the first start since boot; a cold read from the card
/// adds its transfer time.
pub fn open_cost(
    dir: &std::path::Path,
    people: usize,
    templates: usize,
    dims: &[usize],
    storage: Storage,
) -> Result<OpenCost, crate::gallery::GalleryError> {
    use crate::gallery::{BackupModel, BackupPerson, Gallery, ImportMode};
    use std::os::unix::fs::DirBuilderExt;
    /// The bench's own directory, removed however the bench ends (but for a kill: then
    /// `DIR/portier-bench-open-PID` is left behind).
    struct Work(std::path::PathBuf);
    impl Drop for Work {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    // A new directory, owner-only, that must not exist yet: never anyone's gallery or link.
    let work = dir.join(format!("portier-bench-open-{}", std::process::id()));
    std::fs::DirBuilder::new().mode(0o700).create(&work).map_err(|source| {
        crate::gallery::GalleryError::Io {
            path: work.clone(),
            context: "cannot create the bench's directory for a gallery file",
            source,
        }
    })?;
    let work = Work(work);
    let (path, key) = (&work.0.join("gallery.db"), &work.0.join("gallery.key"));
    let models: Vec<String> = dims.iter().map(|d| format!("bench-{d}")).collect();
    let start = Instant::now();
    {
        let mut g = Gallery::open(path, key)?;
        let mut rng = SplitMix(7);
        let mut next = 0;
        while next < people {
            let batch: Vec<BackupPerson> = (next..people.min(next + 5_000))
                .map(|i| BackupPerson {
                    name: format!("person {i:06}"),
                    created_unix: 0,
                    models: dims
                        .iter()
                        .zip(&models)
                        .map(|(&dim, model_id)| BackupModel {
                            model_id: model_id.clone(),
                            templates: (0..templates).map(|_| unit_row(&mut rng, dim)).collect(),
                        })
                        .collect(),
                })
                .collect();
            g.import_people(&batch, ImportMode::Refuse)?;
            next += batch.len();
        }
    }
    let write_s = start.elapsed().as_secs_f64();
    let file_mb = std::fs::metadata(path).map_or(0.0, |m| m.len() as f64 / 1e6);
    let ids: Vec<&str> = models.iter().map(String::as_str).collect();
    let mut runs = Vec::with_capacity(OPEN_RUNS);
    let mut rss_mb = 0.0f64;
    for _ in 0..OPEN_RUNS {
        let (start, cpu_start) = (Instant::now(), cpu_ms());
        let matchers = Gallery::load_matchers(path, key, &ids, storage)?;
        runs.push((start.elapsed().as_secs_f64() * 1e3, cpu_ms() - cpu_start));
        rss_mb = rss_mb.max(self::rss_mb());
        black_box(&matchers);
    }
    drop(work);
    let runs_ms: Vec<f64> = runs.iter().map(|r| r.0).collect();
    let mut sorted = runs.clone();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (total_ms, cpu_ms) = sorted[sorted.len() / 2];
    Ok(OpenCost {
        people,
        templates,
        dims: dims.to_vec(),
        storage,
        file_mb,
        write_s,
        runs_ms,
        total_ms,
        cpu_ms,
        rss_mb,
    })
}

/// User and system CPU time of this process so far, all threads, milliseconds (0 where /proc
/// is not there).
fn cpu_ms() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return 0.0 };
    // Fields after the command name (which may hold spaces, so split after its ')'): utime
    // and stime are the 12th and 13th, in clock ticks (100 per second on Linux).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) * 10.0
}

/// Resident set size of this process in MB (0 where /proc is not there).
pub fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Median of the time to sum `words` once (a streaming read of its bytes).
fn read_time_ms(words: &[u64], passes: usize) -> f64 {
    let mut t = Vec::with_capacity(passes);
    for _ in 0..passes {
        let start = Instant::now();
        let mut acc = [0u64; 8];
        for c in words.chunks_exact(8) {
            for k in 0..8 {
                acc[k] = acc[k].wrapping_add(c[k]);
            }
        }
        black_box(acc);
        t.push(start.elapsed().as_secs_f64() * 1e3);
    }
    quantile(&mut t, 0.5)
}

fn quantile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// Runs every size in every storage.
pub fn run(people: &[usize], templates: usize, dim: usize, queries: usize) -> MatchReport {
    let mut rng = SplitMix(99);
    let qs: Vec<Vec<f32>> = (0..queries.max(1)).map(|_| unit_row(&mut rng, dim)).collect();
    let mut costs = Vec::new();
    for &n in people {
        for storage in Storage::ALL {
            let m = gallery(n, templates, dim, n as u64).with_storage(storage);
            let bytes = m.row_bytes();
            let words = vec![0x5555_5555_5555_5555u64; bytes.div_ceil(8).max(8)];
            let read_ms = read_time_ms(&words, 15);
            drop(words);
            // One warm-up query, then the measured ones.
            let _ = black_box(m.best_two_indices(&qs[0]));
            let mut t: Vec<f64> = qs
                .iter()
                .map(|q| {
                    let start = Instant::now();
                    let _ = black_box(m.best_two_indices(q));
                    start.elapsed().as_secs_f64() * 1e3
                })
                .collect();
            let median_ms = quantile(&mut t, 0.5);
            costs.push(MatchCost {
                people: n,
                templates,
                dim,
                storage,
                bytes,
                median_ms,
                p99_ms: quantile(&mut t, 0.99),
                read_ms,
                ratio_to_read: median_ms / read_ms,
                rss_mb: rss_mb(),
            });
        }
    }
    let n = people.iter().copied().max().unwrap_or(0);
    let both_models_rss_mb = Storage::ALL
        .into_iter()
        .map(|storage| {
            let npu = gallery(n, templates, dim, 1).with_storage(storage);
            let cpu = gallery(n, templates, 128, 2).with_storage(storage);
            let rss = rss_mb();
            black_box((&npu, &cpu));
            (storage, rss)
        })
        .collect();
    MatchReport {
        cpu: super::bench::cpu_name(),
        queries: qs.len(),
        costs,
        both_models_rss_mb,
        open: None,
    }
}

/// The report as a table.
pub fn table(r: &MatchReport) -> String {
    use std::fmt::Write;
    let mut s = format!("machine: {}; {} queries per configuration\n", r.cpu, r.queries);
    let _ = writeln!(
        s,
        "{:>8} {:>4} {:>5} {:>8} {:>10} {:>10} {:>9} {:>9} {:>7} {:>8}",
        "people",
        "tpl",
        "dim",
        "storage",
        "MB read",
        "median ms",
        "p99 ms",
        "read ms",
        "ratio",
        "RSS MB"
    );
    for c in &r.costs {
        let _ = writeln!(
            s,
            "{:>8} {:>4} {:>5} {:>8} {:>10.1} {:>10.3} {:>9.3} {:>9.3} {:>7.2} {:>8.0}",
            c.people,
            c.templates,
            c.dim,
            c.storage.name(),
            c.bytes as f64 / 1e6,
            c.median_ms,
            c.p99_ms,
            c.read_ms,
            c.ratio_to_read,
            c.rss_mb
        );
    }
    for (storage, rss) in &r.both_models_rss_mb {
        let _ = writeln!(
            s,
            "RSS with both models' galleries ({}-d and 128-d) in {}: {rss:.0} MB",
            r.costs.first().map_or(0, |c| c.dim),
            storage.name()
        );
    }
    if let Some(o) = &r.open {
        let dims: Vec<String> = o.dims.iter().map(|d| format!("{d}-d")).collect();
        let runs: Vec<String> = o.runs_ms.iter().map(|ms| format!("{ms:.0}")).collect();
        let _ = writeln!(
            s,
            "gallery file of {} people x {} templates of {} ({:.0} MB, written in {:.1} s): \
             opened and checked, {} matchers built in {:.0} ms (median of {} ms; {:.0} ms of \
             CPU), RSS {:.0} MB",
            o.people,
            o.templates,
            dims.join(" and "),
            o.file_mb,
            o.write_s,
            o.storage.name(),
            o.total_ms,
            runs.join(", "),
            o.cpu_ms,
            o.rss_mb
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_run_reports_every_configuration() {
        let r = run(&[10, 50], 2, 16, 5);
        assert_eq!(r.costs.len(), 6);
        let f = &r.costs[3];
        assert_eq!((f.people, f.storage, f.bytes), (50, Storage::Float32, 50 * 2 * 16 * 4));
        assert_eq!(r.costs[4].bytes, 50 * 2 * 16 * 2);
        assert_eq!(r.costs[5].bytes, 50 * 2 * 16 + 50 * 2 * 4);
        assert!(r.costs.iter().all(|c| c.median_ms >= 0.0 && c.p99_ms >= c.median_ms));
        assert_eq!(r.both_models_rss_mb.len(), 3);
        assert!(table(&r).contains("float16") && table(&r).contains("int8"));
    }

    #[test]
    fn a_written_gallery_opens_with_every_model() {
        let dir = tempfile::tempdir().unwrap();
        let o = open_cost(dir.path(), 120, 2, &[16, 8], Storage::Int8).unwrap();
        assert_eq!((o.people, o.dims.len(), o.runs_ms.len()), (120, 2, OPEN_RUNS));
        assert!(o.file_mb > 0.0 && o.runs_ms.contains(&o.total_ms));
        // The bench leaves nothing behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let mut r = run(&[10], 1, 4, 1);
        r.open = Some(o);
        assert!(table(&r).contains("gallery file of 120 people"));
    }
}
