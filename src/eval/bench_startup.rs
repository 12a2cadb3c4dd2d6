//! `portier bench startup`: how long the door is without portier after a restart. Starts the
//! real binary (`portier --config C run --fast --replay CLIP`, as systemd would start it, with
//! a replay for the camera) several times and times, from the spawn: the loop's start (the
//! phases line `portier run` logs: config, door secured, camera, models, gallery, NPU,
//! liveness, loop) and the first frame decided. The time before `main` (exec, dynamic
//! linking) is the spawn-to-loop time less the phases' total.
//!
//! Must not: drive a real relay, speak to the site's broker or draw on a real panel (the
//! config's door must be the fake one, MQTT off, the display none or snapshots: on a device,
//! a copy of its config so changed, with `portier.service` stopped, since the camera is
//! shared too), or leave a child running (each is stopped with SIGTERM once its first frame
//! is decided, killed on a timeout).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::bench::cpu_name;
use super::bench_loop::Percentiles;
use super::EvalError;
use crate::config::{Config, DisplayBackend, DoorBackend};
use crate::startup::{parse_phases, FIRST_DECIDED};

/// Longest wait for one start to decide its first frame.
const TIMEOUT: Duration = Duration::from_secs(60);

/// One start of the appliance.
#[derive(Debug, Clone, Serialize)]
pub struct StartupRun {
    /// The phases `portier run` logged (name, ms), each from the end of the one before.
    pub phases: Vec<(String, f64)>,
    /// Process start (`main`) to the loop's start, by the child's clock.
    pub main_to_loop_ms: f64,
    /// Spawn to the phases line read here.
    pub spawn_to_loop_ms: f64,
    /// Spawn to the first frame decided.
    pub spawn_to_first_decided_ms: f64,
}

/// The runs and their distribution.
#[derive(Debug, Clone, Serialize)]
pub struct StartupReport {
    /// CPU model.
    pub cpu: String,
    /// Logical cores.
    pub cores: usize,
    /// The config's file.
    pub config: String,
    /// The replayed clip standing in for the camera.
    pub replay: String,
    /// Each start, in order (the first one reads the models from disk if the page cache lost
    /// them).
    pub runs: Vec<StartupRun>,
    /// Per phase, its distribution over the runs (in the phases' order).
    pub phases: Vec<(String, Percentiles)>,
    /// Spawn to the loop's start.
    pub spawn_to_loop: Percentiles,
    /// Spawn to the first frame decided: what a restart costs the door.
    pub spawn_to_first_decided: Percentiles,
}

/// Starts `exe` with `config` (loaded from `config_path`) on `replay` `runs` times. Refuses
/// a config that would reach the outside world: a door other than the fake one (the relay),
/// MQTT (the site's broker: the same client id would push the real door off, its commands
/// would change the real gallery), a framebuffer or SPI display.
pub fn run(
    exe: &Path,
    config: &Config,
    config_path: &Path,
    replay: &Path,
    runs: usize,
) -> Result<StartupReport, EvalError> {
    let refuse = |what: &str, needs: &str| {
        Err(EvalError::Usage(format!(
            "config {}: bench startup runs the appliance, which would {what}: give a copy of \
             the config with {needs}",
            config_path.display()
        )))
    };
    if config.door.backend != DoorBackend::Fake {
        return refuse("drive this config's relay", "`[door] backend = \"fake\"`");
    }
    if config.mqtt.enabled {
        return refuse(
            "connect to this config's broker as its door",
            "`[mqtt] enabled = false` (and `portier.service` stopped on a device)",
        );
    }
    if !matches!(config.display.backend, DisplayBackend::None | DisplayBackend::Snapshots) {
        return refuse("draw on this config's panel", "`[display] backend = \"none\"`");
    }
    let mut out = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        out.push(start_once(exe, config_path, replay)?);
    }
    let column = |f: &dyn Fn(&StartupRun) -> f64| Percentiles::of(out.iter().map(f).collect());
    let names: Vec<String> = out[0].phases.iter().map(|(n, _)| n.clone()).collect();
    let phases = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.clone(), column(&|r| r.phases.get(i).map_or(f64::NAN, |p| p.1))))
        .collect();
    Ok(StartupReport {
        cpu: cpu_name(),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        config: config_path.display().to_string(),
        replay: replay.display().to_string(),
        spawn_to_loop: column(&|r| r.spawn_to_loop_ms),
        spawn_to_first_decided: column(&|r| r.spawn_to_first_decided_ms),
        phases,
        runs: out,
    })
}

/// One start: spawn, read the log until the first frame is decided, stop the child.
fn start_once(exe: &Path, config: &Path, replay: &Path) -> Result<StartupRun, EvalError> {
    let failed = |reason: String| EvalError::Input { path: exe.into(), reason };
    let spawned = Instant::now();
    let mut child = Command::new(exe)
        .arg("--config")
        .arg(config)
        .args(["run", "--fast", "--replay"])
        .arg(replay)
        .env("PORTIER_LOG", "info")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("JOURNAL_STREAM")
        .env_remove("PORTIER_FAULT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(format!("cannot start: {e}")))?;
    let Some(stderr) = child.stderr.take() else {
        return Err(failed("no stderr pipe".into()));
    };
    // Lines with their arrival time, read on a thread so that a silent child times out.
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    let (mut phases, mut at_loop, mut at_decided, mut tail) = (None, None, None, Vec::new());
    while at_decided.is_none() {
        let Some(left) = TIMEOUT.checked_sub(spawned.elapsed()) else { break };
        let Ok((at, line)) = rx.recv_timeout(left) else { break };
        if let Some(p) = parse_phases(&line) {
            (phases, at_loop) = (Some(p), Some(at));
        } else if line.contains(FIRST_DECIDED) {
            at_decided = Some(at);
        }
        tail.push(line);
        if tail.len() > 20 {
            tail.remove(0);
        }
    }
    // Stop it as systemd would (SIGTERM: the door secured, exit 0), then make sure. A child
    // that has ended (or cannot be waited for: then it was reaped already) is not signalled.
    let mut status = child.try_wait();
    if let (Ok(None), Ok(pid)) = (&status, libc::pid_t::try_from(child.id())) {
        // SAFETY: kill(2) on our own child's pid, which has not been waited for (try_wait just
        // said it runs), so it cannot have been reused; no memory is touched.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(status, Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
            status = child.try_wait();
        }
        if matches!(status, Ok(None)) {
            let _ = child.kill();
            status = child.wait().map(Some);
        }
    }
    let _ = reader.join();
    let (Some((phases, main_to_loop_ms)), Some(at_loop), Some(at_decided)) =
        (phases, at_loop, at_decided)
    else {
        let ended = match status {
            Ok(Some(s)) => format!("it ended ({s})"),
            _ => format!("it did not decide a frame within {TIMEOUT:?}"),
        };
        return Err(failed(format!(
            "the appliance started but {ended}; its last lines:\n{}",
            tail.join("\n")
        )));
    };
    let ms = |t: Instant| t.saturating_duration_since(spawned).as_secs_f64() * 1e3;
    Ok(StartupRun {
        phases,
        main_to_loop_ms,
        spawn_to_loop_ms: ms(at_loop),
        spawn_to_first_decided_ms: ms(at_decided),
    })
}
