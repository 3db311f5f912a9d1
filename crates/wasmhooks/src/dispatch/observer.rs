//! The observer worker: one background thread that owns the plugins which
//! declare observe-only phases. At those phases the hooks hand it a snapshot
//! of the keys the plugin reads and go on (fire-and-forget, on a bounded
//! queue); at the plugin's other phases they wait for its answer through the
//! same queue, so a plugin sees its calls in order. Dropping the worker
//! drops what is still queued and joins the thread: none is leaked.
//!
//! The queue is bounded twice: by count and by the bytes of the snapshots
//! waiting in it. A flush that runs out of time discards what is still
//! queued (counted as dropped), so nothing that waits behind the queue
//! afterwards (the plugin's `on_train_end`, its state for the final
//! checkpoint) waits for a backlog: at most for the one call under way.
//!
//! The worker runs what it takes off the queue in batches, resting a
//! little ([`LINGER`]) between them, so a plugin that observes every batch
//! of a pipeline runs back to back, caches warm, rather than cold once a
//! batch, and firing an observation wakes nobody. The batch counts against
//! the bound.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::PluginStats;
use super::slot::{Failed, Slot, Succeeded};
use crate::Error;
use crate::bindings::Input;
use crate::error::CallError;

/// Observations that may wait at once in the queue.
pub(super) const QUEUE: usize = 1024;

/// The most messages the worker takes off the queue to run back to back.
pub(super) const BATCH: usize = 32;

/// How long the worker rests after running what it took, while more may
/// come. Observations fired meanwhile queue without waking it (no system
/// call for the hooks' thread) and then run back to back: a plugin called
/// cold (its code and memory pushed out of the caches by a busy job between
/// two observations) costs several times one called right after itself, 49
/// against 11 µs a line for the pipeline logger on daft. A call to wait
/// for, a flush or the end wakes it early, and so do [`BATCH`] waiting
/// observations; observations are fire-and-forget, so only when they run
/// moves, by at most this. Each wake's first call runs cold: on the daft
/// bench (a line every 2 ms or so), resting 10 ms woke it ~36 times a run
/// and cost 5 ms of its CPU a run; 50 ms, 3.4 ms.
const LINGER: Duration = Duration::from_millis(50);

/// What the hooks send the worker.
pub(super) enum Message {
    Observe {
        slot: usize,
        phase: String,
        input: Input,
        /// Its place in the queue, for discarding after a flush timed out.
        seq: u64,
        bytes: usize,
    },
    Call {
        slot: usize,
        phase: String,
        input: Input,
        reply: mpsc::Sender<Result<Succeeded, Failed>>,
    },
    /// A failure found after a call returned (its updates would overfill
    /// the data map): the slot applies the policy to it.
    Failed {
        slot: usize,
        error: CallError,
        reply: mpsc::Sender<Failed>,
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
    tx: Option<SyncSender<Message>>,
    thread: Option<JoinHandle<()>>,
    cancel: Arc<AtomicBool>,
    /// Per slot: observations dropped (queue full, or discarded by a flush
    /// that ran out of time).
    dropped: Arc<Vec<AtomicU64>>,
    pending: Arc<AtomicU64>,
    /// Bytes of the snapshots queued, and the most allowed.
    queued_bytes: Arc<AtomicU64>,
    max_bytes: u64,
    /// The next observation's number, and the first number still run:
    /// observations below it are discarded.
    next_seq: u64,
    keep_from: Arc<AtomicU64>,
    /// Each slot's stats as of its last call, published by the worker so
    /// reading them never waits behind the queue.
    stats: Arc<Mutex<Vec<PluginStats>>>,
}

impl Observer {
    pub(super) fn start(
        job: Arc<str>,
        slots: Vec<Slot>,
        max_bytes: usize,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let shared = WorkerState {
            cancel: Arc::new(AtomicBool::new(false)),
            pending: Arc::new(AtomicU64::new(0)),
            queued_bytes: Arc::new(AtomicU64::new(0)),
            keep_from: Arc::new(AtomicU64::new(0)),
            dropped: Arc::new((0..slots.len()).map(|_| AtomicU64::new(0)).collect()),
            stats: Arc::new(Mutex::new(slots.iter().map(|s| s.stats.clone()).collect())),
        };
        let thread = std::thread::Builder::new()
            .name("wasmhooks-observer".into())
            .spawn({
                let shared = shared.clone();
                move || work(&job, slots, &rx, &shared)
            })?;
        Ok(Observer {
            tx: Some(tx),
            thread: Some(thread),
            cancel: shared.cancel,
            dropped: shared.dropped,
            pending: shared.pending,
            queued_bytes: shared.queued_bytes,
            max_bytes: max_bytes as u64,
            next_seq: 0,
            keep_from: shared.keep_from,
            stats: shared.stats,
        })
    }

    /// Observations dropped for `slot` so far.
    pub(super) fn dropped(&self, slot: usize) -> u64 {
        self.dropped[slot].load(Ordering::SeqCst)
    }

    /// Queues a message the hooks wait on, and wakes the worker if it rests.
    fn send(&self, message: Message) {
        if let Some(tx) = &self.tx {
            // The worker lives as long as the sender; a failed send means it
            // died, and the reply channel will say so.
            let _ = tx.send(message);
            self.wake();
        }
    }

    fn wake(&self) {
        if let Some(thread) = &self.thread {
            thread.thread().unpark();
        }
    }

    /// Queues an observation; if the queue is full (by count or bytes),
    /// drops it and counts.
    pub(super) fn observe(&mut self, slot: usize, phase: &str, input: Input) {
        let Some(tx) = &self.tx else { return };
        let bytes = input.bytes();
        let queued = self.queued_bytes.load(Ordering::SeqCst);
        if queued.saturating_add(bytes as u64) > self.max_bytes {
            self.dropped[slot].fetch_add(1, Ordering::SeqCst);
            tracing::warn!(
                phase,
                queued,
                "observer queue full (bytes); observation dropped"
            );
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let message = Message::Observe {
            slot,
            phase: phase.to_owned(),
            input,
            seq,
            bytes,
        };
        let waiting = self.pending.fetch_add(1, Ordering::SeqCst);
        self.queued_bytes.fetch_add(bytes as u64, Ordering::SeqCst);
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = tx.try_send(message) {
            self.pending.fetch_sub(1, Ordering::SeqCst);
            self.queued_bytes.fetch_sub(bytes as u64, Ordering::SeqCst);
            self.dropped[slot].fetch_add(1, Ordering::SeqCst);
            tracing::warn!(phase, "observer queue full; observation dropped");
        } else if waiting >= BATCH as u64 {
            // A batch is waiting: a resting worker need not rest on while a
            // burst fills the queue.
            self.wake();
        }
    }

    /// A call whose result is needed now, in order after what is queued.
    pub(super) fn call(
        &self,
        slot: usize,
        phase: &str,
        input: Input,
    ) -> Option<Result<Succeeded, Failed>> {
        let (reply, answer) = mpsc::channel();
        self.send(Message::Call {
            slot,
            phase: phase.to_owned(),
            input,
            reply,
        });
        answer.recv().ok()
    }

    /// Has the slot apply the error policy to a failure found after its
    /// call returned; `None` if the worker is gone.
    pub(super) fn failed(&self, slot: usize, error: CallError) -> Option<Failed> {
        let (reply, answer) = mpsc::channel();
        self.send(Message::Failed { slot, error, reply });
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
        self.send(Message::SaveState { slot, reply });
        answer.recv().unwrap_or(Ok(None))
    }

    pub(super) fn load_state(&self, slot: usize, state: &Value) -> Result<(), Error> {
        let (reply, answer) = mpsc::channel();
        let state = state.clone();
        self.send(Message::LoadState { slot, state, reply });
        answer.recv().unwrap_or(Ok(()))
    }

    /// Waits up to `bound` for the queued observations; returns how many
    /// were still pending when it stopped waiting. Those are discarded (and
    /// counted as dropped), so what comes next waits for no backlog.
    pub(super) fn flush(&self, bound: Duration) -> u64 {
        let deadline = Instant::now().checked_add(bound);
        let (reply, answer) = mpsc::channel();
        let Some(tx) = &self.tx else { return 0 };
        let mut message = Message::Flush { reply };
        let waited = loop {
            match tx.try_send(message) {
                Ok(()) => {
                    self.wake();
                    let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                    break match left {
                        Some(left) => answer.recv_timeout(left).is_ok(),
                        None => answer.recv().is_ok(),
                    };
                }
                Err(TrySendError::Full(back)) if deadline.is_none_or(|d| Instant::now() < d) => {
                    message = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(_) => break false,
            }
        };
        if waited {
            return 0;
        }
        let left = self.pending.load(Ordering::SeqCst);
        self.keep_from.store(self.next_seq, Ordering::SeqCst);
        left
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::SeqCst);
        drop(self.tx.take());
        self.wake();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What the hooks' side and the worker share.
#[derive(Clone)]
struct WorkerState {
    cancel: Arc<AtomicBool>,
    pending: Arc<AtomicU64>,
    queued_bytes: Arc<AtomicU64>,
    keep_from: Arc<AtomicU64>,
    dropped: Arc<Vec<AtomicU64>>,
    stats: Arc<Mutex<Vec<PluginStats>>>,
}

fn work(job: &str, mut slots: Vec<Slot>, rx: &Receiver<Message>, shared: &WorkerState) {
    let mut batch = Vec::with_capacity(BATCH);
    // Idle, it waits on the queue, and the first message wakes it.
    while let Ok(first) = rx.recv() {
        batch.push(first);
        loop {
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(message) => batch.push(message),
                    Err(_) => break,
                }
            }
            // A full batch may have left a backlog (a burst, or a flush
            // queued behind one): it runs on without resting, else a flush
            // waited one rest per batch queued before it.
            let backlog = batch.len() == BATCH;
            for message in batch.drain(..) {
                handle(job, &mut slots, message, shared);
            }
            // Busy, it rests: what is fired meanwhile queues without waking
            // it, and runs together. A call, a flush or the end wakes it.
            if !backlog {
                std::thread::park_timeout(LINGER);
            }
            match rx.try_recv() {
                Ok(message) => batch.push(message),
                Err(_) => break,
            }
        }
    }
}

/// Runs one message on the worker's slots.
fn handle(job: &str, slots: &mut [Slot], message: Message, shared: &WorkerState) {
    let publish = |i: usize, slots: &[Slot]| {
        shared.stats.lock().unwrap_or_else(PoisonError::into_inner)[i] = slots[i].stats.clone();
    };
    match message {
        Message::Observe {
            slot,
            phase,
            input,
            seq,
            bytes,
        } => {
            shared.pending.fetch_sub(1, Ordering::SeqCst);
            shared
                .queued_bytes
                .fetch_sub(bytes as u64, Ordering::SeqCst);
            if shared.cancel.load(Ordering::SeqCst) {
                return;
            }
            if seq < shared.keep_from.load(Ordering::SeqCst) {
                shared.dropped[slot].fetch_add(1, Ordering::SeqCst);
                return;
            }
            // Fire-and-forget: a failure is logged and counted by the
            // slot; it cannot stop a job that has moved on.
            let _ = slots[slot].call(job, &phase, &input, true);
            publish(slot, slots);
        }
        Message::Call {
            slot,
            phase,
            input,
            reply,
        } => {
            let result = slots[slot].call(job, &phase, &input, false);
            publish(slot, slots);
            let _ = reply.send(result);
        }
        Message::Failed { slot, error, reply } => {
            let failed = slots[slot].failed(error, false);
            publish(slot, slots);
            let _ = reply.send(failed);
        }
        Message::SaveState { slot, reply } => {
            let result = slots[slot].save_state(job);
            publish(slot, slots);
            let _ = reply.send(result);
        }
        Message::LoadState { slot, state, reply } => {
            let result = slots[slot].load_state(job, &state);
            publish(slot, slots);
            let _ = reply.send(result);
        }
        Message::Flush { reply } => {
            let _ = reply.send(());
        }
    }
}
