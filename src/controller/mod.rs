//! The controller: Services of `type: LoadBalancer` and the cluster's Nodes
//! in, provider calls and Service status, finalizer and Events out.
//!
//! One kube-runtime [`Controller`] over all Services. Nodes feed a reflector
//! store; whenever the set of eligible targets changes, every Service is
//! reconciled again, and a Service whose spec did not change makes no
//! provider call (so a node flapping Ready costs nothing). The
//! EndpointSlices of the Services whose provider needs them (pods as
//! targets) are watched too, and a change reconciles only their Service
//! (see [`endpoints`]).

mod drains;
pub mod endpoints;
mod error;
pub mod events;
mod reconcile;
pub mod slim;
pub mod status;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferrylb_model::{ErrorKind, LoadBalancerProvider, LoadBalancerSpec, Target};
use futures::{StreamExt, future};
use k8s_openapi::api::core::v1::{Node, Service};
use kube::Client;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};

pub use error::Error;

use crate::telemetry::Telemetry;

/// The finalizer Kubernetes' own service controller uses: present while a
/// cloud load balancer may exist for the Service.
pub const FINALIZER: &str = "service.kubernetes.io/load-balancer-cleanup";
/// Records which class (and so which provider) provisioned the Service, so
/// its load balancer can be deleted after `spec.loadBalancerClass` or
/// `spec.type` changed.
pub const CLASS_ANNOTATION: &str = "ferrylb.io/provisioned-class";
/// Field manager for FerryLB's writes.
pub const FIELD_MANAGER: &str = "ferrylb";

/// First retry delay after a transient failure; doubles up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_secs(5);
/// Longest delay between retries of a failing Service.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// How the controller is set up.
#[derive(Clone)]
pub struct ControllerConfig {
    /// `loadBalancerClass` → the provider serving it.
    pub classes: BTreeMap<String, Arc<dyn LoadBalancerProvider>>,
    /// The class that Services without `spec.loadBalancerClass` get; `None`
    /// leaves them to another implementation.
    pub default_class: Option<String>,
    /// Services reconciled at the same time.
    pub concurrency: u16,
    /// Every Service is ensured again this often, repairing drift.
    pub resync: Duration,
    /// Watch Services in this namespace only (default: all namespaces).
    pub namespace: Option<String>,
    /// Only Nodes matching this label selector are targets (default: all).
    pub node_selector: Option<String>,
    /// Identifies this process in Events (`reportingInstance`), e.g. the pod name.
    pub instance: Option<String>,
    /// Metrics and readiness.
    pub telemetry: Arc<Telemetry>,
    /// The longest a provider call may take before it is abandoned and
    /// retried, so that a hung backend never pins a Service's reconcile.
    pub provider_timeout: Duration,
}

/// Shared by every reconcile.
pub struct Context {
    client: Client,
    recorder: Recorder,
    /// Normal Events nobody waits for (see [`events::Background`]).
    background_events: events::Background,
    config: ControllerConfig,
    /// The eligible targets, computed once per Node change by the node task;
    /// `None` until the initial Node listing is complete.
    targets: tokio::sync::watch::Receiver<Option<Arc<[Target]>>>,
    services: Mutex<HashMap<ObjectRef<Service>, ServiceState>>,
    /// The EndpointSlices of Services whose provider needs them.
    endpoints: Arc<endpoints::Endpoints>,
    /// Asks for every Service to be reconciled again: after a load balancer
    /// is deleted, Services waiting for an address or port may get one.
    retry_all: tokio::sync::mpsc::Sender<()>,
}

/// What this process remembers of a Service between reconciles.
#[derive(Default)]
struct ServiceState {
    /// The spec and status last ensured successfully, and when.
    last: Option<(reconcile::Ensured, Instant)>,
    /// Consecutive transient failures, for backoff.
    failures: u32,
    /// A spec the provider is still applying (it answered Pending), so that
    /// asking again does not announce the same change again.
    pending: Option<LoadBalancerSpec>,
    /// The provider is still applying this Service's deletion (it answered
    /// Pending).
    deleting: bool,
}

impl Context {
    /// The eligible targets (empty only before the Node listing completed,
    /// which `run` waits for).
    fn targets(&self) -> Arc<[Target]> {
        self.targets.borrow().clone().unwrap_or_default()
    }

    /// Services in the namespace this controller watches (or all).
    fn services_api(&self) -> Api<Service> {
        services_api(&self.client, self.config.namespace.as_deref())
    }

    /// The class this controller serves the Service under, if any: only
    /// `type: LoadBalancer`, and only a class bound here (or no class when a
    /// default is set).
    fn class_of(&self, svc: &Service) -> Option<String> {
        let spec = svc.spec.as_ref()?;
        if spec.type_.as_deref() != Some("LoadBalancer") {
            return None;
        }
        let class = match &spec.load_balancer_class {
            Some(c) => c.clone(),
            None => self.config.default_class.clone()?,
        };
        self.config.classes.contains_key(&class).then_some(class)
    }
}

/// Whether `svc` is a LoadBalancer Service, or carries the finalizer of
/// one whose load balancer is still to be cleaned up.
fn has_load_balancer(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer")
        || svc
            .metadata
            .finalizers
            .as_ref()
            .is_some_and(|f| f.iter().any(|f| f == FINALIZER))
}

/// Runs the controller until `shutdown` resolves; in-flight reconciles finish
/// first.
///
/// # Errors
/// When the Node watch ends before its initial listing completed.
pub async fn run(
    client: Client,
    config: ControllerConfig,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> anyhow::Result<()> {
    let (nodes, node_writer) = reflector::store::<Node>();
    let mut node_watch = watcher::Config::default();
    if let Some(sel) = &config.node_selector {
        node_watch = node_watch.labels(sel);
    }
    let node_events = watcher(Api::<Node>::all(client.clone()), node_watch)
        .default_backoff()
        .modify(slim::node)
        .reflect(node_writer);
    // Publish the targets and signal each time the set of eligible targets
    // changes (after any event, the initial listing's end included).
    let (changed_tx, changed_rx) = tokio::sync::mpsc::channel::<()>(1);
    let node_changed_tx = changed_tx.clone();
    let (targets_tx, mut targets_rx) = tokio::sync::watch::channel(None::<Arc<[Target]>>);
    let node_task = tokio::spawn(async move {
        let mut listed = false;
        futures::pin_mut!(node_events);
        while let Some(ev) = node_events.next().await {
            match ev {
                Ok(watcher::Event::InitDone) => {
                    tracing::info!(nodes = nodes.state().len(), "listed Nodes");
                    listed = true;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "watching Nodes failed; retrying");
                    continue;
                }
            }
            if !listed {
                continue;
            }
            let state = nodes.state();
            let now = crate::spec::targets(state.iter().map(AsRef::as_ref));
            if targets_tx.borrow().as_deref() != Some(&now) {
                tracing::info!(targets = now.len(), "eligible nodes changed");
                targets_tx.send_replace(Some(now));
                // A full channel already holds a pending signal: enough.
                let _ = node_changed_tx.try_send(());
            }
        }
    });
    let retry_all = changed_tx.clone();

    let reporter = Reporter {
        controller: "ferrylb".into(),
        instance: config.instance.clone(),
    };
    let recorder = Recorder::new(client.clone(), reporter);
    let endpoints = Arc::new(endpoints::Endpoints::default());
    let (endpoints_tx, endpoints_rx) = tokio::sync::mpsc::channel(256);
    let endpoint_task = tokio::spawn(endpoints.clone().run(
        client.clone(),
        config.namespace.clone(),
        endpoints_tx,
    ));
    let ctx = Arc::new(Context {
        endpoints,
        background_events: events::Background::start(recorder.clone()),
        recorder,
        client: client.clone(),
        config: config.clone(),
        targets: targets_rx.clone(),
        services: Mutex::default(),
        retry_all,
    });

    // Shutdown is honoured in every state, the wait for the first Node
    // listing included (an unreachable API server never ends it).
    let shutdown = futures::FutureExt::shared(shutdown);
    // The Service cache keeps only what reconciles read (see `slim`).
    let (svc_store, svc_writer) = reflector::store::<Service>();
    // A change of targets (or a freed address) concerns the Services that
    // have load balancers, not the ClusterIP ones that are most of a
    // cluster's: only those are reconciled on it.
    let lb_store = svc_store.clone();
    let target_changes =
        tokio_stream::wrappers::ReceiverStream::new(changed_rx).flat_map(move |()| {
            let refs: Vec<ObjectRef<Service>> = lb_store
                .state()
                .iter()
                .filter(|s| has_load_balancer(s))
                .map(|s| ObjectRef::from_obj(&**s))
                .collect();
            futures::stream::iter(refs)
        });
    let svc_events = watcher(ctx.services_api(), watcher::Config::default())
        .default_backoff()
        .modify(slim::service)
        .reflect(svc_writer)
        .applied_objects();
    let controller = Controller::for_stream(svc_events, svc_store)
        .with_config(kube::runtime::controller::Config::default().concurrency(config.concurrency))
        .reconcile_on(target_changes)
        .reconcile_on(applied_changes(&ctx))
        .reconcile_on(tokio_stream::wrappers::ReceiverStream::new(endpoints_rx))
        .graceful_shutdown_on(shutdown.clone());

    // Reconciling before the Node cache is filled would strip every load
    // balancer of its targets; and providers hear what exists before the
    // first ensure.
    let synced = async {
        targets_rx.wait_for(Option::is_some).await?;
        reconcile::restore(&ctx).await;
        anyhow::Ok(())
    };
    tokio::select! {
        r = synced => r?,
        () = shutdown.clone() => {
            tracing::info!("stopped before the caches were synced");
            node_task.abort();
            endpoint_task.abort();
            return Ok(());
        }
    }
    config.telemetry.set_caches_synced(true);

    controller
        .run(observed_reconcile, error_policy, ctx)
        .for_each(|res| {
            match res {
                Ok((obj, _)) => tracing::debug!(service = %obj, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile failed"),
            }
            future::ready(())
        })
        .await;
    config.telemetry.set_caches_synced(false);
    node_task.abort();
    endpoint_task.abort();
    Ok(())
}

/// The Services whose change a provider answered Pending for, each time
/// that provider says it applied its pending changes: asked again at once.
fn applied_changes(
    ctx: &Arc<Context>,
) -> impl futures::Stream<Item = ObjectRef<Service>> + Send + 'static {
    let ticks = ctx
        .config
        .classes
        .values()
        .filter_map(|p| p.applied())
        .map(|rx| {
            futures::stream::unfold(rx, |mut rx| async move {
                rx.changed().await.ok()?;
                Some(((), rx))
            })
            .boxed()
        });
    let ctx = ctx.clone();
    futures::stream::select_all(ticks).flat_map(move |()| {
        let pending: Vec<ObjectRef<Service>> = ctx
            .services
            .lock()
            .expect("service state lock")
            .iter()
            .filter(|(_, s)| s.pending.is_some() || s.deleting)
            .map(|(r, _)| r.clone())
            .collect();
        futures::stream::iter(pending)
    })
}

/// [`reconcile::reconcile`], timed and counted by result.
async fn observed_reconcile(svc: Arc<Service>, ctx: Arc<Context>) -> Result<Action, Error> {
    let telemetry = ctx.config.telemetry.clone();
    let timer = telemetry.reconcile();
    let provider = ctx
        .class_of(&svc)
        .and_then(|class| ctx.config.classes.get(&class).cloned());
    let lb = reconcile::lb_ref(&svc);
    let result = reconcile::reconcile(svc, ctx).await;
    timer.finish(result.as_ref().err().map(Error::reason));
    if let Some(p) = provider {
        p.reconciled(&lb);
    }
    result
}

/// Services in `namespace`, or in all namespaces.
fn services_api(client: &Client, namespace: Option<&str>) -> Api<Service> {
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Decides when a failed Service is tried again: permanent errors wait for
/// the Service to change; others back off exponentially per Service, so one
/// failing Service never slows the rest.
fn error_policy(svc: Arc<Service>, err: &Error, ctx: Arc<Context>) -> Action {
    let failures = {
        let mut services = ctx.services.lock().expect("service state lock");
        let state = services.entry(ObjectRef::from_obj(&*svc)).or_default();
        state.failures = state.failures.saturating_add(1);
        state.failures
    };
    match err.kind() {
        ErrorKind::Permanent => Action::await_change(),
        ErrorKind::RetryAfter(after) | ErrorKind::Pending(after) => Action::requeue(after),
        ErrorKind::Transient => Action::requeue(backoff(failures)),
    }
}

/// The delay before retry number `failures` (1-based): 5 s doubling to 5 min.
pub fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    MIN_BACKOFF.saturating_mul(1 << exp).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_five_seconds_to_five_minutes() {
        let secs: Vec<u64> = (1..=8).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, vec![5, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }
}
