//! Door I/O over the `rppal` crate (memory-mapped GPIO registers, `/dev/gpiomem0` on the Pi 5's
//! RP1, `/dev/gpiomem` on older Pis), lines named by BCM GPIO number.
//!
//! Maintenance: rppal is in maintenance mode and stopped receiving fixes in July 2025 (see
//! ARCHITECTURE.md, "Hardware notes"). It also bypasses the kernel: nothing stops another
//! process from driving the same pin, and a kernel update that renumbers or re-maps RP1 is not
//! seen. The GPIO character-device backend (`gpio.rs`, feature `gpio-cdev`) is the default on
//! the appliance; this one is kept for images without it and as a second opinion on hardware.
//!
//! The relay pin's level is written before its mode is switched to output (rppal's
//! `into_output_low/high`), so it starts at the secure level without a glitch; it is not reset
//! to an input when dropped (a floating relay input is not a secure state): dropping the relay
//! drives it to its secure level and leaves it an output there, which the registers keep after
//! the process ends. The emergency handle shares the relay pin through a mutex that it only
//! ever `try_lock`s: it never blocks, and gives up only if the interrupted thread itself is
//! inside a relay write (a signal handler on that thread; the write it interrupted is the
//! loop's own, and the next start secures the relay first thing).
//!
//! This module must not: decide anything about the door (levels come from
//! [`crate::door::secure_level`]), block, or allocate on the pin paths.

use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError, TryLockError};

use embedded_hal::digital::{ErrorType, OutputPin, PinState};
use rppal::gpio::{Bias, Gpio, InputPin as RppalInput, Level, OutputPin as RppalOutput};

use crate::door::{secure_level, DoorConfig, EmergencySecure};

/// What [`open_door_pins`] claims. Pins are BCM GPIO numbers (GPIO17 is 17), not header pins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RppalSettings {
    /// The relay's BCM GPIO number.
    pub relay: u8,
    /// The door contact's BCM GPIO number.
    pub contact: u8,
    /// The exit button's BCM GPIO number.
    pub exit_button: u8,
    /// The level the relay starts at: the door's secure level.
    pub relay_initial: PinState,
    /// Bias of both inputs.
    pub input_bias: Bias,
}

impl RppalSettings {
    /// Settings from the config's `[door]` table: `[door.gpio]`'s lines as BCM numbers; the
    /// error names the key.
    pub fn from_config(section: &super::DoorSection) -> Result<Self, String> {
        use super::LineId;
        let lines =
            section.gpio.as_ref().ok_or("key `door.gpio`: required by this backend".to_owned())?;
        let pin = |key: &str, id: &LineId| match id {
            LineId::Offset(o) if *o < 64 => Ok(*o as u8),
            _ => Err(format!("key `door.gpio.{key}`: rppal takes BCM pin numbers (0..64)")),
        };
        Ok(Self::new(
            pin("relay", &lines.relay)?,
            pin("contact", &lines.contact)?,
            pin("exit_button", &lines.exit_button)?,
            &section.door,
        ))
    }

    /// Settings for `door`: the relay starts at [`secure_level`], inputs pulled up.
    pub fn new(relay: u8, contact: u8, exit_button: u8, door: &DoorConfig) -> Self {
        Self {
            relay,
            contact,
            exit_button,
            relay_initial: secure_level(door),
            input_bias: Bias::PullUp,
        }
    }
}

/// Errors of the rppal backend; messages name the BCM GPIO.
#[derive(Debug, thiserror::Error)]
pub enum RppalError {
    /// rppal could not open the GPIO registers (unknown board, no access to /dev/gpiomem*).
    #[error("cannot open the gpio registers with rppal: {source}")]
    Open {
        /// The cause.
        source: rppal::gpio::Error,
    },
    /// A pin could not be claimed (not on this board, or already in use in this process).
    #[error("cannot claim the {role} (bcm gpio {pin}): {source}")]
    Pin {
        /// "relay", "door contact" or "exit button".
        role: &'static str,
        /// The BCM GPIO number.
        pin: u8,
        /// The cause.
        source: rppal::gpio::Error,
    },
    /// Two roles name the same pin.
    #[error("{first} and {second} are both bcm gpio {pin}")]
    SameLine {
        /// One role.
        first: &'static str,
        /// The other.
        second: &'static str,
        /// The shared pin.
        pin: u8,
    },
}

/// Fails if two roles name the same pin.
fn check_distinct(settings: &RppalSettings) -> Result<(), RppalError> {
    let pins = [
        ("relay", settings.relay),
        ("door contact", settings.contact),
        ("exit button", settings.exit_button),
    ];
    for (i, (first, a)) in pins.iter().enumerate() {
        for (second, b) in &pins[i + 1..] {
            if a == b {
                return Err(RppalError::SameLine { first, second, pin: *a });
            }
        }
    }
    Ok(())
}

/// rppal's level for an embedded-hal pin state.
fn level_of(state: PinState) -> Level {
    match state {
        PinState::High => Level::High,
        PinState::Low => Level::Low,
    }
}

/// The lock relay, shared with its [`EmergencySecure`] handle.
#[derive(Debug)]
pub struct RelayPin {
    pin: Arc<Mutex<RppalOutput>>,
    /// The level that keeps the door locked, written on drop.
    secure: Level,
}

impl Drop for RelayPin {
    fn drop(&mut self) {
        self.write(self.secure);
    }
}

impl RelayPin {
    fn write(&mut self, level: Level) {
        // A poisoned lock only means a thread panicked while writing; the pin is still fine.
        self.pin.lock().unwrap_or_else(PoisonError::into_inner).write(level);
    }
}

impl ErrorType for RelayPin {
    type Error = Infallible;
}

impl OutputPin for RelayPin {
    fn set_low(&mut self) -> Result<(), Infallible> {
        self.write(Level::Low);
        Ok(())
    }

    fn set_high(&mut self) -> Result<(), Infallible> {
        self.write(Level::High);
        Ok(())
    }
}

/// How often the emergency path retries a relay lock held by another thread (a register write
/// takes nanoseconds; this bounds the wait to a few milliseconds even on a loaded core).
const EMERGENCY_TRIES: u32 = 1000;

/// Drives the relay to its secure level from the panic hook without blocking.
#[derive(Debug)]
pub struct RelayEmergency {
    pin: Arc<Mutex<RppalOutput>>,
    level: Level,
}

impl EmergencySecure for RelayEmergency {
    fn secure_now(&self) -> bool {
        for _ in 0..EMERGENCY_TRIES {
            match self.pin.try_lock() {
                Ok(mut pin) => {
                    pin.write(self.level);
                    return true;
                }
                Err(TryLockError::Poisoned(poisoned)) => {
                    poisoned.into_inner().write(self.level);
                    return true;
                }
                Err(TryLockError::WouldBlock) => std::thread::yield_now(),
            }
        }
        false
    }
}

/// What [`open_door_pins`] returns: relay, door contact, exit button (rppal's input pins
/// implement the embedded-hal 1 traits), and the relay's emergency handle.
pub type DoorPins = (RelayPin, RppalInput, RppalInput, Arc<dyn EmergencySecure>);

/// Claims the three door pins: the relay as an output already at `settings.relay_initial`, the
/// inputs with `settings.input_bias` (no interrupts: the state machine polls).
pub fn open_door_pins(settings: &RppalSettings) -> Result<DoorPins, RppalError> {
    check_distinct(settings)?;
    let gpio = Gpio::new().map_err(|source| RppalError::Open { source })?;
    let claim = |role, pin| gpio.get(pin).map_err(|source| RppalError::Pin { role, pin, source });

    let level = level_of(settings.relay_initial);
    let mut relay = match level {
        Level::Low => claim("relay", settings.relay)?.into_output_low(),
        Level::High => claim("relay", settings.relay)?.into_output_high(),
    };
    relay.set_reset_on_drop(false);
    let relay = Arc::new(Mutex::new(relay));

    let input = |role, pin| -> Result<RppalInput, RppalError> {
        let pin = claim(role, pin)?;
        Ok(match settings.input_bias {
            Bias::PullUp => pin.into_input_pullup(),
            Bias::PullDown => pin.into_input_pulldown(),
            Bias::Off => pin.into_input(),
        })
    };
    let contact = input("door contact", settings.contact)?;
    let button = input("exit button", settings.exit_button)?;
    log::info!(
        "rppal: relay gpio {} (initial {:?}), door contact gpio {}, exit button gpio {}",
        settings.relay,
        settings.relay_initial,
        settings.contact,
        settings.exit_button
    );
    let emergency = RelayEmergency { pin: Arc::clone(&relay), level };
    Ok((RelayPin { pin: relay, secure: level }, contact, button, Arc::new(emergency)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::door::LockWiring;

    #[test]
    fn relay_starts_at_the_secure_level() {
        let door = DoorConfig { lock: LockWiring::FailSafe, ..DoorConfig::default() };
        let s = RppalSettings::new(17, 27, 22, &door);
        assert_eq!(level_of(s.relay_initial), Level::High);
        assert_eq!(s.input_bias, Bias::PullUp);
        let s = RppalSettings::new(17, 27, 22, &DoorConfig::default());
        assert_eq!(level_of(s.relay_initial), Level::Low);
    }

    #[test]
    fn the_same_pin_twice_is_refused() {
        let s = RppalSettings::new(17, 27, 27, &DoorConfig::default());
        let err = check_distinct(&s).unwrap_err();
        assert_eq!(err.to_string(), "door contact and exit button are both bcm gpio 27");
        assert!(check_distinct(&RppalSettings::new(17, 27, 22, &DoorConfig::default())).is_ok());
    }
}
