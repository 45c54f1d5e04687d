//! `abgate experiment ...`: the experiments API from the command line; tables for people,
//! `--output json` for scripts.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

/// Arguments of `abgate experiment`.
#[derive(clap::Args, Debug)]
pub struct ExperimentArgs {
    /// The admin listener of the gateway.
    #[arg(long, default_value = "http://127.0.0.1:15000", global = true)]
    admin: String,
    /// The admin API's bearer token (else --token-file, ABGATE_ADMIN_TOKEN, or the token
    /// file beside the default state file).
    #[arg(long, global = true)]
    token: Option<String>,
    /// A file holding the token.
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
    /// `table` for people, `json` for scripts; `report` also takes `markdown` (what
    /// `table` gives it) and `html` (one self-contained page with charts).
    #[arg(short, long, value_enum, default_value_t = Output::Table, global = true)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Output {
    Table,
    Json,
    Markdown,
    Html,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Create an experiment from a file: an Experiment resource, its spec, or the seed's
    /// Experiment fields (YAML or JSON).
    Create {
        /// The file.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// List experiments.
    List,
    /// Show one experiment in detail: phase, strategy, split, each variant's figures in
    /// the current period, the verdict and the last decisions (`-o json`: its summary).
    Get {
        /// The experiment's id.
        id: String,
    },
    /// Set the split: `NAME=WEIGHT ...`.
    SetSplit {
        id: String,
        #[arg(required = true)]
        weights: Vec<String>,
    },
    /// Pause the controller's decisions.
    Pause { id: String },
    /// Let the controller decide again.
    Resume { id: String },
    /// Send all traffic to a variant (the candidate when there is one).
    Promote {
        id: String,
        #[arg(long)]
        variant: Option<String>,
    },
    /// Send all traffic to the declared baseline, from the next request on.
    Rollback { id: String },
    /// Delete an experiment; its host is left as it was.
    Delete { id: String },
    /// The report: Markdown (the default), JSON (`-o json`) or a self-contained HTML
    /// page with charts (`-o html > report.html`).
    Report { id: String },
    /// Follow an experiment live (every running one without ID), refreshed every
    /// second: split, requests and failures of the current period, phase, last decision.
    /// Exits 0 with an outcome line once it has (they all have) ended. On a terminal
    /// the view is redrawn in place; piped, it prints plain lines (`-o json`: one
    /// summary object a line).
    Watch {
        /// The experiment's id; every running experiment without it.
        id: Option<String>,
    },
}

/// Runs one command; exit 0 on success, 1 when the API refused, 2 when it cannot be reached.
pub fn run(args: ExperimentArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("abgate experiment: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(execute(args))
}

fn token(args: &ExperimentArgs) -> Option<String> {
    let read = |path: &std::path::Path| {
        std::fs::read_to_string(path)
            .ok()
            .map(|t| t.trim().to_owned())
    };
    if let Some(token) = &args.token {
        return Some(token.clone());
    }
    if let Some(file) = &args.token_file {
        return read(file);
    }
    if let Some(token) = std::env::var("ABGATE_ADMIN_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
    {
        return Some(token.trim().to_owned());
    }
    read(&crate::serve::token_path(
        &crate::serve::default_state_path(),
    ))
}

async fn execute(args: ExperimentArgs) -> ExitCode {
    let base = args.admin.trim_end_matches('/').to_owned();
    if matches!(args.output, Output::Markdown | Output::Html)
        && !matches!(args.command, Command::Report { .. })
    {
        eprintln!("abgate experiment: -o markdown and -o html are for `report`; use table or json");
        return ExitCode::from(2);
    }
    let admin = Admin::new(&base);
    if let Command::Watch { id } = &args.command {
        return crate::watch::run(&admin, id.as_deref(), args.output == Output::Json).await;
    }
    let (method, path, body): (Method, String, Option<Value>) = match &args.command {
        Command::Create { file } => {
            let document = match read_document(file) {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("abgate experiment: {e}");
                    return ExitCode::from(2);
                }
            };
            (Method::POST, "/api/v1/experiments".into(), Some(document))
        }
        Command::List => (Method::GET, "/api/v1/experiments".into(), None),
        Command::Get { id } => (Method::GET, format!("/api/v1/experiments/{id}"), None),
        Command::SetSplit { id, weights } => {
            let mut map = serde_json::Map::new();
            for pair in weights {
                let Some((name, weight)) = pair.split_once('=') else {
                    eprintln!("abgate experiment: give weights as NAME=WEIGHT, not `{pair}`");
                    return ExitCode::from(2);
                };
                let Ok(weight) = weight.parse::<u32>() else {
                    eprintln!("abgate experiment: weight `{weight}` is not a whole number");
                    return ExitCode::from(2);
                };
                map.insert(name.to_owned(), json!(weight));
            }
            (
                Method::POST,
                format!("/api/v1/experiments/{id}/split"),
                Some(json!({ "weights": map })),
            )
        }
        Command::Pause { id } => (
            Method::POST,
            format!("/api/v1/experiments/{id}/pause"),
            None,
        ),
        Command::Resume { id } => (
            Method::POST,
            format!("/api/v1/experiments/{id}/resume"),
            None,
        ),
        Command::Promote { id, variant } => (
            Method::POST,
            format!("/api/v1/experiments/{id}/promote"),
            Some(
                variant
                    .as_ref()
                    .map_or(json!({}), |v| json!({ "variant": v })),
            ),
        ),
        Command::Rollback { id } => (
            Method::POST,
            format!("/api/v1/experiments/{id}/rollback"),
            None,
        ),
        Command::Delete { id } => (Method::DELETE, format!("/api/v1/experiments/{id}"), None),
        Command::Watch { .. } => unreachable!("watch is handled above"),
        Command::Report { id } => {
            let format = match args.output {
                Output::Json => "",
                Output::Html => "?format=html",
                Output::Table | Output::Markdown => "?format=markdown",
            };
            (
                Method::GET,
                format!("/api/v1/experiments/{id}/report{format}"),
                None,
            )
        }
    };
    let token = (method != Method::GET).then(|| token(&args)).flatten();
    let (status, bytes) = match admin.send(method, &path, token.as_deref(), body).await {
        Ok(answer) => answer,
        Err(message) => {
            eprintln!("abgate experiment: {message} Point --admin at its admin listener");
            return ExitCode::from(2);
        }
    };
    if !status.is_success() {
        eprintln!("abgate experiment: {status}: {}", error_message(&bytes));
        if status == http::StatusCode::UNAUTHORIZED {
            eprintln!(
                "abgate experiment: the token is taken from --token, --token-file, \
                 ABGATE_ADMIN_TOKEN, or {} (written by `abgate serve` beside its state file)",
                crate::serve::token_path(&crate::serve::default_state_path()).display()
            );
        }
        return ExitCode::from(1);
    }
    let text = String::from_utf8_lossy(&bytes);
    match (args.output, serde_json::from_slice::<Value>(&bytes)) {
        (Output::Json | Output::Markdown | Output::Html, _) | (Output::Table, Err(_)) => {
            println!("{}", text.trim_end())
        }
        (Output::Table, Ok(Value::Array(items))) => print_table(&items),
        (Output::Table, Ok(item)) if matches!(args.command, Command::Get { .. }) => {
            let report = admin.get_json(&format!("{path}/report")).await;
            print_detail(&item, report.as_ref());
        }
        (Output::Table, Ok(item)) if item.get("split").is_some() => print_table(&[item]),
        (Output::Table, Ok(item)) if item.get("deleted").is_some() => {
            println!("{:<32} RESULT", "ID");
            println!("{:<32} deleted", item["deleted"].as_str().unwrap_or("?"));
        }
        (Output::Table, Ok(other)) => println!("{other}"),
    }
    ExitCode::SUCCESS
}

/// A running gateway's admin API, as the CLI calls it.
pub(crate) struct Admin {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
}

impl Admin {
    fn new(base: &str) -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build_http(),
            base: base.to_owned(),
        }
    }

    /// The answer's status and body; `Err` says the gateway could not be reached.
    pub(crate) async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<(http::StatusCode, Bytes), String> {
        let base = &self.base;
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{base}{path}"))
            .header("content-type", "application/json");
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let body = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
        let request = request.body(Full::new(body)).map_err(|e| e.to_string())?;
        let unreachable = |e: &dyn std::fmt::Display| {
            format!(
                "cannot reach the gateway's admin API at {base} ({e}); is `abgate serve` running there?"
            )
        };
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| unreachable(&e))?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(&e))?
            .to_bytes();
        Ok((status, bytes))
    }

    /// A GET's JSON answer, if it brings one.
    async fn get_json(&self, path: &str) -> Option<Value> {
        match self.send(Method::GET, path, None, None).await {
            Ok((status, bytes)) if status.is_success() => serde_json::from_slice(&bytes).ok(),
            _ => None,
        }
    }
}

/// What an API error answer says: its OpenAI-style `error.message`, else the body.
pub(crate) fn error_message(bytes: &[u8]) -> String {
    serde_json::from_slice::<Value>(bytes)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| String::from_utf8_lossy(bytes).into_owned())
}

/// One experiment for people: `summary` (the API's), with the verdict and the decision
/// log from its `report` when there is one.
fn print_detail(summary: &Value, report: Option<&Value>) {
    let text = |v: &Value| v.as_str().unwrap_or("—").to_owned();
    println!("experiment  {}", text(&summary["id"]));
    println!("host        {}", text(&summary["host"]));
    println!("strategy    {}", text(&summary["strategy"]));
    println!("phase       {}", text(&summary["phase"]));
    println!("baseline    {}", text(&summary["baseline"]));
    if let Some(winner) = summary["winner"].as_str() {
        println!("winner      {winner}");
    }
    println!(
        "split       {} (after {} steps)",
        split_text(summary),
        summary["steps"]
    );
    if let Some(verdict) = report.and_then(|r| r["verdict"].as_str()) {
        println!("verdict     {verdict}");
    }
    let number = |v: &Value, digits: usize| {
        v.as_f64()
            .map_or_else(|| "—".to_owned(), |x| format!("{x:.digits$}"))
    };
    if let Some(variants) = summary["observations"]["variants"].as_array() {
        println!();
        println!(
            "{:<20} {:>9} {:>8} {:>11} {:>11} {:>9}",
            "VARIANT", "REQUESTS", "ERRORS", "P95 MS", "TTFT P95", "TOK/S"
        );
        for v in variants {
            println!(
                "{:<20} {:>9} {:>8} {:>11} {:>11} {:>9}",
                text(&v["variant"]),
                v["requests"],
                v["errors"],
                number(&v["latency_p95_ms"], 1),
                number(&v["ttft_p95_ms"], 1),
                number(&v["tokens_per_second"], 1),
            );
        }
    }
    println!();
    println!("last decision: {}", last_summary(summary));
    if let Some(reason) = summary["last_reason"].as_str().filter(|r| !r.is_empty()) {
        println!("  why: {reason}");
    }
    let decisions = report
        .and_then(|r| r["decisions"].as_array())
        .cloned()
        .unwrap_or_default();
    if !decisions.is_empty() {
        println!();
        println!("DECISIONS (latest last)");
        for d in decisions.iter().rev().take(5).rev() {
            let headline = d["summary"]
                .as_str()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| d["reason"].as_str().unwrap_or("—"));
            println!(
                "  period {:<3} {:<12} {headline}",
                d["period"],
                text(&d["kind"])
            );
            println!("      why: {}", text(&d["reason"]));
        }
    }
}

fn print_table(items: &[Value]) {
    println!(
        "{:<32} {:<10} {:<12} {:<28} LAST DECISION",
        "ID", "STRATEGY", "PHASE", "SPLIT"
    );
    for item in items {
        let split = split_text(item);
        println!(
            "{:<32} {:<10} {:<12} {:<28} {}",
            item["id"].as_str().unwrap_or("?"),
            item["strategy"].as_str().unwrap_or("?"),
            item["phase"].as_str().unwrap_or("?"),
            split,
            last_summary(item)
        );
    }
}

/// An experiment's split as `v1-0 80%, v1-1 20%`.
fn split_text(item: &Value) -> String {
    item["split"]
        .as_array()
        .map(|s| {
            s.iter()
                .map(|p| format!("{} {}%", p[0].as_str().unwrap_or("?"), p[1]))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

/// An experiment's last decision in one line: its summary, else its reason (from a
/// gateway that gives no summary).
pub(crate) fn last_summary(item: &Value) -> &str {
    item["last_summary"]
        .as_str()
        .filter(|s| !s.is_empty())
        .or_else(|| item["last_reason"].as_str())
        .unwrap_or("")
}

/// A YAML or JSON file as a JSON document (the first document of a YAML stream).
fn read_document(path: &PathBuf) -> Result<Value, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if let Ok(v) = serde_json::from_str(&text) {
        return Ok(v);
    }
    let (documents, errors) =
        abgate_config::source::parse_stream(&Arc::from(path.as_path()), &text);
    if let Some(e) = errors.first() {
        return Err(format!("{}:{}: {}", path.display(), e.line, e.message));
    }
    documents
        .first()
        .map(|d| d.root.to_json())
        .ok_or_else(|| format!("{} holds no document", path.display()))
}
