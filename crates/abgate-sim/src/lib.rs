//! A simulated OpenAI-compatible model server, standing in for vLLM or llama.cpp in demos, tests and benchmarks.
#![forbid(unsafe_code)]

mod body;
mod config;
mod metrics;
mod openai;
mod server;
mod stream;
mod words;

use std::net::SocketAddr;

pub use server::serve;

/// Command-line options of `abgate sim`; also usable from tests.
///
/// `SimArgs::default()` gives the same values as the command line with no flags.
#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct SimArgs {
    /// Address to listen on (HTTP/1.1 and HTTP/2 cleartext on the same port).
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,
    /// Model name reported in every response, in `/v1/models` and in the metrics labels,
    /// whatever model the request names.
    #[arg(long, default_value = "sim-model")]
    pub model: String,
    /// Time to first token, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub ttft_ms: u64,
    /// Decode speed after the first token; 0 means as fast as possible (no inter-token delay).
    #[arg(long, default_value_t = 0.0)]
    pub tokens_per_second: f64,
    /// Tokens per completion; the request's `max_tokens` / `max_completion_tokens` caps it.
    #[arg(long, default_value_t = 16)]
    pub output_tokens: u32,
    /// Fraction (0..=1) of generation requests answered with an error.
    #[arg(long, default_value_t = 0.0)]
    pub error_rate: f64,
    /// HTTP status (400..=599) of the errors injected by `--error-rate`.
    #[arg(long, default_value_t = 500)]
    pub error_status: u16,
    /// Seed for reproducible latency jitter, errors and output; random when absent.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Relative latency jitter (0..=1): each request's delays are scaled by a factor drawn
    /// uniformly from [1 - j, 1 + j].
    #[arg(long, default_value_t = 0.0)]
    pub latency_jitter: f64,
    /// Simulated batch size: requests in flight beyond it are reported as waiting
    /// (`vllm:num_requests_waiting`), and `vllm:kv_cache_usage_perc` is running / this.
    /// Without `--queue` it only shapes the metrics.
    #[arg(long, default_value_t = 64)]
    pub max_concurrency: u32,
    /// Serve at most `--max-concurrency` generation requests at once; the others wait in
    /// arrival order before their first token, as vLLM's scheduler queues them. Makes a
    /// small `--max-concurrency` a slow server under load.
    #[arg(long)]
    pub queue: bool,
    /// Length of the vectors returned by `/v1/embeddings`.
    #[arg(long, default_value_t = 8)]
    pub embedding_dim: u32,
}

impl Default for SimArgs {
    fn default() -> Self {
        use clap::Parser;

        #[derive(clap::Parser)]
        struct Defaults {
            #[command(flatten)]
            args: SimArgs,
        }
        Defaults::try_parse_from(["abgate-sim"])
            .expect("every SimArgs flag has a default")
            .args
    }
}

/// Bind `args.listen` and serve until Ctrl-C / SIGTERM.
///
/// After the first signal the server stops accepting connections and lets in-flight
/// requests finish; a second signal stops it at once.
pub async fn run(args: SimArgs) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    tracing::info!(
        addr = %listener.local_addr()?,
        model = %args.model,
        "simulated model server listening"
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut server = tokio::spawn(serve(listener, args, async {
        // A dropped sender also means "stop".
        let _ = stop_rx.await;
    }));
    tokio::select! {
        res = &mut server => return join_result(res),
        () = shutdown_signal() => {}
    }
    let _ = stop_tx.send(());
    tracing::info!("shutting down: waiting for in-flight requests (signal again to force)");
    tokio::select! {
        res = &mut server => join_result(res),
        () = shutdown_signal() => {
            tracing::warn!("forced shutdown");
            server.abort();
            Ok(())
        }
    }
}

fn join_result(res: Result<std::io::Result<()>, tokio::task::JoinError>) -> std::io::Result<()> {
    res.map_err(std::io::Error::other)?
}

/// Resolves on Ctrl-C, or on SIGTERM on Unix.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(%err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(err) => {
                tracing::error!(%err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_matches_flag_defaults() {
        let args = SimArgs::default();
        assert_eq!(args.listen, "127.0.0.1:8000".parse().unwrap());
        assert_eq!(args.model, "sim-model");
        assert_eq!(args.ttft_ms, 0);
        assert_eq!(args.tokens_per_second, 0.0);
        assert_eq!(args.output_tokens, 16);
        assert_eq!(args.error_rate, 0.0);
        assert_eq!(args.error_status, 500);
        assert_eq!(args.seed, None);
        assert_eq!(args.max_concurrency, 64);
        assert_eq!(args.embedding_dim, 8);
    }
}
