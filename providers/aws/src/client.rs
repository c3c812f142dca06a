//! The AWS clients FerryLB uses, how every call is paced and counted, and
//! how AWS errors become [`ProviderError`]s.
//!
//! Every call goes through [`Clients::call`]: it waits for the client-side
//! rate limiter of its kind (so FerryLB never provokes throttling itself),
//! and maps a failure to an error that names the IAM action. Calls are
//! counted by an SDK interceptor ([`CallCounter`]), once per HTTP attempt,
//! which is what AWS's throttling buckets count too.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_elasticloadbalancingv2::config::retry::RetryConfig;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::SharedInterceptor;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

mod error;

pub use error::{CallError, Tolerate};

/// Loads the SDK configuration: the standard credential chain
/// (environment, profile, IRSA web identity, instance metadata), the given
/// region and endpoint (else `AWS_REGION`/`AWS_ENDPOINT_URL` and the
/// profile), adaptive retry, which slows down when AWS throttles, and time
/// limits ([`timeouts`]) so that a black-holed endpoint fails a call
/// instead of holding it.
pub async fn load_sdk_config(region: Option<&str>, endpoint: Option<&str>) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(RetryConfig::adaptive().with_max_attempts(5))
        .timeout_config(timeouts());
    if let Some(r) = region {
        loader = loader.region(Region::new(r.to_owned()));
    }
    if let Some(e) = endpoint {
        loader = loader.endpoint_url(e);
    }
    loader.load().await
}

/// Every AWS call's time limits: 3 s to connect, 5 s per attempt, 10 s for
/// the call with its retries; then it fails as a transient error naming the
/// operation, and the Service is retried with backoff. ELBv2 and EC2 answer
/// in well under a second; an endpoint that takes a connection and never
/// answers is named within 10 s, before the controller's own limit.
pub fn timeouts() -> aws_config::timeout::TimeoutConfig {
    aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(3))
        .operation_attempt_timeout(Duration::from_secs(5))
        .operation_timeout(Duration::from_secs(10))
        .build()
}

/// Kinds of calls, each paced by its own bucket (AWS publishes separate
/// throttling buckets for ELBv2 describes, mutations and target
/// registrations, plus one shared by every ELBv2 action).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    ElbDescribe,
    ElbMutate,
    ElbTargets,
    Ec2Describe,
    Ec2Mutate,
    Tagging,
}

/// Requests per second and bursts of AWS's published account-level
/// buckets; FerryLB stays inside them.
#[derive(Debug, Clone, Copy)]
pub struct RateLimits {
    /// Multiplies every rate and burst (1.0 for AWS; larger for local
    /// endpoints such as moto, which do not throttle).
    pub scale: f64,
    /// Share of the describe budget a resync's drift check may use, so
    /// drift repair never starves Services that changed.
    pub resync_share: f64,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            scale: 1.0,
            resync_share: 0.5,
        }
    }
}

struct Limiters {
    elb_shared: DefaultDirectRateLimiter,
    elb_describe: DefaultDirectRateLimiter,
    elb_mutate: DefaultDirectRateLimiter,
    elb_targets: DefaultDirectRateLimiter,
    resync_describe: DefaultDirectRateLimiter,
    ec2_describe: DefaultDirectRateLimiter,
    ec2_mutate: DefaultDirectRateLimiter,
    tagging: DefaultDirectRateLimiter,
}

fn limiter(per_second: f64, burst: u32, scale: f64) -> DefaultDirectRateLimiter {
    let rate = (per_second * scale).max(0.01);
    let burst = NonZeroU32::new(((f64::from(burst) * scale).round() as u32).max(1))
        .expect("burst is at least 1");
    let quota = Quota::with_period(Duration::from_secs_f64(1.0 / rate))
        .expect("a positive period")
        .allow_burst(burst);
    RateLimiter::direct(quota)
}

impl Limiters {
    fn new(l: RateLimits) -> Self {
        let s = l.scale;
        Self {
            elb_shared: limiter(10.0, 40, s),
            elb_describe: limiter(10.0, 40, s),
            elb_mutate: limiter(3.0, 20, s),
            elb_targets: limiter(4.0, 20, s),
            resync_describe: limiter(10.0 * l.resync_share, 10, s),
            ec2_describe: limiter(20.0, 100, s),
            ec2_mutate: limiter(5.0, 50, s),
            tagging: limiter(5.0, 10, s),
        }
    }

    async fn acquire(&self, kind: CallKind, resync: bool) {
        match kind {
            CallKind::ElbDescribe | CallKind::ElbMutate | CallKind::ElbTargets => {
                if resync && kind == CallKind::ElbDescribe {
                    self.resync_describe.until_ready().await;
                }
                match kind {
                    CallKind::ElbDescribe => self.elb_describe.until_ready().await,
                    CallKind::ElbMutate => self.elb_mutate.until_ready().await,
                    _ => self.elb_targets.until_ready().await,
                }
                self.elb_shared.until_ready().await;
            }
            CallKind::Ec2Describe => self.ec2_describe.until_ready().await,
            CallKind::Ec2Mutate => self.ec2_mutate.until_ready().await,
            CallKind::Tagging => self.tagging.until_ready().await,
        }
    }
}

/// Counts AWS API requests by operation (`ElasticLoadBalancingv2:RegisterTargets`),
/// once per HTTP attempt.
#[derive(Debug, Clone, Default)]
pub struct CallCounter {
    counts: Arc<Mutex<BTreeMap<String, u64>>>,
}

/// Requests counted, by `service:operation`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallCounts(pub BTreeMap<String, u64>);

impl CallCounts {
    /// Every request.
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    /// Requests of one operation (`RegisterTargets`), whatever the service.
    pub fn count(&self, operation: &str) -> u64 {
        self.0
            .iter()
            .filter(|(k, _)| k.rsplit(':').next() == Some(operation))
            .map(|(_, v)| v)
            .sum()
    }

    /// Read-only requests: `Describe*` and the tagging API's `GetResources`.
    pub fn describes(&self) -> u64 {
        self.0
            .iter()
            .filter(|(k, _)| {
                let op = k.rsplit(':').next().unwrap_or_default();
                op.starts_with("Describe") || op == "GetResources"
            })
            .map(|(_, v)| v)
            .sum()
    }
}

impl CallCounter {
    /// Requests made so far.
    pub fn snapshot(&self) -> CallCounts {
        CallCounts(self.counts.lock().expect("call counter lock").clone())
    }

    /// Forgets every count.
    pub fn reset(&self) {
        self.counts.lock().expect("call counter lock").clear();
    }
}

impl Intercept for CallCounter {
    fn name(&self) -> &'static str {
        "FerryLbCallCounter"
    }

    fn read_before_transmit(
        &self,
        _ctx: &BeforeTransmitInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(m) = cfg.load::<Metadata>() {
            let key = format!("{}:{}", m.service(), m.name());
            *self
                .counts
                .lock()
                .expect("call counter lock")
                .entry(key)
                .or_default() += 1;
        }
        Ok(())
    }
}

/// The three clients, with pacing and counting.
#[derive(Clone)]
pub struct Clients {
    pub elb: aws_sdk_elasticloadbalancingv2::Client,
    pub ec2: aws_sdk_ec2::Client,
    pub tagging: aws_sdk_resourcegroupstagging::Client,
    limiters: Arc<Limiters>,
    pub counter: CallCounter,
    /// When the last call ended and whether AWS answered it: readiness
    /// comes from the calls FerryLB makes anyway.
    last: Arc<Mutex<Option<Outcome>>>,
}

/// When a call ended, and `Err` with why when AWS did not answer it or did
/// not accept FerryLB's credentials.
type Outcome = (std::time::Instant, Result<(), String>);

/// Error codes that say FerryLB cannot talk to AWS at all (as opposed to
/// one request AWS refused).
const UNAUTHENTICATED: &[&str] = &[
    "AuthFailure",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "ExpiredTokenException",
];

impl fmt::Debug for Clients {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Clients").finish_non_exhaustive()
    }
}

impl Clients {
    /// Clients from an SDK configuration, with `extra` interceptors (tests
    /// inject faults this way) after the call counter.
    pub fn new(sdk: &SdkConfig, limits: RateLimits, extra: &[SharedInterceptor]) -> Self {
        let counter = CallCounter::default();
        // FerryLB's time limits whatever configuration it was given.
        let mut elb = aws_sdk_elasticloadbalancingv2::config::Builder::from(sdk)
            .interceptor(counter.clone())
            .timeout_config(timeouts());
        let mut ec2 = aws_sdk_ec2::config::Builder::from(sdk)
            .interceptor(counter.clone())
            .timeout_config(timeouts());
        let mut tagging = aws_sdk_resourcegroupstagging::config::Builder::from(sdk)
            .interceptor(counter.clone())
            .timeout_config(timeouts());
        for i in extra {
            elb.push_interceptor(i.clone());
            ec2.push_interceptor(i.clone());
            tagging.push_interceptor(i.clone());
        }
        Self {
            elb: aws_sdk_elasticloadbalancingv2::Client::from_conf(elb.build()),
            ec2: aws_sdk_ec2::Client::from_conf(ec2.build()),
            tagging: aws_sdk_resourcegroupstagging::Client::from_conf(tagging.build()),
            limiters: Arc::new(Limiters::new(limits)),
            counter,
            last: Arc::default(),
        }
    }

    /// The outcome of the last call and how long ago it ended: `Err` when
    /// AWS did not answer or did not accept FerryLB's credentials.
    pub fn last_outcome(&self) -> Option<(Duration, Result<(), String>)> {
        self.last
            .lock()
            .expect("last outcome lock")
            .as_ref()
            .map(|(at, r)| (at.elapsed(), r.clone()))
    }

    /// Sends one request after its rate limiter allows it, mapping failure
    /// to a [`CallError`] that names `action` (the IAM action).
    pub async fn call<T, E, R>(
        &self,
        kind: CallKind,
        action: &'static str,
        request: impl Future<Output = Result<T, SdkError<E, R>>>,
    ) -> Result<T, CallError>
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: fmt::Debug,
    {
        self.call_paced(kind, false, action, request).await
    }

    /// [`Self::call`] for a resync's drift check: describes also draw from
    /// the resync share of the describe budget.
    pub async fn call_paced<T, E, R>(
        &self,
        kind: CallKind,
        resync: bool,
        action: &'static str,
        request: impl Future<Output = Result<T, SdkError<E, R>>>,
    ) -> Result<T, CallError>
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: fmt::Debug,
    {
        self.limiters.acquire(kind, resync).await;
        let result = request.await.map_err(|e| CallError::from_sdk(action, e));
        let outcome = match &result {
            Err(e) if e.unavailable || UNAUTHENTICATED.iter().any(|c| e.is(c)) => {
                Err(e.to_string())
            }
            // An answer, even a refusal of this one request, means AWS is
            // there and takes FerryLB's credentials.
            _ => Ok(()),
        };
        *self.last.lock().expect("last outcome lock") = Some((std::time::Instant::now(), outcome));
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_call_has_time_limits() {
        let sdk = load_sdk_config(Some("us-east-1"), Some("http://127.0.0.1:9")).await;
        let t = sdk.timeout_config().expect("a timeout config");
        assert_eq!(t.connect_timeout(), Some(Duration::from_secs(3)));
        assert_eq!(t.operation_attempt_timeout(), Some(Duration::from_secs(5)));
        assert_eq!(t.operation_timeout(), Some(Duration::from_secs(10)));
    }
}
