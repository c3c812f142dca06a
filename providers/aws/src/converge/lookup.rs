//! Finding what FerryLB made: by tags (the Resource Groups Tagging API),
//! by ARN (describes in batches of 20) and, for an NLB the tags do not list
//! yet, by its deterministic name.

use std::collections::BTreeMap;
use std::future::Future;

use aws_sdk_elasticloadbalancingv2::types::{LoadBalancer, TargetGroup};
use aws_sdk_resourcegroupstagging::types::TagFilter;
use ferrylb_model::{ProviderError, reason};

use crate::AwsProvider;
use crate::client::{CallError, CallKind};
use crate::desired::{Desired, TAG_CLUSTER, TAG_SERVICE, TAG_SERVICE_UID};

/// ARNs per DescribeLoadBalancers/DescribeTargetGroups call.
const ARNS_PER_DESCRIBE: usize = 20;
/// Values per tag filter, AWS's limit.
const VALUES_PER_TAG_FILTER: usize = 20;

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

    /// Files a tagged resource under its kind: ELBv2 resources by ARN,
    /// security groups by id. Other kinds are not FerryLB's and are ignored.
    pub(super) fn add(&mut self, arn: &str) {
        if arn.contains(":loadbalancer/") {
            self.load_balancers.push(arn.to_owned());
        } else if arn.contains(":targetgroup/") {
            self.target_groups.push(arn.to_owned());
        } else if let Some((_, id)) = arn.rsplit_once("security-group/") {
            self.security_groups.push(id.to_owned());
        }
    }
}

/// Whether tags (as the SDK lists them) carry `uid` as the Service uid.
pub(super) fn carries_uid<'a>(
    mut tags: impl Iterator<Item = (Option<&'a str>, Option<&'a str>)>,
    uid: Option<&str>,
) -> bool {
    tags.any(|(k, v)| k == Some(TAG_SERVICE_UID) && v == uid)
}

impl AwsProvider {
    /// Finds every resource tagged for this cluster (and for `uids`, when
    /// given), grouped by Service uid.
    pub(crate) async fn find_owned(
        &self,
        uids: Option<&[String]>,
    ) -> Result<BTreeMap<String, Owned>, ProviderError> {
        let cluster = TagFilter::builder()
            .key(TAG_CLUSTER)
            .values(&self.settings.cluster)
            .build();
        let filter_sets: Vec<Vec<TagFilter>> = match uids {
            None => vec![vec![cluster]],
            Some(uids) => uids
                .chunks(VALUES_PER_TAG_FILTER)
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
                if let Some(s) = tags.get(TAG_SERVICE) {
                    o.service = (*s).to_owned();
                }
                o.add(arn);
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

    /// What is tagged for `uid`, asked together with the Services
    /// converging at the same time: 20 of them cost one call.
    pub(super) async fn owned_shared(&self, uid: &str) -> Result<Owned, ProviderError> {
        Ok(self
            .owned_lookups
            .get(uid, |uids| async move {
                Ok(self.find_owned(Some(&uids)).await?.into_iter().collect())
            })
            .await?
            .unwrap_or_default())
    }

    /// The NLBs `arns` names, described together with those of the Services
    /// converging at the same time.
    pub(super) async fn load_balancers_shared(
        &self,
        arns: &[String],
        resync: bool,
    ) -> Result<Vec<LoadBalancer>, ProviderError> {
        let mut lbs = Vec::new();
        for arn in arns {
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
        Ok(lbs)
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

    pub(super) async fn describe_load_balancers(
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

    pub(super) async fn describe_target_groups(
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

    /// The NLB named for this Service when the tag lookup did not list it:
    /// the tagging API trails creations, ELBv2's lookup by name does not. So
    /// an NLB created moments ago, or by a run whose answer was lost, is
    /// found before a second one is made.
    pub(super) async fn load_balancer_by_name(
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
                reason::LOAD_BALANCER_CONFLICT,
                format!(
                    "a load balancer named {} exists but is not tagged for this Service; remove it",
                    d.name
                ),
            ))
        }
    }

    /// Whether the ELBv2 resource `arn` carries this Service's uid tag.
    pub(super) async fn tagged_for(&self, d: &Desired, arn: &str) -> Result<bool, ProviderError> {
        let tags = self
            .clients
            .call(
                CallKind::ElbDescribe,
                "elasticloadbalancing:DescribeTags",
                self.clients.elb.describe_tags().resource_arns(arn).send(),
            )
            .await?;
        let uid = d.tags.get(TAG_SERVICE_UID).map(String::as_str);
        Ok(tags
            .tag_descriptions()
            .iter()
            .any(|td| carries_uid(td.tags().iter().map(|t| (t.key(), t.value())), uid)))
    }
}
