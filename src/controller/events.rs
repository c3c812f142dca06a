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
    let ev = Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.to_owned(),
        note: Some(truncate(note, 1000)),
        action: action_for(reason).to_owned(),
        secondary: None,
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

/// Publishes Normal Events off the reconcile's path, in order, a few at a
/// time: a node change reconciles every Service, and each one waiting for
/// its `UpdatedLoadBalancer` Event to be written would hold back the
/// targets of the Services behind it. When the queue is full the Event is
/// dropped (and logged): Events are a courtesy, never worth blocking for.
#[derive(Clone)]
pub struct Background {
    tx: tokio::sync::mpsc::Sender<(ObjectReference, &'static str, String)>,
}

/// Events waiting to be published.
const BACKGROUND_QUEUE: usize = 4096;
/// Events published at the same time.
const BACKGROUND_CONCURRENCY: usize = 4;

impl Background {
    /// Starts the publisher; it ends once every sender is dropped and the
    /// queue is drained.
    pub fn start(recorder: Recorder) -> Self {
        use futures::StreamExt as _;
        let (tx, rx) = tokio::sync::mpsc::channel(BACKGROUND_QUEUE);
        tokio::spawn(async move {
            tokio_stream::wrappers::ReceiverStream::new(rx)
                .for_each_concurrent(BACKGROUND_CONCURRENCY, |(regarding, reason, note)| {
                    let recorder = recorder.clone();
                    async move { publish_on(&recorder, &regarding, false, reason, note).await }
                })
                .await;
        });
        Background { tx }
    }

    /// Queues a Normal Event on `svc`.
    pub fn normal(&self, svc: &Service, reason: &'static str, note: String) {
        if self
            .tx
            .try_send((svc.object_ref(&()), reason, note))
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

fn action_for(reason: &str) -> &'static str {
    match reason {
        DELETING | DELETED => "Delete",
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
