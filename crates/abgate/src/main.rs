//! `abgate`: the command line that wires abgate's crates together.
#![forbid(unsafe_code)]

mod actuator;
mod analyze;
mod api;
mod demo;
mod experiment_cli;
mod openapi;
mod reload;
mod serve;
mod state;
mod stats_cli;
mod watch;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// A/B testing and progressive-delivery gateway for LLM inference.
#[derive(Parser, Debug)]
#[command(name = "abgate", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check Istio-compatible configuration, like `istioctl analyze`.
    Analyze(analyze::AnalyzeArgs),
    /// Run the gateway.
    Serve(Box<serve::ServeArgs>),
    /// Run a simulated OpenAI-compatible model server.
    Sim(abgate_sim::SimArgs),
    /// Manage experiments through a running gateway's admin API.
    Experiment(experiment_cli::ExperimentArgs),
    /// The experiment state file: `abgate state backup FILE`.
    State(state::StateArgs),
    /// Offline statistics: SRM checks and A/B comparisons from sufficient statistics.
    Stats(stats_cli::StatsArgs),
    /// Run the end-to-end demo (simulated models, gateway, load, canary experiment).
    Demo(demo::DemoArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match cli.command {
        Command::Analyze(args) => analyze::run(&args),
        Command::Serve(args) => serve::run(*args),
        Command::Sim(args) => run_async(abgate_sim::run(args)),
        Command::Demo(args) => demo::run(args),
        Command::Experiment(args) => experiment_cli::run(args),
        Command::State(args) => state::run(args),
        Command::Stats(args) => stats_cli::run(args),
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ABGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn run_async<F>(future: F) -> ExitCode
where
    F: std::future::Future<Output = std::io::Result<()>>,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("abgate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(future) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("abgate: {e}");
            ExitCode::FAILURE
        }
    }
}
