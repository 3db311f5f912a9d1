//! The observer worker: one background thread that owns the plugins which
//! declare observe-only phases. At those phases the hooks hand it a snapshot
//! of the keys the plugin reads and go on (fire-and-forget, on a bounded
//! queue); at the plugin's other phases they wait for its answer through the
//! same queue, so a plugin sees its calls in order. Dropping the worker
//! drops what is still queued and joins the thread: none is leaked.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::PluginStats;
use super::slot::{Called, Slot};
use crate::Error;
use crate::bindings::types::Entry;
use crate::error::CallError;

/// Observations that may wait at once.
pub(super) const QUEUE: usize = 1024;

pub(super) enum Job {
    Observe {
        slot: usize,
        phase: String,
        entries: Vec<Entry>,
    },
    Call {
        slot: usize,
        phase: String,
        entries: Vec<Entry>,
        reply: mpsc::Sender<Result<Called, CallError>>,
    },
    SaveState {
        slot: usize,
        reply: mpsc::Sender<Result<Option<Value>, Error>>,
    },
    LoadState {
        slot: usize,
        state: Value,
        reply: mpsc::Sender<Result<(), Error>>,
    },
    Flush {
        reply: mpsc::Sender<()>,
    },
}

pub(super) struct Observer {
    tx: Option<SyncSender<Job>>,
    thread: Option<JoinHandle<()>>,
    cancel: Arc<AtomicBool>,
    pub(super) dropped: Vec<u64>,
    pending: Arc<AtomicU64>,
    /// Each slot's stats as of its last call, published by the worker so
    /// reading them never waits behind the queue.
    stats: Arc<Mutex<Vec<PluginStats>>>,
}

impl Observer {
    pub(super) fn start(job: Arc<str>, slots: Vec<Slot>) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let cancel = Arc::new(AtomicBool::new(false));
        let pending = Arc::new(AtomicU64::new(0));
        let dropped = vec![0; slots.len()];
        let stats = Arc::new(Mutex::new(slots.iter().map(|s| s.stats.clone()).collect()));
        let thread = std::thread::Builder::new()
            .name("wasmhooks-observer".into())
            .spawn({
                let (cancel, pending, stats) = (cancel.clone(), pending.clone(), stats.clone());
                move || work(&job, slots, &rx, &cancel, &pending, &stats)
            })?;
        Ok(Observer {
            tx: Some(tx),
            thread: Some(thread),
            cancel,
            dropped,
            pending,
            stats,
        })
    }

    fn send(&self, job: Job) {
        if let Some(tx) = &self.tx {
            // The worker lives as long as the sender; a failed send means it
            // died, and the reply channel will say so.
            let _ = tx.send(job);
        }
    }

    /// Queues an observation; if the queue is full, drops it and counts.
    pub(super) fn observe(&mut self, slot: usize, phase: &str, entries: Vec<Entry>) {
        let Some(tx) = &self.tx else { return };
        let job = Job::Observe {
            slot,
            phase: phase.to_owned(),
            entries,
        };
        self.pending.fetch_add(1, Ordering::SeqCst);
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = tx.try_send(job) {
            self.pending.fetch_sub(1, Ordering::SeqCst);
            self.dropped[slot] += 1;
            tracing::warn!(phase, "observer queue full; observation dropped");
        }
    }

    /// A call whose result is needed now, in order after what is queued.
    pub(super) fn call(
        &self,
        slot: usize,
        phase: &str,
        entries: Vec<Entry>,
    ) -> Option<Result<Called, CallError>> {
        let (reply, answer) = mpsc::channel();
        self.send(Job::Call {
            slot,
            phase: phase.to_owned(),
            entries,
            reply,
        });
        answer.recv().ok()
    }

    pub(super) fn stats(&self) -> Vec<PluginStats> {
        self.stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(super) fn save_state(&self, slot: usize) -> Result<Option<Value>, Error> {
        let (reply, answer) = mpsc::channel();
        self.send(Job::SaveState { slot, reply });
        answer.recv().unwrap_or(Ok(None))
    }

    pub(super) fn load_state(&self, slot: usize, state: &Value) -> Result<(), Error> {
        let (reply, answer) = mpsc::channel();
        let state = state.clone();
        self.send(Job::LoadState { slot, state, reply });
        answer.recv().unwrap_or(Ok(()))
    }

    /// Waits up to `bound` for the queued observations; returns how many
    /// were still pending when it stopped waiting.
    pub(super) fn flush(&self, bound: Duration) -> u64 {
        let deadline = Instant::now() + bound;
        let (reply, answer) = mpsc::channel();
        let Some(tx) = &self.tx else { return 0 };
        let mut job = Job::Flush { reply };
        loop {
            match tx.try_send(job) {
                Ok(()) => break,
                Err(TrySendError::Full(back)) if Instant::now() < deadline => {
                    job = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(_) => return self.pending.load(Ordering::SeqCst),
            }
        }
        match answer.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(()) => 0,
            Err(_) => self.pending.load(Ordering::SeqCst),
        }
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::SeqCst);
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn work(
    job: &str,
    mut slots: Vec<Slot>,
    rx: &Receiver<Job>,
    cancel: &AtomicBool,
    pending: &AtomicU64,
    stats: &Mutex<Vec<PluginStats>>,
) {
    let publish = |i: usize, slots: &[Slot]| {
        stats.lock().unwrap_or_else(PoisonError::into_inner)[i] = slots[i].stats.clone();
    };
    for message in rx {
        match message {
            Job::Observe {
                slot,
                phase,
                entries,
            } => {
                pending.fetch_sub(1, Ordering::SeqCst);
                if cancel.load(Ordering::SeqCst) {
                    continue;
                }
                // Fire-and-forget: a failure is logged and counted by the
                // slot; it cannot stop a job that has moved on.
                let _ = slots[slot].call(job, &phase, &entries, true);
                publish(slot, &slots);
            }
            Job::Call {
                slot,
                phase,
                entries,
                reply,
            } => {
                let result = slots[slot].call(job, &phase, &entries, false);
                publish(slot, &slots);
                let _ = reply.send(result);
            }
            Job::SaveState { slot, reply } => {
                let result = slots[slot].save_state(job);
                publish(slot, &slots);
                let _ = reply.send(result);
            }
            Job::LoadState { slot, state, reply } => {
                let result = slots[slot].load_state(job, &state);
                publish(slot, &slots);
                let _ = reply.send(result);
            }
            Job::Flush { reply } => {
                let _ = reply.send(());
            }
        }
    }
}
