//! The appliance loop end to end through `App::step(now)` with a synthetic clock (each frame's
//! nominal time): replayed camera streams of people walking up, the shipped laptop config
//! (YuNet + PaddleX, its thresholds), a gallery enrolled from photos, the fake door.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use portier::app::{App, AppEvent, Counters, Parts, StepOutcome};
use portier::camera::replay::{ReplaySettings, ReplaySource};
use portier::camera::FrameSource;
use portier::config::Config;
use portier::door::fake::LoggedRelay;
use portier::door::DoorEvent;
use portier::gallery::{EnrollMode, Gallery};
use portier::pipeline::{Pipeline, Select};

use crate::common::assets;

/// What a replay did.
pub struct Run {
    /// (name, frame) of every grant.
    pub grants: Vec<(String, u64)>,
    pub events: Vec<AppEvent>,
    pub counters: Counters,
    /// Relay pin level after the run.
    pub relay_high: bool,
}

/// The shipped laptop config with a scratch gallery.
pub fn laptop_config(gallery: &Path) -> Config {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("board/laptop.toml");
    let mut config = Config::load(&path).expect("board/laptop.toml");
    config.gallery_path = gallery.to_path_buf();
    config.gallery_key_file = gallery.with_extension("key");
    config
}

/// Enrols `people` (name, photo relative to faces/full) into the config's gallery.
pub fn enroll(config: &Config, assets: &Path, people: &[(&str, &str)]) {
    let mut pipeline = Pipeline::open(config).unwrap();
    let mut gallery = Gallery::open(&config.gallery_path, &config.gallery_key_file).unwrap();
    // With an NPU configured, its templates too (as `portier enroll` does).
    let mut npu = portier::embed::open_npu(&config.npu, &config.recognizer).unwrap();
    for (name, photo) in people {
        let img = portier::frame::load_image(&assets.join("faces/full").join(photo)).unwrap();
        let faces = pipeline.faces(img.view(), Select::All, None).unwrap();
        assert_eq!(faces.len(), 1, "{photo}");
        let templates = vec![faces[0].embedding.clone()];
        let cpu_id = pipeline.embedder_model_id();
        let mut sets: Vec<(String, Vec<Vec<f32>>)> = vec![(cpu_id, templates)];
        if let Some(n) = npu.as_mut() {
            let mut e = vec![0.0; n.dim()];
            n.embed(pipeline.last_crop(), &mut e).unwrap();
            sets.push((n.model_id().to_string(), vec![e]));
        }
        let sets: Vec<(&str, &[Vec<f32>])> =
            sets.iter().map(|(id, t)| (id.as_str(), t.as_slice())).collect();
        gallery.enroll_models(name, &sets, EnrollMode::New).unwrap();
    }
}

/// Replays `stream` (under assets/video) through the loop, stepping at its nominal rate.
/// The loop's parts as `portier run` assembles them on the CPU: the config's pipeline, the
/// gallery's matcher for its recognizer, `source`, and a fake door idle at its secure level.
/// Also the recognizer's model id and the relay's level.
pub(crate) fn cpu_parts(
    config: &Config,
    source: Box<dyn FrameSource>,
) -> (Parts, String, Arc<AtomicBool>) {
    let pipeline = Pipeline::open(config).unwrap();
    let model = pipeline.embedder_model_id();
    let matcher = Gallery::open(&config.gallery_path, &config.gallery_key_file)
        .unwrap()
        .matcher(&model)
        .unwrap();
    let (door, _, level) = portier::door::fake::idle_door(&config.door.door).unwrap();
    (Parts::cpu(pipeline, source, matcher, Box::new(door)), model, level)
}

/// A replay of `path` at `fps` on the synthetic clock (unpaced).
pub(crate) fn replay_source(path: &Path, fps: f64, looped: bool) -> Box<dyn FrameSource> {
    let settings = ReplaySettings { path: path.to_path_buf(), fps, looped, pace: false };
    Box::new(ReplaySource::open(settings).unwrap())
}

pub fn replay(config: &Config, stream: &Path, fps: f64) -> Run {
    let (mut parts, _, level) = cpu_parts(config, replay_source(stream, fps, false));
    // The NPU side as `portier run` opens it: probed, on the CPU when it fails.
    if let Some(id) = config.npu.model_id() {
        let g = Gallery::open(&config.gallery_path, &config.gallery_key_file).unwrap();
        parts.npu = portier::app::NpuParts::open(config, g.matcher(&id).unwrap()).unwrap();
    }
    if let Some(l) = config.liveness.as_ref().filter(|l| l.enabled) {
        parts.liveness = Some(Box::new(portier::liveness::MiniFasNet::open(&l.settings).unwrap()));
    }
    let mut app = App::new(config.app.clone(), parts).unwrap();
    let mut events = Vec::new();
    let mut frame = 0u64;
    loop {
        let now = Duration::from_secs_f64(frame as f64 / fps);
        match app.step(now).unwrap() {
            StepOutcome::EndOfStream => break,
            _ => frame += 1,
        }
        events.extend(app.drain_events());
    }
    // Let the door relock on the synthetic clock, as `run` does.
    for i in 0..1000u64 {
        if app.door().state().locked {
            break;
        }
        let now = Duration::from_secs_f64(frame as f64 / fps) + Duration::from_millis(20 * i);
        app.step(now).unwrap();
        events.extend(app.drain_events());
    }
    let grants = events
        .iter()
        .filter_map(|e| match e {
            AppEvent::Granted { name, frame, .. } => Some((name.clone(), *frame)),
            _ => None,
        })
        .collect();
    Run { grants, events, counters: app.counters(), relay_high: level.load(Ordering::SeqCst) }
}

pub fn video(assets: &Path, name: &str) -> PathBuf {
    assets.join("video").join(name)
}

pub const LIN: (&str, &str) = ("Lin-Manuel Miranda", "face_recognition/lin-manuel-miranda.png");
pub const OBAMA: (&str, &str) = ("Barack Obama", "face_recognition/obama.jpg");
pub const HAMILTON_FPS: f64 = 29.97;

pub fn check_hamilton(run: &Run, with_obama: bool) {
    let lin: Vec<_> = run.grants.iter().filter(|g| g.0 == LIN.0).collect();
    assert_eq!(lin.len(), 1, "Lin-Manuel granted once: {:?}", run.grants);
    assert!((82..=210).contains(&lin[0].1), "Lin-Manuel granted while facing: {:?}", lin);
    let obama: Vec<_> = run.grants.iter().filter(|g| g.0 == OBAMA.0).collect();
    if with_obama {
        assert_eq!(obama.len(), 1, "Obama granted once: {:?}", run.grants);
        assert!((211..=274).contains(&obama[0].1), "Obama in the audience: {:?}", obama);
    }
    let expected = 1 + usize::from(with_obama);
    assert_eq!(run.grants.len(), expected, "nobody else granted: {:?}", run.grants);
    // Every grant pulsed the relay and the door relocked: the relay ends de-energised.
    let unlocks = run
        .events
        .iter()
        .filter(|e| matches!(e, AppEvent::Door(DoorEvent::Unlocked { .. })))
        .count();
    assert_eq!(unlocks, expected);
    assert!(!run.relay_high, "relay released at the end");
    assert_eq!(run.counters.corrupt_frames, 0);
    assert_eq!(run.counters.frames, 275);
}

#[test]
fn hamilton_grants_lin_manuel_then_obama_and_nobody_else() {
    let Some(a) = assets() else { return };
    let dir = tempfile::tempdir().unwrap();
    let config = laptop_config(&dir.path().join("g.db"));
    enroll(&config, &a, &[LIN]);
    let run = replay(&config, &video(&a, "hamilton_640x480.mjpeg"), HAMILTON_FPS);
    check_hamilton(&run, false);
    assert!(run.counters.unknowns > 0, "the audience is reported unknown");

    enroll(&config, &a, &[OBAMA]);
    let run = replay(&config, &video(&a, "hamilton_640x480.mjpeg"), HAMILTON_FPS);
    check_hamilton(&run, true);
}

#[test]
fn hamilton_720p_works_too() {
    let Some(a) = assets() else { return };
    let dir = tempfile::tempdir().unwrap();
    let config = laptop_config(&dir.path().join("g.db"));
    enroll(&config, &a, &[LIN, OBAMA]);
    let run = replay(&config, &video(&a, "hamilton_1280x720.mjpeg"), HAMILTON_FPS);
    check_hamilton(&run, true);
}

#[test]
fn crowd_with_nobody_enrolled_grants_nobody_even_without_huffman_tables() {
    let Some(a) = assets() else { return };
    let dir = tempfile::tempdir().unwrap();
    let config = laptop_config(&dir.path().join("g.db"));
    Gallery::open(&config.gallery_path, &config.gallery_key_file).unwrap();
    for stream in ["crowd_walk_640x480.mjpeg", "crowd_walk_640x480_nodht.mjpeg"] {
        let run = replay(&config, &video(&a, stream), 25.0);
        assert!(run.grants.is_empty(), "{stream}: {:?}", run.grants);
        assert_eq!(run.counters.frames, 105, "{stream}: every frame decodes");
        assert_eq!(run.counters.corrupt_frames, 0, "{stream}");
        assert!(run.counters.faces >= 105, "{stream}: faces found: {}", run.counters.faces);
    }
}

#[test]
fn corrupt_frames_are_dropped_and_counted_and_the_loop_goes_on() {
    let Some(a) = assets() else { return };
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(video(&a, "hamilton_640x480.mjpeg")).unwrap();
    let frames = portier::camera::replay::split_mjpeg(&bytes);
    // Frames 0..150 with damage: frame 10 truncated, garbage after frame 20, frame 30's
    // entropy data overwritten, and a wrong-size raw frame is covered by the YUYV test.
    let mut stream = Vec::new();
    for (i, &(s, e)) in frames.iter().take(150).enumerate() {
        let f = &bytes[s..e];
        match i {
            10 => stream.extend_from_slice(&f[..f.len() / 2]),
            30 => {
                let mut f = f.to_vec();
                let mid = f.len() / 2;
                f[mid..mid + 400].fill(0x55);
                stream.extend_from_slice(&f);
            }
            _ => stream.extend_from_slice(f),
        }
        if i == 20 {
            stream.extend_from_slice(&[0x13; 1000]);
        }
    }
    let path = dir.path().join("damaged.mjpeg");
    std::fs::write(&path, &stream).unwrap();
    let config = laptop_config(&dir.path().join("g.db"));
    enroll(&config, &a, &[LIN]);
    let run = replay(&config, &path, HAMILTON_FPS);
    assert!(run.counters.corrupt_frames >= 1, "{}", run.counters);
    assert!(run.counters.frames >= 147, "{}", run.counters);
    assert_eq!(run.grants.len(), 1, "still granted after the damage: {:?}", run.grants);
}

#[test]
fn raw_yuyv_frames_decode_like_the_mjpeg_frame() {
    let Some(a) = assets() else { return };
    let yuyv = video(&a, "yuyv/hamilton_640x480_f137.yuyv");
    let data = std::fs::read(&yuyv).unwrap();
    assert_eq!(data.len(), 640 * 480 * 2);
    let mut rgb = portier::frame::RgbImage::new(0, 0);
    portier::frame::yuyv_to_rgb(&data, 640, 480, 0, &mut rgb).unwrap();
    let bytes = std::fs::read(video(&a, "hamilton_640x480.mjpeg")).unwrap();
    let (s, e) = portier::camera::replay::split_mjpeg(&bytes)[137];
    let jpeg = portier::frame::decode_image(&bytes[s..e], Path::new("f137")).unwrap();
    assert_eq!((jpeg.width(), jpeg.height()), (640, 480));
    let mad = rgb
        .as_bytes()
        .iter()
        .zip(jpeg.as_bytes())
        .map(|(&x, &y)| f64::from(x.abs_diff(y)))
        .sum::<f64>()
        / rgb.as_bytes().len() as f64;
    assert!(mad < 6.0, "mean abs difference to the JPEG frame: {mad:.2}");
    // Short buffers and odd widths are refused, not read out of bounds.
    assert!(portier::frame::yuyv_to_rgb(&data[..1000], 640, 480, 0, &mut rgb).is_err());
    assert!(portier::frame::yuyv_to_rgb(&data, 641, 480, 0, &mut rgb).is_err());
}

#[test]
fn panic_in_the_loop_releases_the_relay() {
    // A panicking thread mid-pulse: the panic hook drives the relay to its secure level.
    let relay = LoggedRelay::new(false);
    let level = relay.level();
    portier::door::install_panic_hook(relay.emergency());
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = Arc::clone(&stop);
    let handle = std::thread::spawn(move || {
        let mut relay = relay;
        embedded_hal::digital::OutputPin::set_high(&mut relay).unwrap();
        stop2.store(true, Ordering::SeqCst);
        panic!("injected fault mid-pulse");
    });
    assert!(handle.join().is_err());
    assert!(stop.load(Ordering::SeqCst));
    assert!(!level.load(Ordering::SeqCst), "relay released by the panic hook");
}

/// A config file for the binary: the shipped laptop config with absolute asset paths, a
/// scratch gallery with Lin-Manuel Miranda enrolled, replaying the 640x480 Hamilton stream.
pub(crate) fn cli_config(dir: &Path, assets: &Path) -> PathBuf {
    let path = crate::common::board_config("laptop.toml", dir, assets, &dir.join("gallery.db"));
    let config = Config::load(&path).unwrap();
    enroll(&config, assets, &[LIN]);
    path
}

/// The real binary as the process tests run it: `portier --config CONFIG run EXTRA --replay
/// <the Hamilton clip>`, info logging, no systemd notify socket, no `PORTIER_FAULT` inherited
/// from the test's own environment, every signal at its default (as systemd starts a
/// service: a test suite started in the background of a shell inherits SIGINT and SIGQUIT
/// ignored, and portier rightly leaves an ignored signal ignored).
pub(crate) fn portier_run(config: &Path, assets: &Path, extra: &[&str]) -> std::process::Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_portier"));
    // SAFETY: runs in the forked child before exec; signal(2) is async-signal-safe and changes
    // only the child's dispositions.
    unsafe {
        cmd.pre_exec(|| {
            for signal in 1..32 {
                if signal != libc::SIGKILL && signal != libc::SIGSTOP {
                    libc::signal(signal, libc::SIG_DFL);
                }
            }
            Ok(())
        });
    }
    cmd.arg("--config")
        .arg(config)
        .arg("run")
        .args(extra)
        .arg("--replay")
        .arg(video(assets, "hamilton_640x480.mjpeg"))
        .env("PORTIER_LOG", "info")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("PORTIER_FAULT");
    cmd
}

/// Starts `portier run` on the Hamilton stream in real time, waits until the relay is
/// energised, then calls `kill` and returns (exit status, stderr).
fn run_until_unlocked(
    config: &Path,
    assets: &Path,
    fault: Option<&str>,
    kill: impl FnOnce(u32),
) -> (std::process::ExitStatus, String, String) {
    use std::io::{BufRead, BufReader, Read};
    use std::process::Stdio;
    let mut cmd = portier_run(config, assets, &[]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    if let Some(f) = fault {
        cmd.env("PORTIER_FAULT", f);
    }
    let mut child = cmd.spawn().unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut log = String::new();
    let mut line = String::new();
    let mut kill = Some(kill);
    while stderr.read_line(&mut line).unwrap() > 0 {
        log.push_str(&line);
        if line.contains("relay energised") {
            if let Some(k) = kill.take() {
                k(child.id());
            }
        }
        line.clear();
    }
    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    (child.wait().unwrap(), log, out)
}

/// Issue 20: a replay runs on the stream's own clock, so the same clip gives byte-identical
/// decisions and counters every run: two `--fast` runs and one paced run of `portier run` on
/// the Hamilton clip, all three at once on a loaded machine (the paced one falls behind real
/// time), agree on the summary, every grant (frame and similarity) and every decision logged
/// (grants, unknown faces, tailgating, the door's releases and their ends).
#[test]
fn the_hamilton_replay_gives_the_same_decisions_paced_or_fast() {
    use std::process::Stdio;
    let Some(a) = assets() else { return };
    let dir = tempfile::tempdir().unwrap();
    let config_path = cli_config(dir.path(), &a);
    enroll(&Config::load(&config_path).unwrap(), &a, &[OBAMA]);
    let runs: Vec<_> = [&["--fast"][..], &["--fast"], &[]]
        .iter()
        .map(|extra| {
            portier_run(&config_path, &a, extra)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let decisions = |log: &str| -> Vec<String> {
        log.lines()
            .filter_map(|l| l.split_once("] ").map(|(_, msg)| msg))
            .filter(|m| {
                ["granted ", "unknown face", "tailgating", "door: unlocked", "no longer matches"]
                    .iter()
                    .any(|k| m.contains(k))
            })
            .map(str::to_owned)
            .collect()
    };
    let outs: Vec<(String, Vec<String>)> = runs
        .into_iter()
        .map(|child| {
            let out = child.wait_with_output().unwrap();
            let (stdout, stderr) =
                (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            assert!(out.status.success(), "{:?}\n{stderr}", out.status);
            (stdout.into_owned(), decisions(&stderr))
        })
        .collect();
    let (stdout, log) = &outs[0];
    assert!(stdout.contains("granted: Lin-Manuel Miranda at frame"), "{stdout}");
    assert!(stdout.contains("granted: Barack Obama at frame"), "{stdout}");
    assert!(log.iter().any(|l| l.starts_with("unknown face")), "{log:#?}");
    assert!(log.iter().any(|l| l.starts_with("door: unlocked")), "{log:#?}");
    for (i, (other_out, other_log)) in outs.iter().enumerate().skip(1) {
        let kind = if i == 2 { "paced" } else { "second --fast" };
        assert_eq!(other_out, stdout, "the {kind} run's summary differs");
        assert_eq!(other_log, log, "the {kind} run's decisions differ");
    }
}

#[test]
fn sigterm_mid_pulse_releases_the_relay_and_exits_cleanly() {
    let Some(a) = assets() else { return };
    let dir = tempfile::tempdir().unwrap();
    let config = cli_config(dir.path(), &a);
    let (status, log, out) = run_until_unlocked(&config, &a, None, |pid| {
        // SAFETY-free: plain kill(1) on the child we started.
        std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status().unwrap();
    });
    assert!(status.success(), "exit {status:?}\n{log}");
    let energised = log.find("relay energised").expect("unlocked before the signal");
    let released = log.rfind("relay released").expect(&log);
    assert!(released > energised, "{log}");
    assert!(log.contains("stopping on request"), "{log}");
    assert!(out.contains("granted: Lin-Manuel Miranda"), "{out}");
}

#[test]
fn panic_mid_pulse_releases_the_relay() {
    let Some(a) = assets() else { return };
    let dir = tempfile::tempdir().unwrap();
    let config = cli_config(dir.path(), &a);
    let (status, log, _) = run_until_unlocked(&config, &a, Some("panic-on-grant"), |_| {});
    assert_eq!(status.code(), Some(101), "a panic exits 101\n{log}");
    let energised = log.find("relay energised").expect(&log);
    let released = log.find("relay released by the emergency path").expect(&log);
    assert!(released > energised, "{log}");
}

#[test]
fn the_display_shows_the_grant_as_snapshots() {
    let Some(a) = assets() else { return };
    let dir = tempfile::tempdir().unwrap();
    let config = cli_config(dir.path(), &a);
    let shots = dir.path().join("screens");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portier"))
        .arg("--config")
        .arg(&config)
        .args(["run", "--fast", "--snapshot-dir"])
        .arg(&shots)
        .arg("--replay")
        .arg(video(&a, "hamilton_640x480.mjpeg"))
        .env("PORTIER_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut kinds: Vec<String> = std::fs::read_dir(&shots)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    kinds.sort();
    // Redrawn on change only: a handful of screens for 275 frames, the grant among them.
    assert!(kinds.iter().any(|k| k.ends_with("-granted.png")), "{kinds:?}");
    assert!(kinds.iter().any(|k| k.ends_with("-idle.png")), "{kinds:?}");
    assert!(kinds.len() < 60, "{} screens: {kinds:?}", kinds.len());
}

/// Wraps an embedder (fault injection).
pub(crate) type Wrap<'a> =
    &'a dyn Fn(Box<dyn portier::embed::Embedder>) -> Box<dyn portier::embed::Embedder>;

/// The NPU side for `config` (emulated), its embedder optionally wrapped.
pub(crate) fn npu_parts(config: &Config, wrap: Option<Wrap<'_>>) -> Option<portier::app::NpuParts> {
    let embedder = portier::embed::open_npu(&config.npu, &config.recognizer).unwrap()?;
    let embedder = match wrap {
        Some(w) => w(embedder),
        None => embedder,
    };
    let id = embedder.model_id().to_string();
    let matcher = Gallery::open(&config.gallery_path, &config.gallery_key_file)
        .unwrap()
        .matcher(&id)
        .unwrap();
    let routing = portier::route::RoutingConfig::default_for(config.matching.threshold);
    let router = portier::route::Router::new(routing, true).unwrap();
    Some(portier::app::NpuParts { embedder, matcher, router, fallback: None, not_installed: None })
}

/// The laptop config with the emulated NPU: w600k_mbf INT8 (QDQ) on the CPU.
pub(crate) fn with_emulated_npu(mut config: Config, assets: &Path) -> Config {
    config.npu.backend = portier::config::NpuBackend::Emulated;
    config.npu.model = Some(assets.join("models/derived/w600k_mbf_int8_qdq_pct.onnx"));
    config.npu.id = Some("w600k_mbf_int8".into());
    config
}

#[test]
fn with_the_emulated_npu_close_faces_are_embedded_there_and_the_grants_are_the_same() {
    let Some(a) = assets() else { return };
    let dir = tempfile::tempdir().unwrap();
    let config = with_emulated_npu(laptop_config(&dir.path().join("g.db")), &a);
    enroll(&config, &a, &[LIN, OBAMA]);
    // Templates for both embedding spaces, from one transaction per person.
    let g = Gallery::open(&config.gallery_path, &config.gallery_key_file).unwrap();
    assert_eq!(g.matcher("w600k_mbf_int8").unwrap().people(), 2);
    assert_eq!(g.matcher("w600k_mbf_fp32").unwrap().people(), 2);
    let run = replay(&config, &video(&a, "hamilton_640x480.mjpeg"), HAMILTON_FPS);
    check_hamilton(&run, true);
    assert!(run.counters.npu_embeddings > 0, "{}", run.counters);
    for e in &run.events {
        if let AppEvent::Granted { backend, eye_px, .. } = e {
            assert_eq!(*backend, "npu", "a face {eye_px:.0} px between the eyes goes to the NPU");
        }
    }
}

/// Issue 16: people enrolled while the NPU's model was not installed have CPU templates only.
/// Once the NPU works, their close faces must not go to it (they would match nobody there):
/// the loop keeps every face on the CPU, says why, and still grants them.
#[test]
fn people_enrolled_without_npu_templates_are_recognised_on_the_cpu() {
    let Some(a) = assets() else { return };
    let dir = tempfile::tempdir().unwrap();
    let cpu_only = laptop_config(&dir.path().join("g.db"));
    enroll(&cpu_only, &a, &[LIN]);
    let config = with_emulated_npu(cpu_only, &a);
    let source = replay_source(&video(&a, "hamilton_640x480.mjpeg"), HAMILTON_FPS, false);
    let (mut parts, _, _) = cpu_parts(&config, source);
    parts.npu = npu_parts(&config, None);
    let mut app = App::new(config.app.clone(), parts).unwrap();
    assert_eq!(app.npu_use(), portier::app::NpuUse::TemplatesMissing);
    let events = hamilton_to_the_end(&mut app);
    assert_eq!(app.counters().npu_embeddings, 0, "{}", app.counters());
    let grants: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            AppEvent::Granted { name, backend, .. } => Some((name.clone(), *backend)),
            _ => None,
        })
        .collect();
    assert_eq!(grants, [(LIN.0.to_owned(), "cpu")]);
}

/// Steps `app` through the Hamilton clip on its own clock; every event, in order.
fn hamilton_to_the_end(app: &mut App) -> Vec<AppEvent> {
    let mut events = Vec::new();
    let mut frame = 0u64;
    loop {
        let now = Duration::from_secs_f64(frame as f64 / HAMILTON_FPS);
        if app.step(now).unwrap() == StepOutcome::EndOfStream {
            return events;
        }
        frame += 1;
        events.extend(app.drain_events());
    }
}

/// An embedder that fails every call after the first `ok` ones (a device that dies).
struct Dying {
    inner: Box<dyn portier::embed::Embedder>,
    ok: usize,
    calls: usize,
}

impl portier::embed::Embedder for Dying {
    fn model_id(&self) -> &str {
        self.inner.model_id()
    }
    fn dim(&self) -> usize {
        self.inner.dim()
    }
    fn embed(
        &mut self,
        face: &portier::align::AlignedFace,
        out: &mut [f32],
    ) -> Result<f32, portier::embed::EmbedError> {
        self.calls += 1;
        if self.calls > self.ok {
            return Err(portier::embed::EmbedError::Device {
                backend: "hailo",
                source: "HAILO_TIMEOUT (4)".into(),
            });
        }
        self.inner.embed(face, out)
    }
}

#[test]
fn when_the_npu_dies_every_face_goes_to_the_cpu_with_one_event_and_grants_continue() {
    let Some(a) = assets() else { return };
    let dir = tempfile::tempdir().unwrap();
    let config = with_emulated_npu(laptop_config(&dir.path().join("g.db")), &a);
    enroll(&config, &a, &[LIN]);
    let source = replay_source(&video(&a, "hamilton_640x480.mjpeg"), HAMILTON_FPS, false);
    let (mut parts, _, _) = cpu_parts(&config, source);
    let die =
        |inner| -> Box<dyn portier::embed::Embedder> { Box::new(Dying { inner, ok: 5, calls: 0 }) };
    parts.npu = npu_parts(&config, Some(&die));
    let mut app = App::new(config.app.clone(), parts).unwrap();
    let events = hamilton_to_the_end(&mut app);
    let fallbacks = events.iter().filter(|e| matches!(e, AppEvent::NpuFallback { .. })).count();
    assert_eq!(fallbacks, 1, "one event when the NPU fails");
    assert!(!app.npu_up());
    let grants: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            AppEvent::Granted { name, backend, frame, .. } => {
                Some((name.clone(), *backend, *frame))
            }
            _ => None,
        })
        .collect();
    assert_eq!(grants.len(), 1, "{grants:?}");
    assert_eq!(grants[0].0, LIN.0);
    assert_eq!(grants[0].1, "cpu", "granted on the CPU after the NPU died");
}

/// Issue 16: an NPU that cannot be opened when `portier run` starts does not stop the door.
/// The real binary with the emulated NPU's model missing at start runs on the CPU (one
/// `npu_fallback` event, exit 0 at the end, not 69), opens the NPU once the model appears, and
/// grants throughout.
#[test]
fn an_npu_missing_at_start_runs_on_the_cpu_and_is_opened_later() {
    use std::io::{BufRead, BufReader, Read};
    use std::process::Stdio;
    let Some(a) = assets() else { return };
    let dir = tempfile::tempdir().unwrap();
    let config_path = cli_config(dir.path(), &a);
    // Enrol again with the NPU's templates too, its model at a path we control.
    let model = dir.path().join("npu.onnx");
    std::fs::copy(a.join("models/derived/w600k_mbf_int8_qdq_pct.onnx"), &model).unwrap();
    let mut text = std::fs::read_to_string(&config_path).unwrap();
    text.push_str(&format!(
        "\n[npu]\nbackend = \"emulated\"\nmodel = \"{}\"\nid = \"w600k_mbf_int8\"\n\
         threshold_rise_per_decade = 0.054\n\n[routing]\n\
         npu_min_eye_distance_px = 12.0\nnpu_retry_ms = 500\n[[routing.bands]]\n\
         min_eye_distance_px = 0.0\nthreshold_cosine = 0.32\n",
        model.display()
    ));
    std::fs::write(&config_path, text).unwrap();
    let config = Config::load(&config_path).unwrap();
    std::fs::remove_file(&config.gallery_path).unwrap();
    enroll(&config, &a, &[LIN]);
    let parked = dir.path().join("parked.onnx");
    std::fs::rename(&model, &parked).unwrap();

    let mut child = portier_run(&config_path, &a, &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut log = String::new();
    let mut line = String::new();
    let mut restored = false;
    while stderr.read_line(&mut line).unwrap() > 0 {
        log.push_str(&line);
        if !restored && line.contains("npu: cannot ") {
            // The model arrives while the door runs on the CPU.
            std::fs::rename(&parked, &model).unwrap();
            restored = true;
        }
        line.clear();
    }
    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}\n{log}");
    assert!(restored, "{log}");
    // A missing model file is "not installed": CPU only, said so, not an error.
    assert!(log.contains("not installed (no such file)") && log.contains("CPU only"), "{log}");
    assert!(log.contains("npu: opened w600k_mbf_int8 after a failed start"), "{log}");
    assert!(log.contains("npu back"), "{log}");
    assert!(out.contains("granted: Lin-Manuel Miranda"), "{out}\n{log}");
}

/// Issue 15: MQTT trouble never stops the door, not even a credential file missing at start
/// (a freshly flashed device before the technician has put the broker's password in place):
/// `portier run` grants on its own and says loudly that it runs without MQTT.
#[test]
fn a_missing_mqtt_credential_file_does_not_stop_the_door() {
    let Some(a) = assets() else { return };
    let dir = tempfile::tempdir().unwrap();
    let config_path = cli_config(dir.path(), &a);
    let mut text = std::fs::read_to_string(&config_path).unwrap();
    text.push_str(&format!(
        "\n[mqtt]\nenabled = true\nhost = \"127.0.0.1\"\nport = 9\nusername = \"portier\"\n\
         password_file = \"{}\"\nallow_plaintext_password = true\ndevice_id = \"frontdoor\"\n\
         outbox_dir = \"{}\"\n",
        dir.path().join("missing.password").display(),
        dir.path().join("outbox").display()
    ));
    std::fs::write(&config_path, text).unwrap();
    let out = portier_run(&config_path, &a, &["--fast"]).output().unwrap();
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{:?}\n{stderr}", out.status);
    assert!(stderr.contains("the door runs WITHOUT MQTT"), "{stderr}");
    assert!(stderr.contains("missing.password"), "{stderr}");
    assert!(stdout.contains("granted: Lin-Manuel Miranda"), "{stdout}\n{stderr}");
}

/// Frames of a person walking up to a 1280x720 camera: the face of `photo` grows from
/// `from_px` to `to_px` between the eyes over `frames` frames, its centre fixed at (250, 200) on
/// a grey wall, as a Pi camera sees it (README "On the Pi": defocus, demosaicing blur, noise,
/// MJPEG). PNG files in `dir`, in order.
fn walk_up(photo: &Path, dir: &Path, from_px: f32, to_px: f32, frames: usize) {
    let config = laptop_config(&dir.join("unused.db"));
    let mut pipeline = Pipeline::open(&config).unwrap();
    let img = portier::frame::load_image(photo).unwrap();
    let faces = pipeline.faces(img.view(), Select::NearestCentre, None).unwrap();
    let face = faces[0].detection;
    let mut resizer = portier::frame::Resizer::default();
    let (cw, ch) = (1280usize, 720usize);
    let camera = portier::eval::camera::CameraArgs {
        defocus_px: 1.5,
        focus_eye_px: 48.0,
        optical_blur: 0.6,
        noise: 3.0,
        jpeg_quality: 75,
    };
    for i in 0..frames {
        let eye = from_px + (to_px - from_px) * i as f32 / (frames - 1) as f32;
        let f = eye / face.eye_distance();
        assert!(f <= 1.0, "the photo is only shrunk");
        let (w, h) =
            ((img.width() as f32 * f).round() as u32, (img.height() as f32 * f).round() as u32);
        let c = face.centre();
        let (ox, oy) = ((250.0 - c[0] * f).round() as usize, (200.0 - c[1] * f).round() as usize);
        let mut canvas = vec![96u8; cw * ch * 3];
        resizer.resize_into(
            img.view(),
            &mut canvas[(oy * cw + ox) * 3..],
            cw,
            w,
            h,
            portier::frame::Filter::Antialiased,
        );
        let mut frame = portier::frame::RgbImage::from_raw(cw as u32, ch as u32, canvas).unwrap();
        camera.degrade(&mut frame, eye, i as u64).unwrap();
        let path = dir.join(format!("frame{i:04}.png"));
        let (w, h) = (frame.width(), frame.height());
        image::save_buffer(&path, frame.as_bytes(), w, h, image::ExtendedColorType::Rgb8).unwrap();
    }
}

/// The far-face pass on the shipped laptop config: Colin Powell (enrolled from another LFW
/// photo) walking up from 8 px between the eyes (4 at the 640x384 whole-frame pass) is found
/// within one rotation of the far pass's tiles, followed at native resolution while he is
/// small, recognised early (one track from far to near: no "unknown" on the way) and granted
/// once, only at the approach distance. Without the pass he is found later; the grant is the
/// same.
#[test]
fn a_far_face_walking_up_is_found_early_and_granted_once_when_close() {
    const FRAMES: u64 = 240;
    let Some(a) = assets() else { return };
    let dir = tempfile::tempdir().unwrap();
    let frames_dir = dir.path().join("frames");
    std::fs::create_dir(&frames_dir).unwrap();
    let lfw = a.join("lfw-dev/images/Colin_Powell");
    walk_up(&lfw.join("Colin_Powell_0074.jpg"), &frames_dir, 8.0, 40.0, FRAMES as usize);
    let enrolled = ("Colin Powell", "../../lfw-dev/images/Colin_Powell/Colin_Powell_0038.jpg");
    let run = |far: bool| {
        let mut config = laptop_config(&dir.path().join(format!("g{far}.db")));
        assert!(config.detector.far.is_some(), "board/laptop.toml runs the far-face pass");
        if !far {
            config.detector.far = None;
        }
        // A 40 px face is 14% of the frame tall: the approach distance is 12% here.
        config.app.decision.min_face_height_pct = 12.0;
        enroll(&config, &a, &[enrolled]);
        let (parts, _, _) = cpu_parts(&config, replay_source(&frames_dir, 30.0, false));
        let mut app = App::new(config.app.clone(), parts).unwrap();
        let (mut first_found, mut events, mut closer) = (None, Vec::new(), 0);
        for i in 0..FRAMES {
            match app.step(Duration::from_secs_f64(i as f64 / 30.0)).unwrap() {
                StepOutcome::Frame { faces, .. } if faces > 0 => {
                    first_found.get_or_insert(i);
                }
                _ => {}
            }
            closer += usize::from(app.step_closer());
            events.extend(app.drain_events());
        }
        (first_found, events, app.counters(), closer)
    };
    let (found_far, events_far, counters_far, closer_far) = run(true);
    let (found_near, events_near, counters_near, _) = run(false);
    eprintln!(
        "far pass: first found at frame {found_far:?}, {counters_far}; without: {found_near:?}, \
         {counters_near}"
    );
    let found_far = found_far.expect("found with the far pass");
    assert!(found_far < 31, "within one rotation of the 30 tiles: frame {found_far}");
    assert!(found_near.is_none_or(|n| n > found_far + 10), "{found_near:?} vs {found_far}");
    assert!(counters_far.far_faces > 3, "followed while the whole-frame pass misses him");
    assert!(counters_far.faces > counters_near.faces, "{counters_far} vs {counters_near}");
    assert!(closer_far > 10, "recognised while too far to be granted: step closer");
    for events in [&events_far, &events_near] {
        let grants: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                AppEvent::Granted { name, frame, .. } => Some((name.as_str(), *frame)),
                _ => None,
            })
            .collect();
        eprintln!("grants {grants:?}");
        assert_eq!(grants.len(), 1, "{grants:?}");
        assert_eq!(grants[0].0, enrolled.0);
        assert!(grants[0].1 >= 150, "granted only at the approach distance: {grants:?}");
        let unknown = events.iter().filter(|e| matches!(e, AppEvent::Unknown { .. })).count();
        assert_eq!(unknown, 0, "one track from far to near: {events:?}");
    }
}

/// `portier bench startup` (issue 21) starts the real binary on a replay: every phase of the
/// start-up is timed, in order, and the first frame is decided after the loop started.
#[test]
fn bench_startup_times_every_phase_up_to_the_first_decided_frame() {
    let Some(a) = assets() else { return };
    let dir = tempfile::tempdir().unwrap();
    let config = cli_config(dir.path(), &a);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portier"))
        .arg("--config")
        .arg(&config)
        .args(["bench", "startup", "--runs", "2", "--json", "--replay"])
        .arg(video(&a, "hamilton_640x480.mjpeg"))
        .env("PORTIER_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> =
        r["phases"].as_array().unwrap().iter().map(|p| p[0].as_str().unwrap()).collect();
    assert_eq!(names, ["config", "door", "camera", "models", "gallery", "npu", "liveness", "loop"]);
    let runs = r["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    for run in runs {
        let f = |k: &str| run[k].as_f64().unwrap();
        let sum: f64 =
            run["phases"].as_array().unwrap().iter().map(|p| p[1].as_f64().unwrap()).sum();
        assert!((sum - f("main_to_loop_ms")).abs() < 1.0, "{run}");
        // The child's own clock starts after the spawn; the first frame comes after the loop.
        assert!(f("main_to_loop_ms") <= f("spawn_to_loop_ms") + 1.0, "{run}");
        assert!(f("spawn_to_loop_ms") <= f("spawn_to_first_decided_ms"), "{run}");
        assert!(
            run["phases"][3][1].as_f64().unwrap() > 1.0,
            "opening the models takes time: {run}"
        );
    }
}
