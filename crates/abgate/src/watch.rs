//! `abgate experiment watch [ID]`: a live view of running experiments, refreshed every
//! second, until they end. On a terminal the view is redrawn in place; otherwise (a
//! pipe, a file, CI) it prints plain lines, without escape codes, and each decision once.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use http::Method;
use serde_json::Value;

use crate::experiment_cli::{error_message, last_summary, Admin};

/// How often the view is refreshed.
const REFRESH: Duration = Duration::from_secs(1);
/// Width of the split bar, in characters (one per 5%).
const BAR: u64 = 20;

/// What went wrong reading the API: refused (exit 1) or unreachable (exit 2).
enum Trouble {
    Refused(String),
    Unreachable(String),
}

impl Trouble {
    fn exit(self) -> ExitCode {
        match self {
            Trouble::Refused(message) => {
                eprintln!("abgate experiment watch: {message}");
                ExitCode::from(1)
            }
            Trouble::Unreachable(message) => {
                eprintln!("abgate experiment watch: {message}");
                ExitCode::from(2)
            }
        }
    }
}

/// Watches experiment `id`, or every running experiment, until it (they all) ended:
/// exit 0 then, with an outcome line for each. `json`: one summary object a line per
/// experiment and refresh instead of the view.
pub(crate) async fn run(admin: &Admin, id: Option<&str>, json: bool) -> ExitCode {
    let started = Instant::now();
    let mut view = View::new(std::io::stdout().is_terminal() && !json);
    let mut watched: BTreeSet<String> = BTreeSet::new();
    let mut first = true;
    let mut ticks = tokio::time::interval(REFRESH);
    loop {
        ticks.tick().await;
        let summaries = match fetch(admin, id).await {
            Ok(s) => s,
            Err(Trouble::Refused(message)) if !first => {
                return Trouble::Refused(format!("{message} (deleted while watched?)")).exit();
            }
            Err(trouble) => return trouble.exit(),
        };
        // Without an id: every experiment running now, and any that starts meanwhile.
        for s in &summaries {
            if !is_ended(s) || (id.is_some() && first) {
                watched.insert(text(&s["id"]).to_owned());
            }
        }
        if first && watched.is_empty() {
            println!("no running experiment to watch");
            return ExitCode::SUCCESS;
        }
        first = false;
        let by_id: BTreeMap<&str, &Value> = summaries.iter().map(|s| (text(&s["id"]), s)).collect();
        let mut live = Vec::new();
        let mut outcomes = Vec::new();
        for name in watched.clone() {
            match by_id.get(name.as_str()) {
                Some(s) if is_ended(s) => {
                    outcomes.push(outcome(s));
                    watched.remove(&name);
                    if json {
                        println!("{s}");
                    }
                }
                Some(s) => live.push(*s),
                None => {
                    outcomes.push(format!("outcome: {name} was deleted"));
                    watched.remove(&name);
                }
            }
        }
        if json {
            for s in &live {
                println!("{s}");
            }
        } else {
            view.show(started.elapsed(), &live, &outcomes);
        }
        let _ = std::io::stdout().flush();
        if watched.is_empty() {
            return ExitCode::SUCCESS;
        }
    }
}

/// The experiments to show: the one asked for, or all.
async fn fetch(admin: &Admin, id: Option<&str>) -> Result<Vec<Value>, Trouble> {
    let path = match id {
        Some(id) => format!("/api/v1/experiments/{id}"),
        None => "/api/v1/experiments".to_owned(),
    };
    let (status, bytes) = admin
        .send(Method::GET, &path, None, None)
        .await
        .map_err(Trouble::Unreachable)?;
    if !status.is_success() {
        let message = error_message(&bytes);
        return Err(Trouble::Refused(format!("{status}: {message}")));
    }
    Ok(
        match serde_json::from_slice(&bytes).unwrap_or(Value::Null) {
            Value::Array(items) => items,
            one => vec![one],
        },
    )
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("?")
}

fn is_ended(summary: &Value) -> bool {
    matches!(
        summary["phase"].as_str(),
        Some("promoted" | "rolled_back" | "finished")
    )
}

/// `outcome: canary-1 rolled back to v1-0 (the baseline): roll back: ...`.
fn outcome(summary: &Value) -> String {
    let id = text(&summary["id"]);
    let what = match summary["phase"].as_str() {
        Some("promoted") => format!("promoted {}", text(&summary["winner"])),
        Some("rolled_back") => format!(
            "rolled back to {} (the baseline)",
            text(&summary["baseline"])
        ),
        _ => match summary["winner"].as_str() {
            Some(w) => format!("finished, winner {w}"),
            None => "finished, no winner".to_owned(),
        },
    };
    let last = last_summary(summary);
    if last.is_empty() {
        format!("outcome: {id} {what}")
    } else {
        format!("outcome: {id} {what}: {last}")
    }
}

/// `canary-1  ████░░░░░░░░░░░░░░░░ v1-0  80% | v1-1  20%  requests    412 (failed 1.2%)  running`:
/// the bar fills with the candidates' share; requests and failures are the current
/// period's (since the split last changed).
fn progress(summary: &Value) -> String {
    let baseline = text(&summary["baseline"]);
    let split: Vec<(&str, u64)> = summary["split"]
        .as_array()
        .map(|s| {
            s.iter()
                .map(|p| (p[0].as_str().unwrap_or("?"), p[1].as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    let split_bar = split_bar(&split, baseline);
    let (requests, failed) = summary["observations"]["variants"]
        .as_array()
        .map(|vs| {
            vs.iter().fold((0, 0), |(r, e), v| {
                (
                    r + v["requests"].as_u64().unwrap_or(0),
                    e + v["errors"].as_u64().unwrap_or(0),
                )
            })
        })
        .unwrap_or((0, 0));
    let rate = if requests > 0 {
        100.0 * failed as f64 / requests as f64
    } else {
        0.0
    };
    format!(
        "{}  {split_bar}  requests {requests:>6} (failed {failed}, {rate:.1}%)  {}",
        text(&summary["id"]),
        text(&summary["phase"])
    )
}

/// `████░░░░░░░░░░░░░░░░ v1-0  80% | v1-1  20%`: a bar filled with the candidates' share
/// of `split` (variant, percent), then each variant's share.
pub(crate) fn split_bar(split: &[(&str, u64)], baseline: &str) -> String {
    let candidates: u64 = split
        .iter()
        .filter(|(v, _)| *v != baseline)
        .map(|(_, w)| w)
        .sum();
    let bar: String = (0..BAR)
        .map(|i| {
            if i * (100 / BAR) < candidates {
                '█'
            } else {
                '░'
            }
        })
        .collect();
    let shares = split
        .iter()
        .map(|(v, w)| format!("{v} {w:>3}%"))
        .collect::<Vec<_>>()
        .join(" | ");
    format!("{bar} {shares}")
}

/// Where the view goes: redrawn in place on a terminal, appended otherwise.
struct View {
    terminal: bool,
    /// Lines of the live block drawn last (a terminal redraws over them).
    drawn: usize,
    /// The last decision printed for each experiment (plain output prints each once).
    decisions: BTreeMap<String, String>,
}

impl View {
    fn new(terminal: bool) -> Self {
        Self {
            terminal,
            drawn: 0,
            decisions: BTreeMap::new(),
        }
    }

    fn show(&mut self, elapsed: Duration, live: &[&Value], outcomes: &[String]) {
        let stamp = format!("[{:>3} s]", elapsed.as_secs());
        if self.terminal {
            // Up over the last block, clear to the end of the screen, draw again.
            if self.drawn > 0 {
                print!("\x1b[{}F\x1b[J", self.drawn);
            }
            for line in outcomes {
                println!("{line}");
            }
            self.drawn = 0;
            for s in live {
                println!("{stamp} {}", progress(s));
                println!("        decision: {}", last_summary(s));
                self.drawn += 2;
            }
            return;
        }
        for s in live {
            println!("{stamp} {}", progress(s));
            let id = text(&s["id"]).to_owned();
            let last = last_summary(s);
            if !last.is_empty() && self.decisions.get(&id).map(String::as_str) != Some(last) {
                println!("        decision: {last}");
                self.decisions.insert(id, last.to_owned());
            }
        }
        for line in outcomes {
            println!("{line}");
        }
    }
}
