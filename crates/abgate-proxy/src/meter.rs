//! Measuring a response as it streams: Istio's request metrics when it ends, and for
//! OpenAI responses the LLM figures (time to first token, tokens, gaps between chunks).
//!
//! Definitions (written in the README too):
//! - TTFT: from the request received to the first streamed chunk that carries content
//!   (`delta.content` or `text` not empty) being forwarded; streaming responses only.
//! - E2E: from the request received to the last byte of the response forwarded.
//! - TPOT: (E2E − TTFT) / (completion tokens − 1), as vLLM's benchmark defines it.
//! - Chunk gap: the time between two consecutive content chunks forwarded.
//! - Tokens: `usage` when the response carries it, else the number of content chunks.

use std::sync::{Arc, LazyLock};
use std::time::Instant;

use bytes::Bytes;

use crate::observe::{Observers, Outcome, RequestInfo};

use abgate_telemetry::{
    DestinationSeries, LlmRecord, RequestProtocol, RequestRecord, ResponseFlags, Telemetry,
};

/// The largest JSON body scanned for `usage`; bigger ones are counted but not parsed.
const MAX_JSON_SCAN: usize = 4 << 20;

/// How a response is read for LLM figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LlmKind {
    /// `text/event-stream` chunks.
    Stream,
    /// One JSON completion.
    Json,
}

/// The measurements of one request; recorded once, when the response ends (or the client
/// goes away, which is recorded with the `DC` flag).
pub struct Meter {
    telemetry: Arc<Telemetry>,
    series: Arc<DestinationSeries>,
    started: Instant,
    code: u16,
    flags: ResponseFlags,
    protocol: RequestProtocol,
    request_bytes: u64,
    response_bytes: u64,
    llm: Option<LlmScan>,
    /// The request's description, when an access log or tracer wants it.
    info: Option<(Arc<Observers>, Box<RequestInfo>)>,
    done: bool,
}

struct LlmScan {
    kind: LlmKind,
    /// SSE: the partial line carried to the next chunk.
    buffer: Vec<u8>,
    /// JSON: the body so far.
    json: JsonBody,
    first_content: Option<Instant>,
    last_content: Option<Instant>,
    content_chunks: u64,
    usage: Option<(u64, u64)>,
}

/// A JSON response body as it arrives. Most come in one chunk, which is held as it is
/// (a reference count, no copy); a second chunk starts a buffer.
enum JsonBody {
    Empty,
    One(Bytes),
    Many(Vec<u8>),
}

impl JsonBody {
    /// Adds a chunk, unless the body would grow past [`MAX_JSON_SCAN`].
    fn push(&mut self, chunk: &Bytes) {
        let len = self.bytes().len();
        if len + chunk.len() > MAX_JSON_SCAN {
            return;
        }
        match self {
            JsonBody::Empty => *self = JsonBody::One(chunk.clone()),
            JsonBody::One(first) => {
                let mut buffer = Vec::with_capacity(len + chunk.len());
                buffer.extend_from_slice(first);
                buffer.extend_from_slice(chunk);
                *self = JsonBody::Many(buffer);
            }
            JsonBody::Many(buffer) => buffer.extend_from_slice(chunk),
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            JsonBody::Empty => &[],
            JsonBody::One(b) => b,
            JsonBody::Many(v) => v,
        }
    }
}

impl Meter {
    /// Starts measuring a request that began at `started`; counts it in flight.
    pub fn new(
        telemetry: Arc<Telemetry>,
        series: Arc<DestinationSeries>,
        started: Instant,
        request_bytes: u64,
        protocol: RequestProtocol,
    ) -> Self {
        telemetry.gateway().request_started();
        Self {
            telemetry,
            series,
            started,
            code: 0,
            flags: ResponseFlags::NONE,
            protocol,
            request_bytes,
            response_bytes: 0,
            llm: None,
            info: None,
            done: false,
        }
    }

    /// Counts the request against `series` (the destination chosen, then the endpoint).
    pub fn charge(&mut self, series: Arc<DestinationSeries>) {
        self.series = series;
    }

    /// Hands the request's description to the access log and tracer when it ends.
    pub fn observed(mut self, observers: Arc<Observers>, info: Option<Box<RequestInfo>>) -> Self {
        self.info = info.map(|info| (observers, info));
        self
    }

    /// The response's status and flags, and whether to read it for LLM figures.
    pub fn respond(&mut self, code: u16, flags: ResponseFlags, llm: Option<LlmKind>) {
        self.code = code;
        self.flags = flags;
        self.llm = llm.map(|kind| LlmScan {
            kind,
            buffer: Vec::new(),
            json: JsonBody::Empty,
            first_content: None,
            last_content: None,
            content_chunks: 0,
            usage: None,
        });
    }

    /// A chunk of the response forwarded to the client.
    pub fn data(&mut self, chunk: &Bytes) {
        self.response_bytes += chunk.len() as u64;
        let Some(scan) = &mut self.llm else { return };
        match scan.kind {
            LlmKind::Json => scan.json.push(chunk),
            LlmKind::Stream => {
                let now = Instant::now();
                scan.buffer.extend_from_slice(chunk);
                let mut start = 0;
                while let Some(end) = scan.buffer[start..].iter().position(|&b| b == b'\n') {
                    let line = &scan.buffer[start..start + end];
                    if let Some(event) = sse_event(line) {
                        if has_content(event) {
                            if let Some(last) = scan.last_content {
                                self.series
                                    .record_chunk_gap(now.saturating_duration_since(last));
                            }
                            scan.first_content.get_or_insert(now);
                            scan.last_content = Some(now);
                            scan.content_chunks += 1;
                        }
                        if let Some(usage) = usage_of(event) {
                            scan.usage = Some(usage);
                        }
                    }
                    start += end + 1;
                }
                scan.buffer.drain(..start);
            }
        }
    }

    /// Adds a flag that arose while streaming (a timeout cutting the response).
    pub fn flag(&mut self, flag: ResponseFlags) {
        self.flags |= flag;
    }

    /// Records the request: the response ended.
    pub fn finish(mut self) {
        self.record();
    }

    fn record(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        let now = Instant::now();
        let e2e = now.saturating_duration_since(self.started);
        self.series.record_request(&RequestRecord {
            code: self.code,
            flags: self.flags,
            protocol: self.protocol,
            duration: e2e,
            request_bytes: self.request_bytes,
            response_bytes: self.response_bytes,
            at: now,
        });
        let mut llm = None;
        if let Some(scan) = &self.llm {
            let usage = match scan.kind {
                LlmKind::Json => usage_of(scan.json.bytes()),
                LlmKind::Stream => scan.usage,
            };
            let (prompt_tokens, completion_tokens) = usage.unwrap_or((0, scan.content_chunks));
            let success = (200..300).contains(&self.code)
                && (self.flags.difference(ResponseFlags::DI)).is_empty();
            let record = LlmRecord {
                ttft: scan
                    .first_content
                    .map(|t| t.saturating_duration_since(self.started)),
                e2e,
                prompt_tokens,
                completion_tokens,
                success,
                at: now,
            };
            self.series.record_llm(&record);
            llm = Some(record);
        }
        self.telemetry.gateway().request_finished();
        if let Some((observers, info)) = &self.info {
            let labels = self.series.labels();
            observers.emit(
                info,
                &Outcome {
                    code: self.code,
                    flags: self.flags.to_string(),
                    bytes_received: self.request_bytes,
                    bytes_sent: self.response_bytes,
                    duration: e2e,
                    ttft: llm.as_ref().and_then(|l| l.ttft),
                    prompt_tokens: llm.as_ref().map(|l| l.prompt_tokens),
                    completion_tokens: llm.as_ref().map(|l| l.completion_tokens),
                    experiment_id: labels.experiment_id.clone(),
                    variant: labels.variant.clone(),
                    version: labels.destination_version.clone(),
                },
            );
        }
    }
}

impl Drop for Meter {
    /// A response dropped before its end: the client went away (`DC`).
    fn drop(&mut self) {
        if !self.done {
            self.flags |= ResponseFlags::DC;
            self.record();
        }
    }
}

/// The payload of an SSE `data:` line, unless it is the `[DONE]` marker.
fn sse_event(line: &[u8]) -> Option<&[u8]> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let payload = line.strip_prefix(b"data:")?;
    let payload = payload.strip_prefix(b" ").unwrap_or(payload);
    (payload != b"[DONE]").then_some(payload)
}

/// Whether a chunk carries generated text: a non-empty `content` (chat) or `text`
/// (completions). Found by scanning, not parsing: it runs on every chunk.
fn has_content(event: &[u8]) -> bool {
    [&b"\"content\":\""[..], &b"\"text\":\""[..]]
        .iter()
        .any(|key| {
            find(event, key).is_some_and(|at| event.get(at + key.len()).is_some_and(|&c| c != b'"'))
        })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(haystack, needle)
}

/// `"usage":{`, searched for in every JSON body and SSE event (a searcher made once).
static USAGE_KEY: LazyLock<memchr::memmem::Finder<'static>> =
    LazyLock::new(|| memchr::memmem::Finder::new(b"\"usage\":{"));
static USAGE_KEY_SPACED: LazyLock<memchr::memmem::Finder<'static>> =
    LazyLock::new(|| memchr::memmem::Finder::new(b"\"usage\": {"));
/// `"usage":`, searched for from the end.
static USAGE_KEY_LAST: LazyLock<memchr::memmem::FinderRev<'static>> =
    LazyLock::new(|| memchr::memmem::FinderRev::new(b"\"usage\":"));

#[derive(serde::Deserialize)]
struct Usage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

/// `(prompt_tokens, completion_tokens)` of a JSON object's `usage`, parsed only when the
/// text holds a `usage` object.
///
/// It runs on every completion, so the document is not parsed whole. OpenAI servers put
/// `usage` last: when the text ends with the `usage` member and the object's closing
/// brace, that member is the top-level one and only it is parsed. Otherwise a structural
/// scan (strings and nesting) finds the top-level `usage` and checks that the text is one
/// balanced object, and again only the `usage` value is parsed.
pub(crate) fn usage_of(json: &[u8]) -> Option<(u64, u64)> {
    USAGE_KEY
        .find(json)
        .or_else(|| USAGE_KEY_SPACED.find(json))?;
    if json.trim_ascii_start().first() != Some(&b'{') {
        return None;
    }
    if let Some(usage) = last_member_usage(json) {
        return usage;
    }
    let value = top_level_value(json, b"usage")?;
    let mut parser = serde_json::Deserializer::from_slice(value);
    let usage: Option<Usage> = serde::Deserialize::deserialize(&mut parser).ok()?;
    usage.map(|u| (u.prompt_tokens, u.completion_tokens))
}

/// The `usage` of an object whose last member it is (`Some(None)` for `"usage":null`);
/// `None` when the text does not end that way.
fn last_member_usage(json: &[u8]) -> Option<Option<(u64, u64)>> {
    let at = USAGE_KEY_LAST.rfind(json)?;
    let value = &json[at + b"\"usage\":".len()..];
    let mut values = serde_json::Deserializer::from_slice(value).into_iter::<Option<Usage>>();
    let usage = values.next()?.ok()?;
    // The key is a member of the object that the final brace closes: the top-level one.
    if value[values.byte_offset()..].trim_ascii() != b"}" {
        return None;
    }
    Some(usage.map(|u| (u.prompt_tokens, u.completion_tokens)))
}

/// The text from the value of `key` in a top-level JSON object to the end, when the text
/// is one object whose strings close and whose brackets balance, with only whitespace
/// around it. The first `key` wins.
fn top_level_value<'a>(json: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let start = json.iter().position(|b| !b.is_ascii_whitespace())?;
    if json[start] != b'{' {
        return None;
    }
    let mut depth = 0usize;
    let mut found = None;
    let mut i = start;
    while i < json.len() {
        match json[i] {
            b'"' => {
                // To the closing quote, over escapes (strings are short: a plain loop
                // beats a vectorized search here).
                let mut end = i + 1;
                loop {
                    match json.get(end)? {
                        b'"' => break,
                        b'\\' => end += 2,
                        _ => end += 1,
                    }
                }
                if depth == 1 && found.is_none() && &json[i + 1..end] == key {
                    // A key, when a colon follows.
                    let colon = end
                        + 1
                        + json[end + 1..]
                            .iter()
                            .position(|b| !b.is_ascii_whitespace())?;
                    if json[colon] == b':' {
                        found = Some(colon + 1);
                    }
                }
                i = end + 1;
            }
            b'{' | b'[' => {
                depth += 1;
                i += 1;
            }
            b'}' | b']' => {
                depth = depth.checked_sub(1)?;
                i += 1;
                if depth == 0 {
                    break;
                }
            }
            _ => i += 1,
        }
    }
    if depth != 0 || json[i..].iter().any(|b| !b.is_ascii_whitespace()) {
        return None;
    }
    found.map(|at| &json[at..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_chunks_are_found_without_parsing() {
        assert!(has_content(br#"{"choices":[{"delta":{"content":"hi"}}]}"#));
        assert!(!has_content(
            br#"{"choices":[{"delta":{"role":"assistant","content":""}}]}"#
        ));
        assert!(has_content(br#"{"choices":[{"text":" world","index":0}]}"#));
    }

    #[test]
    fn usage_is_read_from_the_final_chunk_or_body() {
        assert_eq!(usage_of(br#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":7,"total_tokens":10}}"#), Some((3, 7)));
        assert_eq!(usage_of(br#"{"choices":[]}"#), None);
        assert_eq!(usage_of(br#"{"usage":null}"#), None);
        // Only the top-level object's `usage`, and only in a whole document.
        assert_eq!(
            usage_of(br#"{"choices":[{"usage":{"prompt_tokens":9}}],"usage":{"prompt_tokens":1,"completion_tokens":2}}"#),
            Some((1, 2))
        );
        assert_eq!(
            usage_of(
                br#"{"x":"a \"usage\":{ } \\","usage":{"prompt_tokens":5,"completion_tokens":6}} "#
            ),
            Some((5, 6))
        );
        assert_eq!(
            usage_of(br#"{"usage":{"prompt_tokens":1,"completion_tokens":2},"choices":["#),
            None
        );
        assert_eq!(
            usage_of(br#"{"usage":{"prompt_tokens":1,"completion_tokens":2}} trailing"#),
            None
        );
        assert_eq!(usage_of(br#"[{"usage":{"prompt_tokens":1}}]"#), None);
        assert_eq!(
            usage_of(br#"{"a":{"usage":{"prompt_tokens":1,"completion_tokens":2}}}"#),
            None
        );
        assert_eq!(
            usage_of(br#" {"id":"x","usage": {"prompt_tokens":7,"completion_tokens":8,"details":{"cached":0}}} "#),
            Some((7, 8))
        );
    }

    #[test]
    fn a_json_body_in_several_chunks_is_read_whole() {
        let mut body = JsonBody::Empty;
        body.push(&Bytes::from_static(br#"{"usage":{"prompt_tokens":3,"#));
        assert!(matches!(body, JsonBody::One(_)));
        body.push(&Bytes::from_static(br#""completion_tokens":4}}"#));
        assert_eq!(usage_of(body.bytes()), Some((3, 4)));
    }

    #[test]
    fn sse_lines_yield_events_but_not_done() {
        assert_eq!(sse_event(b"data: {\"a\":1}\r"), Some(&b"{\"a\":1}"[..]));
        assert_eq!(sse_event(b"data: [DONE]"), None);
        assert_eq!(sse_event(b": keep-alive"), None);
    }

    #[test]
    fn a_stream_split_across_reads_counts_each_chunk_once() {
        let telemetry = Telemetry::new();
        let series = telemetry.destination(abgate_telemetry::DestinationLabels::new("m", "ns"));
        let mut meter = Meter::new(
            Arc::clone(&telemetry),
            Arc::clone(&series),
            Instant::now(),
            10,
            RequestProtocol::Http,
        );
        meter.respond(200, ResponseFlags::NONE, Some(LlmKind::Stream));
        let stream = "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n\
                      data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n\
                      data: {\"choices\":[{\"delta\":{\"content\":\"b\"}}]}\n\n\
                      data: {\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n";
        for piece in stream.as_bytes().chunks(7) {
            meter.data(&Bytes::copy_from_slice(piece));
        }
        let scan = meter.llm.as_ref().expect("scanning");
        assert_eq!((scan.content_chunks, scan.usage), (2, Some((4, 2))));
        meter.finish();
        let text = telemetry.render();
        assert!(text.contains("llm_tokens_generated_total{"), "{text}");
        assert_eq!(telemetry.gateway().requests_in_flight(), 0);
    }
}
