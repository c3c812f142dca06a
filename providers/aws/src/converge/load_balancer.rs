//! The NLB itself: created with its tags and security group, and on an
//! existing one the security group, subnets (when named) and cross-zone
//! balancing (when set) kept as desired. Scheme and address type are in its
//! name, so a change to either is a new NLB (see [`super::split_by_name`]).

use std::collections::BTreeSet;

use aws_sdk_elasticloadbalancingv2::types::{
    IpAddressType as ElbIpAddressType, LoadBalancer, LoadBalancerAttribute, LoadBalancerSchemeEnum,
    LoadBalancerTypeEnum,
};
use ferrylb_model::{ProviderError, reason};

use crate::AwsProvider;
use crate::client::CallKind;
use crate::desired::Desired;

use super::{Subnets, elb_tags, no_retry};

const CROSS_ZONE_ATTRIBUTE: &str = "load_balancing.cross_zone.enabled";

/// What differs on an existing NLB.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct LoadBalancerDrift {
    /// The Service's security group is not attached.
    pub security_group: bool,
    /// The subnets named in the annotation, when they are not the NLB's.
    pub subnets: Option<Vec<String>>,
}

/// Compares an existing NLB with what `d` wants, given the security group
/// and (when the annotation names them) the subnets resolved.
pub(super) fn drift(
    d: &Desired,
    lb: &LoadBalancer,
    sg: &str,
    subnets: Option<&Subnets>,
) -> LoadBalancerDrift {
    let subnets = match (subnets, &d.subnets) {
        (Some(s), Some(_)) => {
            let have: BTreeSet<&str> = lb
                .availability_zones()
                .iter()
                .filter_map(|z| z.subnet_id())
                .collect();
            let want: BTreeSet<&str> = s.ids.iter().map(String::as_str).collect();
            (have != want).then(|| s.ids.clone())
        }
        _ => None,
    };
    LoadBalancerDrift {
        security_group: !lb.security_groups().iter().any(|s| s == sg),
        subnets,
    }
}

/// Whether an attribute list (as ELBv2 describes them) sets `key` to true.
pub(super) fn attribute_on<'a>(
    mut attrs: impl Iterator<Item = (Option<&'a str>, Option<&'a str>)>,
    key: &str,
) -> bool {
    attrs.find(|(k, _)| *k == Some(key)).and_then(|(_, v)| v) == Some("true")
}

impl AwsProvider {
    /// Creates the NLB. Not retried by the SDK (see [`no_retry`]).
    pub(super) async fn create_load_balancer(
        &self,
        d: &Desired,
        sg: &str,
        subnets: &Subnets,
    ) -> Result<LoadBalancer, ProviderError> {
        let r = self
            .clients
            .call(
                CallKind::ElbMutate,
                "elasticloadbalancing:CreateLoadBalancer",
                self.clients
                    .elb
                    .create_load_balancer()
                    .name(&d.name)
                    .r#type(LoadBalancerTypeEnum::Network)
                    .scheme(LoadBalancerSchemeEnum::from(d.scheme.as_str()))
                    .ip_address_type(ElbIpAddressType::from(d.ip_address_type.as_str()))
                    .set_subnets(Some(subnets.ids.clone()))
                    .security_groups(sg)
                    .set_tags(Some(elb_tags(d)))
                    .customize()
                    .config_override(no_retry())
                    .send(),
            )
            .await?;
        let lb = r.load_balancers().first().cloned().ok_or_else(|| {
            ProviderError::transient(
                reason::AWS_REJECTED,
                "CreateLoadBalancer returned no load balancer",
            )
        })?;
        if d.cross_zone == Some(true) {
            self.set_cross_zone(lb.load_balancer_arn().unwrap_or_default(), true)
                .await?;
        }
        Ok(lb)
    }

    async fn set_cross_zone(&self, arn: &str, on: bool) -> Result<(), ProviderError> {
        self.clients
            .call(
                CallKind::ElbMutate,
                "elasticloadbalancing:ModifyLoadBalancerAttributes",
                self.clients
                    .elb
                    .modify_load_balancer_attributes()
                    .load_balancer_arn(arn)
                    .attributes(
                        LoadBalancerAttribute::builder()
                            .key(CROSS_ZONE_ATTRIBUTE)
                            .value(on.to_string())
                            .build(),
                    )
                    .send(),
            )
            .await?;
        Ok(())
    }

    /// Makes an existing NLB match `d` where AWS can change it in place.
    pub(super) async fn converge_load_balancer(
        &self,
        d: &Desired,
        lb: &LoadBalancer,
        sg: &str,
        subnets: Option<&Subnets>,
        resync: bool,
    ) -> Result<(), ProviderError> {
        let arn = lb.load_balancer_arn().unwrap_or_default();
        let drift = drift(d, lb, sg, subnets);
        if drift.security_group {
            self.clients
                .call(
                    CallKind::ElbMutate,
                    "elasticloadbalancing:SetSecurityGroups",
                    self.clients
                        .elb
                        .set_security_groups()
                        .load_balancer_arn(arn)
                        .security_groups(sg)
                        .send(),
                )
                .await?;
        }
        if let Some(ids) = drift.subnets {
            self.clients
                .call(
                    CallKind::ElbMutate,
                    "elasticloadbalancing:SetSubnets",
                    self.clients
                        .elb
                        .set_subnets()
                        .load_balancer_arn(arn)
                        .set_subnets(Some(ids))
                        .send(),
                )
                .await?;
        }
        if let Some(want) = d.cross_zone {
            let r = self
                .clients
                .call_paced(
                    CallKind::ElbDescribe,
                    resync,
                    "elasticloadbalancing:DescribeLoadBalancerAttributes",
                    self.clients
                        .elb
                        .describe_load_balancer_attributes()
                        .load_balancer_arn(arn)
                        .send(),
                )
                .await?;
            let have = attribute_on(
                r.attributes().iter().map(|a| (a.key(), a.value())),
                CROSS_ZONE_ATTRIBUTE,
            );
            if have != want {
                self.set_cross_zone(arn, want).await?;
            }
        }
        Ok(())
    }
}
