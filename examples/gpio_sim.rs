//! Checks the GPIO character-device door backend against the kernel's `gpio-sim` module.
//!
//! Needs root, `gpio-sim` loaded and configfs mounted at /sys/kernel/config (run it in a VM:
//! see scripts/vivid-test). It creates a simulated device with two banks through configfs, opens
//! the door lines through `door::gpio`, and drives the simulated switches through the sim's
//! sysfs `pull` attributes. Prints one line per check and a closing "N passed, N failed"; exits
//! 1 when a check failed, 77 when gpio-sim is not available.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use embedded_hal::digital::{InputPin, OutputPin};
use gpiocdev::line::{Bias, Direction};
use portier::door::gpio::{open_door_pins, GpioError, GpioSettings, LineSpec};
use portier::door::{install_panic_hook, Door, DoorConfig, DoorEvent, LockWiring, UnlockReason};

const CONFIGFS: &str = "/sys/kernel/config/gpio-sim";

type Check = Result<(), String>;

/// The simulated device: bank0 has lines 0..8 (3 = GPIO17, 4 = GPIO27, 5 = GPIO22, 6 = GPIO4),
/// bank1 lines 0..4 (0 = GPIO4, a name that is not unique across chips).
struct Sim {
    chip0: String,
    chip1: String,
}

fn write(path: impl AsRef<Path>, value: &str) -> Check {
    let path = path.as_ref();
    fs::write(path, value).map_err(|e| format!("write {value:?} to {}: {e}", path.display()))
}

fn mkdir(path: impl AsRef<Path>) -> Check {
    let path = path.as_ref();
    fs::create_dir(path).map_err(|e| format!("mkdir {}: {e}", path.display()))
}

fn read(path: impl AsRef<Path>) -> Result<String, String> {
    let path = path.as_ref();
    fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(|e| format!("read {}: {e}", path.display()))
}

impl Sim {
    fn create() -> Result<Self, String> {
        let dev = PathBuf::from(CONFIGFS).join("portier-door");
        mkdir(&dev)?;
        let bank = |n: &str, lines: &str, names: &[(u32, &str)]| -> Check {
            let bank = dev.join(n);
            mkdir(&bank)?;
            write(bank.join("num_lines"), lines)?;
            for (offset, name) in names {
                let line = bank.join(format!("line{offset}"));
                mkdir(&line)?;
                write(line.join("name"), name)?;
            }
            Ok(())
        };
        bank("bank0", "8", &[(3, "GPIO17"), (4, "GPIO27"), (5, "GPIO22"), (6, "GPIO4")])?;
        bank("bank1", "4", &[(0, "GPIO4")])?;
        write(dev.join("live"), "1")?;
        Ok(Self {
            chip0: read(dev.join("bank0/chip_name"))?,
            chip1: read(dev.join("bank1/chip_name"))?,
        })
    }

    fn attr(chip: &str, offset: u32, name: &str) -> PathBuf {
        PathBuf::from(format!("/sys/bus/gpio/devices/{chip}/sim_gpio{offset}/{name}"))
    }

    /// The level the simulated line is driven to (for outputs: what we wrote).
    fn value(chip: &str, offset: u32) -> Result<bool, String> {
        Ok(read(Self::attr(chip, offset, "value"))? == "1")
    }

    /// Pulls a simulated input up (switch open) or down (switch closed to ground).
    fn pull(chip: &str, offset: u32, up: bool) -> Check {
        write(Self::attr(chip, offset, "pull"), if up { "pull-up" } else { "pull-down" })
    }
}

fn expect<T: PartialEq + std::fmt::Debug>(what: &str, got: T, want: T) -> Check {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: got {got:?}, want {want:?}"))
    }
}

fn pin<T, E: std::fmt::Debug>(what: &str, r: Result<T, E>) -> Result<T, String> {
    r.map_err(|e| format!("{what}: {e:?}"))
}

fn name(n: &str) -> LineSpec {
    LineSpec::Name(n.to_owned())
}

fn main() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        signal_child(&spec);
    }
    env_logger_lite();
    if !Path::new(CONFIGFS).is_dir() {
        println!("gpio-sim: {CONFIGFS} missing (modprobe gpio-sim; mount -t configfs)");
        std::process::exit(77);
    }
    let sim = match Sim::create() {
        Ok(sim) => sim,
        Err(e) => {
            println!("gpio-sim: cannot create the simulated chips: {e}");
            std::process::exit(1);
        }
    };
    println!("gpio-sim: bank0 = {}, bank1 = {}", sim.chip0, sim.chip1);
    let (c0, c1) = (sim.chip0.clone(), sim.chip1.clone());
    let chip0_dev = format!("/dev/{c0}");

    let mut passed = 0;
    let mut failed = 0;
    let mut report = |what: &str, result: Check| match result {
        Ok(()) => {
            passed += 1;
            println!("ok - {what}");
        }
        Err(e) => {
            failed += 1;
            println!("FAIL - {what}: {e}");
        }
    };

    // 1. Lines by name on any chip; fail-secure active-high relay starts low; inputs pulled up.
    let default = DoorConfig::default();
    let settings =
        GpioSettings::new(None, name("GPIO17"), name("GPIO27"), name("GPIO22"), &default);
    let opened = open_door_pins(&settings);
    let (mut relay, mut contact, mut button, emergency) = match opened {
        Ok(pins) => pins,
        Err(e) => {
            report("open lines by name", Err(e.to_string()));
            println!("{passed} passed, {failed} failed");
            std::process::exit(1);
        }
    };
    report(
        "open by name: relay starts at the secure level (low), inputs read high (pull-up)",
        (|| {
            expect("relay level", Sim::value(&c0, 3)?, false)?;
            expect("contact high", pin("contact", contact.is_high())?, true)?;
            expect("button high", pin("button", button.is_high())?, true)
        })(),
    );
    report(
        "line requests: consumer, direction, bias, no edge detection, no kernel debounce",
        (|| {
            let chip = pin("open chip", gpiocdev::Chip::from_path(&chip0_dev))?;
            let relay = pin("relay info", chip.line_info(3))?;
            expect("relay consumer", relay.consumer.as_str(), "portier")?;
            expect("relay direction", relay.direction, Direction::Output)?;
            for offset in [4, 5] {
                let info = pin("input info", chip.line_info(offset))?;
                expect("input consumer", info.consumer.as_str(), "portier")?;
                expect("input direction", info.direction, Direction::Input)?;
                expect("input bias", info.bias, Some(Bias::PullUp))?;
                expect("input edge detection", info.edge_detection, None)?;
                expect("input debounce", info.debounce_period, None)?;
            }
            Ok(())
        })(),
    );

    // 2. Inputs follow the simulated switches.
    report(
        "inputs follow the simulated pulls",
        (|| {
            Sim::pull(&c0, 4, false)?;
            expect("contact low after pull-down", pin("contact", contact.is_low())?, true)?;
            Sim::pull(&c0, 5, false)?;
            expect("button high after pull-down", pin("button", button.is_high())?, false)?;
            Sim::pull(&c0, 5, true)?;
            expect("button high after pull-up", pin("button", button.is_high())?, true)
        })(),
    );

    // 3. The relay toggles; the emergency handle releases it.
    report(
        "relay toggles and EmergencySecure releases it",
        (|| {
            pin("relay high", relay.set_high())?;
            expect("relay after set_high", Sim::value(&c0, 3)?, true)?;
            pin("relay low", relay.set_low())?;
            expect("relay after set_low", Sim::value(&c0, 3)?, false)?;
            pin("relay high", relay.set_high())?;
            emergency.secure_now();
            expect("relay after secure_now", Sim::value(&c0, 3)?, false)
        })(),
    );

    // 4. The door state machine over the real lines (contact closed = low, button released).
    report(
        "door: unlock pulse, exit button, opening, secure_now mid-pulse",
        (|| {
            Sim::pull(&c0, 4, false)?;
            Sim::pull(&c0, 5, true)?;
            let ms = Duration::from_millis;
            let mut door = Door::new(default.clone(), relay, contact, button, ms(0))
                .map_err(|e| e.to_string())?;
            let mut events = Vec::new();
            door.unlock(UnlockReason::Remote, ms(0)).map_err(|e| e.to_string())?;
            expect("relay while unlocked", Sim::value(&c0, 3)?, true)?;
            door.poll(ms(2999), &mut events).map_err(|e| e.to_string())?;
            door.poll(ms(3000), &mut events).map_err(|e| e.to_string())?;
            expect("relay after the pulse", Sim::value(&c0, 3)?, false)?;
            Sim::pull(&c0, 5, false)?; // button pressed
            door.poll(ms(3100), &mut events).map_err(|e| e.to_string())?;
            door.poll(ms(3200), &mut events).map_err(|e| e.to_string())?;
            expect("relay after the exit button", Sim::value(&c0, 3)?, true)?;
            Sim::pull(&c0, 5, true)?;
            Sim::pull(&c0, 4, true)?; // door opens
            door.poll(ms(3300), &mut events).map_err(|e| e.to_string())?;
            door.poll(ms(3400), &mut events).map_err(|e| e.to_string())?;
            let want = vec![
                DoorEvent::Unlocked { reason: UnlockReason::Remote },
                DoorEvent::Locked,
                DoorEvent::ExitRequested,
                DoorEvent::Unlocked { reason: UnlockReason::ExitButton },
                DoorEvent::Opened,
            ];
            expect("events", events, want)?;
            emergency.secure_now();
            expect("relay after secure_now mid-pulse", Sim::value(&c0, 3)?, false)?;
            drop(door);
            // The emergency handle's duplicate keeps the request (and the line) ours.
            let chip = pin("open chip", gpiocdev::Chip::from_path(&chip0_dev))?;
            let info = pin("relay info", chip.line_info(3))?;
            expect("relay still requested after drop", info.used, true)?;
            emergency.secure_now();
            expect("relay after secure_now on a dropped pin", Sim::value(&c0, 3)?, false)
        })(),
    );

    // 5. Errors against the real chips.
    report(
        "errors: ambiguous name, name on another chip, busy line, offset out of range",
        (|| {
            let s = |chip: Option<&str>, relay: LineSpec, contact: u32, button: u32| {
                let mut s = GpioSettings::new(
                    chip.map(str::to_owned),
                    relay,
                    LineSpec::Offset(contact),
                    LineSpec::Offset(button),
                    &default,
                );
                if chip.is_none() {
                    s.contact = name("GPIO27");
                    s.exit_button = name("GPIO22");
                }
                s
            };
            let err = |s: GpioSettings| match open_door_pins(&s) {
                Ok(_) => Err("opened, want an error".to_owned()),
                Err(e) => Ok(e),
            };
            let e = err(s(None, name("GPIO4"), 0, 0))?;
            println!("  {e}");
            if !matches!(e, GpioError::AmbiguousName { .. }) {
                return Err(format!("GPIO4 anywhere: {e}"));
            }
            let e = err(s(Some(&c1), name("GPIO17"), 1, 2))?;
            println!("  {e}");
            if !matches!(&e, GpioError::NameOnOtherChip { found, offset: 3, .. } if *found == chip0_dev)
            {
                return Err(format!("GPIO17 on bank1: {e}"));
            }
            let e = err(s(Some(&c0), LineSpec::Offset(3), 1, 2))?;
            println!("  {e}");
            if !matches!(e, GpioError::Request { offset: 3, .. }) || !e.to_string().contains("busy")
            {
                return Err(format!("busy relay line: {e}"));
            }
            let e = err(s(Some(&c1), LineSpec::Offset(9), 1, 2))?;
            println!("  {e}");
            if !matches!(e, GpioError::OffsetOutOfRange { lines: 4, .. }) {
                return Err(format!("offset 9 on bank1: {e}"));
            }
            Ok(())
        })(),
    );

    // 6. A name on the configured chip wins over the same name elsewhere.
    report(
        "name on the configured chip (bank1 GPIO4), inputs by offset",
        (|| {
            let s = GpioSettings::new(
                Some(c1.clone()),
                name("GPIO4"),
                LineSpec::Offset(1),
                LineSpec::Offset(2),
                &default,
            );
            let (_relay, _contact, _button, _emergency) =
                open_door_pins(&s).map_err(|e| e.to_string())?;
            let chip = pin("open chip", gpiocdev::Chip::from_path(format!("/dev/{c1}")))?;
            expect("bank1 line 0 used", pin("info", chip.line_info(0))?.used, true)?;
            expect("bank1 line 0 level", Sim::value(&c1, 0)?, false)
        })(),
    );

    // 7. The panic hook secures a fail-safe relay (secure = energised = high) when the thread
    //    that owns it panics mid-unlock.
    report(
        "panic hook: fail-safe relay by offset starts high, panic mid-unlock drives it high",
        (|| {
            let failsafe = DoorConfig { lock: LockWiring::FailSafe, ..DoorConfig::default() };
            let s = GpioSettings::new(
                Some(c0.clone()),
                LineSpec::Offset(0),
                LineSpec::Offset(1),
                LineSpec::Offset(2),
                &failsafe,
            );
            let (mut relay, _contact, _button, emergency) =
                open_door_pins(&s).map_err(|e| e.to_string())?;
            expect("fail-safe relay initial", Sim::value(&c0, 0)?, true)?;
            if !install_panic_hook(emergency) {
                return Err("panic hook already installed".to_owned());
            }
            let c0t = c0.clone();
            let joined = std::thread::spawn(move || {
                let _ = relay.set_low(); // unlock
                let unlocked = Sim::value(&c0t, 0);
                println!("  (expected panic follows)");
                panic!("simulated loop panic mid-unlock (relay level {unlocked:?})");
            })
            .join();
            expect("thread panicked", joined.is_err(), true)?;
            expect("relay after the panic", Sim::value(&c0, 0)?, true)
        })(),
    );

    // 8. Every fatal signal and SIGTERM/SIGINT, sent to a process mid-pulse, drives the real
    //    line to its secure level within 50 ms (issue 15). The child installs a slow handler of
    //    its own first (it sleeps 300 ms), then portier's relock, which secures and chains to
    //    it: the process still holds the line while we read it, so what we read is what the
    //    handler drove, not the kernel's release at exit.
    let signals = [
        ("SIGHUP", libc::SIGHUP),
        ("SIGQUIT", libc::SIGQUIT),
        ("SIGABRT", libc::SIGABRT),
        ("SIGSEGV", libc::SIGSEGV),
        ("SIGBUS", libc::SIGBUS),
        ("SIGILL", libc::SIGILL),
        ("SIGFPE", libc::SIGFPE),
        ("SIGTERM", libc::SIGTERM),
        ("SIGINT", libc::SIGINT),
    ];
    for (signame, signal) in signals {
        report(
            &format!("{signame} mid-pulse: the relay line reads secure within 50 ms"),
            signal_mid_pulse(&c0, signal),
        );
    }

    // 9. The relock guard over the real lines: an unlock that no poll ever ends (a stalled
    //    loop) is secured within pulse + 200 ms.
    report("relock guard: a stalled loop's pulse ends within pulse + 200 ms", guard_on_lines(&c0));

    println!("{passed} passed, {failed} failed");
    std::process::exit(if failed == 0 { 0 } else { 1 });
}

/// The environment variable that makes this program the child of check 8: `<chip>:<signal>`.
const CHILD_ENV: &str = "PORTIER_GPIO_SIM_SIGNAL_CHILD";
/// The child's lines on bank0 (free by then: 0 is held by check 7's emergency handle, 3..5 by
/// check 1's pins).
const CHILD_RELAY: u32 = 6;

/// Check 9.
fn guard_on_lines(chip: &str) -> Check {
    use portier::door::relock::{RelockGuard, GUARD_MARGIN};
    use portier::door::DoorControl;
    use std::time::Instant;
    let config = DoorConfig { pulse: Duration::from_millis(300), ..DoorConfig::default() };
    let s = GpioSettings::new(
        Some(chip.to_owned()),
        LineSpec::Offset(CHILD_RELAY),
        LineSpec::Offset(7),
        LineSpec::Offset(1),
        &config,
    );
    let (relay, contact, button, emergency) = open_door_pins(&s).map_err(|e| e.to_string())?;
    let door = Door::new(config.clone(), relay, contact, button, Duration::ZERO)
        .map_err(|e| e.to_string())?;
    let mut guarded =
        RelockGuard::new(Box::new(door), emergency, GUARD_MARGIN).map_err(|e| e.to_string())?;
    let start = Instant::now();
    guarded.unlock(UnlockReason::Remote, Duration::ZERO).map_err(|e| e.to_string())?;
    expect("relay energised", Sim::value(chip, CHILD_RELAY)?, true)?;
    let mut secured = None;
    while start.elapsed() < Duration::from_secs(2) {
        if !Sim::value(chip, CHILD_RELAY)? {
            secured = Some(start.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let secured = secured.ok_or("still energised 2 s after a 300 ms pulse")?;
    println!("  secured {:.0} ms after the unlock", secured.as_secs_f64() * 1000.0);
    if secured < config.pulse || secured > config.pulse + Duration::from_millis(200) {
        return Err(format!("secured after {secured:?}, outside [pulse, pulse + 200 ms]"));
    }
    expect("guard fired once", guarded.fired(), 1)
}

/// Parent half of check 8.
fn signal_mid_pulse(chip: &str, signal: libc::c_int) -> Check {
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::ExitStatusExt;
    use std::time::Instant;
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut child = std::process::Command::new(exe)
        .env(CHILD_ENV, format!("{chip}:{signal}"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn: {e}"))?;
    let mut line = String::new();
    let stdout = child.stdout.take().ok_or("no stdout")?;
    BufReader::new(stdout).read_line(&mut line).map_err(|e| format!("child: {e}"))?;
    if line.trim() != "energised" {
        let _ = child.kill();
        return Err(format!("child said {line:?}"));
    }
    expect("relay energised before the signal", Sim::value(chip, CHILD_RELAY)?, true)?;
    let pid = libc::pid_t::try_from(child.id()).map_err(|e| e.to_string())?;
    let sent = Instant::now();
    // SAFETY: kill(2) on our own child, not yet waited for.
    if unsafe { libc::kill(pid, signal) } != 0 {
        return Err(format!("kill: {}", std::io::Error::last_os_error()));
    }
    let mut secured = None;
    while sent.elapsed() < Duration::from_millis(250) {
        if !Sim::value(chip, CHILD_RELAY)? {
            secured = Some(sent.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let status = child.wait().map_err(|e| format!("wait: {e}"))?;
    let secured = secured.ok_or("the line still read energised 250 ms after the signal")?;
    println!("  secure after {:.1} ms; child {status:?}", secured.as_secs_f64() * 1000.0);
    if matches!(signal, libc::SIGTERM | libc::SIGINT) {
        // The stop path `portier run` uses: secured in the handler, then a graceful exit.
        expect("child exit after a stop signal", status.code(), Some(0))?;
    } else {
        expect("child ended by the signal", status.signal(), Some(signal))?;
    }
    if secured > Duration::from_millis(50) {
        return Err(format!("secure only after {secured:?}"));
    }
    Ok(())
}

/// Child half of check 8: the pins of a fail-secure, active-high door on bank0, the relay
/// energised, portier's relock on `signal` chained before a slow handler; waits for the signal.
/// SIGTERM/SIGINT take the path `portier run` takes (`install_stop_relock`: secure in the
/// handler, set the stop flag); the child then holds the line 300 ms more and exits 0.
fn signal_child(spec: &str) -> ! {
    extern "C" fn slow(_signal: libc::c_int) {
        let pause = libc::timespec { tv_sec: 0, tv_nsec: 300_000_000 };
        // SAFETY: nanosleep is async-signal-safe; both pointers are valid.
        unsafe { libc::nanosleep(&pause, std::ptr::null_mut()) };
    }
    let fail = |what: &str| -> ! {
        println!("child: {what}");
        std::process::exit(2)
    };
    let Some((chip, signal)) = spec.split_once(':') else { fail("bad spec") };
    let Ok(signal) = signal.parse::<libc::c_int>() else { fail("bad signal") };
    let stop_path = matches!(signal, libc::SIGTERM | libc::SIGINT);
    if !stop_path {
        // SAFETY: installs a handler that only calls nanosleep.
        let previous = unsafe { libc::signal(signal, slow as *const () as libc::sighandler_t) };
        if previous == libc::SIG_ERR {
            fail("signal");
        }
    }
    let s = GpioSettings::new(
        Some(chip.to_owned()),
        LineSpec::Offset(CHILD_RELAY),
        LineSpec::Offset(7),
        LineSpec::Offset(1),
        &DoorConfig::default(),
    );
    let Ok((mut relay, _contact, _button, emergency)) = open_door_pins(&s) else { fail("open") };
    install_panic_hook(emergency);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let installed = if stop_path {
        portier::door::relock::install_stop_relock(&stop)
    } else {
        portier::door::relock::install_relock_on(&[signal])
    };
    if installed.is_err() {
        fail("relock");
    }
    if relay.set_high().is_err() {
        fail("energise");
    }
    println!("energised");
    for _ in 0..3000 {
        if stop.load(std::sync::atomic::Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(300));
            std::process::exit(0);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    fail("no signal came")
}

/// Prints `log` records to stderr at info level (the example has no logger dependency).
fn env_logger_lite() {
    struct Stderr;
    impl log::Log for Stderr {
        fn enabled(&self, m: &log::Metadata<'_>) -> bool {
            m.level() <= log::Level::Info
        }
        fn log(&self, r: &log::Record<'_>) {
            if self.enabled(r.metadata()) {
                eprintln!("[{}] {}", r.level(), r.args());
            }
        }
        fn flush(&self) {}
    }
    static LOGGER: Stderr = Stderr;
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(log::LevelFilter::Info);
}
