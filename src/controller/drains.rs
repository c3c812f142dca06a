//! Events for nodes that leave a load balancer whose backend drains them on
//! its own for a known time (an NLB and its deregistration delay): one when
//! the node leaves, saying how the backend drains it and until when, and
//! one when that time is over, so drain tooling can wait for it. (The
//! HAProxy provider watches its own drains and reports each as it ends.)

use std::collections::BTreeSet;

use ferrylb_model::{LoadBalancerProvider, LoadBalancerSpec};
use k8s_openapi::api::core::v1::Service;

use super::Context;
use super::events::{NODE_DEREGISTERED, NODE_DRAINED};
use crate::drain_events::node_ref;

/// The nodes `before` targets that `after` does not.
#[must_use]
pub fn left(before: &LoadBalancerSpec, after: &LoadBalancerSpec) -> Vec<String> {
    let now: BTreeSet<&str> = after.targets.iter().map(|t| t.node.as_str()).collect();
    before
        .targets
        .iter()
        .map(|t| t.node.as_str())
        .filter(|n| !now.contains(n))
        .map(str::to_owned)
        .collect()
}

/// After `after`'s targets were applied: an Event for each node that left,
/// and, once the backend's drain is over, another.
pub(super) fn announce(
    ctx: &Context,
    svc: &Service,
    provider: &dyn LoadBalancerProvider,
    before: &LoadBalancerSpec,
    after: &LoadBalancerSpec,
) {
    let gone = left(before, after);
    if gone.is_empty() {
        return;
    }
    let Some(drain) = provider.node_drain(after) else {
        return;
    };
    let ends = std::time::SystemTime::now() + drain.lasts;
    let ends = k8s_openapi::jiff::Timestamp::try_from(ends)
        .map(|t| t.to_string())
        .unwrap_or_default();
    for node in &gone {
        tracing::info!(service = %super::events::svc_name(svc), node, lasts_s = drain.lasts.as_secs(), "node left the load balancer; the backend drains it");
        ctx.background_events.normal_about(
            svc,
            Some(node_ref(node)),
            NODE_DEREGISTERED,
            format!(
                "node {node} left this load balancer: {}; the drain is over at {ends}",
                drain.how
            ),
        );
    }
    ctx.config
        .telemetry
        .node_drains(provider.name(), "started", gone.len());
    let (events, svc, telemetry, provider) = (
        ctx.background_events.clone(),
        svc.clone(),
        ctx.config.telemetry.clone(),
        provider.name().to_owned(),
    );
    tokio::spawn(async move {
        tokio::time::sleep(drain.lasts).await;
        for node in &gone {
            events.normal_about(
                &svc,
                Some(node_ref(node)),
                NODE_DRAINED,
                format!(
                    "node {node} drained from this load balancer: the backend's drain ({} s) is over",
                    drain.lasts.as_secs()
                ),
            );
        }
        telemetry.node_drains(&provider, "finished", gone.len());
    });
}

#[cfg(test)]
mod tests {
    use ferrylb_model::Target;
    use ferrylb_model::conformance::sample_spec;

    use super::*;

    fn spec(nodes: &[&str]) -> LoadBalancerSpec {
        sample_spec(
            "ns",
            "web",
            30080,
            nodes
                .iter()
                .map(|n| Target {
                    node: (*n).into(),
                    addresses: vec!["10.0.0.1".parse().unwrap()],
                    provider_id: None,
                })
                .collect(),
        )
    }

    #[test]
    fn the_nodes_that_left_are_those_no_longer_targeted() {
        assert_eq!(
            left(&spec(&["a", "b", "c"]), &spec(&["b", "d"])),
            ["a", "c"]
        );
        assert!(left(&spec(&["a"]), &spec(&["a", "b"])).is_empty());
    }
}
