//! What the proxy reports about one finished request.

use std::time::{Duration, Instant};

use crate::flags::ResponseFlags;
use crate::labels::RequestProtocol;

/// One finished request (after the response ended or failed).
#[derive(Clone, Copy, Debug)]
pub struct RequestRecord {
    /// The status sent downstream (0 when none was).
    pub code: u16,
    /// Envoy's response flags gathered along the way.
    pub flags: ResponseFlags,
    /// HTTP or gRPC.
    pub protocol: RequestProtocol,
    /// From the first request byte to the end of the response.
    pub duration: Duration,
    /// Request body bytes.
    pub request_bytes: u64,
    /// Response body bytes.
    pub response_bytes: u64,
    /// When the request finished (`Instant::now()` in the proxy, a fixed instant in
    /// tests): it picks the analysis window.
    pub at: Instant,
}

impl RequestRecord {
    /// Whether this request counts as an error for analysis: a 5xx status, or any response
    /// flag but `DI` (a delay is not a failure) and `DC` (the client leaving is not the
    /// destination's failure; an upstream failure it came with still counts).
    pub fn is_error(&self) -> bool {
        self.code >= 500
            || !self
                .flags
                .difference(ResponseFlags::DI | ResponseFlags::DC)
                .is_empty()
    }

    /// Whether the client cancelled a request that had not failed: no evidence about the
    /// destination either way (its duration is the client's patience, not the service's).
    pub fn is_client_cancel(&self) -> bool {
        self.flags.contains(ResponseFlags::DC) && !self.is_error()
    }
}

/// LLM figures for one finished response that carried OpenAI `usage` or a stream.
#[derive(Clone, Copy, Debug)]
pub struct LlmRecord {
    /// Time to the first content token, for streamed responses.
    pub ttft: Option<Duration>,
    /// From the request to the last byte of the response.
    pub e2e: Duration,
    /// Prompt tokens (`usage.prompt_tokens`).
    pub prompt_tokens: u64,
    /// Completion tokens (`usage.completion_tokens`, or counted from stream chunks).
    pub completion_tokens: u64,
    /// Whether the response completed normally.
    pub success: bool,
    /// When the response finished: it picks the analysis window.
    pub at: Instant,
}

impl LlmRecord {
    /// Decode time per output token after the first: (e2e − ttft)/(completion − 1), when
    /// the response was streamed (a TTFT) and had at least two tokens.
    pub fn time_per_output_token(&self) -> Option<Duration> {
        let ttft = self.ttft?;
        let steps = u32::try_from(self.completion_tokens.checked_sub(1)?).ok()?;
        if steps == 0 {
            return None;
        }
        Some(self.e2e.checked_sub(ttft)? / steps)
    }

    /// Completion tokens per second of end-to-end time, when both are positive.
    pub fn tokens_per_second(&self) -> Option<f64> {
        let secs = self.e2e.as_secs_f64();
        (self.completion_tokens > 0 && secs > 0.0).then(|| self.completion_tokens as f64 / secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(code: u16, flags: ResponseFlags) -> RequestRecord {
        RequestRecord {
            code,
            flags,
            protocol: RequestProtocol::Http,
            duration: Duration::ZERO,
            request_bytes: 0,
            response_bytes: 0,
            at: Instant::now(),
        }
    }

    #[test]
    fn errors_are_5xx_or_flags_other_than_di_and_dc() {
        assert!(!req(200, ResponseFlags::NONE).is_error());
        assert!(!req(200, ResponseFlags::DI).is_error());
        assert!(!req(404, ResponseFlags::NONE).is_error());
        assert!(req(503, ResponseFlags::NONE).is_error());
        assert!(req(200, ResponseFlags::URX).is_error());
        // The client leaving is its own doing; an upstream failure with it still counts.
        assert!(!req(0, ResponseFlags::DC | ResponseFlags::DI).is_error());
        assert!(req(0, ResponseFlags::DC).is_client_cancel());
        assert!(req(200, ResponseFlags::DC | ResponseFlags::UC).is_error());
        assert!(!req(502, ResponseFlags::DC).is_client_cancel());
    }

    #[test]
    fn tpot_spreads_decode_time_over_tokens_after_the_first() {
        let r = LlmRecord {
            ttft: Some(Duration::from_millis(100)),
            e2e: Duration::from_millis(1_100),
            prompt_tokens: 10,
            completion_tokens: 11,
            success: true,
            at: Instant::now(),
        };
        assert_eq!(r.time_per_output_token(), Some(Duration::from_millis(100)));
        assert_eq!(r.tokens_per_second(), Some(10.0));
        let one = LlmRecord {
            completion_tokens: 1,
            ..r
        };
        assert_eq!(one.time_per_output_token(), None);
        let unstreamed = LlmRecord { ttft: None, ..r };
        assert_eq!(unstreamed.time_per_output_token(), None);
    }
}
