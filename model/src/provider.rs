//! The provider contract, after Kubernetes' cloud-provider `LoadBalancer`
//! interface: get, ensure, ensure-deleted; idempotent, absent is success.

use std::time::Duration;

use async_trait::async_trait;

use crate::{LoadBalancerRef, LoadBalancerSpec, LoadBalancerStatus, Warning};

/// How a backend drains a node that leaves a load balancer (see
/// [`LoadBalancerProvider::node_drain`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeDrain {
    /// How long the backend keeps the node's connections.
    pub lasts: Duration,
    /// What happens meanwhile and after, in a sentence for the user.
    pub how: String,
}

/// Something that builds load balancers: an AWS NLB, an HAProxy.
///
/// # Contract
/// - Every method is idempotent and may be called again at any time,
///   including after the process crashed halfway through an earlier call.
/// - Everything a provider creates is findable again from the
///   [`LoadBalancerRef`] alone (deterministic names, ownership tags), so a
///   restart never creates a duplicate and never leaks.
/// - A provider never touches what it did not create.
/// - Errors say whether trying again can help ([`ProviderError`]).
#[async_trait]
pub trait LoadBalancerProvider: Send + Sync + 'static {
    /// Short name for logs and metrics (`aws`, `haproxy`).
    fn name(&self) -> &str;

    /// Checks what can be checked without any I/O (the Service's
    /// annotations, ports the provider cannot serve). The controller runs it before it announces or
    /// asks for anything, so an invalid Service costs no backend call and
    /// leaves whatever is built for it as it is. The default accepts all.
    ///
    /// # Errors
    /// A permanent error naming the field, the value and what is allowed.
    fn validate(&self, _spec: &LoadBalancerSpec) -> Result<(), ProviderError> {
        Ok(())
    }

    /// Whether this spec's load balancer needs the Service's endpoints
    /// (pods as targets, or nodes chosen by the pods they run): the
    /// controller watches a Service's EndpointSlices only while its
    /// provider says so, and hands them over in
    /// [`LoadBalancerSpec::endpoints`]. The default says no.
    fn needs_endpoints(&self, _spec: &LoadBalancerSpec) -> bool {
        false
    }

    /// How this spec's load balancer drains a node that leaves its targets,
    /// when the backend drains on its own for a known time (an NLB keeps a
    /// deregistered target's connections for the target group's
    /// deregistration delay): the controller then says so in Events when
    /// the node leaves and when the drain is over. `None` (the default):
    /// nothing to say, or the provider reports drains itself.
    fn node_drain(&self, _spec: &LoadBalancerSpec) -> Option<NodeDrain> {
        None
    }

    /// The load balancer's current status, or `None` when it does not exist.
    async fn get(&self, lb: &LoadBalancerRef) -> Result<Option<LoadBalancerStatus>, ProviderError>;

    /// Creates the load balancer or converges an existing one to `spec`, and
    /// returns the status to publish.
    async fn ensure(&self, spec: &LoadBalancerSpec) -> Result<LoadBalancerStatus, ProviderError>;

    /// Converges a load balancer whose spec changed in its targets alone,
    /// and returns what the user should hear of (a node that cannot be a
    /// target, say). Providers with a cheaper path than
    /// [`ensure`](Self::ensure) (HAProxy's runtime API, ELBv2's
    /// Register/DeregisterTargets) override it.
    async fn update_targets(&self, spec: &LoadBalancerSpec) -> Result<Vec<Warning>, ProviderError> {
        self.ensure(spec).await.map(|s| s.warnings)
    }

    /// Called after the status returned by [`ensure`](Self::ensure) was
    /// published on the Service. A provider that replaced a load balancer
    /// (a change the cloud cannot make in place) deletes the old one here, so
    /// the Service never points at an address that is already gone. The
    /// default does nothing.
    async fn published(&self, _spec: &LoadBalancerSpec) -> Result<(), ProviderError> {
        Ok(())
    }

    /// Deletes the load balancer and everything created for it.
    ///
    /// # Contract
    /// Absent is success: deleting something never created, or already
    /// deleted, returns `Ok`. A provider that applies changes in bursts may
    /// answer [`ErrorKind::Pending`], as for [`ensure`](Self::ensure): the
    /// deletion is taken, and asking again returns `Ok` once it is done.
    async fn ensure_deleted(&self, lb: &LoadBalancerRef) -> Result<(), ProviderError>;

    /// Whether the provider's backend answers (the cloud API, the HAProxy
    /// master), for readiness. The default says yes.
    async fn check(&self) -> Result<(), ProviderError> {
        Ok(())
    }

    /// Changes each time changes this provider answered
    /// [`ErrorKind::Pending`] for have been applied, so that the controller
    /// asks again for those Services at once rather than after the delay
    /// the Pending named. `None` (the default) for providers that never
    /// answer Pending.
    fn applied(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }

    /// Called once at start-up with the specs of every Service this provider
    /// serves, before any [`ensure`](Self::ensure), so a provider that
    /// assigns addresses can reserve those the Services already carry before
    /// handing out new ones. The default does nothing.
    async fn restore(&self, _specs: &[LoadBalancerSpec]) -> Result<(), ProviderError> {
        Ok(())
    }

    /// Called once at start-up, before [`restore`](Self::restore), with the
    /// load balancers of Services this provider serves that are not
    /// provisioned yet: each will come to [`ensure`](Self::ensure) shortly,
    /// so a provider that batches changes may wait for them. The default
    /// does nothing.
    fn starting(&self, _unprovisioned: &[LoadBalancerRef]) {}

    /// Called after every reconcile of a Service this provider serves,
    /// whatever its outcome (served, refused before the provider was asked,
    /// failed): a provider waiting for the Services named in
    /// [`starting`](Self::starting) need not wait for this one any longer.
    /// The default does nothing.
    fn reconciled(&self, _lb: &LoadBalancerRef) {}
}

/// Whether an error is worth retrying, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Only a change to the Service (or its environment) can fix it:
    /// an invalid option, an unsupported protocol. Not retried until the
    /// Service changes.
    Permanent,
    /// Retry after the given delay (throttling with a known reset, an address
    /// pool that may free up).
    RetryAfter(Duration),
    /// Retry with backoff (timeouts, 5xx, connection errors).
    Transient,
    /// Not a failure: the change is accepted and being applied together with
    /// others; ask again (ensure the same spec) after the given delay, and
    /// publish nothing until then.
    Pending(Duration),
}

/// A provider failure, with what a user can act on.
/// A value quoted for a message: whole when short, else its first 64
/// characters and its length, so that a huge annotation can neither bury the
/// field's name nor bloat an Event or condition.
pub fn excerpt(value: &str) -> String {
    const SHOWN: usize = 64;
    match value.char_indices().nth(SHOWN) {
        None => format!("{value:?}"),
        Some((cut, _)) => format!("{:?}… ({} bytes)", &value[..cut], value.len()),
    }
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ProviderError {
    pub kind: ErrorKind,
    /// Short CamelCase reason for Events and conditions (`InvalidAnnotation`,
    /// `UnsupportedProtocol`, `PoolExhausted`, `Throttled`).
    pub reason: String,
    /// What went wrong, with the object and value, and what to do.
    pub message: String,
}

impl ProviderError {
    /// A permanent error with the given reason.
    pub fn permanent(reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Permanent,
            reason: reason.into(),
            message: message.into(),
        }
    }

    /// An invalid option: names the annotation (or field), the value, and
    /// what is allowed.
    pub fn invalid(field: &str, value: &str, allowed: &str) -> Self {
        Self::permanent(
            crate::reason::INVALID_ANNOTATION,
            format!("{field}: invalid value {}: {allowed}", excerpt(value)),
        )
    }

    /// The change is accepted and being applied; ask again after `after`.
    pub fn pending(after: Duration, message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Pending(after),
            reason: crate::reason::APPLYING.into(),
            message: message.into(),
        }
    }

    /// A transient error, retried with backoff.
    pub fn transient(reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Transient,
            reason: reason.into(),
            message: message.into(),
        }
    }

    /// An error to retry after `after`.
    pub fn retry_after(
        after: Duration,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            kind: ErrorKind::RetryAfter(after),
            reason: reason.into(),
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_field_first_and_quote_a_bounded_excerpt() {
        let huge = "x".repeat(100_000);
        let e = ProviderError::invalid(
            "ferrylb.io/haproxy-balance",
            &huge,
            "roundrobin or leastconn",
        );
        assert!(
            e.message
                .starts_with("ferrylb.io/haproxy-balance: invalid value \"xxx"),
            "{}",
            e.message
        );
        assert!(e.message.contains("(100000 bytes)"), "{}", e.message);
        assert!(e.message.len() < 200, "{}", e.message.len());
        assert_eq!(excerpt("leastconn"), "\"leastconn\"");
        // Cut on a character boundary.
        assert!(excerpt(&"é".repeat(100)).ends_with("(200 bytes)"));
    }
}
