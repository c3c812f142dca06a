//! What FerryLB tells Prometheus and the kubelet: `/metrics`, `/healthz`,
//! `/readyz`.
//!
//! - `/healthz`: the process serves HTTP (liveness).
//! - `/readyz`: 200 once the controller's caches are synced (this replica
//!   leads) or this replica is a follower standing by, and the providers
//!   answered their last check; 503 with the reason otherwise.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

/// FerryLB's metrics and readiness, shared by the controller and the HTTP
/// server.
pub struct Telemetry {
    registry: Registry,
    /// This replica's contact with the API server, for the other replicas
    /// (`GET /lease`).
    api_contact: crate::leader::ApiContact,
    reconciles: Family<Labels, Counter>,
    reconcile_seconds: Histogram,
    provider_calls: Family<Labels, Counter>,
    load_balancers: Family<Labels, Gauge>,
    in_flight: Gauge,
    leader: Gauge,
    served: Family<Labels, Gauge>,
    vrrp_state: Family<Labels, Gauge>,
    vrrp_transitions: Family<Labels, Counter>,
    vip_held: Family<Labels, Gauge>,
    bgp_session_up: Family<Labels, Gauge>,
    bgp_bfd_up: Family<Labels, Gauge>,
    bgp_routes: Gauge,
    draining_servers: Family<Labels, Gauge>,
    draining_sessions: Family<Labels, Gauge>,
    drains_finished: Family<Labels, Counter>,
    node_drains: Family<Labels, Counter>,
    caches_synced: AtomicBool,
    standing_by: AtomicBool,
    /// Why a provider's last check failed (`None`: all answered).
    provider_problem: std::sync::Mutex<Option<String>>,
    /// Why the routers send this replica no traffic (BGP mode), if so.
    carrying_problem: std::sync::Mutex<Option<String>>,
}

impl Default for Telemetry {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ferrylb");
        let reconciles = Family::<Labels, Counter>::default();
        registry.register(
            "reconciles",
            "Service reconciles, by result (ok, error) and error reason",
            reconciles.clone(),
        );
        let reconcile_seconds = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        registry.register(
            "reconcile_duration_seconds",
            "Time one Service reconcile took",
            reconcile_seconds.clone(),
        );
        let provider_calls = Family::<Labels, Counter>::default();
        registry.register(
            "provider_calls",
            "Provider calls, by provider, operation (ensure, update_targets, published, delete) and outcome (ok or the error reason)",
            provider_calls.clone(),
        );
        let load_balancers = Family::<Labels, Gauge>::default();
        registry.register(
            "load_balancers",
            "Load balancers this replica has ensured, by provider",
            load_balancers.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "reconciles_in_flight",
            "Service reconciles running now (work taken from the queue and not yet done)",
            in_flight.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease (or runs without leader election)",
            leader.clone(),
        );
        let served = Family::<Labels, Gauge>::default();
        registry.register(
            "haproxy_config_generation",
            "Configurations this replica's HAProxy loaded, labelled with the SHA-256 of the one it serves (equal on replicas serving the same state)",
            served.clone(),
        );
        let vrrp_state = Family::<Labels, Gauge>::default();
        registry.register(
            "vrrp_state",
            "1 for the VRRP state this replica's keepalived is in (MASTER holds the VIPs; BACKUP, FAULT, STOPPED)",
            vrrp_state.clone(),
        );
        let vrrp_transitions = Family::<Labels, Counter>::default();
        registry.register(
            "vrrp_transitions",
            "Times this replica's keepalived entered each VRRP state",
            vrrp_transitions.clone(),
        );
        let vip_held = Family::<Labels, Gauge>::default();
        registry.register(
            "haproxy_vip_held",
            "Per VIP this replica serves: 1 while this replica's host holds it",
            vip_held.clone(),
        );
        let bgp_session_up = Family::<Labels, Gauge>::default();
        registry.register(
            "bgp_session_up",
            "Per BGP peer: 1 while this replica's session with it is Established",
            bgp_session_up.clone(),
        );
        let bgp_bfd_up = Family::<Labels, Gauge>::default();
        registry.register(
            "bgp_bfd_up",
            "Per BGP peer with BFD: 1 while this replica's BFD session with it is Up",
            bgp_bfd_up.clone(),
        );
        let bgp_routes = Gauge::default();
        registry.register(
            "bgp_routes_announced",
            "VIP routes this replica announces over BGP now (0 while withdrawn)",
            bgp_routes.clone(),
        );
        let draining_servers = Family::<Labels, Gauge>::default();
        registry.register(
            "haproxy_draining_servers",
            "Per leaving node: servers of it this replica's HAProxy still drains (0 or absent: drained)",
            draining_servers.clone(),
        );
        let draining_sessions = Family::<Labels, Gauge>::default();
        registry.register(
            "haproxy_draining_sessions",
            "Per leaving node: sessions its draining servers still carry in this replica's current HAProxy worker",
            draining_sessions.clone(),
        );
        let drains_finished = Family::<Labels, Counter>::default();
        registry.register(
            "haproxy_drains_finished",
            "Drains of a leaving node's server that ended, by outcome (empty, timed_out, reloaded)",
            drains_finished.clone(),
        );
        let node_drains = Family::<Labels, Counter>::default();
        registry.register(
            "node_drains",
            "Nodes that left a load balancer whose backend drains them for a known time (an NLB's deregistration delay), by provider and phase (started, finished)",
            node_drains.clone(),
        );
        Self {
            registry,
            node_drains,
            api_contact: crate::leader::ApiContact::default(),
            draining_servers,
            draining_sessions,
            drains_finished,
            bgp_session_up,
            bgp_bfd_up,
            bgp_routes,
            served,
            vrrp_state,
            vrrp_transitions,
            vip_held,
            reconciles,
            reconcile_seconds,
            provider_calls,
            load_balancers,
            in_flight,
            leader,
            caches_synced: AtomicBool::new(false),
            standing_by: AtomicBool::new(false),
            provider_problem: std::sync::Mutex::new(None),
            carrying_problem: std::sync::Mutex::new(None),
        }
    }
}

/// Counts one reconcile while it runs; records its result when done.
pub struct ReconcileTimer<'a> {
    t: &'a Telemetry,
    started: Instant,
}

impl ReconcileTimer<'_> {
    /// Records the result: `None` for success, else the error's reason.
    pub fn finish(self, error_reason: Option<&str>) {
        let labels = match error_reason {
            None => vec![("result", "ok".to_owned()), ("reason", String::new())],
            Some(r) => vec![("result", "error".to_owned()), ("reason", r.to_owned())],
        };
        self.t.reconciles.get_or_create(&labels).inc();
        self.t
            .reconcile_seconds
            .observe(self.started.elapsed().as_secs_f64());
    }
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.t.in_flight.dec();
    }
}

impl Telemetry {
    /// Starts timing a reconcile.
    pub fn reconcile(&self) -> ReconcileTimer<'_> {
        self.in_flight.inc();
        ReconcileTimer {
            t: self,
            started: Instant::now(),
        }
    }

    /// Records a provider call's outcome (`ok` or the error's reason).
    pub fn provider_call(&self, provider: &str, operation: &str, outcome: &str) {
        self.provider_calls
            .get_or_create(&vec![
                ("provider", provider.to_owned()),
                ("operation", operation.to_owned()),
                ("outcome", outcome.to_owned()),
            ])
            .inc();
    }

    /// One more (`delta` 1) or one fewer (-1) load balancer of `provider`.
    pub fn load_balancers_changed(&self, provider: &str, delta: i64) {
        self.load_balancers
            .get_or_create(&vec![("provider", provider.to_owned())])
            .inc_by(delta);
    }

    /// Whether this replica leads.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
        self.standing_by.store(!leading, Ordering::SeqCst);
    }

    /// The controller's caches are synced (or, `false`, no longer running).
    pub fn set_caches_synced(&self, synced: bool) {
        self.caches_synced.store(synced, Ordering::SeqCst);
    }

    /// The providers' last check: `None` when all answered, else why not.
    pub fn set_provider_problem(&self, problem: Option<String>) {
        *self.provider_problem.lock().expect("readiness lock") = problem;
    }

    /// What this replica's HAProxy serves: loads so far and the SHA-256 of
    /// the configuration.
    pub fn set_served(&self, generation: u64, sha256: &str) {
        self.served.clear();
        self.served
            .get_or_create(&vec![("sha256", sha256.to_owned())])
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
    }

    /// keepalived's state now, how often it entered each state, and which
    /// of the VIPs this replica serves its host holds.
    pub fn set_vrrp(
        &self,
        state: &str,
        transitions: &std::collections::BTreeMap<String, u64>,
        vips: &std::collections::BTreeMap<std::net::IpAddr, bool>,
    ) {
        for s in ["MASTER", "BACKUP", "FAULT", "STOPPED"] {
            self.vrrp_state
                .get_or_create(&vec![("state", s.to_owned())])
                .set(i64::from(s == state));
        }
        for (s, n) in transitions {
            let c = self
                .vrrp_transitions
                .get_or_create(&vec![("state", s.clone())]);
            let seen = c.get();
            if *n > seen {
                c.inc_by(*n - seen);
            }
        }
        self.vip_held.clear();
        for (ip, held) in vips {
            self.vip_held
                .get_or_create(&vec![("vip", ip.to_string())])
                .set(i64::from(*held));
        }
    }

    /// Each BGP and BFD session's state and how many routes are announced.
    pub fn set_bgp(&self, status: &ferrylb_haproxy::bgp::BgpStatus) {
        for (peer, state) in &status.sessions {
            self.bgp_session_up
                .get_or_create(&vec![("peer", peer.to_string())])
                .set(i64::from(state == "Established"));
        }
        for (peer, state) in &status.bfd {
            self.bgp_bfd_up
                .get_or_create(&vec![("peer", peer.to_string())])
                .set(i64::from(state == "Up"));
        }
        self.bgp_routes
            .set(i64::try_from(status.announced).unwrap_or(i64::MAX));
        *self.carrying_problem.lock().expect("readiness lock") = status.not_carrying();
    }

    /// `n` nodes whose drain by a backend `phase` (`started`, `finished`).
    pub fn node_drains(&self, provider: &str, phase: &str, n: usize) {
        self.node_drains
            .get_or_create(&vec![
                ("provider", provider.to_owned()),
                ("phase", phase.to_owned()),
            ])
            .inc_by(u64::try_from(n).unwrap_or(u64::MAX));
    }

    /// What drains now, by node, and the drains that just finished.
    pub fn set_drains(
        &self,
        draining: &std::collections::BTreeMap<String, ferrylb_haproxy::drain::Draining>,
        finished: &[ferrylb_haproxy::drain::Finished],
    ) {
        self.draining_servers.clear();
        self.draining_sessions.clear();
        for (node, d) in draining {
            let labels = vec![("node", node.clone())];
            self.draining_servers
                .get_or_create(&labels)
                .set(i64::try_from(d.servers).unwrap_or(i64::MAX));
            self.draining_sessions
                .get_or_create(&labels)
                .set(i64::try_from(d.sessions).unwrap_or(i64::MAX));
        }
        for f in finished {
            self.drains_finished
                .get_or_create(&vec![("outcome", f.outcome.label().to_owned())])
                .inc();
        }
    }

    /// This replica's contact with the API server (see
    /// [`crate::leader::peers`]).
    #[must_use]
    pub fn api_contact(&self) -> crate::leader::ApiContact {
        self.api_contact.clone()
    }

    /// `Ok` when ready, else why not. In BGP mode every replica serves
    /// (none stands by): it is ready only once the routers send it traffic.
    pub fn readiness(&self) -> Result<(), String> {
        for problem in [&self.provider_problem, &self.carrying_problem] {
            if let Some(p) = problem.lock().expect("readiness lock").clone() {
                return Err(p);
            }
        }
        if self.standing_by.load(Ordering::SeqCst) || self.caches_synced.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err("caches not synced yet".into())
        }
    }

    /// The metrics in Prometheus' text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

async fn metrics(State(t): State<Arc<Telemetry>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        t.encode(),
    )
}

async fn readyz(State(t): State<Arc<Telemetry>>) -> impl IntoResponse {
    match t.readiness() {
        Ok(()) => (StatusCode::OK, "ok".to_owned()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

/// How long this replica has reached the API server, for a leader that
/// cannot (see [`crate::leader::peers`]).
async fn lease(State(t): State<Arc<Telemetry>>) -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        t.api_contact.answer().to_string(),
    )
}

/// Serves `/metrics`, `/healthz`, `/readyz` and `/lease` on `addr` until
/// the task is dropped.
///
/// # Errors
/// When `addr` cannot be bound.
pub async fn serve(
    addr: SocketAddr,
    t: Arc<Telemetry>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz and /lease");
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/lease", get(lease))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(t);
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "the metrics server stopped");
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_move_and_readiness_follows_sync_and_leadership() {
        let t = Telemetry::default();
        assert_eq!(t.readiness(), Err("caches not synced yet".into()));
        t.reconcile().finish(None);
        t.reconcile().finish(Some("InvalidAnnotation"));
        t.provider_call("aws", "ensure", "ok");
        t.load_balancers_changed("aws", 1);
        let text = t.encode();
        assert!(
            text.contains(r#"ferrylb_reconciles_total{result="ok",reason=""} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"reason="InvalidAnnotation"} 1"#), "{text}");
        assert!(
            text.contains(
                r#"ferrylb_provider_calls_total{provider="aws",operation="ensure",outcome="ok"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"ferrylb_load_balancers{provider="aws"} 1"#),
            "{text}"
        );
        assert!(text.contains("ferrylb_reconciles_in_flight 0"), "{text}");
        t.set_leader(false);
        assert_eq!(t.readiness(), Ok(()), "a follower standing by is ready");
        t.set_leader(true);
        assert!(t.readiness().is_err());
        t.set_caches_synced(true);
        assert_eq!(t.readiness(), Ok(()));
        t.set_served(3, "ab12");
        let mut transitions = std::collections::BTreeMap::new();
        transitions.insert("MASTER".to_owned(), 2);
        let vips = [("10.0.0.1".parse().unwrap(), true)].into_iter().collect();
        t.set_vrrp("MASTER", &transitions, &vips);
        t.set_vrrp("MASTER", &transitions, &vips);
        let peer: std::net::IpAddr = "10.0.0.254".parse().unwrap();
        t.set_bgp(&ferrylb_haproxy::bgp::BgpStatus {
            sessions: [(peer, "Established".to_owned())].into_iter().collect(),
            bfd: [(peer, "Up".to_owned())].into_iter().collect(),
            announced: 2,
            serving: 2,
            running: true,
        });
        assert_eq!(
            t.readiness(),
            Ok(()),
            "announcing over an established session"
        );
        let text = t.encode();
        for want in [
            r#"ferrylb_haproxy_config_generation{sha256="ab12"} 3"#,
            r#"ferrylb_vrrp_state{state="MASTER"} 1"#,
            r#"ferrylb_vrrp_state{state="BACKUP"} 0"#,
            r#"ferrylb_vrrp_transitions_total{state="MASTER"} 2"#,
            r#"ferrylb_haproxy_vip_held{vip="10.0.0.1"} 1"#,
            r#"ferrylb_bgp_session_up{peer="10.0.0.254"} 1"#,
            "ferrylb_bgp_routes_announced 2",
            r#"ferrylb_bgp_bfd_up{peer="10.0.0.254"} 1"#,
        ] {
            assert!(text.contains(want), "{want} in {text}");
        }
        t.set_provider_problem(Some("haproxy: cannot run haproxy".into()));
        assert!(t.readiness().is_err());
    }

    #[test]
    fn a_bgp_replica_is_ready_only_while_the_routers_send_it_traffic() {
        let t = Telemetry::default();
        t.set_leader(false);
        let peer: std::net::IpAddr = "10.0.0.254".parse().unwrap();
        let other: std::net::IpAddr = "10.0.1.254".parse().unwrap();
        let status = |sessions: &[(std::net::IpAddr, &str)], announced, running| {
            ferrylb_haproxy::bgp::BgpStatus {
                sessions: sessions
                    .iter()
                    .map(|(p, s)| (*p, (*s).to_owned()))
                    .collect(),
                bfd: std::collections::BTreeMap::new(),
                announced,
                serving: 2,
                running,
            }
        };
        // Started, its session not yet taken by the router.
        t.set_bgp(&status(&[(peer, "Active"), (other, "Connect")], 2, true));
        assert_eq!(
            t.readiness(),
            Err("BGP: no session established (10.0.0.254 Active, 10.0.1.254 Connect)".into()),
            "a follower that serves no router is not ready"
        );
        t.set_bgp(&status(
            &[(peer, "Established"), (other, "Active")],
            2,
            true,
        ));
        assert_eq!(t.readiness(), Ok(()), "one router sends it traffic");
        t.set_bgp(&status(&[(peer, "Established")], 0, true));
        assert_eq!(
            t.readiness(),
            Err("BGP: the 2 VIPs served here are withdrawn".into())
        );
        t.set_bgp(&status(&[], 0, false));
        assert_eq!(t.readiness(), Err("BGP: BIRD is not running".into()));
    }
}
