//! Whether the NPU's model is installed. The appliance image installs the HEF only when the
//! technician gave one at build time (`PORTIER_HEF_URI`, yocto/README.md); without it the
//! configuration still names `/usr/share/portier/models/arcface_mobilefacenet.hef`, and portier
//! runs every face on the CPU and says so: at start (a log line and the first `npu_fallback`
//! event), on MQTT (the retained NPU state `not_installed`), on the display ("CPU"), in
//! `portier selftest` (row `npu: model`), and `portier enroll` enrols with the CPU's model only.
//!
//! Role: issue 16. Before, a missing HEF was an NPU failure like any other: logged as an error,
//! retried by opening the device, and `portier enroll` refused to enrol anyone.
//!
//! Must not: open the device or the model (that is `embed::open_npu`'s job, and it can take a
//! second on a Hailo), or treat a file it cannot look at as missing (only a path that does not
//! exist is "not installed"; anything else is left to the open, which names the error).

use std::path::{Path, PathBuf};

use crate::embed::cpu::RecognizerSettings;
use crate::embed::{EmbedError, Embedder, NpuBackend, NpuSection};
use crate::gallery::Matcher;

/// The NPU's model file when `[npu]` names one that does not exist.
pub fn not_installed(npu: &NpuSection) -> Option<PathBuf> {
    if npu.backend == NpuBackend::None {
        return None;
    }
    let model = npu.model.as_ref()?;
    matches!(model.try_exists(), Ok(false)).then(|| model.clone())
}

/// The error a missing model file opens with (the reason of the first `npu_fallback` event and
/// of every later attempt until the file is there).
pub fn not_installed_error(model: &Path) -> EmbedError {
    EmbedError::Output {
        path: model.to_path_buf(),
        reason: "not installed (no such file): every face runs on the CPU".into(),
    }
}

/// The NPU's recognizer for enrolment, opened and probed as `portier run` opens it
/// ([`crate::embed::open_npu_probed`]): `None` without `[npu]`, and also when its model is not
/// installed or is degenerate (the person is enrolled with the CPU's model only, with a warning
/// saying how to add the NPU's templates later: `run` would not use such a model, and its
/// templates would be the same vector for everyone); any other failure to open it is an error.
pub fn open_for_enrolment(
    npu: &NpuSection,
    recognizer: &RecognizerSettings,
) -> Result<Option<Box<dyn Embedder>>, EmbedError> {
    if let Some(model) = not_installed(npu) {
        log::warn!(
            "npu: {} is not installed: enrolling with the CPU's model only; once it is installed, \
             enrol this person again with `--append` (until then the loop keeps every face on \
             the CPU)",
            model.display()
        );
        return Ok(None);
    }
    match crate::embed::open_npu_probed(npu, recognizer) {
        Err(e @ EmbedError::Degenerate { .. }) => {
            log::warn!(
                "npu: {e}: enrolling with the CPU's model only (`portier run` does not use this \
                 model either; `portier npu check` says more); once a sound model is installed, \
                 enrol this person again with `--append`"
            );
            Ok(None)
        }
        other => other,
    }
}

/// How many of the people enrolled for the CPU's model (`cpu`) have no templates for the NPU's
/// model (`npu`): a close face of theirs embedded on the NPU would match nobody.
pub fn missing_templates(cpu: &Matcher, npu: &Matcher) -> usize {
    (0..cpu.people()).filter(|&i| npu.index_of(cpu.person_id(i)).is_none()).count()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn config(npu: &str) -> Config {
        crate::config::test_config(&format!("[matching]\nthreshold = 0.3\nmargin = 0.05\n{npu}"))
    }

    #[test]
    fn only_a_configured_model_that_does_not_exist_is_not_installed() {
        assert_eq!(not_installed(&config("").npu), None);
        let missing = config("[npu]\nbackend = \"hailo\"\nmodel = \"/no/such/dir/model.hef\"\n");
        assert_eq!(not_installed(&missing.npu), Some(PathBuf::from("/no/such/dir/model.hef")));
        let dir = tempfile::tempdir().unwrap();
        let hef = dir.path().join("model.hef");
        std::fs::write(&hef, b"HEF").unwrap();
        let there = config(&format!("[npu]\nbackend = \"hailo\"\nmodel = \"{}\"\n", hef.display()));
        assert_eq!(not_installed(&there.npu), None);
        let err = not_installed_error(&hef).to_string();
        assert!(err.contains("not installed") && err.contains("model.hef"), "{err}");
    }

    #[test]
    fn people_enrolled_without_npu_templates_are_counted() {
        use crate::gallery::{EnrollMode, Gallery};
        let mut g = Gallery::open_in_memory().unwrap();
        let t = |x: f32| vec![vec![x, 1.0, 0.0, 0.0]];
        g.enroll_models("Ada", &[("cpu", &t(1.0)), ("npu", &t(0.5))], EnrollMode::New).unwrap();
        assert_eq!(missing_templates(&g.matcher("cpu").unwrap(), &g.matcher("npu").unwrap()), 0);
        // Enrolled while the NPU's model was not installed: CPU templates only.
        g.enroll_models("Bob", &[("cpu", &t(-1.0))], EnrollMode::New).unwrap();
        assert_eq!(missing_templates(&g.matcher("cpu").unwrap(), &g.matcher("npu").unwrap()), 1);
        g.enroll_models("Bob", &[("npu", &t(-0.5))], EnrollMode::Append).unwrap();
        assert_eq!(missing_templates(&g.matcher("cpu").unwrap(), &g.matcher("npu").unwrap()), 0);
    }

    #[test]
    fn enrolment_without_the_model_uses_the_cpu_only() {
        let missing = config("[npu]\nbackend = \"emulated\"\nmodel = \"/no/such/model.onnx\"\n");
        assert!(open_for_enrolment(&missing.npu, &missing.recognizer).unwrap().is_none());
    }
}
