//! Writes to the Service: the finalizer and the class it was provisioned
//! under, `status.loadBalancer`, and FerryLB's condition. Every write is
//! skipped when it would change nothing.

use ferrylb_model::{Address, LoadBalancerStatus};
use k8s_openapi::api::core::v1::{LoadBalancerIngress, PortStatus, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use super::error::Error;
use super::{CLASS_ANNOTATION, FIELD_MANAGER, FINALIZER};
use crate::controller::events::{svc_name, truncate};

/// FerryLB's condition on the Service: True once the load balancer is
/// ensured, False with the reason and message when it is not.
pub const CONDITION_TYPE: &str = "ferrylb.io/LoadBalancerReady";

fn api(svc: &Service, client: &kube::Client) -> Api<Service> {
    Api::namespaced(
        client.clone(),
        svc.metadata.namespace.as_deref().unwrap_or_default(),
    )
}

/// The class recorded on the Service when FerryLB took it on.
pub fn recorded_class(svc: &Service) -> Option<&str> {
    if !has_finalizer(svc) {
        return None;
    }
    svc.metadata
        .annotations
        .as_ref()?
        .get(CLASS_ANNOTATION)
        .map(String::as_str)
}

pub fn has_finalizer(svc: &Service) -> bool {
    svc.metadata
        .finalizers
        .as_ref()
        .is_some_and(|f| f.iter().any(|f| f == FINALIZER))
}

/// Adds the finalizer and records `class`, guarded by resourceVersion, and
/// returns the updated Service.
pub async fn add_finalizer(
    client: &kube::Client,
    svc: &Service,
    class: &str,
) -> Result<Service, Error> {
    let mut finalizers = svc.metadata.finalizers.clone().unwrap_or_default();
    if !finalizers.iter().any(|f| f == FINALIZER) {
        finalizers.push(FINALIZER.to_owned());
    }
    let patch = json!({"metadata": {
        "resourceVersion": svc.metadata.resource_version,
        "finalizers": finalizers,
        "annotations": {CLASS_ANNOTATION: class},
    }});
    api(svc, client)
        .patch(
            svc.metadata.name.as_deref().unwrap_or_default(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .map_err(|source| Error::PatchService {
            svc: svc_name(svc),
            source,
        })
}

/// Removes the finalizer and the recorded class, guarded by resourceVersion.
pub async fn remove_finalizer(client: &kube::Client, svc: &Service) -> Result<(), Error> {
    let finalizers: Vec<String> = svc
        .metadata
        .finalizers
        .iter()
        .flatten()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    let patch = json!({"metadata": {
        "resourceVersion": svc.metadata.resource_version,
        "finalizers": finalizers,
        "annotations": {CLASS_ANNOTATION: null},
    }});
    match api(svc, client)
        .patch(
            svc.metadata.name.as_deref().unwrap_or_default(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        // Already gone: the finalizer was the last thing holding it.
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(source) => Err(Error::PatchService {
            svc: svc_name(svc),
            source,
        }),
    }
}

/// The Kubernetes form of a provider's status.
pub fn to_ingress(status: &LoadBalancerStatus) -> Vec<LoadBalancerIngress> {
    status
        .ingress
        .iter()
        .map(|i| {
            let (ip, hostname) = match &i.address {
                Address::Ip(ip) => (Some(ip.to_string()), None),
                Address::Hostname(h) => (None, Some(h.clone())),
            };
            LoadBalancerIngress {
                ip,
                hostname,
                ip_mode: i.ip_mode.map(|m| m.as_str().to_owned()),
                ports: (!i.ports.is_empty()).then(|| {
                    i.ports
                        .iter()
                        .map(|p| PortStatus {
                            port: i32::from(p.port),
                            protocol: p.protocol.as_str().to_owned(),
                            error: p.error.clone(),
                        })
                        .collect()
                }),
            }
        })
        .collect()
}

/// What FerryLB's condition should say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    pub ready: bool,
    pub reason: String,
    pub message: String,
}

/// Desired state of the Service's status: `None` ingress clears it; `None`
/// readiness removes FerryLB's condition.
pub async fn write_status(
    client: &kube::Client,
    svc: &Service,
    ingress: Option<Vec<LoadBalancerIngress>>,
    readiness: Option<Readiness>,
) -> Result<(), Error> {
    let status = svc.status.clone().unwrap_or_default();
    let current_ingress = status
        .load_balancer
        .as_ref()
        .and_then(|lb| lb.ingress.clone())
        .unwrap_or_default();
    let desired_ingress = ingress.unwrap_or_default();
    let current_conditions = status.conditions.unwrap_or_default();
    let desired_conditions =
        conditions_with(&current_conditions, readiness, svc.metadata.generation);

    if current_ingress == desired_ingress && current_conditions == desired_conditions {
        return Ok(());
    }
    let patch = json!({"status": {
        "loadBalancer": {"ingress": if desired_ingress.is_empty() { serde_json::Value::Null } else { json!(desired_ingress) }},
        "conditions": desired_conditions,
    }});
    match api(svc, client)
        .patch_status(
            svc.metadata.name.as_deref().unwrap_or_default(),
            &PatchParams {
                field_manager: Some(FIELD_MANAGER.to_owned()),
                ..PatchParams::default()
            },
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(source) => Err(Error::PatchStatus {
            svc: svc_name(svc),
            source,
        }),
    }
}

/// `current` with FerryLB's condition replaced by `readiness` (or removed),
/// keeping lastTransitionTime when the status did not flip.
fn conditions_with(
    current: &[Condition],
    readiness: Option<Readiness>,
    generation: Option<i64>,
) -> Vec<Condition> {
    let mut out: Vec<Condition> = current
        .iter()
        .filter(|c| c.type_ != CONDITION_TYPE)
        .cloned()
        .collect();
    if let Some(r) = readiness {
        let status = if r.ready { "True" } else { "False" };
        let previous = current.iter().find(|c| c.type_ == CONDITION_TYPE);
        let last_transition_time = match previous {
            Some(p) if p.status == status => p.last_transition_time.clone(),
            _ => Time(k8s_openapi::jiff::Timestamp::now()),
        };
        let cond = Condition {
            type_: CONDITION_TYPE.to_owned(),
            status: status.to_owned(),
            reason: r.reason,
            // metav1.Condition allows 32,768 bytes of message.
            message: truncate(r.message, 32_768),
            observed_generation: generation,
            last_transition_time,
        };
        if let Some(p) = previous.filter(|p| **p == cond) {
            out.push(p.clone());
        } else {
            out.push(cond);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(ready: bool, reason: &str) -> Readiness {
        Readiness {
            ready,
            reason: reason.into(),
            message: "m".into(),
        }
    }

    #[test]
    fn conditions_keep_others_and_transition_time_when_status_holds() {
        let other = Condition {
            type_: "example.com/Other".into(),
            status: "True".into(),
            reason: "R".into(),
            message: String::new(),
            observed_generation: None,
            last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
        };
        let first = conditions_with(
            std::slice::from_ref(&other),
            Some(ready(false, "A")),
            Some(1),
        );
        assert_eq!(first.len(), 2);
        assert_eq!(first[0], other);
        let mut aged = first.clone();
        aged[1].last_transition_time = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        let same = conditions_with(&aged, Some(ready(false, "B")), Some(1));
        assert_eq!(same[1].reason, "B");
        assert_eq!(same[1].last_transition_time, aged[1].last_transition_time);
        let flipped = conditions_with(&aged, Some(ready(true, "Ensured")), Some(1));
        assert_ne!(
            flipped[1].last_transition_time,
            aged[1].last_transition_time
        );
        assert_eq!(conditions_with(&aged, None, Some(1)), vec![other]);
    }
}
