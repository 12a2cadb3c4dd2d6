//! Door I/O over the Linux GPIO character device (`/dev/gpiochipN`, uAPI v2) with the
//! `gpiocdev` crate: the relay as an embedded-hal [`OutputPin`], the door contact and the exit
//! button as [`InputPin`]s, and an [`EmergencySecure`] handle for the panic hook.
//!
//! Lines are named by offset on a chip (`17` on `gpiochip0`) or by line name (`GPIO17`). Names
//! are what survive the Pi 5's renumbering: its RP1 header bank is `gpiochip4` on older kernels
//! and `gpiochip0` on newer ones, while the names stay `GPIO0`..`GPIO27`. Without a chip, names
//! are looked up on every chip and must be unique.
//!
//! The relay line is requested as an output whose initial value is part of the request, so the
//! kernel drives it straight to the secure level (no glitch between request and first write).
//! Inputs are requested with the configured bias and without edge detection or kernel debounce:
//! the door state machine polls and debounces them itself.
//!
//! This module must not: decide anything about the door (levels come from
//! [`crate::door::secure_level`] and the state machine), block, or allocate on the pin paths
//! (only their error paths do).

use std::fmt;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use embedded_hal::digital::{ErrorKind, ErrorType, InputPin, OutputPin, PinState};
use gpiocdev::line::{Bias, Offset, Value};
use gpiocdev::Request;

use crate::door::{secure_level, DoorConfig, EmergencySecure};

/// The consumer label the kernel shows for our lines (`gpioinfo`).
pub const CONSUMER: &str = "portier";

/// Which door line a setting or an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The lock relay (output).
    Relay,
    /// The door contact (input).
    Contact,
    /// The request-to-exit button (input).
    ExitButton,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Relay => "relay",
            Role::Contact => "door contact",
            Role::ExitButton => "exit button",
        })
    }
}

/// A GPIO line as the configuration names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineSpec {
    /// A line offset on the configured chip (`17`).
    Offset(Offset),
    /// A line name (`GPIO17`), found on the configured chip or, without one, on any chip.
    Name(String),
}

impl LineSpec {
    /// Parses a configuration value: all digits is an offset, anything else a line name.
    pub fn parse(text: &str) -> Result<Self, GpioError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(GpioError::InvalidLine { text: text.to_owned() });
        }
        if text.bytes().all(|b| b.is_ascii_digit()) {
            let offset =
                text.parse().map_err(|_| GpioError::InvalidLine { text: text.to_owned() })?;
            Ok(LineSpec::Offset(offset))
        } else {
            Ok(LineSpec::Name(text.to_owned()))
        }
    }
}

impl fmt::Display for LineSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LineSpec::Offset(offset) => write!(f, "line {offset}"),
            LineSpec::Name(name) => write!(f, "line {name:?}"),
        }
    }
}

/// What [`open_door_pins`] requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpioSettings {
    /// The chip: `gpiochip0`, `/dev/gpiochip4`, or `None` to find named lines on any chip.
    pub chip: Option<String>,
    /// The relay line.
    pub relay: LineSpec,
    /// The door contact line.
    pub contact: LineSpec,
    /// The exit button line.
    pub exit_button: LineSpec,
    /// The level the relay line is requested with: the door's secure level.
    pub relay_initial: PinState,
    /// Bias of both inputs; `None` leaves the line's bias as it is.
    pub input_bias: Option<Bias>,
    /// The consumer label shown by the kernel.
    pub consumer: String,
}

impl GpioSettings {
    /// Settings for `door`: the relay starts at [`secure_level`], inputs are pulled up (switches
    /// to ground, the usual Raspberry Pi wiring), consumer [`CONSUMER`].
    pub fn new(
        chip: Option<String>,
        relay: LineSpec,
        contact: LineSpec,
        exit_button: LineSpec,
        door: &DoorConfig,
    ) -> Self {
        Self {
            chip,
            relay,
            contact,
            exit_button,
            relay_initial: secure_level(door),
            input_bias: Some(Bias::PullUp),
            consumer: CONSUMER.to_owned(),
        }
    }

    /// The settings for a config's door section (`portier run`, `portier selftest`): its
    /// `[door.gpio]` lines and the door's wiring.
    pub fn from_config(section: &super::DoorSection) -> Result<Self, LinesConfigError> {
        use super::LineId;
        let lines = section.gpio.as_ref().ok_or(LinesConfigError::Missing)?;
        let spec = |key: &'static str, id: &LineId| {
            let text = match id {
                LineId::Offset(o) => o.to_string(),
                LineId::Name(n) => n.clone(),
            };
            LineSpec::parse(&text).map_err(|source| LinesConfigError::Line { key, source })
        };
        Ok(Self::new(
            (!lines.chip.is_empty()).then(|| lines.chip.clone()),
            spec("relay", &lines.relay)?,
            spec("contact", &lines.contact)?,
            spec("exit_button", &lines.exit_button)?,
            &section.door,
        ))
    }
}

/// A `[door.gpio]` section that does not describe three lines; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum LinesConfigError {
    /// The backend needs `[door.gpio]` and the config has none.
    #[error("key `door.gpio`: required by this backend")]
    Missing,
    /// A line is neither an offset nor a name.
    #[error("key `door.gpio.{key}`: {source}")]
    Line {
        /// `relay`, `contact` or `exit_button`.
        key: &'static str,
        /// Why the value is refused.
        source: GpioError,
    },
}

/// Errors of the GPIO character-device backend. Every message names the chip and the line.
#[derive(Debug, thiserror::Error)]
pub enum GpioError {
    /// A line setting that is neither an offset nor a name.
    #[error("invalid gpio line {text:?}: expected an offset (17) or a line name (GPIO17)")]
    InvalidLine {
        /// The setting as written.
        text: String,
    },
    /// A line given by offset without a chip.
    #[error("{role}: gpio line offset {offset} needs a chip (gpiochip0, /dev/gpiochip4)")]
    OffsetNeedsChip {
        /// The line's role.
        role: Role,
        /// The offset.
        offset: Offset,
    },
    /// A line offset past the chip's last line.
    #[error("{role}: {chip} has {lines} lines, so no line {offset}")]
    OffsetOutOfRange {
        /// The line's role.
        role: Role,
        /// The chip.
        chip: String,
        /// The offset.
        offset: Offset,
        /// How many lines the chip has.
        lines: usize,
    },
    /// No line of that name.
    #[error("{role}: no gpio line named {name:?} on {chip}")]
    NameNotFound {
        /// The line's role.
        role: Role,
        /// The line name.
        name: String,
        /// The chip searched, or "any readable chip".
        chip: String,
    },
    /// The name exists, but not on the configured chip.
    #[error("{role}: gpio line {name:?} is not on {chip} but on {found} (line {offset})")]
    NameOnOtherChip {
        /// The line's role.
        role: Role,
        /// The line name.
        name: String,
        /// The configured chip.
        chip: String,
        /// The chip that has it.
        found: String,
        /// Its offset there.
        offset: Offset,
    },
    /// The name is on more than one line.
    #[error("{role}: gpio line name {name:?} is not unique ({first}, {second}); set the chip")]
    AmbiguousName {
        /// The line's role.
        role: Role,
        /// The line name.
        name: String,
        /// One place it is found ("chip line offset").
        first: String,
        /// Another.
        second: String,
    },
    /// Two roles resolve to the same line.
    #[error("{first} and {second} are both line {offset} of {chip}")]
    SameLine {
        /// One role.
        first: Role,
        /// The other.
        second: Role,
        /// The chip.
        chip: String,
        /// The shared offset.
        offset: Offset,
    },
    /// The chips could not be listed.
    #[error("cannot list the gpio chips in /dev: {source}")]
    ListChips {
        /// The cause.
        source: gpiocdev::Error,
    },
    /// A chip could not be opened or its lines read.
    #[error("cannot read gpio chip {chip}: {source}")]
    Chip {
        /// The chip.
        chip: String,
        /// The cause.
        source: gpiocdev::Error,
    },
    /// The kernel refused the line request (in use, no permission, bias unsupported).
    #[error("cannot request the {role} (line {offset} of {chip}): {source}")]
    Request {
        /// The line's role.
        role: Role,
        /// The chip.
        chip: String,
        /// The offset.
        offset: Offset,
        /// The cause.
        source: gpiocdev::Error,
    },
    /// The relay request's descriptor could not be duplicated for the emergency path.
    #[error("cannot duplicate the relay request (line {offset} of {chip}): {source}")]
    Dup {
        /// The chip.
        chip: String,
        /// The offset.
        offset: Offset,
        /// The cause.
        source: std::io::Error,
    },
    /// Reading or writing a requested line failed.
    #[error("cannot {op} the {role} (line {offset} of {chip}): {source}")]
    Line {
        /// "read" or "set".
        op: &'static str,
        /// The line's role.
        role: Role,
        /// The chip.
        chip: String,
        /// The offset.
        offset: Offset,
        /// The cause.
        source: gpiocdev::Error,
    },
}

impl embedded_hal::digital::Error for GpioError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Other
    }
}

/// A resolved line: a chip path and an offset on it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LineAddr {
    chip: PathBuf,
    offset: Offset,
}

impl fmt::Display for LineAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} line {}", self.chip.display(), self.offset)
    }
}

/// One chip as scanned: its path and the name of each line (index = offset, "" when unnamed).
#[derive(Debug, Clone, PartialEq, Eq)]
struct ChipLines {
    path: PathBuf,
    names: Vec<String>,
}

/// `gpiochip4` and `4` mean `/dev/gpiochip4`; anything with a `/` is a path.
fn chip_path(chip: &str) -> PathBuf {
    let chip = chip.trim();
    if chip.contains('/') {
        PathBuf::from(chip)
    } else if chip.bytes().all(|b| b.is_ascii_digit()) {
        PathBuf::from(format!("/dev/gpiochip{chip}"))
    } else {
        Path::new("/dev").join(chip)
    }
}

/// Resolves `spec` against scanned chips. With `chip`, the line must be on it (other chips in
/// `chips` only serve the "it is on another chip" hint); without, a name must be unique.
fn resolve(
    role: Role,
    spec: &LineSpec,
    chip: Option<&Path>,
    chips: &[ChipLines],
) -> Result<LineAddr, GpioError> {
    let shown = |path: &Path| path.display().to_string();
    match spec {
        LineSpec::Offset(offset) => {
            let chip = chip.ok_or(GpioError::OffsetNeedsChip { role, offset: *offset })?;
            if let Some(lines) = chips.iter().find(|c| c.path == chip) {
                if *offset as usize >= lines.names.len() {
                    return Err(GpioError::OffsetOutOfRange {
                        role,
                        chip: shown(chip),
                        offset: *offset,
                        lines: lines.names.len(),
                    });
                }
            }
            Ok(LineAddr { chip: chip.to_path_buf(), offset: *offset })
        }
        LineSpec::Name(name) if name.is_empty() => {
            Err(GpioError::InvalidLine { text: String::new() })
        }
        LineSpec::Name(name) => {
            let mut found = chips.iter().flat_map(|c| {
                c.names.iter().enumerate().filter(|(_, n)| *n == name).map(|(offset, _)| {
                    // A chip has at most u32::MAX lines (the uAPI's offset type).
                    LineAddr { chip: c.path.clone(), offset: offset as Offset }
                })
            });
            let (first, second) = match chip {
                Some(chip) => {
                    let mut on_chip = found.clone().filter(|a| a.chip == chip);
                    match (on_chip.next(), on_chip.next()) {
                        (Some(a), None) => return Ok(a),
                        (Some(a), Some(b)) => (a, Some(b)),
                        (None, _) => {
                            return Err(match found.next() {
                                Some(other) => GpioError::NameOnOtherChip {
                                    role,
                                    name: name.clone(),
                                    chip: shown(chip),
                                    found: shown(&other.chip),
                                    offset: other.offset,
                                },
                                None => GpioError::NameNotFound {
                                    role,
                                    name: name.clone(),
                                    chip: shown(chip),
                                },
                            })
                        }
                    }
                }
                None => match found.next() {
                    Some(a) => (a, found.next()),
                    None => {
                        return Err(GpioError::NameNotFound {
                            role,
                            name: name.clone(),
                            chip: "any readable chip".to_owned(),
                        })
                    }
                },
            };
            match second {
                None => Ok(first),
                Some(second) => Err(GpioError::AmbiguousName {
                    role,
                    name: name.clone(),
                    first: first.to_string(),
                    second: second.to_string(),
                }),
            }
        }
    }
}

/// Fails if two roles resolved to the same line.
fn check_distinct(lines: &[(Role, &LineAddr)]) -> Result<(), GpioError> {
    for (i, (first, a)) in lines.iter().enumerate() {
        for (second, b) in &lines[i + 1..] {
            if a == b {
                return Err(GpioError::SameLine {
                    first: *first,
                    second: *second,
                    chip: a.chip.display().to_string(),
                    offset: a.offset,
                });
            }
        }
    }
    Ok(())
}

/// The uAPI value for a pin level (lines are requested active-high: Active = high).
fn value_of(level: PinState) -> Value {
    match level {
        PinState::High => Value::Active,
        PinState::Low => Value::Inactive,
    }
}

/// Reads the line names of one chip.
fn scan_chip(path: &Path) -> Result<ChipLines, GpioError> {
    let error = |source| GpioError::Chip { chip: path.display().to_string(), source };
    let chip = gpiocdev::Chip::from_path(path).map_err(error)?;
    let names = chip
        .line_info_iter()
        .map_err(error)?
        .map(|info| info.map(|info| info.name))
        .collect::<Result<Vec<_>, _>>()
        .map_err(error)?;
    Ok(ChipLines { path: path.to_path_buf(), names })
}

/// Reads every chip in /dev except `skip`; unreadable chips are skipped with a warning (a
/// hardened service may only be allowed its own chip).
fn scan_all_chips(skip: Option<&Path>) -> Result<Vec<ChipLines>, GpioError> {
    let skip = skip.and_then(|p| p.canonicalize().ok());
    let mut chips = Vec::new();
    for path in gpiocdev::chip::chips().map_err(|source| GpioError::ListChips { source })? {
        if skip.is_some() && path.canonicalize().ok() == skip {
            continue;
        }
        match scan_chip(&path) {
            Ok(lines) => chips.push(lines),
            Err(err) => log::warn!("gpio: skipping a chip while looking up line names: {err}"),
        }
    }
    Ok(chips)
}

/// Resolves the three lines of `settings`, scanning the configured chip (and the others only
/// to look up names or to explain where a missing name is).
fn resolve_lines(settings: &GpioSettings) -> Result<[LineAddr; 3], GpioError> {
    let chip = settings.chip.as_deref().map(chip_path);
    let mut chips = match &chip {
        Some(path) => vec![scan_chip(path)?],
        None => scan_all_chips(None)?,
    };
    let mut scanned_all = chip.is_none();
    let mut resolve_one = |role, spec| match resolve(role, spec, chip.as_deref(), &chips) {
        Err(GpioError::NameNotFound { .. }) if !scanned_all => {
            scanned_all = true;
            chips.extend(scan_all_chips(chip.as_deref())?);
            resolve(role, spec, chip.as_deref(), &chips)
        }
        other => other,
    };
    let relay = resolve_one(Role::Relay, &settings.relay)?;
    let contact = resolve_one(Role::Contact, &settings.contact)?;
    let button = resolve_one(Role::ExitButton, &settings.exit_button)?;
    check_distinct(&[
        (Role::Relay, &relay),
        (Role::Contact, &contact),
        (Role::ExitButton, &button),
    ])?;
    Ok([relay, contact, button])
}

/// The lock relay: one requested output line. Dropping it drives the line to its secure level
/// first (the kernel keeps a released line's last level unless the board releases lines to
/// their default, `dtparam=strict_gpiod` on a Raspberry Pi).
#[derive(Debug)]
pub struct RelayPin {
    request: Request,
    line: LineAddr,
    secure: Value,
}

impl Drop for RelayPin {
    fn drop(&mut self) {
        let _ = self.request.set_lone_value(self.secure);
    }
}

impl RelayPin {
    fn set(&mut self, value: Value) -> Result<(), GpioError> {
        self.request.set_lone_value(value).map_err(|source| GpioError::Line {
            op: "set",
            role: Role::Relay,
            chip: self.line.chip.display().to_string(),
            offset: self.line.offset,
            source,
        })
    }
}

impl ErrorType for RelayPin {
    type Error = GpioError;
}

impl OutputPin for RelayPin {
    fn set_low(&mut self) -> Result<(), GpioError> {
        self.set(Value::Inactive)
    }

    fn set_high(&mut self) -> Result<(), GpioError> {
        self.set(Value::Active)
    }
}

/// A door input (contact or exit button): one requested input line, read on demand.
#[derive(Debug)]
pub struct InputLine {
    request: Request,
    role: Role,
    line: LineAddr,
}

impl ErrorType for InputLine {
    type Error = GpioError;
}

impl InputPin for InputLine {
    fn is_high(&mut self) -> Result<bool, GpioError> {
        match self.request.lone_value() {
            Ok(value) => Ok(value == Value::Active),
            Err(source) => Err(GpioError::Line {
                op: "read",
                role: self.role,
                chip: self.line.chip.display().to_string(),
                offset: self.line.offset,
                source,
            }),
        }
    }

    fn is_low(&mut self) -> Result<bool, GpioError> {
        self.is_high().map(|high| !high)
    }
}

/// `struct gpio_v2_line_values` from `<linux/gpio.h>`: bit i of `bits` is the value of the
/// request's i-th line, written where bit i of `mask` is set.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct LineValues {
    bits: u64,
    mask: u64,
}

/// `GPIO_V2_LINE_SET_VALUES_IOCTL = _IOWR(0xB4, 0x0F, struct gpio_v2_line_values)` from
/// `<linux/gpio.h>`, in the asm-generic ioctl encoding (x86_64, arm, aarch64, riscv):
/// direction read|write (3) << 30 | size << 16 | type << 8 | number.
const GPIO_V2_LINE_SET_VALUES_IOCTL: u32 =
    (3 << 30) | ((std::mem::size_of::<LineValues>() as u32) << 16) | (0xB4 << 8) | 0x0F;

/// Drives the relay line to its secure level with one ioctl on a duplicate of the line
/// request's descriptor: no lock, no allocation, usable from a panic hook on any thread. The
/// duplicate keeps the kernel's request alive, so the line stays ours until the process exits.
#[derive(Debug)]
pub struct RelayEmergency {
    fd: OwnedFd,
    values: LineValues,
}

impl EmergencySecure for RelayEmergency {
    fn secure_now(&self) -> bool {
        // `as _`: the request type is c_ulong on glibc and c_int on musl (same bits).
        #[allow(clippy::cast_lossless)]
        // SAFETY: `self.fd` is an open GPIO line-request descriptor owned by `self`; the request
        // number encodes a read/write of `size_of::<LineValues>()` bytes, and the pointer is to a
        // valid, aligned `repr(C)` `LineValues` that outlives the call (the kernel only reads it
        // for SET_VALUES).
        let status = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                GPIO_V2_LINE_SET_VALUES_IOCTL as _,
                &self.values as *const LineValues,
            )
        };
        status >= 0
    }
}

/// What [`open_door_pins`] returns: relay, door contact, exit button, and the relay's
/// emergency handle for [`crate::door::install_panic_hook`].
pub type DoorPins = (RelayPin, InputLine, InputLine, std::sync::Arc<dyn EmergencySecure>);

/// Resolves and requests the three door lines. The relay is requested as an output already at
/// `settings.relay_initial`; the inputs with `settings.input_bias`, no edge detection and no
/// kernel debounce.
pub fn open_door_pins(settings: &GpioSettings) -> Result<DoorPins, GpioError> {
    let [relay, contact, button] = resolve_lines(settings)?;
    let request_error = |role, line: &LineAddr| {
        let (chip, offset) = (line.chip.display().to_string(), line.offset);
        move |source| GpioError::Request { role, chip, offset, source }
    };

    let relay_request = Request::builder()
        .on_chip(relay.chip.clone())
        .with_consumer(settings.consumer.as_str())
        .with_line(relay.offset)
        .as_output(value_of(settings.relay_initial))
        .request()
        .map_err(request_error(Role::Relay, &relay))?;
    let fd = relay_request.as_fd().try_clone_to_owned().map_err(|source| GpioError::Dup {
        chip: relay.chip.display().to_string(),
        offset: relay.offset,
        source,
    })?;
    let emergency = RelayEmergency {
        fd,
        values: LineValues { bits: u64::from(settings.relay_initial == PinState::High), mask: 1 },
    };

    let input = |role, line: LineAddr| -> Result<InputLine, GpioError> {
        let request = Request::builder()
            .on_chip(line.chip.clone())
            .with_consumer(settings.consumer.as_str())
            .with_line(line.offset)
            .as_input()
            .with_bias(settings.input_bias)
            .request()
            .map_err(request_error(role, &line))?;
        Ok(InputLine { request, role, line })
    };
    let contact = input(Role::Contact, contact)?;
    let button = input(Role::ExitButton, button)?;
    log::info!(
        "gpio: relay {relay} (initial {:?}), door contact {}, exit button {}",
        settings.relay_initial,
        contact.line,
        button.line
    );
    Ok((
        RelayPin { request: relay_request, line: relay, secure: value_of(settings.relay_initial) },
        contact,
        button,
        std::sync::Arc::new(emergency),
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::door::{DoorConfig, LockWiring};

    fn chip(path: &str, names: &[&str]) -> ChipLines {
        ChipLines { path: path.into(), names: names.iter().map(|n| n.to_string()).collect() }
    }

    /// A Pi 5 on a newer kernel: RP1 on gpiochip0, plus an unnamed chip and a chip with a
    /// name that repeats one of RP1's.
    fn chips() -> Vec<ChipLines> {
        vec![
            chip("/dev/gpiochip0", &["ID_SDA", "ID_SCL", "GPIO2", "GPIO3", "GPIO4", "GPIO17"]),
            chip("/dev/gpiochip1", &["", "", ""]),
            chip("/dev/gpiochip2", &["RP1_RUN", "GPIO4"]),
        ]
    }

    fn name(n: &str) -> LineSpec {
        LineSpec::Name(n.into())
    }

    #[test]
    fn parse_offsets_and_names() {
        assert_eq!(LineSpec::parse("17").unwrap(), LineSpec::Offset(17));
        assert_eq!(LineSpec::parse(" GPIO17 ").unwrap(), name("GPIO17"));
        assert!(matches!(LineSpec::parse(""), Err(GpioError::InvalidLine { .. })));
        assert!(matches!(LineSpec::parse("99999999999"), Err(GpioError::InvalidLine { .. })));
    }

    #[test]
    fn chip_paths() {
        assert_eq!(chip_path("gpiochip4"), Path::new("/dev/gpiochip4"));
        assert_eq!(chip_path("4"), Path::new("/dev/gpiochip4"));
        assert_eq!(chip_path("/dev/gpiochip0"), Path::new("/dev/gpiochip0"));
    }

    #[test]
    fn name_without_chip_is_found_anywhere() {
        let addr = resolve(Role::Relay, &name("GPIO17"), None, &chips()).unwrap();
        assert_eq!(addr, LineAddr { chip: "/dev/gpiochip0".into(), offset: 5 });
        let addr = resolve(Role::Relay, &name("RP1_RUN"), None, &chips()).unwrap();
        assert_eq!(addr, LineAddr { chip: "/dev/gpiochip2".into(), offset: 0 });
    }

    #[test]
    fn name_without_chip_must_be_unique() {
        let err = resolve(Role::Contact, &name("GPIO4"), None, &chips()).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, GpioError::AmbiguousName { .. }), "{text}");
        assert!(text.contains("/dev/gpiochip0 line 4") && text.contains("/dev/gpiochip2 line 1"));
        assert!(text.starts_with("door contact:"), "{text}");
    }

    #[test]
    fn name_on_the_given_chip_wins_over_duplicates_elsewhere() {
        let chip0 = Path::new("/dev/gpiochip0");
        let addr = resolve(Role::Relay, &name("GPIO4"), Some(chip0), &chips()).unwrap();
        assert_eq!(addr, LineAddr { chip: chip0.into(), offset: 4 });
    }

    #[test]
    fn name_on_another_chip_says_where() {
        // The Pi 5 case: configured for gpiochip4 (old kernel), RP1 is now gpiochip0.
        let chip4 = Path::new("/dev/gpiochip4");
        let mut scanned = vec![chip("/dev/gpiochip4", &["", ""])];
        scanned.extend(chips());
        let err = resolve(Role::Relay, &name("GPIO17"), Some(chip4), &scanned).unwrap_err();
        assert_eq!(
            err.to_string(),
            "relay: gpio line \"GPIO17\" is not on /dev/gpiochip4 but on /dev/gpiochip0 (line 5)"
        );
    }

    #[test]
    fn missing_name_is_reported_with_the_chip() {
        let err = resolve(Role::ExitButton, &name("GPIO99"), None, &chips()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "exit button: no gpio line named \"GPIO99\" on any readable chip"
        );
        let chip1 = Path::new("/dev/gpiochip1");
        let err = resolve(Role::ExitButton, &name("GPIO99"), Some(chip1), &chips()).unwrap_err();
        assert_eq!(err.to_string(), "exit button: no gpio line named \"GPIO99\" on /dev/gpiochip1");
    }

    #[test]
    fn unnamed_lines_never_match_an_empty_name() {
        // Built by hand (parse refuses it), an empty name must not pick an unnamed line.
        let chip1 = Path::new("/dev/gpiochip1");
        let err = resolve(Role::Relay, &name(""), Some(chip1), &chips()).unwrap_err();
        assert!(matches!(err, GpioError::InvalidLine { .. }), "{err}");
    }

    #[test]
    fn offsets_need_a_chip_and_must_exist() {
        let err = resolve(Role::Relay, &LineSpec::Offset(3), None, &chips()).unwrap_err();
        assert!(matches!(err, GpioError::OffsetNeedsChip { role: Role::Relay, offset: 3 }));
        let chip1 = Path::new("/dev/gpiochip1");
        let addr = resolve(Role::Relay, &LineSpec::Offset(2), Some(chip1), &chips()).unwrap();
        assert_eq!(addr, LineAddr { chip: chip1.into(), offset: 2 });
        let err = resolve(Role::Relay, &LineSpec::Offset(3), Some(chip1), &chips()).unwrap_err();
        assert_eq!(err.to_string(), "relay: /dev/gpiochip1 has 3 lines, so no line 3");
    }

    #[test]
    fn the_same_line_twice_is_refused() {
        let a = LineAddr { chip: "/dev/gpiochip0".into(), offset: 5 };
        let b = LineAddr { chip: "/dev/gpiochip0".into(), offset: 6 };
        let lines = [(Role::Relay, &a), (Role::Contact, &b), (Role::ExitButton, &a)];
        let err = check_distinct(&lines).unwrap_err();
        assert_eq!(err.to_string(), "relay and exit button are both line 5 of /dev/gpiochip0");
        assert!(check_distinct(&lines[..2]).is_ok());
    }

    #[test]
    fn relay_starts_at_the_secure_level() {
        let at = |lock, relay_active_high| {
            let door = DoorConfig { lock, relay_active_high, ..DoorConfig::default() };
            let s = GpioSettings::new(None, name("a"), name("b"), name("c"), &door);
            assert_eq!(s.input_bias, Some(Bias::PullUp));
            assert_eq!(s.consumer, "portier");
            s.relay_initial
        };
        assert_eq!(at(LockWiring::FailSecure, true), PinState::Low);
        assert_eq!(at(LockWiring::FailSecure, false), PinState::High);
        assert_eq!(at(LockWiring::FailSafe, true), PinState::High);
        assert_eq!(at(LockWiring::FailSafe, false), PinState::Low);
        assert_eq!(value_of(PinState::High), Value::Active);
        assert_eq!(value_of(PinState::Low), Value::Inactive);
    }

    #[test]
    fn set_values_ioctl_number_matches_the_kernel_header() {
        // _IOWR(0xB4, 0x0F, struct gpio_v2_line_values): 16-byte argument.
        assert_eq!(std::mem::size_of::<LineValues>(), 16);
        assert_eq!(GPIO_V2_LINE_SET_VALUES_IOCTL, 0xC010_B40F);
    }
}
