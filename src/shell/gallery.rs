//! The gallery's worker thread while `portier run` runs, and the book of live enrolments the
//! shell keeps around it.
//!
//! Gallery work the loop must not wait for (a write syncs to the card; opening a large gallery
//! checks and decrypts for a second) runs in order on one `gallery` thread: a reload never
//! overtakes the change before it, so a removed person cannot come back with an older read.
//! The queue is bounded ([`QUEUE`] jobs; beyond that a job is refused as busy, reported like
//! any refusal) and reloads asked for while one is queued are merged into it. A job that
//! panics gives its own failure as its outcome, and the thread goes on with the next.
//!
//! [`Enrolments`] follows each live enrolment from its start to its one reported outcome by a
//! ticket, not by its name, so a refusal can never linger and silently drop a later capture
//! of the same name.
//!
//! Must not: run on the loop's thread, or let the loop keep recognising a person whose
//! removal it was asked for (a removal whose read-back fails makes the loop forget them).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;

use crate::app::RemoteCommand;
use crate::enroll_live::Capture;
use crate::gallery::{EnrollMode, Gallery, Storage};

/// Most jobs waiting for the worker; a job beyond them is refused (the gallery is busy).
pub(super) const QUEUE: usize = 16;

/// One live enrolment's ticket (see [`Enrolments`]).
pub(super) type Ticket = u64;

/// A job for the worker.
pub(super) enum Job {
    /// Whether a live enrolment of this name can be stored (the name is free).
    CheckName(Ticket, String),
    /// Store a finished capture, then read the matchers back.
    Store(Ticket, String, Box<Capture>),
    /// Read the matchers (MQTT `reload_gallery`).
    Reload,
    /// Remove this person (enrolled last from this door), then read the matchers back.
    Remove(String),
}

/// What a [`Job`] gave.
pub(super) enum Done {
    /// The name is free, or why the enrolment is refused.
    NameChecked(Ticket, String, Result<(), String>),
    /// The templates and people after storing (or why nothing was stored), and the matchers
    /// (or why they could not be read back).
    Stored(Ticket, String, Result<(usize, usize), String>, Result<RemoteCommand, String>),
    /// The matchers, or why the reload is refused.
    Reloaded(Result<RemoteCommand, String>),
    /// Whether the person was removed (and the people left), and the matchers read back
    /// after it (or why not: then the loop forgets the person itself).
    Removed(String, Result<usize, String>, Result<RemoteCommand, String>),
}

/// What a job was, kept to report it if it panics.
enum Kind {
    CheckName(Ticket, String),
    Store(Ticket, String),
    Reload,
    Remove(String),
}

impl Kind {
    fn of(job: &Job) -> Kind {
        match job {
            Job::CheckName(t, name) => Kind::CheckName(*t, name.clone()),
            Job::Store(t, name, _) => Kind::Store(*t, name.clone()),
            Job::Reload => Kind::Reload,
            Job::Remove(name) => Kind::Remove(name.clone()),
        }
    }

    /// The job's outcome when it could not finish.
    fn failed(self, why: String) -> Done {
        match self {
            Kind::CheckName(t, name) => Done::NameChecked(t, name, Err(why)),
            Kind::Store(t, name) => Done::Stored(t, name, Err(why.clone()), Err(why)),
            Kind::Reload => Done::Reloaded(Err(why)),
            Kind::Remove(name) => Done::Removed(name, Err(why.clone()), Err(why)),
        }
    }
}

/// Where the worker finds the gallery, and what it loads.
#[derive(Debug, Clone)]
pub(super) struct Site {
    pub(super) path: PathBuf,
    pub(super) key_file: PathBuf,
    pub(super) model_id: String,
    pub(super) npu_model_id: Option<String>,
    pub(super) storage: Storage,
}

impl Site {
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

    pub(super) fn open(&self) -> Result<Gallery, String> {
        Gallery::open(&self.path, &self.key_file).map_err(|e| e.to_string())
    }

    /// Does `job` (on the worker thread).
    pub(super) fn run(&self, job: Job) -> Done {
        match job {
            Job::CheckName(ticket, name) => {
                let free = self.open().and_then(|g| {
                    match g.list().map_err(|e| e.to_string())?.iter().any(|p| p.name == name) {
                        true => Err(format!("{name} is enrolled already")),
                        false => Ok(()),
                    }
                });
                Done::NameChecked(ticket, name, free)
            }
            Job::Store(ticket, name, capture) => {
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
                    Err(_) => Err("nothing stored".to_owned()),
                };
                Done::Stored(ticket, name, stored, matchers)
            }
            Job::Reload => Done::Reloaded(self.matchers()),
            Job::Remove(name) => {
                let removed = self.open().and_then(|mut g| {
                    g.remove(&name).map_err(|e| e.to_string())?;
                    Ok(g.list().map_or(0, |l| l.len()))
                });
                // Read back whatever the removal did: a failure that came after the row was
                // deleted must not leave the person in the loop's templates.
                Done::Removed(name, removed, self.matchers())
            }
        }
    }
}

/// The worker thread: jobs in, outcomes out, in order.
pub(super) struct Worker {
    jobs: SyncSender<Job>,
    done: Receiver<Done>,
    /// A reload is queued and has not started yet: another one is merged into it. The worker
    /// clears it as it starts the read, so a reload asked for after that is queued anew (it
    /// must see changes the running read may have missed).
    reload_pending: Arc<AtomicBool>,
}

impl Worker {
    /// Starts the thread; it ends when the worker (the jobs' sender) is dropped.
    pub(super) fn spawn(site: Site) -> std::io::Result<Worker> {
        Worker::spawn_with(move |job| site.run(job))
    }

    /// [`Worker::spawn`] with the job runner passed in (tests).
    fn spawn_with(run: impl Fn(Job) -> Done + Send + 'static) -> std::io::Result<Worker> {
        let (jobs, job_rx) = mpsc::sync_channel::<Job>(QUEUE);
        let (done_tx, done) = mpsc::channel();
        let reload_pending = Arc::new(AtomicBool::new(false));
        let pending = Arc::clone(&reload_pending);
        std::thread::Builder::new().name("gallery".to_owned()).spawn(move || {
            while let Ok(job) = job_rx.recv() {
                if matches!(job, Job::Reload) {
                    pending.store(false, Ordering::SeqCst);
                }
                let kind = Kind::of(&job);
                // The gallery's code does not panic but for a bug; if it does, the job fails
                // (the panic hook has logged it and secured the door) and the next one runs.
                let done = catch_unwind(AssertUnwindSafe(|| run(job)))
                    .unwrap_or_else(|_| kind.failed("the gallery's worker failed".to_owned()));
                if done_tx.send(done).is_err() {
                    break;
                }
            }
        })?;
        Ok(Worker { jobs, done, reload_pending })
    }

    /// Queues `job`; `Err` says why it will not run (the queue is full, the thread is gone).
    /// A reload while another is queued and not started is merged into it (`Ok`, nothing
    /// queued).
    pub(super) fn send(&mut self, job: Job) -> Result<(), SendError> {
        let reload = matches!(job, Job::Reload);
        if reload && self.reload_pending.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        self.jobs.try_send(job).map_err(|e| {
            if reload {
                self.reload_pending.store(false, Ordering::SeqCst);
            }
            match e {
                TrySendError::Full(_) => SendError::Busy,
                TrySendError::Disconnected(_) => SendError::Gone,
            }
        })
    }

    /// The next outcome, if one is ready.
    pub(super) fn try_done(&mut self) -> Option<Done> {
        self.done.try_recv().ok()
    }
}

/// Why a job was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SendError {
    /// [`QUEUE`] jobs are waiting already.
    Busy,
    /// The thread has ended.
    Gone,
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Busy => write!(f, "the gallery is busy ({QUEUE} jobs waiting); try again"),
            SendError::Gone => f.write_str("the gallery thread stopped"),
        }
    }
}

/// One live enrolment from its start to its reported outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    ticket: Ticket,
    name: String,
    /// The loop has handed back its capture (or its refusal).
    captured: bool,
    /// Its one outcome has been reported (a refusal found while it ran).
    reported: bool,
}

/// The live enrolments the shell started, each followed by its ticket until its one outcome
/// is reported: a name check that comes back refused while the capture runs is reported then,
/// and the capture, or the refusal of its store, is dropped quietly when it comes.
#[derive(Debug, Default)]
pub(super) struct Enrolments {
    entries: Vec<Entry>,
    next: Ticket,
}

/// What to do with a capture the loop handed back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Captured {
    /// Store it under this ticket.
    Store(Ticket),
    /// Report this failure (the capture failed, or was not started here).
    Report,
    /// Drop it: its refusal was reported already.
    Drop,
}

impl Enrolments {
    /// The name of the capture running now, if any (one at a time).
    pub(super) fn running(&self) -> Option<&str> {
        self.entries.iter().find(|e| !e.captured).map(|e| e.name.as_str())
    }

    /// Starts following a capture of `name`; its ticket.
    pub(super) fn start(&mut self, name: &str) -> Ticket {
        self.next += 1;
        let entry =
            Entry { ticket: self.next, name: name.to_owned(), captured: false, reported: false };
        self.entries.push(entry);
        self.next
    }

    /// Forgets a ticket whose job could not be queued.
    pub(super) fn cancel(&mut self, ticket: Ticket) {
        self.entries.retain(|e| e.ticket != ticket);
    }

    /// The loop handed back the capture of `name` (`ok`: with templates to store).
    pub(super) fn captured(&mut self, name: &str, ok: bool) -> Captured {
        let Some(i) = self.entries.iter().position(|e| !e.captured && e.name == name) else {
            // Not started here (the loop refused a second one): a capture of its own.
            return if ok { Captured::Store(self.start_captured(name)) } else { Captured::Report };
        };
        let entry = &mut self.entries[i];
        entry.captured = true;
        match (entry.reported, ok) {
            (false, true) => Captured::Store(entry.ticket),
            (reported, _) => {
                self.entries.remove(i);
                if reported {
                    Captured::Drop
                } else {
                    Captured::Report
                }
            }
        }
    }

    fn start_captured(&mut self, name: &str) -> Ticket {
        let ticket = self.start(name);
        if let Some(e) = self.entries.last_mut() {
            e.captured = true;
        }
        ticket
    }

    /// The name check of `ticket` came back refused: whether to report it (false when the
    /// enrolment is over or reported already, and when its capture is being stored: the
    /// store checks the name again and its outcome is the one reported).
    pub(super) fn refused(&mut self, ticket: Ticket) -> bool {
        match self.entries.iter_mut().find(|e| e.ticket == ticket) {
            Some(e) if !e.reported && !e.captured => {
                e.reported = true;
                true
            }
            _ => false,
        }
    }

    /// The store of `ticket` came back; whether its outcome is still to be reported. The
    /// ticket ends here.
    pub(super) fn stored(&mut self, ticket: Ticket) -> bool {
        let reported = self.entries.iter().any(|e| e.ticket == ticket && e.reported);
        self.cancel(ticket);
        !reported
    }

    /// Tickets followed now (tests: none may linger).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.entries.len()
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

    fn recv(worker: &mut Worker) -> Done {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if let Some(done) = worker.try_done() {
                return done;
            }
            assert!(std::time::Instant::now() < deadline, "no outcome from the worker");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    #[test]
    fn jobs_run_in_order_on_the_worker() {
        let dir = tempfile::tempdir().unwrap();
        let site = Site {
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
        let mut worker = Worker::spawn(site).unwrap();
        for job in [
            Job::CheckName(1, "Ada".into()),
            Job::CheckName(2, "Linus".into()),
            Job::Remove("Ada".into()),
            Job::Reload,
            Job::Remove("Ada".into()),
        ] {
            worker.send(job).unwrap();
        }
        match recv(&mut worker) {
            Done::NameChecked(1, name, Err(e)) => {
                assert_eq!(name, "Ada");
                assert!(e.contains("enrolled already"), "{e}");
            }
            _ => panic!("Ada's name is taken"),
        }
        assert!(matches!(recv(&mut worker), Done::NameChecked(2, _, Ok(()))));
        match recv(&mut worker) {
            Done::Removed(name, Ok(left), Ok(m)) => {
                assert_eq!((name.as_str(), left, people(&m)), ("Ada", 1, (1, Some(1))));
            }
            _ => panic!("Ada removed"),
        }
        // The reload after the removal sees it: jobs keep their order.
        match recv(&mut worker) {
            Done::Reloaded(Ok(m)) => assert_eq!(people(&m), (1, Some(1))),
            _ => panic!("reloaded"),
        }
        // Removing her again fails, and the matchers are still read back for the loop.
        match recv(&mut worker) {
            Done::Removed(_, Err(e), Ok(m)) => {
                assert!(e.contains("Ada"), "{e}");
                assert_eq!(people(&m), (1, Some(1)));
            }
            _ => panic!("Ada is gone already"),
        }
    }

    /// The queue is bounded, reloads merge, and a job that panics gives its own failure while
    /// the worker goes on.
    #[test]
    fn the_queue_is_bounded_reloads_merge_and_a_panicking_job_fails_alone() {
        let (release_tx, release) = mpsc::channel::<()>();
        let release = std::sync::Mutex::new(release);
        let mut worker = Worker::spawn_with(move |job| {
            let _ = release.lock().unwrap().recv();
            match job {
                Job::Remove(name) if name == "boom" => panic!("injected"),
                Job::Reload => Done::Reloaded(Err("reloaded".into())),
                Job::CheckName(t, name) => Done::NameChecked(t, name, Ok(())),
                Job::Store(t, name, _) => Done::Stored(t, name, Ok((1, 1)), Err("x".into())),
                Job::Remove(name) => Done::Removed(name, Ok(0), Err("x".into())),
            }
        })
        .unwrap();
        worker.send(Job::Remove("boom".into())).unwrap();
        // The worker takes the first job and waits in it; then the queue fills.
        std::thread::sleep(std::time::Duration::from_millis(100));
        worker.send(Job::Reload).unwrap();
        worker.send(Job::Reload).unwrap(); // merged into the queued one
        for t in 1..QUEUE as u64 {
            worker.send(Job::CheckName(t, format!("p{t}"))).unwrap();
        }
        assert_eq!(worker.send(Job::CheckName(99, "one too many".into())), Err(SendError::Busy));
        assert_eq!(worker.send(Job::Reload), Ok(()), "merged, not refused");
        for _ in 0..QUEUE + 1 {
            release_tx.send(()).unwrap();
        }
        match recv(&mut worker) {
            Done::Removed(name, Err(e), Err(_)) => {
                assert_eq!(name, "boom");
                assert!(e.contains("worker failed"), "{e}");
            }
            _ => panic!("the panicking job's own failure first"),
        }
        assert!(matches!(recv(&mut worker), Done::Reloaded(Err(_))));
        for t in 1..QUEUE as u64 {
            assert!(matches!(recv(&mut worker), Done::NameChecked(got, _, Ok(())) if got == t));
        }
        // Once the reload has started, the next one is queued again.
        worker.send(Job::Reload).unwrap();
        release_tx.send(()).unwrap();
        assert!(matches!(recv(&mut worker), Done::Reloaded(_)));
        // A reload asked for while one runs (started, not done) is queued, not merged: the
        // running read may have missed the change that asked for it.
        worker.send(Job::Reload).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        worker.send(Job::Reload).unwrap();
        worker.send(Job::Reload).unwrap(); // merged into the second, which has not started
        release_tx.send(()).unwrap();
        release_tx.send(()).unwrap();
        assert!(matches!(recv(&mut worker), Done::Reloaded(_)));
        assert!(matches!(recv(&mut worker), Done::Reloaded(_)));
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(worker.try_done().is_none(), "two reloads ran, not three");
    }

    #[test]
    fn a_refused_name_ends_its_own_enrolment_only() {
        let mut book = Enrolments::default();
        // Refused while the capture runs: reported once, its capture dropped.
        let t = book.start("Ada");
        assert_eq!(book.running(), Some("Ada"));
        assert!(book.refused(t));
        assert!(!book.refused(t), "reported once");
        assert_eq!(book.captured("Ada", true), Captured::Drop);
        assert_eq!((book.len(), book.running()), (0, None));
        // The next enrolment of the same name (after a removal elsewhere) is stored.
        let t2 = book.start("Ada");
        assert_ne!(t2, t);
        assert_eq!(book.captured("Ada", true), Captured::Store(t2));
        assert!(book.stored(t2), "its outcome is reported");
        assert_eq!(book.len(), 0);
        // The capture finishes before its name check comes back refused: the store's outcome
        // (it checks the name again) is the one reported, the check's is not.
        let t3 = book.start("Grace");
        assert_eq!(book.captured("Grace", true), Captured::Store(t3));
        assert!(!book.refused(t3), "the store reports");
        assert!(book.stored(t3), "reported with the store");
        assert_eq!(book.len(), 0);
        // A capture that fails is reported; a check that comes back after it is not.
        let t4 = book.start("Linus");
        assert_eq!(book.captured("Linus", false), Captured::Report);
        assert!(!book.refused(t4));
        assert_eq!(book.len(), 0);
        // A capture not started here is stored under a ticket of its own.
        match book.captured("Ken", true) {
            Captured::Store(t) => assert!(book.stored(t)),
            other => panic!("{other:?}"),
        }
        assert_eq!(book.len(), 0);
    }
}
