//! The door backend used when no hardware is configured: a relay that logs its level changes
//! and inputs with a settable level (door closed and button released unless a test or a
//! simulation says otherwise). This is what `portier run` drives on a laptop.
//!
//! Must not: touch any device. Levels live in shared atomics so tests, the panic hook and a
//! simulation can read or set them from any thread.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use embedded_hal::digital::{ErrorType, InputPin, OutputPin};

use super::{secure_level, ContactWiring, Door, DoorConfig, DoorError, EmergencySecure};

/// The fake door used without hardware: a [`LoggedRelay`] at its secure level, the contact
/// reading "door closed" and the button "released" for `config`'s wiring. Returns the door, the
/// handle the panic hook secures, and the relay's level (true = high) for tests.
pub fn idle_door(config: &DoorConfig) -> Result<IdleDoor, DoorError> {
    let relay = LoggedRelay::new(secure_level(config) == embedded_hal::digital::PinState::High);
    let emergency = relay.emergency();
    let level = relay.level();
    let contact = FixedInput::new(config.contact == ContactWiring::NormallyOpen);
    let button = FixedInput::new(config.exit_button_active_low);
    let door = Door::new(config.clone(), relay, contact, button, std::time::Duration::ZERO)?;
    Ok((door, emergency, level))
}

/// The door [`idle_door`] makes.
pub type FakeDoor = Door<LoggedRelay, FixedInput, FixedInput>;

/// What [`idle_door`] returns: the door, its emergency handle, and the relay level.
pub type IdleDoor = (FakeDoor, Arc<dyn EmergencySecure>, Arc<AtomicBool>);

/// A relay that logs every change of level ("relay energised" / "relay released").
#[derive(Debug)]
pub struct LoggedRelay {
    high: Arc<AtomicBool>,
    secure_high: bool,
}

impl LoggedRelay {
    /// A relay whose pin starts at `secure_high` (the secure level, see
    /// [`super::secure_level`]).
    pub fn new(secure_high: bool) -> Self {
        Self { high: Arc::new(AtomicBool::new(secure_high)), secure_high }
    }

    /// Shared view of the pin level (true = high), for tests.
    pub fn level(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.high)
    }

    /// A handle that drives this relay to its secure level from any thread.
    pub fn emergency(&self) -> Arc<dyn EmergencySecure> {
        Arc::new(FakeEmergency { high: Arc::clone(&self.high), secure_high: self.secure_high })
    }

    fn set(&mut self, high: bool) {
        if self.high.swap(high, Ordering::SeqCst) != high {
            if high == self.secure_high {
                log::info!("relay released (pin {})", if high { "high" } else { "low" });
            } else {
                log::info!("relay energised (pin {})", if high { "high" } else { "low" });
            }
        }
    }
}

impl ErrorType for LoggedRelay {
    type Error = Infallible;
}

impl OutputPin for LoggedRelay {
    fn set_low(&mut self) -> Result<(), Infallible> {
        self.set(false);
        Ok(())
    }

    fn set_high(&mut self) -> Result<(), Infallible> {
        self.set(true);
        Ok(())
    }
}

struct FakeEmergency {
    high: Arc<AtomicBool>,
    secure_high: bool,
}

impl EmergencySecure for FakeEmergency {
    fn secure_now(&self) -> bool {
        if self.high.swap(self.secure_high, Ordering::SeqCst) != self.secure_high {
            // One write(2), not log or eprintln: this runs in signal handlers, and the logger
            // may hold a lock the dying thread held.
            super::relock::signal_safe_note("portier: relay released by the emergency path\n");
        }
        true
    }
}

/// An input whose level is whatever the shared flag says.
#[derive(Debug, Clone)]
pub struct FixedInput {
    high: Arc<AtomicBool>,
}

impl FixedInput {
    /// An input reading `high`.
    pub fn new(high: bool) -> Self {
        Self { high: Arc::new(AtomicBool::new(high)) }
    }

    /// Shared handle to set the level from elsewhere.
    pub fn level(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.high)
    }
}

impl ErrorType for FixedInput {
    type Error = Infallible;
}

impl InputPin for FixedInput {
    fn is_high(&mut self) -> Result<bool, Infallible> {
        Ok(self.high.load(Ordering::SeqCst))
    }

    fn is_low(&mut self) -> Result<bool, Infallible> {
        Ok(!self.high.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn relay_level_is_shared_and_emergency_restores_it() {
        let mut relay = LoggedRelay::new(false);
        let level = relay.level();
        let emergency = relay.emergency();
        relay.set_high().unwrap();
        assert!(level.load(Ordering::SeqCst));
        emergency.secure_now();
        assert!(!level.load(Ordering::SeqCst));
    }

    #[test]
    fn input_follows_its_flag() {
        let mut input = FixedInput::new(false);
        assert!(input.is_low().unwrap());
        input.level().store(true, Ordering::SeqCst);
        assert!(input.is_high().unwrap());
    }
}
