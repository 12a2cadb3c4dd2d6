//! The loop's outside world while `portier run` runs: hands every [`AppEvent`] to the MQTT
//! thread, turns MQTT commands into [`RemoteCommand`]s, keeps the status display up to date,
//! and collects the grants for the summary. It is the [`Hooks`] implementation `main` passes to
//! [`crate::app::App::run`].
//!
//! Gallery work (reload, the enrol button's name check, storing a capture, "remove last") runs
//! in order on one `gallery` worker thread; its outcome is the loop's next command.
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
use crate::gallery::{EnrollMode, Gallery, Storage};
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
    /// The gallery's worker thread, started at the first job.
    gallery: Option<GalleryWorker>,
    /// A live enrolment whose name the worker found taken while its capture ran.
    refused_name: Option<String>,
}

/// Gallery work the loop must not wait for (a write syncs to the card; opening a large gallery
/// checks and decrypts for a second), done in order on one worker thread: a reload never
/// overtakes the change before it, so a removed person cannot come back with an older read.
enum GalleryJob {
    /// Whether a live enrolment of this name can be stored (the name is free).
    CheckName(String),
    /// Store a finished capture, then read the matchers back.
    Store(String, Box<Capture>),
    /// Read the matchers (MQTT `reload_gallery`).
    Reload,
    /// Remove this person (enrolled last from this door), then read the matchers back.
    Remove(String),
}

/// What a [`GalleryJob`] gave: the outcome and, after a change, the new matchers for the loop.
enum GalleryDone {
    /// The name is free, or why the enrolment is refused.
    NameChecked(String, Result<(), String>),
    /// The templates and people after storing (or why nothing was stored), and the matchers
    /// (or why they could not be read back).
    Stored(String, Result<(usize, usize), String>, Result<RemoteCommand, String>),
    /// The matchers, or why the reload is refused.
    Reloaded(Result<RemoteCommand, String>),
    /// The people left and the matchers, or why the removal failed.
    Removed(String, Result<(usize, RemoteCommand), String>),
}

/// Where the gallery worker finds the gallery, and what it loads.
#[derive(Debug, Clone)]
struct GallerySite {
    path: PathBuf,
    key_file: PathBuf,
    model_id: String,
    npu_model_id: Option<String>,
    storage: Storage,
}

impl GallerySite {
    /// The matchers of the gallery on disk, for the loop.
    fn matchers(&self) -> Result<RemoteCommand, String> {
        let ids: Vec<&str> =
            std::iter::once(self.model_id.as_str()).chain(self.npu_model_id.as_deref()).collect();
        let loaded = Gallery::load_matchers(&self.path, &self.key_file, &ids, self.storage)
            .map_err(|e| e.to_string())?;
        let mut loaded = loaded.into_iter();
        // One matcher per model asked for: the first is always there.
        let cpu = loaded.next().ok_or("the gallery load returned no matcher")?;
        Ok(RemoteCommand::SetMatcher(Box::new((cpu, loaded.next()))))
    }

    fn open(&self) -> Result<Gallery, String> {
        Gallery::open(&self.path, &self.key_file).map_err(|e| e.to_string())
    }

    /// Does `job` (on the worker thread).
    fn run(&self, job: GalleryJob) -> GalleryDone {
        match job {
            GalleryJob::CheckName(name) => {
                let free = self.open().and_then(|g| {
                    match g.list().map_err(|e| e.to_string())?.iter().any(|p| p.name == name) {
                        true => Err(format!("{name} is enrolled already")),
                        false => Ok(()),
                    }
                });
                GalleryDone::NameChecked(name, free)
            }
            GalleryJob::Store(name, capture) => {
                let stored = (|| -> Result<(usize, usize), String> {
                    if let Some(r) = &capture.resemblance {
                        return Err(format!(
                            "{name} resembles enrolled {} (similarity {:.3}): not stored; enrol \
                             with `portier enroll --allow-similar` if they are different people",
                            r.name, r.similarity
                        ));
                    }
                    let mut g = self.open()?;
                    capture.commit(&mut g, &name, EnrollMode::New).map_err(|e| e.to_string())?;
                    let people = g.list().map_or(0, |l| l.len());
                    Ok((capture.templates.len(), people))
                })();
                let matchers = match &stored {
                    Ok(_) => self.matchers(),
                    Err(_) => Err(String::new()),
                };
                GalleryDone::Stored(name, stored, matchers)
            }
            GalleryJob::Reload => GalleryDone::Reloaded(self.matchers()),
            GalleryJob::Remove(name) => {
                let removed = (|| -> Result<(usize, RemoteCommand), String> {
                    let mut g = self.open()?;
                    g.remove(&name).map_err(|e| e.to_string())?;
                    let people = g.list().map_err(|e| e.to_string())?.len();
                    Ok((people, self.matchers()?))
                })();
                GalleryDone::Removed(name, removed)
            }
        }
    }
}

/// The gallery's worker thread: jobs in, outcomes out, in order.
struct GalleryWorker {
    jobs: std::sync::mpsc::Sender<GalleryJob>,
    done: std::sync::mpsc::Receiver<GalleryDone>,
}

impl GalleryWorker {
    /// Starts the thread; it ends when the shell (the jobs' sender) is dropped.
    fn spawn(site: GallerySite) -> std::io::Result<GalleryWorker> {
        let (jobs, job_rx) = std::sync::mpsc::channel::<GalleryJob>();
        let (done_tx, done) = std::sync::mpsc::channel();
        std::thread::Builder::new().name("gallery".to_owned()).spawn(move || {
            while let Ok(job) = job_rx.recv() {
                if done_tx.send(site.run(job)).is_err() {
                    break;
                }
            }
        })?;
        Ok(GalleryWorker { jobs, done })
    }
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
            refused_name: None,
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
    /// cannot run.
    fn gallery_job(&mut self, job: GalleryJob) -> Result<(), String> {
        if self.gallery.is_none() {
            let site = GallerySite {
                path: self.gallery_path.clone(),
                key_file: self.gallery_key_file.clone(),
                model_id: self.model_id.clone(),
                npu_model_id: self.npu_model_id.clone(),
                storage: self.storage,
            };
            let worker = GalleryWorker::spawn(site)
                .map_err(|e| format!("cannot start the gallery thread: {e}"))?;
            self.gallery = Some(worker);
        }
        let sent = self.gallery.as_ref().map(|w| w.jobs.send(job));
        if !matches!(sent, Some(Ok(()))) {
            // The worker is gone (it cannot panic out of a job but for a bug): start anew next
            // time.
            self.gallery = None;
            return Err("the gallery thread stopped".to_owned());
        }
        Ok(())
    }

    /// An enrolment asked for over MQTT: refused at once when it is not offered; else the
    /// capture starts now (the person is at the door now) while the gallery's worker checks
    /// the name: a name found taken ends it with one `enrol_failed` ([`Shell::gallery_done`]).
    fn start_enrolment(&mut self, name: String) -> Option<RemoteCommand> {
        let started = (|| -> Result<LiveEnrolment, String> {
            let settings = self.enrol_settings.clone().ok_or("live enrolment is not offered")?;
            let live = LiveEnrolment::new(settings).map_err(|e| e.to_string())?;
            self.gallery_job(GalleryJob::CheckName(name.clone()))?;
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
        if self.refused_name.as_deref() == Some(name) {
            // Its name was found taken while it ran: reported then.
            self.refused_name = None;
            log::info!("capture of {name} dropped: the enrolment was refused");
            return;
        }
        let stored = match result {
            Ok(c) => self.gallery_job(GalleryJob::Store(name.to_owned(), c.clone())),
            Err(reason) => Err(reason.clone()),
        };
        if let Err(reason) = stored {
            self.system(SystemEvent::EnrolFailed { person: name.to_owned(), reason });
        }
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
        if let Err(e) = self.gallery_job(GalleryJob::Remove(name.clone())) {
            self.last_enrolled = Some(name.clone());
            let reason = format!("{name}: {e}");
            log::warn!("remove last: {reason}");
            self.system(SystemEvent::RemoveFailed { reason });
        }
    }

    /// A gallery job's outcome, reported; the loop's command it gives (new matchers, a capture
    /// to start).
    fn gallery_done(&mut self, done: GalleryDone) -> Option<RemoteCommand> {
        match done {
            GalleryDone::NameChecked(_, Ok(())) => None,
            GalleryDone::NameChecked(name, Err(reason)) => {
                // The capture runs on; its result is dropped (or its store's refusal is not
                // reported twice).
                log::warn!("enrolment of {name} refused: {reason}");
                self.refused_name = Some(name.clone());
                self.system(SystemEvent::EnrolFailed { person: name, reason });
                None
            }
            GalleryDone::Stored(name, stored, matchers) => {
                match stored {
                    Ok((templates, people)) => {
                        log::info!(
                            "enrolled {name} with {templates} template(s) from the running door"
                        );
                        self.last_enrolled = Some(name.clone());
                        let person = name.clone();
                        self.system(SystemEvent::Enrolled { person, templates, people });
                    }
                    Err(_) if self.refused_name.as_deref() == Some(name.as_str()) => {
                        // Stored before its name check came back, and refused for the same
                        // reason: reported once, with the check.
                        self.refused_name = None;
                        return None;
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
            GalleryDone::Reloaded(Ok(m)) => Some(m),
            GalleryDone::Reloaded(Err(e)) => {
                log::error!("gallery reload refused: {e}");
                None
            }
            GalleryDone::Removed(name, Ok((people, matchers))) => {
                log::info!("removed {name}, enrolled last from the running door");
                self.system(SystemEvent::Removed { person: name, people });
                Some(matchers)
            }
            GalleryDone::Removed(name, Err(e)) => {
                if self.last_enrolled.is_none() {
                    self.last_enrolled = Some(name.clone());
                }
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
        if let Some(done) = self.gallery.as_ref().and_then(|w| w.done.try_recv().ok()) {
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
                    if let Err(e) = self.gallery_job(GalleryJob::Reload) {
                        log::error!("gallery reload refused: {e}");
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

#[cfg(test)]
mod tests {
    use super::*;

    fn people(command: &RemoteCommand) -> (usize, Option<usize>) {
        match command {
            RemoteCommand::SetMatcher(m) => (m.0.people(), m.1.as_ref().map(|n| n.people())),
            _ => panic!("not matchers"),
        }
    }

    #[test]
    fn gallery_jobs_run_in_order_on_the_worker() {
        let dir = tempfile::tempdir().unwrap();
        let site = GallerySite {
            path: dir.path().join("gallery.db"),
            key_file: dir.path().join("gallery.key"),
            model_id: "cpu".into(),
            npu_model_id: Some("npu".into()),
            storage: Storage::Int8,
        };
        let mut g = site.open().unwrap();
        let row = |x: f32| vec![vec![x, 1.0, 0.5, 0.25]];
        for (i, name) in ["Ada", "Grace"].into_iter().enumerate() {
            let (cpu, npu) = (row(i as f32), row(2.0 + i as f32));
            let sets: [(&str, &[Vec<f32>]); 2] = [("cpu", &cpu), ("npu", &npu)];
            g.enroll_models(name, &sets, EnrollMode::New).unwrap();
        }
        drop(g);
        let worker = GalleryWorker::spawn(site).unwrap();
        for job in [
            GalleryJob::CheckName("Ada".into()),
            GalleryJob::CheckName("Linus".into()),
            GalleryJob::Remove("Ada".into()),
            GalleryJob::Reload,
            GalleryJob::Remove("Ada".into()),
        ] {
            worker.jobs.send(job).unwrap();
        }
        let mut done = (0..5).map(|_| worker.done.recv().unwrap());
        match done.next() {
            Some(GalleryDone::NameChecked(name, Err(e))) => {
                assert_eq!(name, "Ada");
                assert!(e.contains("enrolled already"), "{e}");
            }
            _ => panic!("Ada's name is taken"),
        }
        assert!(matches!(done.next(), Some(GalleryDone::NameChecked(_, Ok(())))));
        match done.next() {
            Some(GalleryDone::Removed(name, Ok((left, m)))) => {
                assert_eq!((name.as_str(), left, people(&m)), ("Ada", 1, (1, Some(1))));
            }
            _ => panic!("Ada removed"),
        }
        // The reload after the removal sees it: jobs keep their order.
        match done.next() {
            Some(GalleryDone::Reloaded(Ok(m))) => assert_eq!(people(&m), (1, Some(1))),
            _ => panic!("reloaded"),
        }
        match done.next() {
            Some(GalleryDone::Removed(_, Err(e))) => assert!(e.contains("Ada"), "{e}"),
            _ => panic!("Ada is gone already"),
        }
    }
}
