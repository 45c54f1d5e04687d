//! Reads the load of the endpoints behind LLM-aware clusters: each endpoint's Prometheus
//! metrics (`GET <metrics path>` on its own address), every interval, into the
//! endpoint's [`LoadReport`](abgate_router::load::LoadReport).
//!
//! One task per (address, path, interval), kept across route-table rebuilds while the
//! table still has an LLM-aware cluster there. A failed read leaves the last report to
//! age: once it is older than the balancer trusts (four intervals, at least a second),
//! the balancer falls back to least request instead of trusting old figures.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use abgate_config::model::LoadBalancer;
use abgate_outbound::Client;
use abgate_router::cluster::{now_ms, Endpoint};
use abgate_router::load::ServerLoad;
use abgate_router::RouteTable;
use tokio::sync::watch;
use tokio::task::AbortHandle;

/// A metrics page larger than this is not read (vLLM's is some tens of KiB).
const MAX_PAGE_BYTES: usize = 8 << 20;
/// The least time a read may take, whatever the interval.
const MIN_READ_TIMEOUT: Duration = Duration::from_millis(500);

/// What one scraping task reads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Target {
    authority: String,
    path: String,
    interval: Duration,
}

struct Task {
    /// The endpoints it writes to (one address may appear under several label sets).
    endpoints: Vec<Arc<Endpoint>>,
    handle: AbortHandle,
}

/// The running scraping tasks.
pub(crate) struct LoadScrapers {
    /// The gateway's runtime: tables may be rebuilt from threads outside it.
    runtime: tokio::runtime::Handle,
    client: Client,
    tasks: Mutex<HashMap<Target, Task>>,
    stopped: watch::Receiver<bool>,
}

impl LoadScrapers {
    /// Must be called inside the gateway's runtime.
    pub(crate) fn new(stopped: watch::Receiver<bool>) -> Self {
        Self {
            runtime: tokio::runtime::Handle::current(),
            // An endpoint's own page: not held to the gates' allow-list.
            client: Client::unrestricted(),
            tasks: Mutex::default(),
            stopped,
        }
    }

    /// Makes the running tasks those `table` needs: starts the new ones, stops the ones
    /// no cluster asks for any more, restarts those whose endpoints changed.
    pub(crate) fn sync(&self, table: &RouteTable) {
        let mut wanted: HashMap<Target, Vec<Arc<Endpoint>>> = HashMap::new();
        for cluster in &table.clusters {
            let Some(LoadBalancer::LlmAware(llm)) = &cluster.policy.load_balancer else {
                continue;
            };
            for endpoint in &cluster.endpoints {
                let target = Target {
                    authority: endpoint.authority.clone(),
                    path: llm.metrics_path.clone(),
                    interval: llm.interval,
                };
                let list = wanted.entry(target).or_default();
                if !list.iter().any(|e| Arc::ptr_eq(e, endpoint)) {
                    list.push(Arc::clone(endpoint));
                }
            }
        }
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        tasks.retain(|target, task| {
            let keep = wanted.get(target).is_some_and(|endpoints| {
                endpoints.len() == task.endpoints.len()
                    && endpoints
                        .iter()
                        .all(|e| task.endpoints.iter().any(|t| Arc::ptr_eq(e, t)))
            });
            if !keep {
                task.handle.abort();
            }
            keep
        });
        for (target, endpoints) in wanted {
            if tasks.contains_key(&target) {
                continue;
            }
            let handle = self
                .runtime
                .spawn(scrape(
                    self.client.clone(),
                    target.clone(),
                    endpoints.clone(),
                    self.stopped.clone(),
                ))
                .abort_handle();
            tasks.insert(target, Task { endpoints, handle });
        }
    }
}

impl Drop for LoadScrapers {
    fn drop(&mut self) {
        let tasks = self.tasks.get_mut().unwrap_or_else(|e| e.into_inner());
        for task in tasks.values() {
            task.handle.abort();
        }
    }
}

/// Reads `target` every interval until the gateway stops (or the task is aborted).
async fn scrape(
    client: Client,
    target: Target,
    endpoints: Vec<Arc<Endpoint>>,
    mut stopped: watch::Receiver<bool>,
) {
    let url = format!("http://{}{}", target.authority, target.path);
    let timeout = target.interval.max(MIN_READ_TIMEOUT);
    let mut ticks = tokio::time::interval(target.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stopped.changed() => return,
        }
        match read(&client, &url, timeout).await {
            Ok(load) => {
                let now = now_ms();
                for endpoint in &endpoints {
                    endpoint.load.set(load, now, endpoint.active());
                }
                if failing {
                    tracing::info!(%url, "reading the endpoint's load again");
                    failing = false;
                }
            }
            // The last reading stays until it is too old to trust (a few intervals), so
            // one slow read on a busy machine does not switch the balancer.
            Err(error) => {
                if !failing {
                    tracing::warn!(%url, %error, "cannot read the endpoint's load; its last reading ages out, then least request balances until it answers");
                    failing = true;
                }
            }
        }
    }
}

/// One read of a metrics page, within `timeout`.
async fn read(client: &Client, url: &str, timeout: Duration) -> Result<ServerLoad, String> {
    let answer = client
        .get(url, "text/plain", MAX_PAGE_BYTES, timeout)
        .await
        .map_err(|e| e.to_string())?;
    if !answer.status.is_success() {
        return Err(format!("status {}", answer.status));
    }
    let text = std::str::from_utf8(&answer.body).map_err(|_| "the page is not UTF-8".to_owned())?;
    ServerLoad::parse(text).ok_or_else(|| {
        "the page has no queue metric abgate knows (such as vllm:num_requests_waiting)".to_owned()
    })
}
