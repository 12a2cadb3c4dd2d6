//! Live enrolment (`portier enroll --from-camera`) from replayed camera streams with the shipped
//! laptop config: the enrolled person is then granted by the loop on a later replay; two
//! people in view, a resemblance and a kill before the commit store nothing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use portier::camera::replay::{split_mjpeg, ReplaySettings, ReplaySource};
use portier::config::Config;
use portier::enroll_camera::{command, LiveArgs};
use portier::enroll_live::{capture, Capture, EnrolError, EnrolSettings, Refusal};
use portier::gallery::{EnrollMode, Gallery};
use portier::pipeline::Pipeline;

use crate::appliance::{enroll, laptop_config, replay, with_emulated_npu};
use crate::common::assets;

const SELFIE_FPS: f64 = 17.6;
const HAMILTON_FPS: f64 = 29.97;
const LIN: &str = "Lin-Manuel Miranda";

fn video(assets: &Path, name: &str) -> PathBuf {
    assets.join("video").join(name)
}

/// Frames `first..=last` of an MJPEG stream, written to `dir` as a stream of their own.
fn segment(stream: &Path, first: usize, last: usize, dir: &Path) -> PathBuf {
    let bytes = std::fs::read(stream).unwrap();
    let mut out = Vec::new();
    for &(s, e) in &split_mjpeg(&bytes)[first..=last] {
        out.extend_from_slice(&bytes[s..e]);
    }
    let path = dir.join(format!("segment_{first}_{last}.mjpeg"));
    std::fs::write(&path, out).unwrap();
    path
}

fn args(name: &str, replay: &Path, fps: f64) -> LiveArgs {
    LiveArgs {
        name: name.into(),
        append: false,
        seconds: None,
        replay: Some(replay.to_path_buf()),
        fps: Some(fps),
        allow_similar: false,
    }
}

/// Captures from a replay and finishes, without storing.
fn capture_only(
    config: &Config,
    stream: &Path,
    fps: f64,
    name: &str,
) -> Result<Capture, EnrolError> {
    let mut pipeline = Pipeline::open(config).unwrap();
    let gallery = Gallery::open(&config.gallery_path, &config.gallery_key_file).unwrap();
    let matcher = gallery.matcher(&pipeline.embedder_model_id()).unwrap();
    let settings = ReplaySettings { path: stream.to_path_buf(), fps, looped: false, pace: false };
    let mut source = ReplaySource::open(settings).unwrap();
    let live = capture(
        &mut source,
        &mut pipeline.detector,
        EnrolSettings::from_config(config),
        Duration::from_secs(1),
    )?;
    live.finish(&mut pipeline.embedder, &matcher, name)
}

fn people(config: &Config) -> Vec<(String, Vec<(String, usize)>)> {
    Gallery::open(&config.gallery_path, &config.gallery_key_file)
        .unwrap()
        .list()
        .unwrap()
        .into_iter()
        .map(|p| (p.name, p.templates))
        .collect()
}

#[test]
fn selfie_stream_enrols_one_person_who_is_then_granted() {
    let Some(a) = assets() else { return };
    let dir = tempfile::tempdir().unwrap();
    let config = laptop_config(&dir.path().join("g.db"));
    let stream = video(&a, "selfie_portrait_640x480.mjpeg");
    command(&config, &args("Visitor", &stream, SELFIE_FPS)).unwrap();
    let model = config.recognizer.model_id.clone();
    assert_eq!(people(&config), [("Visitor".to_string(), vec![(model, 5)])]);

    let run = replay(&config, &stream, SELFIE_FPS);
    assert!(!run.grants.is_empty(), "granted on the later replay: {}", run.counters);
    assert!(run.grants.iter().all(|g| g.0 == "Visitor"), "{:?}", run.grants);
}

#[test]
fn hamilton_facing_segment_enrols_lin_manuel_who_is_granted_on_the_full_replay() {
    let Some(a) = assets() else { return };
    let dir = tempfile::tempdir().unwrap();
    let config = laptop_config(&dir.path().join("g.db"));
    let full = video(&a, "hamilton_640x480.mjpeg");
    let facing = segment(&full, 82, 210, dir.path());
    command(&config, &args(LIN, &facing, HAMILTON_FPS)).unwrap();
    let model = config.recognizer.model_id.clone();
    assert_eq!(people(&config), [(LIN.to_string(), vec![(model, 5)])]);

    let run = replay(&config, &full, HAMILTON_FPS);
    assert_eq!(run.grants.len(), 1, "Lin-Manuel granted once, nobody else: {:?}", run.grants);
    assert_eq!(run.grants[0].0, LIN);
    assert!((82..=210).contains(&run.grants[0].1), "granted while facing: {:?}", run.grants);
}

#[test]
fn two_people_in_view_are_refused_and_nothing_is_stored() {
    let Some(a) = assets() else { return };
    let dir = tempfile::tempdir().unwrap();
    let config = laptop_config(&dir.path().join("g.db"));
    let audience = segment(&video(&a, "hamilton_640x480.mjpeg"), 211, 274, dir.path());
    for (stream, fps) in [(audience, HAMILTON_FPS), (video(&a, "crowd_walk_640x480.mjpeg"), 25.0)] {
        let err = command(&config, &args("Somebody", &stream, fps)).unwrap_err();
        assert!(
            matches!(err, EnrolError::Refused(Refusal::TwoPeople { .. })),
            "{}: {err}",
            stream.display()
        );
        assert!(err.to_string().contains("two people in view"), "{err}");
        assert_eq!(portier::exit::Exit::from(&err), portier::exit::Exit::DataErr);
    }
    assert!(people(&config).is_empty());
}

#[test]
fn a_kill_before_the_commit_stores_nothing() {
    let Some(a) = assets() else { return };
    let dir = tempfile::tempdir().unwrap();
    let config = laptop_config(&dir.path().join("g.db"));
    let stream = video(&a, "selfie_portrait_640x480.mjpeg");
    // Everything up to the commit: capture, embed, checks.
    let captured = capture_only(&config, &stream, SELFIE_FPS, "Visitor").unwrap();
    assert_eq!(captured.templates.len(), 5);
    // Templates spread over the capture, not consecutive frames.
    let frames: Vec<u64> = captured.faces.iter().map(|f| f.frame).collect();
    assert!(frames.windows(2).all(|w| w[1] >= w[0] + 3), "{frames:?}");
    drop(captured);
    // The process dies here: the gallery holds nobody.
    assert!(people(&config).is_empty());
    // The same capture committed: one transaction, one person with every template.
    let captured = capture_only(&config, &stream, SELFIE_FPS, "Visitor").unwrap();
    let mut gallery = Gallery::open(&config.gallery_path, &config.gallery_key_file).unwrap();
    captured.commit(&mut gallery, "Visitor", EnrollMode::New).unwrap();
    assert_eq!(people(&config)[0].1[0].1, 5);
}

/// With an NPU configured (here the emulated INT8 one), the same kept faces are embedded for
/// its model too and both template sets land in one transaction, so the person is recognised
/// on either backend.
#[test]
fn with_an_npu_the_capture_stores_templates_for_both_models() {
    let Some(a) = assets() else { return };
    let dir = tempfile::tempdir().unwrap();
    let config = with_emulated_npu(laptop_config(&dir.path().join("g.db")), &a);
    let stream = video(&a, "selfie_portrait_640x480.mjpeg");
    command(&config, &args("Visitor", &stream, SELFIE_FPS)).unwrap();
    let listed = people(&config);
    assert_eq!(listed.len(), 1);
    let mut models: Vec<(String, usize)> = listed[0].1.clone();
    models.sort();
    assert_eq!(models.len(), 2, "{models:?}");
    assert!(models.iter().all(|(_, n)| *n == 5), "{models:?}");
    assert!(models.iter().any(|(id, _)| id == "w600k_mbf_int8"), "{models:?}");
}

#[test]
fn resembling_someone_enrolled_is_refused_unless_allowed() {
    let Some(a) = assets() else { return };
    let dir = tempfile::tempdir().unwrap();
    let config = laptop_config(&dir.path().join("g.db"));
    enroll(&config, &a, &[(LIN, "face_recognition/lin-manuel-miranda.png")]);
    let facing = segment(&video(&a, "hamilton_640x480.mjpeg"), 82, 210, dir.path());
    let mut args = args("Someone Else", &facing, HAMILTON_FPS);
    let err = command(&config, &args).unwrap_err();
    let EnrolError::Resembles { other, similarity, .. } = &err else { panic!("{err}") };
    assert_eq!(other, LIN);
    assert!(*similarity >= config.matching.threshold, "{err}");
    assert_eq!(portier::exit::Exit::from(&err), portier::exit::Exit::DataErr);
    assert_eq!(people(&config).len(), 1, "nothing stored");
    args.allow_similar = true;
    command(&config, &args).unwrap();
    assert_eq!(people(&config).len(), 2);
}

#[test]
fn cli_enrol_from_camera_refuses_two_people_with_exit_65() {
    let Some(a) = assets() else { return };
    let dir = tempfile::tempdir().unwrap();
    // The laptop config with absolute asset paths and a scratch gallery.
    let cfg =
        crate::common::board_config("laptop.toml", dir.path(), &a, &dir.path().join("gallery.db"));
    let audience = segment(&video(&a, "hamilton_640x480.mjpeg"), 211, 274, dir.path());
    let run = |name: &str, stream: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_portier"))
            .arg("--config")
            .arg(&cfg)
            .args(["enroll", "--name", name, "--from-camera", "--replay"])
            .arg(stream)
            .output()
            .unwrap()
    };
    let out = run("Somebody", &audience);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(65), "{stderr}");
    assert!(stderr.contains("two people in view"), "{stderr}");
    let facing = segment(&video(&a, "hamilton_640x480.mjpeg"), 82, 210, dir.path());
    let out = run(LIN, &facing);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("enrolled Lin-Manuel Miranda with 5 template(s)"), "{stdout}");
}
