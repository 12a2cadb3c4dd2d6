//! `portier selftest` from the shell, on this machine: the laptop setup (real models, a replayed
//! camera, a fake door) passes and says what is absent; a broken model fails its row and the
//! exit code; MQTT passes against a mosquitto of the test's own and fails clearly against a
//! closed port.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use crate::common;
use crate::mqtt::{free_port, have_mosquitto, Broker};

/// A laptop config with absolute paths (SCRFD + w600k, replayed camera, fake door) in a
/// temporary folder, plus `extra` TOML at the end.
struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
    assets: PathBuf,
}

impl Setup {
    fn new(assets: &Path, detector: Option<&Path>, extra: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let m = assets.join("models");
        let detector = detector.map_or_else(
            || m.join("detectors/scrfd_500m_det_500m.onnx"),
            std::path::Path::to_path_buf,
        );
        let config = dir.path().join("portier.toml");
        std::fs::write(
            &config,
            format!(
                "[detector]\nmodel = \"{}\"\nkind = \"scrfd\"\nfit_input = true\n\n\
                 [recognizer]\nmodel = \"{}\"\nid = \"w600k_mbf_fp32\"\n\n\
                 [gallery]\npath = \"{}\"\n\n[matching]\nthreshold = 0.32\nmargin = 0.05\n\n\
                 [camera]\nsource = \"replay\"\npath = \"{}\"\nfps = 29.97\n\n\
                 [door]\nbackend = \"fake\"\n\n{extra}",
                detector.display(),
                m.join("derived/w600k_mbf_dq_fp32.onnx").display(),
                dir.path().join("state/gallery.db").display(),
                assets.join("video/hamilton_640x480.mjpeg").display(),
            ),
        )
        .unwrap();
        Setup { dir, config, assets: assets.to_path_buf() }
    }

    fn portier(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_portier"))
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env("PORTIER_LOG", "warn")
            .output()
            .unwrap()
    }

    /// Enrols one person, so the gallery exists and has someone for the recognizer's model.
    fn enroll(&self) {
        let photo = self.assets.join("faces/full/face_recognition/biden.jpg");
        let o = self.portier(&["enroll", "--name", "Joe Biden", photo.to_str().unwrap()]);
        assert!(o.status.success(), "enroll: {}", String::from_utf8_lossy(&o.stderr));
    }

    /// `selftest --json`: the exit code and the report.
    fn selftest_json(&self) -> (Option<i32>, Value) {
        let o = self.portier(&["selftest", "--json"]);
        let stdout = String::from_utf8_lossy(&o.stdout);
        let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!("{e}: {stdout}\nstderr: {}", String::from_utf8_lossy(&o.stderr))
        });
        (o.status.code(), report)
    }
}

/// The row `name` of a JSON report: (status, detail).
fn row(report: &Value, name: &str) -> (String, String) {
    let rows = report["checks"].as_array().unwrap();
    let r = rows.iter().find(|r| r["name"] == name).unwrap_or_else(|| panic!("no row {name}"));
    (r["status"].as_str().unwrap().to_owned(), r["detail"].as_str().unwrap().to_owned())
}

fn assert_status(report: &Value, name: &str, want: &str) {
    let (status, detail) = row(report, name);
    assert_eq!(status, want, "{name}: {detail}\nreport: {report:#}");
}

#[test]
fn laptop_config_passes_and_reports_absent_parts_as_absent() {
    let Some(assets) = common::assets() else { return };
    let s = Setup::new(&assets, None, "");
    s.enroll();

    let o = s.portier(&["selftest"]);
    let table = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{table}\n{}", String::from_utf8_lossy(&o.stderr));
    let last = table.lines().last().unwrap();
    assert_eq!(last, "selftest: 8 passed, 0 failed, 5 absent, 0 warned", "{table}");
    for line in ["config ", "onnxruntime ", "detector ", "camera ", "npu ", "mqtt "] {
        assert!(table.lines().any(|l| l.starts_with(line)), "no row {line:?}: {table}");
    }
    // The status column is aligned: every row has it at the same place.
    let col = table.lines().next().unwrap().find("status").unwrap();
    for l in table.lines().skip(1).filter(|l| !l.starts_with("selftest:")) {
        let status = &l[col..col + 6];
        assert!(["PASS  ", "FAIL  ", "WARN  ", "ABSENT"].contains(&status), "{l:?}");
    }

    let (code, report) = s.selftest_json();
    assert_eq!(code, Some(0));
    assert_eq!(report["ok"], true);
    for name in
        ["config", "onnxruntime", "detector", "recognizer", "camera", "gallery", "disk: gallery"]
    {
        assert_status(&report, name, "pass");
    }
    // The door is the fake backend: a pass that says there is no hardware.
    assert_status(&report, "gpio", "pass");
    assert!(row(&report, "gpio").1.contains("fake backend: no hardware"));
    // Not configured or not built in: absent, never passed.
    assert_status(&report, "npu", "absent");
    assert_status(&report, "npu: model", "absent");
    assert_status(&report, "mqtt", "absent");
    assert_status(&report, "disk: outbox", "absent");
    assert_status(&report, "liveness", "absent");
    assert!(row(&report, "gallery").1.contains("1 enrolled for `w600k_mbf_fp32`"));
    assert!(row(&report, "camera").1.contains("first frame mjpeg 640x480 decoded"));
}

#[test]
fn liveness_models_are_checked_when_configured() {
    let Some(assets) = common::assets() else { return };
    let dir = assets.join("liveness");
    let section = |v2: &Path| {
        format!(
            "[liveness]\nv2_model = \"{}\"\nv1se_model = \"{}\"\n",
            v2.display(),
            dir.join("MiniFASNetV1SE.onnx").display()
        )
    };
    let s = Setup::new(&assets, None, &section(&dir.join("MiniFASNetV2.onnx")));
    let (code, report) = s.selftest_json();
    assert_eq!(code, Some(0), "{report:#}");
    assert_status(&report, "liveness", "pass");
    assert!(row(&report, "liveness").1.contains("MiniFASNetV2.onnx + MiniFASNetV1SE.onnx"));
    // A model missing on the device (the image does not ship them yet): a failed row.
    let s = Setup::new(&assets, None, &section(Path::new("/nonexistent/MiniFASNetV2.onnx")));
    let (code, report) = s.selftest_json();
    assert_eq!(code, Some(1), "{report:#}");
    assert_status(&report, "liveness", "fail");
    assert!(row(&report, "liveness").1.contains("/nonexistent/MiniFASNetV2.onnx"));
}

/// Issue 16: an image built without the HEF. The NPU's model is configured but not there:
/// `selftest` says "not installed -> CPU only" as a warning (exit 0), `enroll` enrols with the
/// CPU's model only; once the model is there, the people enrolled before it are named as
/// lacking its templates.
#[test]
fn an_npu_model_that_is_not_installed_is_a_warning_and_enrolment_uses_the_cpu() {
    let Some(assets) = common::assets() else { return };
    let model = tempfile::tempdir().unwrap();
    let npu = model.path().join("npu.onnx");
    let extra = format!(
        "[npu]\nbackend = \"emulated\"\nmodel = \"{}\"\nid = \"w600k_mbf_int8\"\n",
        npu.display()
    );
    let s = Setup::new(&assets, None, &extra);
    let (code, report) = s.selftest_json();
    assert_eq!(code, Some(0), "{report:#}");
    assert_status(&report, "npu: model", "warn");
    let detail = row(&report, "npu: model").1;
    assert!(detail.contains("not installed") && detail.contains("CPU only"), "{detail}");

    let photo = assets.join("faces/full/face_recognition/biden.jpg");
    let o = s.portier(&["enroll", "--name", "Joe Biden", photo.to_str().unwrap()]);
    let (stdout, stderr) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("is not installed: enrolling with the CPU's model only"), "{stderr}");
    assert!(!stdout.contains("(npu)"), "{stdout}");

    std::fs::copy(assets.join("models/derived/w600k_mbf_int8_qdq_pct.onnx"), &npu).unwrap();
    let (code, report) = s.selftest_json();
    assert_eq!(code, Some(0), "{report:#}");
    assert_status(&report, "npu: model", "warn");
    let detail = row(&report, "npu: model").1;
    assert!(
        detail.contains("1 of 1 enrolled people have no `w600k_mbf_int8` templates"),
        "{detail}"
    );
}

#[test]
fn a_missing_gallery_is_a_warning_and_is_not_created() {
    let Some(assets) = common::assets() else { return };
    let s = Setup::new(&assets, None, "");
    let (code, report) = s.selftest_json();
    assert_eq!(code, Some(0), "{report:#}");
    assert_status(&report, "gallery", "warn");
    assert!(!s.dir.path().join("state").exists(), "selftest created the gallery folder");
}

#[test]
fn a_broken_model_fails_its_row_and_the_exit_code() {
    let Some(assets) = common::assets() else { return };
    let missing = Path::new("/nonexistent/detector.onnx");
    let s = Setup::new(&assets, Some(missing), "");
    let o = s.portier(&["selftest"]);
    let table = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{table}");
    let detector = table.lines().find(|l| l.starts_with("detector ")).unwrap();
    assert!(detector.contains("FAIL"), "{detector}");
    assert!(detector.contains("/nonexistent/detector.onnx"), "{detector}");
    assert!(table.lines().last().unwrap().contains(" 1 failed"), "{table}");

    // Every other check still ran.
    let (code, report) = s.selftest_json();
    assert_eq!(code, Some(1));
    assert_eq!(report["ok"], false);
    assert_status(&report, "detector", "fail");
    assert_status(&report, "recognizer", "pass");
    assert_status(&report, "camera", "pass");
}

#[test]
fn mqtt_round_trip_passes_against_a_broker() {
    let Some(assets) = common::assets() else { return };
    if !have_mosquitto() {
        return;
    }
    let broker_dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(broker_dir.path(), "");
    let outbox = tempfile::tempdir().unwrap();
    let s = Setup::new(
        &assets,
        None,
        &format!(
            "[mqtt]\nenabled = true\nhost = \"127.0.0.1\"\nport = {}\ndevice_id = \"frontdoor\"\n\
             outbox_dir = \"{}\"\n",
            broker.port,
            outbox.path().join("outbox").display()
        ),
    );
    let (_, report) = s.selftest_json();
    assert_status(&report, "mqtt", "pass");
    let detail = row(&report, "mqtt").1;
    assert!(detail.contains("portier/frontdoor/selftest"), "{detail}");
    assert_status(&report, "disk: outbox", "pass");
    // The selftest publishes nothing durable: no outbox is created.
    assert!(!outbox.path().join("outbox").exists());
}

#[test]
fn mqtt_against_a_closed_port_fails_with_a_clear_reason() {
    let Some(assets) = common::assets() else { return };
    let port = free_port();
    let s = Setup::new(
        &assets,
        None,
        &format!("[mqtt]\nenabled = true\nhost = \"127.0.0.1\"\nport = {port}\n"),
    );
    let started = std::time::Instant::now();
    let (code, report) = s.selftest_json();
    assert_eq!(code, Some(1), "{report:#}");
    assert_status(&report, "mqtt", "fail");
    let detail = row(&report, "mqtt").1;
    assert!(detail.contains(&format!("broker 127.0.0.1:{port}: connecting")), "{detail}");
    assert!(detail.to_lowercase().contains("connection refused"), "{detail}");
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}
