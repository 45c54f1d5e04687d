//! Validated server settings derived from [`SimArgs`].

use std::time::Duration;

use hyper::StatusCode;

use crate::SimArgs;

/// Longest accepted time to first token (one day).
const MAX_TTFT_MS: u64 = 86_400_000;
/// Slowest accepted decode speed (one token every 1000 s).
const MIN_TOKENS_PER_SECOND: f64 = 0.001;
/// Largest accepted embedding length.
const MAX_EMBEDDING_DIM: u32 = 65_536;

/// Why a [`SimArgs`] cannot be served.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    #[error("--ttft-ms must be at most {MAX_TTFT_MS}, got {0}")]
    Ttft(u64),
    #[error(
        "--tokens-per-second must be 0 or a finite number >= {MIN_TOKENS_PER_SECOND}, got {0}"
    )]
    TokensPerSecond(f64),
    #[error("--error-rate must be between 0 and 1, got {0}")]
    ErrorRate(f64),
    #[error("--error-status must be an HTTP error status (400..=599), got {0}")]
    ErrorStatus(u16),
    #[error("--latency-jitter must be between 0 and 1, got {0}")]
    LatencyJitter(f64),
    #[error("--max-concurrency must be at least 1")]
    MaxConcurrency,
    #[error("--embedding-dim must be between 1 and {MAX_EMBEDDING_DIM}, got {0}")]
    EmbeddingDim(u32),
}

impl From<ConfigError> for std::io::Error {
    fn from(err: ConfigError) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, err)
    }
}

/// The settings the request handlers use, checked once at start-up.
#[derive(Debug)]
pub(crate) struct Config {
    pub(crate) model: String,
    pub(crate) ttft: Duration,
    /// Delay between two tokens; zero when tokens come as fast as possible.
    pub(crate) token_interval: Duration,
    pub(crate) output_tokens: u32,
    pub(crate) error_rate: f64,
    pub(crate) error_status: StatusCode,
    /// Base of every request's RNG seed: `--seed`, or a random value.
    pub(crate) seed: u64,
    pub(crate) latency_jitter: f64,
    pub(crate) max_concurrency: u32,
    pub(crate) embedding_dim: usize,
}

impl Config {
    pub(crate) fn from_args(args: &SimArgs) -> Result<Self, ConfigError> {
        if args.ttft_ms > MAX_TTFT_MS {
            return Err(ConfigError::Ttft(args.ttft_ms));
        }
        let tps = args.tokens_per_second;
        let token_interval = if tps == 0.0 {
            Duration::ZERO
        } else if tps.is_finite() && tps >= MIN_TOKENS_PER_SECOND {
            Duration::try_from_secs_f64(1.0 / tps).map_err(|_| ConfigError::TokensPerSecond(tps))?
        } else {
            return Err(ConfigError::TokensPerSecond(tps));
        };
        if !(0.0..=1.0).contains(&args.error_rate) {
            return Err(ConfigError::ErrorRate(args.error_rate));
        }
        let error_status = StatusCode::from_u16(args.error_status)
            .ok()
            .filter(|s| s.is_client_error() || s.is_server_error())
            .ok_or(ConfigError::ErrorStatus(args.error_status))?;
        if !(0.0..=1.0).contains(&args.latency_jitter) {
            return Err(ConfigError::LatencyJitter(args.latency_jitter));
        }
        if args.max_concurrency == 0 {
            return Err(ConfigError::MaxConcurrency);
        }
        if args.embedding_dim == 0 || args.embedding_dim > MAX_EMBEDDING_DIM {
            return Err(ConfigError::EmbeddingDim(args.embedding_dim));
        }
        Ok(Self {
            model: args.model.clone(),
            ttft: Duration::from_millis(args.ttft_ms),
            token_interval,
            output_tokens: args.output_tokens,
            error_rate: args.error_rate,
            error_status,
            seed: args.seed.unwrap_or_else(rand::random),
            latency_jitter: args.latency_jitter,
            max_concurrency: args.max_concurrency,
            embedding_dim: args.embedding_dim as usize,
        })
    }
}

/// `d` scaled by `factor` (a jitter factor in 0..=2), saturating instead of panicking.
pub(crate) fn scale(d: Duration, factor: f64) -> Duration {
    if factor == 1.0 || d.is_zero() {
        return d;
    }
    Duration::try_from_secs_f64(d.as_secs_f64() * factor).unwrap_or(Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let cfg = Config::from_args(&SimArgs::default()).unwrap();
        assert_eq!(cfg.token_interval, Duration::ZERO);
        assert_eq!(cfg.error_status, StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn rejects_bad_values() {
        let bad = [
            SimArgs {
                error_rate: 1.5,
                ..SimArgs::default()
            },
            SimArgs {
                error_rate: f64::NAN,
                ..SimArgs::default()
            },
            SimArgs {
                error_status: 200,
                ..SimArgs::default()
            },
            SimArgs {
                tokens_per_second: -1.0,
                ..SimArgs::default()
            },
            SimArgs {
                tokens_per_second: f64::INFINITY,
                ..SimArgs::default()
            },
            SimArgs {
                max_concurrency: 0,
                ..SimArgs::default()
            },
            SimArgs {
                embedding_dim: 0,
                ..SimArgs::default()
            },
            SimArgs {
                latency_jitter: 2.0,
                ..SimArgs::default()
            },
        ];
        for args in bad {
            assert!(Config::from_args(&args).is_err(), "{args:?}");
        }
    }

    #[test]
    fn interval_from_rate() {
        let cfg = Config::from_args(&SimArgs {
            tokens_per_second: 50.0,
            ..SimArgs::default()
        })
        .unwrap();
        assert_eq!(cfg.token_interval, Duration::from_millis(20));
    }

    #[test]
    fn scale_saturates() {
        assert_eq!(scale(Duration::from_secs(2), 0.5), Duration::from_secs(1));
        assert_eq!(scale(Duration::MAX, 2.0), Duration::MAX);
    }
}
