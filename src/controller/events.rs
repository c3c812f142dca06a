//! Events on the Service, with the reasons users know from Kubernetes' own
//! service controller (`kubectl describe service`).

use k8s_openapi::api::core::v1::{ObjectReference, Service};
use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder};

pub use ferrylb_model::reason::{
    DELETED, DELETING, ENSURED, ENSURING, SYNC_FAILED, UNAVAILABLE, UPDATED,
};

/// Publishes an Event on `svc`. Failing to publish is logged, never fatal:
/// an Event is a courtesy, the reconcile's outcome is what matters.
async fn publish(recorder: &Recorder, svc: &Service, warning: bool, reason: &str, note: String) {
    publish_on(recorder, &svc.object_ref(&()), warning, reason, note).await;
}

/// Publishes an Event on the object `regarding` names.
async fn publish_on(
    recorder: &Recorder,
    regarding: &ObjectReference,
    warning: bool,
    reason: &str,
    note: String,
) {
    publish_related(recorder, regarding, None, warning, reason, note).await;
}

/// Publishes an Event on the object `regarding` names, about `related`
/// too (Events about different related objects are different series, not
/// one repeating the first's note).
async fn publish_related(
    recorder: &Recorder,
    regarding: &ObjectReference,
    related: Option<ObjectReference>,
    warning: bool,
    reason: &str,
    note: String,
) {
    let ev = Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.to_owned(),
        note: Some(truncate(note, 1000)),
        action: action_for(reason).to_owned(),
        secondary: related,
    };
    if let Err(e) = recorder.publish(&ev, regarding).await {
        tracing::warn!(
            service = %format!(
                "{}/{}",
                regarding.namespace.as_deref().unwrap_or_default(),
                regarding.name.as_deref().unwrap_or_default()
            ),
            reason,
            error = %e,
            "publishing an Event failed"
        );
    }
}

/// Publishes Normal Events off the reconcile's path, a few at a time, each
/// Service's in the order they were queued (a Service always publishes on
/// the same lane). A reconcile waiting for its Events would hold back the
/// Services behind it: after a node change every Service takes new targets,
/// and after a burst is loaded every Service in it publishes its status.
/// When a lane is full the Event is dropped (and logged): Events are a
/// courtesy, never worth blocking for.
#[derive(Clone)]
pub struct Background {
    lanes: Vec<tokio::sync::mpsc::Sender<Queued>>,
}

/// An Event waiting in a lane: on, about, reason, note.
type Queued = (
    ObjectReference,
    Option<ObjectReference>,
    &'static str,
    String,
);

/// Events waiting to be published, per lane.
const BACKGROUND_QUEUE: usize = 2048;
/// Lanes: Events published at the same time.
const BACKGROUND_LANES: usize = 4;

impl Background {
    /// Starts the publishers; each ends once every sender is dropped and its
    /// queue is drained.
    pub fn start(recorder: Recorder) -> Self {
        let lanes = (0..BACKGROUND_LANES)
            .map(|_| {
                let (tx, mut rx) = tokio::sync::mpsc::channel::<Queued>(BACKGROUND_QUEUE);
                let recorder = recorder.clone();
                tokio::spawn(async move {
                    while let Some((regarding, related, reason, note)) = rx.recv().await {
                        publish_related(&recorder, &regarding, related, false, reason, note).await;
                    }
                });
                tx
            })
            .collect();
        Background { lanes }
    }

    /// Queues a Normal Event on `svc`.
    pub fn normal(&self, svc: &Service, reason: &'static str, note: impl Into<String>) {
        self.normal_about(svc, None, reason, note);
    }

    /// Queues a Normal Event on `svc` about `related` (a Node, say).
    pub fn normal_about(
        &self,
        svc: &Service,
        related: Option<ObjectReference>,
        reason: &'static str,
        note: impl Into<String>,
    ) {
        use std::hash::{Hash as _, Hasher as _};
        let regarding = svc.object_ref(&());
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (&regarding.namespace, &regarding.name).hash(&mut h);
        let lane = &self.lanes[(h.finish() % self.lanes.len() as u64) as usize];
        if lane
            .try_send((regarding, related, reason, note.into()))
            .is_err()
        {
            tracing::debug!(service = %svc_name(svc), reason, "Event queue full; Event dropped");
        }
    }
}

/// Publishes a Normal Event.
pub async fn normal(recorder: &Recorder, svc: &Service, reason: &str, note: impl Into<String>) {
    publish(recorder, svc, false, reason, note.into()).await;
}

/// Publishes a Warning Event.
pub async fn warning(recorder: &Recorder, svc: &Service, reason: &str, note: impl Into<String>) {
    publish(recorder, svc, true, reason, note.into()).await;
}

/// A node left a load balancer whose backend drains it on its own (see
/// [`ferrylb_model::LoadBalancerProvider::node_drain`]).
pub const NODE_DEREGISTERED: &str = "NodeDeregistered";
/// That drain is over.
pub const NODE_DRAINED: &str = "NodeDrained";

fn action_for(reason: &str) -> &'static str {
    match reason {
        DELETING | DELETED => "Delete",
        NODE_DEREGISTERED | NODE_DRAINED => "Drain",
        _ => "Ensure",
    }
}

/// `s` cut to at most `max` bytes, on a character boundary.
pub fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// `namespace/name` of a Service, for logs and messages.
pub fn svc_name(svc: &Service) -> String {
    format!(
        "{}/{}",
        svc.metadata.namespace.as_deref().unwrap_or_default(),
        svc.metadata.name.as_deref().unwrap_or_default()
    )
}
