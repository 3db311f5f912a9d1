//! A streamed answer through `on_response_chunk`: the engine's events cut
//! and read, each choice's text handed to the plugins chunk by chunk, and
//! what they leave written back; a stop or a failure ends the stream
//! cleanly.

use std::sync::atomic::Ordering;
use std::time::Instant;

use serde_json::{Map, Value, json};
use wasmhooks::schema::phases::serving as phase;

use super::super::openai::{self, MAX_CHOICES, Malformed, Route};
use super::super::stream::{self, Event};
use super::{Choice, ChunkReply, Exchange};

impl Exchange {
    /// A chunk of choice `index` as the engine streamed it; `finish_reason`
    /// on the choice's last.
    pub fn chunk(&mut self, index: usize, delta: &str, finish_reason: Option<&str>) -> ChunkReply {
        let mut reply = ChunkReply {
            delta: delta.to_owned(),
            stop: false,
            failed: false,
        };
        if self.stopped {
            // Nothing after a stop or a failure goes out.
            return ChunkReply {
                delta: String::new(),
                stop: true,
                failed: self.failed,
            };
        }
        let listens = self.pool.listens(phase::ON_RESPONSE_CHUNK);
        if index as u64 >= MAX_CHOICES {
            // A choice the host does not follow: its text would pass
            // unread, so the stream ends here.
            if listens {
                return self.chunk_failed();
            }
            return reply;
        }
        if self.choices.len() <= index {
            self.choices.resize(index + 1, Choice::default());
        }
        let choice = &mut self.choices[index];
        if !delta.is_empty() {
            choice.tokens += 1;
            self.first_text.get_or_insert_with(Instant::now);
        }
        let Choice { chunks, tokens } = *choice;
        choice.chunks += 1;
        if !listens {
            return reply;
        }
        let data = &mut self.data;
        data.insert("index".into(), json!(index));
        data.insert("chunk".into(), json!(chunks));
        data.insert("delta".into(), Value::String(reply.delta.clone()));
        data.insert("tokens_so_far".into(), json!(tokens));
        data.insert("finish_reason".into(), json!(finish_reason));
        data.remove("stop");
        let Ok(report) = self.fire(phase::ON_RESPONSE_CHUNK) else {
            return self.chunk_failed();
        };
        match self.data.get("delta") {
            Some(Value::String(text)) => reply.delta.clone_from(text),
            _ => {
                let bad = Malformed::new("delta", "`delta` must stay a string");
                if self
                    .answer_for(&report, &bad, phase::ON_RESPONSE_CHUNK)
                    .is_err()
                {
                    return self.chunk_failed();
                }
            }
        }
        if self.data.get("stop") == Some(&Value::Bool(true)) {
            reply.stop = true;
            self.stopped = true;
            self.pool.counters.stopped.fetch_add(1, Ordering::Relaxed);
        }
        reply
    }

    /// The stream fails here: no text of this chunk goes out.
    fn chunk_failed(&mut self) -> ChunkReply {
        self.failed = true;
        self.stopped = true;
        ChunkReply {
            delta: String::new(),
            stop: false,
            failed: true,
        }
    }

    /// Bytes of the engine's event stream (server-sent events, in any
    /// pieces): the events to send the client in their place.
    pub fn stream_bytes(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(bytes.len() + 64);
        if self.stopped {
            return out;
        }
        match self.events.push(bytes) {
            Ok(events) => {
                for event in events {
                    self.event(event, &mut out);
                    if self.stopped {
                        break;
                    }
                }
            }
            Err(stream::TooLong) => self.end_stream_with_error(&mut out),
        }
        out
    }

    /// The end of the engine's stream: what is left to send.
    pub fn finish_stream(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Some(event) = self.events.finish()
            && !self.stopped
        {
            self.event(event, &mut out);
        }
        out
    }

    fn event(&mut self, event: Event, out: &mut Vec<u8>) {
        let Event::Data { fields, data } = &event else {
            return stream::write(&event, out);
        };
        let listens = self.pool.listens(phase::ON_RESPONSE_CHUNK);
        let (mut chunk, texts) = match serde_json::from_slice::<Value>(data) {
            Ok(Value::Object(chunk)) => match stream_texts(self.route, &chunk) {
                Ok(texts) => (chunk, texts),
                Err(message) if listens => return self.unreadable_stream(&message, out),
                Err(_) => return stream::write(&event, out),
            },
            // With plugins to read the chunks, what the host cannot read
            // does not pass unread.
            _ if listens => {
                return self.unreadable_stream("an event's data is not a JSON map", out);
            }
            _ => return stream::write(&event, out),
        };
        if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(usage.clone());
        }
        if !self.client_usage && chunk.remove("usage").is_some() && texts.is_empty() {
            let no_choices = chunk
                .get("choices")
                .and_then(Value::as_array)
                .is_none_or(Vec::is_empty);
            if no_choices {
                // The usage chunk the host asked for and the client did not.
                return;
            }
        }
        let route = self.route;
        let mut stop = false;
        let mut failed = false;
        for (at, index, text, finish) in texts {
            if text.is_empty() && finish.is_none() {
                continue;
            }
            // Below MAX_CHOICES: stream_texts checked it.
            let reply = self.chunk(index as usize, &text, finish.as_deref());
            failed |= reply.failed;
            if failed {
                break;
            }
            let Some(choice) = chunk
                .get_mut("choices")
                .and_then(|c| c.get_mut(at))
                .and_then(Value::as_object_mut)
            else {
                continue;
            };
            if reply.delta != text {
                openai::set_choice_text(route, choice, "delta", &reply.delta);
                // The engine's tokens of the text it replaced.
                choice.remove("logprobs");
            }
            if reply.stop {
                choice.insert("finish_reason".into(), json!("content_filter"));
                stop = true;
                // The stream ends here: the chunk's later choices are not
                // read, so they do not go out.
                if let Some(Value::Array(choices)) = chunk.get_mut("choices") {
                    choices.truncate(at + 1);
                }
                break;
            }
        }
        if failed {
            return self.end_stream_with_error(out);
        }
        let data = serde_json::to_vec(&chunk).unwrap_or_default();
        stream::write(
            &Event::Data {
                fields: fields.clone(),
                data,
            },
            out,
        );
        if stop {
            stream::write(&Event::Done, out);
        }
    }

    /// An engine's event the host cannot read: the stream ends with an
    /// error in its place.
    fn unreadable_stream(&mut self, message: &str, out: &mut Vec<u8>) {
        tracing::warn!(
            request = self.request_id(),
            "serving: the engine's stream: {message}; ended"
        );
        self.end_stream_with_error(out);
    }

    fn end_stream_with_error(&mut self, out: &mut Vec<u8>) {
        self.failed = true;
        self.stopped = true;
        let body = openai::error_body(503, "the request could not be served", None);
        stream::write(
            &Event::Data {
                fields: Vec::new(),
                data: body,
            },
            out,
        );
        stream::write(&Event::Done, out);
    }
}

/// Each choice of a stream's chunk: its place in `choices`, its index,
/// its text and its `finish_reason`. `Err` for a chunk whose text the host
/// cannot read, or a choice past [`MAX_CHOICES`].
type ChunkText = (usize, u64, String, Option<String>);

fn stream_texts(route: Route, chunk: &Map<String, Value>) -> Result<Vec<ChunkText>, String> {
    let choices = match chunk.get("choices") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        // More choices in one chunk than a response may have: each is a
        // call of the plugins, and the engine's count is not the host's.
        Some(Value::Array(choices)) if choices.len() as u64 > MAX_CHOICES => {
            return Err(format!("a chunk has {} choices", choices.len()));
        }
        Some(Value::Array(choices)) => choices,
        Some(_) => return Err("`choices` is not a list".into()),
    };
    choices
        .iter()
        .enumerate()
        .map(|(at, choice)| {
            let choice = choice
                .as_object()
                .ok_or_else(|| format!("choices[{at}] is not a map"))?;
            let index = match choice.get("index") {
                None | Some(Value::Null) => 0,
                Some(n) => n
                    .as_u64()
                    .filter(|n| *n < MAX_CHOICES)
                    .ok_or_else(|| format!("choices[{at}].index is not 0 to {MAX_CHOICES}"))?,
            };
            let text = openai::choice_text(route, choice, "delta")
                .map_err(|e| format!("choices[{at}]{e}"))?;
            let finish = choice
                .get("finish_reason")
                .and_then(Value::as_str)
                .map(str::to_owned);
            Ok((at, index, text.to_owned(), finish))
        })
        .collect()
}
