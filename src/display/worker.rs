//! A display surface on its own thread, fed through a one-slot mailbox.
//!
//! For panels whose `present` is slow (an SPI panel streams 150 KB per frame: 20-40 ms at
//! 32-62.5 MHz). The loop's [`Sink::show`] only locks a mutex for the time it takes to copy a
//! [`Screen`] value into the slot, overwriting any screen the thread has not drawn yet, and
//! wakes the thread: the newest screen wins, the loop never waits for the panel, and nothing is
//! queued or allocated. The thread renders into its own canvas and presents it. Its errors are
//! handed back on the loop's next `show`.
//!
//! This module must not: block the caller on the surface, or queue more than one screen.

use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use super::{DisplayError, Screen, Sink, Surface};

#[derive(Default)]
struct Slot {
    next: Option<Screen>,
    stop: bool,
    error: Option<DisplayError>,
    presented: u64,
}

struct Shared {
    slot: Mutex<Slot>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Slot> {
        // A panic on the display thread must not take the loop down: the slot stays usable.
        self.slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A surface running on its own thread. See the module documentation.
pub struct Worker {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").field("presented", &self.presented()).finish_non_exhaustive()
    }
}

impl Worker {
    /// Starts a thread named `display` that builds its surface with `open` (so the surface
    /// need not be `Send`, and its buffers live on that thread) and then draws every screen
    /// posted. Returns once `open` has finished, with its error if it failed.
    pub fn spawn<S, F>(open: F) -> Result<Self, DisplayError>
    where
        S: Surface,
        F: FnOnce() -> Result<S, DisplayError> + Send + 'static,
    {
        let shared = Arc::new(Shared { slot: Mutex::new(Slot::default()), wake: Condvar::new() });
        let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<(), DisplayError>>(1);
        let theirs = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("display".into())
            .spawn(move || {
                let surface = match open() {
                    Ok(s) => {
                        let _ = ready_tx.send(Ok(()));
                        s
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                run(surface, &theirs);
            })
            .map_err(|e| DisplayError::Stopped(format!("cannot start display thread: {e}")))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Self { shared, thread: Some(thread) }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(DisplayError::Stopped("display thread died while opening".into()))
            }
        }
    }

    /// How many screens the thread has presented (successfully or not).
    pub fn presented(&self) -> u64 {
        self.shared.lock().presented
    }

    /// Waits until the thread has no screen pending (tests and orderly shutdown only; never
    /// call this from the frame loop).
    pub fn flush(&self) {
        let mut slot = self.shared.lock();
        while slot.next.is_some() && !slot.stop {
            slot = self.shared.wake.wait(slot).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }
}

fn run<S: Surface>(mut surface: S, shared: &Shared) {
    loop {
        let screen = {
            let mut slot = shared.lock();
            loop {
                if slot.stop {
                    return;
                }
                if let Some(s) = slot.next {
                    break s;
                }
                slot = shared.wake.wait(slot).unwrap_or_else(std::sync::PoisonError::into_inner);
            }
        };
        let result = surface.show(&screen);
        let mut slot = shared.lock();
        // Only clear the slot if no newer screen arrived meanwhile.
        if slot.next == Some(screen) {
            slot.next = None;
        }
        slot.presented += 1;
        if let Err(e) = result {
            slot.error = Some(e);
        }
        shared.wake.notify_all();
    }
}

impl Sink for Worker {
    fn show(&mut self, screen: &Screen) -> Result<(), DisplayError> {
        let mut slot = self.shared.lock();
        if slot.stop {
            return Err(DisplayError::Stopped("display thread was stopped".into()));
        }
        slot.next = Some(*screen);
        let error = slot.error.take();
        drop(slot);
        self.shared.wake.notify_all();
        if self.thread.as_ref().is_some_and(JoinHandle::is_finished) {
            return Err(DisplayError::Stopped("display thread exited".into()));
        }
        error.map_or(Ok(()), Err)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
