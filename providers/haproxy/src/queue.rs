//! The queue of target-only changes waiting for the runtime API.
//!
//! A node change reaches every Service at once: a reconcile each, as many
//! at a time as the controller's concurrency. Were each to wait for its own
//! runtime API round trip, a batch could never hold more changes than the
//! reconciles waiting on it. So one asker at a time is the applier: it
//! applies every change queued meanwhile, and again until the queue is
//! empty; the others only queue theirs and hear "pending" (their reconcile
//! slot goes to the next Service), and are asked again once a batch went
//! through.
//!
//! ```text
//!   idle ──push──▶ applying (the pusher applies) ──take: empty──▶ idle
//!   applying ──push──▶ applying (the pusher hears Queued)
//! ```
//!
//! What a batch did to a change whose asker is gone is read from what
//! HAProxy runs when it asks again; only what that cannot tell (a reload
//! needed, a failure) is kept for it ([`RuntimeQueue::left`]).

use std::collections::BTreeMap;

use ferrylb_model::LoadBalancerRef;
use tokio::sync::oneshot;

use crate::render::Entry;
use crate::targets::Applied;

/// Who hears a queued change's outcome: its asker, while it waits.
pub(crate) type Asker = oneshot::Sender<Applied>;

/// Target-only changes waiting for the runtime API, and who applies them.
#[derive(Debug, Default)]
pub(crate) struct RuntimeQueue {
    /// The newest change of each Service not yet taken by a batch.
    waiting: BTreeMap<LoadBalancerRef, (Entry, Asker)>,
    /// The changes of the batch going through now.
    in_flight: BTreeMap<LoadBalancerRef, Entry>,
    /// Whether an applier is at work.
    applying: bool,
    /// Outcomes of changes whose asker had heard Queued, until it asks
    /// again: read without waiting for HAProxy's state, which the applier
    /// holds while a batch goes through.
    left: BTreeMap<LoadBalancerRef, (Entry, Applied)>,
}

/// Whether the asker who queued a change applies the queue itself.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Role {
    Applier,
    Queued,
}

impl RuntimeQueue {
    /// What is known of `entry` asked again: its outcome once a batch took
    /// it, `Queued` while it waits or goes through, `None` when it is new
    /// here (an outcome left for an older change of its Service is moot).
    pub fn ask(&mut self, entry: &Entry) -> Option<Applied> {
        let lb = &entry.spec.lb;
        if let Some((done, outcome)) = self.left.remove(lb)
            && done == *entry
        {
            return Some(outcome);
        }
        let queued = self.waiting.get(lb).is_some_and(|(e, _)| e == entry)
            || self.in_flight.get(lb) == Some(entry);
        queued.then_some(Applied::Queued)
    }

    /// Queues `entry` (replacing an older change of its Service, whose
    /// asker then hears nothing and asks again) and says who applies it.
    pub fn push(&mut self, entry: Entry, asker: Asker) -> Role {
        self.waiting.insert(entry.spec.lb.clone(), (entry, asker));
        if self.applying {
            Role::Queued
        } else {
            self.applying = true;
            Role::Applier
        }
    }

    /// The applier takes everything queued, or learns the queue is empty
    /// and stops being the applier (`None`).
    pub fn take(&mut self) -> Option<Vec<(Entry, Asker)>> {
        if self.waiting.is_empty() {
            self.applying = false;
            return None;
        }
        let batch: Vec<(Entry, Asker)> = std::mem::take(&mut self.waiting).into_values().collect();
        self.in_flight = batch
            .iter()
            .map(|(e, _)| (e.spec.lb.clone(), e.clone()))
            .collect();
        Some(batch)
    }

    /// The applier went away mid-way: the next asker applies, and what
    /// was going through is asked again (HAProxy's state tells).
    pub fn abandon(&mut self) {
        self.applying = false;
        self.in_flight.clear();
    }

    /// Tells each asker of the batch its outcome, or keeps it until the
    /// asker, who heard Queued, asks again.
    pub fn answer(&mut self, answers: impl IntoIterator<Item = (Entry, Asker, Applied)>) {
        self.in_flight.clear();
        for (entry, asker, outcome) in answers {
            if let Err(outcome) = asker.send(outcome) {
                self.left.insert(entry.spec.lb.clone(), (entry, outcome));
            }
        }
    }

    /// `lb` is gone: nothing is kept for it.
    pub fn forget(&mut self, lb: &LoadBalancerRef) {
        self.left.remove(lb);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrylb_model::ProviderError;

    /// `name`'s change to `nodes` targets.
    fn entry(name: &str, nodes: usize) -> Entry {
        const NODES: &[(&str, &str)] = &[("n1", "10.0.0.1"), ("n2", "10.0.0.2")];
        crate::runtime::test_entry(name, &NODES[..nodes])
    }

    fn asker() -> (Asker, oneshot::Receiver<Applied>) {
        oneshot::channel()
    }

    #[test]
    fn the_first_to_queue_applies_the_others_hear_queued() {
        let mut q = RuntimeQueue::default();
        let (a, _ra) = asker();
        let (b, _rb) = asker();
        assert_eq!(q.push(entry("a", 1), a), Role::Applier);
        assert_eq!(q.push(entry("b", 1), b), Role::Queued);
        let batch = q.take().expect("two queued");
        assert_eq!(batch.len(), 2);
        // Still the applier while it works: a change now is queued.
        let (c, _rc) = asker();
        assert_eq!(q.push(entry("c", 1), c), Role::Queued);
        assert_eq!(q.take().expect("one more").len(), 1);
        // Empty: the applier stops, the next to queue applies.
        assert!(q.take().is_none());
        let (d, _rd) = asker();
        assert_eq!(q.push(entry("d", 1), d), Role::Applier);
    }

    #[test]
    fn a_newer_change_of_a_service_replaces_the_older() {
        let mut q = RuntimeQueue::default();
        let (a, mut first) = asker();
        let (b, _second) = asker();
        q.push(entry("a", 1), a);
        q.push(entry("a", 2), b);
        let batch = q.take().expect("queued");
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].0, entry("a", 2));
        // The older asker hears nothing: it asks again.
        assert!(first.try_recv().is_err());
    }

    #[test]
    fn an_abandoned_applier_lets_the_next_asker_apply() {
        let mut q = RuntimeQueue::default();
        let (a, _ra) = asker();
        assert_eq!(q.push(entry("a", 1), a), Role::Applier);
        q.abandon();
        let (b, _rb) = asker();
        assert_eq!(q.push(entry("b", 1), b), Role::Applier);
    }

    #[test]
    fn outcomes_go_to_waiting_askers_or_wait_for_the_next_ask() {
        let mut q = RuntimeQueue::default();
        let (waiting, mut heard) = asker();
        let (gone_done, r1) = asker();
        let (gone_reload, r2) = asker();
        let (gone_failed, r3) = asker();
        drop((r1, r2, r3));
        let failed = Applied::Failed(ProviderError::transient(
            ferrylb_model::reason::HAPROXY_RUNTIME_API_FAILED,
            "refused",
        ));
        q.answer([
            (entry("w", 1), waiting, Applied::Reload),
            (entry("d", 1), gone_done, Applied::Done),
            (entry("r", 1), gone_reload, Applied::Reload),
            (entry("f", 1), gone_failed, failed),
        ]);
        assert!(matches!(heard.try_recv(), Ok(Applied::Reload)));
        assert!(q.ask(&entry("w", 1)).is_none());
        assert!(matches!(q.ask(&entry("d", 1)), Some(Applied::Done)));
        assert!(matches!(q.ask(&entry("r", 1)), Some(Applied::Reload)));
        assert!(matches!(q.ask(&entry("f", 1)), Some(Applied::Failed(_))));
        // Once: asked again, it is new here.
        assert!(q.ask(&entry("d", 1)).is_none());
    }

    #[test]
    fn an_outcome_left_for_an_older_change_is_moot() {
        let mut q = RuntimeQueue::default();
        let (gone, r) = asker();
        drop(r);
        q.answer([(entry("a", 1), gone, Applied::Reload)]);
        assert!(q.ask(&entry("a", 2)).is_none());
        // Read once, even when moot.
        assert!(q.ask(&entry("a", 1)).is_none());
    }

    #[test]
    fn a_change_waiting_or_going_through_is_queued_when_asked_again() {
        let mut q = RuntimeQueue::default();
        let (a, _ra) = asker();
        let (b, _rb) = asker();
        q.push(entry("a", 1), a);
        q.push(entry("b", 1), b);
        assert!(matches!(q.ask(&entry("b", 1)), Some(Applied::Queued)));
        // Another change of b is new.
        assert!(q.ask(&entry("b", 2)).is_none());
        let batch = q.take().expect("queued");
        assert!(matches!(q.ask(&entry("a", 1)), Some(Applied::Queued)));
        let answers: Vec<_> = batch
            .into_iter()
            .map(|(e, asker)| (e, asker, Applied::Done))
            .collect();
        q.answer(answers);
        // Its asker waited and heard: nothing left, nothing going through.
        assert!(q.ask(&entry("a", 1)).is_none());
    }

    #[test]
    fn an_abandoned_batch_is_asked_of_haproxy_again() {
        let mut q = RuntimeQueue::default();
        let (a, _ra) = asker();
        q.push(entry("a", 1), a);
        let _batch = q.take().expect("queued");
        q.abandon();
        assert!(q.ask(&entry("a", 1)).is_none());
    }

    #[test]
    fn a_service_gone_leaves_nothing() {
        let mut q = RuntimeQueue::default();
        let (gone, r) = asker();
        drop(r);
        q.answer([(entry("a", 1), gone, Applied::Done)]);
        q.forget(&entry("a", 1).spec.lb);
        assert!(q.ask(&entry("a", 1)).is_none());
    }
}
