//! Which backend embeds which face, and when to fall back: the router of issue 3.
//!
//! Per face the router sees three things: its size (eye distance in frame pixels), whether the
//! NPU is up, and, after an NPU embedding, that embedding's norm before normalisation. Close
//! faces on a healthy NPU go to the NPU; far faces go to the CPU (their signal sinks toward
//! INT8 quantisation noise); an NPU embedding whose norm fell below the measured cliff has
//! collapsed and is re-embedded on the CPU; while the NPU is down every face goes to the CPU and
//! the NPU is probed again after a pause. The NPU's failure and its recovery each raise one
//! event. The similarity threshold depends on the face's size band (far faces match with lower
//! similarity; `portier calibrate` measures by how much).
//!
//! Every number here comes from [`RoutingConfig`], which `portier calibrate` writes from a
//! measured sweep (`portier eval distance`), never from a guess in code.
//!
//! Must not: run models, read clocks or log: it is a pure state machine of (inputs, now), so
//! every decision can be unit-tested and replayed.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A routing configuration that cannot be used; names the key and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("routing: key `{key}`: {reason}")]
pub struct RouteConfigError {
    /// Dotted key under `[routing]`.
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

/// The similarity threshold for faces from one size up (a `[[routing.bands]]` entry).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BandThreshold {
    /// The band holds faces whose eye distance is at least this (up to the next band's).
    pub min_eye_distance_px: f32,
    /// Minimum cosine similarity for a match in this band.
    pub threshold_cosine: f32,
}

/// The `[routing]` section: the thresholds of every routing decision.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingConfig {
    /// Faces with a smaller eye distance go to the CPU even when the NPU is up.
    pub npu_min_eye_distance_px: f32,
    /// An NPU embedding whose norm before normalisation is below this has collapsed into
    /// quantisation noise: the face is re-embedded on the CPU. 0 disables the check (a model
    /// with no measured cliff).
    #[serde(default)]
    pub npu_norm_cliff: f32,
    /// After an NPU failure, how long every face stays on the CPU before the NPU is tried again
    /// (doubling on each failed reopen, up to 5 minutes). At least [`MIN_NPU_RETRY_MS`]: each
    /// try of a failed device is an open and a probe, and a tighter loop only hammers it.
    #[serde(default = "default_retry_ms")]
    pub npu_retry_ms: u64,
    /// Similarity thresholds by face size for the NPU model's embeddings (what the router sends
    /// it), in ascending `min_eye_distance_px`; the first band starts at 0 so that every face
    /// has one.
    pub bands: Vec<BandThreshold>,
    /// Similarity thresholds by face size for the CPU recognizer's embeddings, every size
    /// (far faces, and close ones after a fallback); written by `portier calibrate`. Empty:
    /// `[decision] bands`, else one band at `matching.threshold`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cpu_bands: Vec<BandThreshold>,
}

/// The shortest `npu_retry_ms` accepted.
pub const MIN_NPU_RETRY_MS: u64 = 100;

fn default_retry_ms() -> u64 {
    5_000
}

impl RoutingConfig {
    /// The routing used when the config has an `[npu]` but no `[routing]`: the NPU for every
    /// face from 12 px between the eyes (below that the aligned crop is mostly upsampling and
    /// the INT8 signal is lost), no norm cliff (none measured for an unknown model), a retry
    /// every 5 s after a failure, and one band at the matching `threshold`.
    pub fn default_for(threshold: f32) -> Self {
        RoutingConfig {
            npu_min_eye_distance_px: 12.0,
            npu_norm_cliff: 0.0,
            npu_retry_ms: default_retry_ms(),
            bands: vec![BandThreshold { min_eye_distance_px: 0.0, threshold_cosine: threshold }],
            cpu_bands: Vec::new(),
        }
    }

    /// Checks ranges and the band order; the error names the offending key.
    pub fn validate(&self) -> Result<(), RouteConfigError> {
        let bad = |key: &str, reason: String| RouteConfigError { key: key.into(), reason };
        let d = self.npu_min_eye_distance_px;
        if !d.is_finite() || d < 0.0 {
            return Err(bad("npu_min_eye_distance_px", format!("must be >= 0 pixels, got {d}")));
        }
        let c = self.npu_norm_cliff;
        if !c.is_finite() || c < 0.0 {
            return Err(bad("npu_norm_cliff", format!("must be >= 0 (0 disables it), got {c}")));
        }
        if !(MIN_NPU_RETRY_MS..=3_600_000).contains(&self.npu_retry_ms) {
            return Err(bad(
                "npu_retry_ms",
                format!(
                    "must be in {MIN_NPU_RETRY_MS}..=3600000 (milliseconds), got {}",
                    self.npu_retry_ms
                ),
            ));
        }
        if self.bands.is_empty() {
            return Err(bad("bands", "at least one band is needed".into()));
        }
        for (name, bands) in [("bands", &self.bands), ("cpu_bands", &self.cpu_bands)] {
            if let Some(first) = bands.first() {
                if first.min_eye_distance_px != 0.0 {
                    return Err(bad(
                        &format!("{name}[0].min_eye_distance_px"),
                        format!("the first band must start at 0 to cover every face, got {}", {
                            first.min_eye_distance_px
                        }),
                    ));
                }
            }
            for (i, b) in bands.iter().enumerate() {
                if !(-1.0..=1.0).contains(&b.threshold_cosine) {
                    return Err(bad(
                        &format!("{name}[{i}].threshold_cosine"),
                        format!("a cosine similarity in -1..=1, got {}", b.threshold_cosine),
                    ));
                }
                let m = b.min_eye_distance_px;
                if !m.is_finite() {
                    return Err(bad(
                        &format!("{name}[{i}].min_eye_distance_px"),
                        format!("got {m}"),
                    ));
                }
                if i > 0 && m <= bands[i - 1].min_eye_distance_px {
                    return Err(bad(
                        &format!("{name}[{i}].min_eye_distance_px"),
                        format!(
                            "bands must be in strictly ascending order, got {m} after {}",
                            bands[i - 1].min_eye_distance_px
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The similarity threshold for a face of this eye distance: the band with the largest
    /// `min_eye_distance_px` not above it.
    pub fn threshold(&self, eye_distance_px: f32) -> f32 {
        band_threshold(&self.bands, eye_distance_px).unwrap_or(1.0)
    }

    /// The CPU recognizer's threshold for a face of this eye distance: `cpu_bands`, else
    /// (none written) the NPU model's [`threshold`](Self::threshold).
    pub fn cpu_threshold(&self, eye_distance_px: f32) -> f32 {
        band_threshold(&self.cpu_bands, eye_distance_px)
            .unwrap_or_else(|| self.threshold(eye_distance_px))
    }
}

/// The threshold of the band with the largest `min_eye_distance_px` not above the eye
/// distance (the first band below all of them); `None` without bands.
fn band_threshold(bands: &[BandThreshold], eye_distance_px: f32) -> Option<f32> {
    bands
        .iter()
        .rev()
        .find(|b| eye_distance_px >= b.min_eye_distance_px)
        .or(bands.first())
        .map(|b| b.threshold_cosine)
}

/// Where a face is embedded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Route {
    /// On the NPU.
    Npu,
    /// On the CPU, and why.
    Cpu(CpuReason),
}

/// Why a face goes to the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CpuReason {
    /// Smaller than `npu_min_eye_distance_px`.
    Far,
    /// The NPU is down (failed and not yet due for a retry).
    NpuDown,
    /// The NPU embedding's norm was below `npu_norm_cliff`: re-embed on the CPU.
    NormBelowCliff,
}

/// A change of the NPU's health, raised once per change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NpuEvent {
    /// The NPU failed; every face goes to the CPU until it recovers.
    Failed,
    /// The NPU works again after a failure.
    Recovered,
}

/// The router: the configuration and the NPU's health.
#[derive(Debug, Clone)]
pub struct Router {
    config: RoutingConfig,
    /// When the NPU failed last, while it is down.
    down_since: Option<Duration>,
    /// A retry after a failure is in flight: the next result decides recovery.
    probing: bool,
    npu_present: bool,
}

impl Router {
    /// A router over a validated configuration. `npu_present`: whether an NPU backend exists
    /// at all (without one every face goes to the CPU as [`CpuReason::NpuDown`] and no event is
    /// ever raised).
    pub fn new(config: RoutingConfig, npu_present: bool) -> Result<Self, RouteConfigError> {
        config.validate()?;
        Ok(Self { config, down_since: None, probing: false, npu_present })
    }

    /// The configuration.
    pub fn config(&self) -> &RoutingConfig {
        &self.config
    }

    /// Whether the NPU is currently considered healthy.
    pub fn npu_up(&self) -> bool {
        self.npu_present && self.down_since.is_none()
    }

    /// Where to embed a face of this eye distance at `now` (monotonic time since start). While
    /// the NPU is down, a close face is sent to it as a probe once `npu_retry_ms` has passed
    /// since the failure; its outcome goes to [`Router::npu_result`].
    pub fn route(&mut self, eye_distance_px: f32, now: Duration) -> Route {
        if !self.npu_present {
            return Route::Cpu(CpuReason::NpuDown);
        }
        // NaN compares false: an unmeasurable size is treated as far.
        if eye_distance_px.is_nan() || eye_distance_px < self.config.npu_min_eye_distance_px {
            return Route::Cpu(CpuReason::Far);
        }
        match self.down_since {
            None => Route::Npu,
            Some(since) => {
                let retry = Duration::from_millis(self.config.npu_retry_ms);
                if now.saturating_sub(since) >= retry {
                    self.probing = true;
                    Route::Npu
                } else {
                    Route::Cpu(CpuReason::NpuDown)
                }
            }
        }
    }

    /// After a successful NPU embedding: keep it ([`Route::Npu`]) or re-embed on the CPU when
    /// its norm before normalisation is below the cliff (or not a number).
    pub fn check_norm(&self, norm: f32) -> Route {
        let cliff = self.config.npu_norm_cliff;
        if cliff > 0.0 && (norm.is_nan() || norm < cliff) {
            Route::Cpu(CpuReason::NormBelowCliff)
        } else {
            Route::Npu
        }
    }

    /// Reports whether an NPU call at `now` succeeded. Returns an event on a change of health
    /// only: the first failure ([`NpuEvent::Failed`]) and the first success after it
    /// ([`NpuEvent::Recovered`]). A failed probe restarts the retry pause silently.
    pub fn npu_result(&mut self, ok: bool, now: Duration) -> Option<NpuEvent> {
        if !self.npu_present {
            return None;
        }
        let was_down = self.down_since.is_some();
        self.probing = false;
        match (ok, was_down) {
            (true, true) => {
                self.down_since = None;
                Some(NpuEvent::Recovered)
            }
            (true, false) => None,
            (false, false) => {
                self.down_since = Some(now);
                Some(NpuEvent::Failed)
            }
            (false, true) => {
                self.down_since = Some(now);
                None
            }
        }
    }

    /// The similarity threshold for a face of this eye distance.
    pub fn threshold(&self, eye_distance_px: f32) -> f32 {
        self.config.threshold(eye_distance_px)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> RoutingConfig {
        RoutingConfig {
            npu_min_eye_distance_px: 24.0,
            npu_norm_cliff: 10.0,
            npu_retry_ms: 1_000,
            bands: vec![
                BandThreshold { min_eye_distance_px: 0.0, threshold_cosine: 0.22 },
                BandThreshold { min_eye_distance_px: 16.0, threshold_cosine: 0.28 },
                BandThreshold { min_eye_distance_px: 32.0, threshold_cosine: 0.32 },
            ],
            cpu_bands: Vec::new(),
        }
    }

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn close_face_on_healthy_npu_goes_to_npu() {
        let mut r = Router::new(config(), true).unwrap();
        assert_eq!(r.route(24.0, ms(0)), Route::Npu);
        assert_eq!(r.route(100.0, ms(0)), Route::Npu);
    }

    #[test]
    fn far_face_goes_to_cpu() {
        let mut r = Router::new(config(), true).unwrap();
        assert_eq!(r.route(23.9, ms(0)), Route::Cpu(CpuReason::Far));
        assert_eq!(r.route(0.0, ms(0)), Route::Cpu(CpuReason::Far));
        assert_eq!(r.route(f32::NAN, ms(0)), Route::Cpu(CpuReason::Far));
    }

    #[test]
    fn norm_below_cliff_is_re_embedded_on_cpu() {
        let r = Router::new(config(), true).unwrap();
        assert_eq!(r.check_norm(9.99), Route::Cpu(CpuReason::NormBelowCliff));
        assert_eq!(r.check_norm(f32::NAN), Route::Cpu(CpuReason::NormBelowCliff));
        assert_eq!(r.check_norm(10.0), Route::Npu);
        assert_eq!(r.check_norm(25.0), Route::Npu);
        let mut off = config();
        off.npu_norm_cliff = 0.0;
        assert_eq!(Router::new(off, true).unwrap().check_norm(0.5), Route::Npu);
    }

    #[test]
    fn npu_failure_sends_everything_to_cpu_and_raises_one_event() {
        let mut r = Router::new(config(), true).unwrap();
        assert_eq!(r.npu_result(true, ms(0)), None);
        assert_eq!(r.npu_result(false, ms(100)), Some(NpuEvent::Failed));
        assert!(!r.npu_up());
        assert_eq!(r.route(100.0, ms(200)), Route::Cpu(CpuReason::NpuDown));
        // Far faces stay `Far`: the size rule comes first.
        assert_eq!(r.route(10.0, ms(200)), Route::Cpu(CpuReason::Far));
        // Further failures raise nothing more.
        assert_eq!(r.npu_result(false, ms(300)), None);
        assert_eq!(r.route(100.0, ms(1_299)), Route::Cpu(CpuReason::NpuDown));
    }

    #[test]
    fn npu_is_probed_after_the_pause_and_recovers_once() {
        let mut r = Router::new(config(), true).unwrap();
        assert_eq!(r.npu_result(false, ms(0)), Some(NpuEvent::Failed));
        assert_eq!(r.route(100.0, ms(999)), Route::Cpu(CpuReason::NpuDown));
        assert_eq!(r.route(100.0, ms(1_000)), Route::Npu, "probe");
        // A failed probe restarts the pause without a second event.
        assert_eq!(r.npu_result(false, ms(1_000)), None);
        assert_eq!(r.route(100.0, ms(1_500)), Route::Cpu(CpuReason::NpuDown));
        assert_eq!(r.route(100.0, ms(2_000)), Route::Npu, "second probe");
        assert_eq!(r.npu_result(true, ms(2_010)), Some(NpuEvent::Recovered));
        assert!(r.npu_up());
        assert_eq!(r.npu_result(true, ms(2_020)), None);
        assert_eq!(r.route(100.0, ms(2_030)), Route::Npu);
    }

    #[test]
    fn without_an_npu_everything_is_cpu_and_silent() {
        let mut r = Router::new(config(), false).unwrap();
        assert_eq!(r.route(100.0, ms(0)), Route::Cpu(CpuReason::NpuDown));
        assert_eq!(r.npu_result(false, ms(0)), None);
        assert!(!r.npu_up());
    }

    #[test]
    fn thresholds_by_size_band() {
        let r = Router::new(config(), true).unwrap();
        assert_eq!(r.threshold(8.0), 0.22);
        assert_eq!(r.threshold(15.99), 0.22);
        assert_eq!(r.threshold(16.0), 0.28);
        assert_eq!(r.threshold(31.0), 0.28);
        assert_eq!(r.threshold(32.0), 0.32);
        assert_eq!(r.threshold(500.0), 0.32);
        // Without cpu_bands a CPU embedding is judged by the bands; with them, by its own.
        let mut c = config();
        assert_eq!(c.cpu_threshold(20.0), 0.28);
        c.cpu_bands = vec![
            BandThreshold { min_eye_distance_px: 0.0, threshold_cosine: 0.41 },
            BandThreshold { min_eye_distance_px: 24.0, threshold_cosine: 0.45 },
        ];
        assert_eq!(c.cpu_threshold(20.0), 0.41);
        assert_eq!(c.cpu_threshold(80.0), 0.45);
        assert_eq!(c.threshold(80.0), 0.32);
    }

    #[test]
    fn parses_toml_with_units_and_refuses_unknown_keys() {
        let text = r#"
npu_min_eye_distance_px = 24.0
npu_norm_cliff = 10.0
[[bands]]
min_eye_distance_px = 0.0
threshold_cosine = 0.25
[[bands]]
min_eye_distance_px = 24.0
threshold_cosine = 0.3
"#;
        let c: RoutingConfig = toml::from_str(text).unwrap();
        c.validate().unwrap();
        assert_eq!(c.npu_retry_ms, 5_000);
        assert_eq!(c.bands.len(), 2);
        let typo = text.replace("npu_norm_cliff", "npu_norm_clif");
        let err = toml::from_str::<RoutingConfig>(&typo).unwrap_err().to_string();
        assert!(err.contains("npu_norm_clif"), "{err}");
    }

    #[test]
    fn validate_names_the_bad_key() {
        let check = |f: &dyn Fn(&mut RoutingConfig), key: &str| {
            let mut c = config();
            f(&mut c);
            let err = c.validate().unwrap_err();
            assert_eq!(err.key, key, "{err}");
            assert!(Router::new(c, true).is_err());
        };
        check(&|c| c.npu_min_eye_distance_px = -1.0, "npu_min_eye_distance_px");
        check(&|c| c.npu_norm_cliff = f32::NAN, "npu_norm_cliff");
        check(&|c| c.npu_retry_ms = 0, "npu_retry_ms");
        check(&|c| c.npu_retry_ms = MIN_NPU_RETRY_MS - 1, "npu_retry_ms");
        check(&|c| c.npu_retry_ms = 3_600_001, "npu_retry_ms");
        check(&|c| c.bands.clear(), "bands");
        check(&|c| c.bands[0].min_eye_distance_px = 4.0, "bands[0].min_eye_distance_px");
        check(&|c| c.bands[1].threshold_cosine = 1.5, "bands[1].threshold_cosine");
        check(&|c| c.bands[2].min_eye_distance_px = 16.0, "bands[2].min_eye_distance_px");
    }
}
