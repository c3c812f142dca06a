//! An in-memory provider that records every call, for controller tests.
//! Test support only: it is not offered to users.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use ferrylb_model::{
    Address, Ingress, LoadBalancerProvider, LoadBalancerRef, LoadBalancerSpec, LoadBalancerStatus,
    ProviderError, Warning,
};
use k8s_openapi::api::core::v1::Service;
use kube::Api;

/// One recorded provider call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Ensure {
        svc: String,
        /// Node names targeted.
        targets: Vec<String>,
        /// Whether the Service carried the finalizer when ensure was called.
        finalizer_present: Option<bool>,
        /// Whether this call created the load balancer.
        created: bool,
    },
    UpdateTargets {
        svc: String,
        targets: Vec<String>,
    },
    Delete {
        svc: String,
    },
    Restore {
        services: Vec<String>,
    },
}

impl Call {
    /// The `namespace/name` the call was about (none for Restore).
    pub fn svc(&self) -> Option<&str> {
        match self {
            Call::Ensure { svc, .. } | Call::UpdateTargets { svc, .. } | Call::Delete { svc } => {
                Some(svc)
            }
            Call::Restore { .. } => None,
        }
    }
}

/// Records calls and keeps load balancers in memory.
#[derive(Default)]
pub struct RecordingProvider {
    client: Option<kube::Client>,
    calls: Mutex<Vec<Call>>,
    lbs: Mutex<BTreeMap<LoadBalancerRef, LoadBalancerSpec>>,
    fail_deletes: AtomicBool,
    fail_ensures: AtomicBool,
    /// Ensures of the Service with this name never return.
    hang_service: Mutex<Option<String>>,
}

impl RecordingProvider {
    /// With a client, each ensure records whether the Service carried the
    /// finalizer at that moment (read from the API server).
    pub fn new(client: Option<kube::Client>) -> Self {
        Self {
            client,
            ..Default::default()
        }
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// Calls about one Service (`namespace/name`).
    pub fn calls_for(&self, svc: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.svc() == Some(svc))
            .collect()
    }

    /// How many load balancers exist.
    pub fn count(&self) -> usize {
        self.lbs.lock().unwrap().len()
    }

    /// The spec a Service's load balancer currently has.
    pub fn current(&self, svc: &str) -> Option<LoadBalancerSpec> {
        self.lbs
            .lock()
            .unwrap()
            .iter()
            .find(|(r, _)| r.key.to_string() == svc)
            .map(|(_, s)| s.clone())
    }

    pub fn set_fail_deletes(&self, fail: bool) {
        self.fail_deletes.store(fail, Ordering::SeqCst);
    }

    /// Makes every ensure of the Service `name` hang forever, as a call to
    /// a black-holed endpoint does.
    pub fn hang_ensures_of(&self, name: &str) {
        *self.hang_service.lock().unwrap() = Some(name.to_owned());
    }

    pub fn set_fail_ensures(&self, fail: bool) {
        self.fail_ensures.store(fail, Ordering::SeqCst);
    }

    fn status(lb: &LoadBalancerRef) -> LoadBalancerStatus {
        LoadBalancerStatus {
            ingress: vec![Ingress {
                address: Address::Hostname(format!("{}.lb.test", lb.name)),
                ip_mode: None,
                ports: vec![],
            }],
            warnings: vec![],
        }
    }

    async fn finalizer_present(&self, lb: &LoadBalancerRef) -> Option<bool> {
        let client = self.client.clone()?;
        let svc = Api::<Service>::namespaced(client, &lb.key.namespace)
            .get(&lb.key.name)
            .await
            .ok()?;
        Some(
            svc.metadata
                .finalizers
                .unwrap_or_default()
                .iter()
                .any(|f| f == "service.kubernetes.io/load-balancer-cleanup"),
        )
    }
}

fn node_names(spec: &LoadBalancerSpec) -> Vec<String> {
    spec.targets.iter().map(|t| t.node.clone()).collect()
}

#[async_trait]
impl LoadBalancerProvider for RecordingProvider {
    fn name(&self) -> &str {
        "recording"
    }

    async fn get(&self, lb: &LoadBalancerRef) -> Result<Option<LoadBalancerStatus>, ProviderError> {
        Ok(self
            .lbs
            .lock()
            .unwrap()
            .contains_key(lb)
            .then(|| Self::status(lb)))
    }

    async fn ensure(&self, spec: &LoadBalancerSpec) -> Result<LoadBalancerStatus, ProviderError> {
        let finalizer_present = self.finalizer_present(&spec.lb).await;
        let hang = self.hang_service.lock().unwrap().as_deref() == Some(spec.lb.key.name.as_str());
        if hang {
            std::future::pending::<()>().await;
        }
        if self.fail_ensures.load(Ordering::SeqCst) {
            return Err(ProviderError::transient(
                "InjectedFailure",
                "ensure failed (injected by the test)",
            ));
        }
        let created = self
            .lbs
            .lock()
            .unwrap()
            .insert(spec.lb.clone(), spec.clone())
            .is_none();
        self.calls.lock().unwrap().push(Call::Ensure {
            svc: spec.lb.key.to_string(),
            targets: node_names(spec),
            finalizer_present,
            created,
        });
        Ok(Self::status(&spec.lb))
    }

    async fn update_targets(&self, spec: &LoadBalancerSpec) -> Result<Vec<Warning>, ProviderError> {
        self.calls.lock().unwrap().push(Call::UpdateTargets {
            svc: spec.lb.key.to_string(),
            targets: node_names(spec),
        });
        self.lbs
            .lock()
            .unwrap()
            .insert(spec.lb.clone(), spec.clone());
        Ok(Vec::new())
    }

    async fn ensure_deleted(&self, lb: &LoadBalancerRef) -> Result<(), ProviderError> {
        self.calls.lock().unwrap().push(Call::Delete {
            svc: lb.key.to_string(),
        });
        if self.fail_deletes.load(Ordering::SeqCst) {
            return Err(ProviderError::transient(
                "InjectedFailure",
                "delete failed (injected by the test)",
            ));
        }
        self.lbs.lock().unwrap().remove(lb);
        Ok(())
    }

    async fn restore(&self, specs: &[LoadBalancerSpec]) -> Result<(), ProviderError> {
        self.calls.lock().unwrap().push(Call::Restore {
            services: specs.iter().map(|s| s.lb.key.to_string()).collect(),
        });
        Ok(())
    }
}
