//! Events saying a leaving node's drain finished, so drain tooling (and a
//! person running `kubectl describe`) can wait for it: one on the Service
//! for each load balancer the node was drained from, and one on the Node
//! once this replica drains nothing of it any more.

use std::collections::BTreeMap;

use ferrylb_haproxy::drain::{Draining, Finished, Outcome};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder};

/// Reason of the Service's Event when every session ended (or a reload's
/// old worker ended them).
pub const NODE_DRAINED: &str = "NodeDrained";
/// Reason of the Service's Event when the drain timeout closed sessions.
pub const NODE_DRAIN_TIMED_OUT: &str = "NodeDrainTimedOut";
/// Reason of the Node's Event once nothing of it drains any more.
pub const LOAD_BALANCERS_DRAINED: &str = "LoadBalancersDrained";

/// The Events for `finished` drains (one per Service and node, whatever
/// its ports), and for each of their nodes that `draining` no longer
/// holds. `by` names the replica.
#[must_use]
pub fn events(
    finished: &[Finished],
    draining: &BTreeMap<String, Draining>,
    by: &str,
) -> Vec<(ObjectReference, Event)> {
    let mut per_service: BTreeMap<(&str, &str, &str, &str), (Outcome, std::time::Duration)> =
        BTreeMap::new();
    for f in finished {
        let k = (
            f.lb.key.namespace.as_str(),
            f.lb.key.name.as_str(),
            f.lb.key.uid.as_str(),
            f.node.as_str(),
        );
        let e = per_service.entry(k).or_insert((f.outcome, f.took));
        e.1 = e.1.max(f.took);
        if let Outcome::TimedOut { cut } = f.outcome {
            e.0 = match e.0 {
                Outcome::TimedOut { cut: before } => Outcome::TimedOut { cut: before + cut },
                _ => Outcome::TimedOut { cut },
            };
        }
    }
    let mut out = Vec::new();
    for ((namespace, name, uid, node), (outcome, took)) in per_service {
        let how = match outcome {
            Outcome::Empty => "every session through it ended".to_owned(),
            Outcome::TimedOut { cut } => format!(
                "the drain timeout passed and {cut} session(s) still open were closed \
                 (ferrylb.io/haproxy-drain-timeout sets a longer one)"
            ),
            Outcome::Reloaded => {
                "a reload moved its sessions to HAProxy's old worker, where they have ended"
                    .to_owned()
            }
        };
        let timed_out = matches!(outcome, Outcome::TimedOut { .. });
        out.push((
            ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Service".into()),
                namespace: Some(namespace.into()),
                name: Some(name.into()),
                uid: Some(uid.into()),
                ..ObjectReference::default()
            },
            Event {
                type_: if timed_out {
                    EventType::Warning
                } else {
                    EventType::Normal
                },
                reason: if timed_out {
                    NODE_DRAIN_TIMED_OUT
                } else {
                    NODE_DRAINED
                }
                .into(),
                note: Some(format!(
                    "node {node} drained from this load balancer on {by} after {:.1} s: {how}",
                    took.as_secs_f64()
                )),
                action: "Drain".into(),
                // The Node as the related object: Events about different
                // nodes are different series, not one with the first note.
                secondary: Some(node_ref(node)),
            },
        ));
    }
    let mut nodes: Vec<&str> = finished
        .iter()
        .map(|f| f.node.as_str())
        .filter(|n| !draining.contains_key(*n))
        .collect();
    nodes.sort_unstable();
    nodes.dedup();
    for node in nodes {
        out.push((
            node_ref(node),
            Event {
                type_: EventType::Normal,
                reason: LOAD_BALANCERS_DRAINED.into(),
                note: Some(format!(
                    "{by} sends no connection to this node any more and carries none through it"
                )),
                action: "Drain".into(),
                secondary: None,
            },
        ));
    }
    out
}

/// The reference to Node `name`.
#[must_use]
pub fn node_ref(name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Node".into()),
        name: Some(name.into()),
        ..ObjectReference::default()
    }
}

/// Publishes `events`; a failure is logged, never fatal.
pub async fn publish(recorder: &Recorder, events: Vec<(ObjectReference, Event)>) {
    for (on, ev) in events {
        if let Err(e) = recorder.publish(&ev, &on).await {
            tracing::warn!(reason = ev.reason, error = %e, "publishing a drain Event failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ferrylb_model::{LoadBalancerRef, ServiceKey};

    use super::*;

    fn finished(svc: &str, node: &str, backend: &str, outcome: Outcome) -> Finished {
        Finished {
            lb: LoadBalancerRef::for_service(ServiceKey {
                namespace: "ns".into(),
                name: svc.into(),
                uid: format!("uid-{svc}"),
            }),
            node: node.into(),
            backend: backend.into(),
            took: Duration::from_secs(3),
            outcome,
        }
    }

    #[test]
    fn one_event_per_service_and_node_and_one_on_each_node_drained_everywhere() {
        let f = [
            finished("web", "n1", "be_web_80", Outcome::Empty),
            finished("web", "n1", "be_web_443", Outcome::TimedOut { cut: 2 }),
            finished("api", "n1", "be_api_80", Outcome::Empty),
            finished("api", "n2", "be_api_80", Outcome::Reloaded),
        ];
        let still = BTreeMap::from([("n2".to_owned(), Draining::default())]);
        let evs = events(&f, &still, "ferrylb-abc");
        let got: Vec<(String, String, String)> = evs
            .iter()
            .map(|(on, ev)| {
                (
                    format!("{}/{}", on.kind.clone().unwrap(), on.name.clone().unwrap()),
                    ev.reason.clone(),
                    ev.note.clone().unwrap(),
                )
            })
            .collect();
        assert_eq!(got.len(), 4, "{got:#?}");
        assert_eq!(got[0].0, "Service/api");
        assert_eq!(got[0].1, NODE_DRAINED);
        assert!(got[0].2.contains("node n1") && got[0].2.contains("ferrylb-abc"));
        let related = evs[0].1.secondary.as_ref().unwrap();
        assert_eq!(
            (related.kind.as_deref(), related.name.as_deref()),
            (Some("Node"), Some("n1"))
        );
        assert!(got[1].2.contains("old worker"), "{}", got[1].2);
        assert_eq!(got[2].0, "Service/web");
        assert_eq!(got[2].1, NODE_DRAIN_TIMED_OUT);
        assert!(got[2].2.contains("2 session(s)"), "{}", got[2].2);
        // n2 still drains elsewhere: only n1 gets its Event.
        assert_eq!(got[3].0, "Node/n1");
        assert_eq!(got[3].1, LOAD_BALANCERS_DRAINED);
    }
}
