//! Target groups, one per listener: created with their tags and health
//! check, adopted after a lost answer, health check and managed attributes
//! (PROXY protocol, `target-group-attributes`) kept as desired, targets
//! registered and deregistered by difference.

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_elasticloadbalancingv2::types::{
    ProtocolEnum, TargetDescription, TargetGroup, TargetGroupAttribute,
    TargetGroupIpAddressTypeEnum, TargetHealthDescription, TargetTypeEnum,
};
use ferrylb_model::{ProviderError, reason};

use crate::AwsProvider;
use crate::client::{CallError, CallKind};
use crate::desired::{Desired, DesiredTargetGroup, Health, TargetKey};
use crate::options::{HealthProtocol, IpAddressType};

use super::elb_tags;

/// Targets per RegisterTargets/DeregisterTargets call.
const TARGETS_PER_CALL: usize = 200;

/// Sets every health-check field of a CreateTargetGroup or ModifyTargetGroup
/// request (two builder types with the same setters) from a [`Health`].
macro_rules! with_health {
    ($req:expr, $h:expr) => {{
        let h: &Health = $h;
        $req.health_check_enabled(true)
            .health_check_protocol(ProtocolEnum::from(h.protocol_str()))
            .health_check_port(h.port_string())
            .set_health_check_path(h.path.clone())
            .set_health_check_interval_seconds(h.interval)
            .set_health_check_timeout_seconds(h.timeout)
            .set_healthy_threshold_count(h.healthy_threshold)
            .set_unhealthy_threshold_count(h.unhealthy_threshold)
    }};
}

/// The health-check fields of `tg` that differ from `h`, by their AWS
/// names. A field `h` leaves unset (AWS's default) never drifts, nor does the
/// path of a TCP check.
pub(super) fn health_drift(h: &Health, tg: &TargetGroup) -> Vec<&'static str> {
    let mut drifted = Vec::new();
    if tg.health_check_protocol().map(|p| p.as_str()) != Some(h.protocol_str()) {
        drifted.push("HealthCheckProtocol");
    }
    if tg.health_check_port() != Some(h.port_string().as_str()) {
        drifted.push("HealthCheckPort");
    }
    if h.protocol != HealthProtocol::Tcp && tg.health_check_path() != h.path.as_deref() {
        drifted.push("HealthCheckPath");
    }
    let numbers = [
        (
            "HealthCheckIntervalSeconds",
            h.interval,
            tg.health_check_interval_seconds(),
        ),
        (
            "HealthCheckTimeoutSeconds",
            h.timeout,
            tg.health_check_timeout_seconds(),
        ),
        (
            "HealthyThresholdCount",
            h.healthy_threshold,
            tg.healthy_threshold_count(),
        ),
        (
            "UnhealthyThresholdCount",
            h.unhealthy_threshold,
            tg.unhealthy_threshold_count(),
        ),
    ];
    for (name, want, have) in numbers {
        if want.is_some_and(|v| have != Some(v)) {
            drifted.push(name);
        }
    }
    drifted
}

/// Targets to register and to deregister.
pub(super) fn target_changes<'a>(
    have: &'a BTreeSet<TargetKey>,
    want: &'a BTreeSet<TargetKey>,
) -> (Vec<&'a TargetKey>, Vec<&'a TargetKey>) {
    (
        want.difference(have).collect(),
        have.difference(want).collect(),
    )
}

/// The targets DescribeTargetHealth lists.
pub(super) fn registered(health: &[TargetHealthDescription]) -> BTreeSet<TargetKey> {
    health
        .iter()
        .filter_map(|t| {
            let t = t.target()?;
            Some((t.id()?.to_owned(), u16::try_from(t.port()?).ok()?))
        })
        .collect()
}

fn descriptions(targets: &[&TargetKey]) -> Vec<TargetDescription> {
    targets
        .iter()
        .map(|(id, port)| {
            TargetDescription::builder()
                .id(id)
                .port(i32::from(*port))
                .build()
        })
        .collect()
}

impl AwsProvider {
    /// Creates `tg` (or adopts it after a lost answer); returns its ARN.
    pub(super) async fn create_target_group(
        &self,
        d: &Desired,
        tg: &DesiredTargetGroup,
        vpc: &str,
    ) -> Result<String, ProviderError> {
        let req = self
            .clients
            .elb
            .create_target_group()
            .name(&tg.name)
            .protocol(ProtocolEnum::from(tg.protocol.as_str()))
            .port(i32::from(tg.node_port))
            .vpc_id(vpc)
            .target_type(TargetTypeEnum::from(tg.target_type.as_str()))
            .set_tags(Some(elb_tags(d)));
        let mut req = with_health!(req, &tg.health);
        if d.ip_address_type == IpAddressType::Dualstack {
            req = req.ip_address_type(TargetGroupIpAddressTypeEnum::Ipv4);
        }
        let arn = match self
            .clients
            .call(
                CallKind::ElbMutate,
                "elasticloadbalancing:CreateTargetGroup",
                req.send(),
            )
            .await
        {
            Ok(r) => r
                .target_groups()
                .first()
                .and_then(|t| t.target_group_arn())
                .unwrap_or_default()
                .to_owned(),
            // Created by an earlier run whose tag lookup has not caught up
            // (or whose answer was lost): adopt it if it carries our tags.
            Err(e) if e.is("DuplicateTargetGroupName") => {
                self.adopt_target_group(d, &tg.name).await?
            }
            Err(e) => return Err(e.into()),
        };
        // A new target group has AWS's defaults: set what differs from
        // them (nothing, unless an annotation asks).
        self.set_attributes(&arn, &tg.attributes_to_set([])).await?;
        Ok(arn)
    }

    /// The ARN of the target group named `name` if it is tagged for this
    /// Service; an error naming the conflict otherwise.
    async fn adopt_target_group(&self, d: &Desired, name: &str) -> Result<String, ProviderError> {
        let found = self
            .clients
            .call(
                CallKind::ElbDescribe,
                "elasticloadbalancing:DescribeTargetGroups",
                self.clients.elb.describe_target_groups().names(name).send(),
            )
            .await?;
        let arn = found
            .target_groups()
            .first()
            .and_then(|t| t.target_group_arn())
            .unwrap_or_default()
            .to_owned();
        if self.tagged_for(d, &arn).await? {
            Ok(arn)
        } else {
            Err(ProviderError::transient(
                reason::TARGET_GROUP_CONFLICT,
                format!(
                    "a target group named {name} exists but is not tagged for this Service; remove it"
                ),
            ))
        }
    }

    /// Sets `attributes` on target group `arn` in one call (none when there
    /// is nothing to set).
    async fn set_attributes(
        &self,
        arn: &str,
        attributes: &BTreeMap<String, String>,
    ) -> Result<(), ProviderError> {
        if attributes.is_empty() {
            return Ok(());
        }
        let attrs = attributes
            .iter()
            .map(|(k, v)| TargetGroupAttribute::builder().key(k).value(v).build())
            .collect();
        self.clients
            .call(
                CallKind::ElbMutate,
                "elasticloadbalancing:ModifyTargetGroupAttributes",
                self.clients
                    .elb
                    .modify_target_group_attributes()
                    .target_group_arn(arn)
                    .set_attributes(Some(attrs))
                    .send(),
            )
            .await?;
        Ok(())
    }

    /// Health check and attributes of an existing target group; returns its
    /// ARN and registered targets.
    pub(super) async fn converge_target_group(
        &self,
        tg: &DesiredTargetGroup,
        existing: &TargetGroup,
        resync: bool,
    ) -> Result<(String, BTreeSet<TargetKey>), ProviderError> {
        let arn = existing.target_group_arn().unwrap_or_default().to_owned();
        let drifted = health_drift(&tg.health, existing);
        if !drifted.is_empty() {
            tracing::info!(target_group = %tg.name, fields = ?drifted, "health check drifted");
            self.clients
                .call(
                    CallKind::ElbMutate,
                    "elasticloadbalancing:ModifyTargetGroup",
                    with_health!(
                        self.clients
                            .elb
                            .modify_target_group()
                            .target_group_arn(&arn),
                        &tg.health
                    )
                    .send(),
                )
                .await?;
        }
        let attrs = self
            .clients
            .call_paced(
                CallKind::ElbDescribe,
                resync,
                "elasticloadbalancing:DescribeTargetGroupAttributes",
                self.clients
                    .elb
                    .describe_target_group_attributes()
                    .target_group_arn(&arn)
                    .send(),
            )
            .await?;
        let drifted = tg.attributes_to_set(
            attrs
                .attributes()
                .iter()
                .filter_map(|a| Some((a.key()?, a.value()?))),
        );
        if !drifted.is_empty() {
            tracing::info!(target_group = %tg.name, attributes = ?drifted, "target group attributes drifted");
        }
        self.set_attributes(&arn, &drifted).await?;
        let health = self
            .clients
            .call_paced(
                CallKind::ElbDescribe,
                resync,
                "elasticloadbalancing:DescribeTargetHealth",
                self.clients
                    .elb
                    .describe_target_health()
                    .target_group_arn(&arn)
                    .send(),
            )
            .await?;
        Ok((arn, registered(health.target_health_descriptions())))
    }

    /// Deregisters, then registers, the difference between `have` and
    /// `want`.
    pub(super) async fn sync_targets(
        &self,
        arn: &str,
        have: &BTreeSet<TargetKey>,
        want: &BTreeSet<TargetKey>,
    ) -> Result<(), CallError> {
        let (add, remove) = target_changes(have, want);
        // Deregistrations first: at the target quota (a subset swapping one
        // node for another), registering first would pass it for a moment,
        // and AWS refuses that with TooManyTargets.
        for chunk in remove.chunks(TARGETS_PER_CALL) {
            self.clients
                .call(
                    CallKind::ElbTargets,
                    "elasticloadbalancing:DeregisterTargets",
                    self.clients
                        .elb
                        .deregister_targets()
                        .target_group_arn(arn)
                        .set_targets(Some(descriptions(chunk)))
                        .send(),
                )
                .await?;
        }
        for chunk in add.chunks(TARGETS_PER_CALL) {
            self.clients
                .call(
                    CallKind::ElbTargets,
                    "elasticloadbalancing:RegisterTargets",
                    self.clients
                        .elb
                        .register_targets()
                        .target_group_arn(arn)
                        .set_targets(Some(descriptions(chunk)))
                        .send(),
                )
                .await?;
        }
        Ok(())
    }
}
