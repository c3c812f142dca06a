//! Deleting in the order AWS requires: NLBs (which takes their listeners),
//! then target groups, then security groups. Absent is success; a
//! dependency AWS has not released yet is retried shortly.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_elasticloadbalancingv2::types::{LoadBalancer, TargetGroup};
use ferrylb_model::{ProviderError, reason};

use crate::AwsProvider;
use crate::client::{CallKind, Tolerate};

use super::Owned;

/// A target group a deleted NLB still holds is released within seconds.
const TARGET_GROUP_RETRY: Duration = Duration::from_secs(5);
/// The deleted NLB's network interfaces hold its security group longer.
const SECURITY_GROUP_RETRY: Duration = Duration::from_secs(10);

/// What an NLB replacement leaves to delete: NLBs not named `name`, and
/// target groups not among `kept` (keyed by name).
pub(super) fn stale_parts<V>(
    lbs: &[LoadBalancer],
    tgs: &[TargetGroup],
    name: &str,
    kept: &BTreeMap<String, V>,
) -> Owned {
    Owned {
        load_balancers: lbs
            .iter()
            .filter(|l| l.load_balancer_name() != Some(name))
            .filter_map(|l| l.load_balancer_arn().map(str::to_owned))
            .collect(),
        target_groups: tgs
            .iter()
            .filter(|t| !kept.contains_key(t.target_group_name().unwrap_or_default()))
            .filter_map(|t| t.target_group_arn().map(str::to_owned))
            .collect(),
        ..Owned::default()
    }
}

impl AwsProvider {
    pub(super) async fn delete_target_group(&self, arn: &str) -> Result<(), ProviderError> {
        match self
            .clients
            .call(
                CallKind::ElbMutate,
                "elasticloadbalancing:DeleteTargetGroup",
                self.clients
                    .elb
                    .delete_target_group()
                    .target_group_arn(arn)
                    .send(),
            )
            .await
            .tolerate(&["TargetGroupNotFound"])
        {
            Ok(()) => Ok(()),
            Err(e) if e.is("ResourceInUse") => Err(ProviderError::retry_after(
                TARGET_GROUP_RETRY,
                reason::DELETION_PENDING,
                format!("target group {arn} is still in use; retrying"),
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes the given resources; see the module docs.
    pub(crate) async fn delete_owned(&self, o: &Owned) -> Result<(), ProviderError> {
        for arn in &o.load_balancers {
            self.clients
                .call(
                    CallKind::ElbMutate,
                    "elasticloadbalancing:DeleteLoadBalancer",
                    self.clients
                        .elb
                        .delete_load_balancer()
                        .load_balancer_arn(arn)
                        .send(),
                )
                .await
                .tolerate(&["LoadBalancerNotFound"])?;
        }
        for arn in &o.target_groups {
            self.delete_target_group(arn).await?;
        }
        for id in &o.security_groups {
            match self
                .clients
                .call(
                    CallKind::Ec2Mutate,
                    "ec2:DeleteSecurityGroup",
                    self.clients.ec2.delete_security_group().group_id(id).send(),
                )
                .await
                .tolerate(&["InvalidGroup.NotFound", "InvalidGroupId.Malformed"])
            {
                Ok(()) => {}
                Err(e) if e.is("DependencyViolation") => {
                    return Err(ProviderError::retry_after(
                        SECURITY_GROUP_RETRY,
                        reason::DELETION_PENDING,
                        format!(
                            "security group {id} is still attached to the deleted NLB's interfaces; retrying"
                        ),
                    ));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}
