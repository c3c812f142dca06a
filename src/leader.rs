//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several
//! replicas only one reconciles (and, without VRRP or BGP, only one holds
//! the VIPs), with the semantics client-go's leader election proved.
//!
//! # Expected flow
//! 1. [`LeaseLock::acquire`] reads the Lease every second (and at the
//!    moment the record it saw would expire) until the Lease is free and
//!    takes it, or until shutdown. Free means: no holder, or a
//!    record (holder, renew time, resourceVersion) this replica has seen
//!    unchanged for a whole lease duration, timed by its own monotonic
//!    clock from when it first saw that record (never from the timestamp
//!    in it, which another host's clock wrote).
//! 2. [`LeaseLock::hold`] renews every retry period and returns the moment
//!    no renewal succeeded within the renew deadline (two thirds of the
//!    lease duration, counted from the start of the last successful
//!    renewal), or another replica holds the Lease.
//! 3. [`LeaseLock::release`] hands it back on a clean shutdown, so a follower
//!    takes over at once instead of waiting for the lease to expire.
//!
//! # Guarantees
//! - Every write is a replace with the Lease's resourceVersion: of two
//!   replicas racing for a free Lease exactly one wins (the other gets a
//!   conflict and stays a follower).
//! - Every call has a time limit; a renewal never outlives the deadline.
//! - A leader stops (and must stop acting) at least a third of the lease
//!   duration before any follower may take over: the follower starts its
//!   clock no earlier than the renewal the leader's deadline counts from.
//! - One exception, when the other replicas can be asked ([`peers`]): a
//!   leader past its deadline whose every peer answers that it does not
//!   reach the API server either keeps leading through the outage (nobody
//!   can take over), stepping down as soon as one could.

pub mod peers;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};

/// What identifies one version of the Lease's record: a change of any part
/// is a sign of life from its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    holder: Option<String>,
    renew_time: Option<String>,
    resource_version: Option<String>,
}

impl Record {
    fn of(lease: &Lease) -> Self {
        let spec = lease.spec.as_ref();
        Self {
            holder: spec.and_then(|s| s.holder_identity.clone()),
            renew_time: spec
                .and_then(|s| s.renew_time.as_ref())
                .map(|t| t.0.to_string()),
            resource_version: lease.metadata.resource_version.clone(),
        }
    }
}

/// When this replica first saw the Lease's current record.
#[derive(Debug, Clone)]
struct Observed {
    record: Record,
    at: Instant,
}

/// Whether a Lease whose record is `current` is free for the taking at
/// `now`, given what was `observed` before (which this updates): no holder,
/// or the same record seen for at least `held_for`.
fn observe_expired(
    observed: &mut Option<Observed>,
    current: Record,
    held_for: Duration,
    now: Instant,
) -> bool {
    let free = current.holder.as_deref().is_none_or(str::is_empty);
    match observed {
        Some(o) if o.record == current => free || now.duration_since(o.at) >= held_for,
        _ => {
            *observed = Some(Observed {
                record: current,
                at: now,
            });
            free
        }
    }
}

/// Whether this replica reaches the API server, and since when without a
/// failure: what it tells the other replicas (`GET /lease`, see [`peers`]).
#[derive(Clone, Default)]
pub struct ApiContact(Arc<Mutex<Contact>>);

#[derive(Default)]
struct Contact {
    since: Option<Instant>,
    lost: bool,
}

impl ApiContact {
    /// A call answered; `true` when the one before had failed (the API
    /// server is back for this replica).
    fn answered(&self) -> bool {
        let mut c = self.0.lock().expect("contact lock");
        let back = c.lost;
        c.lost = false;
        c.since.get_or_insert_with(Instant::now);
        back
    }

    fn failed(&self) {
        let mut c = self.0.lock().expect("contact lock");
        c.lost = true;
        c.since = None;
    }

    /// How long the API server has answered without a failure; `None`
    /// while it does not (or was not asked yet).
    #[must_use]
    pub fn ok_for(&self) -> Option<Duration> {
        self.0
            .lock()
            .expect("contact lock")
            .since
            .map(|s| s.elapsed())
    }

    /// The answer to `GET /lease`: `{"api_ok_for_ms": N}` or `null`.
    #[must_use]
    pub fn answer(&self) -> serde_json::Value {
        serde_json::json!({
            "api_ok_for_ms": self.ok_for().map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        })
    }
}

/// How often a follower reads the Lease at most a second apart, so it sees a
/// renewal late by that much at most (and so takes over at most that long
/// after the lease ran out).
const FOLLOWER_POLL: Duration = Duration::from_secs(1);

/// The renew deadline for a lease of `duration`: two thirds of it (10 s of
/// 15 s, client-go's defaults).
pub fn renew_deadline(duration: Duration) -> Duration {
    duration * 2 / 3
}

/// One replica's handle on the Lease.
#[derive(Clone)]
pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    observed: std::sync::Arc<Mutex<Option<Observed>>>,
    contact: ApiContact,
    peers: Option<Arc<peers::Peers>>,
}

/// Aborts a task when dropped (a cancelled [`LeaseLock::acquire`] leaves
/// no watch behind).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A Lease call that failed or did not answer in time.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error(transparent)]
    Api(#[from] kube::Error),
    #[error("the API server did not answer within {0:?}")]
    TimedOut(Duration),
}

/// `call`, abandoned after `limit`.
async fn within<T>(
    limit: Duration,
    call: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, LeaseError> {
    match tokio::time::timeout(limit, call).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(LeaseError::TimedOut(limit)),
    }
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

impl LeaseLock {
    /// A lock on Lease `namespace/name` for the replica `identity`.
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: Duration,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            identity: identity.to_owned(),
            duration,
            observed: std::sync::Arc::default(),
            contact: ApiContact::default(),
            peers: None,
        }
    }

    /// Records this replica's contact with the API server in `contact`.
    #[must_use]
    pub fn with_contact(mut self, contact: ApiContact) -> Self {
        self.contact = contact;
        self
    }

    /// Asks `peers` before stepping down past the renew deadline (see
    /// [`peers`]).
    #[must_use]
    pub fn with_peers(mut self, peers: Arc<peers::Peers>) -> Self {
        self.peers = Some(peers);
        self
    }

    /// How often the holder renews and followers retry: a third of the
    /// lease, at most 2 s (client-go's default retry period), so that a
    /// released Lease is taken over within 2 s.
    pub fn retry_period(&self) -> Duration {
        (self.duration / 3).min(Duration::from_secs(2))
    }

    /// Takes the Lease if it is free or ours; `Ok(true)` when this replica
    /// holds it afterwards. No call takes longer than `limit`.
    ///
    /// # Errors
    /// When the API server cannot be asked, or does not answer within
    /// `limit` (a lost race is `Ok(false)`).
    async fn try_acquire_within(&self, limit: Duration) -> Result<bool, LeaseError> {
        let started = Instant::now();
        let left = || limit.saturating_sub(started.elapsed());
        let now = Timestamp::now();
        let secs = i32::try_from(self.duration.as_secs().max(1)).unwrap_or(i32::MAX);
        let got = within(left(), self.api.get_opt(&self.name)).await;
        if got.is_err() {
            self.contact.failed();
        } else if self.contact.answered() {
            // Back after an outage: what was seen before says nothing of
            // the holder's life since; its lease runs a whole duration
            // from now.
            *self.observed.lock().expect("observed lock") = None;
        }
        let Some(current) = got? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(secs),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match within(left(), self.api.create(&PostParams::default(), &lease)).await {
                Ok(_) => Ok(true),
                Err(LeaseError::Api(e)) if is_conflict(&e) => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = current.spec.clone().unwrap_or_default();
        let mine = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        let held_for = Duration::from_secs(
            u64::try_from(spec.lease_duration_seconds.unwrap_or(secs)).unwrap_or(0),
        );
        let expired = observe_expired(
            &mut self.observed.lock().expect("observed lock"),
            Record::of(&current),
            held_for,
            Instant::now(),
        );
        if !mine && !expired {
            return Ok(false);
        }
        let lease = Lease {
            metadata: current.metadata.clone(),
            spec: Some(LeaseSpec {
                holder_identity: Some(self.identity.clone()),
                lease_duration_seconds: Some(secs),
                acquire_time: if mine {
                    spec.acquire_time.clone()
                } else {
                    Some(MicroTime(now))
                },
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(spec.lease_transitions.unwrap_or(0) + i32::from(!mine)),
                ..spec
            }),
        };
        match within(
            left(),
            self.api.replace(&self.name, &PostParams::default(), &lease),
        )
        .await
        {
            Ok(written) => {
                *self.observed.lock().expect("observed lock") = Some(Observed {
                    record: Record::of(&written),
                    at: Instant::now(),
                });
                Ok(true)
            }
            Err(LeaseError::Api(e)) if is_conflict(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// [`Self::try_acquire_within`] one retry period.
    ///
    /// # Errors
    /// As [`Self::try_acquire_within`].
    pub async fn try_acquire(&self) -> Result<bool, LeaseError> {
        self.try_acquire_within(self.retry_period()).await
    }

    /// How long a follower waits before asking again: its poll period
    /// (a second, so it sees a renewal at most that late), or until the
    /// record it saw expires, whichever comes first.
    fn follower_wait(&self) -> Duration {
        let poll = self.retry_period().min(FOLLOWER_POLL);
        let observed = self.observed.lock().expect("observed lock").clone();
        observed
            .filter(|o| o.record.holder.as_deref().is_some_and(|h| !h.is_empty()))
            .map(|o| {
                (o.at + self.duration)
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(10))
            })
            .map_or(poll, |until| until.min(poll))
    }

    /// Waits until this replica holds the Lease. Besides reading it every
    /// second, a watch of the Lease wakes it the moment the record changes,
    /// so a released Lease is taken in a round trip.
    pub async fn acquire(&self) {
        let changed = std::sync::Arc::new(tokio::sync::Notify::new());
        let watch = {
            let (api, name, changed) = (self.api.clone(), self.name.clone(), changed.clone());
            tokio::spawn(async move {
                use futures::StreamExt as _;
                use kube::runtime::{WatchStreamExt as _, watcher};
                let events = watcher(
                    api,
                    watcher::Config::default().fields(&format!("metadata.name={name}")),
                )
                .default_backoff()
                .touched_objects();
                futures::pin_mut!(events);
                while let Some(ev) = events.next().await {
                    if ev.is_ok() {
                        changed.notify_one();
                    }
                }
            })
        };
        let _stop_watch = AbortOnDrop(watch);
        loop {
            match self.try_acquire().await {
                Ok(true) => {
                    tracing::info!(lease = %self.name, identity = %self.identity, "became the leader");
                    return;
                }
                Ok(false) => {
                    tracing::debug!(lease = %self.name, "another replica leads; waiting")
                }
                Err(e) => {
                    tracing::warn!(lease = %self.name, error = %e, "reading the leader Lease failed")
                }
            }
            tokio::select! {
                () = tokio::time::sleep(self.follower_wait()) => {}
                () = changed.notified() => {}
            }
        }
    }

    /// The renew deadline: how long after the start of its last successful
    /// renewal a leader stops leading.
    pub fn renew_deadline(&self) -> Duration {
        renew_deadline(self.duration)
    }

    /// Renews the Lease until leadership is lost, then returns at once:
    /// when another replica holds it, or when no renewal succeeded within
    /// the renew deadline (a renewal that hangs is abandoned at it) unless
    /// every other replica says the API server is down for it too (see
    /// [`peers`]); then it goes on renewing, asking them again each time.
    pub async fn hold(&self) {
        let mut renewed_from = Instant::now();
        let mut riding_out = false;
        let mut attempt = Instant::now();
        loop {
            let deadline = renewed_from + self.renew_deadline();
            // The next attempt, but never a moment past the deadline: a
            // failed attempt must not push the verdict back a retry period.
            // Leading on through an outage, a retry period after the last
            // attempt began, so the other replicas are asked that often.
            let next = if riding_out {
                attempt + self.retry_period()
            } else {
                (Instant::now() + self.retry_period()).min(deadline)
            };
            tokio::time::sleep_until(next.into()).await;
            attempt = Instant::now();
            let limit = match deadline
                .checked_duration_since(attempt)
                .filter(|l| !l.is_zero())
            {
                Some(left) => left,
                None => {
                    let everyone = match &self.peers {
                        Some(p) => p.outage_for_all(self.duration).await,
                        None => false,
                    };
                    if !everyone {
                        tracing::warn!(lease = %self.name, "no renewal of the Lease within the renew deadline; no longer leading");
                        return;
                    }
                    if !riding_out {
                        tracing::warn!(lease = %self.name, "no renewal of the Lease within the renew deadline, but no other replica reaches the API server either: leading on through the outage");
                        riding_out = true;
                    }
                    self.retry_period()
                }
            };
            match self.try_acquire_within(limit).await {
                Ok(true) => {
                    if riding_out {
                        tracing::info!(lease = %self.name, "the API server answers again; the Lease is renewed");
                    }
                    renewed_from = attempt;
                    riding_out = false;
                }
                Ok(false) => {
                    tracing::warn!(lease = %self.name, "another replica took the Lease");
                    return;
                }
                Err(e) => {
                    tracing::warn!(lease = %self.name, error = %e, "renewing the Lease failed; retrying")
                }
            }
        }
    }

    /// Gives the Lease up if this replica holds it.
    ///
    /// # Errors
    /// When the API server cannot be asked.
    pub async fn release(&self) -> Result<(), LeaseError> {
        let limit = self.retry_period();
        let Some(current) = within(limit, self.api.get_opt(&self.name)).await? else {
            return Ok(());
        };
        let spec = current.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        let lease = Lease {
            metadata: current.metadata.clone(),
            spec: Some(LeaseSpec {
                holder_identity: None,
                lease_duration_seconds: Some(1),
                renew_time: Some(MicroTime(Timestamp::now())),
                ..spec
            }),
        };
        match within(
            limit,
            self.api.replace(&self.name, &PostParams::default(), &lease),
        )
        .await
        {
            Ok(_) => {
                tracing::info!(lease = %self.name, "released the leader Lease");
                Ok(())
            }
            Err(LeaseError::Api(e)) if is_conflict(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(holder: &str, rv: &str) -> Record {
        Record {
            holder: (!holder.is_empty()).then(|| holder.to_owned()),
            renew_time: Some("2026-12-06T00:00:00Z".into()),
            resource_version: Some(rv.into()),
        }
    }

    const LEASE: Duration = Duration::from_secs(15);

    #[test]
    fn a_lease_expires_a_whole_duration_after_this_replica_saw_its_record_change() {
        let t0 = Instant::now();
        let mut seen = None;
        // First sight: not expired, whatever the timestamp inside says.
        assert!(!observe_expired(&mut seen, record("a", "1"), LEASE, t0));
        assert!(!observe_expired(
            &mut seen,
            record("a", "1"),
            LEASE,
            t0 + Duration::from_secs(14)
        ));
        // Renewed (a new resourceVersion): the clock starts again.
        assert!(!observe_expired(
            &mut seen,
            record("a", "2"),
            LEASE,
            t0 + Duration::from_secs(14)
        ));
        assert!(!observe_expired(
            &mut seen,
            record("a", "2"),
            LEASE,
            t0 + Duration::from_secs(28)
        ));
        assert!(observe_expired(
            &mut seen,
            record("a", "2"),
            LEASE,
            t0 + Duration::from_secs(29)
        ));
        // A record with no holder is free at once.
        let mut seen = None;
        assert!(observe_expired(&mut seen, record("", "3"), LEASE, t0));
    }

    #[test]
    fn contact_says_how_long_the_api_server_has_answered_and_when_it_came_back() {
        let c = ApiContact::default();
        assert_eq!(c.answer()["api_ok_for_ms"], serde_json::Value::Null);
        assert!(!c.answered(), "the first answer is no comeback");
        assert!(c.ok_for().is_some());
        assert!(c.answer()["api_ok_for_ms"].is_u64());
        c.failed();
        assert_eq!(c.ok_for(), None);
        assert_eq!(c.answer()["api_ok_for_ms"], serde_json::Value::Null);
        assert!(c.answered(), "back after a failure");
        assert!(!c.answered());
    }

    #[test]
    fn a_leader_stops_a_third_of_the_lease_before_a_follower_may_take_over() {
        assert_eq!(renew_deadline(LEASE), Duration::from_secs(10));
        // The leader's deadline counts from the start of its last successful
        // renewal; a follower's clock from when it saw that renewal, later.
        let renewal_started = Instant::now();
        let follower_saw_it = renewal_started + Duration::from_millis(300);
        let leader_stops = renewal_started + renew_deadline(LEASE);
        let follower_may_take = follower_saw_it + LEASE;
        assert!(follower_may_take - leader_stops >= LEASE / 3);
    }

    #[tokio::test]
    async fn a_call_that_hangs_is_abandoned_at_its_limit() {
        let started = Instant::now();
        let r: Result<(), LeaseError> = within(
            Duration::from_millis(50),
            futures::future::pending::<Result<(), kube::Error>>(),
        )
        .await;
        assert!(matches!(r, Err(LeaseError::TimedOut(_))));
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
