//! Which subnets an NLB goes in: the annotation's ids or Name tags, or those
//! tagged for load balancers of its scheme, one per zone, all in one VPC.
//! Looked up once per query and cached.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::{Filter, Subnet};
use ferrylb_model::{ProviderError, reason};

use crate::AwsProvider;
use crate::client::CallKind;
use crate::desired::{Desired, cluster_ownership_tag};
use crate::options::{SUBNETS, Scheme};

/// How long a failed lookup waits: subnets are tagged by people.
const RETRY_AFTER: Duration = Duration::from_secs(60);

/// Which subnets a load balancer asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SubnetQuery {
    pub(super) scheme: Scheme,
    pub(super) explicit: Option<Vec<String>>,
}

/// Resolved subnets: one per zone, all in one VPC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subnets {
    pub(super) ids: Vec<String>,
    pub(super) vpc: String,
}

/// The DescribeSubnets filter for subnets named in the annotation: by id
/// (`subnet-…`) or by Name tag, not a mix.
pub(super) fn explicit_filter(
    refs: &[String],
) -> Result<(&'static str, Vec<String>), ProviderError> {
    let (ids, names): (Vec<_>, Vec<_>) =
        refs.iter().cloned().partition(|r| r.starts_with("subnet-"));
    if names.is_empty() {
        Ok(("subnet-id", ids))
    } else if ids.is_empty() {
        Ok(("tag:Name", names))
    } else {
        Err(ProviderError::invalid(
            SUBNETS,
            &refs.join(","),
            "subnet ids or Name tags, not both",
        ))
    }
}

/// Picks one subnet per zone from what EC2 returned for `q`. Discovered
/// subnets must carry the scheme's role tag (value `1` or empty) and either
/// this cluster's tag or no cluster tag; those tagged for this cluster win,
/// then the lowest id. Named subnets need no tags; the same order picks one
/// per zone.
///
/// # Errors
/// `SubnetsNotFound` when nothing qualifies or the subnets span VPCs.
pub(super) fn pick(
    found: &[Subnet],
    q: &SubnetQuery,
    cluster: &str,
    vpc_hint: Option<&str>,
) -> Result<Subnets, ProviderError> {
    let ours = cluster_ownership_tag(cluster);
    let role_tag = q.scheme.subnet_role_tag();
    let mut by_zone: BTreeMap<&str, (bool, &str, &str)> = BTreeMap::new();
    for s in found {
        let (Some(id), Some(zone), Some(vpc)) = (s.subnet_id(), s.availability_zone(), s.vpc_id())
        else {
            continue;
        };
        let cluster_tags: Vec<&str> = s
            .tags()
            .iter()
            .filter_map(|t| t.key())
            .filter(|k| k.starts_with("kubernetes.io/cluster/"))
            .collect();
        let mine = cluster_tags.contains(&ours.as_str());
        if q.explicit.is_none() {
            let role = s
                .tags()
                .iter()
                .find(|t| t.key() == Some(role_tag))
                .and_then(|t| t.value());
            if !matches!(role, Some("1" | "")) || !cluster_tags.is_empty() && !mine {
                continue;
            }
        }
        let cand = (!mine, id, vpc);
        match by_zone.get(zone) {
            Some(cur) if *cur <= cand => {}
            _ => {
                by_zone.insert(zone, cand);
            }
        }
    }
    let vpcs: BTreeSet<&str> = by_zone.values().map(|(_, _, v)| *v).collect();
    if by_zone.is_empty() {
        let how = match &q.explicit {
            Some(refs) => format!("{SUBNETS}={} matches no subnet", refs.join(",")),
            None => format!(
                "no subnet is tagged {role_tag}=1 (and {ours} or no cluster tag){}",
                vpc_hint.map(|v| format!(" in {v}")).unwrap_or_default()
            ),
        };
        return Err(ProviderError::retry_after(
            RETRY_AFTER,
            reason::SUBNETS_NOT_FOUND,
            format!("cannot place a {} load balancer: {how}", q.scheme.as_str()),
        ));
    }
    if vpcs.len() > 1 {
        return Err(ProviderError::retry_after(
            RETRY_AFTER,
            reason::SUBNETS_NOT_FOUND,
            format!(
                "the subnets found are in several VPCs ({}); name one with --aws-vpc-id or set {SUBNETS}",
                vpcs.into_iter().collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    Ok(Subnets {
        vpc: vpcs.into_iter().next().expect("one VPC").to_owned(),
        ids: by_zone
            .into_values()
            .map(|(_, id, _)| id.to_owned())
            .collect(),
    })
}

impl AwsProvider {
    /// Resolves the subnets for `d`, from the cache when fresh. Reconciles
    /// that start together ask EC2 once.
    pub(super) async fn subnets(&self, d: &Desired) -> Result<Subnets, ProviderError> {
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
        req = match &q.explicit {
            Some(refs) => {
                let (key, values) = explicit_filter(refs)?;
                req.filters(Filter::builder().name(key).set_values(Some(values)).build())
            }
            None => req.filters(
                Filter::builder()
                    .name("tag-key")
                    .values(q.scheme.subnet_role_tag())
                    .build(),
            ),
        };
        if let Some(vpc) = &self.settings.vpc_id {
            req = req.filters(Filter::builder().name("vpc-id").values(vpc).build());
        }
        let found = self
            .clients
            .call(CallKind::Ec2Describe, "ec2:DescribeSubnets", req.send())
            .await?;
        let s = pick(
            found.subnets(),
            &q,
            &self.settings.cluster,
            self.settings.vpc_id.as_deref(),
        )?;
        self.subnets
            .lock()
            .expect("subnet cache lock")
            .insert(q, (Instant::now(), s.clone()));
        Ok(s)
    }
}
