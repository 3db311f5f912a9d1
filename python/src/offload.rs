//! Host work off the event loop, handed back to it without the GIL.
//!
//! A request path's plugin calls must not run on the server's event loop,
//! yet a thread hop through Python's executor costs the request more than
//! the plugins do: the worker must take the GIL to run and to hand back its
//! result, and on a busy loop it waits for it (up to the interpreter's
//! switch interval, 5 ms). Here the loop thread converts a call's Python
//! values and queues the call; Rust threads run it with no GIL at all; each
//! result goes into a queue, and an eventfd the loop watches
//! (`loop.add_reader`) wakes it to take the results, on its own thread, with
//! the GIL it already holds.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, PoisonError};

use rustix::event::{EventfdFlags, eventfd};

/// A call to run off the loop; its result, made without the GIL.
pub(crate) type Job<T> = Box<dyn FnOnce() -> T + Send>;

/// A job with its ticket, as the workers take it.
type Ticketed<T> = (u64, Job<T>);

/// Worker threads and the completions they leave for the loop.
pub(crate) struct Offload<T: Send + 'static> {
    jobs: Mutex<Option<Sender<Ticketed<T>>>>,
    shared: Arc<Shared<T>>,
    next: AtomicU64,
}

struct Shared<T> {
    done: Mutex<VecDeque<(u64, T)>>,
    /// Readable while `done` holds results.
    wake: OwnedFd,
}

impl<T: Send + 'static> Offload<T> {
    /// `threads` workers, named `name`.
    pub(crate) fn start(threads: usize, name: &str) -> std::io::Result<Self> {
        let wake = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        let shared = Arc::new(Shared {
            done: Mutex::new(VecDeque::new()),
            wake,
        });
        let (tx, rx) = channel::<Ticketed<T>>();
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..threads.max(1) {
            let (rx, shared) = (rx.clone(), shared.clone());
            std::thread::Builder::new()
                .name(name.to_owned())
                .spawn(move || work(&rx, &shared))?;
        }
        Ok(Offload {
            jobs: Mutex::new(Some(tx)),
            shared,
            next: AtomicU64::new(1),
        })
    }

    /// Queues `job`; its ticket comes back with its result from
    /// [`Offload::completed`]. `None` once stopped.
    pub(crate) fn submit(&self, job: Job<T>) -> Option<u64> {
        let ticket = self.next.fetch_add(1, Ordering::Relaxed);
        let jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        jobs.as_ref()?.send((ticket, job)).ok()?;
        Some(ticket)
    }

    /// The results ready, oldest first; clears the wake-up.
    pub(crate) fn completed(&self) -> Vec<(u64, T)> {
        let mut counter = [0u8; 8];
        // Nonblocking: nothing to read (EAGAIN) is no error here.
        let _ = rustix::io::read(&self.shared.wake, &mut counter);
        let mut done = self
            .shared
            .done
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        done.drain(..).collect()
    }

    /// The descriptor the loop watches.
    pub(crate) fn fileno(&self) -> i32 {
        self.shared.wake.as_raw_fd()
    }

    /// Stops the workers once the queued jobs have run.
    pub(crate) fn stop(&self) {
        self.jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }
}

impl<T: Send + 'static> Drop for Offload<T> {
    fn drop(&mut self) {
        self.stop();
    }
}

fn work<T>(jobs: &Mutex<Receiver<Ticketed<T>>>, shared: &Shared<T>) {
    loop {
        let next = jobs.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok((ticket, job)) = next else {
            return;
        };
        let result = job();
        shared
            .done
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back((ticket, result));
        // An eventfd's counter only grows: a write cannot block short of
        // 2^64 - 1 wake-ups nobody read.
        let _ = rustix::io::write(&shared.wake, &1u64.to_ne_bytes());
    }
}
