//! What every replica does in HAProxy mode besides leading: serve the same
//! configuration as the leader, read-only.
//!
//! A follower watches the Services and Nodes, and serves every Service the
//! leader provisioned for the HAProxy class on the VIP its status carries
//! (the leader allocated it), through the same validated, coalesced loads.
//! It never writes to the API. When it takes over, its HAProxy already
//! serves everything: leading only adds the writes.
//!
//! With VRRP, the other replicas' node addresses are keepalived's unicast
//! peers: [`peers`] follows them.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ferrylb_haproxy::HaproxyProvider;
use ferrylb_haproxy::vrrp::Keepalived;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::Client;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, reflector, watcher};

use crate::controller::status::recorded_class;

/// A burst of changes is served once it has been quiet this long...
const QUIET: Duration = Duration::from_millis(100);
/// ...or once it has lasted this long.
const CEILING: Duration = Duration::from_secs(1);

/// Where a follower's Services and Nodes come from.
pub struct Mirror {
    pub client: Client,
    pub haproxy: Arc<HaproxyProvider>,
    /// The HAProxy provider's loadBalancerClass.
    pub class: String,
    pub namespace: Option<String>,
    pub node_selector: Option<String>,
}

#[derive(Clone, Copy)]
enum Source {
    Services,
    Nodes,
}

/// Serves what the leader provisioned until the task is dropped.
pub async fn run(m: Mirror) {
    let (services, svc_writer) = reflector::store::<Service>();
    let (nodes, node_writer) = reflector::store::<Node>();
    let svc_api: Api<Service> = match &m.namespace {
        Some(ns) => Api::namespaced(m.client.clone(), ns),
        None => Api::all(m.client.clone()),
    };
    let mut node_watch = watcher::Config::default();
    if let Some(sel) = &m.node_selector {
        node_watch = node_watch.labels(sel);
    }
    let svc_events = watcher(svc_api, watcher::Config::default())
        .default_backoff()
        .modify(crate::controller::slim::service)
        .reflect(svc_writer)
        .map(|e| {
            (
                Source::Services,
                e.map(|e| matches!(e, watcher::Event::InitDone)),
            )
        });
    let node_events = watcher(Api::<Node>::all(m.client.clone()), node_watch)
        .default_backoff()
        .modify(crate::controller::slim::node)
        .reflect(node_writer)
        .map(|e| {
            (
                Source::Nodes,
                e.map(|e| matches!(e, watcher::Event::InitDone)),
            )
        });
    let events = futures::stream::select(svc_events, node_events);
    futures::pin_mut!(events);
    let (mut svc_listed, mut nodes_listed) = (false, false);
    let mut note = |(source, ev): (Source, Result<bool, watcher::Error>)| match ev {
        Ok(init_done) => {
            if init_done {
                match source {
                    Source::Services => svc_listed = true,
                    Source::Nodes => nodes_listed = true,
                }
            }
            svc_listed && nodes_listed
        }
        Err(e) => {
            tracing::debug!(error = %e, "watch failed; retrying");
            false
        }
    };
    loop {
        let Some(first) = events.next().await else {
            return;
        };
        let mut ready = note(first);
        let started = tokio::time::Instant::now();
        while started.elapsed() < CEILING {
            match tokio::time::timeout(QUIET, events.next()).await {
                Ok(Some(ev)) => ready = note(ev),
                Ok(None) => return,
                Err(_) => break,
            }
        }
        if !ready {
            continue;
        }
        let state = nodes.state();
        let targets = crate::spec::targets(state.iter().map(AsRef::as_ref));
        let specs: Vec<_> = services
            .state()
            .iter()
            .filter(|s| recorded_class(s) == Some(m.class.as_str()))
            .filter_map(|s| crate::spec::build(s, &targets).ok())
            .collect();
        if let Err(e) = m.haproxy.mirror(&specs).await {
            tracing::warn!(error = %e, "serving the leader's Services failed; trying again at the next change");
        }
    }
}

/// Keeps keepalived's unicast peers on the node addresses of the pods
/// matching `selector` in `namespace` (every replica, this one included:
/// the configuration leaves out its own address).
pub async fn peers(
    client: Client,
    namespace: String,
    selector: String,
    keepalived: Arc<Keepalived>,
) {
    let (pods, writer) = reflector::store::<Pod>();
    let events = watcher(
        Api::<Pod>::namespaced(client, &namespace),
        watcher::Config::default().labels(&selector),
    )
    .default_backoff()
    .reflect(writer);
    futures::pin_mut!(events);
    let mut last = None;
    let mut listed = false;
    while let Some(ev) = events.next().await {
        if matches!(ev, Ok(watcher::Event::InitDone)) {
            listed = true;
        }
        if !listed {
            continue;
        }
        let now: BTreeSet<IpAddr> = pods
            .state()
            .iter()
            .filter_map(|p| p.status.as_ref()?.host_ip.as_deref()?.parse().ok())
            .collect();
        if last.as_ref() == Some(&now) {
            continue;
        }
        tracing::info!(peers = ?now, "VRRP peers changed");
        match keepalived.set_peers(now.clone()).await {
            Ok(()) => last = Some(now),
            Err(e) => tracing::warn!(error = %e, "updating keepalived's peers failed"),
        }
    }
}
