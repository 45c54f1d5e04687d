//! The compiled route table: listeners, virtual hosts and their ordered rules, built once
//! per configuration and swapped whole.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use abgate_config::model::{
    CorsPolicy, Destination, Experiment, Fault, HeaderOps, HeaderRules, KeySource, MatchBlock,
    Protocol, Redirect, RetryPolicy, Rewrite, RouteAction, ServerTls, Strategy, VirtualService,
};
use abgate_config::{host_matches, Config, ServiceView};
use abgate_telemetry::{DestinationLabels, Telemetry};
use bytes::Bytes;

use crate::cluster::{Cluster, ClusterState, Endpoint, Unavailable};
use crate::request::{block_matches, RequestView};
use crate::split::{Split, Target};

/// The header that carries the OpenAI `model` of a request body to matching.
pub const MODEL_HEADER: &str = "x-gateway-model-name";

/// VirtualService annotation naming a stickiness key for its weighted rules:
/// `header:<name>` or `cookie:<name>`. The first destination of a rule is its baseline.
pub const STICKINESS_ANNOTATION: &str = "abgate.dev/stickiness";

/// How the table is built.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Where each target's series are registered (the same labels keep their counters
    /// across rebuilds).
    pub telemetry: Arc<Telemetry>,
    /// Serve every plain-HTTP Gateway server on this port instead of the declared ones
    /// (so that abgate runs unprivileged); with no Gateway at all, one listener on this
    /// port serves every VirtualService (the mesh view).
    pub plain_http_port: Option<u16>,
    /// Serve every HTTPS Gateway server on this port instead of the declared ones.
    pub tls_port: Option<u16>,
    /// The gateway's own bound listener addresses: an endpoint at one of them would send
    /// requests back into the gateway ([`Endpoint::loops_back`]).
    pub own_addresses: Vec<std::net::SocketAddr>,
}

impl Default for BuildOptions {
    fn default() -> Self {
        Self {
            telemetry: Telemetry::new(),
            plain_http_port: None,
            tls_port: None,
            own_addresses: Vec::new(),
        }
    }
}

/// What a rule does, compiled.
#[derive(Debug)]
pub enum Action {
    /// Forward to a target of the split.
    Forward(Split),
    /// Answer with a redirect.
    Redirect(Redirect),
    /// Answer directly.
    DirectResponse {
        /// Status.
        status: u16,
        /// Body.
        body: Bytes,
    },
}

/// A compiled rule.
#[derive(Debug)]
pub struct Route {
    /// `namespace/virtualservice http[i]` (or the rule's name), for logs.
    pub name: Arc<str>,
    /// Match blocks; empty matches everything.
    pub matches: Vec<MatchBlock>,
    /// What to do.
    pub action: Action,
    /// Rule-level header changes.
    pub headers: HeaderRules,
    /// Rewrite before forwarding.
    pub rewrite: Option<Rewrite>,
    /// Whole-request timeout.
    pub timeout: Option<Duration>,
    /// Retries.
    pub retries: RetryPolicy,
    /// Whether this route's retries count against Envoy's default cap on retries in
    /// flight ([`DEFAULT_MAX_RETRIES`](crate::cluster::DEFAULT_MAX_RETRIES)) when the
    /// cluster's `connectionPool` sets no `maxRetries`: true for retries nobody asked for
    /// (Istio's default, an experiment's), false for a VirtualService's own `retries`.
    pub retries_capped: bool,
    /// Fault injection.
    pub fault: Option<Fault>,
    /// Mirror clusters and the percentage each gets.
    pub mirrors: Vec<(Target, f64)>,
    /// CORS.
    pub cors: Option<CorsPolicy>,
    /// The experiment that installed this rule.
    pub experiment: Option<Arc<str>>,
}

/// The rules for one host name, merged from every VirtualService that lists it.
#[derive(Debug, Default)]
pub struct VirtualHost {
    /// Rules in order: experiments' first, then each VirtualService's.
    pub routes: Vec<Arc<Route>>,
    /// Whether some rule matches on [`MODEL_HEADER`], so the body's `model` must be read.
    pub reads_model: bool,
}

impl VirtualHost {
    /// The first rule in order whose matches accept the request, with the index of the
    /// match block that did (`None` for a rule without matches): a prefix rewrite or
    /// redirect replaces the prefix that block matched.
    pub fn route(&self, req: &RequestView<'_>) -> Option<(&Arc<Route>, Option<usize>)> {
        self.routes.iter().find_map(|r| {
            if r.matches.is_empty() {
                return Some((r, None));
            }
            r.matches
                .iter()
                .position(|b| block_matches(b, req))
                .map(|i| (r, Some(i)))
        })
    }
}

#[derive(Debug, Default)]
struct HostIndex {
    exact: HashMap<String, Arc<VirtualHost>>,
    /// `(suffix including the dot, host)`, longest suffix first.
    suffixes: Vec<(String, Arc<VirtualHost>)>,
    any: Option<Arc<VirtualHost>>,
}

impl HostIndex {
    fn find(&self, host: &str) -> Option<&Arc<VirtualHost>> {
        self.exact
            .get(host)
            .or_else(|| {
                self.suffixes
                    .iter()
                    .find(|(s, _)| host.ends_with(s.as_str()))
                    .map(|(_, v)| v)
            })
            .or(self.any.as_ref())
    }
}

/// A Gateway server served by a listener.
#[derive(Debug, Clone)]
pub struct Server {
    /// `namespace/name` of its Gateway, or `mesh`.
    pub gateway: String,
    /// The port the Gateway declares.
    pub port: u16,
    /// Hosts it accepts.
    pub hosts: Vec<String>,
    /// TLS settings (HTTPS servers).
    pub tls: Option<ServerTls>,
    /// Bind address from the Gateway.
    pub bind: Option<String>,
}

/// One listening port and what it serves.
#[derive(Debug)]
pub struct Listener {
    /// The port to listen on.
    pub port: u16,
    /// Whether it terminates TLS.
    pub tls: bool,
    /// Its servers.
    pub servers: Vec<Server>,
    by_gateway: HashMap<String, HostIndex>,
}

/// Why a request found no rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoRoute {
    /// No server on this listener accepts the host.
    NoServer,
    /// No VirtualService for the host.
    NoVirtualHost,
    /// No rule matched.
    NoMatch,
}

/// A routing decision's first half: the rule a request takes.
#[derive(Debug)]
pub struct Routed<'t> {
    /// The virtual host.
    pub vhost: &'t VirtualHost,
    /// The rule.
    pub route: &'t Arc<Route>,
}

impl Listener {
    /// The gateway whose server on this listener accepts `host` (lowercase, no port).
    pub fn gateway_for(&self, host: &str) -> Option<&Server> {
        self.servers
            .iter()
            .find(|s| s.hosts.iter().any(|h| h == host))
            .or_else(|| {
                self.servers
                    .iter()
                    .find(|s| s.hosts.iter().any(|h| host_matches(h, host)))
            })
    }

    /// The virtual host for a request's host (lowercase, no port) through `gateway`.
    pub fn virtual_host(&self, gateway: &str, host: &str) -> Option<&Arc<VirtualHost>> {
        self.by_gateway.get(gateway)?.find(host)
    }

    /// Finds the rule a request takes: its server, virtual host, then the first rule in
    /// order whose matches accept it.
    pub fn route<'t>(&'t self, host: &str, req: &RequestView<'_>) -> Result<Routed<'t>, NoRoute> {
        let vhost = self
            .virtual_host(req.gateway, host)
            .ok_or(NoRoute::NoVirtualHost)?;
        let (route, _) = vhost.route(req).ok_or(NoRoute::NoMatch)?;
        Ok(Routed { vhost, route })
    }
}

/// Lowercases a Host header and drops its port.
pub fn host_of(authority: &str) -> String {
    let host = if authority.starts_with('[') {
        authority.find(']').map_or(authority, |i| &authority[..=i])
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, p)| {
            if p.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                authority
            }
        })
    };
    host.to_ascii_lowercase()
}

/// An immutable routing snapshot.
#[derive(Debug, Default)]
pub struct RouteTable {
    /// Listeners by port.
    pub listeners: Vec<Listener>,
    /// Endpoints by identity, so the next table keeps their live counters.
    endpoints: HashMap<String, Arc<Endpoint>>,
    /// Every cluster a route or mirror sends to, in the order first met.
    pub clusters: Vec<Arc<Cluster>>,
    /// Problems met while building (the config's own diagnostics are reported elsewhere).
    pub notes: Vec<String>,
}

impl RouteTable {
    /// Marks the endpoints that are one of `own` (the gateway's listeners, once bound)
    /// as [`Endpoint::loops_back`]; a table built later with
    /// [`BuildOptions::own_addresses`] marks its own.
    pub fn mark_own_addresses(&self, own: &[std::net::SocketAddr]) {
        for endpoint in self.endpoints.values() {
            endpoint.set_loops_back(points_at_own(&endpoint.authority, own));
        }
    }

    /// Compiles a configuration. `previous` lends its endpoints and its clusters' counters
    /// so that in-flight counts, circuit breakers and outlier detection carry over a
    /// reload.
    pub fn build(config: &Config, options: &BuildOptions, previous: Option<&RouteTable>) -> Self {
        let previous_states = previous
            .map(|p| {
                p.clusters
                    .iter()
                    .map(|c| (c.key(), Arc::clone(&c.state)))
                    .collect()
            })
            .unwrap_or_default();
        let mut b = Builder {
            telemetry: &options.telemetry,
            config,
            clusters: HashMap::new(),
            order: Vec::new(),
            endpoints: HashMap::new(),
            previous: previous.map(|p| &p.endpoints),
            previous_states,
            services: HashMap::new(),
            own_addresses: &options.own_addresses,
        };
        let mut notes = Vec::new();

        // Servers, grouped into listeners by port.
        let mut servers: Vec<(u16, bool, Server)> = Vec::new();
        for gw in &config.gateways {
            let gateway = format!("{}/{}", gw.meta.namespace, gw.meta.name);
            for s in &gw.servers {
                let tls = match s.protocol {
                    Protocol::Http | Protocol::Http2 | Protocol::Grpc => false,
                    Protocol::Https => true,
                    Protocol::Tls | Protocol::Tcp => {
                        notes.push(format!(
                            "{gateway} server {}: port {} ({:?}) is not served",
                            s.index, s.port, s.protocol
                        ));
                        continue;
                    }
                };
                let port = match (tls, options.plain_http_port, options.tls_port) {
                    (false, Some(p), _) | (true, _, Some(p)) => p,
                    _ => s.port,
                };
                let server = Server {
                    gateway: gateway.clone(),
                    port: s.port,
                    hosts: s.hosts.clone(),
                    tls: s.tls.clone(),
                    bind: s.bind.clone(),
                };
                servers.push((port, tls, server));
            }
        }
        if config.gateways.is_empty() {
            if let Some(port) = options.plain_http_port {
                servers.push((
                    port,
                    false,
                    Server {
                        gateway: "mesh".into(),
                        port,
                        hosts: vec!["*".into()],
                        tls: None,
                        bind: None,
                    },
                ));
            }
        }

        let experiments: Vec<(String, Arc<Route>)> = config
            .experiments
            .iter()
            .map(|e| (e.host.clone(), Arc::new(b.experiment_route(e))))
            .collect();

        // Compile each VirtualService's rules once; listeners share them.
        let compiled: Vec<(&VirtualService, Vec<Arc<Route>>)> = config
            .virtual_services
            .iter()
            .map(|vs| (vs, b.virtual_service_routes(vs)))
            .collect();

        let mut listeners: Vec<Listener> = Vec::new();
        for (port, tls, server) in servers {
            let listener = match listeners.iter_mut().find(|l| l.port == port) {
                Some(l) => {
                    if l.tls != tls {
                        notes.push(format!(
                            "port {port} mixes HTTP and HTTPS servers; {} is skipped",
                            server.gateway
                        ));
                        continue;
                    }
                    l
                }
                None => {
                    listeners.push(Listener {
                        port,
                        tls,
                        servers: Vec::new(),
                        by_gateway: HashMap::new(),
                    });
                    listeners.last_mut().expect("just pushed")
                }
            };
            if !listener.by_gateway.contains_key(&server.gateway) {
                let index = host_index(&server.gateway, &compiled, &experiments);
                listener.by_gateway.insert(server.gateway.clone(), index);
            }
            listener.servers.push(server);
        }
        RouteTable {
            listeners,
            endpoints: b.endpoints,
            clusters: b.order,
            notes,
        }
    }

    /// The listener on a port.
    pub fn listener(&self, port: u16) -> Option<&Listener> {
        self.listeners.iter().find(|l| l.port == port)
    }
}

/// Virtual hosts for the VirtualServices bound to `gateway` (all of them in the mesh view).
fn host_index(
    gateway: &str,
    compiled: &[(&VirtualService, Vec<Arc<Route>>)],
    experiments: &[(String, Arc<Route>)],
) -> HostIndex {
    let mut by_host: BTreeMap<String, Vec<Arc<Route>>> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for (vs, routes) in compiled {
        let bound = gateway == "mesh" || vs.gateways.iter().any(|g| g == gateway);
        if !bound {
            continue;
        }
        for host in vs.hosts.iter().flat_map(|h| host_aliases(h)) {
            if !by_host.contains_key(&host) {
                order.push(host.clone());
            }
            by_host
                .entry(host)
                .or_default()
                .extend(routes.iter().cloned());
        }
    }
    let mut index = HostIndex::default();
    for host in order {
        let mut routes = by_host.remove(&host).unwrap_or_default();
        // Experiments on a service go ahead of every host rule that routes to it.
        let ahead: Vec<Arc<Route>> = experiments
            .iter()
            .filter(|(service, _)| routes.iter().any(|r| forwards_to(r, service)))
            .map(|(_, r)| Arc::clone(r))
            .collect();
        if !ahead.is_empty() {
            routes.splice(0..0, ahead);
        }
        let reads_model = routes.iter().any(|r| {
            r.matches.iter().any(|m| {
                m.headers
                    .iter()
                    .chain(&m.without_headers)
                    .any(|(n, _)| n == MODEL_HEADER)
            })
        });
        let vhost = Arc::new(VirtualHost {
            routes,
            reads_model,
        });
        if host == "*" {
            index.any = Some(vhost);
        } else if let Some(suffix) = host.strip_prefix('*') {
            index.suffixes.push((suffix.to_owned(), vhost));
        } else {
            index.exact.insert(host, vhost);
        }
    }
    index
        .suffixes
        .sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
    index
}

fn forwards_to(route: &Route, service: &str) -> bool {
    match &route.action {
        Action::Forward(split) => split.targets.iter().any(|t| t.cluster.host == service),
        _ => false,
    }
}

/// The names a host answers to: a Kubernetes-style FQDN also answers to its short forms.
fn host_aliases(host: &str) -> Vec<String> {
    let mut names = vec![host.to_owned()];
    if let Some(prefix) = host.strip_suffix(".svc.cluster.local") {
        if let Some((name, _ns)) = prefix.split_once('.') {
            names.push(format!("{prefix}.svc"));
            names.push(prefix.to_owned());
            names.push(name.to_owned());
        }
    }
    names
}

struct Builder<'c> {
    telemetry: &'c Telemetry,
    config: &'c Config,
    clusters: HashMap<(String, Option<String>, Option<u16>), Arc<Cluster>>,
    order: Vec<Arc<Cluster>>,
    endpoints: HashMap<String, Arc<Endpoint>>,
    previous: Option<&'c HashMap<String, Arc<Endpoint>>>,
    previous_states: HashMap<String, Arc<ClusterState>>,
    services: HashMap<String, Option<ServiceView>>,
    own_addresses: &'c [std::net::SocketAddr],
}

impl Builder<'_> {
    fn virtual_service_routes(&mut self, vs: &VirtualService) -> Vec<Arc<Route>> {
        let sticky = vs
            .meta
            .annotations
            .get(STICKINESS_ANNOTATION)
            .and_then(|v| parse_key_source(v));
        vs.http
            .iter()
            .enumerate()
            .map(|(i, rule)| {
                let id = rule.name.clone().unwrap_or_else(|| format!("http[{i}]"));
                let name: Arc<str> = format!("{}/{} {id}", vs.meta.namespace, vs.meta.name).into();
                let action = match &rule.action {
                    RouteAction::Forward(dests) => {
                        let targets = dests
                            .iter()
                            .map(|d| {
                                let cluster = self.cluster(&d.destination);
                                self.target(
                                    cluster,
                                    d.weight,
                                    d.headers.clone(),
                                    &vs.meta.namespace,
                                    None,
                                )
                            })
                            .collect();
                        let key = sticky
                            .clone()
                            .map(|k| (k, format!("{}/{}/{id}", vs.meta.namespace, vs.meta.name)));
                        Action::Forward(Split::new(targets, key, 0))
                    }
                    RouteAction::Redirect(r) => Action::Redirect(r.clone()),
                    RouteAction::DirectResponse { status, body } => Action::DirectResponse {
                        status: *status,
                        body: Bytes::from(body.clone()),
                    },
                };
                Arc::new(Route {
                    name,
                    matches: rule.matches.clone(),
                    action,
                    headers: rule.headers.clone(),
                    rewrite: rule.rewrite.clone(),
                    timeout: rule.timeout,
                    retries: rule.retries.clone(),
                    retries_capped: !rule.retries_configured,
                    fault: rule.fault.clone(),
                    mirrors: rule
                        .mirrors
                        .iter()
                        .map(|m| {
                            let cluster = self.cluster(&m.destination);
                            let target = self.target(
                                cluster,
                                0,
                                HeaderRules::default(),
                                &vs.meta.namespace,
                                None,
                            );
                            (target, m.percentage)
                        })
                        .collect(),
                    cors: rule.cors.clone(),
                    experiment: None,
                })
            })
            .collect()
    }

    /// The rule an experiment installs ahead of its host's rules, as the seed's
    /// ExperimentManager generates it: the experiment's match, the variants' split with
    /// `x-experiment-id` and `x-variant` response headers, a 30s timeout and 3 retries of 10s.
    fn experiment_route(&mut self, e: &Experiment) -> Route {
        let targets = e
            .variants
            .iter()
            .map(|v| {
                let destination = Destination {
                    host: e.host.clone(),
                    subset: Some(v.subset.clone()),
                    port: None,
                };
                let response = HeaderOps {
                    set: vec![
                        ("x-experiment-id".into(), e.id.clone()),
                        ("x-variant".into(), v.name.clone()),
                    ],
                    ..HeaderOps::default()
                };
                let cluster = self.cluster(&destination);
                let headers = HeaderRules {
                    request: HeaderOps::default(),
                    response,
                };
                self.target(
                    cluster,
                    v.weight,
                    headers,
                    &e.meta.namespace,
                    Some((&e.id, &v.name)),
                )
            })
            .collect();
        let sticky = e
            .stickiness
            .as_ref()
            .map(|s| (s.source.clone(), s.salt.clone()));
        // A mirror experiment's candidates get a shadow copy of every request its users
        // send (they only ever see the baseline's answers), measured under their variant.
        // So does a blue-green's green (its first candidate) until it has traffic of its
        // own: the evidence its switch waits for.
        let shadowed: Vec<usize> = match e.strategy {
            Strategy::Mirror => (0..e.variants.len()).filter(|&i| i != e.baseline).collect(),
            Strategy::BlueGreen => (0..e.variants.len())
                .find(|&i| i != e.baseline)
                .filter(|&green| e.variants[green].weight == 0)
                .into_iter()
                .collect(),
            _ => Vec::new(),
        };
        let mirrors = {
            shadowed
                .iter()
                .map(|&i| &e.variants[i])
                .map(|v| {
                    let destination = Destination {
                        host: e.host.clone(),
                        subset: Some(v.subset.clone()),
                        port: None,
                    };
                    let cluster = self.cluster(&destination);
                    let target = self.target(
                        cluster,
                        0,
                        HeaderRules::default(),
                        &e.meta.namespace,
                        Some((&e.id, &v.name)),
                    );
                    (target, 100.0)
                })
                .collect()
        };
        Route {
            name: format!("experiment-{}", e.id).into(),
            matches: e.matches.clone(),
            action: Action::Forward(Split::new(targets, sticky, e.baseline)),
            headers: HeaderRules::default(),
            rewrite: None,
            timeout: Some(Duration::from_secs(30)),
            retries: RetryPolicy {
                attempts: 3,
                per_try_timeout: Some(Duration::from_secs(10)),
                ..RetryPolicy::istio_default()
            },
            retries_capped: true,
            fault: None,
            mirrors,
            cors: None,
            experiment: Some(e.id.as_str().into()),
        }
    }

    /// A target with a telemetry series for each of its cluster's endpoints.
    fn target(
        &mut self,
        cluster: Arc<Cluster>,
        weight: u32,
        headers: HeaderRules,
        namespace: &str,
        experiment: Option<(&str, &str)>,
    ) -> Target {
        let labels = |endpoint: Option<&Endpoint>| {
            let namespace = cluster
                .host
                .strip_suffix(".svc.cluster.local")
                .and_then(|h| h.split('.').nth(1))
                .unwrap_or(namespace);
            let mut l = DestinationLabels::new(&cluster.host, namespace);
            l.destination_subset = cluster.subset.clone().unwrap_or_default();
            if let Some(endpoint) = endpoint {
                if let Some(v) = endpoint.labels.get("version") {
                    l.destination_version.clone_from(v);
                }
                if let Some(app) = endpoint.labels.get("app") {
                    l.destination_workload.clone_from(app);
                }
                if let Some(model) = endpoint.labels.get("model") {
                    l.model_name.clone_from(model);
                }
            }
            if let Some((id, variant)) = experiment {
                l.experiment_id = id.to_owned();
                l.variant = variant.to_owned();
            }
            l
        };
        let series = cluster
            .endpoints
            .iter()
            .map(|e| self.telemetry.destination(labels(Some(e))))
            .collect();
        let unplaced = self.telemetry.destination(labels(None));
        let model_rewrite = headers
            .request
            .set
            .iter()
            .find(|(name, _)| name == MODEL_HEADER)
            .map(|(_, model)| model.clone());
        Target {
            weight,
            headers,
            model_rewrite,
            variant: experiment.map(|(_, v)| v.into()),
            series,
            unplaced,
            cluster,
        }
    }

    fn service(&mut self, host: &str) -> Option<ServiceView> {
        let config = self.config;
        self.services
            .entry(host.to_owned())
            .or_insert_with(|| config.service(host))
            .clone()
    }

    fn cluster(&mut self, d: &Destination) -> Arc<Cluster> {
        let key = (d.host.clone(), d.subset.clone(), d.port);
        if let Some(c) = self.clusters.get(&key) {
            return Arc::clone(c);
        }
        let rule = self.config.destination_rule(&d.host);
        let policy = rule
            .as_ref()
            .map(|r| r.policy_for(d.subset.as_deref()))
            .unwrap_or_default();
        let (endpoints, unavailable) = match self.service(&d.host) {
            None => (Vec::new(), Some(Unavailable::UnknownHost)),
            Some(service) => {
                let selector = match &d.subset {
                    None => Some(BTreeMap::new()),
                    Some(s) => rule
                        .as_ref()
                        .and_then(|r| r.subset(s))
                        .map(|s| s.labels.clone()),
                };
                match selector {
                    None => (Vec::new(), Some(Unavailable::NoSuchSubset)),
                    Some(selector) => {
                        let eps: Vec<Arc<Endpoint>> = service
                            .endpoints
                            .iter()
                            .filter(|e| e.selected_by(&selector))
                            .filter_map(|e| {
                                endpoint_authority(&service, e, d.port)
                                    .map(|a| self.endpoint(a, &e.labels))
                            })
                            .collect();
                        let why = eps.is_empty().then_some(Unavailable::NoEndpoints);
                        (eps, why)
                    }
                }
            }
        };
        let mut cluster = Cluster::new(
            d.host.clone(),
            d.subset.clone(),
            d.port,
            endpoints,
            unavailable,
            policy,
        );
        if let Some(state) = self.previous_states.get(&cluster.key()) {
            cluster.state = Arc::clone(state);
        }
        let cluster = Arc::new(cluster);
        self.clusters.insert(key, Arc::clone(&cluster));
        self.order.push(Arc::clone(&cluster));
        cluster
    }

    fn endpoint(&mut self, authority: String, labels: &BTreeMap<String, String>) -> Arc<Endpoint> {
        let id = format!("{authority} {labels:?}");
        if let Some(e) = self.endpoints.get(&id) {
            return Arc::clone(e);
        }
        let e = self
            .previous
            .and_then(|p| p.get(&id).cloned())
            .unwrap_or_else(|| Arc::new(Endpoint::new(authority, labels.clone())));
        e.set_loops_back(points_at_own(&e.authority, self.own_addresses));
        self.endpoints.insert(id, Arc::clone(&e));
        e
    }
}

/// Whether `authority` (an IP literal and port) is one of the gateway's own listeners: the
/// same port on the same address, or on any address when the listener is bound to all
/// (loopback then surely reaches it). Host names are not resolved here; the hop count
/// catches loops through them.
fn points_at_own(authority: &str, own: &[std::net::SocketAddr]) -> bool {
    let Ok(addr) = authority.parse::<std::net::SocketAddr>() else {
        return false;
    };
    own.iter().any(|listener| {
        listener.port() == addr.port()
            && (listener.ip() == addr.ip()
                || (listener.ip().is_unspecified()
                    && (addr.ip().is_loopback() || addr.ip().is_unspecified())))
    })
}

/// `address:port` of an endpoint for a destination port: the service port named by the
/// destination (or the service's first), mapped through the endpoint's own `ports` by
/// name, else the port's `targetPort`, else its number.
fn endpoint_authority(
    service: &ServiceView,
    e: &abgate_config::model::Endpoint,
    port: Option<u16>,
) -> Option<String> {
    let service_port = match port {
        Some(p) => service.ports.iter().find(|sp| sp.number == p),
        None => service.ports.first(),
    };
    let number = match service_port {
        Some(sp) => e
            .ports
            .get(&sp.name)
            .copied()
            .or(sp.target_port)
            .unwrap_or(sp.number),
        None => port.or_else(|| e.ports.values().next().copied())?,
    };
    let address = if e.address.contains(':') && !e.address.starts_with('[') {
        format!("[{}]", e.address)
    } else {
        e.address.clone()
    };
    Some(format!("{address}:{number}"))
}

/// `header:<name>` or `cookie:<name>`.
pub fn parse_key_source(text: &str) -> Option<KeySource> {
    match text.split_once(':')? {
        ("header", name) if !name.is_empty() => {
            Some(KeySource::Header(name.trim().to_ascii_lowercase()))
        }
        ("cookie", name) if !name.is_empty() => Some(KeySource::Cookie(name.trim().to_owned())),
        _ => None,
    }
}
