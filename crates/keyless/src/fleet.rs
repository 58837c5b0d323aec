//! Several keyds holding the same keys, used as one: each request goes to a
//! healthy keyd with the fewest requests outstanding (a slow keyd gets
//! fewer), a request whose keyd fails is retried once on another healthy
//! one, and every keyd is checked with PING at an interval, so that one that
//! failed is taken back once it answers again.
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use sealtls_custody_proto::{Request, Response};
use tracing::{info, warn};

use crate::client::{KeydClient, KeydError};

/// How often each keyd is sent a PING unless told otherwise.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(1);

/// One keyd of a fleet and what is known of its health.
struct Member {
    client: Arc<KeydClient>,
    healthy: AtomicBool,
    outstanding: AtomicUsize,
    /// Requests that failed here and were retried on another keyd.
    failovers: Counter,
    /// 1 while healthy, for Prometheus.
    up: Gauge,
    /// Why it was last found down.
    last_error: Mutex<String>,
}

/// What a status page shows of one keyd.
#[derive(Clone, Debug)]
pub struct MemberHealth {
    /// Where it is.
    pub endpoint: String,
    /// Whether requests go to it.
    pub healthy: bool,
    /// Why it was last found down (empty if never).
    pub last_error: String,
}

/// Several keyds holding the same keys.
pub struct KeydFleet {
    members: Vec<Member>,
    interval: Duration,
    checker: OnceLock<()>,
    /// A digest of the key and chain last served per domain, and by which
    /// keyd, to report keyds that disagree. Bounded by the keys keyd holds.
    chains: Mutex<HashMap<String, (u64, usize)>>,
}

/// Marks the outstanding count of a member for the time of one request.
struct Outstanding<'a>(&'a AtomicUsize);

impl<'a> Outstanding<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for Outstanding<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Whether an error says the keyd is down, rather than that it refused.
fn is_down(e: &KeydError) -> bool {
    // A keyd that refuses our TLS session serves nothing, as one that is down.
    matches!(e, KeydError::Unreachable { .. } | KeydError::Timeout(..) | KeydError::Tls { .. })
}

impl KeydFleet {
    /// A fleet of these keyds (at least one), each checked every `interval`
    /// (zero: never; a keyd found down then gets requests again only when
    /// every keyd is down).
    pub fn new(clients: Vec<Arc<KeydClient>>, interval: Duration) -> Arc<Self> {
        assert!(!clients.is_empty(), "a keyd fleet needs at least one keyd");
        let members = clients
            .into_iter()
            .map(|client| Member {
                client,
                healthy: AtomicBool::new(true),
                outstanding: AtomicUsize::new(0),
                failovers: Counter::default(),
                up: Gauge::default(),
                last_error: Mutex::new(String::new()),
            })
            .collect();
        let fleet = Arc::new(Self { members, interval, checker: OnceLock::new(), chains: Mutex::default() });
        for m in &fleet.members {
            m.up.set(1);
        }
        fleet.watch();
        fleet
    }

    /// A fleet of one.
    pub fn single(client: Arc<KeydClient>) -> Arc<Self> {
        Self::new(vec![client], DEFAULT_HEALTH_INTERVAL)
    }

    /// The keyds, as `unix:PATH` or `tls://HOST:PORT`, comma-separated.
    pub fn endpoints(&self) -> String {
        self.members.iter().map(|m| m.client.endpoint().to_string()).collect::<Vec<_>>().join(", ")
    }

    /// Adds each keyd's client metrics and health, labelled `keyd="ENDPOINT"`.
    pub fn register(&self, registry: &mut Registry) {
        for m in &self.members {
            let labelled = registry.sub_registry_with_label(("keyd".into(), m.client.endpoint().to_string().into()));
            m.client.metrics().register(labelled);
            labelled.register(
                "sealtls_keyd_endpoint_up",
                "1 while this keyd answers, 0 once a request or PING found it down",
                m.up.clone(),
            );
            labelled.register(
                "sealtls_keyd_endpoint_failovers",
                "Requests that failed on this keyd and were retried on another",
                m.failovers.clone(),
            );
        }
    }

    /// Each keyd's health now.
    pub fn health(&self) -> Vec<MemberHealth> {
        self.members
            .iter()
            .map(|m| MemberHealth {
                endpoint: m.client.endpoint().to_string(),
                healthy: m.healthy.load(Ordering::Relaxed),
                last_error: m.last_error.lock().expect("error lock").clone(),
            })
            .collect()
    }

    /// Starts the health checks once, from inside the runtime; they end
    /// when the fleet is dropped.
    fn watch(self: &Arc<Self>) {
        if self.interval.is_zero() || self.checker.get().is_some() {
            return;
        }
        // Outside a runtime nothing starts; the first request starts them.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        if self.checker.set(()).is_ok() {
            runtime.spawn(check_health(Arc::downgrade(self), self.interval));
        }
    }

    /// The healthy member with the fewest outstanding requests, other than
    /// `not`; when none is healthy, any other (a keyd that came back answers
    /// before its next PING, and one that is still down fails fast).
    fn pick(&self, not: Option<usize>) -> Option<usize> {
        let others = || (0..self.members.len()).filter(move |&i| Some(i) != not);
        let fewest = |i: &usize| self.members[*i].outstanding.load(Ordering::Relaxed);
        others().filter(|&i| self.members[i].healthy.load(Ordering::Relaxed)).min_by_key(fewest).or_else(|| others().min_by_key(fewest))
    }

    fn mark_down(&self, i: usize, e: &KeydError) {
        let m = &self.members[i];
        // The reason alone: the endpoint is named next to it wherever it is shown.
        *m.last_error.lock().expect("error lock") = match e {
            KeydError::Unreachable { detail, .. } => detail.clone(),
            KeydError::Timeout(_, limit) => format!("no answer within {limit:?}"),
            KeydError::Tls { failure, .. } => failure.what.clone(),
            other => other.to_string(),
        };
        m.up.set(0);
        if m.healthy.swap(false, Ordering::Relaxed) {
            let left = self.members.iter().filter(|m| m.healthy.load(Ordering::Relaxed)).count();
            match self.members.len() {
                1 => warn!(keyd = %m.client.endpoint(), error = %e, "keyd is down; requests fail until it answers PING again"),
                of => {
                    warn!(keyd = %m.client.endpoint(), error = %e, healthy = left, of, "keyd is down; requests go to the others until it answers PING again")
                }
            }
        }
    }

    fn mark_up(&self, i: usize) {
        let m = &self.members[i];
        m.up.set(1);
        if !m.healthy.swap(true, Ordering::Relaxed) {
            let now = self.members.iter().filter(|m| m.healthy.load(Ordering::Relaxed)).count();
            info!(keyd = %m.client.endpoint(), healthy = now, of = self.members.len(), "keyd answers again; requests go to it");
        }
    }

    /// Why no request can be served now, when every keyd was found down
    /// (until one answers a PING again).
    pub fn all_down(&self) -> Option<KeydError> {
        // Without PINGs nothing would find a keyd back: requests must try.
        if self.interval.is_zero() {
            return None;
        }
        let any_up = self.members.iter().any(|m| m.healthy.load(Ordering::Relaxed));
        (!any_up).then(|| self.none_healthy())
    }

    /// Every keyd is down: one error naming each and why.
    fn none_healthy(&self) -> KeydError {
        let why = self
            .members
            .iter()
            .map(|m| format!("{} ({})", m.client.endpoint(), m.last_error.lock().expect("error lock")))
            .collect::<Vec<_>>()
            .join("; ");
        KeydError::Unreachable { endpoint: self.endpoints(), detail: format!("none of them answers: {why}") }
    }

    /// Notes which key and chain a keyd serves for a domain, and says when
    /// keyds disagree. Generations are per keyd (each counts its own puts),
    /// so keyds are compared by key id and chain.
    fn note_chain(&self, i: usize, response: &Response) {
        let Response::Chain(info) = response else { return };
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (info.key_id.0, &info.certs).hash(&mut hasher);
        let served = hasher.finish();
        let mut seen = self.chains.lock().expect("chain lock");
        let before = seen.insert(info.domain.clone(), (served, i));
        if let Some((_, at)) = before.filter(|&(s, at)| s != served && at != i) {
            warn!(
                domain = %info.domain,
                keyd_a = %self.members[at].client.endpoint(),
                keyd_b = %self.members[i].client.endpoint(),
                "keyds serve different keys or chains for this domain: provision them together with `sealtls key put DOMAIN KEY --cert CHAIN --keyd A --keyd B`"
            );
        }
    }

    /// What a keyd's answer means for the request: done, or try another.
    fn settle(&self, i: usize, result: Result<Response, KeydError>) -> Option<Result<Response, KeydError>> {
        match result {
            Ok(r) => {
                self.mark_up(i);
                self.note_chain(i, &r);
                Some(Ok(r))
            }
            Err(e) if is_down(&e) => {
                self.mark_down(i, &e);
                self.members[i].failovers.inc();
                None
            }
            Err(e) => Some(Err(e)),
        }
    }

    /// Sends `request` to a healthy keyd, and once more to another if that
    /// one is down.
    pub async fn call(self: &Arc<Self>, request: &Request) -> Result<Response, KeydError> {
        self.watch();
        let Some(mut i) = self.pick(None) else { return Err(self.none_healthy()) };
        for retry in [false, true] {
            let result = {
                let _counted = Outstanding::new(&self.members[i].outstanding);
                self.members[i].client.call(request).await
            };
            if let Some(done) = self.settle(i, result) {
                return done;
            }
            match self.pick(Some(i)) {
                Some(other) if !retry => i = other,
                _ => break,
            }
        }
        Err(self.none_healthy())
    }

    /// [`KeydFleet::call`] from synchronous code (rustls's signer).
    pub fn call_blocking(self: &Arc<Self>, request: &Request) -> Result<Response, KeydError> {
        self.watch();
        let Some(mut i) = self.pick(None) else { return Err(self.none_healthy()) };
        for retry in [false, true] {
            let result = {
                let _counted = Outstanding::new(&self.members[i].outstanding);
                self.members[i].client.call_blocking(request)
            };
            if let Some(done) = self.settle(i, result) {
                return done;
            }
            match self.pick(Some(i)) {
                Some(other) if !retry => i = other,
                _ => break,
            }
        }
        Err(self.none_healthy())
    }
}

/// PINGs every keyd each `interval` while the fleet lives.
async fn check_health(fleet: Weak<KeydFleet>, interval: Duration) {
    let interval = interval.max(Duration::from_millis(50));
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(fleet) = fleet.upgrade() else { return };
        let mut checks = tokio::task::JoinSet::new();
        for (i, m) in fleet.members.iter().enumerate() {
            let (fleet, client) = (fleet.clone(), m.client.clone());
            checks.spawn(async move {
                match tokio::time::timeout(interval, client.ping()).await {
                    Ok(Ok(())) => fleet.mark_up(i),
                    Ok(Err(e)) => fleet.mark_down(i, &e),
                    Err(_) => fleet.mark_down(i, &KeydError::Timeout(client.endpoint().to_string(), interval)),
                }
            });
        }
        drop(fleet);
        while checks.join_next().await.is_some() {}
    }
}
