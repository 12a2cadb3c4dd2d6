//! NPU embedder (feature `hailo`): an ArcFace-style recognizer HEF on a Hailo-8 through
//! `infer::hailo`. The 112x112 aligned RGB crop goes in as the HEF's own UINT8 NHWC input (the
//! mean/std normalisation is compiled into the HEF by its model script), the first output is
//! the embedding, dequantised to float32.
//!
//! Must not: decide what to do when the NPU fails or its embedding is weak. It reports the norm
//! before normalisation (the router's collapse signal) and maps device failures to
//! [`EmbedError::Device`], on which the router switches every face to the CPU. After a timeout
//! the next embedding is the next face's (`infer::hailo` clears the vstreams); after a failure
//! that leaves the device unusable, [`Embedder::usable`] turns false and `embed::reopen` opens
//! it again.

use std::path::{Path, PathBuf};

use super::{l2_normalize, EmbedError, Embedder, MAX_DIM};
use crate::align::{AlignedFace, CROP};
use crate::infer::hailo::{HailoDevice, HailoError, HailoNetwork, NetworkOptions};

/// Settings of a recognizer on the NPU.
#[derive(Debug, Clone, PartialEq)]
pub struct NpuSettings {
    /// The HEF file.
    pub hef: PathBuf,
    /// Name of the embedding space; templates are tagged with it (an INT8 HEF is a different
    /// space from its float32 ONNX parent as far as thresholds go).
    pub model_id: String,
    /// Vstream timeout and output element type.
    pub network: NetworkOptions,
}

/// A recognizer running on the Hailo NPU.
pub struct NpuEmbedder {
    settings: NpuSettings,
    network: HailoNetwork,
    dim: usize,
    last_infer: std::time::Duration,
}

impl std::fmt::Debug for NpuEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NpuEmbedder")
            .field("settings", &self.settings)
            .field("dim", &self.dim)
            .finish()
    }
}

/// Wraps a HailoRT error for the router: every HailoRT failure is the device's, not the face's.
fn device_error(e: HailoError) -> EmbedError {
    EmbedError::Device { backend: "hailo", source: Box::new(e) }
}

impl NpuEmbedder {
    /// Opens the HEF on `device`, checks it takes a 112x112x3 crop, and learns the embedding
    /// dimension from its first output.
    pub fn open(device: &HailoDevice, settings: NpuSettings) -> Result<Self, EmbedError> {
        let network =
            HailoNetwork::open(device, &settings.hef, settings.network).map_err(device_error)?;
        let output = |reason: String| EmbedError::Output { path: settings.hef.clone(), reason };
        let want = [CROP as u32, CROP as u32, 3];
        if network.input_shape() != want {
            return Err(output(format!(
                "input `{}` is {:?} (h, w, c); a 112x112 RGB crop is {want:?}",
                network.input_name(),
                network.input_shape()
            )));
        }
        let dim = network.outputs().first().map_or(0, |o| o.data.len());
        if !(2..=MAX_DIM).contains(&dim) {
            return Err(output(format!(
                "first output has {dim} values for one face; an embedding of 2..={MAX_DIM} is \
                 expected (is this a recognizer?)"
            )));
        }
        Ok(Self { settings, network, dim, last_infer: std::time::Duration::ZERO })
    }

    /// The HEF file.
    pub fn path(&self) -> &Path {
        &self.settings.hef
    }

    /// Time the NPU round trip took in the last [`Embedder::embed`] call, for benchmarks.
    pub fn last_infer(&self) -> std::time::Duration {
        self.last_infer
    }
}

impl Embedder for NpuEmbedder {
    fn model_id(&self) -> &str {
        &self.settings.model_id
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn embed(&mut self, face: &AlignedFace, out: &mut [f32]) -> Result<f32, EmbedError> {
        if out.len() < self.dim {
            return Err(EmbedError::Buffer { got: out.len(), need: self.dim });
        }
        let out = &mut out[..self.dim];
        let t = std::time::Instant::now();
        // The crop is interleaved RGB, row-major: exactly the HEF's NHWC UINT8 input.
        let outputs = self.network.run(&face.pixels).map_err(device_error)?;
        self.last_infer = t.elapsed();
        let data = outputs.first().map(|o| o.data.as_slice()).unwrap_or_default();
        if data.len() != self.dim {
            return Err(EmbedError::Output {
                path: self.settings.hef.clone(),
                reason: format!("output changed size from {} to {}", self.dim, data.len()),
            });
        }
        out.copy_from_slice(data);
        // A zero or non-finite norm is a result, not an error, on INT8: the collapse the router
        // looks for. Only the normalisation is skipped then (l2_normalize leaves it untouched).
        Ok(l2_normalize(out))
    }

    /// A timeout leaves the network usable (its vstreams were cleared); a reset or lost
    /// device does not.
    fn usable(&self) -> bool {
        !self.network.is_broken()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::hailo::double::{
        degenerate_raw, rec_raw, Double, DEGENERATE_NORM, REC_DIM, REC_SCALE, REC_ZP,
    };
    use crate::infer::hailo::{DeviceOptions, HailoRuntime, OutputFormat};

    fn embedder(d: &Double, output: OutputFormat) -> NpuEmbedder {
        embedder_of(d, "recognizer", output)
    }

    fn embedder_of(d: &Double, kind: &str, output: OutputFormat) -> NpuEmbedder {
        let rt = HailoRuntime::load(Some(&d.path)).unwrap();
        let dev = HailoDevice::open(&rt, DeviceOptions::default()).unwrap();
        let settings = NpuSettings {
            hef: d.hef(kind),
            model_id: "w600k_r50-hailo8-int8".into(),
            network: NetworkOptions { output, ..Default::default() },
        };
        NpuEmbedder::open(&dev, settings).unwrap()
    }

    fn face(seed: u8) -> AlignedFace {
        let mut f = AlignedFace::default();
        for (i, p) in f.pixels.iter_mut().enumerate() {
            *p = (i as u8).wrapping_mul(31).wrapping_add(seed);
        }
        f
    }

    #[test]
    fn embedding_is_normalised_and_the_norm_before_is_returned() {
        for output in [OutputFormat::Float32, OutputFormat::Device] {
            let d = Double::new();
            let mut e = embedder(&d, output);
            assert_eq!(e.dim(), REC_DIM);
            let f = face(5);
            let raw: Vec<f32> =
                rec_raw(&f.pixels).iter().map(|&q| (f32::from(q) - REC_ZP) * REC_SCALE).collect();
            let want_norm = raw.iter().map(|x| x * x).sum::<f32>().sqrt();
            let mut out = [0.0f32; MAX_DIM];
            let norm = e.embed(&f, &mut out).unwrap();
            assert!((norm - want_norm).abs() < 1e-4 * want_norm, "{norm} vs {want_norm}");
            for (o, r) in out.iter().zip(&raw) {
                assert!((o - r / want_norm).abs() < 1e-6);
            }
            let unit = out.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((unit - 1.0).abs() < 1e-5);
        }
    }

    #[test]
    fn a_collapsed_embedding_reports_norm_zero() {
        let d = Double::new();
        let mut e = embedder(&d, OutputFormat::Float32);
        // Every input byte equal to the zero point: every output value dequantises to 0.
        let mut f = AlignedFace::default();
        f.pixels.fill(REC_ZP as u8);
        let mut out = [1.0f32; MAX_DIM];
        assert_eq!(e.embed(&f, &mut out).unwrap(), 0.0);
    }

    #[test]
    fn a_degenerate_hef_gives_one_vector_of_norm_two_for_every_face() {
        let d = Double::new();
        let mut e = embedder_of(&d, "recognizer-degenerate", OutputFormat::Float32);
        let want: Vec<f32> = degenerate_raw()
            .iter()
            .map(|&q| (f32::from(q) - REC_ZP) * REC_SCALE / DEGENERATE_NORM)
            .collect();
        for seed in [1, 77, 200] {
            let mut out = [0.0f32; MAX_DIM];
            let norm = e.embed(&face(seed), &mut out).unwrap();
            assert!((norm - DEGENERATE_NORM).abs() < 1e-4, "{norm}");
            for (o, w) in out.iter().zip(&want) {
                assert!((o - w).abs() < 1e-6);
            }
        }
    }

    /// What the recognizer double embeds `f` to, normalised.
    fn expected(f: &AlignedFace) -> Vec<f32> {
        let mut v: Vec<f32> =
            rec_raw(&f.pixels).iter().map(|&q| (f32::from(q) - REC_ZP) * REC_SCALE).collect();
        l2_normalize(&mut v);
        v
    }

    #[test]
    fn after_a_timeout_the_next_embedding_is_the_next_faces() {
        let d = Double::new();
        let mut e = embedder(&d, OutputFormat::Float32);
        let mut out = [0.0f32; MAX_DIM];
        e.embed(&face(1), &mut out).unwrap();
        assert_eq!(out[..REC_DIM], expected(&face(1)));
        // Face 2's frame times out on the device and is still in flight...
        d.fail_next("hailo_vstream_read_raw_buffer", crate::infer::hailo::ffi::HAILO_TIMEOUT);
        assert!(matches!(e.embed(&face(2), &mut out), Err(EmbedError::Device { .. })));
        assert!(e.usable());
        // ...and yet face 3's embedding is face 3's, not face 2's.
        e.embed(&face(3), &mut out).unwrap();
        assert_eq!(out[..REC_DIM], expected(&face(3)));
        assert_ne!(expected(&face(2)), expected(&face(3)));
    }

    #[test]
    fn a_reset_npu_is_closed_opened_again_and_used() {
        use crate::embed::reopen::{Opener, Reopening};
        use std::time::Duration;
        let d = Double::new();
        let hef = d.hef("recognizer");
        let library = d.path.clone();
        let open_npu = move || -> Result<Box<dyn Embedder>, EmbedError> {
            let rt = HailoRuntime::load(Some(&library)).map_err(device_error)?;
            let dev = HailoDevice::open(&rt, DeviceOptions::default()).map_err(device_error)?;
            let settings = NpuSettings {
                hef: hef.clone(),
                model_id: "w600k_r50-hailo8-int8".into(),
                network: NetworkOptions::default(),
            };
            Ok(Box::new(NpuEmbedder::open(&dev, settings)?))
        };
        let first = open_npu().unwrap();
        let opener: Opener = Box::new(open_npu);
        let pause = Duration::from_millis(20);
        let mut e = Reopening::opened(first, opener, pause, Duration::from_secs(1));
        let mut out = [0.0f32; MAX_DIM];
        e.embed(&face(1), &mut out).unwrap();
        d.reset(0);
        let err = e.embed(&face(2), &mut out).unwrap_err().to_string();
        assert!(err.contains("HAILO_DRIVER_OPERATION_FAILED"), "{err}");
        // Closed at once; the vdevice is released on a thread of its own.
        assert!(!e.is_open());
        std::thread::sleep(pause);
        // Opened again in the background: the loop's next frames get it once it answers.
        let mut reopened = Err(EmbedError::Buffer { got: 0, need: 0 });
        for _ in 0..5_000 {
            reopened = e.embed(&face(3), &mut out);
            if reopened.is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        reopened.unwrap();
        assert!(e.is_open());
        assert_eq!(out[..REC_DIM], expected(&face(3)));
        // The lost vdevice was released before the new one was made, as HailoRT needs.
        let calls = d.calls();
        let creates: Vec<usize> =
            (0..calls.len()).filter(|&i| calls[i] == "hailo_create_vdevice").collect();
        let release = calls.iter().position(|c| c == "hailo_release_vdevice");
        assert_eq!(creates.len(), 2, "{calls:?}");
        assert!(release.is_some_and(|r| creates[0] < r && r < creates[1]), "{calls:?}");
    }

    #[test]
    fn device_failures_surface_as_device_errors() {
        let d = Double::new();
        let mut e = embedder(&d, OutputFormat::Float32);
        let mut out = [0.0f32; MAX_DIM];
        d.fail_next("hailo_vstream_read_raw_buffer", 4);
        let err = e.embed(&face(1), &mut out).unwrap_err();
        let EmbedError::Device { backend: "hailo", source } = &err else { panic!("{err:?}") };
        let hailo = source.downcast_ref::<HailoError>().unwrap();
        assert!(matches!(hailo, HailoError::Timeout { .. }) && hailo.is_device_failure());
        assert!(err.to_string().contains("timed out"), "{err}");
        // Short buffers are the caller's fault, not the device's.
        assert!(matches!(e.embed(&face(1), &mut out[..10]), Err(EmbedError::Buffer { .. })));
    }
}
