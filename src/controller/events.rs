//! Events on the Service, with the reasons users know from Kubernetes' own
//! service controller (`kubectl describe service`).

use k8s_openapi::api::core::v1::Service;
use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder};

pub use ferrylb_model::reason::{
    DELETED, DELETING, ENSURED, ENSURING, SYNC_FAILED, UNAVAILABLE, UPDATED,
};

/// Publishes an Event on `svc`. Failing to publish is logged, never fatal:
/// an Event is a courtesy, the reconcile's outcome is what matters.
async fn publish(recorder: &Recorder, svc: &Service, warning: bool, reason: &str, note: String) {
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
    if let Err(e) = recorder.publish(&ev, &svc.object_ref(&())).await {
        tracing::warn!(
            service = %svc_name(svc),
            reason,
            error = %e,
            "publishing an Event failed"
        );
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
