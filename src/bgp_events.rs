//! Events on FerryLB's own Pod when one of its BGP sessions leaves or
//! reaches Established, so `kubectl describe pod` and event-driven alerting
//! see a router going away.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

/// A session whose state crossed Established: `(peer, from, to)`.
pub type Change = (IpAddr, String, String);

/// The sessions in `after` that left or reached Established since
/// `before` (a peer not in `before` is no change: it was not seen yet).
#[must_use]
pub fn changes(before: &BTreeMap<IpAddr, String>, after: &BTreeMap<IpAddr, String>) -> Vec<Change> {
    after
        .iter()
        .filter_map(|(peer, now)| {
            let was = before.get(peer)?;
            let (up_before, up_now) = (was == "Established", now == "Established");
            (up_before != up_now).then(|| (*peer, was.clone(), now.clone()))
        })
        .collect()
}

/// Publishes an Event on the Pod `pod` in `namespace` for each change.
pub async fn publish(recorder: &Recorder, pod: &ObjectReference, changed: &[Change]) {
    for (peer, from, to) in changed {
        let down = from == "Established";
        let ev = Event {
            type_: if down {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: if down {
                "BgpSessionDown"
            } else {
                "BgpSessionUp"
            }
            .into(),
            note: Some(format!(
                "BGP session with {peer}: {from} -> {to}{}",
                if down {
                    "; the VIPs are not announced to this router until it is back"
                } else {
                    ""
                }
            )),
            action: "Announce".into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&ev, pod).await {
            tracing::warn!(%peer, error = %e, "publishing a BGP session Event failed");
        }
    }
}

/// A recorder for this replica's own Pod.
#[must_use]
pub fn recorder(client: kube::Client, instance: Option<String>) -> Recorder {
    Recorder::new(
        client,
        Reporter {
            controller: "ferrylb".into(),
            instance,
        },
    )
}

/// The reference to Pod `name` in `namespace`.
#[must_use]
pub fn pod_ref(namespace: &str, name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some(name.into()),
        namespace: Some(namespace.into()),
        ..ObjectReference::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn states(list: &[(&str, &str)]) -> BTreeMap<IpAddr, String> {
        list.iter()
            .map(|(p, s)| (p.parse().unwrap(), (*s).to_owned()))
            .collect()
    }

    #[test]
    fn only_crossings_of_established_are_changes() {
        let before = states(&[
            ("10.0.0.1", "Established"),
            ("10.0.0.2", "Active"),
            ("10.0.0.3", "Connect"),
        ]);
        let after = states(&[
            ("10.0.0.1", "Active"),
            ("10.0.0.2", "Established"),
            ("10.0.0.3", "Active"),
            ("10.0.0.4", "Established"),
        ]);
        let c = changes(&before, &after);
        assert_eq!(
            c,
            vec![
                (
                    "10.0.0.1".parse().unwrap(),
                    "Established".into(),
                    "Active".into()
                ),
                (
                    "10.0.0.2".parse().unwrap(),
                    "Active".into(),
                    "Established".into()
                ),
            ]
        );
        assert!(changes(&after, &after).is_empty());
    }
}
