//! The loop's outside world while `portier run` runs: hands every [`AppEvent`] to the MQTT
//! thread, turns MQTT commands into [`RemoteCommand`]s, keeps the status display up to date,
//! and collects the grants for the summary. It is the [`Hooks`] implementation `main` passes to
//! [`crate::app::App::run`].
//!
//! Must not: block (MQTT is a `try_send`, the display draws only on change into a memory
//! canvas or a mailbox), or decide anything about access.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::app::{App, AppEvent, Hooks, NpuUse, RemoteCommand};
use crate::display::{
    AccessView, AnySink, ClockTime, Display, DoorView, EmbedBackend, Health, LinkState, Outcome,
    Status,
};
use crate::door::{Alarm, DoorState};
use crate::enroll_live::{Capture, EnrolSettings, LiveEnrolment};
use crate::gallery::{EnrollMode, Gallery, GalleryError, Storage};
use crate::mqtt::client::{Message, MqttClient, MqttHealth};
use crate::mqtt::events::SystemEvent;

/// Shortest time between two counter publications that changes alone cause.
const COUNTERS_MIN_INTERVAL: Duration = Duration::from_secs(5);

/// The last access decision, as the display shows it.
#[derive(Debug, Clone, PartialEq)]
enum Last {
    Granted(String),
    Unknown,
    SpoofSuspected,
}

/// See the module documentation.
pub struct Shell {
    mqtt: Option<MqttClient>,
    outgoing: Vec<Message>,
    display: Option<Display<AnySink>>,
    gallery_path: PathBuf,
    gallery_key_file: PathBuf,
    model_id: String,
    npu_model_id: Option<String>,
    /// How reloaded matchers keep their rows (`[gallery] storage`).
    storage: Storage,
    /// `PORTIER_FAULT=panic-on-grant`: panic right after the first grant (tests of the
    /// emergency path).
    panic_on_grant: bool,
    /// `PORTIER_FAULT=stall-on-grant:MS`: the loop thread sleeps MS milliseconds right after
    /// the first grant, with the relay energised (tests of the relock guard).
    stall_on_grant: Option<Duration>,
    /// `PORTIER_FAULT=segv-on-grant` / `overflow-on-grant`: a real memory fault, or a stack
    /// overflow, on the loop thread right after the first grant (tests of the fatal-signal
    /// relock with faults the kernel raises, not `kill`).
    crash_on_grant: Option<Crash>,
    /// `PORTIER_FAULT=panic-at-frame:N`: panic once N frames went through the loop, wherever
    /// the door is then (tests of the emergency path and of the restart from disk).
    panic_at_frame: Option<u64>,
    /// Grants for the summary: name, frame, similarity.
    grants: Vec<(String, u64, f32)>,
    /// The last decision and when it was shown (set at the next tick).
    last: Option<(Last, Option<Duration>)>,
    camera_ok: bool,
    display_errors: u64,
    /// The door state last handed to MQTT (`None` before the first tick).
    door_sent: Option<DoorState>,
    /// The NPU state last handed to MQTT (`None` before the first tick).
    npu_sent: Option<NpuUse>,
    /// MQTT health at the last tick, to log each change once.
    mqtt_health: MqttHealth,
    /// Settings of live enrolments asked for over MQTT (`None`: not offered).
    enrol_settings: Option<EnrolSettings>,
    /// The person last enrolled from the running service (what "remove last" removes); kept
    /// in memory only, so a restart never lets the button remove someone enrolled earlier.
    last_enrolled: Option<String>,
    /// When the counters were last handed to MQTT, and the frame count then.
    counters_sent: Option<(Duration, u64)>,
    /// A finished capture being stored by a worker thread (gallery writes sync to the card:
    /// not on the loop's thread): its outcome.
    storing: Option<std::sync::mpsc::Receiver<Stored>>,
}

/// What storing an enrolment gave: the name, templates and people after it (or why nothing was
/// stored), and the new matchers for the loop (or why they could not be read).
type Stored = (String, Result<(usize, usize), String>, Result<RemoteCommand, String>);

/// The matchers of the gallery on disk, for the loop.
fn load_matchers(
    path: &std::path::Path,
    key_file: &std::path::Path,
    model_id: &str,
    npu_model_id: Option<&str>,
    storage: Storage,
) -> Result<RemoteCommand, GalleryError> {
    let ids: Vec<&str> = std::iter::once(model_id).chain(npu_model_id).collect();
    let mut loaded = Gallery::load_matchers(path, key_file, &ids, storage)?.into_iter();
    let Some(cpu) = loaded.next() else {
        // Cannot happen: a load returns one matcher per model asked for.
        return Err(GalleryError::Unsupported {
            path: path.to_path_buf(),
            detail: "the gallery load returned no matcher".to_owned(),
        });
    };
    Ok(RemoteCommand::SetMatcher(Box::new((cpu, loaded.next()))))
}

/// A crash injected for tests (`PORTIER_FAULT`).
#[derive(Debug, Clone, Copy)]
enum Crash {
    /// A write to a page mapped without access: SIGSEGV from the MMU.
    Segv,
    /// Unbounded recursion: the guard page, then the standard library's overflow report and
    /// SIGABRT.
    StackOverflow,
}

impl Crash {
    fn now(self) {
        match self {
            Crash::Segv => {
                log::warn!("PORTIER_FAULT=segv-on-grant: writing to a protected page");
                // SAFETY: deliberately faulting, for the fault-injection tests only: a fresh
                // anonymous page with no access rights; the write traps before it happens.
                unsafe {
                    let page = libc::mmap(
                        std::ptr::null_mut(),
                        4096,
                        libc::PROT_NONE,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                        -1,
                        0,
                    );
                    if page != libc::MAP_FAILED {
                        std::ptr::write_volatile(page.cast::<u8>(), 1);
                    }
                }
            }
            Crash::StackOverflow => {
                log::warn!("PORTIER_FAULT=overflow-on-grant: recursing without end");
                std::hint::black_box(recurse(0));
            }
        }
    }
}

/// Recursion that only a stack overflow ends (the depth limit is never reached).
fn recurse(depth: u64) -> u64 {
    let frame = std::hint::black_box([depth; 64]);
    if depth == u64::MAX {
        return frame[0];
    }
    recurse(depth + 1).wrapping_add(frame[1])
}

impl std::fmt::Debug for Shell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shell")
            .field("mqtt", &self.mqtt.is_some())
            .field("display", &self.display.is_some())
            .field("grants", &self.grants.len())
            .finish_non_exhaustive()
    }
}

impl Shell {
    /// A shell around an optional MQTT client and display; `gallery_path`, `gallery_key_file`
    /// and `model_id` are for the gallery-reload command.
    pub fn new(
        mqtt: Option<MqttClient>,
        display: Option<Display<AnySink>>,
        gallery_path: PathBuf,
        gallery_key_file: PathBuf,
        model_id: String,
    ) -> Self {
        Self {
            mqtt,
            outgoing: Vec::with_capacity(8),
            display,
            gallery_path,
            gallery_key_file,
            model_id,
            npu_model_id: None,
            storage: Storage::default(),
            panic_on_grant: std::env::var("PORTIER_FAULT").is_ok_and(|v| v == "panic-on-grant"),
            crash_on_grant: match std::env::var("PORTIER_FAULT").as_deref() {
                Ok("segv-on-grant") => Some(Crash::Segv),
                Ok("overflow-on-grant") => Some(Crash::StackOverflow),
                _ => None,
            },
            stall_on_grant: std::env::var("PORTIER_FAULT")
                .ok()
                .and_then(|v| v.strip_prefix("stall-on-grant:")?.parse().ok())
                .map(Duration::from_millis),
            panic_at_frame: std::env::var("PORTIER_FAULT")
                .ok()
                .and_then(|v| v.strip_prefix("panic-at-frame:")?.parse().ok()),
            grants: Vec::new(),
            last: None,
            camera_ok: true,
            display_errors: 0,
            door_sent: None,
            npu_sent: None,
            mqtt_health: MqttHealth::Connecting,
            enrol_settings: None,
            last_enrolled: None,
            counters_sent: None,
            storing: None,
        }
    }

    /// Offers live enrolment (Home Assistant's enrol and remove buttons) with these settings.
    pub fn with_enrolment(mut self, settings: EnrolSettings) -> Self {
        self.enrol_settings = Some(settings);
        self
    }

    fn system(&self, event: SystemEvent) {
        if let Some(client) = &self.mqtt {
            client.send(Message::System(event));
        }
    }

    /// The matchers of the gallery on disk, for the loop.
    fn load_matchers(&self) -> Result<RemoteCommand, GalleryError> {
        load_matchers(
            &self.gallery_path,
            &self.gallery_key_file,
            &self.model_id,
            self.npu_model_id.as_deref(),
            self.storage,
        )
    }

    /// An enrolment asked for over MQTT: refused at once when it cannot be stored (name taken,
    /// gallery unreadable, not offered), else a capture for the loop.
    fn start_enrolment(&mut self, name: String) -> Option<RemoteCommand> {
        let check = || -> Result<LiveEnrolment, String> {
            let settings = self.enrol_settings.clone().ok_or("live enrolment is not offered")?;
            let g = Gallery::open(&self.gallery_path, &self.gallery_key_file)
                .map_err(|e| e.to_string())?;
            if g.list().map_err(|e| e.to_string())?.iter().any(|p| p.name == name) {
                return Err(format!("{name} is enrolled already"));
            }
            LiveEnrolment::new(settings).map_err(|e| e.to_string())
        };
        match check() {
            Ok(live) => Some(RemoteCommand::Enrol(Box::new((name, live)))),
            Err(reason) => {
                log::warn!("enrolment of {name} refused: {reason}");
                self.system(SystemEvent::EnrolFailed { person: name, reason });
                None
            }
        }
    }

    /// Stores a finished capture (one transaction) on a worker thread; [`Shell::stored`]
    /// takes the outcome and hands the loop the new templates.
    fn store_enrolment(&mut self, name: &str, result: &Result<Box<Capture>, String>) {
        let capture = match result {
            Ok(c) => c.clone(),
            Err(reason) => {
                let reason = reason.clone();
                self.system(SystemEvent::EnrolFailed { person: name.to_owned(), reason });
                return;
            }
        };
        let (path, key) = (self.gallery_path.clone(), self.gallery_key_file.clone());
        let (model, npu_model) = (self.model_id.clone(), self.npu_model_id.clone());
        let storage = self.storage;
        let (person, name) = (name.to_owned(), name.to_owned());
        let (tx, rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new().name("enrol-store".to_owned()).spawn(move || {
            let stored = (|| -> Result<(usize, usize), String> {
                if let Some(r) = &capture.resemblance {
                    return Err(format!(
                        "{name} resembles enrolled {} (similarity {:.3}): not stored; enrol \
                         with `portier enroll --allow-similar` if they are different people",
                        r.name, r.similarity
                    ));
                }
                let mut g = Gallery::open(&path, &key).map_err(|e| e.to_string())?;
                capture.commit(&mut g, &name, EnrollMode::New).map_err(|e| e.to_string())?;
                let people = g.list().map_or(0, |l| l.len());
                Ok((capture.templates.len(), people))
            })();
            let matchers = match &stored {
                Ok(_) => load_matchers(&path, &key, &model, npu_model.as_deref(), storage)
                    .map_err(|e| e.to_string()),
                Err(_) => Err(String::new()),
            };
            let _ = tx.send((name, stored, matchers));
        });
        match spawned {
            Ok(_) => self.storing = Some(rx),
            Err(e) => {
                let reason = format!("cannot start storing: {e}");
                self.system(SystemEvent::EnrolFailed { person, reason });
            }
        }
    }

    /// The outcome of a stored enrolment, once there: reported, and the loop's new matchers.
    fn stored(&mut self) -> Option<RemoteCommand> {
        let (name, stored, matchers) = self.storing.as_ref()?.try_recv().ok()?;
        self.storing = None;
        match stored {
            Ok((templates, people)) => {
                log::info!("enrolled {name} with {templates} template(s) from the running door");
                self.last_enrolled = Some(name.clone());
                self.system(SystemEvent::Enrolled { person: name.clone(), templates, people });
            }
            Err(reason) => {
                log::warn!("enrolment of {name} not stored: {reason}");
                self.system(SystemEvent::EnrolFailed { person: name, reason });
                return None;
            }
        }
        match matchers {
            Ok(m) => Some(m),
            Err(e) => {
                // Stored, but the loop keeps its templates until the next reload.
                log::error!("{name} is enrolled, but the gallery cannot be read back: {e}");
                None
            }
        }
    }

    /// Removes the person last enrolled from the running service.
    fn remove_last(&mut self) -> Option<RemoteCommand> {
        let Some(name) = self.last_enrolled.clone() else {
            let reason = "nobody was enrolled from the running door since it started".to_owned();
            self.system(SystemEvent::RemoveFailed { reason });
            return None;
        };
        let remove = || -> Result<(usize, RemoteCommand), GalleryError> {
            let mut g = Gallery::open(&self.gallery_path, &self.gallery_key_file)?;
            g.remove(&name)?;
            Ok((g.list()?.len(), self.load_matchers()?))
        };
        match remove() {
            Ok((people, matchers)) => {
                self.last_enrolled = None;
                log::info!("removed {name}, enrolled last from the running door");
                self.system(SystemEvent::Removed { person: name, people });
                Some(matchers)
            }
            Err(e) => {
                let reason = format!("{name}: {e}");
                log::warn!("remove last: {reason}");
                self.system(SystemEvent::RemoveFailed { reason });
                None
            }
        }
    }

    /// How reloaded matchers keep their rows (`[gallery] storage`; default int8).
    pub fn with_storage(mut self, storage: Storage) -> Self {
        self.storage = storage;
        self
    }

    /// Also reload the NPU model's templates on a gallery-reload command.
    pub fn with_npu_model(mut self, model_id: Option<String>) -> Self {
        self.npu_model_id = model_id;
        self
    }

    /// The grants so far: name, frame, similarity.
    pub fn grants(&self) -> &[(String, u64, f32)] {
        &self.grants
    }

    /// Display errors so far (each logged once per retry period).
    pub fn display_errors(&self) -> u64 {
        self.display_errors
    }

    /// Stops the MQTT thread (flushing what it can within `timeout`).
    pub fn shutdown(&mut self, timeout: Duration) {
        if let Some(client) = self.mqtt.take() {
            if let Err(e) = client.shutdown(timeout) {
                log::warn!("mqtt: {e}");
            }
        }
    }
}

/// Time of day (UTC: the appliance keeps no time-zone database; the image sets the clock by
/// NTP).
fn clock() -> Option<ClockTime> {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
    // Before 2024 the clock is not set yet: show none rather than 1970.
    if secs < 1_704_067_200 {
        return None;
    }
    let day = secs % 86_400;
    Some(ClockTime { hour: (day / 3600) as u8, minute: ((day % 3600) / 60) as u8 })
}

impl Hooks for Shell {
    fn event(&mut self, event: &AppEvent) {
        if let Some(client) = &self.mqtt {
            self.outgoing.clear();
            crate::mqtt::bridge::messages(event, &mut self.outgoing);
            for m in self.outgoing.drain(..) {
                client.send(m);
            }
        }
        match event {
            AppEvent::Granted { name, similarity, frame, .. } => {
                self.grants.push((name.clone(), *frame, *similarity));
                self.last = Some((Last::Granted(name.clone()), None));
                if self.panic_on_grant {
                    panic!("PORTIER_FAULT=panic-on-grant: injected panic with the door unlocked");
                }
                if let Some(crash) = self.crash_on_grant.take() {
                    crash.now();
                }
                if let Some(stall) = self.stall_on_grant.take() {
                    log::warn!(
                        "PORTIER_FAULT=stall-on-grant: the loop stalls {} ms",
                        stall.as_millis()
                    );
                    std::thread::sleep(stall);
                }
            }
            AppEvent::Unknown { .. } => self.last = Some((Last::Unknown, None)),
            AppEvent::SpoofSuspected { .. } => self.last = Some((Last::SpoofSuspected, None)),
            AppEvent::CameraLost { .. } => self.camera_ok = false,
            AppEvent::CameraBack => self.camera_ok = true,
            AppEvent::EnrolCaptured { name, result } => self.store_enrolment(name, result),
            _ => {}
        }
    }

    fn command(&mut self) -> Option<RemoteCommand> {
        use crate::mqtt::command::Action;
        if let Some(matchers) = self.stored() {
            return Some(matchers);
        }
        // Judged again on the way out: a command that waited past its window is dropped there.
        // A command that ends in nothing for the loop (a refused enrolment) is reported, and the
        // next one is taken.
        loop {
            let command = self.mqtt.as_ref()?.next_command()?;
            let out = match command.action {
                Action::Unlock => Some(RemoteCommand::Unlock),
                Action::Lock if command.signed => Some(RemoteCommand::Lock),
                Action::Lock => Some(RemoteCommand::EndRemoteRelease),
                Action::ReloadGallery => match self.load_matchers() {
                    Ok(c) => Some(c),
                    Err(e) => {
                        log::error!("gallery reload refused: {e}");
                        None
                    }
                },
                Action::Enrol => self.start_enrolment(command.name.unwrap_or_default()),
                Action::RemoveLast => self.remove_last(),
            };
            if out.is_some() {
                return out;
            }
        }
    }

    fn tick(&mut self, app: &App, now: Duration) {
        if self.panic_at_frame.is_some_and(|n| app.counters().frames >= n) {
            panic!(
                "PORTIER_FAULT=panic-at-frame: injected panic at frame {}",
                app.counters().frames
            );
        }
        if let Some(client) = &self.mqtt {
            // The truth about the door, retained: at the first tick (a crash may have left
            // UNLOCKED retained at the broker) and whenever it changes. The client republishes
            // it at every reconnect. Only a few bytes, and only on change: nothing per frame.
            let door = app.door_state();
            if self.door_sent != Some(door) && client.send(Message::DoorState(door)) {
                self.door_sent = Some(door);
            }
            // What the NPU does (in use, failed, not installed, ...), retained the same way.
            let npu = app.npu_use();
            if self.npu_sent != Some(npu) && client.send(Message::Npu(npu)) {
                self.npu_sent = Some(npu);
            }
            // The counters (retained) at the first tick and then on change, at most every
            // COUNTERS_MIN_INTERVAL: Home Assistant's frames sensor has a state from the start.
            let counters = app.counters();
            let due = self.counters_sent.is_none_or(|(at, frames)| {
                frames != counters.frames && now.saturating_sub(at) >= COUNTERS_MIN_INTERVAL
            });
            if due && client.send(crate::mqtt::bridge::counters(&counters, now.as_secs())) {
                self.counters_sent = Some((now, counters.frames));
            }
            let health = client.stats().health;
            if health != self.mqtt_health {
                match health {
                    MqttHealth::Up => log::info!("mqtt: health {}", health.as_str()),
                    _ => log::warn!("mqtt: health {} (the door works without it)", health.as_str()),
                }
                self.mqtt_health = health;
            }
        }
        let Some(display) = self.display.as_mut() else { return };
        if let Some((_, at)) = &mut self.last {
            at.get_or_insert(now);
        }
        let door = app.door_state();
        let last = self.last.as_ref().and_then(|(last, at)| {
            let outcome = match last {
                Last::Granted(name) => Outcome::Granted { name },
                Last::Unknown => Outcome::Unknown,
                Last::SpoofSuspected => Outcome::SpoofSuspected,
            };
            at.map(|at| AccessView { at, outcome })
        });
        let mqtt = match &self.mqtt {
            None => LinkState::Off,
            Some(c) if c.stats().connected => LinkState::Up,
            Some(_) => LinkState::Down,
        };
        let status = Status {
            clock: clock(),
            door: DoorView {
                locked: door.locked,
                open: door.open,
                alarm: door.alarm.map(|a| match a {
                    Alarm::HeldOpen => crate::display::AlarmView::HeldOpen,
                    Alarm::Forced => crate::display::AlarmView::Forced,
                }),
            },
            last,
            step_closer: app.step_closer(),
            health: Health {
                camera_ok: self.camera_ok,
                embed: match app.npu_use() {
                    NpuUse::Active => EmbedBackend::Npu,
                    NpuUse::Fallback => EmbedBackend::CpuFallback,
                    // CPU by design or by installation, not a fault to flag on the door.
                    NpuUse::Off | NpuUse::NotInstalled | NpuUse::TemplatesMissing => {
                        EmbedBackend::Cpu
                    }
                },
                mqtt,
            },
            enrolment: app.enrolment().map(|(name, good, needed)| crate::display::EnrolmentView {
                name,
                captured: good.min(255) as u8,
                needed: needed.min(255) as u8,
            }),
            technician: None,
        };
        if let Err(e) = display.update(&status, now) {
            self.display_errors += 1;
            log::warn!("display: {e} (retrying later; the door works without it)");
        }
    }
}
