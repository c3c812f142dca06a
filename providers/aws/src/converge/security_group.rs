//! The Service's security group: created with its tags, adopted after a
//! lost answer, its ingress rules (the Service's source ranges on its
//! ports) kept equal to the desired ones. Rules FerryLB does not write (other
//! protocols, port ranges) are left alone.

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_ec2::types::{
    Filter, IpPermission, IpRange, Ipv6Range, ResourceType, TagSpecification,
};
use ferrylb_model::{ProviderError, reason};

use crate::AwsProvider;
use crate::client::{CallKind, Tolerate};
use crate::desired::{Desired, IngressRule, TAG_SERVICE};

use super::lookup::carries_uid;

/// Rules to authorize and to revoke.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct RuleChanges<'a> {
    pub add: Vec<&'a IngressRule>,
    pub remove: Vec<&'a IngressRule>,
}

/// What turns the `have` rules into the `want` rules.
pub(super) fn rule_changes<'a>(
    want: &'a BTreeSet<IngressRule>,
    have: &'a BTreeSet<IngressRule>,
) -> RuleChanges<'a> {
    RuleChanges {
        add: want.difference(have).collect(),
        remove: have.difference(want).collect(),
    }
}

/// The rules FerryLB writes that an EC2 permission holds: single-port TCP
/// or UDP, one per CIDR. Anything else yields none, so it is never revoked.
pub(super) fn rules_of(p: &IpPermission) -> Vec<IngressRule> {
    let (Some(proto), Some(from), Some(to)) = (p.ip_protocol(), p.from_port(), p.to_port()) else {
        return vec![];
    };
    let protocol = match proto {
        "tcp" | "6" => "tcp",
        "udp" | "17" => "udp",
        _ => return vec![],
    };
    let Ok(port) = u16::try_from(from) else {
        return vec![];
    };
    if from != to {
        return vec![];
    }
    let v4 = p.ip_ranges().iter().filter_map(|r| r.cidr_ip());
    let v6 = p.ipv6_ranges().iter().filter_map(|r| r.cidr_ipv6());
    v4.chain(v6)
        .filter_map(|c| c.parse().ok())
        .map(|cidr| IngressRule {
            protocol,
            port,
            cidr,
        })
        .collect()
}

/// EC2 permissions for `rules`: one per protocol and port, with every CIDR.
pub(super) fn permissions(rules: &[&IngressRule]) -> Vec<IpPermission> {
    let mut grouped: BTreeMap<(&str, u16), Vec<&IngressRule>> = BTreeMap::new();
    for r in rules {
        grouped.entry((r.protocol, r.port)).or_default().push(r);
    }
    grouped
        .into_iter()
        .map(|((proto, port), rs)| {
            let mut b = IpPermission::builder()
                .ip_protocol(proto)
                .from_port(i32::from(port))
                .to_port(i32::from(port));
            for r in rs {
                b = match r.cidr {
                    ipnet::IpNet::V4(_) => {
                        b.ip_ranges(IpRange::builder().cidr_ip(r.cidr.to_string()).build())
                    }
                    ipnet::IpNet::V6(_) => {
                        b.ipv6_ranges(Ipv6Range::builder().cidr_ipv6(r.cidr.to_string()).build())
                    }
                };
            }
            b.build()
        })
        .collect()
}

impl AwsProvider {
    /// Finds or creates the security group and converges its rules; returns
    /// its id.
    pub(super) async fn converge_security_group(
        &self,
        d: &Desired,
        owned: &[String],
        vpc: &str,
        resync: bool,
    ) -> Result<String, ProviderError> {
        let existing = match owned.first() {
            Some(id) => self
                .ingress_rules(id, resync)
                .await?
                .map(|rules| (id.clone(), rules)),
            None => None,
        };
        let (id, have) = match existing {
            Some(found) => found,
            // None, or deleted behind FerryLB's back since it was found.
            None => match self.create_security_group(d, vpc).await? {
                Some(id) => (id, BTreeSet::new()),
                // A retry whose first attempt got through: adopt the group
                // if it carries this Service's tags.
                None => {
                    let id = self.find_security_group(d, vpc).await?;
                    let have = self.ingress_rules(&id, resync).await?.unwrap_or_default();
                    (id, have)
                }
            },
        };
        let wanted = match d.default_sources {
            Some(crate::desired::DefaultSources::Vpc) => {
                let dualstack = d.ip_address_type == crate::options::IpAddressType::Dualstack;
                let cidrs: Vec<ipnet::IpNet> = self
                    .vpc_cidrs(vpc)
                    .await?
                    .into_iter()
                    .filter(|c| dualstack || matches!(c, ipnet::IpNet::V4(_)))
                    .collect();
                crate::desired::ingress_rules(&d.listeners, &cidrs)?
            }
            _ => d.ingress.clone(),
        };
        let changes = rule_changes(&wanted, &have);
        if !changes.add.is_empty() {
            self.clients
                .call(
                    CallKind::Ec2Mutate,
                    "ec2:AuthorizeSecurityGroupIngress",
                    self.clients
                        .ec2
                        .authorize_security_group_ingress()
                        .group_id(&id)
                        .set_ip_permissions(Some(permissions(&changes.add)))
                        .send(),
                )
                .await
                .tolerate(&["InvalidPermission.Duplicate"])?;
        }
        if !changes.remove.is_empty() {
            self.clients
                .call(
                    CallKind::Ec2Mutate,
                    "ec2:RevokeSecurityGroupIngress",
                    self.clients
                        .ec2
                        .revoke_security_group_ingress()
                        .group_id(&id)
                        .set_ip_permissions(Some(permissions(&changes.remove)))
                        .send(),
                )
                .await?;
        }
        Ok(id)
    }

    /// The rules of group `id`; `None` when it does not exist.
    async fn ingress_rules(
        &self,
        id: &str,
        resync: bool,
    ) -> Result<Option<BTreeSet<IngressRule>>, ProviderError> {
        let r = self
            .clients
            .call_paced(
                CallKind::Ec2Describe,
                resync,
                "ec2:DescribeSecurityGroups",
                self.clients
                    .ec2
                    .describe_security_groups()
                    .group_ids(id)
                    .send(),
            )
            .await;
        let r = match r {
            Ok(r) => r,
            Err(e) if e.is("InvalidGroup.NotFound") => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Ok(Some(
            r.security_groups()
                .iter()
                .flat_map(|g| g.ip_permissions())
                .flat_map(rules_of)
                .collect(),
        ))
    }

    /// Creates the group with its tags; `None` when one of that name exists.
    /// The CIDR blocks associated with `vpc` (IPv4 and IPv6), asked once
    /// per VPC.
    async fn vpc_cidrs(&self, vpc: &str) -> Result<Vec<ipnet::IpNet>, ProviderError> {
        if let Some(c) = self.vpc_cidrs.lock().expect("vpc cidr cache").get(vpc) {
            return Ok(c.clone());
        }
        let out = self
            .clients
            .call(
                CallKind::Ec2Describe,
                "ec2:DescribeVpcs",
                self.clients.ec2.describe_vpcs().vpc_ids(vpc).send(),
            )
            .await?;
        let mut cidrs = Vec::new();
        for v in out.vpcs() {
            let v4 = v
                .cidr_block_association_set()
                .iter()
                .filter(|a| {
                    a.cidr_block_state()
                        .and_then(|s| s.state())
                        .is_none_or(|s| s.as_str() == "associated")
                })
                .filter_map(|a| a.cidr_block());
            let v6 = v
                .ipv6_cidr_block_association_set()
                .iter()
                .filter(|a| {
                    a.ipv6_cidr_block_state()
                        .and_then(|s| s.state())
                        .is_none_or(|s| s.as_str() == "associated")
                })
                .filter_map(|a| a.ipv6_cidr_block());
            cidrs.extend(v4.chain(v6).filter_map(|c| c.parse::<ipnet::IpNet>().ok()));
            if cidrs.is_empty()
                && let Some(c) = v.cidr_block().and_then(|c| c.parse().ok())
            {
                cidrs.push(c);
            }
        }
        cidrs.sort();
        cidrs.dedup();
        if cidrs.is_empty() {
            return Err(ProviderError::transient(
                reason::AWS_UNAVAILABLE,
                format!("VPC {vpc} has no CIDR block to admit clients from (ec2:DescribeVpcs)"),
            ));
        }
        self.vpc_cidrs
            .lock()
            .expect("vpc cidr cache")
            .insert(vpc.to_owned(), cidrs.clone());
        Ok(cidrs)
    }

    async fn create_security_group(
        &self,
        d: &Desired,
        vpc: &str,
    ) -> Result<Option<String>, ProviderError> {
        let tags: Vec<aws_sdk_ec2::types::Tag> = d
            .tags
            .iter()
            .map(|(k, v)| aws_sdk_ec2::types::Tag::builder().key(k).value(v).build())
            .collect();
        let r = self
            .clients
            .call(
                CallKind::Ec2Mutate,
                "ec2:CreateSecurityGroup",
                self.clients
                    .ec2
                    .create_security_group()
                    .group_name(&d.security_group_name)
                    .description(format!(
                        "FerryLB: clients allowed to reach {}",
                        d.tags.get(TAG_SERVICE).map_or("", String::as_str)
                    ))
                    .vpc_id(vpc)
                    .tag_specifications(
                        TagSpecification::builder()
                            .resource_type(ResourceType::SecurityGroup)
                            .set_tags(Some(tags))
                            .build(),
                    )
                    .send(),
            )
            .await;
        match r {
            Ok(r) => Ok(Some(r.group_id().unwrap_or_default().to_owned())),
            Err(e) if e.is("InvalidGroup.Duplicate") => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The security group named for this Service in `vpc`, if it carries
    /// this Service's uid tag.
    async fn find_security_group(&self, d: &Desired, vpc: &str) -> Result<String, ProviderError> {
        let r = self
            .clients
            .call(
                CallKind::Ec2Describe,
                "ec2:DescribeSecurityGroups",
                self.clients
                    .ec2
                    .describe_security_groups()
                    .filters(
                        Filter::builder()
                            .name("group-name")
                            .values(&d.security_group_name)
                            .build(),
                    )
                    .filters(Filter::builder().name("vpc-id").values(vpc).build())
                    .send(),
            )
            .await?;
        let uid = d
            .tags
            .get(crate::desired::TAG_SERVICE_UID)
            .map(String::as_str);
        r.security_groups()
            .iter()
            .find(|g| carries_uid(g.tags().iter().map(|t| (t.key(), t.value())), uid))
            .and_then(|g| g.group_id().map(str::to_owned))
            .ok_or_else(|| {
                ProviderError::transient(
                    reason::SECURITY_GROUP_CONFLICT,
                    format!(
                        "a security group named {} exists in {vpc} but is not tagged for this Service; remove or rename it",
                        d.security_group_name
                    ),
                )
            })
    }
}
