//! The burst protocol's state, owned by one type: which changes wait, which
//! the running burst carries, which are loaded, which were refused. What a
//! reconcile is told comes from here, never from whether a lock happened to
//! be free. No I/O, no locks, no clocks: the provider keeps a [`Bursts`]
//! behind a mutex and moves it on as it loads.
//!
//! The applier's phases:
//!
//! ```text
//!   Idle ──begin──▶ Gathering ──take──▶ Loading{through} ──finish──▶ Idle
//!     ▲                 │                     │
//!     └────abandon──────┘               retry_alone
//!     ▲                                       ▼
//!     └───────────finish────────────── Retrying{through}
//! ```
//!
//! One Service's latest change ([`State`]):
//!
//! ```text
//!   (none) ──change──▶ Pending ──a burst takes it──▶ Carried ──finish──▶ Applied
//!                         ▲                             │
//!                         │                  refused, retried alone,
//!                         │                  refused again: Refused
//!                         └──────────── change (any state) ───────────────┘
//! ```
//!
//! A removal is a change like any other: Applied means HAProxy runs it no
//! more. A burst that ends without finishing (its reconcile was dropped)
//! is abandoned: what it carried is Pending again, and whoever asks next
//! reads what HAProxy runs.

use std::collections::{BTreeMap, HashMap};

use ferrylb_model::{LoadBalancerRef, ProviderError};

use crate::render::Entry;

/// Where the applier is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// No burst: whoever asks reads what HAProxy runs.
    Idle,
    /// A reconcile became the applier and waits for the changes to settle.
    Gathering,
    /// Loading every change counted up to `through`, together.
    Loading { through: u64 },
    /// That failed: each change is being loaded alone.
    Retrying { through: u64 },
}

/// The state of a Service's latest change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// No change recorded (never changed, or forgotten once removed).
    Unchanged,
    /// Counted, not taken by a burst yet.
    Pending,
    /// Taken by the burst being applied.
    Carried,
    /// Loaded (or, for a removal, removed) by a burst that finished.
    Applied,
    /// Refused when its burst was applied, and again alone: the refusal
    /// waits for its reconcile.
    Refused,
}

/// The burst protocol's state.
#[derive(Debug)]
pub struct Bursts {
    /// Counts changes.
    requested: u64,
    /// The count at each Service's latest change.
    changed_at: HashMap<LoadBalancerRef, u64>,
    /// Every change counted up to this is settled: loaded or refused.
    through: u64,
    phase: Phase,
    /// Why a change was refused, with the entry HAProxy runs for it (put
    /// back into the desired state when the refusal is reported).
    refused: BTreeMap<LoadBalancerRef, (ProviderError, Option<Entry>)>,
}

impl Default for Bursts {
    fn default() -> Self {
        Bursts {
            requested: 0,
            changed_at: HashMap::new(),
            through: 0,
            phase: Phase::Idle,
            refused: BTreeMap::new(),
        }
    }
}

impl Bursts {
    /// Counts a change to `lb`'s entry: Pending.
    pub fn change(&mut self, lb: &LoadBalancerRef) -> u64 {
        self.requested += 1;
        self.changed_at.insert(lb.clone(), self.requested);
        self.requested
    }

    /// How many changes were counted.
    #[must_use]
    pub fn requested(&self) -> u64 {
        self.requested
    }

    /// Every change counted up to this is settled.
    #[cfg(test)]
    #[must_use]
    pub fn through(&self) -> u64 {
        self.through
    }

    #[cfg(test)]
    #[must_use]
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Whether a burst is being gathered or applied.
    #[must_use]
    pub fn applying(&self) -> bool {
        self.phase != Phase::Idle
    }

    /// Makes the caller the applier: `false` when a burst runs already
    /// (its change is pending).
    pub fn begin(&mut self) -> bool {
        if self.applying() {
            return false;
        }
        self.phase = Phase::Gathering;
        true
    }

    /// The applier takes every change counted so far; read the desired
    /// state after this, so a change it holds is never left out.
    ///
    /// # Panics
    /// Outside the Gathering phase: a bug in the applier.
    pub fn take(&mut self) -> u64 {
        assert_eq!(self.phase, Phase::Gathering, "take outside a burst");
        self.phase = Phase::Loading {
            through: self.requested,
        };
        self.requested
    }

    /// The burst was refused: each change is tried alone.
    ///
    /// # Panics
    /// Outside the Loading phase: a bug in the applier.
    pub fn retry_alone(&mut self) {
        let Phase::Loading { through } = self.phase else {
            panic!("retry_alone outside a loading burst: {:?}", self.phase);
        };
        self.phase = Phase::Retrying { through };
    }

    /// Records that `lb`'s change was refused (alone, or at start-up before
    /// any burst), with what HAProxy runs for it.
    pub fn refuse(&mut self, lb: &LoadBalancerRef, e: ProviderError, running: Option<Entry>) {
        self.refused.insert(lb.clone(), (e, running));
    }

    /// The burst is over: what it carried is Applied (or Refused). Returns
    /// the new settled count when it rose.
    pub fn finish(&mut self) -> Option<u64> {
        let through = match self.phase {
            Phase::Loading { through } | Phase::Retrying { through } => through,
            Phase::Idle | Phase::Gathering => {
                self.phase = Phase::Idle;
                return None;
            }
        };
        self.phase = Phase::Idle;
        self.settled(through)
    }

    /// The burst ends without finishing: what it carried is Pending again.
    pub fn abandon(&mut self) {
        self.phase = Phase::Idle;
    }

    /// A load outside a burst (holding HAProxy's state the whole time)
    /// settled every change counted up to `through`. Returns the new
    /// settled count when it rose.
    pub fn settled(&mut self, through: u64) -> Option<u64> {
        (through > self.through).then(|| {
            self.through = through;
            through
        })
    }

    /// The state of `lb`'s latest change.
    #[must_use]
    pub fn state(&self, lb: &LoadBalancerRef) -> State {
        if self.refused.contains_key(lb) {
            return State::Refused;
        }
        let Some(&at) = self.changed_at.get(lb) else {
            return State::Unchanged;
        };
        if at <= self.through {
            return State::Applied;
        }
        match self.phase {
            Phase::Loading { through } | Phase::Retrying { through } if at <= through => {
                State::Carried
            }
            _ => State::Pending,
        }
    }

    /// Hands `lb`'s refusal to its reconcile, once.
    pub fn take_refusal(&mut self, lb: &LoadBalancerRef) -> Option<(ProviderError, Option<Entry>)> {
        self.refused.remove(lb)
    }

    /// Forgets `lb` (removed, or never there).
    pub fn forget(&mut self, lb: &LoadBalancerRef) {
        self.changed_at.remove(lb);
        self.refused.remove(lb);
    }
}

#[cfg(test)]
mod tests {
    use ferrylb_model::{ServiceKey, reason};

    use super::*;

    fn lb(name: &str) -> LoadBalancerRef {
        LoadBalancerRef::for_service(ServiceKey {
            namespace: "ns".into(),
            name: name.into(),
            uid: format!("uid-{name}"),
        })
    }

    fn refusal() -> ProviderError {
        ProviderError::permanent(reason::INVALID_HAPROXY_CONFIGURATION, "refused")
    }

    #[test]
    fn a_change_is_pending_then_carried_then_applied() {
        let mut b = Bursts::default();
        let a = lb("a");
        assert_eq!(b.state(&a), State::Unchanged);
        b.change(&a);
        assert_eq!(b.state(&a), State::Pending);
        assert!(b.begin());
        assert_eq!(b.phase(), Phase::Gathering);
        // Gathering takes nothing yet.
        assert_eq!(b.state(&a), State::Pending);
        assert_eq!(b.take(), 1);
        assert_eq!(b.phase(), Phase::Loading { through: 1 });
        assert_eq!(b.state(&a), State::Carried);
        assert_eq!(b.finish(), Some(1));
        assert_eq!(b.phase(), Phase::Idle);
        assert_eq!(b.state(&a), State::Applied);
    }

    #[test]
    fn one_applier_at_a_time_and_a_change_after_the_take_waits_for_the_next_burst() {
        let mut b = Bursts::default();
        let (a, c) = (lb("a"), lb("c"));
        b.change(&a);
        assert!(b.begin());
        assert!(!b.begin(), "a second applier while one gathers");
        b.take();
        assert!(!b.begin(), "a second applier while one loads");
        b.change(&c);
        assert_eq!(b.state(&a), State::Carried);
        assert_eq!(b.state(&c), State::Pending);
        b.finish();
        assert_eq!(b.state(&c), State::Pending);
        assert!(b.begin());
        b.take();
        b.finish();
        assert_eq!(b.state(&c), State::Applied);
    }

    #[test]
    fn a_new_change_to_an_applied_entry_is_pending_again() {
        let mut b = Bursts::default();
        let a = lb("a");
        b.change(&a);
        b.begin();
        b.take();
        b.finish();
        b.change(&a);
        assert_eq!(b.state(&a), State::Pending);
    }

    #[test]
    fn a_refused_burst_retries_alone_and_keeps_each_refusal_for_its_reconcile() {
        let mut b = Bursts::default();
        let (good, bad) = (lb("good"), lb("bad"));
        b.change(&good);
        b.change(&bad);
        b.begin();
        b.take();
        b.retry_alone();
        assert_eq!(b.phase(), Phase::Retrying { through: 2 });
        assert_eq!(b.state(&bad), State::Carried);
        b.refuse(&bad, refusal(), None);
        assert_eq!(b.state(&bad), State::Refused);
        assert_eq!(b.finish(), Some(2));
        assert_eq!(b.state(&good), State::Applied);
        assert_eq!(b.state(&bad), State::Refused);
        let (e, running) = b.take_refusal(&bad).unwrap();
        assert_eq!(e.reason, reason::INVALID_HAPROXY_CONFIGURATION);
        assert!(running.is_none());
        assert!(b.take_refusal(&bad).is_none(), "told once");
        // Settled, though refused: not pending for ever.
        assert_eq!(b.state(&bad), State::Applied);
    }

    #[test]
    fn a_deletion_in_a_refused_burst_is_refused_with_what_haproxy_still_runs() {
        let mut b = Bursts::default();
        let gone = lb("gone");
        let running = crate::runtime::test_entry("gone", &[]);
        // The removal is a change; the burst carrying it is refused, and
        // so is the removal alone: HAProxy still runs the entry, which the
        // refusal carries back into the desired state.
        b.change(&gone);
        b.begin();
        b.take();
        b.retry_alone();
        b.refuse(&gone, refusal(), Some(running.clone()));
        b.finish();
        assert_eq!(b.state(&gone), State::Refused);
        let (_, back) = b.take_refusal(&gone).unwrap();
        assert_eq!(back, Some(running));
        // Asked again, the removal is a new change.
        b.change(&gone);
        assert_eq!(b.state(&gone), State::Pending);
        b.begin();
        b.take();
        b.finish();
        assert_eq!(b.state(&gone), State::Applied);
        b.forget(&gone);
        assert_eq!(b.state(&gone), State::Unchanged);
    }

    #[test]
    fn an_abandoned_burst_leaves_what_it_carried_pending() {
        let mut b = Bursts::default();
        let a = lb("a");
        b.change(&a);
        b.begin();
        b.take();
        b.abandon();
        assert_eq!(b.phase(), Phase::Idle);
        assert_eq!(b.state(&a), State::Pending);
        // Abandoned while gathering: nothing was taken.
        b.begin();
        assert_eq!(b.finish(), None);
        assert_eq!(b.state(&a), State::Pending);
    }

    #[test]
    fn a_load_outside_a_burst_settles_what_it_carried() {
        let mut b = Bursts::default();
        let a = lb("a");
        b.change(&a);
        let through = b.requested();
        assert_eq!(b.settled(through), Some(1));
        assert_eq!(b.settled(through), None, "no rise, no news");
        assert_eq!(b.state(&a), State::Applied);
        assert_eq!(b.through(), 1);
    }

    #[test]
    #[should_panic(expected = "take outside a burst")]
    fn taking_without_being_the_applier_is_a_bug() {
        Bursts::default().take();
    }
}
