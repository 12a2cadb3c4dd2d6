//! The `portier` command line: parses arguments, opens what the command needs, prints results,
//! and exits with the status `portier::exit` gives each error. No logic lives here.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use serde::Serialize;

use portier::config::{Config, ConfigError};
use portier::eval::{
    bench, bench_loop, calibrate, distance, export_calib, identify, lfw, npu_check, verify,
};
use portier::exit::Exit;
use portier::frame::load_image;
use portier::gallery::{
    Decision, EnrollMode, Gallery, GalleryError, ImportMode, Matcher, UnknownReason,
};
use portier::pipeline::{Pipeline, PipelineError, Select};

mod cli;

use cli::{
    BenchCommand, CameraCommand, Cli, Command, EvalCommand, GalleryCommand, KeyBindArg,
    MqttCommand, NpuCommand,
};

/// An error with its exit status.
struct Failure {
    exit: Exit,
    message: String,
}

impl Failure {
    fn new(exit: Exit, message: impl std::fmt::Display) -> Self {
        Self { exit, message: message.to_string() }
    }
}

/// Each error family exits with its status from the one table (`portier::exit`).
macro_rules! failure_from {
    ($($error:ty),* $(,)?) => {$(
        impl From<$error> for Failure {
            fn from(e: $error) -> Self {
                Failure::new(Exit::from(&e), e)
            }
        }
    )*};
}

failure_from!(
    ConfigError,
    GalleryError,
    PipelineError,
    portier::enroll_live::EnrolError,
    portier::eval::EvalError,
    portier::liveness::LivenessError,
);

fn main() -> ExitCode {
    // The start-up's phases are timed from here (`portier::startup`).
    let started = std::time::Instant::now();
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => log::LevelFilter::Info,
        1 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    };
    let mut logger = env_logger::Builder::new();
    logger.filter_level(level).parse_env("PORTIER_LOG").format_target(false);
    // Under systemd (stderr connected to the journal) each line carries its syslog priority as
    // an sd-daemon `<N>` prefix and no timestamp (the journal has its own); `journalctl -p
    // warning -u portier` then filters by level.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        use std::io::Write;
        logger.format(|buf, record| {
            let priority = match record.level() {
                log::Level::Error => 3,
                log::Level::Warn => 4,
                log::Level::Info => 6,
                log::Level::Debug | log::Level::Trace => 7,
            };
            writeln!(buf, "<{priority}>{}", record.args())
        });
    }
    logger.init();
    match run(cli, started) {
        Ok(code) => code,
        Err(f) => {
            eprintln!("portier: {}", f.message);
            f.exit.into()
        }
    }
}

fn run(cli: Cli, started: std::time::Instant) -> Result<ExitCode, Failure> {
    match cli.command {
        Command::SecureDoor { hold } => secure_door(&cli.config, hold),
        Command::Mqtt { command: MqttCommand::ResetReplay } => {
            let config = Config::load(&cli.config)?;
            let dir = &config.mqtt.outbox_dir;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
            let window = config.mqtt.command_window_s;
            let kept = portier::mqtt::replay::reset(dir, now, window).map_err(|e| {
                Failure::new(
                    Exit::CantCreate,
                    format!(
                        "mqtt: cannot reset the replay state in {}: {e} (left as it was)",
                        dir.display()
                    ),
                )
            })?;
            println!(
                "mqtt: replay state in {} reset: commands signed at or before {} (now and one \
                 {window} s window) are refused, nothing else is remembered",
                dir.display(),
                now.saturating_add(i64::from(window))
            );
            match kept {
                Some(kept) => println!("  the old state is kept as {}", kept.display()),
                None => println!("  there was no state before"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { file } => {
            let path = file.unwrap_or(cli.config);
            let c = Config::load(&path)?;
            println!(
                "{}: ok (detector {}, recognizer {} as `{}`, gallery {})",
                path.display(),
                c.detector.path.display(),
                c.recognizer.path.display(),
                c.recognizer.model_id,
                c.gallery_path.display()
            );
            let camera = match &c.camera {
                Some(portier::config::CameraConfig::Replay(r)) => {
                    format!("replay {}", r.path.display())
                }
                Some(portier::config::CameraConfig::V4l2 { device, .. }) => {
                    format!("v4l2 {}", device.display())
                }
                None => "none (portier run needs --replay)".into(),
            };
            let mqtt = if c.mqtt.enabled {
                format!("{}:{}", c.mqtt.host, c.mqtt.port)
            } else {
                "off".into()
            };
            println!("  camera {camera}; door {:?}; mqtt {mqtt}", c.door.backend);
            if let (Some(id), Some(model)) = (c.npu.model_id(), &c.npu.model) {
                let twin = c.npu.twin.as_ref().map_or("none".into(), |t| t.display().to_string());
                println!(
                    "  npu {:?} {} as `{id}`, {:?} input; float32 twin {twin}",
                    c.npu.backend,
                    model.display(),
                    c.npu.preprocess()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Camera { command: CameraCommand::Check { device, frames, timeout_ms } } => {
            camera_check(&device, frames, std::time::Duration::from_millis(timeout_ms))
        }
        Command::Npu { command: NpuCommand::Check(args) } => {
            let config = Config::load(&cli.config)?;
            let report = npu_check::check(&config, &args.crops)?;
            if args.json {
                print_json(&report);
            } else {
                println!("{}", npu_check::table(&report));
            }
            Ok(if report.passed() { ExitCode::SUCCESS } else { Exit::Failed.into() })
        }
        Command::Calibrate(args) => {
            let config = Config::load(&cli.config)?;
            calibrate::command(&config, &args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::ExportCalib(args) => {
            let config = Config::load(&cli.config)?;
            let s = export_calib::command(&config, &args)?;
            println!(
                "{}: {} crops of 112x112x3 uint8 ({} with detected landmarks, {} with full-size \
                 landmarks scaled down); {} photo(s) without a face",
                s.npy.display(),
                s.crops,
                s.detected,
                s.reference,
                s.no_face
            );
            println!(
                "  {:?} channel order, normalisation mean {:?} std {:?} ([npu]): {}",
                s.preprocess.order,
                s.preprocess.mean,
                s.preprocess.std,
                s.npy.with_file_name(export_calib::ALLS_NAME).display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Selftest { pulse_relay, json, npu_crops } => {
            let config = Config::load(&cli.config)?;
            let options =
                portier::selftest::SelftestOptions { pulse_relay, npu_crops, ..Default::default() };
            let report = portier::selftest::run(&config, &options);
            if json {
                print_json(&report.to_json());
            } else {
                println!("{report}");
            }
            Ok(if report.passed() { ExitCode::SUCCESS } else { Exit::Failed.into() })
        }
        Command::Run { replay, fps, fast, snapshot_dir } => {
            let mut config = Config::load(&cli.config)?;
            if let Some(dir) = snapshot_dir {
                config.display.backend = portier::config::DisplayBackend::Snapshots;
                config.display.snapshot_dir = Some(dir);
            }
            run_appliance(config, replay, fps, fast, started)
        }
        Command::Enroll { name, append, from_camera, seconds, replay, allow_similar, photos } => {
            let config = Config::load(&cli.config)?;
            if from_camera {
                use portier::enroll_camera::{command, LiveArgs};
                let args = LiveArgs { name, append, seconds, replay, fps: None, allow_similar };
                command(&config, &args)?;
                return Ok(ExitCode::SUCCESS);
            }
            enroll(&config, &name, append, &photos)
        }
        Command::Identify { json, photos } => {
            let config = Config::load(&cli.config)?;
            identify(&config, json, &photos)
        }
        Command::Gallery { command } => {
            let config = Config::load(&cli.config)?;
            gallery(&config, command)
        }
        Command::Eval { command } => {
            let config = Config::load(&cli.config)?;
            eval(config, command)
        }
        Command::Bench {
            command: BenchCommand::Pipeline { repeat, warmup, gallery_people, json, photos },
        } => {
            let config = Config::load(&cli.config)?;
            let mut p = Pipeline::open(&config)?;
            let report = bench::run(&mut p, &photos, repeat.max(1), warmup, gallery_people)?;
            if json {
                print_json(&report);
            } else {
                print_bench(&report, &config);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench { command: BenchCommand::Liveness { repeat, warmup, json, photos } } => {
            let config = Config::load(&cli.config)?;
            let r = portier::eval::liveness::bench(&config, &photos, repeat.max(1), warmup)?;
            if json {
                print_json(&r);
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "machine: {} ({} logical cores); {} checks on the largest face of {} photo(s)",
                r.cpu, r.cores, r.checks, r.photos
            );
            println!("times in ms: median, p90, p99, max");
            for (name, p) in [("check (crops + 2 models)", r.check), ("  models only", r.models)] {
                println!(
                    "  {name:26} {:8.2} {:8.2} {:8.2} {:8.2}",
                    p.median_ms, p.p90_ms, p.p99_ms, p.max_ms
                );
            }
            println!(
                "per decision: {} checks (one per confirming vote, run on the frames that cast \
                 them) = {:.1} ms of CPU; the deciding frame itself waits for one ({:.1} ms)",
                r.checks_per_decision,
                r.check.median_ms * r.checks_per_decision as f64,
                r.check.median_ms
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            command: BenchCommand::Match { people, templates, dim, queries, open_in, json },
        } => {
            if dim == 0 || templates == 0 || people.contains(&0) {
                return Err(Failure::new(
                    Exit::Usage,
                    "--people, --templates and --dim must be above 0",
                ));
            }
            // Opened first, while the process holds nothing else (its RSS is the matchers').
            let open = match open_in {
                Some(dir) => Some(portier::eval::bench_match::open_cost(
                    &dir,
                    people.iter().copied().max().unwrap_or(1),
                    templates,
                    &[dim, 128],
                    portier::gallery::Storage::default(),
                )?),
                None => None,
            };
            let mut r = portier::eval::bench_match::run(&people, templates, dim, queries);
            r.open = open;
            if json {
                print_json(&r);
            } else {
                print!("{}", portier::eval::bench_match::table(&r));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench { command: BenchCommand::Display { repeat, json } } => {
            let report = portier::eval::bench_display::run(repeat);
            if json {
                print_json(&report);
            } else {
                println!("{:<8} {:<12} {:>10} {:>10}", "panel", "screen", "median µs", "p99 µs");
                for c in &report {
                    println!(
                        "{:<8} {:<12} {:>10.1} {:>10.1}",
                        c.panel, c.screen, c.median_us, c.p99_us
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench { command: BenchCommand::Startup { replay, runs, json } } => {
            let exe = std::env::current_exe().map_err(|e| {
                Failure::new(Exit::Software, format!("cannot find this program's file: {e}"))
            })?;
            let config = Config::load(&cli.config)?;
            let r = portier::eval::bench_startup::run(&exe, &config, &cli.config, &replay, runs)?;
            if json {
                print_json(&r);
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "machine: {} ({} logical cores); {} start(s) of `portier --config {} run --fast \
                 --replay {}`",
                r.cpu,
                r.cores,
                r.runs.len(),
                r.config,
                r.replay
            );
            println!("times in ms: median, p90, max");
            let row = |name: &str, p: &portier::eval::bench_loop::Percentiles| {
                println!("  {name:28} {:8.1} {:8.1} {:8.1}", p.median_ms, p.p90_ms, p.max_ms);
            };
            for (name, p) in &r.phases {
                row(&format!("  {name}"), p);
            }
            row("spawn to the loop's start", &r.spawn_to_loop);
            row("spawn to first frame decided", &r.spawn_to_first_decided);
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench { command: BenchCommand::Loop { replay, frames, warmup, json } } => {
            let config = Config::load(&cli.config)?;
            let r = bench_loop::run(&config, &replay, frames, warmup)?;
            if json {
                print_json(&r);
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "machine: {} ({} logical cores); {} ({}x{}): {} frames after {} warm-up, {} \
                 faces, {} embeddings, {} people enrolled, {} grant(s)",
                r.cpu,
                r.cores,
                r.stream,
                r.width,
                r.height,
                r.frames,
                r.warmup,
                r.faces,
                r.embeddings,
                r.gallery_people,
                r.grants
            );
            println!("times in ms: median, p90, p99, max");
            for (name, p) in [
                ("arrival to decision", r.latency),
                ("  decode", r.decode),
                ("  detect", r.detect),
                ("  track", r.track),
                ("  embed+match+decide", r.embed_match_decide),
            ] {
                println!(
                    "  {name:22} {:8.2} {:8.2} {:8.2} {:8.2}",
                    p.median_ms, p.p90_ms, p.p99_ms, p.max_ms
                );
            }
            println!("  frames/s               {:8.1}", r.frames_per_s);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn run_appliance(
    mut config: Config,
    replay: Option<PathBuf>,
    fps: Option<f64>,
    fast: bool,
    started: std::time::Instant,
) -> Result<ExitCode, Failure> {
    use std::sync::atomic::AtomicBool;

    let mut phases = portier::startup::Phases::new(started);
    phases.mark("config");

    use portier::app::{App, Parts};
    use portier::camera::replay::ReplaySettings;
    use portier::config::CameraConfig;

    let configured_fps = match &config.camera {
        Some(CameraConfig::Replay(r)) => Some(r.fps),
        Some(CameraConfig::V4l2 { fps, .. }) => Some(*fps),
        None => None,
    };
    if let Some(path) = replay {
        config.camera = Some(CameraConfig::Replay(ReplaySettings {
            path,
            fps: fps.or(configured_fps).unwrap_or(30.0),
            looped: false,
            pace: !fast,
        }));
    } else if let Some(CameraConfig::Replay(r)) = &mut config.camera {
        r.fps = fps.unwrap_or(r.fps);
        r.pace &= !fast;
    }
    let Some(camera) = config.camera.clone() else {
        return Err(Failure::new(
            Exit::Config,
            format!(
                "config {}: key `camera`: required by `portier run` (or pass --replay FILE)",
                config.source.display()
            ),
        ));
    };

    // The door first: the relay is driven to its secure level before anything else can fail,
    // and from here on every way out secures it: a panic (hook), a fatal signal (SIGABRT from
    // the watchdog, SIGHUP, SIGQUIT, SIGSEGV, ...), SIGTERM/SIGINT (in the handler, before the
    // loop winds down), and a loop that stalls mid-pulse (the guard thread).
    let (door, emergency) = open_door(&config.door, &config.source)?;
    let stop = Arc::new(AtomicBool::new(false));
    let fake = config.door.backend == portier::config::DoorBackend::Fake;
    let door = guard_door(door, emergency, &stop, fake)?;
    phases.mark("door");

    let source = portier::camera::open(&camera, config.frame_timeout).map_err(|e| match e {
        portier::camera::CameraError::Open { .. } if camera_is_v4l2(&camera) => {
            Failure::new(Exit::Unavailable, e)
        }
        e => Failure::new(Exit::NoInput, e),
    })?;
    phases.mark("camera");
    let pipeline = Pipeline::open(&config)?;
    phases.mark("models");
    let model_id = pipeline.embedder_model_id();
    let npu_model_id = config.npu.model_id();
    // Both models' templates in one load (one pass over the file, checked while it loads).
    let ids: Vec<&str> =
        std::iter::once(model_id.as_str()).chain(npu_model_id.as_deref()).collect();
    let loaded = match open_matchers(&config, &ids)? {
        Some(loaded) => loaded,
        None => Gallery::open_in_memory()?.matchers(&ids, config.app.storage)?,
    };
    let mut loaded = loaded.into_iter();
    let (Some(matcher), npu_matcher) = (loaded.next(), loaded.next()) else {
        // Cannot happen: a load returns one matcher per model asked for.
        return Err(Failure::new(Exit::Software, "the gallery load returned no matcher"));
    };
    log::info!(
        "gallery: {} people enrolled for {model_id} ({})",
        matcher.people(),
        config.gallery_path.display()
    );
    phases.mark("gallery");
    let mut parts = Parts::cpu(pipeline, source, matcher, door);
    parts.npu = open_npu_parts(&config, npu_matcher)?;
    phases.mark("npu");
    if let Some(l) = config.liveness.as_ref().filter(|l| l.enabled) {
        let check = portier::liveness::MiniFasNet::open(&l.settings)?;
        log::info!(
            "liveness: {} (threshold {}, {} of {} confirming votes must pass)",
            portier::liveness::MINIFASNET,
            l.settings.threshold,
            l.settings.passes,
            config.app.decision.votes
        );
        parts.liveness = Some(Box::new(check));
    }
    phases.mark("liveness");
    let npu_model_id = config.npu.model_id();
    let mut app = App::new(config.app.clone(), parts).map_err(|e| {
        Failure::new(Exit::Config, format!("config {}: {e}", config.source.display()))
    })?;
    log::info!("running: {}", app.describe_source());
    let notifier = portier::service::Notifier::from_env();
    let mqtt = start_mqtt(&config)?;
    let display = match portier::display::open(&config.display) {
        Ok(d) => d,
        Err(e) => {
            // The door works without its display: report and go on.
            log::error!("display: {e}; running without it");
            None
        }
    };
    let mut shell = portier::shell::Shell::new(
        mqtt,
        display,
        config.gallery_path.clone(),
        config.gallery_key_file.clone(),
        model_id.clone(),
    )
    .with_npu_model(npu_model_id)
    .with_storage(config.app.storage)
    .with_enrolment(portier::enroll_live::EnrolSettings::remote(&config));
    phases.mark("loop");
    log::info!("{phases}");
    let result = app.run(&stop, &notifier, &mut shell);
    shell.shutdown(std::time::Duration::from_secs(3));
    let counters = match result {
        Ok(c) => c,
        Err(e) => {
            portier::door::secure_on_emergency();
            return Err(Failure::new(Exit::Software, e));
        }
    };
    println!("summary: {counters}");
    if shell.grants().is_empty() {
        println!("granted: nobody");
    }
    for (name, frame, similarity) in shell.grants() {
        println!("granted: {name} at frame {frame} (similarity {similarity:.3})");
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(feature = "v4l2")]
fn camera_check(
    device: &Path,
    frames: u32,
    timeout: std::time::Duration,
) -> Result<ExitCode, Failure> {
    let report = portier::camera::v4l2::probe(device, frames, timeout)
        .map_err(|e| Failure::new(Exit::Unavailable, e))?;
    println!("{report}");
    Ok(ExitCode::SUCCESS)
}

#[cfg(not(feature = "v4l2"))]
fn camera_check(
    device: &Path,
    _frames: u32,
    _timeout: std::time::Duration,
) -> Result<ExitCode, Failure> {
    Err(Failure::new(
        Exit::Unavailable,
        format!("camera {}: this portier is built without the `v4l2` feature", device.display()),
    ))
}

/// The MQTT client thread, when `[mqtt] enabled = true`. A broker that is down does not stop
/// start-up: events wait in the outbox.
fn start_mqtt(config: &Config) -> Result<Option<portier::mqtt::client::MqttClient>, Failure> {
    use portier::mqtt::client::{run_id, MqttClient, MqttError};
    use portier::mqtt::discovery::DeviceInfo;
    if !config.mqtt.enabled {
        return Ok(None);
    }
    let m = &config.mqtt;
    let model = m.model.clone().unwrap_or_else(|| {
        portier::mqtt::discovery::board_model(
            std::fs::read("/proc/device-tree/model").ok().as_deref(),
            config.npu.backend != portier::config::NpuBackend::None,
        )
    });
    let name = m.name.as_deref().unwrap_or(&m.device_id);
    let device = DeviceInfo::new(&m.device_id, name, env!("CARGO_PKG_VERSION"), &model, None)
        .map(|d| d.with_area(m.suggested_area.as_deref()))
        .map_err(|e| {
            Failure::new(
                Exit::Config,
                format!("config {}: key `mqtt.device_id`: {e}", config.source.display()),
            )
        })?;
    match MqttClient::start(m, device, &run_id()) {
        Ok(c) => {
            log::info!("mqtt: publishing to {}:{}", m.host, m.port);
            Ok(Some(c))
        }
        // MQTT trouble never stops the door (issue 15): a credential file that is missing or
        // readable by others, a CA that does not load. The door runs without events and remote
        // commands; `portier selftest` and `check-config` name the problem.
        Err(e) => {
            let what = if matches!(e, MqttError::Config { .. }) { "config " } else { "" };
            log::error!(
                "mqtt: {what}{}: {e}; the door runs WITHOUT MQTT (no events, no remote commands) \
                 until this is fixed and portier restarted",
                config.source.display()
            );
            Ok(None)
        }
    }
}

fn camera_is_v4l2(camera: &portier::config::CameraConfig) -> bool {
    matches!(camera, portier::config::CameraConfig::V4l2 { .. })
}

/// The NPU side of the loop when `[npu]` names one, with its templates (`matcher`, loaded
/// with the CPU model's; see [`portier::app::NpuParts::open`]: an NPU that cannot be opened or
/// whose model is degenerate leaves the door on the CPU).
fn open_npu_parts(
    config: &Config,
    matcher: Option<Matcher>,
) -> Result<Option<portier::app::NpuParts>, Failure> {
    let Some(matcher) = matcher.filter(|_| config.npu.model_id().is_some()) else {
        return Ok(None);
    };
    portier::app::NpuParts::open(config, matcher)
        .map_err(|e| Failure::new(Exit::Config, format!("config {}: {e}", config.source.display())))
}

/// `secure-door`: the door lines from the config's `[door]` table alone, driven secure.
fn secure_door(config: &Path, hold: bool) -> Result<ExitCode, Failure> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let section = Config::load_door(config)?;
    // Door::new drives the relay to its secure level; dropping a relay pin drives it there too.
    let (door, emergency) = open_door(&section, config)?;
    let state = door.state();
    println!(
        "door: relay at its secure level ({:?} backend); door {}",
        section.backend,
        if state.open { "OPEN" } else { "closed" }
    );
    if hold {
        let stop = Arc::new(AtomicBool::new(false));
        portier::door::relock::secure_on_every_exit(emergency, Some(&stop))
            .map_err(|e| Failure::new(Exit::Software, e))?;
        println!("door: holding the lines until stopped");
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        drop(door);
        println!("door: released the lines at their secure level");
    }
    Ok(ExitCode::SUCCESS)
}

/// Registers `emergency` with the panic hook and the fatal-signal handlers, makes SIGTERM and
/// SIGINT secure the relay and set `stop`, and wraps `door` in the relock guard.
fn guard_door(
    door: Box<dyn portier::door::DoorControl>,
    emergency: Arc<dyn portier::door::EmergencySecure>,
    stop: &Arc<std::sync::atomic::AtomicBool>,
    fake: bool,
) -> Result<Box<dyn portier::door::DoorControl>, Failure> {
    use portier::door::relock;
    let fail = |e: relock::RelockError| Failure::new(Exit::Software, e);
    relock::secure_on_every_exit(Arc::clone(&emergency), Some(stop)).map_err(fail)?;
    let guarded = relock::RelockGuard::new(door, emergency, relock::GUARD_MARGIN)
        .map_err(fail)?
        .refuse_unlocks_after(Arc::clone(stop));
    // The fake relay holds no door: its releases may follow a replay's clock (the same
    // decisions on a machine too slow for the clip). Every real relay is bounded in real time.
    if fake {
        return Ok(Box::new(guarded.following_the_loop_clock()));
    }
    Ok(Box::new(guarded))
}

/// The door backend named in `section` (of the config file `source`: a config error names it),
/// with the handle the panic hook secures ([`portier::door::open`]).
fn open_door(
    section: &portier::config::DoorSection,
    source: &Path,
) -> Result<portier::door::OpenedDoor, Failure> {
    portier::door::open(section).map_err(|e| match Exit::from(&e) {
        Exit::Config => Failure::new(Exit::Config, format!("config {}: {e}", source.display())),
        exit => Failure::new(exit, e),
    })
}

fn print_json(v: &impl Serialize) {
    match serde_json::to_string_pretty(v) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("portier: cannot encode JSON: {e}"),
    }
}

fn progress_bar(total: usize, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total as u64);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:40}] {pos}/{len} ({per_sec}, {eta} left)",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    bar
}

fn enroll(
    config: &Config,
    name: &str,
    append: bool,
    photos: &[PathBuf],
) -> Result<ExitCode, Failure> {
    // The gallery is opened (and checked) first: a corrupt file is reported before any work.
    if let Some(dir) = config.gallery_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| {
            Failure::new(
                Exit::CantCreate,
                format!("gallery folder {}: cannot create: {e}", dir.display()),
            )
        })?;
    }
    let mut gallery = Gallery::open(&config.gallery_path, &config.gallery_key_file)?;
    let mut pipeline = Pipeline::open(config)?;
    // With an NPU, the same crops are embedded by it too: its templates live in its own
    // embedding space, and the loop compares like with like.
    let mut npu = portier::npu_state::open_for_enrolment(&config.npu, &config.recognizer)
        .map_err(|e| Failure::from(PipelineError::Embed(e)))?;
    let mut npu_templates = Vec::new();
    let mut templates = Vec::with_capacity(photos.len());
    for photo in photos {
        let img = load_image(photo).map_err(|e| Failure::new(Exit::DataErr, e))?;
        let mut faces = pipeline.faces(img.view(), Select::All, None)?;
        match faces.len() {
            0 => return Err(Failure::new(Exit::DataErr, format!(
                "photo {}: no face found; nothing was enrolled", photo.display()))),
            1 => {}
            n => return Err(Failure::new(Exit::DataErr, format!(
                "photo {}: {n} faces found; enrol from photos showing only this person; nothing was enrolled",
                photo.display()))),
        }
        let face = faces.remove(0);
        log::info!(
            "{}: face at {:?}, eye distance {:.0} px, norm {:.2}",
            photo.display(),
            face.detection.bbox.map(|v| v.round()),
            face.detection.eye_distance(),
            face.norm
        );
        templates.push(face.embedding);
        if let Some(n) = npu.as_mut() {
            let mut e = vec![0.0; n.dim()];
            n.embed(pipeline.last_crop(), &mut e)
                .map_err(|e| Failure::from(PipelineError::Embed(e)))?;
            npu_templates.push(e);
        }
    }
    let model_id = pipeline.embedder_model_id();
    // Warn when the new templates already look like someone else: a likely duplicate or a
    // look-alike who will need a margin.
    let matcher = gallery.matcher(&model_id)?;
    for t in &templates {
        if let Some(best) = matcher.best_two(t)?.best {
            if best.name != name.trim() && best.similarity >= config.matching.threshold {
                log::warn!(
                    "{name} resembles enrolled {} (similarity {:.3})",
                    best.name,
                    best.similarity
                );
            }
        }
    }
    let mode = if append { EnrollMode::Append } else { EnrollMode::New };
    let npu_id = npu.as_ref().map(|n| n.model_id().to_string());
    let mut sets: Vec<(&str, &[Vec<f32>])> = vec![(model_id.as_str(), &templates)];
    if let Some(id) = &npu_id {
        sets.push((id.as_str(), &npu_templates));
    }
    gallery.enroll_models(name, &sets, mode)?;
    println!(
        "enrolled {} with {} template(s) for model `{}`{} in {}",
        name.trim(),
        templates.len(),
        model_id,
        npu_id.map(|id| format!(" and `{id}` (npu)")).unwrap_or_default(),
        config.gallery_path.display()
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct FaceReport {
    bbox: [f32; 4],
    score: f32,
    kps: [[f32; 2]; 5],
    eye_distance: f32,
    norm: f32,
    known: bool,
    name: Option<String>,
    similarity: Option<f32>,
    second: Option<(String, f32)>,
    reason: Option<&'static str>,
}

#[derive(Serialize)]
struct PhotoReport {
    photo: String,
    faces: Vec<FaceReport>,
    error: Option<String>,
}

/// The gallery's matchers of `models`, in order ([`Gallery::load_matchers`]), or `None` when
/// the gallery file does not exist yet (every face is unknown; neither the appliance nor
/// identify creates it).
fn open_matchers(config: &Config, models: &[&str]) -> Result<Option<Vec<Matcher>>, Failure> {
    if !config.gallery_path.exists() {
        log::warn!(
            "gallery {} does not exist yet: every face is unknown",
            config.gallery_path.display()
        );
        return Ok(None);
    }
    let path = (&config.gallery_path, &config.gallery_key_file);
    Ok(Some(Gallery::load_matchers(path.0, path.1, models, config.app.storage)?))
}

fn identify(config: &Config, json: bool, photos: &[PathBuf]) -> Result<ExitCode, Failure> {
    let mut pipeline = Pipeline::open(config)?;
    let matcher =
        open_matchers(config, &[&pipeline.embedder_model_id()])?.and_then(|mut m| m.pop());
    let mut reports = Vec::new();
    let mut failed = false;
    for photo in photos {
        let mut report =
            PhotoReport { photo: photo.display().to_string(), faces: Vec::new(), error: None };
        match load_image(photo) {
            Err(e) => {
                failed = true;
                eprintln!("portier: {e}");
                report.error = Some(e.to_string());
            }
            Ok(img) => {
                for f in pipeline.faces(img.view(), Select::All, None)? {
                    let result = match &matcher {
                        Some(m) => m.best_two(&f.embedding)?,
                        None => portier::gallery::MatchResult { best: None, second: None },
                    };
                    let second = result.second.as_ref().map(|c| (c.name.clone(), c.similarity));
                    let (known, name, similarity, reason) = match result.decide(&config.matching) {
                        Decision::Known(c) => (true, Some(c.name), Some(c.similarity), None),
                        Decision::Unknown { best, reason } => (
                            false,
                            best.as_ref().map(|c| c.name.clone()),
                            best.map(|c| c.similarity),
                            Some(match reason {
                                UnknownReason::EmptyGallery => "empty gallery",
                                UnknownReason::BelowThreshold => "below threshold",
                                UnknownReason::AmbiguousMargin => {
                                    "ambiguous: second best too close"
                                }
                            }),
                        ),
                    };
                    report.faces.push(FaceReport {
                        bbox: f.detection.bbox,
                        score: f.detection.score,
                        kps: f.detection.kps,
                        eye_distance: f.detection.eye_distance(),
                        norm: f.norm,
                        known,
                        name,
                        similarity,
                        second,
                        reason,
                    });
                }
            }
        }
        reports.push(report);
    }
    if json {
        print_json(&reports);
    } else {
        for r in &reports {
            if r.error.is_some() {
                continue;
            }
            if r.faces.is_empty() {
                println!("{}: no face", r.photo);
            }
            for (i, f) in r.faces.iter().enumerate() {
                let who = if f.known {
                    f.name.clone().unwrap_or_default()
                } else {
                    match (&f.name, f.reason) {
                        (Some(n), Some(why)) => format!("unknown ({why}; nearest {n})"),
                        (_, Some(why)) => format!("unknown ({why})"),
                        _ => "unknown".into(),
                    }
                };
                let b = f.bbox.map(|v| v.round() as i64);
                println!(
                    "{}: face {} box [{}, {}, {}, {}] eyes {:.0} px: {} similarity {} norm {:.2}",
                    r.photo,
                    i + 1,
                    b[0],
                    b[1],
                    b[2],
                    b[3],
                    f.eye_distance,
                    who,
                    f.similarity.map_or("-".into(), |s| format!("{s:.3}")),
                    f.norm
                );
            }
        }
    }
    Ok(if failed { ExitCode::from(Exit::DataErr) } else { ExitCode::SUCCESS })
}

fn gallery(config: &Config, command: GalleryCommand) -> Result<ExitCode, Failure> {
    // Opened per command: `new-key` must run without one (opening creates the key file).
    let open = || Gallery::open(&config.gallery_path, &config.gallery_key_file);
    match command {
        GalleryCommand::List { json } => {
            let people = open()?.list()?;
            if json {
                #[derive(Serialize)]
                struct P {
                    id: i64,
                    name: String,
                    created_unix: i64,
                    templates: Vec<(String, usize)>,
                }
                print_json(
                    &people
                        .into_iter()
                        .map(|p| P {
                            id: p.id,
                            name: p.name,
                            created_unix: p.created_unix,
                            templates: p.templates,
                        })
                        .collect::<Vec<_>>(),
                );
            } else if people.is_empty() {
                println!("no one enrolled in {}", config.gallery_path.display());
            } else {
                for p in people {
                    let t: Vec<String> =
                        p.templates.iter().map(|(m, n)| format!("{n} for {m}")).collect();
                    println!("{}\t{}", p.name, t.join(", "));
                }
            }
        }
        GalleryCommand::Remove { name } => {
            open()?.remove(&name)?;
            println!("removed {name}");
        }
        GalleryCommand::Rename { old, new } => {
            open()?.rename(&old, &new)?;
            println!("renamed {old} to {new}");
        }
        GalleryCommand::Check => {
            open()?.integrity_check()?;
            println!("{}: ok", config.gallery_path.display());
        }
        GalleryCommand::Export { file, passphrase_file } => {
            let passphrase = portier::gallery::read_passphrase(&passphrase_file)?;
            let people = open()?.export(&file, &passphrase)?;
            println!("exported {people} person(s) to {}", file.display());
        }
        GalleryCommand::NewKey { bind } => return new_key(config, bind),
        GalleryCommand::Import { file, passphrase_file, replace } => {
            let passphrase = portier::gallery::read_passphrase(&passphrase_file)?;
            let mode = if replace { ImportMode::Replace } else { ImportMode::Refuse };
            let s = open()?.import(&file, &passphrase, mode)?;
            println!(
                "imported {} person(s) ({} replaced, {} template(s)) from {}",
                s.people,
                s.replaced,
                s.templates,
                file.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `gallery new-key`: a key file for a gallery that does not exist yet.
fn new_key(config: &Config, bind: KeyBindArg) -> Result<ExitCode, Failure> {
    use portier::gallery::{DeviceKey, KeyBinding};
    let key_file = &config.gallery_key_file;
    for (what, path) in [("key file", key_file), ("gallery", &config.gallery_path)] {
        if std::fs::symlink_metadata(path).is_ok() {
            return Err(Failure::new(
                Exit::CantCreate,
                format!(
                    "{what} {} exists: a new key would open none of its templates (export the \
                     gallery, move the gallery and its key away, run new-key, then import)",
                    path.display()
                ),
            ));
        }
    }
    if let Some(dir) = key_file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| {
            Failure::new(
                Exit::CantCreate,
                format!("key folder {}: cannot create: {e}", dir.display()),
            )
        })?;
    }
    let binding = match bind {
        KeyBindArg::File => KeyBinding::File,
        KeyBindArg::RpiOtp => KeyBinding::RpiOtp,
    };
    let otp = portier::gallery::otp::Mailbox::default();
    DeviceKey::create_bound(key_file, binding, &otp)
        .map_err(|e| Failure::new(Exit::Unavailable, e))?;
    println!("created {} ({bind:?} binding)", key_file.display());
    Ok(ExitCode::SUCCESS)
}

fn eval(mut config: Config, command: EvalCommand) -> Result<ExitCode, Failure> {
    match command {
        EvalCommand::Distance(args) => {
            let report = distance::command(&config, &args)?;
            if let Some(path) = &args.plot {
                portier::eval::plot::identification_vs_size(&report, path)?;
                if !args.json {
                    println!("plot: {}", path.display());
                }
            }
        }
        EvalCommand::Liveness { labels, out } => {
            use portier::eval::liveness;
            let labelled = liveness::read_labels(&labels)?;
            let r = liveness::run(&config, &labelled)?;
            if out.json {
                print_json(&r);
            } else {
                liveness::print(&r);
            }
        }
        EvalCommand::Verify { labels, root, out } => {
            let root = root.unwrap_or_else(|| {
                let dir = labels.parent().map(Path::to_path_buf).unwrap_or_default();
                if dir.join("full").is_dir() {
                    dir.join("full")
                } else {
                    dir
                }
            });
            let photos = verify::read_labels(&labels, &root)?;
            let mut pipeline = Pipeline::open(&config)?;
            let bar = progress_bar(photos.len(), "embedding photos");
            let paths: Vec<PathBuf> = photos.iter().map(|p| p.path.clone()).collect();
            let emb = verify::embed_photos(&mut pipeline, &paths, Select::All, |d| {
                bar.set_position(d as u64)
            })?;
            bar.finish_and_clear();
            let r = verify::verify_report(&photos, &emb, config.matching.threshold);
            if out.json {
                print_json(&r);
            } else {
                print_verify(&r);
            }
        }
        EvalCommand::Identify { root, labels, people, repeats, det_size, storage, npu, out } => {
            if det_size == 0 || det_size % 32 != 0 {
                return Err(Failure::new(
                    Exit::Usage,
                    format!("--det-size {det_size}: must be a multiple of 32"),
                ));
            }
            config.detector.input_size = [det_size, det_size];
            let (photos, select) = match (&labels, &root) {
                (Some(csv), root) => {
                    let dir = csv.parent().map(Path::to_path_buf).unwrap_or_default();
                    (verify::read_labels(csv, root.as_deref().unwrap_or(&dir))?, Select::All)
                }
                (None, Some(root)) => (identify::read_folders(root)?, Select::NearestCentre),
                (None, None) => return Err(Failure::new(Exit::Usage, "give --root or --labels")),
            };
            let mut pipeline = Pipeline::open(&config)?;
            let mut npu_embedder = match npu {
                true => Some(
                    portier::embed::open_npu(&config.npu, &config.recognizer)
                        .map_err(PipelineError::from)?
                        .ok_or_else(|| {
                            Failure::new(
                                Exit::Config,
                                "--npu: the config has no [npu] model with a backend",
                            )
                        })?,
                ),
                false => None,
            };
            let bar = progress_bar(photos.len(), "embedding photos");
            let space = if npu { portier::decide::Space::Npu } else { portier::decide::Space::Cpu };
            let rule = config.app.decision.gallery.map(|g| {
                let band = config.app.decision.threshold_in(space, f32::INFINITY);
                let rise = if npu { g.npu_rise } else { g.cpu_rise };
                move |n: usize| band + g.lift(rise, n)
            });
            let rule_ref = rule.as_ref().map(|f| f as &dyn Fn(usize) -> f32);
            let storage = storage.unwrap_or(config.app.storage);
            let (classes, embeddings) = identify::embed(
                &mut pipeline,
                &photos,
                select,
                npu_embedder.as_deref_mut(),
                |d| bar.set_position(d as u64),
            )?;
            let searches = identify::Searches::new(&classes, &embeddings, storage);
            let r = identify::measure(&searches, &people, repeats, rule_ref);
            bar.finish_and_clear();
            if out.json {
                print_json(&r);
            } else {
                print!("{}", identify::table(&r, rule.as_ref().map(|_| "rule")));
            }
        }
        EvalCommand::Lfw { pairs, train_pairs, root, det_size, flip, out } => {
            config.detector.input_size = [det_size, det_size];
            config.recognizer.flip = flip;
            if det_size == 0 || det_size % 32 != 0 {
                return Err(Failure::new(
                    Exit::Usage,
                    format!("--det-size {det_size}: must be a multiple of 32"),
                ));
            }
            let mut pipeline = Pipeline::open(&config)?;
            let bar = progress_bar(0, "embedding LFW images");
            let r = lfw::run(&mut pipeline, &pairs, train_pairs.as_deref(), &root, |d, n| {
                bar.set_length(n as u64);
                bar.set_position(d as u64);
            })?;
            bar.finish_and_clear();
            if out.json {
                print_json(&r);
            } else {
                println!(
                    "LFW verification: {} pairs, {} fold(s){}",
                    r.pairs,
                    r.folds,
                    if r.train_pairs > 0 {
                        format!(", threshold from {} training pairs", r.train_pairs)
                    } else {
                        String::new()
                    }
                );
                println!("  accuracy   {:.2}% ± {:.2}", r.accuracy * 100.0, r.accuracy_std * 100.0);
                println!("  threshold  {:.4}", r.threshold);
                if let Some(t) = r.train_accuracy {
                    println!("  train acc  {:.2}%", t * 100.0);
                }
                println!(
                    "  no face    {} image(s){}",
                    r.failed_detections,
                    if r.failed_images.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", r.failed_images.join(", "))
                    }
                );
                if let (Some(g), Some(i)) = (&r.genuine, &r.impostor) {
                    println!(
                        "  genuine    mean {:.3} min {:.3}   impostor mean {:.3} max {:.3}",
                        g.mean, g.min, i.mean, i.max
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_verify(r: &verify::VerifyReport) {
    println!("{} photos, {} identities", r.photos, r.identities);
    if !r.failed_detections.is_empty() {
        println!("no face found in: {}", r.failed_detections.join(", "));
    }
    for (what, s) in [("genuine", &r.genuine), ("impostor", &r.impostor)] {
        if let Some(s) = s {
            println!("{what:9} pairs {:6}  mean {:.3}  std {:.3}  min {:.3}  p01 {:.3}  p50 {:.3}  p99 {:.3}  max {:.3}",
                s.count, s.mean, s.std, s.min, s.p01, s.p50, s.p99, s.max);
        }
    }
    for t in &r.tar_at_far {
        println!(
            "TAR {:.4} at FAR {:.0e} (threshold {:.3}, achieved FAR {:.1e}{})",
            t.tar,
            t.far_target,
            t.threshold,
            t.far_achieved,
            if t.supported { "" } else { ", too few impostor pairs to measure this FAR" }
        );
    }
    println!("EER {:.4}", r.eer);
    println!(
        "rank-1 identification {:.2}% over {} probes (leave-one-out)",
        r.rank1 * 100.0,
        r.rank1_probes
    );
    println!("at the operating threshold {:.3}: {} impostor pair(s) accepted, {} genuine pair(s) rejected",
        r.threshold, r.impostors_above_threshold, r.genuine_below_threshold);
}

fn print_bench(r: &bench::BenchReport, config: &Config) {
    println!(
        "machine: {} ({} logical cores); detector {} at {}x{}{}; recognizer {}",
        r.cpu,
        r.cores,
        config.detector.path.display(),
        config.detector.input_size[0],
        config.detector.input_size[1],
        if config.detector.fit_input { " at most, fitted to the frame" } else { "" },
        config.recognizer.path.display()
    );
    println!(
        "{} runs after {} warm-up; matching against {} templates; times in ms, median (p90)",
        r.repeat, r.warmup, r.gallery_templates
    );
    for p in &r.photos {
        println!("\n{} ({}x{}, {} face(s))", p.photo, p.width, p.height, p.faces);
        for (name, s) in [
            ("decode", p.decode),
            ("detect: pre", p.detect_pre),
            ("detect: infer", p.detect_infer),
            ("detect: post", p.detect_post),
            ("align", p.align),
            ("embed", p.embed),
            ("match", p.matching),
            ("frame (detect..match)", p.frame),
            ("frame + decode", p.frame_with_decode),
            ("models only", p.models_only),
        ] {
            println!("  {name:22} {:8.2} ({:.2})", s.median_ms, s.p90_ms);
        }
        println!("  frame / models only    {:8.3}", p.overhead_ratio);
    }
}
