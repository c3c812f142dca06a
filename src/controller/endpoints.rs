//! The EndpointSlices of the Services whose provider needs them, and only
//! of those.
//!
//! # Expected flow
//! 1. A reconcile finds that its provider needs the Service's endpoints
//!    ([`LoadBalancerProvider::needs_endpoints`]) and asks
//!    [`Endpoints::lookup`]. The first time, the Service joins the set of
//!    needed Services and the answer is [`Lookup::Listing`]; the reconcile
//!    waits.
//! 2. The watch task (re)starts one watch of the EndpointSlices labelled
//!    `kubernetes.io/service-name in (…needed names…)`. When its listing
//!    completes, each needed Service it covers is listed, and each is
//!    reconciled again, this time with its endpoints.
//! 3. Every later change to such a slice reconciles its Service again; the
//!    provider registers only the difference.
//! 4. A Service that no longer needs them (deleted, another target type)
//!    is dropped at once; the watch narrows the next time it restarts.
//!
//! # Guarantees
//! - No watch at all while no Service needs endpoints; never a slice of a
//!   Service that does not.
//! - A reconcile never sees a Service's endpoints before their listing
//!   completed, so a load balancer is never built from a partial list.
//!
//! [`LoadBalancerProvider::needs_endpoints`]: ferrylb_model::LoadBalancerProvider::needs_endpoints

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferrylb_model::Endpoint;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};

use crate::spec::LABEL_SERVICE_NAME;

/// How long the set of needed Services must stay unchanged before the
/// watch restarts with it, so a burst of new Services costs one relist.
const SETTLE: Duration = Duration::from_millis(300);

/// A Service, by namespace and name.
type SvcRef = (String, String);

/// What [`Endpoints::lookup`] knows of a Service's endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Not listed yet: the Service is reconciled again once they are. With
    /// why the watch failed last, while it fails (RBAC, say).
    Listing(Option<String>),
    /// Listed, and kept current since.
    Listed(Arc<[Endpoint]>),
}

#[derive(Default)]
struct State {
    needed: BTreeSet<SvcRef>,
    /// Needed Services the running watch has listed.
    listed: BTreeSet<SvcRef>,
    /// Slices by Service, then by slice name.
    slices: HashMap<SvcRef, BTreeMap<String, EndpointSlice>>,
    /// The watch's last error, until a listing completes.
    failing: Option<String>,
}

/// The endpoints of the Services that need them. See the module docs.
pub struct Endpoints {
    state: Mutex<State>,
    /// Bumped each time a Service joins the needed set.
    grown: tokio::sync::watch::Sender<u64>,
}

impl Default for Endpoints {
    fn default() -> Self {
        Self {
            state: Mutex::default(),
            grown: tokio::sync::watch::channel(0).0,
        }
    }
}

impl Endpoints {
    /// The endpoints of `namespace/name`, which from now on are needed.
    pub fn lookup(&self, namespace: &str, name: &str) -> Lookup {
        let key = (namespace.to_owned(), name.to_owned());
        let mut state = self.state.lock().expect("endpoints lock");
        if state.listed.contains(&key) {
            let slices = state.slices.get(&key);
            return Lookup::Listed(crate::spec::endpoints(
                slices.into_iter().flat_map(|s| s.values()),
            ));
        }
        if state.needed.insert(key) {
            self.grown.send_modify(|n| *n += 1);
        }
        Lookup::Listing(state.failing.clone())
    }

    /// `namespace/name` no longer needs its endpoints.
    pub fn release(&self, namespace: &str, name: &str) {
        let key = (namespace.to_owned(), name.to_owned());
        let mut state = self.state.lock().expect("endpoints lock");
        if state.needed.remove(&key) {
            state.listed.remove(&key);
            state.slices.remove(&key);
        }
    }

    /// Whether any Service needs endpoints (and so a watch runs).
    #[cfg(test)]
    fn watching(&self) -> bool {
        !self.state.lock().expect("endpoints lock").needed.is_empty()
    }

    /// Watches the needed Services' EndpointSlices (in `namespace`, or in
    /// all) and sends each Service whose endpoints were listed or changed
    /// to `changed`. Runs until `changed` closes.
    pub async fn run(
        self: Arc<Self>,
        client: Client,
        namespace: Option<String>,
        changed: tokio::sync::mpsc::Sender<ObjectRef<Service>>,
    ) {
        let mut grown = self.grown.subscribe();
        loop {
            let wanted = self.state.lock().expect("endpoints lock").needed.clone();
            if wanted.is_empty() {
                if grown.changed().await.is_err() {
                    return;
                }
                continue;
            }
            let api: Api<EndpointSlice> = match &namespace {
                Some(ns) => Api::namespaced(client.clone(), ns),
                None => Api::all(client.clone()),
            };
            let names: BTreeSet<&str> = wanted.iter().map(|(_, n)| n.as_str()).collect();
            let selector = format!(
                "{LABEL_SERVICE_NAME} in ({})",
                names.into_iter().collect::<Vec<_>>().join(",")
            );
            tracing::debug!(services = wanted.len(), "watching EndpointSlices");
            let events = watcher(api, watcher::Config::default().labels(&selector))
                .default_backoff()
                .modify(slim);
            futures::pin_mut!(events);
            let mut listing: Option<HashMap<SvcRef, BTreeMap<String, EndpointSlice>>> = None;
            grown.mark_unchanged();
            loop {
                tokio::select! {
                    r = grown.changed() => {
                        if r.is_err() {
                            return;
                        }
                        // Let a burst of new Services settle, then widen.
                        tokio::time::sleep(SETTLE).await;
                        break;
                    }
                    ev = events.next() => {
                        let Some(ev) = ev else { break };
                        let touched = match ev {
                            Ok(ev) => self.apply(&wanted, &mut listing, ev),
                            Err(e) => {
                                tracing::warn!(error = %e, "watching EndpointSlices failed; retrying");
                                self.failed(e.to_string());
                                continue;
                            }
                        };
                        for (ns, name) in touched {
                            if changed.send(ObjectRef::new(&name).within(&ns)).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        }
    }

    /// The watch failed: Services still waiting for their listing hear why.
    fn failed(&self, why: String) {
        self.state.lock().expect("endpoints lock").failing = Some(why);
    }

    /// Takes one watch event in; returns the Services to reconcile again.
    fn apply(
        &self,
        wanted: &BTreeSet<SvcRef>,
        listing: &mut Option<HashMap<SvcRef, BTreeMap<String, EndpointSlice>>>,
        ev: watcher::Event<EndpointSlice>,
    ) -> Vec<SvcRef> {
        let mut state = self.state.lock().expect("endpoints lock");
        match ev {
            watcher::Event::Init => {
                *listing = Some(HashMap::new());
                Vec::new()
            }
            watcher::Event::InitApply(slice) => {
                if let (Some(l), Some(key)) = (listing.as_mut(), owner(&slice))
                    && wanted.contains(&key)
                {
                    l.entry(key).or_default().insert(slice.name_any(), slice);
                }
                Vec::new()
            }
            watcher::Event::InitDone => {
                state.failing = None;
                let mut fresh = listing.take().unwrap_or_default();
                let mut touched = Vec::new();
                let state = &mut *state;
                for key in wanted.iter().filter(|k| state.needed.contains(*k)) {
                    let slices = fresh.remove(key).unwrap_or_default();
                    let newly_listed = state.listed.insert(key.clone());
                    let old = state.slices.insert(key.clone(), slices);
                    if newly_listed || old.as_ref() != state.slices.get(key) {
                        touched.push(key.clone());
                    }
                }
                touched
            }
            watcher::Event::Apply(slice) => {
                let Some(key) = owner(&slice).filter(|k| state.listed.contains(k)) else {
                    return Vec::new();
                };
                let slices = state.slices.entry(key.clone()).or_default();
                if slices.get(&slice.name_any()) == Some(&slice) {
                    return Vec::new();
                }
                slices.insert(slice.name_any(), slice);
                vec![key]
            }
            watcher::Event::Delete(slice) => {
                let Some(key) = owner(&slice).filter(|k| state.listed.contains(k)) else {
                    return Vec::new();
                };
                let removed = state
                    .slices
                    .get_mut(&key)
                    .and_then(|s| s.remove(&slice.name_any()));
                removed.map(|_| vec![key]).unwrap_or_default()
            }
        }
    }
}

/// The Service a slice belongs to.
fn owner(slice: &EndpointSlice) -> Option<SvcRef> {
    let name = slice.labels().get(LABEL_SERVICE_NAME)?;
    Some((slice.namespace()?, name.clone()))
}

/// Keeps of a slice what its endpoints are made of (and what identifies
/// it), so the cache holds no managed fields or annotations.
fn slim(slice: &mut EndpointSlice) {
    let meta = &mut slice.metadata;
    meta.managed_fields = None;
    meta.annotations = None;
    meta.owner_references = None;
    meta.resource_version = None;
    for e in &mut slice.endpoints {
        e.hints = None;
        e.target_ref = None;
        e.deprecated_topology = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use watcher::Event;

    fn slice(ns: &str, service: &str, name: &str, address: &str) -> EndpointSlice {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": ns, "labels": {LABEL_SERVICE_NAME: service}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": [{"addresses": [address]}],
        }))
        .unwrap()
    }

    fn key(ns: &str, name: &str) -> SvcRef {
        (ns.to_owned(), name.to_owned())
    }

    fn addresses(l: &Lookup) -> Vec<String> {
        match l {
            Lookup::Listing(_) => panic!("not listed"),
            Lookup::Listed(e) => e.iter().map(|e| e.address.to_string()).collect(),
        }
    }

    #[test]
    fn a_service_is_listing_until_the_watch_that_covers_it_has_listed() {
        let eps = Endpoints::default();
        assert!(!eps.watching());
        assert_eq!(eps.lookup("a", "web"), Lookup::Listing(None));
        assert!(eps.watching());
        let wanted: BTreeSet<SvcRef> = [key("a", "web")].into();
        let mut listing = None;
        assert!(eps.apply(&wanted, &mut listing, Event::Init).is_empty());
        for s in [
            slice("a", "web", "web-1", "10.1.0.5"),
            // Same name, other namespace: not needed, never kept.
            slice("b", "web", "web-1", "10.2.0.5"),
        ] {
            assert!(
                eps.apply(&wanted, &mut listing, Event::InitApply(s))
                    .is_empty()
            );
        }
        assert_eq!(
            eps.lookup("a", "web"),
            Lookup::Listing(None),
            "listing not done"
        );
        let touched = eps.apply(&wanted, &mut listing, Event::InitDone);
        assert_eq!(touched, [key("a", "web")]);
        assert_eq!(addresses(&eps.lookup("a", "web")), ["10.1.0.5"]);

        // Changes to its slices reconcile it; others' never do.
        let more = slice("a", "web", "web-2", "10.1.0.6");
        assert_eq!(
            eps.apply(&wanted, &mut listing, Event::Apply(more.clone())),
            [key("a", "web")]
        );
        assert!(
            eps.apply(&wanted, &mut listing, Event::Apply(more.clone()))
                .is_empty(),
            "the same slice again changes nothing"
        );
        assert!(
            eps.apply(
                &wanted,
                &mut listing,
                Event::Apply(slice("b", "web", "x", "10.2.0.6"))
            )
            .is_empty()
        );
        assert_eq!(addresses(&eps.lookup("a", "web")), ["10.1.0.5", "10.1.0.6"]);
        assert_eq!(
            eps.apply(&wanted, &mut listing, Event::Delete(more)),
            [key("a", "web")]
        );
        assert_eq!(addresses(&eps.lookup("a", "web")), ["10.1.0.5"]);

        // Released: dropped at once, and a later event for it is ignored.
        eps.release("a", "web");
        assert!(!eps.watching());
        assert!(
            eps.apply(
                &wanted,
                &mut listing,
                Event::Apply(slice("a", "web", "web-3", "10.1.0.7"))
            )
            .is_empty()
        );
        assert_eq!(eps.lookup("a", "web"), Lookup::Listing(None));
    }

    #[test]
    fn a_failing_watch_is_told_to_waiting_services_until_a_listing_completes() {
        let eps = Endpoints::default();
        eps.lookup("a", "web");
        eps.failed("endpointslices is forbidden".into());
        assert_eq!(
            eps.lookup("a", "web"),
            Lookup::Listing(Some("endpointslices is forbidden".into()))
        );
        let wanted: BTreeSet<SvcRef> = [key("a", "web")].into();
        let mut listing = None;
        eps.apply(&wanted, &mut listing, Event::Init);
        eps.apply(&wanted, &mut listing, Event::InitDone);
        assert!(addresses(&eps.lookup("a", "web")).is_empty());
        eps.lookup("a", "api");
        assert_eq!(eps.lookup("a", "api"), Lookup::Listing(None));
    }

    #[test]
    fn a_relist_reconciles_only_what_changed_and_keeps_serving_meanwhile() {
        let eps = Endpoints::default();
        eps.lookup("a", "web");
        eps.lookup("a", "api");
        let wanted: BTreeSet<SvcRef> = [key("a", "web"), key("a", "api")].into();
        let mut listing = None;
        eps.apply(&wanted, &mut listing, Event::Init);
        eps.apply(
            &wanted,
            &mut listing,
            Event::InitApply(slice("a", "web", "w", "10.1.0.5")),
        );
        eps.apply(
            &wanted,
            &mut listing,
            Event::InitApply(slice("a", "api", "a", "10.1.0.9")),
        );
        assert_eq!(eps.apply(&wanted, &mut listing, Event::InitDone).len(), 2);
        // The watch restarts (a new Service joined): until the new listing
        // is done, the old endpoints still answer.
        eps.apply(&wanted, &mut listing, Event::Init);
        eps.apply(
            &wanted,
            &mut listing,
            Event::InitApply(slice("a", "web", "w", "10.1.0.5")),
        );
        assert_eq!(addresses(&eps.lookup("a", "api")), ["10.1.0.9"]);
        // api's slice vanished while the watch was down.
        assert_eq!(
            eps.apply(&wanted, &mut listing, Event::InitDone),
            [key("a", "api")]
        );
        assert!(addresses(&eps.lookup("a", "api")).is_empty());
    }
}
