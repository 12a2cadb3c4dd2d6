//! An NPU recognizer that could not be opened when portier started (no device yet, a driver
//! that came up late, a HEF being copied in), or that was lost while running (a device reset, a
//! driver failure): the door runs on the CPU and this embedder tries to open the NPU again, with
//! back-off, whenever the router probes it.
//!
//! Role: issue 16, "the NPU never stops the door". Before, a failed open at start made `portier
//! run` exit, and systemd restart-looped it into its start limit while the door had no face
//! recognition at all. Now every `embed` before the NPU is open is a device error (the router
//! keeps faces on the CPU and raises one `npu_fallback` event); an attempt to open runs at most
//! once per back-off period (doubling from `first` up to `max`), on the loop thread when the
//! router's retry sends it a face; once open, embeddings come from the real backend and the
//! router reports the NPU back.
//!
//! Lost while running: when an embedding fails and the embedder says it is no longer
//! [usable](Embedder::usable) (HailoRT's calls all fail after a device reset until the vdevice
//! is released), it is dropped at once, which releases the device, and opened again as above:
//! after `first` when it had stayed usable for `max`, else after the grown back-off (a device
//! that fails soon after every open is not reopened every few seconds forever; each open, probe
//! included, runs on the loop's thread). A timeout that clearing mended leaves it open.
//!
//! Must not: open the device more often than the back-off allows (an open can take a second on
//! a Hailo), or hand out embeddings of another dimension than the gallery's templates.

use std::time::{Duration, Instant};

use super::{EmbedError, Embedder};
use crate::align::AlignedFace;

/// Opens the real NPU embedder.
pub type Opener = Box<dyn FnMut() -> Result<Box<dyn Embedder>, EmbedError>>;

/// See the module documentation.
pub struct Reopening {
    model_id: String,
    dim: usize,
    open: Opener,
    inner: Option<Box<dyn Embedder>>,
    next_attempt: Instant,
    backoff: Duration,
    first: Duration,
    max: Duration,
    last_error: String,
    /// Opened at least once: a later open is a reopen after a loss.
    was_open: bool,
    /// When the embedder in use was opened: one lost within `max` of it keeps the back-off
    /// growing (a device that fails soon after every open is opened less and less often, on
    /// the loop's thread); one that stayed usable longer starts it afresh.
    opened_at: Instant,
}

impl std::fmt::Debug for Reopening {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reopening")
            .field("model_id", &self.model_id)
            .field("open", &self.inner.is_some())
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
            open,
            inner: None,
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
            open,
            inner: Some(inner),
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
                    // Dropping it releases the device, as HailoRT needs before a new vdevice.
                    self.inner = None;
                    self.last_error = e.to_string();
                    if now.saturating_duration_since(self.opened_at) >= self.max {
                        self.backoff = self.first;
                    }
                    self.next_attempt = now + self.backoff;
                    log::warn!(
                        "npu: lost ({e}); closed, opening it again in {} s",
                        self.backoff.as_secs_f64()
                    );
                    self.backoff = (self.backoff * 2).min(self.max);
                }
            }
            return result;
        }
        if now < self.next_attempt {
            let left = self.next_attempt - now;
            return Err(self.not_open(format!(
                "not open ({}); next attempt in {:.0} s",
                self.last_error,
                left.as_secs_f64()
            )));
        }
        match (self.open)() {
            Ok(opened) if opened.dim() != self.dim || opened.model_id() != self.model_id => {
                let detail = format!(
                    "opened {} with dimension {}, but its templates are {} of dimension {}",
                    opened.model_id(),
                    opened.dim(),
                    self.model_id,
                    self.dim
                );
                log::error!("npu: {detail}; staying on the CPU");
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
                self.last_error = e.to_string();
                self.backoff = (self.backoff * 2).min(self.max);
                self.next_attempt = now + self.backoff;
                log::warn!(
                    "npu: still cannot open: {e}; next attempt in {} s",
                    self.backoff.as_secs()
                );
                Err(self.not_open(self.last_error.clone()))
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::cell::Cell;
    use std::rc::Rc;

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

    fn missing() -> EmbedError {
        EmbedError::Output { path: "npu.hef".into(), reason: "no such file".into() }
    }

    #[test]
    fn opens_later_with_back_off_and_checks_the_dimension() {
        let attempts = Rc::new(Cell::new(0));
        let available = Rc::new(Cell::new(false));
        let (a, ok) = (Rc::clone(&attempts), Rc::clone(&available));
        let open: Opener = Box::new(move || {
            a.set(a.get() + 1);
            if ok.get() {
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
        assert_eq!(attempts.get(), 0);
        std::thread::sleep(first);
        assert!(e.embed(&face, &mut out).is_err());
        assert_eq!(attempts.get(), 1);
        // The pause doubled: an immediate retry does not open again.
        assert!(e.embed(&face, &mut out).is_err());
        assert_eq!(attempts.get(), 1);
        available.set(true);
        std::thread::sleep(first * 2);
        assert_eq!(e.embed(&face, &mut out).unwrap(), 12.0);
        assert!(e.is_open());
        assert_eq!(attempts.get(), 2);
        // A model of another dimension than the templates is refused.
        let open: Opener = Box::new(|| Ok(Box::new(Fixed(8)) as Box<dyn Embedder>));
        let mut e = Reopening::new("npu-model".into(), 4, open, &missing(), Duration::ZERO, first);
        let err = e.embed(&face, &mut out).unwrap_err().to_string();
        assert!(err.contains("dimension 8"), "{err}");
        assert!(!e.is_open());
    }

    #[test]
    fn an_npu_lost_while_running_is_closed_and_opened_again() {
        let opens = Rc::new(Cell::new(0));
        let o = Rc::clone(&opens);
        let open: Opener = Box::new(move || {
            o.set(o.get() + 1);
            Ok(Box::new(Resets { ok: 1, calls: 0 }) as Box<dyn Embedder>)
        });
        let first = Duration::from_millis(30);
        let start = Box::new(Resets { ok: 2, calls: 0 });
        let mut e = Reopening::opened(start, open, first, Duration::from_secs(1));
        let (face, mut out) = (AlignedFace::default(), [0.0; 8]);
        assert!(e.embed(&face, &mut out).is_ok());
        assert!(e.embed(&face, &mut out).is_ok());
        // The device resets: the embedding fails, the embedder is dropped.
        assert!(e.embed(&face, &mut out).is_err());
        assert!(!e.is_open());
        // Within the pause: no attempt.
        assert!(e.embed(&face, &mut out).unwrap_err().to_string().contains("reset"));
        assert_eq!(opens.get(), 0);
        std::thread::sleep(first);
        assert_eq!(e.embed(&face, &mut out).unwrap(), 12.0);
        assert!(e.is_open());
        assert_eq!(opens.get(), 1);
    }

    #[test]
    fn an_npu_lost_soon_after_each_open_is_reopened_less_often_and_afresh_after_a_good_spell() {
        let opens = Rc::new(Cell::new(0));
        let o = Rc::clone(&opens);
        // Every reopened NPU embeds once, then is lost.
        let open: Opener = Box::new(move || {
            o.set(o.get() + 1);
            Ok(Box::new(Resets { ok: 1, calls: 0 }) as Box<dyn Embedder>)
        });
        let (first, max) = (Duration::from_millis(200), Duration::from_millis(1500));
        let mut e = Reopening::opened(Box::new(Resets { ok: 0, calls: 0 }), open, first, max);
        let (face, mut out) = (AlignedFace::default(), [0.0; 8]);
        assert!(e.embed(&face, &mut out).is_err(), "lost at once");
        std::thread::sleep(first);
        assert!(e.embed(&face, &mut out).is_ok(), "reopened after `first`");
        assert!(e.embed(&face, &mut out).is_err(), "lost again soon after");
        // Soon after its open: the pause has doubled.
        std::thread::sleep(first);
        assert!(e.embed(&face, &mut out).is_err());
        assert_eq!(opens.get(), 1, "no attempt within twice `first`");
        std::thread::sleep(first);
        assert!(e.embed(&face, &mut out).is_ok());
        assert_eq!(opens.get(), 2);
        // Usable for longer than `max` before the loss: back to `first`.
        std::thread::sleep(max);
        assert!(e.embed(&face, &mut out).is_err());
        std::thread::sleep(first);
        assert!(e.embed(&face, &mut out).is_ok());
        assert_eq!(opens.get(), 3);
    }
}
