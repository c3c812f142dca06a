//! FerryLB's AWS provider: one ELBv2 Network Load Balancer per Service, a
//! target group and a listener per Service port, targets on every eligible
//! node's nodePort, and a security group carrying the Service's source
//! ranges.
//!
//! # How it finds what it made
//! Every resource is tagged with the cluster and the Service's uid
//! ([`desired::TAG_SERVICE_UID`]) at creation, in the creating call itself.
//! Before creating anything, the provider looks its resources up by those
//! tags (one Resource Groups Tagging API call, shared by up to 20 Services
//! converging at once) and, because that API trails creations, looks the
//! NLB up by its deterministic name too. A restart between any two calls
//! finds what the earlier run made and never creates a duplicate.
//!
//! # What it costs
//! See `BENCHMARKS.md` for the calls per operation. In short, for P ports
//! and K nodes: create 5 + 2P calls plus P·⌈K/200⌉ registrations; a node
//! added costs one RegisterTargets per target group and no describes; a
//! delete costs 3 + P.
#![forbid(unsafe_code)]

mod batch;
pub mod client;
mod converge;
pub mod desired;
pub mod gc;
pub mod options;
#[cfg(test)]
mod testing;

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_smithy_runtime_api::client::interceptors::SharedInterceptor;
use ferrylb_model::reason;
use ferrylb_model::{
    LoadBalancerProvider, LoadBalancerRef, LoadBalancerSpec, LoadBalancerStatus, ProviderError,
    Warning,
};

pub use client::{CallCounter, CallCounts, Clients, RateLimits, load_sdk_config};
use desired::TargetKey;
pub use gc::Orphan;

/// Readiness asks AWS itself only after this long without any call.
pub const PROBE_AFTER: std::time::Duration = std::time::Duration::from_secs(600);

/// How the provider runs.
#[derive(Debug, Clone)]
pub struct AwsSettings {
    /// The cluster's name: tagged on every resource, and the scope of
    /// `ferrylb gc`. Two clusters sharing an account must differ.
    pub cluster: String,
    /// Restricts subnet discovery to this VPC.
    pub vpc_id: Option<String>,
    /// Client-side pacing.
    pub limits: RateLimits,
    /// How long discovered subnets are reused before asking EC2 again.
    pub subnet_cache_ttl: Duration,
    /// Targets an NLB holds per zone; each target group counts. Past it a
    /// stable subset of the nodes is registered per zone.
    pub targets_per_zone: usize,
}

impl AwsSettings {
    /// Settings for `cluster` with AWS's published rates.
    pub fn new(cluster: impl Into<String>) -> Self {
        Self {
            cluster: cluster.into(),
            vpc_id: None,
            limits: RateLimits::default(),
            subnet_cache_ttl: Duration::from_secs(600),
            targets_per_zone: desired::TARGETS_PER_ZONE,
        }
    }
}

/// What the provider remembers about a load balancer it converged, so a
/// target-only change needs no describe at all. Lost on restart (the next
/// ensure rebuilds it from AWS).
#[derive(Debug, Clone)]
struct Known {
    spec: LoadBalancerSpec,
    /// The NLB's name.
    name: String,
    /// What the converge left: the NLB, its target groups and security
    /// group, so a drift check needs no tag lookup.
    owned: converge::Owned,
    /// Target groups by name: ARN and the targets registered.
    target_groups: BTreeMap<String, (String, std::collections::BTreeSet<TargetKey>)>,
    /// An NLB of an earlier shape (scheme or address type changed) still
    /// exists and is deleted once the new one's status is published.
    stale: bool,
}

/// The AWS provider.
pub struct AwsProvider {
    clients: Clients,
    settings: AwsSettings,
    known: Mutex<HashMap<String, Known>>,
    subnets: Mutex<HashMap<converge::SubnetQuery, (std::time::Instant, converge::Subnets)>>,
    /// Held while subnets are looked up, so reconciles that start together
    /// ask EC2 once, not once each.
    subnet_lookup: tokio::sync::Mutex<()>,
    /// Each VPC's CIDR blocks (IPv4, IPv6), for internal load balancers'
    /// default source ranges; a VPC's blocks rarely change.
    vpc_cidrs: Mutex<HashMap<String, Vec<ipnet::IpNet>>>,
    /// Tag lookups by Service uid, coalesced across concurrent reconciles.
    owned_lookups: batch::Coalescer<converge::Owned>,
    /// DescribeLoadBalancers by ARN, coalesced likewise.
    lb_lookups: batch::Coalescer<aws_sdk_elasticloadbalancingv2::types::LoadBalancer>,
}

impl AwsProvider {
    /// A provider using `sdk`'s credentials, region and endpoint.
    pub fn new(sdk: &SdkConfig, settings: AwsSettings) -> Self {
        Self::with_interceptors(sdk, settings, &[])
    }

    /// A provider whose SDK clients also run `interceptors` (tests inject
    /// faults this way).
    pub fn with_interceptors(
        sdk: &SdkConfig,
        settings: AwsSettings,
        interceptors: &[SharedInterceptor],
    ) -> Self {
        Self {
            clients: Clients::new(sdk, settings.limits, interceptors),
            settings,
            known: Mutex::new(HashMap::new()),
            subnets: Mutex::new(HashMap::new()),
            subnet_lookup: tokio::sync::Mutex::new(()),
            vpc_cidrs: Mutex::new(HashMap::new()),
            owned_lookups: batch::Coalescer::default(),
            lb_lookups: batch::Coalescer::default(),
        }
    }

    /// AWS requests made so far, by operation.
    pub fn calls(&self) -> &CallCounter {
        &self.clients.counter
    }

    /// The settings the provider runs with.
    pub fn settings(&self) -> &AwsSettings {
        &self.settings
    }

    fn forget(&self, uid: &str) {
        self.known.lock().expect("known lock").remove(uid);
    }
}

#[async_trait]
impl LoadBalancerProvider for AwsProvider {
    fn name(&self) -> &str {
        "aws"
    }

    /// The annotations parsed and the resources computed, as every call
    /// does first.
    fn validate(&self, spec: &LoadBalancerSpec) -> Result<(), ProviderError> {
        converge::desired_with(spec, &self.settings.cluster, self.settings.targets_per_zone)
            .map(drop)
    }

    /// Pod targets (`nlb-target-type: ip`) come from the endpoints; so does
    /// the node subset of an `externalTrafficPolicy: Local` Service with
    /// more nodes than a zone holds. An invalid annotation needs nothing
    /// (validation says what is wrong).
    fn needs_endpoints(&self, spec: &LoadBalancerSpec) -> bool {
        options::AwsOptions::parse(&spec.annotations)
            .is_ok_and(|o| desired::needs_endpoints(spec, &o, self.settings.targets_per_zone))
    }

    /// Instance targets (the nodes themselves): a node that leaves is
    /// deregistered at once, and the NLB keeps its connections for the
    /// target group's deregistration delay. (Pod targets do not follow
    /// nodes.)
    fn node_drain(&self, spec: &LoadBalancerSpec) -> Option<ferrylb_model::NodeDrain> {
        let o = options::AwsOptions::parse(&spec.annotations).ok()?;
        (o.target_type == options::TargetType::Instance)
            .then(|| desired::node_drain(&o.target_group_attributes))
    }

    async fn get(&self, lb: &LoadBalancerRef) -> Result<Option<LoadBalancerStatus>, ProviderError> {
        Ok(self.current_status(lb).await?)
    }

    async fn ensure(&self, spec: &LoadBalancerSpec) -> Result<LoadBalancerStatus, ProviderError> {
        let mut result = self.converge(spec).await;
        if result
            .as_ref()
            .is_err_and(|e| e.reason == reason::SUBNET_GONE)
        {
            // A subnet or VPC found earlier is gone (the network was
            // rebuilt): look them up again, at once.
            tracing::info!(service = %spec.lb.key, "a cached subnet or VPC is gone; looking the subnets up again");
            self.subnets.lock().expect("subnet cache lock").clear();
            self.vpc_cidrs.lock().expect("vpc cidr cache").clear();
            result = self.converge(spec).await;
        }
        if result.is_err() {
            self.forget(&spec.lb.key.uid);
        }
        result
    }

    async fn update_targets(&self, spec: &LoadBalancerSpec) -> Result<Vec<Warning>, ProviderError> {
        let result = self.converge_targets(spec).await;
        if result.is_err() {
            self.forget(&spec.lb.key.uid);
        }
        result
    }

    async fn published(&self, spec: &LoadBalancerSpec) -> Result<(), ProviderError> {
        self.delete_stale(spec).await
    }

    /// Ready while the calls FerryLB makes anyway are answered; only after
    /// [`PROBE_AFTER`] without any call is AWS asked (one
    /// `DescribeAccountLimits`), so an idle controller costs six calls an
    /// hour, not one every check.
    async fn check(&self) -> Result<(), ProviderError> {
        if let Some((ago, outcome)) = self.clients.last_outcome()
            && ago < PROBE_AFTER
        {
            return outcome.map_err(|m| ProviderError::transient(reason::AWS_UNAVAILABLE, m));
        }
        self.clients
            .call(
                client::CallKind::ElbDescribe,
                "elasticloadbalancing:DescribeAccountLimits",
                self.clients.elb.describe_account_limits().send(),
            )
            .await?;
        Ok(())
    }

    async fn ensure_deleted(&self, lb: &LoadBalancerRef) -> Result<(), ProviderError> {
        self.forget(&lb.key.uid);
        let owned = self
            .find_owned(Some(std::slice::from_ref(&lb.key.uid)))
            .await?;
        match owned.get(&lb.key.uid) {
            Some(o) => self.delete_owned(o).await,
            None => Ok(()),
        }
    }
}
