//! A plugin's stdout and stderr. Whole lines go to the host's log, tagged
//! with the plugin; the tail of what a call printed is kept, so a crash is
//! reported with its last words (a Rust panic message, a Python traceback).
//! Writes never block and never fail: a chatty plugin costs log lines, not
//! the job.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Longest line logged, in bytes.
const MAX_LINE: usize = 4096;
/// Bytes of a call's output kept for its error message.
const TAIL: usize = 2048;
/// What `check-write` offers the guest at once.
const WRITE_BUDGET: usize = 64 * 1024;

#[derive(Clone)]
pub(crate) struct Output {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    plugin: Arc<str>,
    stream: &'static str,
    line: Vec<u8>,
    tail: Vec<u8>,
}

impl Output {
    pub(crate) fn new(plugin: Arc<str>, stream: &'static str) -> Self {
        Output {
            inner: Arc::new(Mutex::new(Inner {
                plugin,
                stream,
                line: Vec::new(),
                tail: Vec::new(),
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn begin_call(&self) {
        self.lock().tail.clear();
    }

    /// What the current call printed last, trimmed; `None` if nothing.
    pub(crate) fn call_tail(&self) -> Option<String> {
        let inner = self.lock();
        let text = String::from_utf8_lossy(&inner.tail);
        let text = text.trim();
        // The tail is bounded already; escaping may lengthen it, never cut it.
        (!text.is_empty()).then(|| crate::text::clean(text, TAIL * 10))
    }

    fn write(&self, bytes: &[u8]) {
        let mut inner = self.lock();
        inner.tail.extend_from_slice(bytes);
        if inner.tail.len() > TAIL {
            let cut = inner.tail.len() - TAIL;
            inner.tail.drain(..cut);
        }
        for &b in bytes {
            if b == b'\n' {
                inner.emit();
            } else if inner.line.len() < MAX_LINE {
                inner.line.push(b);
            }
        }
    }
}

impl Inner {
    fn emit(&mut self) {
        let line = crate::text::clean(&String::from_utf8_lossy(&self.line), MAX_LINE);
        tracing::info!(target: "wasmhooks::plugin", plugin = %self.plugin, stream = self.stream, "{line}");
        self.line.clear();
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if !self.line.is_empty() {
            self.emit();
        }
    }
}

impl IsTerminal for Output {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Output {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Output {
    async fn ready(&mut self) {}
}

impl OutputStream for Output {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        Output::write(self, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_BUDGET)
    }
}

impl tokio::io::AsyncWrite for Output {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Output::write(&self, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_tail_of_the_current_call() {
        let out = Output::new(Arc::from("p"), "stderr");
        out.write(b"old\n");
        out.begin_call();
        assert_eq!(out.call_tail(), None);
        out.write(&vec![b'x'; TAIL]);
        out.write(b"\npanicked at src/lib.rs:3:5:\nboom\n");
        let tail = out.call_tail().unwrap();
        // Its newlines are escaped, so it reads as one line in a log.
        assert!(
            tail.ends_with("panicked at src/lib.rs:3:5:\\nboom"),
            "{tail}"
        );
        assert!(!tail.contains('\n'));
        assert!(tail.len() <= TAIL + 64, "{}", tail.len());
    }
}
