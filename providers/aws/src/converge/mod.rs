//! Converging AWS to the desired resources: read the current state with as
//! few describes as the API allows, decide with pure functions what differs,
//! then make only the calls the difference needs. One module per AWS
//! resource; each pairs its calls with the decisions behind them.
//!
//! # Expected flow of an ensure
//! 1. Find everything tagged for the Service (one tagging call, [`lookup`]).
//! 2. Security group: found, or created with its tags; ingress rules diffed
//!    ([`security_group`]).
//! 3. NLB: found by its name among the tagged ones, else by ELBv2's own
//!    lookup by name (the tagging API trails creations), else created with
//!    its tags and the security group ([`load_balancer`]). NLBs of another
//!    name (scheme or address type changed) are stale: deleted after the new
//!    status is published.
//! 4. Per port: target group found or created (tagged), attributes and
//!    health check diffed, targets registered/deregistered by difference
//!    ([`target_groups`]), listener created or modified ([`listeners`]).
//! 5. Listeners and target groups no port wants any more are deleted
//!    ([`delete`]).
//!
//! Every step is idempotent; a crash between any two calls leaves only
//! tagged resources the next run finds.

mod delete;
mod listeners;
mod load_balancer;
mod lookup;
mod security_group;
mod subnets;
mod target_groups;
#[cfg(test)]
mod tests;

use aws_sdk_elasticloadbalancingv2::types::{LoadBalancer, Tag};
use ferrylb_model::reason;
use ferrylb_model::{
    Address, Ingress, LoadBalancerRef, LoadBalancerSpec, LoadBalancerStatus, ProviderError, Warning,
};

pub use lookup::Owned;
pub(crate) use subnets::{SubnetQuery, Subnets};

use crate::desired::Desired;
use crate::options::AwsOptions;
use crate::{AwsProvider, Known};

fn tag(k: &str, v: &str) -> Tag {
    Tag::builder().key(k).value(v).build()
}

fn elb_tags(d: &Desired) -> Vec<Tag> {
    d.tags.iter().map(|(k, v)| tag(k, v)).collect()
}

/// A request override for creations: not retried by the SDK, since a retry
/// after a lost response would create a second resource on endpoints that
/// do not deduplicate by name. The next reconcile finds the first one by its
/// tags instead.
fn no_retry() -> aws_sdk_elasticloadbalancingv2::config::Builder {
    aws_sdk_elasticloadbalancingv2::config::Builder::default()
        .retry_config(aws_sdk_elasticloadbalancingv2::config::retry::RetryConfig::disabled())
}

/// The status to publish for `lb`: its DNS name.
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

/// Splits a Service's NLBs into the one named `name` (the shape it wants)
/// and those of an earlier shape, which a new one replaces.
pub(super) fn split_by_name<'a>(
    lbs: &'a [LoadBalancer],
    name: &str,
) -> (Option<&'a LoadBalancer>, Vec<&'a LoadBalancer>) {
    let current = lbs.iter().find(|l| l.load_balancer_name() == Some(name));
    let stale = lbs
        .iter()
        .filter(|l| l.load_balancer_name() != Some(name))
        .collect();
    (current, stale)
}

/// The warning that `stale` NLBs are being replaced by `d`'s.
fn replacing(d: &Desired, stale: &[&LoadBalancer]) -> Warning {
    Warning {
        reason: reason::REPLACING_LOAD_BALANCER.into(),
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
    }
}

/// Parses the Service's options and computes its resources: pure, so
/// [`validate`](ferrylb_model::LoadBalancerProvider::validate) runs it
/// before any call, and every entry point runs the same.
#[cfg(test)]
pub(crate) fn desired(spec: &LoadBalancerSpec, cluster: &str) -> Result<Desired, ProviderError> {
    desired_with(spec, cluster, crate::desired::TARGETS_PER_ZONE)
}

/// [`desired`] for an NLB that holds `targets_per_zone`.
pub(crate) fn desired_with(
    spec: &LoadBalancerSpec,
    cluster: &str,
    targets_per_zone: usize,
) -> Result<Desired, ProviderError> {
    let opts = AwsOptions::parse(&spec.annotations)?;
    Desired::build_with(spec, &opts, cluster, targets_per_zone)
}

impl AwsProvider {
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

    /// Creates or converges the NLB for `spec`. See the module docs.
    pub(crate) async fn converge(
        &self,
        spec: &LoadBalancerSpec,
    ) -> Result<LoadBalancerStatus, ProviderError> {
        let d = desired_with(spec, &self.settings.cluster, self.settings.targets_per_zone)?;
        let uid = &spec.lb.key.uid;
        // Nothing changed since the last converge: this is a drift check,
        // paced by the resync share of the describe budget.
        let known = self
            .known
            .lock()
            .expect("known lock")
            .get(uid)
            .filter(|k| k.spec.same_desired_state(spec))
            .map(|k| k.owned.clone());
        let resync = known.is_some();

        // A drift check starts from what the last converge made: the ARNs
        // are described directly, and one gone is rebuilt as on a create.
        // A Service that changed looks its resources up by their tags.
        let owned = match known {
            Some(owned) => owned,
            None => self.owned_shared(uid).await?,
        };
        let lbs = self
            .load_balancers_shared(&owned.load_balancers, resync)
            .await?;
        let (tagged, stale) = split_by_name(&lbs, &d.name);
        let by_name;
        let current = match tagged {
            Some(l) => Some(l),
            None => {
                by_name = self.load_balancer_by_name(&d).await?;
                by_name.as_ref()
            }
        };

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
        let (lb, created) = match current {
            Some(l) => {
                self.converge_load_balancer(&d, l, &sg, subnets.as_ref(), resync)
                    .await?;
                (l.clone(), false)
            }
            None => {
                let s = subnets.as_ref().expect("subnets resolved");
                (self.create_load_balancer(&d, &sg, s).await?, true)
            }
        };
        let lb_arn = lb.load_balancer_arn().unwrap_or_default();
        let target_groups = self
            .converge_listeners(
                &d,
                &listeners::Placed {
                    arn: lb_arn,
                    created,
                    vpc: &vpc,
                },
                &owned.target_groups,
                resync,
            )
            .await?;

        let mut warnings = d.warnings.clone();
        if !stale.is_empty() {
            warnings.push(replacing(&d, &stale));
        }
        let owned = Owned {
            load_balancers: vec![lb_arn.to_owned()],
            target_groups: target_groups.values().map(|(arn, _)| arn.clone()).collect(),
            security_groups: vec![sg],
            ..owned
        };
        self.known.lock().expect("known lock").insert(
            uid.clone(),
            Known {
                spec: spec.clone(),
                name: d.name.clone(),
                owned,
                target_groups,
                stale: !stale.is_empty(),
            },
        );
        Ok(status_of(&lb, warnings))
    }

    /// The target-only path: registers and deregisters from what the last
    /// converge left, with no describe. Falls back to a full converge when
    /// nothing is known (after a restart).
    pub(crate) async fn converge_targets(
        &self,
        spec: &LoadBalancerSpec,
    ) -> Result<Vec<Warning>, ProviderError> {
        let d = desired_with(spec, &self.settings.cluster, self.settings.targets_per_zone)?;
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
        let Some(known) = self
            .known
            .lock()
            .expect("known lock")
            .get(uid)
            .filter(|k| k.stale)
            .cloned()
        else {
            return Ok(());
        };
        let owned = self
            .find_owned(Some(std::slice::from_ref(uid)))
            .await?
            .remove(uid)
            .unwrap_or_default();
        let lbs = self
            .describe_load_balancers(&owned.load_balancers, false)
            .await?;
        let tgs = self
            .describe_target_groups(&owned.target_groups, false)
            .await?;
        let old = delete::stale_parts(&lbs, &tgs, &known.name, &known.target_groups);
        self.delete_owned(&old).await?;
        if let Some(k) = self.known.lock().expect("known lock").get_mut(uid) {
            k.stale = false;
        }
        Ok(())
    }
}
