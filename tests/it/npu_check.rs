//! The NPU model's acceptance: the built-in probe `portier run` uses on every open of the NPU,
//! and `portier npu check` on the golden aligned crops, on the real recognizers of the assets.

use std::path::Path;

use crate::common;
use portier::config::Config;
use portier::embed::cpu::{CpuEmbedder, RecognizerSettings};
use portier::embed::probe::{probe, PROBE_MAX_MIN_COSINE, PROBE_MIN_NORM_SPREAD};
use portier::eval::npu_check;
use portier::infer::{ChannelOrder, Optimization, Preprocess, SessionOptions};

/// Every healthy recognizer of the assets with its channel order and whether it is a QDQ model
/// (run with graph optimisation off, as the emulated NPU runs it).
const HEALTHY: [(&str, ChannelOrder, bool); 6] = [
    ("derived/w600k_mbf_dq_fp32.onnx", ChannelOrder::Rgb, false),
    ("recognizers/w600k_mbf_int8_dynamic.onnx", ChannelOrder::Rgb, false),
    ("derived/w600k_mbf_int8_qdq_pct.onnx", ChannelOrder::Rgb, true),
    ("derived/w600k_mbf_int8_qdq_pct_rr.onnx", ChannelOrder::Rgb, true),
    ("recognizers/paddlex_mobilefacenet_128d.onnx", ChannelOrder::Bgr, false),
    ("derived/paddlex_mfn_a16w8_qdq_minmax.onnx", ChannelOrder::Bgr, true),
];

/// PaddleX with INT8 activations: its embeddings collapsed (cosine to float32 about 0.62).
const COLLAPSED: &str = "derived/paddlex_mfn_int8_qdq_pct.onnx";

fn embedder(path: &Path, order: ChannelOrder, qdq: bool) -> CpuEmbedder {
    portier::infer::init(None, 1).unwrap();
    CpuEmbedder::open(RecognizerSettings {
        path: path.to_path_buf(),
        model_id: "probe".into(),
        preprocess: Preprocess { order, mean: [127.5; 3], std: [127.5; 3] },
        flip: false,
        session: SessionOptions {
            optimization: if qdq { Optimization::Disabled } else { Optimization::default() },
        },
    })
    .unwrap()
}

#[test]
fn probe_passes_every_healthy_recognizer_and_fails_collapsed_and_constant_ones() {
    let Some(a) = common::assets() else { return };
    let models = a.join("models");
    for (file, order, qdq) in HEALTHY {
        let r = probe(&mut embedder(&models.join(file), order, qdq)).unwrap();
        eprintln!("{file}: {} norms {:?}", r.summary(), r.norms);
        assert_eq!(r.degenerate, None, "{file}: {}", r.summary());
        assert!(r.min_pair_cosine < PROBE_MAX_MIN_COSINE - 0.4, "{file}: {}", r.summary());
        assert!(r.norm_spread > PROBE_MIN_NORM_SPREAD * 7.0, "{file}: {}", r.summary());
    }
    let r = probe(&mut embedder(&models.join(COLLAPSED), ChannelOrder::Bgr, true)).unwrap();
    eprintln!("{COLLAPSED}: {}", r.summary());
    assert!(r.degenerate.is_some(), "{}", r.summary());
    let dir = tempfile::tempdir().unwrap();
    let constant = dir.path().join("constant.onnx");
    common::constant_recognizer(&constant, 512);
    let r = probe(&mut embedder(&constant, ChannelOrder::Rgb, true)).unwrap();
    eprintln!("constant: {}", r.summary());
    assert!(r.degenerate.is_some(), "{r:?}");
    assert!(r.min_pair_cosine > 0.9999 && r.norm_spread < 1e-6, "{r:?}");
}

/// `board/laptop-npu.toml` (the emulated NPU: w600k_mbf INT8) with absolute asset paths, a
/// scratch gallery in `dir` (its float32 parent is the board's `[npu] twin`); written to `dir`
/// and loaded.
fn laptop_npu(dir: &Path, assets: &Path) -> (std::path::PathBuf, Config) {
    let path = crate::common::board_config("laptop-npu.toml", dir, assets, &dir.join("g.db"));
    let config = Config::load(&path).unwrap();
    let twin = assets.join("models/derived/w600k_mbf_dq_fp32.onnx");
    assert_eq!(config.npu.twin.as_deref(), Some(twin.as_path()));
    (path, config)
}

#[test]
fn npu_check_accepts_the_emulated_int8_model_and_refuses_degenerate_ones() {
    let Some(a) = common::assets() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (_, mut config) = laptop_npu(dir.path(), &a);
    let crops = a.join("golden/aligned_112");
    let r = npu_check::check(&config, &crops).unwrap();
    eprintln!("{}", npu_check::table(&r));
    assert!(r.passed(), "{}", r.summary());
    assert_eq!((r.crops.len(), r.identities), (77, 19));
    // The measured figures behind the limits (see npu_check.rs), with room for other CPUs.
    let twin = r.twin_cosine.unwrap();
    assert!(twin.min > 0.95 && twin.p50 > 0.975, "{twin:?}");
    assert!(r.norm_cv > 3.0 * npu_check::MIN_NORM_CV, "{}", r.norm_cv);
    assert_eq!(r.threshold, 0.32);
    assert!(r.max_impostor.as_ref().unwrap().similarity < r.threshold - 0.03, "{}", r.summary());
    assert_eq!(r.impostors_above, 0);

    // A constant output: every criterion refuses it.
    let constant = dir.path().join("constant.onnx");
    common::constant_recognizer(&constant, 512);
    config.npu.model = Some(constant);
    let r = npu_check::check(&config, &crops).unwrap();
    eprintln!("constant: {}", r.summary());
    assert!(!r.passed());
    for why in ["near-constant norm", "different people match", "float32 twin", "probe"] {
        assert!(r.failures.iter().any(|f| f.contains(why)), "{why}: {:?}", r.failures);
    }

    // PaddleX with INT8 activations (a real collapse) against its float32 parent, at the
    // PaddleX threshold of board/pi5-hailo8.toml.
    let models = a.join("models");
    config.npu.model = Some(models.join(COLLAPSED));
    config.npu.twin = Some(models.join("recognizers/paddlex_mobilefacenet_128d.onnx"));
    config.npu.channel_order = Some(ChannelOrder::Bgr);
    config.routing.as_mut().unwrap().bands[0].threshold_cosine = 0.47;
    let r = npu_check::check(&config, &crops).unwrap();
    eprintln!("paddlex int8: {}", r.summary());
    assert!(!r.passed());
    assert!(r.twin_cosine.unwrap().p50 < 0.8, "{}", r.summary());
    for why in ["different people match", "float32 twin", "probe"] {
        assert!(r.failures.iter().any(|f| f.contains(why)), "{why}: {:?}", r.failures);
    }
}

/// The binary: `portier npu check` exits 0 on the emulated INT8 model and 1 on a constant one;
/// `check-config` names a twin that is not an ONNX model by its key.
#[test]
fn npu_check_command_exit_codes_and_the_twin_key() {
    let Some(a) = common::assets() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = laptop_npu(dir.path(), &a);
    let crops = a.join("golden/aligned_112");
    let run = |config: &Path, args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_portier"))
            .arg("--config")
            .arg(config)
            .args(args)
            .output()
            .unwrap()
    };
    let crops_arg = crops.to_str().unwrap();
    let out = run(&path, &["npu", "check", "--crops", crops_arg]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("deepface__img1.png") && stdout.contains(": accepted"), "{stdout}");

    let constant = dir.path().join("constant.onnx");
    common::constant_recognizer(&constant, 512);
    let text = std::fs::read_to_string(&path).unwrap();
    let model = a.join("models/derived/w600k_mbf_int8_qdq_pct.onnx");
    let bad = dir.path().join("constant.toml");
    std::fs::write(&bad, text.replace(model.to_str().unwrap(), constant.to_str().unwrap()))
        .unwrap();
    let out = run(&bad, &["npu", "check", "--crops", crops_arg, "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!json["failures"].as_array().unwrap().is_empty(), "{json}");
    assert_eq!(json["probe"]["min_pair_cosine"].as_f64().unwrap().round(), 1.0);

    // No crops: a clear error, not a verdict.
    let out = run(&path, &["npu", "check", "--crops", "/nonexistent/aligned_112"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(65), "{stderr}");
    assert!(stderr.contains("/nonexistent"), "{stderr}");

    let twin = a.join("models/derived/w600k_mbf_dq_fp32.onnx");
    std::fs::write(&bad, text.replace(twin.to_str().unwrap(), "/models/w600k.hef")).unwrap();
    let out = run(&bad, &["check-config"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("key `npu.twin`"), "{stderr}");
}

/// `portier run` never uses a degenerate NPU model: the loop, assembled as `run` assembles it,
/// with a constant-output model as the emulated NPU starts on the CPU with an `npu_fallback`
/// event that says why, embeds nothing on the NPU, and grants as the CPU alone does.
#[test]
fn run_keeps_a_degenerate_npu_model_off_and_grants_on_the_cpu() {
    use crate::appliance::{check_hamilton, enroll, replay, video, HAMILTON_FPS, LIN, OBAMA};
    use portier::app::AppEvent;
    let Some(a) = common::assets() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (_, mut config) = laptop_npu(dir.path(), &a);
    let constant = dir.path().join("constant.onnx");
    common::constant_recognizer(&constant, 512);
    config.npu.model = Some(constant);
    enroll(&config, &a, &[LIN, OBAMA]);
    let run = replay(&config, &video(&a, "hamilton_640x480.mjpeg"), HAMILTON_FPS);
    let first = run.events.first();
    let Some(AppEvent::NpuFallback { reason }) = first else { panic!("{first:?}") };
    assert!(reason.contains("degenerate") && reason.contains("w600k_mbf_int8"), "{reason}");
    assert_eq!(run.counters.npu_embeddings, 0, "{}", run.counters);
    check_hamilton(&run, true);
    for e in &run.events {
        if let AppEvent::Granted { backend, .. } = e {
            assert_eq!(*backend, "cpu");
        }
    }
}

/// `portier selftest`'s npu row: the emulated INT8 model passes the probe and the acceptance
/// check on the golden crops; without the crops it warns; a constant model fails the row.
#[test]
fn selftest_npu_row_probes_and_accepts_the_model() {
    use portier::selftest::{run, SelftestOptions, Status};
    let Some(a) = common::assets() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (_, mut config) = laptop_npu(dir.path(), &a);
    let npu_row = |config: &Config, crops: &Path| {
        let options = SelftestOptions { npu_crops: crops.to_path_buf(), ..Default::default() };
        let report = run(config, &options);
        report.check("npu").unwrap().clone()
    };
    let row = npu_row(&config, &a.join("golden/aligned_112"));
    assert_eq!(row.status, Status::Pass, "{}", row.detail);
    assert!(row.detail.contains("77 crops (19 people)") && row.detail.contains("accepted"));
    let row = npu_row(&config, Path::new("/nonexistent"));
    assert_eq!(row.status, Status::Warn, "{}", row.detail);
    assert!(row.detail.contains("probe of 7 synthetic crops") && row.detail.contains(": ok"));
    let constant = dir.path().join("constant.onnx");
    common::constant_recognizer(&constant, 512);
    config.npu.model = Some(constant);
    let row = npu_row(&config, Path::new("/nonexistent"));
    assert_eq!(row.status, Status::Fail, "{}", row.detail);
    assert!(row.detail.contains("DEGENERATE"), "{}", row.detail);
}

/// `portier export-calib` writes the crops in the NPU model's channel order (`[npu]
/// channel_order`, not the CPU recognizer's) and its normalisation as a model-script line.
#[test]
fn export_calib_writes_the_npu_models_channel_order_and_normalisation() {
    use portier::eval::export_calib::{command, ExportCalibArgs, ALLS_NAME};
    let Some(a) = common::assets() else { return };
    let dir = tempfile::tempdir().unwrap();
    let labels = dir.path().join("labels.csv");
    let all = std::fs::read_to_string(a.join("faces/labels.csv")).unwrap();
    std::fs::write(&labels, all.lines().take(3).collect::<Vec<_>>().join("\n")).unwrap();
    let mut config =
        common::config(&a, common::Det::Scrfd500m, common::Rec::W600kFp32, Path::new("/g.db"));
    assert_eq!(config.recognizer.preprocess.order, ChannelOrder::Rgb);
    let export = |config: &Config, out: &str| {
        let args = ExportCalibArgs {
            labels: labels.clone(),
            root: Some(a.join("faces/full")),
            sizes: vec![24],
            output: dir.path().join(out),
            png: false,
        };
        let s = command(config, &args).unwrap();
        let npy = std::fs::read(&s.npy).unwrap();
        let alls = std::fs::read_to_string(dir.path().join(out).join(ALLS_NAME)).unwrap();
        (s, npy, alls)
    };
    // Without [npu] keys: the recognizer's RGB and ArcFace normalisation.
    let (rgb, rgb_npy, alls) = export(&config, "rgb");
    assert_eq!(rgb.preprocess, config.recognizer.preprocess);
    assert!(rgb.crops >= 2, "{rgb:?}");
    assert!(alls.contains("is RGB uint8"), "{alls}");
    assert!(alls.contains("normalization([127.5, 127.5, 127.5], [127.5, 127.5, 127.5])"));
    // A BGR NPU model with its own normalisation.
    config.npu.backend = portier::config::NpuBackend::Emulated;
    config.npu.model = Some(a.join("models/derived/paddlex_mfn_int8_qdq_pct.onnx"));
    config.npu.channel_order = Some(ChannelOrder::Bgr);
    config.npu.std = Some([128.0, 128.0, 128.0]);
    let (bgr, bgr_npy, alls) = export(&config, "bgr");
    assert_eq!(bgr.preprocess.order, ChannelOrder::Bgr);
    assert!(alls.contains("is BGR uint8"), "{alls}");
    assert!(alls.contains("normalization([127.5, 127.5, 127.5], [128.0, 128.0, 128.0])"));
    // The same crops, red and blue swapped (after the same 128-byte header).
    assert_eq!((bgr.crops, bgr_npy.len()), (rgb.crops, rgb_npy.len()));
    let (h, n) = (128, rgb_npy.len());
    assert!(rgb_npy[h..] != bgr_npy[h..]);
    for px in (h..n).step_by(3) {
        assert_eq!(
            [rgb_npy[px], rgb_npy[px + 1], rgb_npy[px + 2]],
            [bgr_npy[px + 2], bgr_npy[px + 1], bgr_npy[px]]
        );
    }
}

/// `portier enroll` and live enrolment open the NPU as `run` does, probe included: a degenerate
/// model is left out (the person gets the CPU's templates only, with a warning) instead of
/// storing the same vector for everyone as their NPU templates.
#[test]
fn enrolment_leaves_a_degenerate_npu_model_out() {
    let Some(a) = common::assets() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (_, mut config) = laptop_npu(dir.path(), &a);
    // `portier enroll` has opened its pipeline (and so ONNX Runtime) by then.
    portier::infer::init(None, 1).unwrap();
    let healthy = portier::npu_state::open_for_enrolment(&config.npu, &config.recognizer).unwrap();
    assert_eq!(healthy.map(|e| e.dim()), Some(512));
    let constant = dir.path().join("constant.onnx");
    common::constant_recognizer(&constant, 512);
    config.npu.model = Some(constant);
    assert!(portier::npu_state::open_for_enrolment(&config.npu, &config.recognizer)
        .unwrap()
        .is_none());
}

/// The Pi's config names a twin the image installs only when its build names it: a configured
/// twin that is not there is left out of the check, which says so and judges the rest.
#[test]
fn npu_check_runs_without_a_twin_that_is_not_installed() {
    let Some(a) = common::assets() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (_, mut config) = laptop_npu(dir.path(), &a);
    let missing = dir.path().join("arcface_mobilefacenet.onnx");
    config.npu.twin = Some(missing.clone());
    let r = npu_check::check(&config, &a.join("golden/aligned_112")).unwrap();
    assert!(r.passed(), "{}", r.summary());
    assert_eq!(
        (r.twin.as_deref(), r.twin_not_installed.as_deref()),
        (None, Some(missing.as_path()))
    );
    assert!(r.twin_cosine.is_none());
    assert!(r.summary().contains("not installed"), "{}", r.summary());
}
