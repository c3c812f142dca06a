//! What the controller keeps of each cached object: only the fields it
//! reads. A cluster's Nodes carry image lists, conditions and managed
//! fields that run to tens of kilobytes each, and most Services are not
//! load balancers at all; caching them whole is most of the controller's
//! memory (see BENCHMARKS.md, "HAProxy mode through the controller").

use k8s_openapi::api::core::v1::{Node, NodeSpec, NodeStatus, Service, ServiceSpec};

use super::FINALIZER;

/// Keeps what eligibility and targets are computed from: name, labels,
/// deletion, taints, providerID and addresses.
pub fn node(n: &mut Node) {
    let meta = &mut n.metadata;
    meta.managed_fields = None;
    meta.annotations = None;
    meta.owner_references = None;
    n.spec = n.spec.take().map(|s| NodeSpec {
        taints: s.taints,
        provider_id: s.provider_id,
        ..NodeSpec::default()
    });
    n.status = n.status.take().map(|s| NodeStatus {
        addresses: s.addresses,
        ..NodeStatus::default()
    });
}

/// Drops managed fields from every Service; of one that is not a load
/// balancer and carries no FerryLB finalizer (a Service FerryLB never
/// provisioned, or one it let go of), keeps only what tells it is not
/// FerryLB's: its identity, type and class.
pub fn service(s: &mut Service) {
    s.metadata.managed_fields = None;
    let load_balancer = s
        .spec
        .as_ref()
        .is_some_and(|spec| spec.type_.as_deref() == Some("LoadBalancer"));
    let ours = s
        .metadata
        .finalizers
        .as_ref()
        .is_some_and(|f| f.iter().any(|f| f == FINALIZER));
    if load_balancer || ours {
        return;
    }
    s.metadata.annotations = None;
    s.metadata.labels = None;
    s.spec = s.spec.take().map(|spec| ServiceSpec {
        type_: spec.type_,
        load_balancer_class: spec.load_balancer_class,
        ..ServiceSpec::default()
    });
    s.status = None;
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{ContainerImage, NodeAddress, ServicePort, Taint};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;

    use super::*;

    #[test]
    fn a_slim_node_yields_the_same_target_and_eligibility() {
        let mut n = Node::default();
        n.metadata.name = Some("n1".into());
        n.metadata.labels = Some([("a".to_owned(), "b".to_owned())].into());
        n.metadata.annotations = Some([("big".to_owned(), "x".repeat(10_000))].into());
        n.metadata.managed_fields = Some(vec![ManagedFieldsEntry::default()]);
        n.spec = Some(NodeSpec {
            provider_id: Some("aws:///z/i-1".into()),
            taints: Some(vec![Taint {
                key: "k".into(),
                effect: "NoSchedule".into(),
                ..Taint::default()
            }]),
            pod_cidr: Some("10.244.0.0/24".into()),
            ..NodeSpec::default()
        });
        n.status = Some(NodeStatus {
            addresses: Some(vec![NodeAddress {
                type_: "InternalIP".into(),
                address: "10.0.0.1".into(),
            }]),
            images: Some(vec![ContainerImage::default(); 50]),
            ..NodeStatus::default()
        });
        let before = crate::spec::targets([&n]);
        let mut slim = n.clone();
        node(&mut slim);
        assert_eq!(crate::spec::targets([&slim]), before);
        assert_eq!(
            crate::spec::is_eligible(&slim),
            crate::spec::is_eligible(&n)
        );
        assert!(slim.metadata.annotations.is_none() && slim.metadata.managed_fields.is_none());
        let status = slim.status.unwrap();
        assert!(status.images.is_none());
        assert!(slim.spec.unwrap().taints.is_some());
    }

    #[test]
    fn only_services_that_are_not_ours_are_cut_down() {
        let mut cluster_ip = Service::default();
        cluster_ip.metadata.name = Some("db".into());
        cluster_ip.metadata.annotations = Some([("a".to_owned(), "b".to_owned())].into());
        cluster_ip.spec = Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            ports: Some(vec![ServicePort::default()]),
            ..ServiceSpec::default()
        });
        let mut slim = cluster_ip.clone();
        service(&mut slim);
        assert!(slim.metadata.annotations.is_none());
        let spec = slim.spec.as_ref().unwrap();
        assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
        assert!(spec.ports.is_none());

        // A load balancer, or one FerryLB still has a finalizer on (its
        // type changed: it is cleaned up from these fields), stays whole.
        let mut lb = cluster_ip.clone();
        lb.spec.as_mut().unwrap().type_ = Some("LoadBalancer".into());
        let mut was_ours = cluster_ip.clone();
        was_ours.metadata.finalizers = Some(vec![FINALIZER.into()]);
        for s in [lb, was_ours] {
            let mut slim = s.clone();
            service(&mut slim);
            assert_eq!(slim, s);
        }
    }
}
