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
    /// A chunk: its `data`, a JSON document, and the event's other fields
    /// (`event`, `id`, `retry` lines, each ended by `\n`).
    Data { fields: Vec<u8>, data: Vec<u8> },
    /// `data: [DONE]`, the end.
    Done,
    /// Anything else (a comment, a keep-alive): passed on as it came.
    Other(Vec<u8>),
}

/// The part of a stream not yet cut into events. Lines may end in `\n`,
/// `\r\n` or a lone `\r` (as the format allows); each is kept as `\n`, so
/// no ending hides an event from the host and passes it on unread.
#[derive(Debug, Default)]
pub(super) struct Events {
    pending: Vec<u8>,
    /// The last byte taken was a `\r`: a `\n` right after it is the same
    /// line end, whichever piece it comes in.
    after_cr: bool,
}

/// An event past [`MAX_EVENT`].
#[derive(Debug, PartialEq, Eq)]
pub(super) struct TooLong;

impl Events {
    /// The whole events `bytes` completes, in order; the rest is kept.
    pub(super) fn push(&mut self, bytes: &[u8]) -> Result<Vec<Event>, TooLong> {
        // What was kept was scanned before: a boundary (two bytes) can
        // only end in the new bytes, so scanning resumes just before them,
        // and pieces of one byte cost no rescans.
        let mut scan = self.pending.len().saturating_sub(1);
        for &b in bytes {
            let after_cr = std::mem::replace(&mut self.after_cr, b == b'\r');
            match b {
                b'\n' if after_cr => {}
                b'\r' => self.pending.push(b'\n'),
                _ => self.pending.push(b),
            }
        }
        let mut events = Vec::new();
        let mut start = 0;
        while let Some(end) = boundary(&self.pending[scan..]) {
            events.push(parse(&self.pending[start..scan + end]));
            start = scan + end + 2;
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

/// Where the first event of `bytes` (line ends made `\n`) ends: a blank
/// line.
fn boundary(bytes: &[u8]) -> Option<usize> {
    bytes.windows(2).position(|w| w == b"\n\n")
}

/// One event's lines. An event with `data:` lines is a chunk, its data
/// joined; its `event`, `id` and `retry` fields are kept with it, and
/// anything else in it (comments, fields no client reads) is dropped, so
/// what the client gets of it is what the host read. An event without data
/// (a comment, a keep-alive) is passed on as it came.
fn parse(event: &[u8]) -> Event {
    let mut data: Option<Vec<u8>> = None;
    let mut fields = Vec::new();
    for line in event.split(|&b| b == b'\n') {
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(at) => {
                let value = &line[at + 1..];
                (&line[..at], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match name {
            b"data" => match &mut data {
                Some(d) => {
                    d.push(b'\n');
                    d.extend_from_slice(value);
                }
                None => data = Some(value.to_vec()),
            },
            b"event" | b"id" | b"retry" => {
                fields.extend_from_slice(line);
                fields.push(b'\n');
            }
            _ => {}
        }
    }
    match data {
        Some(d) if d == b"[DONE]" => Event::Done,
        Some(data) => Event::Data { fields, data },
        None => Event::Other(event.to_vec()),
    }
}

/// Writes one event.
pub(super) fn write(event: &Event, out: &mut Vec<u8>) {
    match event {
        Event::Data { fields, data } => {
            out.extend_from_slice(fields);
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

    fn data(d: &[u8]) -> Event {
        Event::Data {
            fields: Vec::new(),
            data: d.to_vec(),
        }
    }

    #[test]
    fn every_line_ending_and_field_is_read_whatever_the_pieces() {
        let stream =
            b"data: {\"a\":1}\r\rid: 7\r\n: note\revent: m\ndata: {\"b\":2}\r\n\r\ndata:[DONE]\r\r";
        for size in 1..stream.len() {
            let mut events = Events::default();
            let mut got = Vec::new();
            for piece in stream.chunks(size) {
                got.extend(events.push(piece).unwrap());
            }
            let second = Event::Data {
                fields: b"id: 7\nevent: m\n".to_vec(),
                data: b"{\"b\":2}".to_vec(),
            };
            assert_eq!(
                got,
                [data(b"{\"a\":1}"), second, Event::Done],
                "pieces of {size}"
            );
            assert_eq!(events.finish(), None);
        }
    }

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
                    data(b"{\"a\":1}"),
                    data(b"{\"b\":2}"),
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
        assert_eq!(events.finish(), Some(data(b"{}")));
    }
}
