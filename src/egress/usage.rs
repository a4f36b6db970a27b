//! Reading what a model call used from its response as the response passes through an opened
//! tunnel: the Anthropic Messages API and OpenAI's Chat Completions and Responses APIs, whole
//! JSON or streamed as server-sent events, plain or gzip'd. The response is the host's, but it
//! is read as hostile input all the same: every buffer is capped, nothing in it can make the
//! meter fail, and a response whose usage cannot be read is counted by [`estimate`].

use std::io::Write;

use serde_json::Value;

use crate::model::spend::{ApiKind, Usage};

/// The most of a whole (not streamed) JSON body kept for reading its usage.
const MAX_JSON: usize = 2 << 20;
/// The most of a response's text kept for its transcript.
const MAX_TEXT: usize = 1 << 20;
/// The longest server-sent event line read; a longer one is passed over.
const MAX_LINE: usize = 1 << 20;
/// The most bytes a gzip'd response is inflated to.
const MAX_INFLATED: u64 = 64 << 20;

/// The usage kiln counts for a call whose response says none it can read: one token for every
/// two bytes of the request and of the response. Real tokenizers average three to four bytes a
/// token on English and code, so this counts high, never low.
pub fn estimate(request_bytes: u64, response_bytes: u64) -> Usage {
    Usage {
        input: request_bytes.div_ceil(2),
        cached: 0,
        output: response_bytes.div_ceil(2),
    }
}

/// Reads one response's usage from its body, a chunk at a time.
pub enum Meter {
    Plain(Sink),
    Gzip(Box<flate2::write::GzDecoder<Sink>>),
    /// A gzip'd body that was not gzip, or inflated past the cap: its usage is not read.
    Unreadable,
}

/// Where the (inflated) body goes: kept whole (JSON) or cut into lines (events), capped.
pub struct Sink {
    kind: ApiKind,
    events: bool,
    pending: Vec<u8>,
    /// The body or the current line went past its cap.
    overflow: bool,
    inflated: u64,
    found: Option<Usage>,
    /// The response's text as the model wrote it, reassembled from its events (capped).
    text: String,
}

/// What a response said: its usage, if it could be read, and its text.
#[derive(Debug, Default, PartialEq)]
pub struct Reading {
    pub usage: Option<Usage>,
    pub text: String,
}

impl Meter {
    /// A meter for a response of `kind`'s API with these `Content-Type` and
    /// `Content-Encoding` headers.
    pub fn new(kind: ApiKind, content_type: Option<&str>, encoding: Option<&str>) -> Meter {
        let events = content_type.is_some_and(|t| {
            t.trim()
                .to_ascii_lowercase()
                .starts_with("text/event-stream")
        });
        let sink = Sink {
            kind,
            events,
            pending: Vec::new(),
            overflow: false,
            inflated: 0,
            found: None,
            text: String::new(),
        };
        match encoding {
            Some(e) if e.trim().eq_ignore_ascii_case("gzip") => {
                Meter::Gzip(Box::new(flate2::write::GzDecoder::new(sink)))
            }
            _ => Meter::Plain(sink),
        }
    }

    /// Reads the next `chunk` of the body.
    pub fn feed(&mut self, chunk: &[u8]) {
        match self {
            Meter::Plain(sink) => sink.take(chunk),
            Meter::Gzip(decoder) => {
                if decoder.write_all(chunk).is_err() {
                    *self = Meter::Unreadable;
                }
            }
            Meter::Unreadable => {}
        }
    }

    /// What the response reported, once it has all passed: its usage (none when it reported
    /// none that could be read) and its text.
    pub fn finish(self) -> Reading {
        let mut sink = match self {
            Meter::Plain(sink) => sink,
            Meter::Gzip(decoder) => match decoder.finish() {
                Ok(sink) => sink,
                Err(_) => return Reading::default(),
            },
            Meter::Unreadable => return Reading::default(),
        };
        sink.end();
        Reading {
            usage: sink.found,
            text: sink.text,
        }
    }
}

impl Sink {
    fn take(&mut self, mut bytes: &[u8]) {
        if !self.events {
            if self.pending.len() + bytes.len() > MAX_JSON {
                self.overflow = true;
                self.pending = Vec::new();
            } else if !self.overflow {
                self.pending.extend_from_slice(bytes);
            }
            return;
        }
        while let Some(end) = bytes.iter().position(|b| *b == b'\n') {
            if !self.overflow && self.pending.len() + end <= MAX_LINE {
                self.pending.extend_from_slice(&bytes[..end]);
                let line = std::mem::take(&mut self.pending);
                self.line(&line);
            } else {
                self.pending.clear();
            }
            self.overflow = false;
            bytes = &bytes[end + 1..];
        }
        if self.pending.len() + bytes.len() > MAX_LINE {
            self.overflow = true;
            self.pending.clear();
        } else if !self.overflow {
            self.pending.extend_from_slice(bytes);
        }
    }

    /// One line of an event stream: a `data:` line's JSON is read for usage.
    fn line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        if let Ok(value) = serde_json::from_slice::<Value>(data.trim_ascii()) {
            self.read(&value);
        }
    }

    /// The end of the body: what is left is read (the whole JSON, or a last line without its
    /// newline).
    fn end(&mut self) {
        let rest = std::mem::take(&mut self.pending);
        if self.overflow {
            return;
        }
        if self.events {
            self.line(&rest);
        } else if let Ok(value) = serde_json::from_slice::<Value>(&rest) {
            self.read(&value);
        }
    }

    /// Takes what `value` (a whole response, or one event) says of usage and text.
    fn read(&mut self, value: &Value) {
        self.take_text(value);
        let count = |v: &Value| v.as_u64().unwrap_or(0);
        match self.kind {
            ApiKind::Anthropic => {
                let usage = match value["type"].as_str() {
                    Some("message_start") => &value["message"]["usage"],
                    _ => &value["usage"],
                };
                if !usage.is_object() {
                    return;
                }
                let found = self.found.get_or_insert_with(Usage::default);
                // A delta's counts are the totals so far; a field it leaves out is unchanged.
                if usage.get("input_tokens").is_some()
                    || usage.get("cache_creation_input_tokens").is_some()
                {
                    found.input = count(&usage["input_tokens"])
                        .saturating_add(count(&usage["cache_creation_input_tokens"]));
                }
                if usage.get("cache_read_input_tokens").is_some() {
                    found.cached = count(&usage["cache_read_input_tokens"]);
                }
                if usage.get("output_tokens").is_some() {
                    found.output = count(&usage["output_tokens"]);
                }
            }
            ApiKind::Openai => {
                let usage = if value["usage"].is_object() {
                    &value["usage"]
                } else {
                    &value["response"]["usage"]
                };
                if !usage.is_object() {
                    return;
                }
                // Chat Completions say prompt/completion, Responses input/output; both count
                // cache reads among the input.
                let (input, output, details) = if usage.get("prompt_tokens").is_some() {
                    (
                        "prompt_tokens",
                        "completion_tokens",
                        "prompt_tokens_details",
                    )
                } else {
                    ("input_tokens", "output_tokens", "input_tokens_details")
                };
                let cached = count(&usage[details]["cached_tokens"]);
                let input = count(&usage[input]);
                self.found = Some(Usage {
                    input: input.saturating_sub(cached),
                    cached: cached.min(input),
                    output: count(&usage[output]),
                });
            }
        }
    }
}

impl Sink {
    /// Adds the text `value` carries: a streamed delta, or a whole response's content.
    fn take_text<'v>(&mut self, value: &'v Value) {
        let mut pieces: Vec<&'v str> = Vec::new();
        let mut push = |v: &'v Value| {
            if let Some(t) = v.as_str() {
                pieces.push(t);
            }
        };
        match self.kind {
            ApiKind::Anthropic => {
                push(&value["delta"]["text"]);
                for block in value["content"].as_array().into_iter().flatten() {
                    push(&block["text"]);
                }
            }
            ApiKind::Openai => {
                for choice in value["choices"].as_array().into_iter().flatten() {
                    push(&choice["delta"]["content"]);
                    push(&choice["message"]["content"]);
                }
                if value["type"] == "response.output_text.delta" {
                    push(&value["delta"]);
                }
                for item in value["output"].as_array().into_iter().flatten() {
                    for part in item["content"].as_array().into_iter().flatten() {
                        push(&part["text"]);
                    }
                }
            }
        }
        for piece in pieces {
            let room = MAX_TEXT.saturating_sub(self.text.len());
            let cut = piece.floor_char_boundary(room.min(piece.len()));
            self.text.push_str(&piece[..cut]);
        }
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.inflated += buf.len() as u64;
        if self.inflated > MAX_INFLATED {
            return Err(std::io::Error::other("inflated past the cap"));
        }
        self.take(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn read(kind: ApiKind, content_type: &str, body: &[u8], chunk: usize) -> Option<Usage> {
        reading(kind, content_type, body, chunk).usage
    }

    fn reading(kind: ApiKind, content_type: &str, body: &[u8], chunk: usize) -> Reading {
        let mut meter = Meter::new(kind, Some(content_type), None);
        for part in body.chunks(chunk.max(1)) {
            meter.feed(part);
        }
        meter.finish()
    }

    const ANTHROPIC_STREAM: &str = "event: message_start\n\
        data: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":120,\"cache_creation_input_tokens\":5,\"cache_read_input_tokens\":1000,\"output_tokens\":1}}}\n\n\
        event: content_block_delta\n\
        data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"usage: 999\"}}\n\n\
        event: message_delta\r\n\
        data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":42}}\r\n\r\n\
        event: message_stop\n\
        data: {\"type\":\"message_stop\"}\n\n";

    #[test]
    fn anthropic_usage_is_read_whole_or_streamed_in_any_chunks() {
        let want = Usage {
            input: 125,
            cached: 1000,
            output: 42,
        };
        for chunk in [1, 7, 64, 10_000] {
            let got = read(
                ApiKind::Anthropic,
                "text/event-stream; charset=utf-8",
                ANTHROPIC_STREAM.as_bytes(),
                chunk,
            );
            assert_eq!(got, Some(want), "chunks of {chunk}");
        }
        let whole = br#"{"id":"m","content":[{"type":"text","text":"hi"}],
            "usage":{"input_tokens":10,"cache_read_input_tokens":0,"output_tokens":3}}"#;
        let got = read(ApiKind::Anthropic, "application/json", whole, 5);
        assert_eq!(
            got,
            Some(Usage {
                input: 10,
                cached: 0,
                output: 3
            })
        );
    }

    #[test]
    fn openai_usage_is_read_from_chat_completions_and_responses_whole_or_streamed() {
        let chat = br#"{"choices":[],"usage":{"prompt_tokens":200,"completion_tokens":30,"prompt_tokens_details":{"cached_tokens":150}}}"#;
        let want = Usage {
            input: 50,
            cached: 150,
            output: 30,
        };
        assert_eq!(
            read(ApiKind::Openai, "application/json", chat, 3),
            Some(want)
        );
        let chat_stream = "data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}],\"usage\":null}\n\n\
            data: {\"choices\":[],\"usage\":{\"prompt_tokens\":200,\"completion_tokens\":30,\"prompt_tokens_details\":{\"cached_tokens\":150}}}\n\n\
            data: [DONE]\n\n";
        assert_eq!(
            read(
                ApiKind::Openai,
                "text/event-stream",
                chat_stream.as_bytes(),
                9
            ),
            Some(want)
        );
        let responses_stream = "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"x\"}\n\n\
            event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":200,\"input_tokens_details\":{\"cached_tokens\":150},\"output_tokens\":30}}}\n\n";
        assert_eq!(
            read(
                ApiKind::Openai,
                "text/event-stream",
                responses_stream.as_bytes(),
                4
            ),
            Some(want)
        );
    }

    #[test]
    fn the_text_is_reassembled_from_deltas_or_taken_whole() {
        let streamed = reading(
            ApiKind::Anthropic,
            "text/event-stream",
            ANTHROPIC_STREAM.as_bytes(),
            5,
        );
        assert_eq!(streamed.text, "usage: 999");
        let chat = br#"{"choices":[{"message":{"content":"Hello"}}],"usage":{"prompt_tokens":1,"completion_tokens":1}}"#;
        assert_eq!(
            reading(ApiKind::Openai, "application/json", chat, 4).text,
            "Hello"
        );
        let deltas = "data: {\"type\":\"response.output_text.delta\",\"delta\":\"He\"}\n\n\
                      data: {\"type\":\"response.output_text.delta\",\"delta\":\"llo\"}\n\n";
        assert_eq!(
            reading(ApiKind::Openai, "text/event-stream", deltas.as_bytes(), 3).text,
            "Hello"
        );
    }

    #[test]
    fn a_gzipped_response_is_read_and_a_body_without_usage_reads_none() {
        let whole = br#"{"usage":{"input_tokens":7,"output_tokens":2}}"#;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(whole).unwrap();
        let gz = gz.finish().unwrap();
        let mut meter = Meter::new(ApiKind::Anthropic, Some("application/json"), Some("gzip"));
        for part in gz.chunks(5) {
            meter.feed(part);
        }
        assert_eq!(meter.finish().usage.map(|u| u.tokens()), Some(9));
        assert_eq!(
            read(ApiKind::Anthropic, "application/json", b"<html>", 3),
            None
        );
        assert_eq!(
            read(ApiKind::Openai, "text/event-stream", b"data: {}\n\n", 3),
            None
        );
        let mut not_gzip = Meter::new(ApiKind::Openai, Some("application/json"), Some("gzip"));
        not_gzip.feed(b"plain text, not gzip");
        assert_eq!(not_gzip.finish(), Reading::default());
    }

    #[test]
    fn a_line_past_its_cap_is_passed_over_and_the_stream_read_on() {
        let mut body = b"data: ".to_vec();
        body.extend(std::iter::repeat_n(b'x', MAX_LINE + 10));
        body.extend_from_slice(b"\ndata: {\"usage\":{\"input_tokens\":1,\"output_tokens\":1}}\n");
        let got = read(ApiKind::Anthropic, "text/event-stream", &body, 65_536);
        assert_eq!(got.map(|u| u.tokens()), Some(2));
        assert_eq!(
            estimate(3, 4),
            Usage {
                input: 2,
                cached: 0,
                output: 2
            }
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever a host answers, in whatever chunks, the meter reads a usage or none: it
        /// never panics, and never reports more tokens than the numbers the body holds.
        #[test]
        fn any_body_in_any_chunks_is_read_without_failing(
            body in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..400),
                "(data: \\{\"usage\": *\\{\"(input|output|prompt|completion)_tokens\": *[0-9]{1,6}\\}\\}\n){0,4}"
                    .prop_map(String::into_bytes),
            ],
            chunk in 1usize..50,
            events in any::<bool>(),
            anthropic in any::<bool>(),
        ) {
            let kind = if anthropic { ApiKind::Anthropic } else { ApiKind::Openai };
            let content_type = if events { "text/event-stream" } else { "application/json" };
            if let Some(usage) = read(kind, content_type, &body, chunk) {
                let text = String::from_utf8_lossy(&body);
                let most: u64 = text
                    .split(|c: char| !c.is_ascii_digit())
                    .filter_map(|n| n.parse::<u64>().ok())
                    .fold(0u64, |a, n| a.saturating_add(n));
                prop_assert!(usage.tokens() <= most.saturating_mul(2));
            }
        }
    }
}
