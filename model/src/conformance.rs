//! The provider conformance suite: the [`LoadBalancerProvider`] contract as
//! executable checks. Every provider's tests run it against the real backend
//! (moto, a real haproxy), with specs whose targets that backend accepts.

use std::collections::BTreeMap;

use std::future::Future;
use std::time::Duration;

use crate::{
    ErrorKind, HealthCheck, Listener, LoadBalancerProvider, LoadBalancerRef, LoadBalancerSpec,
    Protocol, ProviderError, ServiceKey, Target,
};

/// `call`'s answer, asking again as the controller does while the provider
/// answers [`ErrorKind::Pending`] (the change is applied with others
/// shortly), for 30 s at most.
async fn settled<T, Fut>(mut call: impl FnMut() -> Fut) -> Result<T, ProviderError>
where
    Fut: Future<Output = Result<T, ProviderError>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match call().await {
            Err(ProviderError {
                kind: ErrorKind::Pending(after),
                ..
            }) if tokio::time::Instant::now() < deadline => tokio::time::sleep(after).await,
            answer => return answer,
        }
    }
}

/// A spec for conformance runs: TCP port 80 → `node_port` on `targets`.
pub fn sample_spec(
    namespace: &str,
    name: &str,
    node_port: u16,
    targets: Vec<Target>,
) -> LoadBalancerSpec {
    LoadBalancerSpec {
        lb: LoadBalancerRef::for_service(ServiceKey {
            namespace: namespace.into(),
            name: name.into(),
            uid: format!("uid-{namespace}-{name}"),
        }),
        listeners: vec![Listener {
            protocol: Protocol::Tcp,
            port: 80,
            node_port,
            name: "http".into(),
        }],
        targets: targets.into(),
        health_check: HealthCheck::TrafficPort,
        source_ranges: vec![],
        requested_ips: vec![],
        shared_ip_key: None,
        ip_families: vec![],
        require_dual_stack: false,
        status_ips: vec![],
        endpoints: None,
        annotations: BTreeMap::new(),
    }
}

/// Runs every contract check. `a` and `b` must be two different Services
/// with at least two targets each; neither may exist in the provider yet.
///
/// # Panics
/// On the first contract violation, naming it.
pub async fn run<P: LoadBalancerProvider + ?Sized>(
    provider: &P,
    a: &LoadBalancerSpec,
    b: &LoadBalancerSpec,
) {
    assert!(
        a.targets.len() >= 2 && b.targets.len() >= 2,
        "fixtures need two targets each"
    );
    assert_ne!(a.lb, b.lb, "fixtures must be two different Services");

    // Absent is success, and get says absent.
    assert_eq!(
        provider
            .get(&a.lb)
            .await
            .expect("get of an absent load balancer"),
        None,
        "get before ensure"
    );
    settled(|| provider.ensure_deleted(&a.lb))
        .await
        .expect("ensure_deleted of a load balancer never created must succeed");

    // ensure creates, returns an address, and is idempotent.
    let first = settled(|| provider.ensure(a))
        .await
        .expect("ensure (create)");
    assert!(
        !first.ingress.is_empty(),
        "ensure must return at least one ingress address"
    );
    let again = settled(|| provider.ensure(a))
        .await
        .expect("ensure (again, unchanged)");
    assert_eq!(
        first, again,
        "ensure of an unchanged spec must return the same status"
    );
    assert_eq!(
        provider
            .get(&a.lb)
            .await
            .expect("get after ensure")
            .as_ref(),
        Some(&first),
        "get after ensure"
    );

    // A second Service is independent of the first.
    let other = settled(|| provider.ensure(b))
        .await
        .expect("ensure of a second Service");
    assert!(!other.ingress.is_empty());

    // Target-only changes converge through update_targets, and the address stays.
    let mut fewer = a.clone();
    fewer.targets = fewer.targets[..fewer.targets.len().saturating_sub(1)].into();
    settled(|| provider.update_targets(&fewer))
        .await
        .expect("update_targets (remove one)");
    settled(|| provider.update_targets(a))
        .await
        .expect("update_targets (add it back)");
    assert_eq!(
        settled(|| provider.ensure(a))
            .await
            .expect("ensure after target changes"),
        first,
        "address must survive target changes"
    );

    // Deleting one leaves the other alone; deleting twice is fine.
    settled(|| provider.ensure_deleted(&a.lb))
        .await
        .expect("ensure_deleted");
    assert_eq!(
        provider.get(&a.lb).await.expect("get after delete"),
        None,
        "get after ensure_deleted"
    );
    settled(|| provider.ensure_deleted(&a.lb))
        .await
        .expect("ensure_deleted twice must succeed");
    assert_eq!(
        provider
            .get(&b.lb)
            .await
            .expect("get of the other Service")
            .as_ref(),
        Some(&other),
        "deleting one Service's load balancer must not touch another's"
    );
    settled(|| provider.ensure_deleted(&b.lb))
        .await
        .expect("ensure_deleted of the second Service");
    assert_eq!(provider.get(&b.lb).await.expect("get after delete"), None);
}
