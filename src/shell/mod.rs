//! The loop's outside world while `portier run` runs: hands every [`AppEvent`] to the MQTT
//! thread, turns MQTT commands into [`RemoteCommand`]s, keeps the status display up to date,
//! and collects the grants for the summary. It is the [`Hooks`] implementation `main` passes to
//! [`crate::app::App::run`].
//!
//! Gallery work (reload, the enrol button's name check, storing a capture, "remove last") runs
//! in order on one `gallery` worker thread (`shell/gallery.rs`); its outcome is the loop's next
//! command.
//!
//! Must not: block (MQTT is a `try_send`, the display draws only on change into a memory
//! canvas or a mailbox, the gallery is opened only on its worker), or decide anything about
//! access.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::app::{App, AppEvent, Hooks, NpuUse, RemoteCommand};
use crate::display::{
    AccessView, AnySink, ClockTime, Display, DoorView, EmbedBackend, Health, LinkState, Outcome,
    Status,
};
use crate::door::{Alarm, DoorState};
use crate::enroll_live::{Capture, EnrolSettings, LiveEnrolment};
use crate::gallery::Storage;
use crate::mqtt::client::{Message, MqttClient, MqttHealth};
use crate::mqtt::events::SystemEvent;

mod gallery;

use gallery::{Captured, Done, Enrolments, Job, Site, Worker};

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
    /// The gallery's worker thread, started at the first job.
    gallery: Option<Worker>,
    /// The live enrolments started here, until each one's outcome is reported.
    enrolments: Enrolments,
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
            gallery: None,
            enrolments: Enrolments::default(),
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

    /// Hands `job` to the gallery's worker (started at the first job); `Err` says why it
    /// will not run.
    fn gallery_job(&mut self, job: Job) -> Result<(), String> {
        if self.gallery.is_none() {
            let site = Site {
                path: self.gallery_path.clone(),
                key_file: self.gallery_key_file.clone(),
                model_id: self.model_id.clone(),
                npu_model_id: self.npu_model_id.clone(),
                storage: self.storage,
            };
            let worker =
                Worker::spawn(site).map_err(|e| format!("cannot start the gallery thread: {e}"))?;
            self.gallery = Some(worker);
        }
        let Some(worker) = self.gallery.as_mut() else {
            return Err("the gallery thread stopped".to_owned());
        };
        worker.send(job).map_err(|e| {
            if e == gallery::SendError::Gone {
                // Started anew at the next job.
                self.gallery = None;
            }
            e.to_string()
        })
    }

    /// An enrolment asked for over MQTT: refused at once when it is not offered or another
    /// one runs; else the capture starts now (the person is at the door now) while the
    /// gallery's worker checks the name: a name found taken ends it with one `enrol_failed`
    /// ([`Shell::gallery_done`]).
    fn start_enrolment(&mut self, name: String) -> Option<RemoteCommand> {
        let started = (|| -> Result<LiveEnrolment, String> {
            let settings = self.enrol_settings.clone().ok_or("live enrolment is not offered")?;
            if let Some(running) = self.enrolments.running() {
                return Err(format!("the enrolment of {running} is still running"));
            }
            let live = LiveEnrolment::new(settings).map_err(|e| e.to_string())?;
            let ticket = self.enrolments.start(&name);
            if let Err(e) = self.gallery_job(Job::CheckName(ticket, name.clone())) {
                self.enrolments.cancel(ticket);
                return Err(e);
            }
            Ok(live)
        })();
        match started {
            Ok(live) => Some(RemoteCommand::Enrol(Box::new((name, live)))),
            Err(reason) => {
                log::warn!("enrolment of {name} refused: {reason}");
                self.system(SystemEvent::EnrolFailed { person: name, reason });
                None
            }
        }
    }

    /// Stores a finished capture (one transaction) on the gallery's worker;
    /// [`Shell::gallery_done`] takes the outcome and hands the loop the new templates.
    fn store_enrolment(&mut self, name: &str, result: &Result<Box<Capture>, String>) {
        let failed = match (self.enrolments.captured(name, result.is_ok()), result) {
            (Captured::Drop, _) => {
                log::info!("capture of {name} dropped: the enrolment was refused");
                return;
            }
            (Captured::Store(ticket), Ok(c)) => {
                match self.gallery_job(Job::Store(ticket, name.to_owned(), c.clone())) {
                    Ok(()) => return,
                    Err(reason) => {
                        self.enrolments.stored(ticket);
                        reason
                    }
                }
            }
            (_, Err(reason)) => reason.clone(),
            (Captured::Report, Ok(_)) => "the capture was not started here".to_owned(),
        };
        log::warn!("enrolment of {name} not stored: {failed}");
        self.system(SystemEvent::EnrolFailed { person: name.to_owned(), reason: failed });
    }

    /// A `reload_gallery` command that did not give the loop new templates: logged, and
    /// reported as a refused command (Home Assistant's "last refused command").
    fn reload_refused(&self, reason: &str, detail: String) {
        log::error!("gallery reload refused: {detail}");
        let reason = reason.to_owned();
        self.system(SystemEvent::CommandRefused { reason, detail });
    }

    /// Removes the person last enrolled from the running service (on the gallery's worker).
    fn remove_last(&mut self) {
        // Taken now, so a second press while the first runs does not remove anyone else; put
        // back if the removal fails.
        let Some(name) = self.last_enrolled.take() else {
            let reason = "nobody was enrolled from the running door since it started".to_owned();
            self.system(SystemEvent::RemoveFailed { reason });
            return;
        };
        if let Err(e) = self.gallery_job(Job::Remove(name.clone())) {
            self.last_enrolled = Some(name.clone());
            let reason = format!("{name}: {e}");
            log::warn!("remove last: {reason}");
            self.system(SystemEvent::RemoveFailed { reason });
        }
    }

    /// A gallery job's outcome, reported; the loop's command it gives (new matchers, a person
    /// to forget).
    fn gallery_done(&mut self, done: Done) -> Option<RemoteCommand> {
        match done {
            Done::NameChecked(_, _, Ok(())) => None,
            Done::NameChecked(ticket, name, Err(reason)) => {
                // The capture runs on; its result is dropped when it comes (or its store's
                // refusal is not reported twice).
                if self.enrolments.refused(ticket) {
                    log::warn!("enrolment of {name} refused: {reason}");
                    self.system(SystemEvent::EnrolFailed { person: name, reason });
                }
                None
            }
            Done::Stored(ticket, name, stored, matchers) => {
                let report = self.enrolments.stored(ticket);
                match stored {
                    Ok((templates, people)) => {
                        log::info!(
                            "enrolled {name} with {templates} template(s) from the running door"
                        );
                        self.last_enrolled = Some(name.clone());
                        let person = name.clone();
                        self.system(SystemEvent::Enrolled { person, templates, people });
                    }
                    Err(reason) => {
                        if report {
                            log::warn!("enrolment of {name} not stored: {reason}");
                            self.system(SystemEvent::EnrolFailed { person: name, reason });
                        }
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
            Done::Reloaded(Ok(m)) => Some(m),
            Done::Reloaded(Err(e)) => {
                self.reload_refused("reload_failed", e);
                None
            }
            Done::Removed(name, removed, matchers) => {
                match removed {
                    Ok(people) => {
                        log::info!("removed {name}, enrolled last from the running door");
                        self.system(SystemEvent::Removed { person: name.clone(), people });
                    }
                    Err(e) => {
                        if self.last_enrolled.is_none() {
                            self.last_enrolled = Some(name.clone());
                        }
                        let reason = format!("{name}: {e}");
                        log::warn!("remove last: {reason}");
                        self.system(SystemEvent::RemoveFailed { reason });
                    }
                }
                Some(matchers.unwrap_or_else(|e| {
                    // Whatever the removal did on disk, the loop stops recognising the person
                    // it was asked to remove (until a reload says otherwise).
                    log::error!(
                        "the gallery cannot be read back after removing {name} ({e}): the loop \
                         forgets {name}"
                    );
                    RemoteCommand::Forget(name)
                }))
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
        while let Some(done) = self.gallery.as_mut().and_then(Worker::try_done) {
            if let Some(command) = self.gallery_done(done) {
                return Some(command);
            }
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
                // The gallery's jobs give the loop their command when done (above).
                Action::ReloadGallery => {
                    if let Err(e) = self.gallery_job(Job::Reload) {
                        self.reload_refused("gallery_busy", e);
                    }
                    None
                }
                Action::Enrol => self.start_enrolment(command.name.unwrap_or_default()),
                Action::RemoveLast => {
                    self.remove_last();
                    None
                }
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
