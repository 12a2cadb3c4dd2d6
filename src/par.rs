//! Bands of one pixel pass on several cores: a small pool of persistent helper threads that each
//! run one closure call per job while the caller runs the first, and a wait for all of them.
//!
//! Made for the per-frame letterbox: the job is handed over without allocating (the loop
//! allocates nothing per frame) and without spawning (a thread start costs more than a band
//! takes). The helpers sleep on a condition variable between jobs, so they take no core while
//! the models run.
//!
//! Must not: know about images. Anything that can be split into independent calls `f(0)`,
//! `f(1)`, … can use it.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

/// Most bands a job is split into (the caller plus helpers).
pub const MAX_BANDS: usize = 4;

/// A job's closure with its lifetime erased: only ever dereferenced between [`Bands::run`]
/// publishing it and `run` seeing every helper finish, while the closure is alive on `run`'s
/// stack.
#[derive(Clone, Copy)]
struct Job(*const (dyn Fn(usize) + Sync));

// SAFETY: the closure behind the pointer is `Sync`, so calling it from another thread is
// allowed; `Bands::run` keeps it alive until every helper has returned from it.
unsafe impl Send for Job {}

struct State {
    /// The current job, if any.
    job: Option<Job>,
    /// Incremented per job: a helper runs each generation once.
    generation: u64,
    /// Helpers that have not finished the current job.
    pending: usize,
    /// A helper's panic payload, handed back to the caller.
    panic: Option<Box<dyn std::any::Any + Send>>,
    /// The pool is being dropped.
    quit: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when a job is published (or at quit).
    start: Condvar,
    /// Signalled when a helper finishes.
    done: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent through a panic (helpers catch theirs), so a poisoned
        // lock is still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A pool of `bands - 1` helper threads; the calling thread computes band 0.
pub struct Bands {
    shared: Arc<Shared>,
    helpers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Bands {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bands").field("bands", &self.count()).finish()
    }
}

impl Bands {
    /// A pool splitting jobs into `bands` calls (clamped to 1..=[`MAX_BANDS`]). With 1, jobs
    /// run on the caller only and no thread is started. If a helper thread cannot be started,
    /// the pool works with the ones it has.
    pub fn new(bands: usize) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                job: None,
                generation: 0,
                pending: 0,
                panic: None,
                quit: false,
            }),
            start: Condvar::new(),
            done: Condvar::new(),
        });
        let mut helpers = Vec::new();
        for index in 1..bands.clamp(1, MAX_BANDS) {
            let s = Arc::clone(&shared);
            match std::thread::Builder::new()
                .name(format!("portier-band{index}"))
                .spawn(move || helper(&s, index))
            {
                Ok(h) => helpers.push(h),
                Err(e) => {
                    log::warn!("pixel passes: helper thread not started ({e}); fewer bands");
                    break;
                }
            }
        }
        Self { shared, helpers }
    }

    /// One band per core, at most [`MAX_BANDS`].
    pub fn per_core() -> Self {
        Self::new(std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get))
    }

    /// How many calls each job is split into.
    pub fn count(&self) -> usize {
        self.helpers.len() + 1
    }

    /// Calls `f(0)` … `f(count() - 1)`, band 0 on this thread and the others on the helpers at
    /// the same time, and returns when all have returned. A panic in any band is resumed here.
    /// (`&mut`: one job at a time.)
    pub fn run(&mut self, f: &(dyn Fn(usize) + Sync)) {
        if self.helpers.is_empty() {
            f(0);
            return;
        }
        // SAFETY (of the erasure): `f` outlives the job. The job is withdrawn and every helper
        // has finished calling it before `Wait` lets this function return or unwind.
        let erased: *const (dyn Fn(usize) + Sync) = f;
        // SAFETY: only the lifetime bound of the trait object changes; see above.
        let job = Job(unsafe {
            std::mem::transmute::<*const (dyn Fn(usize) + Sync + '_), *const (dyn Fn(usize) + Sync)>(
                erased,
            )
        });
        {
            let mut st = self.shared.lock();
            st.job = Some(job);
            // A helper's panic left over from a job whose band 0 panicked too (and so never
            // collected it) belongs to that job, not this one.
            st.panic = None;
            st.generation = st.generation.wrapping_add(1);
            st.pending = self.helpers.len();
        }
        self.shared.start.notify_all();
        let wait = Wait(&self.shared);
        f(0);
        drop(wait);
        if let Some(payload) = self.shared.lock().panic.take() {
            resume_unwind(payload);
        }
    }
}

/// Waits for every helper to finish the current job and withdraws it, also while unwinding
/// from a panic in band 0.
struct Wait<'a>(&'a Shared);

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        while st.pending > 0 {
            st = self.0.done.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
        st.job = None;
    }
}

fn helper(shared: &Shared, index: usize) {
    let mut seen = 0u64;
    loop {
        let job = {
            let mut st = shared.lock();
            loop {
                if st.quit {
                    return;
                }
                if st.generation != seen {
                    if let Some(job) = st.job {
                        seen = st.generation;
                        break job;
                    }
                }
                st = shared.start.wait(st).unwrap_or_else(PoisonError::into_inner);
            }
        };
        // SAFETY: `Bands::run` keeps the closure alive until `pending` reaches zero, which
        // happens only below, after this call.
        let f = unsafe { &*job.0 };
        let outcome = catch_unwind(AssertUnwindSafe(|| f(index)));
        let mut st = shared.lock();
        if let Err(payload) = outcome {
            st.panic.get_or_insert(payload);
        }
        st.pending -= 1;
        if st.pending == 0 {
            shared.done.notify_all();
        }
    }
}

impl Drop for Bands {
    fn drop(&mut self) {
        self.shared.lock().quit = true;
        self.shared.start.notify_all();
        for h in self.helpers.drain(..) {
            // A helper never panics outside `catch_unwind`.
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn every_band_runs_once_per_job() {
        for n in 1..=MAX_BANDS + 1 {
            let mut bands = Bands::new(n);
            assert_eq!(bands.count(), n.min(MAX_BANDS));
            let hits: [AtomicUsize; MAX_BANDS] = Default::default();
            for _ in 0..100 {
                bands.run(&|i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
            }
            for (i, h) in hits.iter().enumerate() {
                let expected = if i < bands.count() { 100 } else { 0 };
                assert_eq!(h.load(Ordering::Relaxed), expected, "{n} bands, band {i}");
            }
        }
    }

    #[test]
    fn bands_write_disjoint_parts_of_a_borrowed_buffer() {
        let mut bands = Bands::new(3);
        let mut data = vec![0u32; 300];
        let parts: Vec<Mutex<&mut [u32]>> = data.chunks_mut(100).map(Mutex::new).collect();
        bands.run(&|i| {
            for v in parts[i].lock().unwrap().iter_mut() {
                *v = i as u32 + 1;
            }
        });
        drop(parts);
        assert!(data[..100].iter().all(|&v| v == 1));
        assert!(data[200..].iter().all(|&v| v == 3));
    }

    #[test]
    fn a_helper_panic_reaches_the_caller_and_the_pool_still_works() {
        let mut bands = Bands::new(2);
        let r = catch_unwind(AssertUnwindSafe(|| {
            bands.run(&|i| assert!(i != 1, "band 1 fails"));
        }));
        assert!(r.is_err());
        let count = AtomicUsize::new(0);
        bands.run(&|_| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 2);
        // Both bands fail: the caller's panic is the one seen, and the helper's does not
        // surface in the next job.
        let r = catch_unwind(AssertUnwindSafe(|| bands.run(&|i| panic!("band {i} fails"))));
        assert!(r.is_err());
        bands.run(&|_| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 4);
    }
}
