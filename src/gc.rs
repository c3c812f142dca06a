//! `ferrylb gc`: cloud resources tagged for this cluster whose Service no
//! longer exists.
//!
//! # Guarantees
//! The cloud is listed before the Services: a resource carries the uid of a
//! Service that existed when it was made, so a uid missing from the later
//! Service list is a deleted Service, never one created in between.

use std::collections::BTreeSet;

use ferrylb_aws::{AwsProvider, Orphan};
use k8s_openapi::api::core::v1::Service;
use kube::Client;
use kube::api::{Api, ListParams};

/// What one collection found and did.
#[derive(Debug, Default)]
pub struct GcReport {
    pub orphans: Vec<Orphan>,
    /// Orphans whose deletion failed, with why (only when deleting).
    pub failed: Vec<(String, String)>,
}

/// Finds orphans of `provider` and, when `delete`, deletes them.
///
/// # Errors
/// When AWS or the API server cannot be listed. A failed deletion does not
/// stop the others; it is in [`GcReport::failed`].
pub async fn collect(
    client: &Client,
    provider: &AwsProvider,
    delete: bool,
) -> anyhow::Result<GcReport> {
    let tagged = provider.tagged().await?;
    let live: BTreeSet<String> = Api::<Service>::all(client.clone())
        .list_metadata(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|s| s.metadata.uid)
        .collect();
    let mut report = GcReport {
        orphans: AwsProvider::orphans(tagged, &live),
        failed: vec![],
    };
    if delete {
        for o in &report.orphans {
            if let Err(e) = provider.delete_orphan(o).await {
                tracing::warn!(service = %o.service, uid = %o.uid, error = %e, "deleting orphaned resources failed");
                report.failed.push((o.uid.clone(), e.to_string()));
            } else {
                tracing::info!(service = %o.service, uid = %o.uid, "deleted orphaned resources");
            }
        }
    }
    Ok(report)
}

/// The report as text, one line per resource.
pub fn render(report: &GcReport, deleted: bool) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    if report.orphans.is_empty() {
        out.push_str("no orphaned resources\n");
        return out;
    }
    for o in &report.orphans {
        let state = match report.failed.iter().find(|(u, _)| *u == o.uid) {
            Some((_, e)) => format!("NOT deleted: {e}"),
            None if deleted => "deleted".to_owned(),
            None => "orphaned".to_owned(),
        };
        let _ = writeln!(out, "service {} (uid {}): {state}", o.service, o.uid);
        for r in o
            .load_balancers
            .iter()
            .chain(&o.target_groups)
            .chain(&o.security_groups)
        {
            let _ = writeln!(out, "  {r}");
        }
    }
    if !deleted {
        out.push_str("dry run: nothing deleted; run again with --delete to delete these\n");
    }
    out
}
