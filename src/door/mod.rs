//! Door controller: the lock relay, the door contact and the request-to-exit button.
//!
//! [`Door`] is a pure state machine of (inputs, now). The caller owns the loop and passes the
//! monotonic time since start (`now`) to every call; the machine decides when to energise or
//! release the lock relay, debounces its two inputs, and reports what happened as
//! [`DoorEvent`]s (unlocks and relocks, door opened and closed, forced door, door held open,
//! exit requests). Pins come through the embedded-hal 1.0 digital traits, so the same code
//! drives the Linux GPIO character device on the appliance and mock pins in tests.
//!
//! This module must not: sleep, read clocks, or touch anything but its pins.
//!
//! Electrical conventions (the usual Raspberry Pi wiring: inputs pulled up to 3.3 V, switches
//! to ground):
//! * the door contact is described by [`ContactWiring`]: a normally-closed contact conducts
//!   while the door is closed, so its pin reads **low** when the door is closed and **high**
//!   when it is open (a cut wire reads as "open"); a normally-open contact is the reverse;
//! * the exit button is pressed when its pin reads low if
//!   [`DoorConfig::exit_button_active_low`], high otherwise;
//! * the relay is energised by driving its pin high if [`DoorConfig::relay_active_high`], low
//!   otherwise; [`LockWiring`] says whether energised means unlocked or locked.
//!
//! Every [`Door::poll`] reads the contact once and then the button once (`is_high`), in that
//! order.

use std::time::Duration;

use embedded_hal::digital::{InputPin, OutputPin, PinState};
use serde::Deserialize;

pub mod fake;
#[cfg(feature = "gpio-cdev")]
pub mod gpio;
pub mod relock;
#[cfg(feature = "rppal")]
pub mod rppal;

/// Which door I/O backend drives the pins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum DoorBackend {
    /// Logs relay changes; inputs idle (door closed, button released).
    #[default]
    Fake,
    /// The Linux GPIO character device (feature `gpio-cdev`).
    GpioCdev,
    /// rppal (feature `rppal`).
    Rppal,
}

/// GPIO lines of the door (by offset or by line name such as `GPIO17`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpioLines {
    /// GPIO chip device (`/dev/gpiochip0`), or empty to find the lines by name on any chip.
    #[serde(default)]
    pub chip: String,
    /// Relay output line.
    pub relay: LineId,
    /// Door contact input line.
    pub contact: LineId,
    /// Exit button input line.
    pub exit_button: LineId,
}

/// A GPIO line: an offset on the chip or a line name.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum LineId {
    /// Offset on the chip.
    Offset(u32),
    /// Line name (e.g. `GPIO17` on a Raspberry Pi).
    Name(String),
}

/// The door section, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct DoorSection {
    /// Which backend.
    pub backend: DoorBackend,
    /// Timing and wiring.
    pub door: DoorConfig,
    /// Lines, required by the GPIO backends.
    pub gpio: Option<GpioLines>,
}

/// An opened door: its controller, and the handle that drives the relay secure from a panic
/// hook or a signal handler.
pub type OpenedDoor = (Box<dyn DoorControl>, std::sync::Arc<dyn EmergencySecure>);

/// Why the configured door backend could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The `[door]` table does not fit the backend; the message names the key.
    #[error("{0}")]
    Config(String),
    /// The backend is not compiled into this binary.
    #[error(
        "key `door.backend`: {backend} is not built into this binary (build with the \
         `{feature}` feature)"
    )]
    NotBuilt {
        /// The backend as the config names it.
        backend: &'static str,
        /// The cargo feature that builds it.
        feature: &'static str,
    },
    /// The lines cannot be claimed.
    #[error("{0}")]
    Pins(String),
    /// The relay cannot be driven to its secure level.
    #[error(transparent)]
    Door(#[from] DoorError),
}

/// Opens the door backend `section` names, relay at its secure level (as [`camera::open`]
/// opens the camera; a backend not built in is [`OpenError::NotBuilt`]).
///
/// [`camera::open`]: crate::camera::open
pub fn open(section: &DoorSection) -> Result<OpenedDoor, OpenError> {
    match section.backend {
        DoorBackend::Fake => {
            log::info!("door: fake backend (relay changes are logged; door closed, no button)");
            let (door, emergency, _) = fake::idle_door(&section.door)?;
            Ok((Box::new(door), emergency))
        }
        #[cfg(feature = "gpio-cdev")]
        DoorBackend::GpioCdev => {
            let settings = gpio::GpioSettings::from_config(section)
                .map_err(|e| OpenError::Config(e.to_string()))?;
            let (relay, contact, button, emergency) =
                gpio::open_door_pins(&settings).map_err(|e| OpenError::Pins(e.to_string()))?;
            let door = Door::new(section.door.clone(), relay, contact, button, Duration::ZERO)?;
            Ok((Box::new(door), emergency))
        }
        #[cfg(not(feature = "gpio-cdev"))]
        DoorBackend::GpioCdev => {
            Err(OpenError::NotBuilt { backend: "gpio-cdev", feature: "gpio-cdev" })
        }
        #[cfg(feature = "rppal")]
        DoorBackend::Rppal => {
            let settings = rppal::RppalSettings::from_config(section).map_err(OpenError::Config)?;
            let (relay, contact, button, emergency) =
                rppal::open_door_pins(&settings).map_err(|e| OpenError::Pins(e.to_string()))?;
            let door = Door::new(section.door.clone(), relay, contact, button, Duration::ZERO)?;
            Ok((Box::new(door), emergency))
        }
        #[cfg(not(feature = "rppal"))]
        DoorBackend::Rppal => Err(OpenError::NotBuilt { backend: "rppal", feature: "rppal" }),
    }
}

/// Longest accepted relay pulse.
const MAX_PULSE: Duration = Duration::from_secs(60);
/// Longest accepted held-open delay.
const MAX_HELD_OPEN: Duration = Duration::from_secs(3600);
/// Longest accepted input debounce time.
const MAX_DEBOUNCE: Duration = Duration::from_secs(1);

/// How the door contact is wired: which electrical level means "door closed".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContactWiring {
    /// The contact conducts while the door is open: the pin reads high when the door is closed.
    NormallyOpen,
    /// The contact conducts while the door is closed: the pin reads low when the door is closed
    /// (a cut wire reads as an open door).
    NormallyClosed,
}

/// How the lock reacts to the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockWiring {
    /// Relay energised = unlocked; power loss leaves the door locked (electric strikes).
    FailSecure,
    /// Relay energised = locked; de-energised = unlocked, power loss unlocks (maglocks).
    FailSafe,
}

/// Door controller configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DoorConfig {
    /// How long the lock stays released per unlock (e.g. 3 s).
    pub pulse: Duration,
    /// A door opened during an authorised unlock and still open this long after it opened
    /// raises [`Alarm::HeldOpen`].
    pub held_open_after: Duration,
    /// Which contact level means "door closed".
    pub contact: ContactWiring,
    /// Whether the energised relay locks or unlocks.
    pub lock: LockWiring,
    /// The relay is energised by a high pin (true) or a low pin (false).
    pub relay_active_high: bool,
    /// The exit button reads low when pressed (true) or high when pressed (false).
    pub exit_button_active_low: bool,
    /// How long an input level must be stable before it counts.
    pub debounce: Duration,
}

impl Default for DoorConfig {
    /// 3 s pulse, held-open after 30 s, normally-closed contact, fail-secure lock, active-high
    /// relay, active-low exit button, 50 ms debounce.
    fn default() -> Self {
        Self {
            pulse: Duration::from_secs(3),
            held_open_after: Duration::from_secs(30),
            contact: ContactWiring::NormallyClosed,
            lock: LockWiring::FailSecure,
            relay_active_high: true,
            exit_button_active_low: true,
            debounce: Duration::from_millis(50),
        }
    }
}

impl DoorConfig {
    /// Checks the durations; the error message starts with the offending field's name.
    pub fn validate(&self) -> Result<(), String> {
        fn check(field: &str, value: Duration, max: Duration) -> Result<(), String> {
            if value.is_zero() {
                Err(format!("{field} must be greater than zero"))
            } else if value > max {
                Err(format!("{field} is {value:?}, more than the maximum of {max:?}"))
            } else {
                Ok(())
            }
        }
        check("pulse", self.pulse, MAX_PULSE)?;
        check("held_open_after", self.held_open_after, MAX_HELD_OPEN)?;
        check("debounce", self.debounce, MAX_DEBOUNCE)?;
        if self.debounce >= self.pulse {
            return Err(format!(
                "debounce ({:?}) must be shorter than pulse ({:?})",
                self.debounce, self.pulse
            ));
        }
        Ok(())
    }
}

/// The relay level that keeps the door locked under `config` (de-energised for fail-secure
/// wiring, energised for fail-safe), for backends that must drive it without a [`Door`].
pub fn secure_level(config: &DoorConfig) -> PinState {
    let energised = match config.lock {
        LockWiring::FailSecure => false,
        LockWiring::FailSafe => true,
    };
    PinState::from(energised == config.relay_active_high)
}

/// Drives a relay to its secure level from outside the loop: from the panic hook, or when the
/// loop thread is stuck. Implemented by each relay backend over its own handle (a duplicated
/// GPIO line descriptor, the fake relay's shared state); must be async-signal-tolerant in
/// practice: no locks that the loop might hold, no allocation.
pub trait EmergencySecure: Send + Sync {
    /// Drives the relay to its secure level now, and says whether that worked as far as the
    /// backend can tell (the ioctl succeeded, the pin was written). Callers in signal handlers
    /// and the panic hook ignore the answer (there is no one left to tell); the attempt is made
    /// every time.
    fn secure_now(&self) -> bool;
}

/// The relays the panic hook secures (see [`install_panic_hook`]).
static EMERGENCY: std::sync::OnceLock<std::sync::Arc<dyn EmergencySecure>> =
    std::sync::OnceLock::new();

/// Registers the relay to secure on panic and installs a panic hook (chained before the
/// previous one, so the door is secured before anything is printed). Only the first call
/// registers; later calls return false. A panic on any thread secures the relay: the loop may
/// be the thread that died.
pub fn install_panic_hook(relay: std::sync::Arc<dyn EmergencySecure>) -> bool {
    if EMERGENCY.set(relay).is_err() {
        return false;
    }
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        secure_on_emergency();
        previous(info);
    }));
    true
}

/// Secures the relay registered with [`install_panic_hook`], if any (panic hook, fatal
/// signal handlers of [`relock`], fatal error path). Async-signal-safe: an atomic load and the
/// handle's own signal-safe write.
pub fn secure_on_emergency() {
    if let Some(relay) = EMERGENCY.get() {
        relay.secure_now();
    }
}

/// Why the door was unlocked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnlockReason {
    /// A recognised face.
    Face {
        /// The gallery name of the person recognised.
        person: String,
    },
    /// The request-to-exit button.
    ExitButton,
    /// A remote command (e.g. over MQTT).
    Remote,
}

/// An alarm condition of the door.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alarm {
    /// The door stayed open too long after an authorised opening.
    HeldOpen,
    /// The door opened while locked with no unlock to account for it.
    Forced,
}

/// A snapshot of the door's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DoorState {
    /// The lock is commanded locked (the relay is in its secure state).
    pub locked: bool,
    /// The (debounced) contact says the door is open.
    pub open: bool,
    /// The current alarm, cleared when the door closes.
    pub alarm: Option<Alarm>,
}

/// Something that happened at the door.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DoorEvent {
    /// The lock was released (or a running release was extended).
    Unlocked {
        /// Why.
        reason: UnlockReason,
    },
    /// The lock was re-engaged.
    Locked,
    /// The door opened.
    Opened,
    /// The door closed.
    Closed,
    /// The door has been open too long after an authorised opening (raised once per opening).
    HeldOpen,
    /// The door opened while locked (raised once per opening).
    Forced,
    /// The exit button was pressed (followed by `Unlocked { reason: ExitButton }`).
    ExitRequested,
}

/// Door controller errors.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DoorError {
    /// A pin read or write failed.
    #[error("door pin error: {0}")]
    Pin(String),
    /// The configuration is invalid.
    #[error("invalid door configuration: {0}")]
    Config(String),
    /// The process is stopping (SIGTERM/SIGINT secured the relay): no more unlocks.
    #[error("unlock refused: portier is stopping")]
    Stopping,
}

fn pin_error<E: embedded_hal::digital::Error>(what: &str, err: &E) -> DoorError {
    DoorError::Pin(format!("{what}: {:?}", err.kind()))
}

/// A debounced digital input level.
#[derive(Debug, Clone, Copy)]
struct Debounced {
    /// The accepted level.
    stable: bool,
    /// The last level read.
    candidate: bool,
    /// When `candidate` was first read.
    since: Duration,
}

impl Debounced {
    fn new(level: bool, now: Duration) -> Self {
        Self { stable: level, candidate: level, since: now }
    }

    /// Feeds one reading; returns the time the new level first appeared when it is accepted.
    fn update(&mut self, level: bool, now: Duration, debounce: Duration) -> Option<Duration> {
        if level != self.candidate {
            self.candidate = level;
            self.since = now;
        }
        if self.candidate != self.stable && now.saturating_sub(self.since) >= debounce {
            self.stable = self.candidate;
            Some(self.since)
        } else {
            None
        }
    }
}

/// The door as the loop sees it, whatever its pins: [`Door`] over any embedded-hal pins
/// implements it, so the loop holds one `Box<dyn DoorControl>` chosen in `main`.
pub trait DoorControl {
    /// See [`Door::unlock`].
    fn unlock(&mut self, reason: UnlockReason, now: Duration) -> Result<(), DoorError>;
    /// See [`Door::poll`].
    fn poll(&mut self, now: Duration, events: &mut Vec<DoorEvent>) -> Result<(), DoorError>;
    /// See [`Door::secure`].
    fn secure(&mut self) -> Result<(), DoorError>;
    /// See [`Door::state`].
    fn state(&self) -> DoorState;
    /// See [`Door::relock_due`].
    fn relock_due(&self) -> Option<Duration>;
    /// The configuration the door runs with.
    fn config(&self) -> &DoorConfig;
}

impl<R: OutputPin, C: InputPin, B: InputPin> DoorControl for Door<R, C, B> {
    fn unlock(&mut self, reason: UnlockReason, now: Duration) -> Result<(), DoorError> {
        Door::unlock(self, reason, now)
    }

    fn poll(&mut self, now: Duration, events: &mut Vec<DoorEvent>) -> Result<(), DoorError> {
        Door::poll(self, now, events)
    }

    fn secure(&mut self) -> Result<(), DoorError> {
        Door::secure(self)
    }

    fn state(&self) -> DoorState {
        Door::state(self)
    }

    fn relock_due(&self) -> Option<Duration> {
        Door::relock_due(self)
    }

    fn config(&self) -> &DoorConfig {
        &self.config
    }
}

/// The door controller. See the module documentation.
#[derive(Debug)]
pub struct Door<R: OutputPin, C: InputPin, B: InputPin> {
    config: DoorConfig,
    relay: R,
    contact: C,
    button: B,
    /// The relay is commanded to unlocked.
    unlocked: bool,
    /// When the running release ends (relock is due); set while unlocked.
    pulse_until: Option<Duration>,
    /// When the last release ended: an opening that began by then was authorised.
    grant_ended: Option<Duration>,
    /// Debounced contact level ("door open").
    open: Debounced,
    /// Debounced button level ("pressed").
    pressed: Debounced,
    /// When the current authorised opening began (for the held-open alarm).
    opened_at: Option<Duration>,
    alarm: Option<Alarm>,
    /// Events from `unlock` and `secure`, handed out by the next `poll`.
    pending: Vec<DoorEvent>,
}

impl<R: OutputPin, C: InputPin, B: InputPin> Door<R, C, B> {
    /// Validates `config`, drives the relay to its secure (locked) state and reads the initial
    /// input levels (taken as settled: a button held at start is not a press). A door open at
    /// start is reported (`Opened` at the first poll) and its held-open timer starts at `now`:
    /// a door propped open while portier was down raises [`Alarm::HeldOpen`] after
    /// [`DoorConfig::held_open_after`] unless it closes (it is not `Forced`: nobody can tell
    /// when it opened).
    pub fn new(
        config: DoorConfig,
        relay: R,
        contact: C,
        button: B,
        now: Duration,
    ) -> Result<Self, DoorError> {
        config.validate().map_err(DoorError::Config)?;
        let mut door = Self {
            config,
            relay,
            contact,
            button,
            unlocked: true,
            pulse_until: None,
            grant_ended: None,
            open: Debounced::new(false, now),
            pressed: Debounced::new(false, now),
            opened_at: None,
            alarm: None,
            pending: Vec::new(),
        };
        door.secure()?;
        door.pending.clear();
        let open = door.read_open()?;
        let pressed = door.read_pressed()?;
        door.open = Debounced::new(open, now);
        door.pressed = Debounced::new(pressed, now);
        if open {
            log::warn!(
                "door: open at start; held-open alarm in {} s unless it closes",
                door.config.held_open_after.as_secs()
            );
            door.opened_at = Some(now);
            door.pending.push(DoorEvent::Opened);
        }
        Ok(door)
    }

    /// Releases the lock for [`DoorConfig::pulse`] from `now`; during a running release this
    /// extends it to `now + pulse`. If the relay write fails, the relay is driven back to its
    /// secure state (best effort) and the error is returned.
    pub fn unlock(&mut self, reason: UnlockReason, now: Duration) -> Result<(), DoorError> {
        let level = self.relay_level(true);
        if let Err(err) = self.relay.set_state(level) {
            let err = pin_error("relay (unlock)", &err);
            log::error!("door: unlock ({reason:?}) failed: {err}; securing");
            if let Err(e) = self.secure() {
                log::error!("door: securing after failed unlock also failed: {e}");
            }
            return Err(err);
        }
        log::info!("door: unlocked ({reason:?}) until {:.3?} (loop time)", now + self.config.pulse);
        self.unlocked = true;
        self.pulse_until = Some(now + self.config.pulse);
        self.pending.push(DoorEvent::Unlocked { reason });
        Ok(())
    }

    /// Advances the machine to `now`: relocks when the release is over, reads and debounces
    /// the inputs, and appends what happened to `events` (which it does not clear), starting
    /// with the events of `unlock`/`secure` calls since the last poll. A pressed exit button
    /// unlocks (`ExitRequested` then `Unlocked`). On a pin error the events so far are kept,
    /// and a failed relock is retried by the next poll.
    pub fn poll(&mut self, now: Duration, events: &mut Vec<DoorEvent>) -> Result<(), DoorError> {
        events.append(&mut self.pending);

        if self.unlocked && self.pulse_until.is_some_and(|until| now >= until) {
            let level = self.relay_level(false);
            self.relay.set_state(level).map_err(|e| pin_error("relay (relock)", &e))?;
            log::info!("door: locked (release over)");
            self.unlocked = false;
            self.pulse_until = None;
            self.grant_ended = Some(now);
            events.push(DoorEvent::Locked);
        }

        let open = self.read_open()?;
        let pressed = self.read_pressed()?;
        let debounce = self.config.debounce;

        if self.pressed.update(pressed, now, debounce).is_some() && self.pressed.stable {
            log::info!("door: exit button pressed");
            events.push(DoorEvent::ExitRequested);
            self.unlock(UnlockReason::ExitButton, now)?;
            events.append(&mut self.pending);
        }

        if let Some(since) = self.open.update(open, now, debounce) {
            if self.open.stable {
                events.push(DoorEvent::Opened);
                let authorised = self.unlocked || self.grant_ended.is_some_and(|end| since <= end);
                if authorised {
                    log::info!("door: opened");
                    self.opened_at = Some(since);
                } else {
                    log::warn!("door: FORCED open");
                    self.alarm = Some(Alarm::Forced);
                    events.push(DoorEvent::Forced);
                }
            } else {
                log::info!("door: closed");
                self.opened_at = None;
                self.alarm = None;
                events.push(DoorEvent::Closed);
            }
        }

        if let Some(opened_at) = self.opened_at {
            if self.alarm.is_none() && now.saturating_sub(opened_at) >= self.config.held_open_after
            {
                log::warn!("door: held open since {opened_at:?}");
                self.alarm = Some(Alarm::HeldOpen);
                events.push(DoorEvent::HeldOpen);
            }
        }
        Ok(())
    }

    /// Relocks now (SIGTERM, panic hook, fatal error) and ends any release. Idempotent: the
    /// relay is driven to its secure level on every call. A `Locked` event is queued for the
    /// next poll if the door was unlocked. If the write fails the next poll retries it.
    pub fn secure(&mut self) -> Result<(), DoorError> {
        let level = self.relay_level(false);
        if let Err(err) = self.relay.set_state(level) {
            // The relay state is unknown: report it unlocked, with a relock due at once so
            // that `poll` retries.
            self.unlocked = true;
            self.pulse_until = Some(Duration::ZERO);
            return Err(pin_error("relay (secure)", &err));
        }
        if self.unlocked {
            log::info!("door: secured");
            self.pending.push(DoorEvent::Locked);
        }
        self.unlocked = false;
        self.pulse_until = None;
        self.grant_ended = None;
        Ok(())
    }

    /// When the running release is due to end (on the caller's clock), while unlocked.
    pub fn relock_due(&self) -> Option<Duration> {
        if self.unlocked {
            self.pulse_until
        } else {
            None
        }
    }

    /// The current state.
    pub fn state(&self) -> DoorState {
        DoorState { locked: !self.unlocked, open: self.open.stable, alarm: self.alarm }
    }

    /// The relay level for the commanded lock state.
    fn relay_level(&self, unlocked: bool) -> PinState {
        let secure = secure_level(&self.config);
        if unlocked {
            !secure
        } else {
            secure
        }
    }

    /// Raw "door open" from the contact.
    fn read_open(&mut self) -> Result<bool, DoorError> {
        let high = self.contact.is_high().map_err(|e| pin_error("door contact", &e))?;
        Ok(match self.config.contact {
            ContactWiring::NormallyClosed => high,
            ContactWiring::NormallyOpen => !high,
        })
    }

    /// Raw "pressed" from the exit button.
    fn read_pressed(&mut self) -> Result<bool, DoorError> {
        let high = self.button.is_high().map_err(|e| pin_error("exit button", &e))?;
        Ok(high != self.config.exit_button_active_low)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use embedded_hal_mock::eh1::digital::{Mock, State, Transaction as T};
    use embedded_hal_mock::eh1::MockError;

    use super::*;

    use State::{High, Low};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn open_gives_the_fake_door_and_names_the_key_or_the_feature_for_the_others() {
        use super::{DoorBackend, DoorSection, GpioLines, LineId};
        let section = |backend, gpio| DoorSection { backend, door: config(), gpio };
        let (door, emergency) = open(&section(DoorBackend::Fake, None)).unwrap();
        assert!(door.state().locked && !door.state().open);
        assert!(emergency.secure_now());
        // Without `[door.gpio]`: the key when the backend is built, the feature when not.
        for (backend, built, feature) in [
            (DoorBackend::GpioCdev, cfg!(feature = "gpio-cdev"), "gpio-cdev"),
            (DoorBackend::Rppal, cfg!(feature = "rppal"), "rppal"),
        ] {
            let Err(e) = open(&section(backend, None)) else { panic!("{backend:?} opened") };
            let want = if built { "key `door.gpio`" } else { feature };
            assert!(e.to_string().contains(want), "{backend:?}: {e}");
            assert!(matches!(e, OpenError::Config(_) | OpenError::NotBuilt { .. }), "{e:?}");
        }
        // rppal takes BCM numbers only.
        let lines = GpioLines {
            chip: String::new(),
            relay: LineId::Offset(64),
            contact: LineId::Offset(27),
            exit_button: LineId::Name("GPIO22".into()),
        };
        let Err(e) = open(&section(DoorBackend::Rppal, Some(lines))) else { panic!("opened") };
        let want = if cfg!(feature = "rppal") { "door.gpio.relay" } else { "rppal" };
        assert!(e.to_string().contains(want), "{e}");
    }

    /// 3 s pulse, held open after 10 s, 50 ms debounce, NC contact (low = closed), fail-secure,
    /// active-high relay, active-low button (high = released).
    fn config() -> DoorConfig {
        DoorConfig {
            pulse: ms(3000),
            held_open_after: ms(10_000),
            debounce: ms(50),
            ..DoorConfig::default()
        }
    }

    fn sets(levels: &[State]) -> Vec<T> {
        levels.iter().map(|&l| T::set(l)).collect()
    }

    fn gets(levels: &[State]) -> Vec<T> {
        levels.iter().map(|&l| T::get(l)).collect()
    }

    /// A door over mock pins; the test keeps clones to check them with `done`.
    struct Rig {
        door: Door<Mock, Mock, Mock>,
        pins: [Mock; 3],
        events: Vec<DoorEvent>,
    }

    impl Rig {
        /// `contact` and `button` hold one level per read: the first is read by `new`, then
        /// one per poll.
        fn new(config: DoorConfig, relay: &[T], contact: &[State], button: &[State]) -> Self {
            let pins = [Mock::new(relay), Mock::new(&gets(contact)), Mock::new(&gets(button))];
            let [r, c, b] = pins.clone();
            let door = Door::new(config, r, c, b, Duration::ZERO).unwrap();
            Self { door, pins, events: Vec::new() }
        }

        /// Polls at `t` ms and returns the events of this poll.
        fn poll(&mut self, t: u64) -> Vec<DoorEvent> {
            self.events.clear();
            self.door.poll(ms(t), &mut self.events).unwrap();
            self.events.clone()
        }

        fn done(mut self) {
            for pin in &mut self.pins {
                pin.done();
            }
        }
    }

    fn face() -> UnlockReason {
        UnlockReason::Face { person: "ada".into() }
    }

    #[test]
    fn new_secures_fail_secure() {
        for (active_high, level) in [(true, Low), (false, High)] {
            let config = DoorConfig { relay_active_high: active_high, ..config() };
            let rig = Rig::new(config, &sets(&[level]), &[Low], &[High]);
            assert_eq!(rig.door.state(), DoorState { locked: true, open: false, alarm: None });
            rig.done();
        }
    }

    #[test]
    fn new_secures_fail_safe() {
        for (active_high, level) in [(true, High), (false, Low)] {
            let config = DoorConfig {
                lock: LockWiring::FailSafe,
                relay_active_high: active_high,
                ..config()
            };
            let rig = Rig::new(config, &sets(&[level]), &[Low], &[High]);
            assert!(rig.door.state().locked);
            rig.done();
        }
    }

    #[test]
    fn new_rejects_bad_config_without_touching_pins() {
        let config = DoorConfig { pulse: Duration::ZERO, ..config() };
        let pins = [Mock::new(&[]), Mock::new(&[]), Mock::new(&[])];
        let [r, c, b] = pins.clone();
        let err = Door::new(config, r, c, b, Duration::ZERO).unwrap_err();
        assert!(matches!(err, DoorError::Config(ref m) if m.starts_with("pulse")), "{err}");
        for mut pin in pins {
            pin.done();
        }
    }

    #[test]
    fn pulse_timing() {
        let mut rig = Rig::new(config(), &sets(&[Low, High, Low]), &[Low; 6], &[High; 6]);
        rig.door.unlock(face(), ms(1000)).unwrap();
        assert!(!rig.door.state().locked);
        assert_eq!(rig.poll(1000), vec![DoorEvent::Unlocked { reason: face() }]);
        assert_eq!(rig.poll(2000), vec![]);
        assert_eq!(rig.poll(3999), vec![]);
        assert!(!rig.door.state().locked);
        assert_eq!(rig.poll(4000), vec![DoorEvent::Locked]);
        assert!(rig.door.state().locked);
        assert_eq!(rig.poll(9000), vec![]);
        rig.done();
    }

    #[test]
    fn unlock_during_pulse_extends_it() {
        let mut rig = Rig::new(config(), &sets(&[Low, High, High, Low]), &[Low; 4], &[High; 4]);
        rig.door.unlock(face(), ms(0)).unwrap();
        rig.door.unlock(UnlockReason::Remote, ms(2000)).unwrap();
        assert_eq!(
            rig.poll(3000),
            vec![
                DoorEvent::Unlocked { reason: face() },
                DoorEvent::Unlocked { reason: UnlockReason::Remote }
            ]
        );
        assert_eq!(rig.poll(4999), vec![]);
        assert_eq!(rig.poll(5000), vec![DoorEvent::Locked]);
        rig.done();
    }

    #[test]
    fn fail_safe_inverts_relay_levels() {
        let config = DoorConfig { lock: LockWiring::FailSafe, ..config() };
        let mut rig = Rig::new(config, &sets(&[High, Low, High]), &[Low; 3], &[High; 3]);
        rig.door.unlock(UnlockReason::Remote, ms(0)).unwrap();
        assert_eq!(rig.poll(2999).len(), 1);
        assert_eq!(rig.poll(3000), vec![DoorEvent::Locked]);
        rig.done();
    }

    /// Unlock, open the door (debounced), close it, for a contact reading `closed` when shut.
    fn open_and_close(wiring: ContactWiring, closed: State, open: State) {
        let config = DoorConfig { contact: wiring, ..config() };
        let contact = [closed, open, open, closed, closed];
        let mut rig = Rig::new(config, &sets(&[Low, High]), &contact, &[High; 5]);
        assert!(!rig.door.state().open);
        rig.door.unlock(face(), ms(0)).unwrap();
        assert_eq!(rig.poll(100), vec![DoorEvent::Unlocked { reason: face() }]);
        assert_eq!(rig.poll(150), vec![DoorEvent::Opened]);
        assert!(rig.door.state().open);
        assert_eq!(rig.poll(200), vec![]);
        assert_eq!(rig.poll(250), vec![DoorEvent::Closed]);
        assert_eq!(rig.door.state(), DoorState { locked: false, open: false, alarm: None });
        rig.done();
    }

    #[test]
    fn normally_closed_contact() {
        open_and_close(ContactWiring::NormallyClosed, Low, High);
    }

    #[test]
    fn normally_open_contact() {
        open_and_close(ContactWiring::NormallyOpen, High, Low);
    }

    #[test]
    fn glitch_shorter_than_debounce_is_ignored() {
        let config = DoorConfig { debounce: ms(50), ..config() };
        let contact = [Low, Low, High, Low, Low, High, High, High];
        let mut rig = Rig::new(config, &sets(&[Low, High]), &contact, &[High; 8]);
        rig.door.unlock(UnlockReason::Remote, ms(0)).unwrap();
        assert_eq!(rig.poll(0).len(), 1);
        // Open for 40 ms (< 50 ms), then closed again.
        assert_eq!(rig.poll(10), vec![]);
        assert_eq!(rig.poll(50), vec![]);
        assert_eq!(rig.poll(200), vec![]);
        assert!(!rig.door.state().open);
        // A real opening: accepted once stable for 50 ms.
        assert_eq!(rig.poll(300), vec![]);
        assert_eq!(rig.poll(349), vec![]);
        assert_eq!(rig.poll(350), vec![DoorEvent::Opened]);
        rig.done();
    }

    #[test]
    fn exit_button_unlocks() {
        // Pressed (low) at 100 ms, bounce at 110, stable from 120; released at 500.
        let button = [High, Low, High, Low, Low, Low, High, High, High];
        let mut rig = Rig::new(config(), &sets(&[Low, High, Low]), &[Low; 9], &button);
        assert_eq!(rig.poll(100), vec![]);
        assert_eq!(rig.poll(110), vec![]);
        assert_eq!(rig.poll(120), vec![]);
        assert_eq!(
            rig.poll(170),
            vec![
                DoorEvent::ExitRequested,
                DoorEvent::Unlocked { reason: UnlockReason::ExitButton }
            ]
        );
        assert!(!rig.door.state().locked);
        // Held down: no repeat.
        assert_eq!(rig.poll(400), vec![]);
        assert_eq!(rig.poll(500), vec![]);
        assert_eq!(rig.poll(3169), vec![]);
        assert_eq!(rig.poll(3170), vec![DoorEvent::Locked]);
        rig.done();
    }

    #[test]
    fn forced_open_raises_forced_once() {
        let contact = [Low, High, High, High, High, Low, Low];
        let mut rig = Rig::new(config(), &sets(&[Low]), &contact, &[High; 7]);
        assert_eq!(rig.poll(1000), vec![]);
        assert_eq!(rig.poll(1050), vec![DoorEvent::Opened, DoorEvent::Forced]);
        assert_eq!(rig.door.state().alarm, Some(Alarm::Forced));
        assert_eq!(rig.poll(5000), vec![]);
        // Not HeldOpen on top of Forced.
        assert_eq!(rig.poll(20_000), vec![]);
        assert_eq!(rig.poll(20_010), vec![]);
        assert_eq!(rig.poll(20_060), vec![DoorEvent::Closed]);
        assert_eq!(rig.door.state(), DoorState { locked: true, open: false, alarm: None });
        rig.done();
    }

    #[test]
    fn opening_just_before_relock_is_not_forced() {
        // The door opens at 2990 ms (pulse ends at 3000), accepted at 3040 after the relock.
        let contact = [Low, High, High];
        let mut rig = Rig::new(config(), &sets(&[Low, High, Low]), &contact, &[High; 3]);
        rig.door.unlock(face(), ms(0)).unwrap();
        assert_eq!(rig.poll(2990).len(), 1);
        assert_eq!(rig.poll(3040), vec![DoorEvent::Locked, DoorEvent::Opened]);
        assert_eq!(rig.door.state().alarm, None);
        rig.done();
    }

    #[test]
    fn held_open_after_grant() {
        // Opens at 500 ms (accepted at 550): HeldOpen due at 10.5 s.
        let contact = [Low, High, High, High, High, High, High, Low, Low];
        let mut rig = Rig::new(config(), &sets(&[Low, High, Low]), &contact, &[High; 9]);
        rig.door.unlock(face(), ms(0)).unwrap();
        assert_eq!(rig.poll(500).len(), 1);
        assert_eq!(rig.poll(550), vec![DoorEvent::Opened]);
        assert_eq!(rig.poll(3000), vec![DoorEvent::Locked]);
        assert_eq!(rig.poll(10_499), vec![]);
        assert_eq!(rig.poll(10_500), vec![DoorEvent::HeldOpen]);
        assert_eq!(rig.door.state().alarm, Some(Alarm::HeldOpen));
        assert_eq!(rig.poll(30_000), vec![]);
        assert_eq!(rig.poll(31_000), vec![]);
        assert_eq!(rig.poll(31_050), vec![DoorEvent::Closed]);
        assert_eq!(rig.door.state(), DoorState { locked: true, open: false, alarm: None });
        rig.done();
    }

    #[test]
    fn a_door_open_at_start_is_reported_and_raises_held_open() {
        use crate::door::fake::{FixedInput, LoggedRelay};
        let config = DoorConfig { held_open_after: Duration::from_secs(10), ..config() };
        // NC contact: high = open.
        let contact = FixedInput::new(true);
        let level = contact.level();
        let mut door =
            Door::new(config, LoggedRelay::new(false), contact, FixedInput::new(true), ms(0))
                .unwrap();
        assert!(door.state().open && door.state().locked && door.state().alarm.is_none());
        let mut events = Vec::new();
        door.poll(ms(10), &mut events).unwrap();
        assert_eq!(events, [DoorEvent::Opened]);
        events.clear();
        door.poll(ms(9_999), &mut events).unwrap();
        assert!(events.is_empty());
        door.poll(ms(10_000), &mut events).unwrap();
        assert_eq!(events, [DoorEvent::HeldOpen]);
        assert_eq!(door.state().alarm, Some(Alarm::HeldOpen));
        // It closes: the alarm clears.
        level.store(false, std::sync::atomic::Ordering::SeqCst);
        events.clear();
        door.poll(ms(10_010), &mut events).unwrap();
        door.poll(ms(10_100), &mut events).unwrap();
        assert_eq!(events, [DoorEvent::Closed]);
        assert_eq!(door.state().alarm, None);
    }

    #[test]
    fn secure_mid_pulse_relocks_now() {
        let mut rig = Rig::new(config(), &sets(&[Low, High, Low, Low]), &[Low; 4], &[High; 4]);
        rig.door.unlock(face(), ms(0)).unwrap();
        assert_eq!(rig.poll(1000).len(), 1);
        rig.door.secure().unwrap();
        assert!(rig.door.state().locked);
        rig.door.secure().unwrap();
        assert_eq!(rig.poll(1001), vec![DoorEvent::Locked]);
        // No second relock at the old pulse end.
        assert_eq!(rig.poll(3000), vec![]);
        rig.done();
    }

    #[test]
    fn failed_unlock_goes_secure() {
        let err = MockError::Io(std::io::ErrorKind::Other);
        let relay = [T::set(Low), T::set(High).with_error(err), T::set(Low)];
        let mut rig = Rig::new(config(), &relay, &[Low; 2], &[High; 2]);
        let e = rig.door.unlock(face(), ms(0)).unwrap_err();
        assert!(matches!(e, DoorError::Pin(ref m) if m.contains("Other")), "{e}");
        assert!(rig.door.state().locked);
        assert_eq!(rig.poll(10), vec![]);
        rig.done();
    }

    #[test]
    fn failed_secure_is_retried_by_poll() {
        let err = MockError::Io(std::io::ErrorKind::Other);
        let relay = [T::set(Low), T::set(Low).with_error(err), T::set(Low)];
        let mut rig = Rig::new(config(), &relay, &[Low; 2], &[High; 2]);
        assert!(matches!(rig.door.secure(), Err(DoorError::Pin(_))));
        assert!(!rig.door.state().locked);
        assert_eq!(rig.poll(10), vec![DoorEvent::Locked]);
        assert!(rig.door.state().locked);
        rig.done();
    }

    #[test]
    fn config_validation_names_the_field() {
        assert_eq!(DoorConfig::default().validate(), Ok(()));
        let cases = [
            ("pulse", DoorConfig { pulse: Duration::ZERO, ..config() }),
            ("pulse", DoorConfig { pulse: Duration::from_secs(3600), ..config() }),
            ("held_open_after", DoorConfig { held_open_after: Duration::ZERO, ..config() }),
            ("held_open_after", DoorConfig { held_open_after: Duration::MAX, ..config() }),
            ("debounce", DoorConfig { debounce: Duration::ZERO, ..config() }),
            ("debounce", DoorConfig { debounce: Duration::from_secs(5), ..config() }),
            ("debounce", DoorConfig { debounce: ms(500), pulse: ms(400), ..config() }),
        ];
        for (field, config) in cases {
            let err = config.validate().unwrap_err();
            assert!(err.starts_with(field), "{field}: {err}");
        }
    }
}
