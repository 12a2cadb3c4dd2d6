//! An NPU recognizer that could not be opened when portier started (no device yet, a driver
//! that came up late, a HEF being copied in), or that was lost while running (a device reset, a
//! driver failure): the door runs on the CPU and this embedder opens the NPU again, with
//! back-off, on a thread of its own.
//!
//! Role: issue 16, "the NPU never stops the door". Before, a failed open at start made `portier
//! run` exit, and systemd restart-looped it into its start limit while the door had no face
//! recognition at all. Now every `embed` before the NPU is open is a device error (the router
//! keeps faces on the CPU and raises one `npu_fallback` event). When the router's retry sends a
//! face and the back-off period (doubling from `first` up to `max`) has passed, an attempt to
//! open starts on a thread (`npu-open`): opening a HEF and probing it takes about a second on a
//! Hailo, and through HailoRT's service it can take longer, time the loop (and its watchdog)
//! must not wait. The attempt's answer is taken at a later `embed`; once open, embeddings come
//! from the real backend and the router reports the NPU back.
//!
//! Lost while running: when an embedding fails and the embedder says it is no longer
//! [usable](Embedder::usable) (HailoRT's calls all fail after a device reset until the vdevice
//! is released), it is released at once on a thread of its own (HailoRT's release can take as
//! long as an open), and the next attempt waits for that release before it opens: after
//! `first` when it had stayed usable for `max`, else after the grown back-off (a device that
//! fails soon after every open is not reopened every few seconds forever). A timeout that
//! clearing mended leaves it open.
//!
//! Must not: open the device more often than the back-off allows, run two opens at once, open
//! before the lost one is released, block `embed` on an open, or hand out embeddings of another
//! dimension than the gallery's templates.

use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{EmbedError, Embedder};
use crate::align::AlignedFace;

/// Opens the real NPU embedder (on the `npu-open` thread).
pub type Opener = Box<dyn FnMut() -> Result<Box<dyn Embedder>, EmbedError> + Send>;

/// What an attempt's thread hands back: the opener (for the next attempt) and its result.
type Attempt = (Opener, Result<Box<dyn Embedder>, EmbedError>);

/// Where the opener is.
enum Opening {
    /// Here: no attempt running.
    Idle(Opener),
    /// With an attempt on its thread; its answer comes back on this channel.
    Running(Receiver<Attempt>),
}

/// See the module documentation.
pub struct Reopening {
    model_id: String,
    dim: usize,
    opening: Option<Opening>,
    inner: Option<Box<dyn Embedder>>,
    /// The release of a lost embedder, running on its own thread: the next attempt waits for
    /// it (HailoRT needs the vdevice released before a new one).
    releasing: Option<JoinHandle<()>>,
    next_attempt: Instant,
    backoff: Duration,
    first: Duration,
    max: Duration,
    last_error: String,
    /// Opened at least once: a later open is a reopen after a loss.
    was_open: bool,
    /// When the embedder in use was opened: one lost within `max` of it keeps the back-off
    /// growing (a device that fails soon after every open is opened less and less often); one
    /// that stayed usable longer starts it afresh.
    opened_at: Instant,
}

impl std::fmt::Debug for Reopening {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reopening")
            .field("model_id", &self.model_id)
            .field("open", &self.inner.is_some())
            .field("opening", &matches!(self.opening, Some(Opening::Running(_))))
            .field("backoff", &self.backoff)
            .finish_non_exhaustive()
    }
}

impl Reopening {
    /// An NPU embedder of `model_id` that failed to open with `error`; `dim` is the dimension
    /// its templates have (or the largest supported when none are enrolled yet). The first new
    /// attempt is allowed after `first`, later ones after twice the previous pause, at most
    /// `max`.
    pub fn new(
        model_id: String,
        dim: usize,
        open: Opener,
        error: &EmbedError,
        first: Duration,
        max: Duration,
    ) -> Self {
        Self {
            model_id,
            dim,
            opening: Some(Opening::Idle(open)),
            inner: None,
            releasing: None,
            next_attempt: Instant::now() + first,
            backoff: first,
            first,
            max,
            last_error: error.to_string(),
            was_open: false,
            opened_at: Instant::now(),
        }
    }

    /// An NPU embedder that opened at start (`inner`, made by `open`), kept open while it is
    /// usable and opened again with the same back-off after it was lost.
    pub fn opened(inner: Box<dyn Embedder>, open: Opener, first: Duration, max: Duration) -> Self {
        Self {
            model_id: inner.model_id().to_string(),
            dim: inner.dim(),
            opening: Some(Opening::Idle(open)),
            inner: Some(inner),
            releasing: None,
            next_attempt: Instant::now(),
            backoff: first,
            first,
            max,
            last_error: String::new(),
            was_open: true,
            opened_at: Instant::now(),
        }
    }

    /// Whether the NPU has been opened.
    pub fn is_open(&self) -> bool {
        self.inner.is_some()
    }

    fn not_open(&self, detail: String) -> EmbedError {
        EmbedError::Device { backend: "npu", source: detail.into() }
    }

    /// Releases a lost embedder on a thread of its own (after any earlier release); if no
    /// thread can be made, the closure is dropped here, and `lost` with it.
    fn release(&mut self, lost: Box<dyn Embedder>) {
        let earlier = self.releasing.take();
        let spawned = std::thread::Builder::new().name("npu-release".into()).spawn(move || {
            if let Some(earlier) = earlier {
                let _ = earlier.join();
            }
            drop(lost);
        });
        match spawned {
            Ok(handle) => self.releasing = Some(handle),
            Err(e) => log::warn!("npu: no thread to release the lost NPU on ({e}); released here"),
        }
    }

    /// Starts an attempt to open on the `npu-open` thread, after the release of a lost one.
    fn start_attempt(&mut self, open: Opener) {
        let releasing = self.releasing.take();
        let (tx, rx) = mpsc::channel::<Attempt>();
        let (hand, take) = mpsc::channel::<Opener>();
        let spawned = std::thread::Builder::new().name("npu-open".into()).spawn(move || {
            let Ok(mut open) = take.recv() else { return };
            if let Some(releasing) = releasing {
                let _ = releasing.join();
            }
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(&mut open))
                .unwrap_or_else(|_| {
                    Err(EmbedError::Device {
                        backend: "npu",
                        source: "opening the NPU panicked".into(),
                    })
                });
            let _ = tx.send((open, result));
        });
        match spawned {
            Ok(_) => match hand.send(open) {
                Ok(()) => self.opening = Some(Opening::Running(rx)),
                Err(mpsc::SendError(open)) => self.opening = Some(Opening::Idle(open)),
            },
            Err(e) => {
                // No thread: the attempt counts as failed; the opener stays for the next one.
                self.opening = Some(Opening::Idle(open));
                self.failed(format!("no thread to open the NPU on: {e}"), Instant::now());
            }
        }
    }

    /// An attempt failed: the next one after the grown back-off.
    fn failed(&mut self, error: String, now: Instant) {
        self.last_error = error;
        self.backoff = (self.backoff * 2).min(self.max);
        self.next_attempt = now + self.backoff;
        log::warn!(
            "npu: still cannot open: {}; next attempt in {} s",
            self.last_error,
            self.backoff.as_secs()
        );
    }

    /// Takes an attempt's result; a newly opened NPU embeds `face` at once.
    fn take(
        &mut self,
        result: Result<Box<dyn Embedder>, EmbedError>,
        now: Instant,
        face: &AlignedFace,
        out: &mut [f32],
    ) -> Result<f32, EmbedError> {
        match result {
            Ok(opened) if opened.dim() != self.dim || opened.model_id() != self.model_id => {
                let detail = format!(
                    "opened {} with dimension {}, but its templates are {} of dimension {}",
                    opened.model_id(),
                    opened.dim(),
                    self.model_id,
                    self.dim
                );
                log::error!("npu: {detail}; staying on the CPU");
                self.release(opened);
                self.last_error = detail;
                self.backoff = self.max;
                self.next_attempt = now + self.max;
                Err(self.not_open(self.last_error.clone()))
            }
            Ok(mut opened) => {
                if self.was_open {
                    log::info!("npu: opened {} again after it was lost", self.model_id);
                } else {
                    log::info!("npu: opened {} after a failed start", self.model_id);
                }
                self.was_open = true;
                self.opened_at = now;
                let result = opened.embed(face, out);
                self.inner = Some(opened);
                result
            }
            Err(e) => {
                self.failed(e.to_string(), now);
                Err(self.not_open(self.last_error.clone()))
            }
        }
    }
}

impl Embedder for Reopening {
    fn model_id(&self) -> &str {
        &self.model_id
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn embed(&mut self, face: &AlignedFace, out: &mut [f32]) -> Result<f32, EmbedError> {
        let now = Instant::now();
        if let Some(inner) = self.inner.as_mut() {
            let result = inner.embed(face, out);
            if let Err(e) = &result {
                if !inner.usable() {
                    if let Some(lost) = self.inner.take() {
                        self.release(lost);
                    }
                    self.last_error = e.to_string();
                    if now.saturating_duration_since(self.opened_at) >= self.max {
                        self.backoff = self.first;
                    }
                    self.next_attempt = now + self.backoff;
                    log::warn!(
                        "npu: lost ({e}); released, opening it again in {} s",
                        self.backoff.as_secs_f64()
                    );
                    self.backoff = (self.backoff * 2).min(self.max);
                }
            }
            return result;
        }
        match self.opening.take() {
            Some(Opening::Running(rx)) => match rx.try_recv() {
                Ok((open, result)) => {
                    self.opening = Some(Opening::Idle(open));
                    self.take(result, now, face, out)
                }
                Err(TryRecvError::Empty) => {
                    self.opening = Some(Opening::Running(rx));
                    Err(self.not_open(format!(
                        "not open ({}); being opened in the background",
                        self.last_error
                    )))
                }
                // The thread cannot end without answering (a panic is caught and answered);
                // should it all the same, the opener is gone and the NPU stays off.
                Err(TryRecvError::Disconnected) => {
                    self.last_error = "the thread opening the NPU ended without an answer".into();
                    Err(self.not_open(self.last_error.clone()))
                }
            },
            Some(Opening::Idle(open)) if now >= self.next_attempt => {
                self.start_attempt(open);
                Err(self.not_open(format!(
                    "not open ({}); being opened in the background",
                    self.last_error
                )))
            }
            idle => {
                self.opening = idle;
                let left = self.next_attempt.saturating_duration_since(now);
                Err(self.not_open(format!(
                    "not open ({}); next attempt in {:.0} s",
                    self.last_error,
                    left.as_secs_f64()
                )))
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
    use std::sync::Arc;

    use super::*;

    /// A stand-in NPU model: constant unit embeddings of `dim`.
    struct Fixed(usize);

    impl Embedder for Fixed {
        fn model_id(&self) -> &str {
            "npu-model"
        }
        fn dim(&self) -> usize {
            self.0
        }
        fn embed(&mut self, _: &AlignedFace, out: &mut [f32]) -> Result<f32, EmbedError> {
            out[..self.0].fill(0.0);
            out[0] = 1.0;
            Ok(12.0)
        }
    }

    /// A stand-in NPU that fails every call after `ok` embeddings and then is unusable (as
    /// after a device reset).
    struct Resets {
        ok: usize,
        calls: usize,
    }

    impl Embedder for Resets {
        fn model_id(&self) -> &str {
            "npu-model"
        }
        fn dim(&self) -> usize {
            4
        }
        fn embed(&mut self, face: &AlignedFace, out: &mut [f32]) -> Result<f32, EmbedError> {
            self.calls += 1;
            if self.calls > self.ok {
                return Err(EmbedError::Device { backend: "npu", source: "reset".into() });
            }
            Fixed(4).embed(face, out)
        }
        fn usable(&self) -> bool {
            self.calls <= self.ok
        }
    }

    /// An opener whose NPUs embed once and then are lost, and the count of its opens.
    fn losing_opener() -> (Opener, Arc<AtomicUsize>) {
        let opens = Arc::new(AtomicUsize::new(0));
        let o = Arc::clone(&opens);
        let open: Opener = Box::new(move || {
            o.fetch_add(1, SeqCst);
            Ok(Box::new(Resets { ok: 1, calls: 0 }) as Box<dyn Embedder>)
        });
        (open, opens)
    }

    fn missing() -> EmbedError {
        EmbedError::Output { path: "npu.hef".into(), reason: "no such file".into() }
    }

    fn opening(e: &Result<f32, EmbedError>) -> bool {
        matches!(e, Err(err) if err.to_string().contains("being opened in the background"))
    }

    /// `embed` until the attempt running in the background has answered: what the loop sees
    /// over its next frames.
    fn settled(e: &mut Reopening) -> Result<f32, EmbedError> {
        let (face, mut out) = (AlignedFace::default(), [0.0; 8]);
        for _ in 0..5_000 {
            let r = e.embed(&face, &mut out);
            if !opening(&r) {
                return r;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        panic!("the attempt never answered");
    }

    #[test]
    fn opens_later_with_back_off_and_checks_the_dimension() {
        let attempts = Arc::new(AtomicUsize::new(0));
        let available = Arc::new(AtomicBool::new(false));
        let (a, ok) = (Arc::clone(&attempts), Arc::clone(&available));
        let open: Opener = Box::new(move || {
            a.fetch_add(1, SeqCst);
            if ok.load(SeqCst) {
                Ok(Box::new(Fixed(4)) as Box<dyn Embedder>)
            } else {
                Err(missing())
            }
        });
        let first = Duration::from_millis(30);
        let mut e =
            Reopening::new("npu-model".into(), 4, open, &missing(), first, Duration::from_secs(1));
        let face = AlignedFace::default();
        let mut out = [0.0; 8];
        // Before the first pause: no attempt, a device error naming the cause.
        let err = e.embed(&face, &mut out).unwrap_err().to_string();
        assert!(err.contains("no such file") && err.contains("next attempt"), "{err}");
        assert_eq!(attempts.load(SeqCst), 0);
        std::thread::sleep(first);
        // The attempt starts in the background; its failure is the answer.
        assert!(opening(&e.embed(&face, &mut out)));
        assert!(settled(&mut e).is_err());
        assert_eq!(attempts.load(SeqCst), 1);
        // The pause doubled: an immediate retry does not open again.
        assert!(e.embed(&face, &mut out).unwrap_err().to_string().contains("next attempt"));
        assert_eq!(attempts.load(SeqCst), 1);
        available.store(true, SeqCst);
        std::thread::sleep(first * 2);
        assert_eq!(settled(&mut e).unwrap(), 12.0);
        assert!(e.is_open());
        assert_eq!(attempts.load(SeqCst), 2);
        // A model of another dimension than the templates is refused.
        let open: Opener = Box::new(|| Ok(Box::new(Fixed(8)) as Box<dyn Embedder>));
        let mut e = Reopening::new("npu-model".into(), 4, open, &missing(), Duration::ZERO, first);
        let err = settled(&mut e).unwrap_err().to_string();
        assert!(err.contains("dimension 8"), "{err}");
        assert!(!e.is_open());
    }

    /// An open that does not return (a HailoRT service that does not answer) never holds up
    /// `embed`: the loop keeps its frames and its watchdog while the attempt waits.
    #[test]
    fn an_open_that_hangs_never_blocks_embed() {
        let (release, gate) = mpsc::channel::<()>();
        let gate = std::sync::Mutex::new(gate);
        let open: Opener = Box::new(move || {
            gate.lock().unwrap().recv().unwrap();
            Ok(Box::new(Fixed(4)) as Box<dyn Embedder>)
        });
        let mut e = Reopening::new(
            "npu-model".into(),
            4,
            open,
            &missing(),
            Duration::ZERO,
            Duration::from_secs(1),
        );
        let (face, mut out) = (AlignedFace::default(), [0.0; 8]);
        for _ in 0..100 {
            assert!(opening(&e.embed(&face, &mut out)));
        }
        assert!(!e.is_open());
        release.send(()).unwrap();
        assert_eq!(settled(&mut e).unwrap(), 12.0);
        assert!(e.is_open());
    }

    /// A panic while opening is an answer like any failure: the opener comes back and is tried
    /// again after the back-off.
    #[test]
    fn a_panic_while_opening_is_a_failed_attempt() {
        let attempts = Arc::new(AtomicUsize::new(0));
        let a = Arc::clone(&attempts);
        let open: Opener = Box::new(move || {
            if a.fetch_add(1, SeqCst) == 0 {
                panic!("driver bug");
            }
            Ok(Box::new(Fixed(4)) as Box<dyn Embedder>)
        });
        let first = Duration::from_millis(20);
        let mut e = Reopening::new("npu-model".into(), 4, open, &missing(), Duration::ZERO, first);
        let err = settled(&mut e).unwrap_err().to_string();
        assert!(err.contains("panicked"), "{err}");
        std::thread::sleep(first * 2);
        assert_eq!(settled(&mut e).unwrap(), 12.0);
        assert_eq!(attempts.load(SeqCst), 2);
    }

    #[test]
    fn an_npu_lost_while_running_is_released_and_opened_again() {
        let (open, opens) = losing_opener();
        let first = Duration::from_millis(30);
        let start = Box::new(Resets { ok: 2, calls: 0 });
        let mut e = Reopening::opened(start, open, first, Duration::from_secs(1));
        let (face, mut out) = (AlignedFace::default(), [0.0; 8]);
        assert!(e.embed(&face, &mut out).is_ok());
        assert!(e.embed(&face, &mut out).is_ok());
        // The device resets: the embedding fails, the embedder is released.
        assert!(e.embed(&face, &mut out).is_err());
        assert!(!e.is_open());
        // Within the pause: no attempt.
        assert!(e.embed(&face, &mut out).unwrap_err().to_string().contains("reset"));
        assert_eq!(opens.load(SeqCst), 0);
        std::thread::sleep(first);
        assert_eq!(settled(&mut e).unwrap(), 12.0);
        assert!(e.is_open());
        assert_eq!(opens.load(SeqCst), 1);
    }

    #[test]
    fn an_npu_lost_soon_after_each_open_is_reopened_less_often_and_afresh_after_a_good_spell() {
        // Every reopened NPU embeds once, then is lost.
        let (open, opens) = losing_opener();
        let (first, max) = (Duration::from_millis(200), Duration::from_millis(1500));
        let mut e = Reopening::opened(Box::new(Resets { ok: 0, calls: 0 }), open, first, max);
        let (face, mut out) = (AlignedFace::default(), [0.0; 8]);
        assert!(e.embed(&face, &mut out).is_err(), "lost at once");
        std::thread::sleep(first);
        assert!(settled(&mut e).is_ok(), "reopened after `first`");
        assert!(e.embed(&face, &mut out).is_err(), "lost again soon after");
        // Soon after its open: the pause has doubled.
        std::thread::sleep(first);
        assert!(e.embed(&face, &mut out).is_err());
        assert_eq!(opens.load(SeqCst), 1, "no attempt within twice `first`");
        std::thread::sleep(first);
        assert!(settled(&mut e).is_ok());
        assert_eq!(opens.load(SeqCst), 2);
        // Usable for longer than `max` before the loss: back to `first`.
        std::thread::sleep(max);
        assert!(e.embed(&face, &mut out).is_err());
        std::thread::sleep(first);
        assert!(settled(&mut e).is_ok());
        assert_eq!(opens.load(SeqCst), 3);
    }
}
