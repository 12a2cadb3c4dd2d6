//! Relocking that does not depend on the loop: the relay is driven to its secure level on every
//! fatal signal, and by a guard thread when a pulse overstays its end because the loop stalled.
//!
//! Two holes this closes (issue 15): before, only SIGTERM/SIGINT were handled (as a flag the
//! loop reads), so SIGABRT (systemd's watchdog), SIGHUP, SIGQUIT or a crash (SIGSEGV, SIGBUS,
//! SIGILL, SIGFPE) mid-pulse left the strike released; and the pulse ended only in the loop's
//! `poll`, so a loop stuck in a model run or a full disk kept the door open.
//!
//! * [`install_fatal_signal_relock`]: an async-signal-safe handler for SIGHUP, SIGQUIT, SIGABRT,
//!   SIGSEGV, SIGBUS, SIGILL and SIGFPE that calls [`super::secure_on_emergency`] (one ioctl on
//!   a pre-opened GPIO line descriptor for the GPIO backend, an atomic store for the fake),
//!   then hands the signal on: to the handler that was there before (the standard library's
//!   stack-overflow reporter for SIGSEGV/SIGBUS) and then to the default action, so the exit
//!   status and the core dump stay truthful (`kill -HUP` still exits by SIGHUP). A signal that
//!   was ignored when portier started (SIGHUP under `nohup`) stays ignored. SIGTERM and SIGINT
//!   secure the relay in the handler too ([`install_stop_relock`]) and then stop the loop
//!   gracefully through its flag.
//! * [`RelockGuard`]: a [`DoorControl`] wrapper that arms a deadline (pulse + margin, on the
//!   monotonic clock) at every unlock and disarms it when the door reports locked; a thread of
//!   its own secures the relay when the deadline passes and logs it. The guard's relock is
//!   flagged to the loop: from then on [`DoorControl::state`] says locked, and the next call
//!   into the door (the loop's next poll) records it in the state machine, which reports
//!   `Locked` as for any relock. So the retained lock state goes back to `LOCKED` at the next
//!   tick, not only when the loop's own clock reaches the pulse's end (which may be later: the
//!   guard follows the monotonic clock, the loop its own time, and an extension made by a call
//!   that stalled after energising is not yet known to the guard).
//!
//! Must not: allocate, lock or log in a signal handler; decide anything about the door (the
//! state machine in [`super::Door`] does); secure the relay while a pulse is within its time.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use super::{
    DoorConfig, DoorControl, DoorError, DoorEvent, DoorState, EmergencySecure, UnlockReason,
};

/// The fatal signals a crash, the watchdog or an operator sends, each of which must leave the
/// door locked (the fault-injection suite sends each of them mid-pulse). SIGTERM and SIGINT are
/// the stop signals ([`install_stop_relock`]); SIGKILL and SIGSTOP cannot be caught (SIGKILL's
/// answer is the restart, which secures first thing, `dtparam=strict_gpiod` on the Pi, which
/// returns a released line to its default, and `OnFailure=`).
pub const FATAL_SIGNALS: [libc::c_int; 7] = [
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGABRT,
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGILL,
    libc::SIGFPE,
];

/// The other signals whose default action ends the process (signal(7)): nobody sends them to
/// portier on purpose, which is exactly why a stray one must not leave the door released.
/// The real-time signals are added at install time (`SIGRTMIN()..=SIGRTMAX()`: glibc keeps the
/// two below SIGRTMIN for itself). SIGPIPE is ignored by Rust's runtime, so it is left alone
/// (an ignored signal stays ignored).
pub const OTHER_TERMINATING_SIGNALS: [libc::c_int; 11] = [
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGALRM,
    libc::SIGPWR,
    libc::SIGTRAP,
    libc::SIGSYS,
    libc::SIGXCPU,
    libc::SIGXFSZ,
    libc::SIGVTALRM,
    libc::SIGPROF,
    libc::SIGIO,
];

/// The stop signals. Where the process has a loop to stop, [`install_stop_relock`] handles
/// them; a short-lived command that drives the relay (`selftest --pulse-relay`) treats them as
/// fatal with [`install_relock_on`].
pub const STOP_SIGNALS: [libc::c_int; 2] = [libc::SIGTERM, libc::SIGINT];

/// Signal numbers below this have a slot in [`PREVIOUS`] (Linux has 64 signals).
const MAX_SIGNAL: usize = 65;

/// The action that was installed before ours, per signal number, written once before our
/// handler goes in and only read by it.
static PREVIOUS: [OnceLock<libc::sigaction>; MAX_SIGNAL] = [const { OnceLock::new() }; MAX_SIGNAL];

/// How many fatal signals the handler has secured the relay for (tests and the log of a
/// process that survives: a chained handler may return for a signal sent with `kill`).
static HANDLED: AtomicUsize = AtomicUsize::new(0);

/// Fatal-signal installation errors.
#[derive(Debug, thiserror::Error)]
pub enum RelockError {
    /// `sigaction` failed.
    #[error("cannot install the relock handler for signal {signal}: {source}")]
    Signal {
        /// The signal number.
        signal: libc::c_int,
        /// The OS error.
        source: std::io::Error,
    },
    /// The guard thread could not be started.
    #[error("cannot start the relock guard thread: {0}")]
    Thread(std::io::Error),
}

/// The handler for [`FATAL_SIGNALS`]: secure, then let the signal do what it did before.
extern "C" fn on_fatal(
    signal: libc::c_int,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    super::secure_on_emergency();
    HANDLED.fetch_add(1, Ordering::SeqCst);
    let previous = usize::try_from(signal).ok().and_then(|s| PREVIOUS.get(s)?.get().copied());
    if let Some(previous) = previous {
        let handler = previous.sa_sigaction;
        if handler != libc::SIG_DFL && handler != libc::SIG_IGN {
            if previous.sa_flags & libc::SA_SIGINFO != 0 {
                // SAFETY: the kernel stored this value as an `sa_sigaction` handler (SA_SIGINFO
                // set), so it is a function of this signature; it was valid when we read it and
                // code is never unmapped. We pass it the kernel's own arguments.
                let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                    unsafe { std::mem::transmute(handler) };
                f(signal, info, context);
            } else {
                // SAFETY: as above, a plain `sa_handler` (SA_SIGINFO clear).
                let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(handler) };
                f(signal);
            }
        }
    }
    // The default action now, whatever the previous handler did: a real fault re-faults when
    // the handler returns, a signal sent with `kill` is pending (it is blocked while its handler
    // runs) and is delivered on return. Both end the process by this signal, with a core dump
    // where the default says so.
    // SAFETY: `sigaction` and `raise` are async-signal-safe; the struct is fully initialised
    // (zeroed, then SIG_DFL with an empty mask).
    unsafe {
        let mut default: libc::sigaction = std::mem::zeroed();
        default.sa_sigaction = libc::SIG_DFL;
        libc::sigemptyset(&mut default.sa_mask);
        libc::sigaction(signal, &default, std::ptr::null_mut());
        libc::raise(signal);
    }
}

/// Installs the relock handler for every signal whose default action ends the process, but
/// the stop signals: [`FATAL_SIGNALS`], [`OTHER_TERMINATING_SIGNALS`] and the real-time
/// signals. The relay it secures is the one registered with [`super::install_panic_hook`];
/// register that first.
pub fn install_fatal_signal_relock() -> Result<(), RelockError> {
    install_relock_on(&FATAL_SIGNALS)?;
    install_relock_on(&OTHER_TERMINATING_SIGNALS)?;
    let realtime: Vec<libc::c_int> = (libc::SIGRTMIN()..=libc::SIGRTMAX()).collect();
    install_relock_on(&realtime)
}

/// Installs the relock handler for `signals`: secure the relay, run the handler that was there
/// before, end the process by the signal's default action. Once per signal and process (a
/// signal already handled is left as it is). The handler runs on the thread's alternate
/// signal stack when it has one (the standard library gives every thread one), so a stack
/// overflow is relocked too. A signal ignored when portier started (SIGHUP under `nohup`)
/// stays ignored: the process does not die of it.
pub fn install_relock_on(signals: &[libc::c_int]) -> Result<(), RelockError> {
    for &signal in signals {
        let slot = usize::try_from(signal).ok().and_then(|s| PREVIOUS.get(s));
        let Some(slot) = slot else {
            return Err(RelockError::Signal {
                signal,
                source: std::io::Error::from_raw_os_error(libc::EINVAL),
            });
        };
        if slot.get().is_some() {
            continue;
        }
        // SAFETY: `sigaction` is plain old data; all-zero is a valid value (SIG_DFL, no flags),
        // and the call only writes the current action into it.
        let mut previous: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: reads the current action into a valid, writable struct.
        if unsafe { libc::sigaction(signal, std::ptr::null(), &mut previous) } != 0 {
            return Err(RelockError::Signal { signal, source: std::io::Error::last_os_error() });
        }
        // Published before our handler can run, so it always finds it.
        let _ = slot.set(previous);
        if previous.sa_sigaction == libc::SIG_IGN {
            continue;
        }
        // SAFETY: `action` is fully initialised: our handler (the SA_SIGINFO signature), an
        // empty mask, and flags: SA_SIGINFO for that signature, SA_ONSTACK so a stack
        // overflow still runs it, SA_RESTART so interrupted system calls of other threads go on.
        let status = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_fatal as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_RESTART;
            libc::sigaction(signal, &action, std::ptr::null_mut())
        };
        if status != 0 {
            return Err(RelockError::Signal { signal, source: std::io::Error::last_os_error() });
        }
    }
    Ok(())
}

/// Secures the relay in the handler of SIGTERM and SIGINT and sets `stop`, so the loop ends
/// gracefully (its last act secures again and reports the relock). The relay does not wait for
/// the loop: a loop stuck in a model run cannot keep the door released past a stop request.
pub fn install_stop_relock(stop: &Arc<AtomicBool>) -> Result<(), RelockError> {
    for signal in STOP_SIGNALS {
        let flag = Arc::clone(stop);
        // SAFETY: the action only stores to an atomic and calls `secure_on_emergency`, which is
        // async-signal-safe (an atomic load of the registered handle, then one ioctl or an
        // atomic store and a `write(2)`).
        let registered = unsafe {
            signal_hook::low_level::register(signal, move || {
                super::secure_on_emergency();
                flag.store(true, Ordering::SeqCst);
            })
        };
        registered.map_err(|source| RelockError::Signal { signal, source })?;
    }
    Ok(())
}

/// Registers `emergency` everywhere the process can end: the panic hook, every signal whose
/// default action ends the process, and the stop signals. With `stop`, SIGTERM and SIGINT
/// secure the relay and set the flag for a loop to wind down ([`install_stop_relock`]); without
/// one (a short-lived command that drives the relay) they end the process like the others.
/// The one place `run`, `secure-door --hold` and `selftest --pulse-relay` arm the relock.
pub fn secure_on_every_exit(
    emergency: Arc<dyn EmergencySecure>,
    stop: Option<&Arc<AtomicBool>>,
) -> Result<(), RelockError> {
    super::install_panic_hook(emergency);
    install_fatal_signal_relock()?;
    match stop {
        Some(stop) => install_stop_relock(stop),
        None => install_relock_on(&STOP_SIGNALS),
    }
}

/// How many fatal signals have been handled in this process.
pub fn fatal_signals_handled() -> usize {
    HANDLED.load(Ordering::SeqCst)
}

/// Writes `message` to standard error with one `write(2)`: usable in a signal handler (no
/// lock, no allocation, unlike `eprintln!`).
pub fn signal_safe_note(message: &str) {
    // SAFETY: writes `message.len()` bytes from a valid slice to fd 2; a failed or short write
    // is ignored (there is no one left to tell).
    let _ = unsafe { libc::write(2, message.as_ptr().cast(), message.len()) };
}

/// How long past a pulse's end the guard waits before it secures the relay itself. The loop's
/// own relock happens at its next `poll`, usually within a frame; when the guard is first, the
/// pulse is over anyway, so securing then is never wrong, only early for a slow loop.
pub const GUARD_MARGIN: Duration = Duration::from_millis(100);

/// What the loop and the guard thread share.
#[derive(Debug, Default)]
struct Deadline {
    /// When the relay must be secure by, while a pulse runs; `None` while locked.
    due: Mutex<Option<Instant>>,
    wake: Condvar,
    /// The guard secured the relay this many times (the loop stalled).
    fired: AtomicUsize,
    /// The guard secured the relay and the door's state machine does not know yet.
    relocked: AtomicBool,
    quit: AtomicBool,
}

/// A [`DoorControl`] whose pulses are ended by a thread of their own when the loop does not
/// end them in time. See the module documentation.
pub struct RelockGuard {
    inner: Box<dyn DoorControl>,
    shared: Arc<Deadline>,
    margin: Duration,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Set by the stop signals' handler: from then on unlocks are refused (the handler has
    /// secured the relay; the loop may still be finishing a step that would grant).
    stopping: Option<Arc<AtomicBool>>,
    /// The door's end of the release at the last call (the loop's clock).
    synced_end: Option<Duration>,
    /// The deadline follows the loop's clock even when it runs slower than real time (the
    /// fake relay only: see [`RelockGuard::following_the_loop_clock`]).
    follows_loop_clock: bool,
}

impl std::fmt::Debug for RelockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelockGuard")
            .field("margin", &self.margin)
            .field("fired", &self.shared.fired.load(Ordering::SeqCst))
            .finish_non_exhaustive()
    }
}

impl RelockGuard {
    /// Wraps `inner`; `emergency` is the relay's handle the guard drives to its secure level
    /// when a pulse overstays its end by more than `margin`.
    pub fn new(
        inner: Box<dyn DoorControl>,
        emergency: Arc<dyn EmergencySecure>,
        margin: Duration,
    ) -> Result<Self, RelockError> {
        let shared = Arc::new(Deadline::default());
        let guard = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("relock-guard".into())
            .spawn(move || watch(&guard, emergency.as_ref()))
            .map_err(RelockError::Thread)?;
        Ok(Self {
            inner,
            shared,
            margin,
            thread: Some(thread),
            stopping: None,
            synced_end: None,
            follows_loop_clock: false,
        })
    }

    /// Lets a release's deadline follow the loop's clock while it runs slower than real time:
    /// for the fake (logged) relay only, which holds no door, so that a replay, which runs on
    /// the clip's clock, gives the same decisions on a machine too slow for the clip. A
    /// stalled loop (no call at all) is still caught. Without it (every real relay), the
    /// deadline of a release never moves later until the release itself is extended: the
    /// strike is secured `pulse + margin` in real time after its last extension, whatever the
    /// loop's clock says.
    pub fn following_the_loop_clock(mut self) -> Self {
        self.follows_loop_clock = true;
        self
    }

    /// Refuses every unlock once `stop` is set ([`DoorError::Stopping`]).
    pub fn refuse_unlocks_after(mut self, stop: Arc<AtomicBool>) -> Self {
        self.stopping = Some(stop);
        self
    }

    fn stopping(&self) -> bool {
        self.stopping.as_ref().is_some_and(|s| s.load(Ordering::SeqCst))
    }

    /// Whether the guard secured the relay behind the state machine's back.
    fn relocked_by_guard(&self) -> bool {
        self.shared.relocked.load(Ordering::SeqCst)
    }

    /// Records a relock the guard made in the state machine: it secures (again: the relay is
    /// at its secure level already) and reports `Locked` at its next poll. First thing in every
    /// call, so a new unlock after the guard fired starts a full pulse. A guard that fires
    /// during a call, past a deadline armed before it, is recorded at the next call: at worst a
    /// release that call started ends early, which is the safe side.
    fn catch_up(&mut self) {
        if self.shared.relocked.swap(false, Ordering::SeqCst) {
            log::warn!("door: locked by the relock guard; the lock state follows");
            if let Err(e) = self.inner.secure() {
                log::error!("door: recording the guard's relock: {e}");
            }
        }
    }

    /// How often the guard tried to secure the relay because the loop did not (counted after
    /// each attempt, its outcome already in place).
    pub fn fired(&self) -> usize {
        self.shared.fired.load(Ordering::SeqCst)
    }

    /// Arms the deadline before a call that may energise the relay (an unlock, or a poll that
    /// may see the exit button): a full pulse from now, unless one is armed already. So a call
    /// that blocks after energising (a stalled logger) is still covered.
    fn arm(&self) {
        let mut due = self.shared.due.lock().unwrap_or_else(PoisonError::into_inner);
        if due.is_none() {
            *due = Some(Instant::now() + self.inner.config().pulse + self.margin);
            self.shared.wake.notify_one();
        }
    }

    /// After a call: disarms once the door is locked; while a release runs, re-arms from the
    /// door's own end of it (`now` is the loop's clock at the call), so an extension (another
    /// grant, the exit button) moves the deadline with it.
    ///
    /// A release whose end has not moved since the last call keeps the earlier of its two
    /// deadlines (unless [`RelockGuard::following_the_loop_clock`]): a loop whose clock runs
    /// slower than real time (a replay on a machine too slow for it) cannot stretch it.
    fn sync(&mut self, now: Duration) {
        let end = self.inner.relock_due();
        let mut due = self.shared.due.lock().unwrap_or_else(PoisonError::into_inner);
        let computed = match end {
            None if self.inner.state().locked => None,
            // Unlocked with no end (a failed relock the next poll retries): due now.
            None => Some(Instant::now() + self.margin),
            Some(end) => Some(Instant::now() + end.saturating_sub(now) + self.margin),
        };
        let same_release = end.is_some() && end == self.synced_end;
        *due = match (computed, *due) {
            (Some(new), Some(old)) if same_release && !self.follows_loop_clock => {
                Some(new.min(old))
            }
            (new, _) => new,
        };
        self.synced_end = end;
        self.shared.wake.notify_one();
    }
}

/// The guard thread: sleeps until the armed deadline, secures the relay when it passes.
fn watch(shared: &Deadline, emergency: &dyn EmergencySecure) {
    let mut due = shared.due.lock().unwrap_or_else(PoisonError::into_inner);
    while !shared.quit.load(Ordering::SeqCst) {
        match *due {
            None => {
                due = shared.wake.wait(due).unwrap_or_else(PoisonError::into_inner);
            }
            Some(at) => {
                let now = Instant::now();
                if now >= at {
                    let secured = emergency.secure_now();
                    if secured {
                        // After the relay is secure: from now on the door is reported locked.
                        shared.relocked.store(true, Ordering::SeqCst);
                        *due = None;
                        log::warn!(
                            "door: the loop had not relocked {} ms after the pulse's end \
                             (stalled or slow); relay secured by the guard",
                            GUARD_MARGIN.as_millis()
                        );
                    } else {
                        // Not reported locked while the relay may still be released: tried
                        // again after another margin.
                        *due = Some(now + GUARD_MARGIN);
                        log::error!(
                            "door: the loop had not relocked {} ms after the pulse's end, and \
                             the guard could not drive the relay secure; trying again",
                            GUARD_MARGIN.as_millis()
                        );
                    }
                    // Counted once the attempt and its outcome are in place: whoever sees the
                    // count sees the relay and the reported state it left.
                    shared.fired.fetch_add(1, Ordering::SeqCst);
                } else {
                    due = shared
                        .wake
                        .wait_timeout(due, at - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            }
        }
    }
}

impl Drop for RelockGuard {
    fn drop(&mut self) {
        self.shared.quit.store(true, Ordering::SeqCst);
        {
            let _due = self.shared.due.lock().unwrap_or_else(PoisonError::into_inner);
            self.shared.wake.notify_one();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl DoorControl for RelockGuard {
    fn unlock(&mut self, reason: UnlockReason, now: Duration) -> Result<(), DoorError> {
        self.catch_up();
        if self.stopping() {
            log::warn!("door: unlock ({reason:?}) refused: stopping");
            return Err(DoorError::Stopping);
        }
        self.arm();
        let result = self.inner.unlock(reason, now);
        self.sync(now);
        result
    }

    fn poll(&mut self, now: Duration, events: &mut Vec<DoorEvent>) -> Result<(), DoorError> {
        self.catch_up();
        // The exit button unlocks inside `poll`.
        self.arm();
        let result = self.inner.poll(now, events);
        if self.stopping() && !self.inner.state().locked {
            // A release the exit button started after the stop signal: end it now.
            let _ = self.inner.secure();
        }
        self.sync(now);
        result
    }

    fn secure(&mut self) -> Result<(), DoorError> {
        self.catch_up();
        let result = self.inner.secure();
        self.sync(Duration::ZERO);
        result
    }

    /// The state machine's, but locked (and no relock due) once the guard has secured the
    /// relay, until the next call records it.
    fn state(&self) -> DoorState {
        let state = self.inner.state();
        DoorState { locked: state.locked || self.relocked_by_guard(), ..state }
    }

    fn relock_due(&self) -> Option<Duration> {
        self.inner.relock_due().filter(|_| !self.relocked_by_guard())
    }

    fn config(&self) -> &DoorConfig {
        self.inner.config()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::door::fake::idle_door;

    fn wait_until(limit: Duration, pred: impl Fn() -> bool) -> Option<Duration> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if pred() {
                return Some(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        None
    }

    /// The fake door with a 300 ms pulse behind a guard; its config, the relay's level and the
    /// level that is secure.
    fn guarded_door() -> (RelockGuard, DoorConfig, Arc<AtomicBool>, bool) {
        let config = DoorConfig { pulse: Duration::from_millis(300), ..DoorConfig::default() };
        let (door, emergency, level) = idle_door(&config).unwrap();
        let secure = level.load(Ordering::SeqCst);
        let guarded = RelockGuard::new(Box::new(door), emergency, GUARD_MARGIN).unwrap();
        (guarded, config, level, secure)
    }

    /// A loop whose clock runs at a third of real time (a replay on a machine too slow for
    /// it) polls on and on: a real relay is secured by the guard about `pulse + margin` after
    /// the release in real time; the fake one, following the loop's clock, is not.
    #[test]
    fn a_slow_loop_clock_cannot_stretch_a_release_of_a_real_relay() {
        for follow in [false, true] {
            let (guarded, config, level, secure) = guarded_door();
            let mut guarded = if follow { guarded.following_the_loop_clock() } else { guarded };
            let start = Instant::now();
            let slow = || start.elapsed() / 3;
            guarded.unlock(UnlockReason::Remote, slow()).unwrap();
            let mut events = Vec::new();
            let mut secured_at = None;
            loop {
                if secured_at.is_none() && level.load(Ordering::SeqCst) == secure {
                    secured_at = Some(start.elapsed());
                }
                if guarded.state().locked || start.elapsed() >= config.pulse * 6 {
                    break;
                }
                guarded.poll(slow(), &mut events).unwrap();
                std::thread::sleep(Duration::from_millis(5));
            }
            if follow {
                assert_eq!(guarded.fired(), 0, "the fake relay follows the loop's clock");
                assert!(start.elapsed() >= config.pulse * 3 - Duration::from_millis(20));
            } else {
                let at = secured_at.expect("secured by the guard");
                assert_eq!(guarded.fired(), 1);
                assert!(at < config.pulse + GUARD_MARGIN * 3, "secured after {at:?}");
                assert!(guarded.state().locked);
            }
        }
    }

    #[test]
    fn a_stalled_loop_is_relocked_by_the_guard_and_a_live_one_is_not() {
        let (mut guarded, config, level, secure) = guarded_door();
        // A live loop: it polls and relocks on time; the guard never fires.
        let start = Instant::now();
        guarded.unlock(UnlockReason::Remote, start.elapsed()).unwrap();
        assert_ne!(level.load(Ordering::SeqCst), secure, "energised");
        let mut events = Vec::new();
        while !guarded.state().locked {
            guarded.poll(start.elapsed(), &mut events).unwrap();
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(GUARD_MARGIN * 3);
        assert_eq!(guarded.fired(), 0);
        // A stalled loop: unlocked, then never polled again.
        let start = Instant::now();
        guarded.unlock(UnlockReason::Remote, Duration::from_secs(10)).unwrap();
        assert_ne!(level.load(Ordering::SeqCst), secure, "energised");
        let took = wait_until(Duration::from_secs(5), || level.load(Ordering::SeqCst) == secure)
            .expect("the guard secured the relay");
        let after = start.elapsed();
        assert!(took > config.pulse, "not before the pulse ended ({after:?})");
        assert!(
            after <= config.pulse + Duration::from_millis(200),
            "within pulse + 200 ms: {after:?}"
        );
        assert_eq!(guarded.fired(), 1);
        // The loop comes back: its own relock follows, nothing is left armed.
        guarded.poll(Duration::from_secs(11), &mut events).unwrap();
        assert!(guarded.state().locked);
        assert!(events.contains(&DoorEvent::Locked));
    }

    /// An emergency handle whose first `fails` attempts do not reach the relay.
    struct Flaky {
        inner: Arc<dyn EmergencySecure>,
        fails: std::sync::atomic::AtomicU32,
    }

    impl EmergencySecure for Flaky {
        fn secure_now(&self) -> bool {
            let left = self.fails.load(Ordering::SeqCst);
            if left > 0 {
                self.fails.store(left - 1, Ordering::SeqCst);
                return false;
            }
            self.inner.secure_now()
        }
    }

    #[test]
    fn a_guard_relock_that_fails_is_not_reported_locked_and_is_tried_again() {
        let config = DoorConfig { pulse: Duration::from_millis(300), ..DoorConfig::default() };
        let (door, emergency, level) = idle_door(&config).unwrap();
        let secure = level.load(Ordering::SeqCst);
        let flaky = Arc::new(Flaky { inner: emergency, fails: 2.into() });
        let mut guarded = RelockGuard::new(Box::new(door), flaky, GUARD_MARGIN).unwrap();
        guarded.unlock(UnlockReason::Remote, Duration::from_secs(10)).unwrap();
        // The loop stalls; the guard's first attempt fails: still released, and said so.
        assert!(wait_until(Duration::from_secs(5), || guarded.fired() == 1).is_some());
        assert_ne!(level.load(Ordering::SeqCst), secure);
        assert!(!guarded.state().locked);
        // Tried again after another margin each time, until the relay is secure.
        assert!(wait_until(Duration::from_secs(5), || guarded.fired() == 3).is_some());
        assert!(wait_until(Duration::from_secs(5), || guarded.state().locked).is_some());
        assert_eq!(level.load(Ordering::SeqCst), secure);
    }

    #[test]
    fn the_guards_relock_is_the_doors_state_at_once_and_its_locked_event_at_the_next_poll() {
        let (mut guarded, _, level, secure) = guarded_door();
        let mut events = Vec::new();
        // The loop's own clock: the release runs until 10.3 s on it.
        let at = |ms: u64| Duration::from_millis(10_000 + ms);
        guarded.unlock(UnlockReason::Remote, at(0)).unwrap();
        guarded.poll(at(0), &mut events).unwrap();
        assert_eq!(events, [DoorEvent::Unlocked { reason: UnlockReason::Remote }]);
        // The loop stalls; the guard secures the relay.
        assert!(wait_until(Duration::from_secs(5), || guarded.fired() == 1).is_some());
        assert_eq!(level.load(Ordering::SeqCst), secure);
        // Said at once, before the loop's next call: locked, no relock due.
        assert!(guarded.state().locked);
        assert_eq!(guarded.relock_due(), None);
        // The loop's next poll, its clock still inside the release: `Locked` now, not at 10.3 s.
        events.clear();
        guarded.poll(at(100), &mut events).unwrap();
        assert_eq!(events, [DoorEvent::Locked]);
        assert!(guarded.state().locked && level.load(Ordering::SeqCst) == secure);
        events.clear();
        guarded.poll(at(400), &mut events).unwrap();
        assert!(events.is_empty(), "no second relock at the old end: {events:?}");

        // Fired again, and the loop's next call is a new unlock: the relock is recorded first,
        // then the new release runs a full pulse.
        guarded.unlock(UnlockReason::Remote, at(500)).unwrap();
        assert!(wait_until(Duration::from_secs(5), || guarded.fired() == 2).is_some());
        guarded.unlock(UnlockReason::ExitButton, at(600)).unwrap();
        assert_ne!(level.load(Ordering::SeqCst), secure, "energised again");
        assert!(!guarded.state().locked);
        assert_eq!(guarded.relock_due(), Some(at(900)));
        events.clear();
        guarded.poll(at(600), &mut events).unwrap();
        assert_eq!(
            events,
            [
                DoorEvent::Unlocked { reason: UnlockReason::Remote },
                DoorEvent::Locked,
                DoorEvent::Unlocked { reason: UnlockReason::ExitButton }
            ]
        );
        guarded.poll(at(900), &mut events).unwrap();
        assert!(guarded.state().locked && level.load(Ordering::SeqCst) == secure);
    }

    #[test]
    fn an_exit_button_extension_moves_the_deadline_and_a_stop_refuses_unlocks() {
        use crate::door::fake::{FixedInput, LoggedRelay};
        use crate::door::Door;
        let config = DoorConfig { pulse: Duration::from_millis(300), ..DoorConfig::default() };
        let relay = LoggedRelay::new(false);
        let level = relay.level();
        let emergency = relay.emergency();
        let button = FixedInput::new(true); // active low: released
        let pressed = button.level();
        let door = Door::new(config.clone(), relay, FixedInput::new(false), button, Duration::ZERO)
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let mut guarded = RelockGuard::new(Box::new(door), emergency, GUARD_MARGIN)
            .unwrap()
            .refuse_unlocks_after(Arc::clone(&stop));
        let start = Instant::now();
        let mut events = Vec::new();
        guarded.unlock(UnlockReason::Remote, start.elapsed()).unwrap();
        // The exit button at 150 ms (accepted after the 50 ms debounce): the release now ends
        // at about 500 ms, not 300 ms.
        while start.elapsed() < Duration::from_millis(260) {
            if start.elapsed() >= Duration::from_millis(150) {
                pressed.store(false, Ordering::SeqCst);
            }
            guarded.poll(start.elapsed(), &mut events).unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(events.contains(&DoorEvent::ExitRequested), "{events:?}");
        let due = guarded.relock_due().unwrap();
        assert!(due >= Duration::from_millis(450), "{due:?}");
        // The loop stalls now. Past the first pulse's deadline (300 + 100 ms) the relay is
        // still energised: the guard follows the extension.
        while start.elapsed() < Duration::from_millis(430) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(level.load(Ordering::SeqCst), "released by the guard before the extended end");
        assert_eq!(guarded.fired(), 0);
        assert!(wait_until(Duration::from_secs(3), || !level.load(Ordering::SeqCst)).is_some());
        assert_eq!(guarded.fired(), 1);
        // After the stop signal, no unlock goes through.
        guarded.poll(start.elapsed(), &mut events).unwrap();
        pressed.store(true, Ordering::SeqCst);
        stop.store(true, Ordering::SeqCst);
        let refused = guarded.unlock(UnlockReason::Remote, start.elapsed());
        assert_eq!(refused, Err(DoorError::Stopping));
        assert!(!level.load(Ordering::SeqCst) && guarded.state().locked);
    }
}
