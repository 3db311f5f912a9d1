//! Server-sent events as an OpenAI stream sends them: bytes in whatever
//! pieces the transport gives, cut into whole events, each event's `data`
//! handed on, and events written back. Bounded: one event may not grow past
//! [`MAX_EVENT`] bytes however the pieces come.

/// Bytes of one event, at most: a chunk of a few tokens is well under a
/// KiB; past this the stream is not one a server sent.
pub const MAX_EVENT: usize = 1 << 20;

/// One event of a stream.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Event {
    /// A chunk: its `data`, a JSON document.
    Data(Vec<u8>),
    /// `data: [DONE]`, the end.
    Done,
    /// Anything else (a comment, a keep-alive): passed on as it came.
    Other(Vec<u8>),
}

/// The part of a stream not yet cut into events.
#[derive(Debug, Default)]
pub(super) struct Events {
    pending: Vec<u8>,
}

/// An event past [`MAX_EVENT`].
#[derive(Debug, PartialEq, Eq)]
pub(super) struct TooLong;

impl Events {
    /// The whole events `bytes` completes, in order; the rest is kept.
    pub(super) fn push(&mut self, bytes: &[u8]) -> Result<Vec<Event>, TooLong> {
        // What was kept was scanned before: a boundary (three bytes at
        // most) can only end in the new bytes, so scanning resumes just
        // before them, and pieces of one byte cost no rescans.
        let mut scan = self.pending.len().saturating_sub(2);
        self.pending.extend_from_slice(bytes);
        let mut events = Vec::new();
        let mut start = 0;
        while let Some((end, next)) = boundary(&self.pending[scan..]) {
            events.push(parse(&self.pending[start..scan + end]));
            start = scan + next;
            scan = start;
        }
        self.pending.drain(..start);
        if self.pending.len() > MAX_EVENT {
            self.pending = Vec::new();
            return Err(TooLong);
        }
        Ok(events)
    }

    /// What is left at the stream's end: an event the server did not end
    /// with a blank line, if any.
    pub(super) fn finish(&mut self) -> Option<Event> {
        let rest = std::mem::take(&mut self.pending);
        let trimmed = rest.trim_ascii();
        (!trimmed.is_empty()).then(|| parse(trimmed))
    }
}

/// Where the first event of `bytes` ends, and where the next begins.
fn boundary(bytes: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\n' {
            match bytes.get(i + 1) {
                Some(b'\n') => return Some((i, i + 2)),
                Some(b'\r') if bytes.get(i + 2) == Some(&b'\n') => return Some((i, i + 3)),
                _ => {}
            }
        }
        i += 1;
    }
    None
}

/// One event's lines: its `data:` lines joined, or the event as it came.
fn parse(event: &[u8]) -> Event {
    let mut data: Option<Vec<u8>> = None;
    for line in event.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(value) = line.strip_prefix(b"data:") {
            let value = value.strip_prefix(b" ").unwrap_or(value);
            match &mut data {
                Some(d) => {
                    d.push(b'\n');
                    d.extend_from_slice(value);
                }
                None => data = Some(value.to_vec()),
            }
        } else if !line.is_empty() {
            return Event::Other(event.to_vec());
        }
    }
    match data {
        Some(d) if d == b"[DONE]" => Event::Done,
        Some(d) => Event::Data(d),
        None => Event::Other(event.to_vec()),
    }
}

/// Writes one event.
pub(super) fn write(event: &Event, out: &mut Vec<u8>) {
    match event {
        Event::Data(data) => {
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(data);
            out.extend_from_slice(b"\n\n");
        }
        Event::Done => out.extend_from_slice(b"data: [DONE]\n\n"),
        Event::Other(raw) => {
            out.extend_from_slice(raw);
            out.extend_from_slice(b"\n\n");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_cut_whatever_the_pieces() {
        let stream = b"data: {\"a\":1}\n\ndata: {\"b\":2}\r\n\r\n: ping\n\ndata: [DONE]\n\n";
        for size in 1..stream.len() {
            let mut events = Events::default();
            let mut got = Vec::new();
            for piece in stream.chunks(size) {
                got.extend(events.push(piece).unwrap());
            }
            assert_eq!(
                got,
                [
                    Event::Data(b"{\"a\":1}".to_vec()),
                    Event::Data(b"{\"b\":2}".to_vec()),
                    Event::Other(b": ping".to_vec()),
                    Event::Done,
                ],
                "pieces of {size}"
            );
            assert_eq!(events.finish(), None);
        }
    }

    #[test]
    fn an_endless_event_is_refused_and_a_last_one_without_a_blank_line_kept() {
        let mut events = Events::default();
        let big = vec![b'x'; MAX_EVENT / 2 + 1];
        assert!(events.push(b"data: ").is_ok());
        assert!(events.push(&big).is_ok());
        assert_eq!(events.push(&big), Err(TooLong));
        let mut events = Events::default();
        assert!(events.push(b"data: {}").unwrap().is_empty());
        assert_eq!(events.finish(), Some(Event::Data(b"{}".to_vec())));
    }
}
