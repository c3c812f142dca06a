//! One Service's reconcile: take it on (finalizer first), ensure its load
//! balancer, publish status; or delete the load balancer and let go.
//!
//! # Expected flow
//! 1. A Service becomes ours (type LoadBalancer, a class we serve): the
//!    finalizer and the class are written before any provider call.
//! 2. Apply: the spec is built from the Service and the eligible Nodes; the
//!    provider is called only when the spec changed, or a resync is due;
//!    status and condition are written only when they change.
//! 3. Cleanup (Service deleted, or no longer ours): the provider deletes,
//!    then status is cleared and the finalizer removed, in that order.
//! 4. A Service whose recorded class this controller does not serve belongs
//!    to another controller: it is left alone, whatever its type or class.
//!
//! # Guarantees
//! Both arms are idempotent. Cleanup tolerates Apply never having run (the
//! provider's delete treats absent as success). A failure leaves the
//! finalizer in place, so nothing the provider made is ever forgotten.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use std::future::Future;

use ferrylb_model::reason;
use ferrylb_model::{
    ErrorKind, LoadBalancerProvider, LoadBalancerRef, LoadBalancerSpec, LoadBalancerStatus,
    ProviderError, ServiceKey, Warning,
};
use k8s_openapi::api::core::v1::Service;
use kube::api::ListParams;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;

use super::endpoints::Lookup;
use super::events::{self, svc_name};
use super::status::{self, Readiness};
use super::{Context, Error};

/// Reconciles one Service. See the module docs for the flow.
pub async fn reconcile(svc: Arc<Service>, ctx: Arc<Context>) -> Result<Action, Error> {
    let wanted = ctx.class_of(&svc);
    let recorded = status::recorded_class(&svc).map(str::to_owned);
    let deleting = svc.metadata.deletion_timestamp.is_some();

    if let Some(old) = &recorded
        && !ctx.config.classes.contains_key(old)
    {
        // Provisioned by another controller serving `old`: its Service,
        // its finalizer, its status. Never written to from here.
        let _ = forget(&ctx, &svc);
        return Ok(Action::await_change());
    }
    if let Some(old) = &recorded
        && (deleting || wanted.as_deref() != Some(old.as_str()))
    {
        // Deleted, no longer a LoadBalancer, or moved to another class:
        // delete what `old` made. If a new class wants it, removing the
        // finalizer triggers a reconcile that takes it on afresh.
        return cleanup(&svc, old, &ctx, !deleting).await;
    }
    let Some(class) = wanted else {
        let _ = forget(&ctx, &svc);
        return Ok(Action::await_change());
    };
    if deleting {
        return Ok(Action::await_change());
    }
    let svc = if recorded.is_none() {
        Arc::new(status::add_finalizer(&ctx.client, &svc, &class).await?)
    } else {
        svc
    };
    apply(&svc, &class, &ctx).await
}

async fn apply(svc: &Service, class: &str, ctx: &Context) -> Result<Action, Error> {
    let provider = ctx.config.classes[class].clone();
    let key = ObjectRef::from_obj(svc);
    let mut spec = match crate::spec::build(svc, &ctx.targets()) {
        Ok(spec) => spec,
        Err(source) => {
            let err = Error::InvalidService {
                svc: svc_name(svc),
                source,
            };
            report_failure(svc, &err, ctx).await;
            return Err(err);
        }
    };
    let (ns, svc_name_only) = (&spec.lb.key.namespace, &spec.lb.key.name);
    if provider.needs_endpoints(&spec) {
        match ctx.endpoints.lookup(ns, svc_name_only) {
            Lookup::Listed(endpoints) => spec.endpoints = Some(endpoints),
            Lookup::Listing(Some(failure)) => {
                let source = ProviderError::transient(
                    reason::ENDPOINTS_UNAVAILABLE,
                    format!(
                        "the Service's EndpointSlices (discovery.k8s.io) cannot be watched: {failure}"
                    ),
                );
                return Err(ensure_failed(svc, &*provider, source, ctx).await);
            }
            // The end of the listing asks again; this is only a fallback.
            Lookup::Listing(None) => {
                tracing::debug!(service = %svc_name(svc), "waiting for the Service's EndpointSlices to be listed");
                return Ok(Action::requeue(ENDPOINTS_LISTING_RETRY));
            }
        }
    } else {
        ctx.endpoints.release(ns, svc_name_only);
    }
    let last = ctx
        .services
        .lock()
        .expect("service state lock")
        .get(&key)
        .and_then(|s| s.last.clone());

    let unchanged = last
        .as_ref()
        .is_some_and(|(l, _)| l.spec.same_desired_state(&spec));
    let resync_due = last
        .as_ref()
        .is_none_or(|(_, at)| at.elapsed() >= ctx.config.resync.mul_f32(0.9));
    if unchanged && !resync_due {
        // Nothing to ask the provider; only repair the status if someone
        // else changed it.
        let (l, _) = last.as_ref().expect("unchanged implies a last spec");
        status::write_status(
            &ctx.client,
            svc,
            Some(status::to_ingress(&l.status)),
            Some(ensured(provider.name(), &l.spec, &l.status.warnings)),
        )
        .await?;
        return Ok(Action::requeue(ctx.config.resync));
    }

    let name = svc_name(svc);
    // Checked before anything is announced or asked of the provider: an
    // invalid Service costs no backend call, and what was built for it
    // before stays as it is.
    if let Err(source) = provider.validate(&spec) {
        return Err(ensure_failed(svc, &*provider, source, ctx).await);
    }
    let target_only = last
        .as_ref()
        .is_some_and(|(l, _)| l.spec.differs_only_in_targets(&spec));
    let result = if target_only {
        tracing::info!(service = %name, provider = provider.name(), targets = spec.targets.len(), endpoints = spec.endpoints.as_ref().map(|e| e.len()), "updating load balancer targets");
        let previous = last
            .as_ref()
            .map(|(l, _)| l.status.clone())
            .unwrap_or_default();
        let updated = observed(
            ctx,
            &*provider,
            "update_targets",
            provider.update_targets(&spec),
        )
        .await;
        if updated.is_ok()
            && let Some((l, _)) = &last
        {
            super::drains::announce(ctx, svc, &*provider, &l.spec, &spec);
        }
        updated.map(|warnings| LoadBalancerStatus {
            warnings,
            ..previous
        })
    } else {
        let announced = ctx
            .services
            .lock()
            .expect("service state lock")
            .get(&key)
            .and_then(|s| s.pending.as_ref())
            .is_some_and(|p| p.same_desired_state(&spec));
        if !unchanged && !announced {
            tracing::info!(service = %name, provider = provider.name(), "ensuring load balancer");
            ctx.background_events
                .normal(svc, events::ENSURING, "Ensuring load balancer");
        }
        observed(ctx, &*provider, "ensure", provider.ensure(&spec)).await
    };
    let lb_status = match result {
        Ok(s) => s,
        Err(source) if matches!(source.kind, ErrorKind::Pending(_)) => {
            // Accepted, applied with others shortly: ask again then.
            let ErrorKind::Pending(after) = source.kind else {
                unreachable!()
            };
            tracing::debug!(service = %name, "load balancer change pending: {}", source.message);
            ctx.services
                .lock()
                .expect("service state lock")
                .entry(key)
                .or_default()
                .pending = Some(spec);
            return Ok(Action::requeue(after));
        }
        Err(source) => return Err(ensure_failed(svc, &*provider, source, ctx).await),
    };

    status::write_status(
        &ctx.client,
        svc,
        Some(status::to_ingress(&lb_status)),
        Some(ensured(provider.name(), &spec, &lb_status.warnings)),
    )
    .await?;
    if spec.targets.is_empty() && !unchanged {
        tracing::warn!(service = %name, "{NO_TARGETS}");
        events::warning(
            &ctx.recorder,
            svc,
            events::UNAVAILABLE,
            NO_TARGETS.to_owned(),
        )
        .await;
    }
    if target_only {
        let note = match &spec.endpoints {
            None => format!(
                "Updated load balancer with new hosts ({} targets)",
                spec.targets.len()
            ),
            Some(e) => format!(
                "Updated load balancer with new hosts or endpoints ({} nodes, {} ready endpoint ports)",
                spec.targets.len(),
                e.iter().filter(|e| e.ready).count()
            ),
        };
        ctx.background_events.normal(svc, events::UPDATED, note);
        // A node change can bring news (a node that cannot be a target):
        // said once, when it is new.
        let before = last.as_ref().map(|(l, _)| &l.status.warnings);
        for w in lb_status
            .warnings
            .iter()
            .filter(|w| before.is_none_or(|b| !b.contains(w)))
        {
            tracing::warn!(service = %svc_name(svc), reason = %w.reason, "{}", w.message);
            events::warning(&ctx.recorder, svc, &w.reason, w.message.clone()).await;
        }
    } else if !unchanged {
        ctx.background_events
            .normal(svc, events::ENSURED, "Ensured load balancer");
        for w in &lb_status.warnings {
            tracing::warn!(service = %svc_name(svc), reason = %w.reason, "{}", w.message);
            events::warning(&ctx.recorder, svc, &w.reason, w.message.clone()).await;
        }
    }
    // Only now that the Service names the new load balancer may the
    // provider let go of one it replaced.
    if let Err(source) = observed(ctx, &*provider, "published", provider.published(&spec)).await {
        return Err(ensure_failed(svc, &*provider, source, ctx).await);
    }
    if remember(ctx, key, spec, lb_status) {
        ctx.config
            .telemetry
            .load_balancers_changed(provider.name(), 1);
    }
    Ok(Action::requeue(ctx.config.resync))
}

/// Deletes the load balancer `class`'s provider made for `svc`, then clears
/// the status (unless the Service is going away) and removes the finalizer;
/// asks again shortly while the provider applies the deletion with others.
async fn cleanup(
    svc: &Service,
    class: &str,
    ctx: &Context,
    clear_status: bool,
) -> Result<Action, Error> {
    let name = svc_name(svc);
    // `reconcile` leaves Services of classes not served here alone.
    let provider = ctx.config.classes[class].clone();
    let lb = lb_ref(svc);
    let key = ObjectRef::from_obj(svc);
    let announced = ctx
        .services
        .lock()
        .expect("service state lock")
        .get(&key)
        .is_some_and(|s| s.deleting);
    if !announced {
        tracing::info!(service = %name, provider = provider.name(), lb = %lb.name, "deleting load balancer");
        ctx.background_events
            .normal(svc, events::DELETING, "Deleting load balancer");
    }
    match observed(ctx, &*provider, "delete", provider.ensure_deleted(&lb)).await {
        Err(ProviderError {
            kind: ErrorKind::Pending(after),
            message,
            ..
        }) => {
            // Accepted, applied with others shortly: ask again then.
            tracing::debug!(service = %name, "load balancer deletion pending: {message}");
            ctx.services
                .lock()
                .expect("service state lock")
                .entry(key)
                .or_default()
                .deleting = true;
            return Ok(Action::requeue(after));
        }
        Err(source) => return Err(deletion_failed(svc, &*provider, source, ctx).await),
        Ok(()) => {}
    }
    ctx.background_events
        .normal(svc, events::DELETED, "Deleted load balancer");
    if clear_status {
        status::write_status(&ctx.client, svc, None, None).await?;
    }
    status::remove_finalizer(&ctx.client, svc).await?;
    if forget(ctx, svc) {
        ctx.config
            .telemetry
            .load_balancers_changed(provider.name(), -1);
    }
    let _ = ctx.retry_all.try_send(());
    Ok(Action::await_change())
}

/// A provider's failure to delete `svc`'s load balancer, logged, published
/// as a Warning Event and returned for the error policy.
async fn deletion_failed(
    svc: &Service,
    provider: &dyn LoadBalancerProvider,
    source: ProviderError,
    ctx: &Context,
) -> Error {
    if let Some(state) = ctx
        .services
        .lock()
        .expect("service state lock")
        .get_mut(&ObjectRef::from_obj(svc))
    {
        state.deleting = false;
    }
    let err = Error::EnsureDeleted {
        svc: svc_name(svc),
        provider: provider.name().to_owned(),
        source,
    };
    tracing::warn!(error = %err, "deleting load balancer failed");
    events::warning(&ctx.recorder, svc, events::SYNC_FAILED, err.to_string()).await;
    err
}

/// A provider's refusal or failure for `svc`, reported (see
/// [`report_failure`]) and returned for the error policy.
async fn ensure_failed(
    svc: &Service,
    provider: &dyn LoadBalancerProvider,
    source: ProviderError,
    ctx: &Context,
) -> Error {
    let err = Error::Ensure {
        svc: svc_name(svc),
        provider: provider.name().to_owned(),
        source,
    };
    report_failure(svc, &err, ctx).await;
    err
}

/// Logs the failure, publishes a Warning Event and sets the condition to
/// False with the reason, keeping whatever address the Service already has.
async fn report_failure(svc: &Service, err: &Error, ctx: &Context) {
    tracing::warn!(service = %svc_name(svc), reason = err.reason(), error = %err, "load balancer not ready");
    events::warning(&ctx.recorder, svc, events::SYNC_FAILED, err.to_string()).await;
    let current = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.clone());
    let readiness = Readiness {
        ready: false,
        reason: err.reason().to_owned(),
        message: err.to_string(),
    };
    if let Err(e) = status::write_status(&ctx.client, svc, current, Some(readiness)).await {
        tracing::warn!(service = %svc_name(svc), error = %e, "writing the failure condition failed");
    }
}

/// The condition for a load balancer the provider ensured for `spec`: ready,
/// unless it has no node to send traffic to.
/// The provider's warnings (a node it cannot register, a port it cannot
/// serve) are in the message, so the condition says what the Events said.
fn ensured(provider: &str, spec: &LoadBalancerSpec, warnings: &[Warning]) -> Readiness {
    if spec.targets.is_empty() {
        return Readiness {
            ready: false,
            reason: events::UNAVAILABLE.into(),
            message: NO_TARGETS.into(),
        };
    }
    Readiness {
        ready: true,
        reason: reason::READY.into(),
        message: std::iter::once(format!("load balancer ensured by provider {provider}"))
            .chain(
                warnings
                    .iter()
                    .map(|w| format!("{}: {}", w.reason, w.message)),
            )
            .collect::<Vec<_>>()
            .join("; "),
    }
}

const NO_TARGETS: &str = "there are no available nodes for this load balancer: every Node is \
    excluded (node.kubernetes.io/exclude-from-external-load-balancers), being deleted, or \
    outside --node-selector";

/// The spec and status last ensured for a Service.
#[derive(Clone)]
pub(super) struct Ensured {
    pub spec: LoadBalancerSpec,
    pub status: LoadBalancerStatus,
}

/// Records a successful ensure; `true` when the Service had none before.
fn remember(
    ctx: &Context,
    key: ObjectRef<Service>,
    spec: LoadBalancerSpec,
    status: LoadBalancerStatus,
) -> bool {
    let mut services = ctx.services.lock().expect("service state lock");
    let state = services.entry(key).or_default();
    let first = state.last.is_none();
    state.last = Some((Ensured { spec, status }, Instant::now()));
    state.failures = 0;
    state.pending = None;
    first
}

/// Asks again this long after a Service waited for its EndpointSlices'
/// listing, should the listing's own signal be lost.
const ENDPOINTS_LISTING_RETRY: std::time::Duration = std::time::Duration::from_secs(30);

/// Forgets a Service; `true` when it had a load balancer ensured.
fn forget(ctx: &Context, svc: &Service) -> bool {
    ctx.endpoints.release(
        svc.metadata.namespace.as_deref().unwrap_or_default(),
        svc.metadata.name.as_deref().unwrap_or_default(),
    );
    ctx.services
        .lock()
        .expect("service state lock")
        .remove(&ObjectRef::from_obj(svc))
        .is_some_and(|s| s.last.is_some())
}

/// Runs one provider call and counts it by outcome.
async fn observed<T>(
    ctx: &Context,
    provider: &dyn LoadBalancerProvider,
    operation: &str,
    call: impl Future<Output = Result<T, ProviderError>>,
) -> Result<T, ProviderError> {
    let limit = ctx.config.provider_timeout;
    let result = match tokio::time::timeout(limit, call).await {
        Ok(r) => r,
        Err(_) => Err(ProviderError::transient(
            reason::PROVIDER_TIMEOUT,
            format!(
                "provider {} did not finish {operation} within {} (--provider-timeout); retrying",
                provider.name(),
                humantime::format_duration(limit)
            ),
        )),
    };
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => e.reason.as_str(),
    };
    ctx.config
        .telemetry
        .provider_call(provider.name(), operation, outcome);
    result
}

/// The load balancer of `svc`, found from the Service alone.
pub(super) fn lb_ref(svc: &Service) -> LoadBalancerRef {
    LoadBalancerRef::for_service(ServiceKey {
        namespace: svc.metadata.namespace.clone().unwrap_or_default(),
        name: svc.metadata.name.clone().unwrap_or_default(),
        uid: svc.metadata.uid.clone().unwrap_or_default(),
    })
}

/// Services listed per request at start-up.
const RESTORE_PAGE: u32 = 500;

/// Tells each provider which of its load balancers exist, from the Services
/// already provisioned (those carrying the finalizer and their class).
/// Failures are logged: a provider then simply starts from nothing.
pub(super) async fn restore(ctx: &Context) {
    let started = std::time::Instant::now();
    let targets = ctx.targets();
    let mut by_class: BTreeMap<String, Vec<LoadBalancerSpec>> = BTreeMap::new();
    let mut unprovisioned: BTreeMap<String, Vec<LoadBalancerRef>> = BTreeMap::new();
    // A page at a time: of thousands of Services, most are not load
    // balancers, and the whole list at once would be this process's peak.
    let api = ctx.services_api();
    let mut params = ListParams::default().limit(RESTORE_PAGE);
    loop {
        let page = match api.list(&params).await {
            Ok(page) => page,
            Err(e) => {
                tracing::warn!(error = %e, "listing Services to restore provider state failed");
                return;
            }
        };
        for svc in &page.items {
            let Some(class) = ctx.class_of(svc) else {
                continue;
            };
            let Ok(spec) = crate::spec::build(svc, &targets) else {
                continue;
            };
            if status::recorded_class(svc) == Some(class.as_str()) {
                by_class.entry(class).or_default().push(spec);
            } else if svc.metadata.deletion_timestamp.is_none() {
                unprovisioned.entry(class).or_default().push(spec.lb);
            }
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => break,
        }
    }
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "listed the Services to restore"
    );
    for (class, provider) in &ctx.config.classes {
        let started = std::time::Instant::now();
        provider.starting(&unprovisioned.remove(class).unwrap_or_default());
        let specs = by_class.remove(class).unwrap_or_default();
        match provider.restore(&specs).await {
            Ok(()) => tracing::info!(
                class,
                provider = provider.name(),
                load_balancers = specs.len(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "restored provider state"
            ),
            Err(e) => {
                tracing::warn!(class, provider = provider.name(), error = %e, "restoring provider state failed");
            }
        }
    }
}
