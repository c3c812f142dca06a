//! Converging AWS to the desired resources: read the current state with as
//! few describes as the API allows, then make only the calls the difference
//! needs.
//!
//! # Expected flow of an ensure
//! 1. Find everything tagged for the Service (one tagging call).
//! 2. Security group: found, or created with its tags; ingress rules diffed.
//! 3. NLB: found by its name among the tagged ones, else by ELBv2's own
//!    lookup by name (the tagging API trails creations), else created with
//!    its tags and the security group. NLBs of another name (scheme or address type
//!    changed) are stale: deleted after the new status is published.
//! 4. Per port: target group found or created (tagged), attributes and
//!    health check diffed, targets registered/deregistered by difference,
//!    listener created or modified.
//! 5. Listeners and target groups no port wants any more are deleted.
//!
//! Every step is idempotent; a crash between any two calls leaves only
//! tagged resources the next run finds.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::Instant;

use aws_sdk_ec2::types::{
    Filter, IpPermission, IpRange, Ipv6Range, ResourceType, TagSpecification,
};
use aws_sdk_elasticloadbalancingv2::types::{
    Action, ActionTypeEnum, Certificate, IpAddressType as ElbIpAddressType, LoadBalancer,
    LoadBalancerAttribute, LoadBalancerSchemeEnum, LoadBalancerTypeEnum, ProtocolEnum, Tag,
    TargetDescription, TargetGroup, TargetGroupAttribute, TargetTypeEnum,
};
use aws_sdk_resourcegroupstagging::types::TagFilter;
use ferrylb_model::{
    Address, Ingress, LoadBalancerRef, LoadBalancerSpec, LoadBalancerStatus, ProviderError, Warning,
};

use crate::client::{CallError, CallKind, Tolerate};
use crate::desired::{
    Desired, DesiredListener, DesiredTargetGroup, IngressRule, TAG_CLUSTER, TAG_SERVICE_UID,
    TargetKey,
};
use crate::options::{AwsOptions, HealthProtocol, SUBNETS, Scheme};
use crate::{AwsProvider, Known};

/// Sets every health-check field of a CreateTargetGroup or ModifyTargetGroup
/// request (two builder types with the same setters) from a [`Health`].
macro_rules! with_health {
    ($req:expr, $h:expr) => {{
        let h: &crate::desired::Health = $h;
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

/// Targets per RegisterTargets/DeregisterTargets call.
const TARGETS_PER_CALL: usize = 200;
/// ARNs per DescribeLoadBalancers/DescribeTargetGroups call.
const ARNS_PER_DESCRIBE: usize = 20;
const PROXY_PROTOCOL_ATTRIBUTE: &str = "proxy_protocol_v2.enabled";
const CROSS_ZONE_ATTRIBUTE: &str = "load_balancing.cross_zone.enabled";

/// Resource types FerryLB creates, for the tagging API.
const RESOURCE_TYPES: [&str; 3] = [
    "elasticloadbalancing:loadbalancer",
    "elasticloadbalancing:targetgroup",
    "ec2:security-group",
];

/// Everything tagged for one Service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owned {
    pub uid: String,
    /// `namespace/name` from the tags, for reports.
    pub service: String,
    pub load_balancers: Vec<String>,
    pub target_groups: Vec<String>,
    pub security_groups: Vec<String>,
}

impl Owned {
    pub fn is_empty(&self) -> bool {
        self.load_balancers.is_empty()
            && self.target_groups.is_empty()
            && self.security_groups.is_empty()
    }
}

/// The NLB listeners are converged on.
struct Placed<'a> {
    arn: &'a str,
    /// Just created: it has no listeners yet, no need to ask.
    created: bool,
    vpc: &'a str,
}

/// Which subnets a load balancer asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SubnetQuery {
    scheme: Scheme,
    explicit: Option<Vec<String>>,
}

/// Resolved subnets: one per zone, all in one VPC.
#[derive(Debug, Clone)]
pub struct Subnets {
    ids: Vec<String>,
    vpc: String,
}

fn tag(k: &str, v: &str) -> Tag {
    Tag::builder().key(k).value(v).build()
}

fn elb_tags(d: &Desired) -> Vec<Tag> {
    d.tags.iter().map(|(k, v)| tag(k, v)).collect()
}

impl AwsProvider {
    /// Finds every resource tagged for this cluster (and for `uid`, when
    /// given), grouped by Service uid.
    pub(crate) async fn find_owned(
        &self,
        uids: Option<&[String]>,
    ) -> Result<BTreeMap<String, Owned>, ProviderError> {
        let cluster = TagFilter::builder()
            .key(TAG_CLUSTER)
            .values(&self.settings.cluster)
            .build();
        // A tag filter takes at most 20 values.
        let filter_sets: Vec<Vec<TagFilter>> = match uids {
            None => vec![vec![cluster]],
            Some(uids) => uids
                .chunks(20)
                .map(|chunk| {
                    vec![
                        cluster.clone(),
                        TagFilter::builder()
                            .key(TAG_SERVICE_UID)
                            .set_values(Some(chunk.to_vec()))
                            .build(),
                    ]
                })
                .collect(),
        };
        let mut out: BTreeMap<String, Owned> = BTreeMap::new();
        for filters in filter_sets {
            self.find_owned_into(filters, &mut out).await?;
        }
        Ok(out)
    }

    async fn find_owned_into(
        &self,
        filters: Vec<TagFilter>,
        out: &mut BTreeMap<String, Owned>,
    ) -> Result<(), ProviderError> {
        let mut token: Option<String> = None;
        loop {
            let page = self
                .clients
                .call(
                    CallKind::Tagging,
                    "tag:GetResources",
                    self.clients
                        .tagging
                        .get_resources()
                        .set_tag_filters(Some(filters.clone()))
                        .set_resource_type_filters(Some(
                            RESOURCE_TYPES.iter().map(|s| (*s).to_owned()).collect(),
                        ))
                        .set_pagination_token(token.clone())
                        .send(),
                )
                .await?;
            for m in page.resource_tag_mapping_list() {
                let Some(arn) = m.resource_arn() else {
                    continue;
                };
                let tags: BTreeMap<&str, &str> =
                    m.tags().iter().map(|t| (t.key(), t.value())).collect();
                let Some(uid) = tags.get(TAG_SERVICE_UID) else {
                    continue;
                };
                let o = out.entry((*uid).to_owned()).or_insert_with(|| Owned {
                    uid: (*uid).to_owned(),
                    ..Owned::default()
                });
                if let Some(s) = tags.get(crate::desired::TAG_SERVICE) {
                    o.service = (*s).to_owned();
                }
                if arn.contains(":loadbalancer/") {
                    o.load_balancers.push(arn.to_owned());
                } else if arn.contains(":targetgroup/") {
                    o.target_groups.push(arn.to_owned());
                } else if let Some(id) = arn.rsplit_once("security-group/").map(|(_, id)| id) {
                    o.security_groups.push(id.to_owned());
                }
            }
            token = page
                .pagination_token()
                .filter(|t| !t.is_empty())
                .map(str::to_owned);
            if token.is_none() {
                break;
            }
        }
        Ok(())
    }

    /// Describes `arns` 20 at a time with `describe`. Tag lookups trail
    /// deletions, so one resource gone (`not_found`) fails its whole batch:
    /// that batch is then asked one by one, and the gone ones skipped.
    async fn describe_by_arns<T, F, Fut>(
        &self,
        arns: &[String],
        not_found: &str,
        describe: F,
    ) -> Result<Vec<T>, ProviderError>
    where
        F: Fn(Vec<String>) -> Fut,
        Fut: Future<Output = Result<Vec<T>, CallError>>,
    {
        let mut out = Vec::new();
        for chunk in arns.chunks(ARNS_PER_DESCRIBE) {
            match describe(chunk.to_vec()).await {
                Ok(found) => out.extend(found),
                Err(e) if e.is(not_found) && chunk.len() > 1 => {
                    for arn in chunk {
                        match describe(vec![arn.clone()]).await {
                            Ok(found) => out.extend(found),
                            Err(e) if e.is(not_found) => {}
                            Err(e) => return Err(e.into()),
                        }
                    }
                }
                Err(e) if e.is(not_found) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(out)
    }

    async fn describe_load_balancers(
        &self,
        arns: &[String],
        resync: bool,
    ) -> Result<Vec<LoadBalancer>, ProviderError> {
        self.describe_by_arns(arns, "LoadBalancerNotFound", |chunk| async move {
            self.clients
                .call_paced(
                    CallKind::ElbDescribe,
                    resync,
                    "elasticloadbalancing:DescribeLoadBalancers",
                    self.clients
                        .elb
                        .describe_load_balancers()
                        .set_load_balancer_arns(Some(chunk))
                        .send(),
                )
                .await
                .map(|r| r.load_balancers().to_vec())
        })
        .await
    }

    async fn describe_target_groups(
        &self,
        arns: &[String],
        resync: bool,
    ) -> Result<Vec<TargetGroup>, ProviderError> {
        self.describe_by_arns(arns, "TargetGroupNotFound", |chunk| async move {
            self.clients
                .call_paced(
                    CallKind::ElbDescribe,
                    resync,
                    "elasticloadbalancing:DescribeTargetGroups",
                    self.clients
                        .elb
                        .describe_target_groups()
                        .set_target_group_arns(Some(chunk))
                        .send(),
                )
                .await
                .map(|r| r.target_groups().to_vec())
        })
        .await
    }

    /// The status of the Service's current NLB, if any.
    pub(crate) async fn current_status(
        &self,
        lb: &LoadBalancerRef,
    ) -> Result<Option<LoadBalancerStatus>, ProviderError> {
        let owned = self
            .find_owned(Some(std::slice::from_ref(&lb.key.uid)))
            .await?;
        let Some(o) = owned.get(&lb.key.uid) else {
            return Ok(None);
        };
        let lbs = self
            .describe_load_balancers(&o.load_balancers, false)
            .await?;
        Ok(lbs.first().map(|l| status_of(l, vec![])))
    }

    /// Resolves the subnets for a scheme: the annotation's ids or names, or
    /// those tagged for load balancers of that scheme, one per zone.
    async fn subnets(&self, d: &Desired) -> Result<Subnets, ProviderError> {
        let q = SubnetQuery {
            scheme: d.scheme,
            explicit: d.subnets.clone(),
        };
        let cached = || {
            self.subnets
                .lock()
                .expect("subnet cache lock")
                .get(&q)
                .filter(|(at, _)| at.elapsed() < self.settings.subnet_cache_ttl)
                .map(|(_, s)| s.clone())
        };
        if let Some(s) = cached() {
            return Ok(s);
        }
        let _lookup = self.subnet_lookup.lock().await;
        if let Some(s) = cached() {
            return Ok(s);
        }
        let mut req = self.clients.ec2.describe_subnets();
        match &q.explicit {
            Some(refs) => {
                let (ids, names): (Vec<_>, Vec<_>) =
                    refs.iter().cloned().partition(|r| r.starts_with("subnet-"));
                let (key, values) = if names.is_empty() {
                    ("subnet-id", ids)
                } else if ids.is_empty() {
                    ("tag:Name", names)
                } else {
                    return Err(ProviderError::invalid(
                        SUBNETS,
                        &refs.join(","),
                        "subnet ids or Name tags, not both",
                    ));
                };
                req = req.filters(Filter::builder().name(key).set_values(Some(values)).build());
            }
            None => {
                req = req.filters(
                    Filter::builder()
                        .name("tag-key")
                        .values(q.scheme.subnet_role_tag())
                        .build(),
                );
            }
        }
        if let Some(vpc) = &self.settings.vpc_id {
            req = req.filters(Filter::builder().name("vpc-id").values(vpc).build());
        }
        let found = self
            .clients
            .call(CallKind::Ec2Describe, "ec2:DescribeSubnets", req.send())
            .await?;
        let ours = crate::desired::cluster_ownership_tag(&self.settings.cluster);
        // One subnet per zone: prefer those tagged for this cluster, then the
        // lowest id; skip those tagged for other clusters only.
        let mut by_zone: BTreeMap<String, (bool, String, String)> = BTreeMap::new();
        for s in found.subnets() {
            let (Some(id), Some(zone), Some(vpc)) =
                (s.subnet_id(), s.availability_zone(), s.vpc_id())
            else {
                continue;
            };
            let cluster_tags: Vec<&str> = s
                .tags()
                .iter()
                .filter_map(|t| t.key())
                .filter(|k| k.starts_with("kubernetes.io/cluster/"))
                .collect();
            let role = s
                .tags()
                .iter()
                .find(|t| t.key() == Some(q.scheme.subnet_role_tag()))
                .and_then(|t| t.value());
            if q.explicit.is_none() && !matches!(role, Some("1" | "")) {
                continue;
            }
            let mine = cluster_tags.contains(&ours.as_str());
            if q.explicit.is_none() && !cluster_tags.is_empty() && !mine {
                continue;
            }
            let cand = (!mine, id.to_owned(), vpc.to_owned());
            let better = by_zone.get(zone).is_none_or(|cur| cand < *cur);
            if better || q.explicit.is_some() && !by_zone.contains_key(zone) {
                by_zone.insert(zone.to_owned(), cand);
            }
        }
        let vpcs: BTreeSet<String> = by_zone.values().map(|(_, _, v)| v.clone()).collect();
        if by_zone.is_empty() {
            let how = match &q.explicit {
                Some(refs) => format!("{SUBNETS}={} matches no subnet", refs.join(",")),
                None => format!(
                    "no subnet is tagged {}=1 (and {ours} or no cluster tag){}",
                    q.scheme.subnet_role_tag(),
                    self.settings
                        .vpc_id
                        .as_ref()
                        .map(|v| format!(" in {v}"))
                        .unwrap_or_default()
                ),
            };
            return Err(ProviderError::retry_after(
                std::time::Duration::from_secs(60),
                "SubnetsNotFound",
                format!("cannot place a {} load balancer: {how}", q.scheme.as_str()),
            ));
        }
        if vpcs.len() > 1 {
            return Err(ProviderError::retry_after(
                std::time::Duration::from_secs(60),
                "SubnetsNotFound",
                format!(
                    "the subnets found are in several VPCs ({}); name one with --aws-vpc-id or set {SUBNETS}",
                    vpcs.into_iter().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        let s = Subnets {
            vpc: vpcs.into_iter().next().expect("one VPC").to_owned(),
            ids: by_zone.into_values().map(|(_, id, _)| id).collect(),
        };
        self.subnets
            .lock()
            .expect("subnet cache lock")
            .insert(q, (Instant::now(), s.clone()));
        Ok(s)
    }

    /// Creates or converges the NLB for `spec`. See the module docs.
    pub(crate) async fn converge(
        &self,
        spec: &LoadBalancerSpec,
    ) -> Result<LoadBalancerStatus, ProviderError> {
        let opts = AwsOptions::parse(&spec.annotations)?;
        let d = Desired::build(spec, &opts, &self.settings.cluster)?;
        let uid = &spec.lb.key.uid;
        // Nothing changed since the last converge: this is a drift check,
        // paced by the resync share of the describe budget.
        let resync = self
            .known
            .lock()
            .expect("known lock")
            .get(uid)
            .is_some_and(|k| k.spec.same_desired_state(spec));

        // Both lookups are shared with the Services converging at the same
        // time: 20 of them cost one call each.
        let owned = self
            .owned_lookups
            .get(uid, |uids| async move {
                Ok(self.find_owned(Some(&uids)).await?.into_iter().collect())
            })
            .await?
            .unwrap_or_default();
        let mut lbs = Vec::new();
        for arn in &owned.load_balancers {
            let found = self
                .lb_lookups
                .get(arn, |arns| async move {
                    Ok(self
                        .describe_load_balancers(&arns, resync)
                        .await?
                        .into_iter()
                        .filter_map(|l| Some((l.load_balancer_arn()?.to_owned(), l)))
                        .collect())
                })
                .await?;
            lbs.extend(found);
        }
        let by_name;
        let current = match lbs.iter().find(|l| l.load_balancer_name() == Some(&d.name)) {
            Some(l) => Some(l),
            None => {
                by_name = self.load_balancer_by_name(&d).await?;
                by_name.as_ref()
            }
        };
        let stale: Vec<&LoadBalancer> = lbs
            .iter()
            .filter(|l| l.load_balancer_name() != Some(&d.name))
            .collect();

        let subnets = match current {
            Some(_) if d.subnets.is_none() => None,
            _ => Some(self.subnets(&d).await?),
        };
        let vpc = match (current.and_then(|l| l.vpc_id()), &subnets) {
            (Some(v), _) => v.to_owned(),
            (None, Some(s)) => s.vpc.clone(),
            (None, None) => self.subnets(&d).await?.vpc,
        };

        let sg = self
            .converge_security_group(&d, &owned.security_groups, &vpc, resync)
            .await?;

        let (lb_arn, created, lb) = match current {
            Some(l) => {
                let arn = l.load_balancer_arn().unwrap_or_default().to_owned();
                self.converge_load_balancer(&d, l, &sg, subnets.as_ref(), resync)
                    .await?;
                (arn, false, l.clone())
            }
            None => {
                let l = self
                    .create_load_balancer(&d, &sg, subnets.as_ref().expect("subnets resolved"))
                    .await?;
                (
                    l.load_balancer_arn().unwrap_or_default().to_owned(),
                    true,
                    l,
                )
            }
        };

        let target_groups = self
            .converge_listeners(
                &d,
                &Placed {
                    arn: &lb_arn,
                    created,
                    vpc: &vpc,
                },
                &owned.target_groups,
                resync,
            )
            .await?;

        let mut warnings = d.warnings.clone();
        if !stale.is_empty() {
            warnings.push(Warning {
                reason: "ReplacingLoadBalancer".into(),
                message: format!(
                    "scheme or IP address type changed, which AWS cannot change in place: created {}; \
                     the old {} is deleted now that the Service points at the new one",
                    d.name,
                    stale
                        .iter()
                        .filter_map(|l| l.load_balancer_name())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        self.known.lock().expect("known lock").insert(
            uid.clone(),
            Known {
                spec: spec.clone(),
                target_groups,
                stale: !stale.is_empty(),
            },
        );
        Ok(status_of(&lb, warnings))
    }

    async fn converge_security_group(
        &self,
        d: &Desired,
        owned: &[String],
        vpc: &str,
        resync: bool,
    ) -> Result<String, ProviderError> {
        let (id, current) = match owned.first() {
            Some(id) => {
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
                    .await?;
                let mut rules = BTreeSet::new();
                for g in r.security_groups() {
                    for p in g.ip_permissions() {
                        rules.extend(rules_of(p));
                    }
                }
                (id.clone(), rules)
            }
            None => {
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
                                d.tags
                                    .get(crate::desired::TAG_SERVICE)
                                    .map_or("", String::as_str)
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
                    Ok(r) => (r.group_id().unwrap_or_default().to_owned(), BTreeSet::new()),
                    // A retry whose first attempt got through: adopt the
                    // group if it carries this Service's tags.
                    Err(e) if e.is("InvalidGroup.Duplicate") => {
                        let id = self.find_security_group(d, vpc).await?;
                        return Box::pin(self.converge_security_group(d, &[id], vpc, resync)).await;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        let add: Vec<&IngressRule> = d.ingress.difference(&current).collect();
        let remove: Vec<&IngressRule> = current.difference(&d.ingress).collect();
        if !add.is_empty() {
            self.clients
                .call(
                    CallKind::Ec2Mutate,
                    "ec2:AuthorizeSecurityGroupIngress",
                    self.clients
                        .ec2
                        .authorize_security_group_ingress()
                        .group_id(&id)
                        .set_ip_permissions(Some(permissions(&add)))
                        .send(),
                )
                .await
                .tolerate(&["InvalidPermission.Duplicate"])?;
        }
        if !remove.is_empty() {
            self.clients
                .call(
                    CallKind::Ec2Mutate,
                    "ec2:RevokeSecurityGroupIngress",
                    self.clients
                        .ec2
                        .revoke_security_group_ingress()
                        .group_id(&id)
                        .set_ip_permissions(Some(permissions(&remove)))
                        .send(),
                )
                .await?;
        }
        Ok(id)
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
        let uid = d.tags.get(TAG_SERVICE_UID).map(String::as_str);
        r.security_groups()
            .iter()
            .find(|g| {
                g.tags()
                    .iter()
                    .any(|t| t.key() == Some(TAG_SERVICE_UID) && t.value() == uid)
            })
            .and_then(|g| g.group_id().map(str::to_owned))
            .ok_or_else(|| {
                ProviderError::transient(
                    "SecurityGroupConflict",
                    format!(
                        "a security group named {} exists in {vpc} but is not tagged for this Service; remove or rename it",
                        d.security_group_name
                    ),
                )
            })
    }

    async fn create_load_balancer(
        &self,
        d: &Desired,
        sg: &str,
        subnets: &Subnets,
    ) -> Result<LoadBalancer, ProviderError> {
        // Not retried by the SDK: a retry after a lost response would create
        // a second NLB on endpoints that do not deduplicate by name. The next
        // reconcile finds the first one by its tags instead.
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
                "AwsRejected",
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

    async fn converge_load_balancer(
        &self,
        d: &Desired,
        lb: &LoadBalancer,
        sg: &str,
        subnets: Option<&Subnets>,
        resync: bool,
    ) -> Result<(), ProviderError> {
        let arn = lb.load_balancer_arn().unwrap_or_default();
        if !lb.security_groups().iter().any(|s| s == sg) {
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
        if let (Some(s), Some(_)) = (subnets, &d.subnets) {
            let have: BTreeSet<&str> = lb
                .availability_zones()
                .iter()
                .filter_map(|z| z.subnet_id())
                .collect();
            let want: BTreeSet<&str> = s.ids.iter().map(String::as_str).collect();
            if have != want {
                self.clients
                    .call(
                        CallKind::ElbMutate,
                        "elasticloadbalancing:SetSubnets",
                        self.clients
                            .elb
                            .set_subnets()
                            .load_balancer_arn(arn)
                            .set_subnets(Some(s.ids.clone()))
                            .send(),
                    )
                    .await?;
            }
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
            let have = r
                .attributes()
                .iter()
                .find(|a| a.key() == Some(CROSS_ZONE_ATTRIBUTE))
                .and_then(|a| a.value())
                == Some("true");
            if have != want {
                self.set_cross_zone(arn, want).await?;
            }
        }
        Ok(())
    }

    /// Converges target groups, targets and listeners; deletes what no port
    /// wants. Returns the target groups by name with their targets.
    async fn converge_listeners(
        &self,
        d: &Desired,
        nlb: &Placed<'_>,
        owned_tgs: &[String],
        resync: bool,
    ) -> Result<BTreeMap<String, (String, BTreeSet<TargetKey>)>, ProviderError> {
        let (lb_arn, vpc) = (nlb.arn, nlb.vpc);
        let listeners = if nlb.created {
            Vec::new()
        } else {
            self.clients
                .call_paced(
                    CallKind::ElbDescribe,
                    resync,
                    "elasticloadbalancing:DescribeListeners",
                    self.clients
                        .elb
                        .describe_listeners()
                        .load_balancer_arn(lb_arn)
                        .send(),
                )
                .await?
                .listeners()
                .to_vec()
        };
        let tgs = self.describe_target_groups(owned_tgs, resync).await?;
        let by_name: BTreeMap<&str, &TargetGroup> = tgs
            .iter()
            .filter_map(|t| Some((t.target_group_name()?, t)))
            .collect();

        let mut result = BTreeMap::new();
        for l in d.listeners.values() {
            let tg = &l.target_group;
            let (tg_arn, targets) = match by_name.get(tg.name.as_str()) {
                Some(existing) => self.converge_target_group(tg, existing, resync).await?,
                None => (self.create_target_group(d, tg, vpc).await?, BTreeSet::new()),
            };
            self.sync_targets(&tg_arn, &targets, &tg.targets).await?;
            let existing = listeners
                .iter()
                .find(|x| x.port() == Some(i32::from(l.port)));
            match existing {
                None => self.create_listener(lb_arn, l, &tg_arn).await?,
                Some(x) if !listener_matches(x, l, &tg_arn) => {
                    self.modify_listener(x.listener_arn().unwrap_or_default(), l, &tg_arn)
                        .await?;
                }
                Some(_) => {}
            }
            result.insert(tg.name.clone(), (tg_arn, tg.targets.clone()));
        }

        for x in &listeners {
            let port = x.port().and_then(|p| u16::try_from(p).ok());
            if port.is_none_or(|p| !d.listeners.contains_key(&p)) {
                self.clients
                    .call(
                        CallKind::ElbMutate,
                        "elasticloadbalancing:DeleteListener",
                        self.clients
                            .elb
                            .delete_listener()
                            .set_listener_arn(x.listener_arn().map(str::to_owned))
                            .send(),
                    )
                    .await
                    .tolerate(&["ListenerNotFound"])?;
            }
        }
        // Target groups no port wants, unless an NLB other than this one
        // still uses them (a stale NLB's are deleted with it).
        for t in &tgs {
            let name = t.target_group_name().unwrap_or_default();
            let only_ours = t.load_balancer_arns().iter().all(|a| a == lb_arn);
            if !result.contains_key(name) && only_ours {
                self.delete_target_group(t.target_group_arn().unwrap_or_default())
                    .await?;
            }
        }
        Ok(result)
    }

    async fn create_target_group(
        &self,
        d: &Desired,
        tg: &DesiredTargetGroup,
        vpc: &str,
    ) -> Result<String, ProviderError> {
        let h = &tg.health;
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
        let mut req = with_health!(req, h);
        if d.ip_address_type == crate::options::IpAddressType::Dualstack {
            req = req.ip_address_type(
                aws_sdk_elasticloadbalancingv2::types::TargetGroupIpAddressTypeEnum::Ipv4,
            );
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
        if tg.proxy_protocol {
            self.set_proxy_protocol(&arn, true).await?;
        }
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
                "TargetGroupConflict",
                format!(
                    "a target group named {name} exists but is not tagged for this Service; remove it"
                ),
            ))
        }
    }

    /// The NLB named for this Service when the tag lookup did not list it:
    /// the tagging API trails creations, ELBv2's lookup by name does not. So
    /// an NLB created moments ago, or by a run whose answer was lost, is
    /// found before a second one is made.
    async fn load_balancer_by_name(
        &self,
        d: &Desired,
    ) -> Result<Option<LoadBalancer>, ProviderError> {
        let found = self
            .clients
            .call(
                CallKind::ElbDescribe,
                "elasticloadbalancing:DescribeLoadBalancers",
                self.clients
                    .elb
                    .describe_load_balancers()
                    .names(&d.name)
                    .send(),
            )
            .await;
        let found = match found {
            Ok(r) => r.load_balancers().to_vec(),
            Err(e) if e.is("LoadBalancerNotFound") => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        for lb in &found {
            if self
                .tagged_for(d, lb.load_balancer_arn().unwrap_or_default())
                .await?
            {
                return Ok(Some(lb.clone()));
            }
        }
        if found.is_empty() {
            Ok(None)
        } else {
            Err(ProviderError::transient(
                "LoadBalancerConflict",
                format!(
                    "a load balancer named {} exists but is not tagged for this Service; remove it",
                    d.name
                ),
            ))
        }
    }

    /// Whether the ELBv2 resource `arn` carries this Service's uid tag.
    async fn tagged_for(&self, d: &Desired, arn: &str) -> Result<bool, ProviderError> {
        let tags = self
            .clients
            .call(
                CallKind::ElbDescribe,
                "elasticloadbalancing:DescribeTags",
                self.clients.elb.describe_tags().resource_arns(arn).send(),
            )
            .await?;
        let uid = d.tags.get(TAG_SERVICE_UID).map(String::as_str);
        Ok(tags.tag_descriptions().iter().any(|td| {
            td.tags()
                .iter()
                .any(|t| t.key() == Some(TAG_SERVICE_UID) && t.value() == uid)
        }))
    }

    async fn set_proxy_protocol(&self, arn: &str, on: bool) -> Result<(), ProviderError> {
        self.clients
            .call(
                CallKind::ElbMutate,
                "elasticloadbalancing:ModifyTargetGroupAttributes",
                self.clients
                    .elb
                    .modify_target_group_attributes()
                    .target_group_arn(arn)
                    .attributes(
                        TargetGroupAttribute::builder()
                            .key(PROXY_PROTOCOL_ATTRIBUTE)
                            .value(on.to_string())
                            .build(),
                    )
                    .send(),
            )
            .await?;
        Ok(())
    }

    /// Health check and attributes of an existing target group; returns its
    /// ARN and registered targets.
    async fn converge_target_group(
        &self,
        tg: &DesiredTargetGroup,
        existing: &TargetGroup,
        resync: bool,
    ) -> Result<(String, BTreeSet<TargetKey>), ProviderError> {
        let arn = existing.target_group_arn().unwrap_or_default().to_owned();
        let h = &tg.health;
        let hc_protocol = existing.health_check_protocol().map(|p| p.as_str());
        let drifted = hc_protocol != Some(h.protocol_str())
            || existing.health_check_port() != Some(h.port_string().as_str())
            || (h.protocol != HealthProtocol::Tcp
                && existing.health_check_path() != h.path.as_deref())
            || h.interval
                .is_some_and(|v| existing.health_check_interval_seconds() != Some(v))
            || h.timeout
                .is_some_and(|v| existing.health_check_timeout_seconds() != Some(v))
            || h.healthy_threshold
                .is_some_and(|v| existing.healthy_threshold_count() != Some(v))
            || h.unhealthy_threshold
                .is_some_and(|v| existing.unhealthy_threshold_count() != Some(v));
        if drifted {
            self.clients
                .call(
                    CallKind::ElbMutate,
                    "elasticloadbalancing:ModifyTargetGroup",
                    with_health!(
                        self.clients
                            .elb
                            .modify_target_group()
                            .target_group_arn(&arn),
                        h
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
        let proxy = attrs
            .attributes()
            .iter()
            .find(|a| a.key() == Some(PROXY_PROTOCOL_ATTRIBUTE))
            .and_then(|a| a.value())
            == Some("true");
        if proxy != tg.proxy_protocol {
            self.set_proxy_protocol(&arn, tg.proxy_protocol).await?;
        }
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
        let registered = health
            .target_health_descriptions()
            .iter()
            .filter_map(|t| {
                let t = t.target()?;
                Some((t.id()?.to_owned(), u16::try_from(t.port()?).ok()?))
            })
            .collect();
        Ok((arn, registered))
    }

    /// Registers and deregisters the difference between `have` and `want`.
    async fn sync_targets(
        &self,
        arn: &str,
        have: &BTreeSet<TargetKey>,
        want: &BTreeSet<TargetKey>,
    ) -> Result<(), CallError> {
        let add: Vec<&TargetKey> = want.difference(have).collect();
        let remove: Vec<&TargetKey> = have.difference(want).collect();
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
        Ok(())
    }

    async fn create_listener(
        &self,
        lb_arn: &str,
        l: &DesiredListener,
        tg_arn: &str,
    ) -> Result<(), ProviderError> {
        let (certs, policy) = tls_parts(l);
        self.clients
            .call(
                CallKind::ElbMutate,
                "elasticloadbalancing:CreateListener",
                self.clients
                    .elb
                    .create_listener()
                    .load_balancer_arn(lb_arn)
                    .port(i32::from(l.port))
                    .protocol(ProtocolEnum::from(l.protocol.as_str()))
                    .set_certificates(certs)
                    .set_ssl_policy(policy)
                    .default_actions(forward(tg_arn))
                    // Not retried by the SDK either: some endpoints accept a
                    // second listener on the same port.
                    .customize()
                    .config_override(no_retry())
                    .send(),
            )
            .await?;
        Ok(())
    }

    async fn modify_listener(
        &self,
        arn: &str,
        l: &DesiredListener,
        tg_arn: &str,
    ) -> Result<(), ProviderError> {
        let (certs, policy) = tls_parts(l);
        self.clients
            .call(
                CallKind::ElbMutate,
                "elasticloadbalancing:ModifyListener",
                self.clients
                    .elb
                    .modify_listener()
                    .listener_arn(arn)
                    .port(i32::from(l.port))
                    .protocol(ProtocolEnum::from(l.protocol.as_str()))
                    .set_certificates(certs)
                    .set_ssl_policy(policy)
                    .default_actions(forward(tg_arn))
                    .send(),
            )
            .await?;
        Ok(())
    }

    async fn delete_target_group(&self, arn: &str) -> Result<(), ProviderError> {
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
                std::time::Duration::from_secs(5),
                "DeletionPending",
                format!("target group {arn} is still in use; retrying"),
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// The target-only path: registers and deregisters from what the last
    /// converge left, with no describe. Falls back to a full converge when
    /// nothing is known (after a restart).
    pub(crate) async fn converge_targets(
        &self,
        spec: &LoadBalancerSpec,
    ) -> Result<Vec<Warning>, ProviderError> {
        let opts = AwsOptions::parse(&spec.annotations)?;
        let d = Desired::build(spec, &opts, &self.settings.cluster)?;
        let known = self
            .known
            .lock()
            .expect("known lock")
            .get(&spec.lb.key.uid)
            .cloned();
        let Some(mut known) = known.filter(|k| {
            d.listeners
                .values()
                .all(|l| k.target_groups.contains_key(&l.target_group.name))
        }) else {
            return self.converge(spec).await.map(|s| s.warnings);
        };
        for l in d.listeners.values() {
            let tg = &l.target_group;
            let (arn, have) = known
                .target_groups
                .get_mut(&tg.name)
                .expect("checked above");
            match self.sync_targets(arn, have, &tg.targets).await {
                Ok(()) => *have = tg.targets.clone(),
                Err(e) if e.is("TargetGroupNotFound") => {
                    // Deleted behind our back: a full converge recreates it.
                    return self.converge(spec).await.map(|s| s.warnings);
                }
                Err(e) => return Err(e.into()),
            }
        }
        known.spec = spec.clone();
        self.known
            .lock()
            .expect("known lock")
            .insert(spec.lb.key.uid.clone(), known);
        Ok(d.warnings)
    }

    /// After the status naming the new NLB is published, deletes NLBs of an
    /// earlier shape and their target groups.
    pub(crate) async fn delete_stale(&self, spec: &LoadBalancerSpec) -> Result<(), ProviderError> {
        let uid = &spec.lb.key.uid;
        let stale = self
            .known
            .lock()
            .expect("known lock")
            .get(uid)
            .is_some_and(|k| k.stale);
        if !stale {
            return Ok(());
        }
        let opts = AwsOptions::parse(&spec.annotations)?;
        let d = Desired::build(spec, &opts, &self.settings.cluster)?;
        let owned = self
            .find_owned(Some(std::slice::from_ref(uid)))
            .await?
            .remove(uid)
            .unwrap_or_default();
        let lbs = self
            .describe_load_balancers(&owned.load_balancers, false)
            .await?;
        let old: Vec<String> = lbs
            .iter()
            .filter(|l| l.load_balancer_name() != Some(&d.name))
            .filter_map(|l| l.load_balancer_arn().map(str::to_owned))
            .collect();
        let wanted: BTreeSet<&str> = d
            .listeners
            .values()
            .map(|l| l.target_group.name.as_str())
            .collect();
        let tgs = self
            .describe_target_groups(&owned.target_groups, false)
            .await?;
        let old_tgs: Vec<String> = tgs
            .iter()
            .filter(|t| !wanted.contains(t.target_group_name().unwrap_or_default()))
            .filter_map(|t| t.target_group_arn().map(str::to_owned))
            .collect();
        self.delete_owned(&Owned {
            load_balancers: old,
            target_groups: old_tgs,
            ..Owned::default()
        })
        .await?;
        if let Some(k) = self.known.lock().expect("known lock").get_mut(uid) {
            k.stale = false;
        }
        Ok(())
    }

    /// Deletes the given resources in the order AWS requires: NLBs (which
    /// takes their listeners), target groups, security groups. Absent is
    /// success.
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
                // The NLB's network interfaces take a while to go.
                Err(e) if e.is("DependencyViolation") => {
                    return Err(ProviderError::retry_after(
                        std::time::Duration::from_secs(10),
                        "DeletionPending",
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

fn status_of(lb: &LoadBalancer, warnings: Vec<Warning>) -> LoadBalancerStatus {
    LoadBalancerStatus {
        ingress: lb
            .dns_name()
            .map(|h| Ingress {
                address: Address::Hostname(h.to_owned()),
                ip_mode: None,
                ports: vec![],
            })
            .into_iter()
            .collect(),
        warnings,
    }
}

fn no_retry() -> aws_sdk_elasticloadbalancingv2::config::Builder {
    aws_sdk_elasticloadbalancingv2::config::Builder::default()
        .retry_config(aws_sdk_elasticloadbalancingv2::config::retry::RetryConfig::disabled())
}

fn forward(tg_arn: &str) -> Action {
    Action::builder()
        .r#type(ActionTypeEnum::Forward)
        .target_group_arn(tg_arn)
        .build()
}

fn tls_parts(l: &DesiredListener) -> (Option<Vec<Certificate>>, Option<String>) {
    match &l.tls {
        Some((cert, policy)) => (
            Some(vec![Certificate::builder().certificate_arn(cert).build()]),
            Some(policy.clone()),
        ),
        None => (None, None),
    }
}

fn listener_matches(
    x: &aws_sdk_elasticloadbalancingv2::types::Listener,
    l: &DesiredListener,
    tg_arn: &str,
) -> bool {
    let forwards_to = x
        .default_actions()
        .iter()
        .filter_map(|a| a.target_group_arn())
        .collect::<Vec<_>>();
    let cert = x.certificates().iter().find_map(|c| c.certificate_arn());
    x.protocol().map(|p| p.as_str()) == Some(l.protocol.as_str())
        && forwards_to == [tg_arn]
        && cert == l.tls.as_ref().map(|(c, _)| c.as_str())
        && (l.tls.is_none() || x.ssl_policy() == l.tls.as_ref().map(|(_, p)| p.as_str()))
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

fn rules_of(p: &IpPermission) -> Vec<IngressRule> {
    let (Some(proto), Some(from), Some(to)) = (p.ip_protocol(), p.from_port(), p.to_port()) else {
        return vec![];
    };
    let protocol = match proto {
        "tcp" | "6" => "tcp",
        "udp" | "17" => "udp",
        // Not a rule FerryLB writes: left alone.
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

fn permissions(rules: &[&IngressRule]) -> Vec<IpPermission> {
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
