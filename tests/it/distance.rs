//! Face size against recognition, per backend, on the 77 shared labelled photos: the emulated
//! NPUs (QDQ models on the CPU), the reliability verdict of `eval distance`, `calibrate`, and the
//! router against CPU-only and NPU-only. Sizes are subsampled to keep the suite under two
//! minutes on two cores.

use std::path::Path;

use crate::common::{self, Det, Rec};
use portier::eval::calibrate;
use portier::eval::camera::CameraArgs;
use portier::eval::distance::{run_sweep_with_camera, Backends, Line, Mode, Sweep, Thresholds};
use portier::eval::verify::read_labels;
use portier::route::Router;

fn sweep(assets: &Path, rec: Rec, backends: &[(&str, &str)], sizes: &[u32]) -> Sweep {
    sweep_with(assets, rec, backends, sizes, None)
}

fn sweep_with(
    assets: &Path,
    rec: Rec,
    backends: &[(&str, &str)],
    sizes: &[u32],
    camera: Option<&CameraArgs>,
) -> Sweep {
    let cfg = common::config(assets, Det::Scrfd500m, rec, Path::new("/unused.db"));
    sweep_config(assets, &cfg, backends, sizes, camera, None)
}

fn sweep_config(
    assets: &Path,
    cfg: &portier::config::Config,
    backends: &[(&str, &str)],
    sizes: &[u32],
    camera: Option<&CameraArgs>,
    frame: Option<[u32; 2]>,
) -> Sweep {
    let extra: Vec<_> = backends
        .iter()
        .map(|(n, f)| (n.to_string(), assets.join("models/derived").join(f)))
        .collect();
    let mut b = Backends::open(cfg, &extra).unwrap();
    let photos = read_labels(&assets.join("faces/labels.csv"), &assets.join("faces/full")).unwrap();
    assert_eq!(photos.len(), 77);
    run_sweep_with_camera(&mut b, photos, sizes, camera, frame, |_, _| {}).unwrap()
}

/// A far face in a 1280x720 camera frame reaches the detector letterboxed to its 640x640 input,
/// at half its size: at 8 px between the eyes the detector loses most of the faces it finds
/// when it sees them 1:1 (`eval distance --frame`, the far-face issue's measurement).
#[test]
fn far_faces_in_camera_frames_are_found_less_often_than_seen_one_to_one() {
    let Some(assets) = common::assets() else { return };
    let cfg = common::config(&assets, Det::Scrfd500m, Rec::W600kFp32, Path::new("/unused.db"));
    assert_eq!(cfg.detector.input_size, [640, 640]);
    let found = |frame| {
        let r = sweep_config(&assets, &cfg, &[], &[8], None, frame)
            .report(&Thresholds::Fixed(0.32), None);
        let band = &r.modes[0].bands[0];
        (r.frame, band.embedded, band.not_detected)
    };
    let (native, in_frame) = (found(None), found(Some([1280, 720])));
    eprintln!("8 px: 1:1 found/missed {native:?}, in 1280x720 frames {in_frame:?}");
    assert_eq!((native.0.as_deref(), in_frame.0.as_deref()), (None, Some("1280x720")));
    assert_eq!(native.1 + native.2, in_frame.1 + in_frame.2, "the same photos");
    assert!(native.1 >= 70, "{native:?}");
    assert!(in_frame.1 <= 20, "{in_frame:?}");
}

/// The far-face pass (`[detector] far_faces`) sees each tile of a 1280x720 frame at native
/// resolution: the 8 px faces the whole-frame pass loses are found as if seen 1:1, wherever the
/// photo lands in the frame (tile edges included), in frame coordinates (they are recognised).
/// SCRFD's dynamic input runs 320x192 windows (30 tiles); YuNet, the Pi's detector, its fixed
/// 640x640 input (6 tiles).
#[test]
fn the_far_face_pass_finds_far_faces_in_camera_frames() {
    let Some(assets) = common::assets() else { return };
    for (det, rec, least) in [(Det::Scrfd500m, Rec::W600kFp32, 70), (Det::Yunet, Rec::Paddlex, 60)]
    {
        let mut cfg = common::config(&assets, det, rec, Path::new("/unused.db"));
        cfg.detector.fit_input = true;
        cfg.detector.far = Some(portier::detect::far::FarSettings::default());
        let r = sweep_config(&assets, &cfg, &[], &[8], None, Some([1280, 720]))
            .report(&Thresholds::Fixed(0.32), None);
        let band = &r.modes[0].bands[0];
        let rate = band.lines[0].stats.match_rate;
        let far = r.far.clone().unwrap_or_default();
        eprintln!(
            "{det:?} 8 px with the far pass ({far}): found {} missed {} match rate {rate}",
            band.embedded, band.not_detected
        );
        let seen = band.embedded + band.not_detected;
        assert!(band.embedded >= least, "{det:?}: found {} of {seen}", band.embedded);
        assert!(rate >= 0.4, "{det:?}: the far faces' landmarks are where the faces are: {rate}");
        let tiles = if matches!(det, Det::Yunet) { "(6 of them)" } else { "(30 of them)" };
        assert!(far.contains(tiles), "{far}");
    }
}

/// A far face as a camera sees it (defocus, noise, MJPEG) is a third mode beside the same face
/// only downscaled: same photos, the originals untouched, and recognition no better.
#[test]
fn camera_like_frames_are_a_third_mode_and_cost_recognition() {
    let Some(assets) = common::assets() else { return };
    let camera = CameraArgs {
        defocus_px: 4.0,
        focus_eye_px: 48.0,
        optical_blur: 0.5,
        noise: 6.0,
        jpeg_quality: 60,
    };
    let s = sweep_with(&assets, Rec::W600kFp32, &[], &[12], Some(&camera));
    assert_eq!(s.modes, [Mode::Detected, Mode::Reference, Mode::Camera]);
    let report = s.report(&Thresholds::Fixed(0.32), None);
    let (clean, cam) = (&report.modes[0].bands, &report.modes[2].bands);
    assert!(report.camera.as_deref().unwrap().contains("MJPEG quality 60"), "{:?}", report.camera);
    let total = |b: &portier::eval::distance::BandReport| b.embedded + b.not_detected;
    assert_eq!(total(&clean[0]), total(&cam[0]));
    let (c, d) = (&clean[0].lines[0].stats, &cam[0].lines[0].stats);
    eprintln!(
        "12 px: clean {} genuine {:?}; camera {} genuine {:?}",
        c.match_rate, c.genuine, d.match_rate, d.genuine
    );
    assert!(d.genuine.unwrap().mean < c.genuine.unwrap().mean, "degraded faces match worse");
    assert!(d.match_rate <= c.match_rate + 0.02, "{} vs {}", d.match_rate, c.match_rate);
    // The originals (and so every gallery) are the photographs in every mode.
    let (co, ao) = (&clean[1].lines[0].stats, &cam[1].lines[0].stats);
    assert_eq!((co.faces, co.match_rate), (ao.faces, ao.match_rate));
}

/// Match rate (TAR at FAR 1e-3, misses counted) of `line` at each size of the sweep.
fn rates(s: &Sweep, line: Line, router: Option<&portier::route::RoutingConfig>) -> Vec<f64> {
    (0..s.sizes.len())
        .map(|si| {
            let mut r = router.map(|c| Router::new(c.clone(), true).unwrap());
            s.band_stats(0, si, line, &Thresholds::Fixed(0.32), r.as_mut()).match_rate
        })
        .collect()
}

#[test]
fn emulated_int8_w600k_and_the_router() {
    let Some(assets) = common::assets() else { return };
    let s = sweep(&assets, Rec::W600kFp32, &[("int8", "w600k_mbf_int8_qdq_pct.onnx")], &[8, 16]);
    let original = s.sizes.len() - 1;
    // The emulated INT8 NPU stays at cosine >= 0.95 to float32 on every photo at full size.
    let st = s.band_stats(0, original, Line::Backend(1), &Thresholds::Fixed(0.32), None);
    assert_eq!(st.faces, 77);
    let cos = st.cosine_to_float32.unwrap();
    assert!(cos.min >= 0.95, "{cos:?}");

    // Calibrate on the sweep, then compare routed, CPU-only and NPU-only.
    let c = calibrate::calibrate(&s, 1).unwrap();
    eprintln!("{}", c.toml);
    // The CPU recognizer's own thresholds at every size, beside the NPU model's (issue 16).
    assert_eq!(c.routing.cpu_bands.len(), c.routing.bands.len(), "{}", c.toml);
    assert_eq!(c.routing.cpu_bands[0].min_eye_distance_px, 0.0);
    assert!(c.toml.contains("[[routing.cpu_bands]]"), "{}", c.toml);
    let cpu = rates(&s, Line::Backend(0), None);
    let npu = rates(&s, Line::Backend(1), None);
    let routed = rates(&s, Line::Routed { npu: 1 }, Some(&c.routing));
    eprintln!("sizes {:?}\ncpu {cpu:?}\nnpu {npu:?}\nrouted {routed:?}", s.sizes);
    for (k, size) in s.sizes.iter().enumerate() {
        assert!(
            routed[k] >= cpu[k] - calibrate::ROUTE_MAX_LOSS,
            "{size:?}: routed {} vs cpu {}",
            routed[k],
            cpu[k]
        );
        assert!(routed[k] >= npu[k], "{size:?}: routed {} vs npu {}", routed[k], npu[k]);
    }
    // Small faces: the router keeps them on the CPU and does better than the NPU alone.
    assert!(routed[0] > npu[0], "8 px: routed {routed:?} npu {npu:?}");
}

#[test]
fn paddlex_int8_is_flagged_unreliable_and_a16w8_accepted() {
    let Some(assets) = common::assets() else { return };
    let s = sweep(
        &assets,
        Rec::Paddlex,
        &[
            ("int8", "paddlex_mfn_int8_qdq_pct.onnx"),
            ("a16w8", "paddlex_mfn_a16w8_qdq_minmax.onnx"),
        ],
        &[16],
    );
    let report = s.report(&Thresholds::Fixed(0.47), None);
    let int8 = &report.verdicts[0];
    let a16w8 = &report.verdicts[1];
    assert_eq!((int8.backend.as_str(), a16w8.backend.as_str()), ("int8", "a16w8"));
    assert_eq!(int8.reliable_from_px, None, "{int8:?}");
    assert!(a16w8.reliable_from_px.is_some_and(|px| px <= 16), "{a16w8:?}");
    // Calibration refuses to route faces to the collapsed model.
    let err = calibrate::calibrate(&s, 1).unwrap_err().to_string();
    assert!(err.contains("int8") && err.contains("unreliable"), "{err}");
}

/// The Pi's pair (issue 16): the NPU runs one network (here w600k_mbf INT8, its float32 twin as
/// `[npu] twin`), the CPU another (PaddleX, 128-d). The sweep measures the NPU against its twin
/// and the CPU's bands and the routed line on PaddleX itself, so a CPU fallback is judged by
/// PaddleX's thresholds: the NPU's would admit its impostors.
#[test]
fn a_separate_cpu_recognizer_is_measured_on_its_own_scale() {
    let Some(assets) = common::assets() else { return };
    let mut cfg = common::config(&assets, Det::Yunet, Rec::Paddlex, Path::new("/unused.db"));
    cfg.npu.twin = Some(assets.join("models/derived/w600k_mbf_dq_fp32.onnx"));
    cfg.npu.channel_order = Some(portier::infer::ChannelOrder::Rgb);
    let s =
        sweep_config(&assets, &cfg, &[("int8", "w600k_mbf_int8_qdq_pct.onnx")], &[16], None, None);
    assert_eq!(s.backends, ["float32", "int8", "paddlex_mobilefacenet_128d"]);
    assert_eq!(s.cpu, 2);
    let report = s.report(&Thresholds::Fixed(0.47), None);
    // The verdict is the NPU's against its twin; PaddleX has no cosine to another network.
    assert_eq!(report.verdicts.len(), 1);
    assert_eq!(report.verdicts[0].backend, "int8");
    let original = &report.modes[0].bands[1];
    assert_eq!(original.lines[2].stats.faces, 77);
    assert!(original.lines[2].stats.cosine_to_float32.is_none());
    assert!(original.lines[1].stats.cosine_to_float32.unwrap().p50 > 0.95);

    let c = calibrate::calibrate(&s, 1).unwrap();
    eprintln!("{}", c.toml);
    assert!(c.toml.contains("on paddlex_mobilefacenet_128d"), "{}", c.toml);
    let (npu_top, cpu_top) = (
        c.routing.bands.last().unwrap().threshold_cosine,
        c.routing.cpu_bands.last().unwrap().threshold_cosine,
    );
    assert!(cpu_top > npu_top + 0.05, "PaddleX's scale: cpu {cpu_top} npu {npu_top}");

    // PaddleX judged by the NPU model's bands admits its impostors; by its own, at most the
    // calibrated FAR.
    let paddlex = Line::Backend(2);
    let own = s.band_stats(0, 1, paddlex, &Thresholds::Bands(c.routing.clone()), None);
    let mut npu_only = c.routing.clone();
    npu_only.cpu_bands.clear();
    let crossed = s.band_stats(0, 1, paddlex, &Thresholds::Bands(npu_only), None);
    eprintln!(
        "paddlex FAR: own bands {}, the NPU's {}",
        own.far_at_threshold, crossed.far_at_threshold
    );
    assert!(own.far_at_threshold <= 2e-3, "{}", own.far_at_threshold);
    assert!(crossed.far_at_threshold > 5.0 * own.far_at_threshold.max(1e-3));

    // The routed line's CPU is PaddleX: with the NPU given no face, it is PaddleX's line.
    let mut no_npu = c.routing.clone();
    no_npu.npu_min_eye_distance_px = 10_000.0;
    let mut r = Router::new(no_npu.clone(), true).unwrap();
    let routed =
        s.band_stats(0, 1, Line::Routed { npu: 1 }, &Thresholds::Bands(no_npu), Some(&mut r));
    assert_eq!(routed.npu_share, Some(0.0));
    assert_eq!(routed.far_at_threshold, own.far_at_threshold);
    assert_eq!(routed.match_rate, own.match_rate);
}
