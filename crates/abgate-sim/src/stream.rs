//! Server-sent-event token streams, produced chunk by chunk as time passes.

use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use rand::rngs::SmallRng;
use tokio::time::{Instant, Sleep};

use crate::metrics::Finish;
use crate::openai::Usage;
use crate::server::Active;
use crate::words::{push_token, MAX_TOKEN_LEN};

/// At most this many due tokens are packed into one body frame.
const MAX_TOKENS_PER_FRAME: u32 = 32;

/// Which API a stream answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TextApi {
    /// `/v1/chat/completions`: `chat.completion.chunk` objects with `delta`s.
    Chat,
    /// `/v1/completions`: `text_completion` objects with `text`.
    Completion,
}

impl TextApi {
    fn token_open(self) -> &'static [u8] {
        match self {
            TextApi::Chat => br#","choices":[{"index":0,"delta":{"content":""#,
            TextApi::Completion => br#","choices":[{"index":0,"text":""#,
        }
    }

    fn token_close(self) -> &'static [u8] {
        match self {
            TextApi::Chat => b"\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n",
            TextApi::Completion => b"\",\"logprobs\":null,\"finish_reason\":null}]}\n\n",
        }
    }

    fn finish_open(self) -> &'static [u8] {
        match self {
            TextApi::Chat => {
                br#","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":""#
            }
            TextApi::Completion => {
                br#","choices":[{"index":0,"text":"","logprobs":null,"finish_reason":""#
            }
        }
    }
}

const ROLE_CHOICE: &[u8] = b",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n";
const DONE: &[u8] = b"data: [DONE]\n\n";

/// What a stream sends, decided when the request is accepted.
pub(crate) struct StreamPlan {
    pub(crate) api: TextApi,
    pub(crate) id: String,
    pub(crate) created: u64,
    pub(crate) completion_tokens: u32,
    pub(crate) prompt_tokens: u32,
    pub(crate) finish: Finish,
    pub(crate) include_usage: bool,
    /// Delay before the first token, jitter applied.
    pub(crate) ttft: Duration,
    /// Delay between tokens, jitter applied; zero for no delay.
    pub(crate) interval: Duration,
}

/// When tokens are due, for streams with delays.
struct Timing {
    first_at: Instant,
    interval: Duration,
    sleep: Pin<Box<Sleep>>,
}

impl Timing {
    /// How many tokens are due at `now`, or `None` before the first one.
    fn due(&self, now: Instant, total: u32) -> Option<u32> {
        let elapsed = now.checked_duration_since(self.first_at)?;
        if self.interval.is_zero() {
            return Some(total);
        }
        let after_first = elapsed.as_nanos() / self.interval.as_nanos();
        Some(u32::try_from(after_first.saturating_add(1)).map_or(total, |n| n.min(total)))
    }

    /// When token `index` is due.
    fn deadline(&self, index: u32) -> Instant {
        self.interval
            .checked_mul(index)
            .and_then(|offset| self.first_at.checked_add(offset))
            // Unreachable with validated settings; a year is "never" for a test server.
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(365 * 86_400))
    }
}

/// A streaming completion: each poll emits the chunks that are due, so every token
/// reaches the socket when it is produced.
pub(crate) struct SseStream {
    ctx: Active,
    rng: SmallRng,
    /// `data: {"id":…,"object":…,"created":…,"model":…` shared by every chunk.
    head: String,
    api: TextApi,
    total: u32,
    sent: u32,
    started: bool,
    done: bool,
    finish: Finish,
    usage: Option<Usage>,
    timing: Option<Timing>,
}

impl SseStream {
    /// A stream for `plan`; `rng` draws the tokens.
    pub(crate) fn new(ctx: Active, rng: SmallRng, plan: StreamPlan) -> Self {
        let object = match plan.api {
            TextApi::Chat => "chat.completion.chunk",
            TextApi::Completion => "text_completion",
        };
        let mut head = String::with_capacity(96 + ctx.model_json.len());
        // Writing to a String cannot fail.
        let _ = write!(
            head,
            "data: {{\"id\":\"{}\",\"object\":\"{object}\",\"created\":{},\"model\":{}",
            plan.id, plan.created, ctx.model_json
        );
        let timing = (!plan.ttft.is_zero() || !plan.interval.is_zero()).then(|| {
            let first_at = Instant::now() + plan.ttft;
            Timing {
                first_at,
                interval: plan.interval,
                sleep: Box::pin(tokio::time::sleep_until(first_at)),
            }
        });
        Self {
            ctx,
            rng,
            head,
            api: plan.api,
            total: plan.completion_tokens,
            sent: 0,
            started: false,
            done: false,
            finish: plan.finish,
            usage: plan
                .include_usage
                .then(|| Usage::new(plan.prompt_tokens, plan.completion_tokens)),
            timing,
        }
    }

    /// Whether the last chunk (`[DONE]`) has been produced.
    pub(crate) fn is_done(&self) -> bool {
        self.done
    }

    /// The next frame: all chunks due now, `Pending` until one is, `None` at the end.
    pub(crate) fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        if self.done {
            return Poll::Ready(None);
        }
        let due = match &mut self.timing {
            None => self.total,
            Some(timing) => loop {
                if let Some(due) = timing.due(Instant::now(), self.total) {
                    if !self.started || due > self.sent {
                        break due;
                    }
                }
                let next = if self.started {
                    timing.deadline(self.sent)
                } else {
                    timing.first_at
                };
                timing.sleep.as_mut().reset(next);
                if timing.sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
            },
        };
        let upto = due.min(self.sent.saturating_add(MAX_TOKENS_PER_FRAME));
        Poll::Ready(Some(self.emit(upto)))
    }

    /// Builds the frame holding the opening chunk if not yet sent, tokens `sent..upto`,
    /// and the closing chunks if that was the last token.
    fn emit(&mut self, upto: u32) -> Bytes {
        let head = self.head.as_bytes();
        let tokens = upto - self.sent;
        let per_token = head.len() + 64 + MAX_TOKEN_LEN;
        let mut buf = BytesMut::with_capacity(per_token * (tokens as usize + 3));
        if !self.started {
            self.started = true;
            if self.api == TextApi::Chat {
                buf.put_slice(head);
                buf.put_slice(ROLE_CHOICE);
            }
        }
        for index in self.sent..upto {
            buf.put_slice(head);
            buf.put_slice(self.api.token_open());
            push_token(&mut buf, &mut self.rng, index);
            buf.put_slice(self.api.token_close());
        }
        self.sent = upto;
        self.ctx.metrics.add_generation_tokens(tokens);
        if self.sent == self.total {
            buf.put_slice(head);
            buf.put_slice(self.api.finish_open());
            buf.put_slice(self.finish.as_str().as_bytes());
            buf.put_slice(b"\"}]}\n\n");
            if let Some(usage) = self.usage {
                buf.put_slice(head);
                // Writing to a BytesMut cannot fail.
                let _ = write!(
                    buf,
                    ",\"choices\":[],\"usage\":{{\"prompt_tokens\":{},\"completion_tokens\":{},\"total_tokens\":{}}}}}\n\n",
                    usage.prompt_tokens, usage.completion_tokens, usage.total_tokens
                );
            }
            buf.put_slice(DONE);
            self.done = true;
            self.ctx.metrics.request_succeeded(self.finish);
        }
        buf.freeze()
    }
}
