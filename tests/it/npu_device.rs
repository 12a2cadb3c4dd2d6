//! The real binary on a Hailo that behaves like one (issue 16), through the HailoRT test double
//! (`tests/hailort-double`): one device that two processes can share only through HailoRT's
//! multi-process service, and a device reset in the middle of `portier run`.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use portier::config::Config;
use portier::gallery::Gallery;

use crate::appliance::{cli_config, portier_run, LIN};
use crate::common::assets;
use crate::hailo_double::double::Double;

const NPU_ID: &str = "rec_double";

/// `base` (from `cli_config`: the laptop config, Lin enrolled on the CPU) with the double's
/// recognizer as the NPU, written as `name`; `service`: `multi_process_service = true`.
fn hailo_config(base: &Path, d: &Double, name: &str, service: bool) -> PathBuf {
    let mut text = std::fs::read_to_string(base).unwrap();
    text.push_str(&format!(
        "\n[npu]\nbackend = \"hailo\"\nmodel = \"{}\"\nid = \"{NPU_ID}\"\nlibrary = \"{}\"\n\
         multi_process_service = {service}\nthreshold_rise_per_decade = 0.054\n\n[routing]\n\
         npu_min_eye_distance_px = 12.0\n\
         npu_retry_ms = 300\n[[routing.bands]]\nmin_eye_distance_px = 0.0\n\
         threshold_cosine = 0.32\n",
        d.hef("recognizer").display(),
        d.path.display()
    ));
    let path = base.with_file_name(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts `portier run` in real time and returns it once its stderr says `ready` (the log so
/// far alongside), or panics with the log if it ends first.
fn start_run(config: &Path, a: &Path, env: &[(&str, String)], ready: &str) -> (Child, String) {
    let mut cmd = portier_run(config, a, &[]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut log = String::new();
    let mut line = String::new();
    while stderr.read_line(&mut line).unwrap() > 0 {
        log.push_str(&line);
        if line.contains(ready) {
            // Keep draining stderr so the child never blocks on a full pipe.
            std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
            return (child, log);
        }
        line.clear();
    }
    let status = child.wait().unwrap();
    panic!("portier run ended ({status}) before `{ready}`:\n{log}");
}

fn stop(mut child: Child) {
    Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    child.wait().unwrap();
}

fn enroll(config: &Path, a: &Path, env: &[(&str, String)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portier"));
    cmd.arg("--config")
        .arg(config)
        .args(["enroll", "--name", "Lin Again"])
        .arg(a.join("faces/full").join(LIN.1))
        .env("PORTIER_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// Must show (issue 16): `portier enroll` while `portier run` holds the Hailo succeeds when both
/// go through HailoRT's multi-process service; without it the second process is refused with
/// an error that names the fix; and the service not running is said plainly.
#[test]
fn enroll_while_run_holds_the_npu_shares_it_through_the_service() {
    let Some(a) = assets() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = Double::new();
    let socket = dir.path().join("hailort_uds.sock");
    let env = [("HAILORT_SERVICE_ADDRESS", format!("unix://{}", socket.display()))];
    let base = cli_config(dir.path(), &a);
    let shared = hailo_config(&base, &d, "shared.toml", true);
    let alone = hailo_config(&base, &d, "alone.toml", false);

    // The service is not running: enrol says so, and what to do.
    let o = enroll(&shared, &a, &env);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("HAILO_RPC_FAILED") && err.contains("hailort.service"), "{err}");

    let _service = UnixListener::bind(&socket).unwrap();
    let (run, _) = start_run(&shared, &a, &env, &format!("npu: {NPU_ID} for faces"));
    // A process that does not use the service is refused while `run` holds the device.
    let o = enroll(&alone, &a, &env);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("HAILO_OUT_OF_PHYSICAL_DEVICES"), "{err}");
    assert!(err.contains("multi_process_service = true"), "{err}");
    // Through the service: enrolled, with the NPU's template too.
    let o = enroll(&shared, &a, &env);
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("enrolled Lin Again"), "{out}");
    stop(run);
    let config = Config::load(&shared).unwrap();
    let g = Gallery::open(&config.gallery_path, &config.gallery_key_file).unwrap();
    assert_eq!(g.matcher(NPU_ID).unwrap().people(), 1, "the NPU template was enrolled");
}

/// Must show (issue 16): without the service the device is exclusive: `portier enroll` while
/// `portier run` holds it is refused with a clear error, and `run` goes on.
#[test]
fn without_the_service_a_second_process_is_refused_clearly() {
    let Some(a) = assets() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = Double::new();
    let alone = hailo_config(&cli_config(dir.path(), &a), &d, "alone.toml", false);
    let (run, _) = start_run(&alone, &a, &[], &format!("npu: {NPU_ID} for faces"));
    let o = enroll(&alone, &a, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("the Hailo device is in use by another process"), "{err}");
    assert!(err.contains("HAILO_OUT_OF_PHYSICAL_DEVICES (74)"), "{err}");
    assert!(err.contains("hailort_service") && err.contains("multi_process_service"), "{err}");
    stop(run);
}

/// `portier run` on the double (no service) with its fault `env` (name, value) set, stopped by
/// SIGTERM once the NPU is back: its stderr, and the NPU embeddings its summary counts. `None`
/// without the assets.
fn run_until_npu_back(fault: (&str, &str)) -> Option<(String, u64)> {
    let a = assets()?;
    let dir = tempfile::tempdir().unwrap();
    let d = Double::new();
    let config = hailo_config(&cli_config(dir.path(), &a), &d, "fault.toml", false);
    // Enrolled with the NPU in place, so the person has its templates too (a gallery without
    // them keeps every face on the CPU).
    std::fs::remove_file(dir.path().join("gallery.db")).unwrap();
    let o = enroll(&config, &a, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut cmd = portier_run(&config, &a, &[]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).env(fault.0, fault.1);
    let mut child = cmd.spawn().unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut log = String::new();
    let mut line = String::new();
    let mut stopped = false;
    while stderr.read_line(&mut line).unwrap() > 0 {
        log.push_str(&line);
        if !stopped && line.contains("npu back") {
            Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
            stopped = true;
        }
        line.clear();
    }
    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    assert!(child.wait().unwrap().success(), "{log}");
    let summary = out.lines().find(|l| l.starts_with("summary:")).expect(&out);
    let npu: u64 = summary
        .split("(npu ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .and_then(|n| n.trim().parse().ok())
        .expect(summary);
    Some((log, npu))
}

/// Must show (issue 16): a device reset in the middle of `portier run` (every HailoRT call fails
/// until the vdevice is released) sends faces to the CPU, closes the NPU, opens it again with
/// back-off and embeds on it again.
#[test]
fn a_device_reset_mid_run_is_reopened_and_the_npu_used_again() {
    // Frames are counted per process from the first write, the open's probe included.
    let at_frame = (portier::embed::probe::PROBE_INPUTS + 5).to_string();
    let Some((log, npu)) = run_until_npu_back(("HAILO_DOUBLE_RESET_AT_FRAME", &at_frame)) else {
        return;
    };
    let at = |needle: &str| log.find(needle).unwrap_or_else(|| panic!("no `{needle}`:\n{log}"));
    let failed = at("npu failed, every face on the CPU now");
    assert!(log[failed..].contains("HAILO_DRIVER_OPERATION_FAILED"), "{log}");
    let lost = at("npu: lost");
    let reopened = at(&format!("npu: opened {NPU_ID} again after it was lost"));
    let back = at("npu back");
    assert!(failed.max(lost) < reopened && reopened <= back, "{log}");
    // Four embeddings before the reset (the fifth frame's write failed), more after it.
    assert!(npu > 4, "{npu}");
}

/// A device reset during the start's own probe of the NPU: the open fails, the door starts on
/// the CPU, and the next attempt opens it (libhailort stays loaded, so the device's state is
/// where the reset left it, as on a real Hailo; it used to be unloaded and loaded afresh).
#[test]
fn a_device_reset_during_the_opens_probe_is_opened_again() {
    let Some((log, npu)) = run_until_npu_back(("HAILO_DOUBLE_RESET_AT_FRAME", "3")) else {
        return;
    };
    let failed = log.find("npu: cannot use").unwrap_or_else(|| panic!("{log}"));
    assert!(log[failed..].contains("HAILO_DRIVER_OPERATION_FAILED"), "{log}");
    let opened = log.find(&format!("npu: opened {NPU_ID} after a failed start")).expect(&log);
    assert!(failed < opened && log[opened..].contains("npu back"), "{log}");
    assert!(npu > 0, "{npu}");
}

/// A timeout in the middle of `portier run` is mended by clearing the vstreams: faces go to the
/// CPU for `npu_retry_ms`, then the same device embeds again, without a reopen.
#[test]
fn a_timeout_mid_run_keeps_the_device_open() {
    let at_frame = (portier::embed::probe::PROBE_INPUTS + 3).to_string();
    let Some((log, npu)) = run_until_npu_back(("HAILO_DOUBLE_READ_TIMEOUT_AT_FRAME", &at_frame))
    else {
        return;
    };
    let failed = log.find("npu failed, every face on the CPU now").expect(&log);
    assert!(log[failed..].contains("timed out"), "{log}");
    assert!(!log.contains("npu: lost") && !log.contains("opened"), "{log}");
    assert!(log.contains("npu back"), "{log}");
    assert!(npu > 2, "{npu}");
}
