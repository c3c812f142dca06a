//! `ferrylb uninstall`: what the chart's pre-delete hook runs, so that
//! `helm uninstall` leaves the cluster's Services clean.
//!
//! # Expected flow
//! 1. FerryLB's Deployment is scaled to zero and its pods are waited for:
//!    each leader takes its VIPs off its node as it stops, and no replica is
//!    left to take a Service on again.
//! 2. Every Service an address-assigning class provisioned (HAProxy: nothing
//!    of it exists outside the cluster once the pods are gone) loses its
//!    address in the status, FerryLB's condition, its finalizer and the
//!    class annotation: it can be deleted at once, or taken on afresh by a
//!    later install.
//! 3. Services of other classes (AWS: their NLB still exists) keep their
//!    finalizer, so nothing is ever forgotten; they are listed with what to
//!    do.
//!
//! # Guarantees
//! Idempotent: a second run finds nothing to do. A Service changed meanwhile
//! is read again and retried; what cannot be released is reported and the
//! command fails, so Helm's hook says so.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams};

use crate::controller::status;

/// What an uninstall did.
#[derive(Debug, Default)]
pub struct Report {
    /// Services let go of (`namespace/name`).
    pub released: Vec<String>,
    /// Services kept, with their class: their cloud load balancer may exist.
    pub kept: Vec<(String, String)>,
    /// Services that could not be released, with why.
    pub failed: Vec<(String, String)>,
}

/// Scales `deployment` in `namespace` to zero, waits up to `timeout` for
/// its pods to be gone, then releases the Services of `release_classes`.
///
/// # Errors
/// When the Deployment cannot be scaled or its pods do not stop in time
/// (releasing Services a replica could take on again would not last), or
/// the Services cannot be listed.
pub async fn run(
    client: &Client,
    namespace: &str,
    deployment: &str,
    release_classes: &[String],
    timeout: Duration,
) -> anyhow::Result<Report> {
    stop_replicas(client, namespace, deployment, timeout).await?;
    let services: Api<Service> = Api::all(client.clone());
    let mut report = Report::default();
    for svc in services
        .list(&ListParams::default())
        .await
        .context("listing Services")?
    {
        let Some(class) = status::recorded_class(&svc).map(str::to_owned) else {
            continue;
        };
        let name = crate::controller::events::svc_name(&svc);
        if !release_classes.contains(&class) {
            report.kept.push((name, class));
            continue;
        }
        match release(client, &svc).await {
            Ok(()) => report.released.push(name),
            Err(e) => report.failed.push((name, format!("{e:#}"))),
        }
    }
    Ok(report)
}

/// Scales the Deployment to zero and waits for its pods to be gone.
async fn stop_replicas(
    client: &Client,
    namespace: &str,
    deployment: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let Some(d) = deployments
        .get_opt(deployment)
        .await
        .with_context(|| format!("reading Deployment {namespace}/{deployment}"))?
    else {
        tracing::info!(%deployment, "no Deployment to stop");
        return Ok(());
    };
    deployments
        .patch(
            deployment,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"replicas": 0}})),
        )
        .await
        .with_context(|| format!("scaling Deployment {namespace}/{deployment} to zero"))?;
    let selector = d
        .spec
        .and_then(|s| s.selector.match_labels)
        .unwrap_or_default()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    anyhow::ensure!(
        !selector.is_empty(),
        "Deployment {namespace}/{deployment} selects its pods by no label"
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let started = Instant::now();
    loop {
        // The Deployment's pods (those of its ReplicaSets), whatever else
        // carries its labels.
        let left = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .context("listing FerryLB's pods")?
            .items
            .iter()
            .filter(|p| {
                p.metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|o| o.kind == "ReplicaSet")
            })
            .count();
        if left == 0 {
            tracing::info!(%deployment, "every replica stopped");
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < timeout,
            "{left} FerryLB pod(s) still run after {timeout:?}; Services left as they are"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Clears the status FerryLB wrote and removes its finalizer and class
/// annotation, reading the Service again after a conflict.
async fn release(client: &Client, svc: &Service) -> anyhow::Result<()> {
    let api: Api<Service> = Api::namespaced(
        client.clone(),
        svc.metadata.namespace.as_deref().unwrap_or_default(),
    );
    let name = svc.metadata.name.as_deref().unwrap_or_default();
    let mut current = svc.clone();
    for _ in 0..5 {
        let result = async {
            status::write_status(client, &current, None, None).await?;
            status::remove_finalizer(client, &current).await
        }
        .await;
        match result {
            Ok(()) => return Ok(()),
            Err(e) => {
                tracing::debug!(service = %name, error = %e, "releasing failed; reading it again");
                match api.get_opt(name).await? {
                    Some(s) => current = s,
                    None => return Ok(()),
                }
            }
        }
    }
    anyhow::bail!("the Service kept changing under five attempts")
}

/// The report as text: what was released, what was kept and why.
pub fn render(report: &Report) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for name in &report.released {
        let _ = writeln!(out, "released {name}: address, finalizer and class removed");
    }
    for (name, class) in &report.kept {
        let _ = writeln!(
            out,
            "kept {name} (class {class}): its cloud load balancer still exists, so FerryLB's \
             finalizer stays and deleting the Service waits; install FerryLB again to delete \
             it (see the README's \"Uninstalling\")"
        );
    }
    for (name, why) in &report.failed {
        let _ = writeln!(out, "failed {name}: {why}");
    }
    if out.is_empty() {
        out.push_str("no Service carried FerryLB's finalizer\n");
    }
    out
}
