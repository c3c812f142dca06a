//! Target-only changes through the runtime API, without a reload, and the
//! file written once they settle.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ferrylb_model::{LoadBalancerRef, ProviderError};

use crate::queue::{Role, RuntimeQueue};
use crate::render::{Entry, GlobalSettings};
use crate::{HaproxyProvider, Loaded, apply, process, render, runtime};

/// What became of a target-only change (see
/// [`HaproxyProvider::apply_targets`]).
#[derive(Debug, Clone)]
pub(crate) enum Applied {
    /// HAProxy runs it: through the runtime API, or it ran it already.
    Done,
    /// It needs a reload: HAProxy runs something for the Service that is
    /// more than a target change away from it, or no spare node check is
    /// left.
    Reload,
    /// The runtime API failed; what HAProxy runs is unknown now (the next
    /// load makes it certain).
    Failed(ProviderError),
    /// Queued for the batch after the one being applied: ask again.
    Queued,
}

impl HaproxyProvider {
    /// Applies `entry`, which should differ from what HAProxy runs for its
    /// Service in its targets alone, through the runtime API, together with
    /// every other such change queued meanwhile (see [`crate::queue`]):
    /// `Queued` when another asker is applying the queue (ask again once
    /// [`ferrylb_model::LoadBalancerProvider::applied`] says a batch went
    /// through), else what became of it. Asked again, a change a batch
    /// took is answered at once. Nothing here waits for HAProxy's state
    /// unless it applies: an asker that waited for the batch going through
    /// would hold its reconcile slot, and the batches would again be only
    /// as large as the controller's concurrency.
    pub(crate) async fn apply_targets(&self, entry: Entry) -> Applied {
        if let Some(known) = self.queue().ask(&entry) {
            return known;
        }
        let (asker, outcome) = tokio::sync::oneshot::channel();
        if self.queue().push(entry, asker) == Role::Queued {
            return Applied::Queued;
        }
        self.apply_queue().await;
        // Dropped unanswered: a newer change of the Service replaced it.
        outcome.await.unwrap_or(Applied::Queued)
    }

    /// The applier's work: every queued change through the runtime API, a
    /// batch at a time, until none is left; each batch tells the
    /// controller, so that the askers who heard `Queued` ask again.
    async fn apply_queue(&self) {
        /// Lets the next asker apply when this applier goes away mid-way.
        struct Abandon<'a>(&'a HaproxyProvider, bool);
        impl Drop for Abandon<'_> {
            fn drop(&mut self) {
                if !self.1 {
                    self.0.queue().abandon();
                }
            }
        }
        let mut applier = Abandon(self, false);
        loop {
            let mut loaded = self.loaded.lock().await;
            let Some(batch) = self.queue().take() else {
                applier.1 = true;
                return;
            };
            let started = std::time::Instant::now();
            let (entries, askers): (Vec<Entry>, Vec<_>) = batch.into_iter().unzip();
            let outcomes = self.apply_runtime(&mut loaded, &entries).await;
            drop(loaded);
            tracing::debug!(
                changes = entries.len(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "applied target changes through the runtime API"
            );
            if outcomes.iter().any(|o| matches!(o, Applied::Done)) {
                self.flush_soon();
            }
            self.queue().answer(
                entries
                    .into_iter()
                    .zip(askers)
                    .zip(outcomes)
                    .map(|((e, a), o)| (e, a, o)),
            );
            self.applied.send_modify(|_| {});
        }
    }

    pub(crate) fn queue(&self) -> std::sync::MutexGuard<'_, RuntimeQueue> {
        self.runtime_queue.lock().expect("runtime queue lock")
    }

    /// Turns what HAProxy runs into `news` (each differing from it in
    /// targets alone) through the runtime API, and records each that went
    /// through as running: the shared node checks first (servers track
    /// them), then every backend's servers, packed into few lines. A line
    /// HAProxy refuses is run again one Service at a time, so a refusal
    /// costs only its own Service.
    pub(crate) async fn apply_runtime(&self, loaded: &mut Loaded, news: &[Entry]) -> Vec<Applied> {
        let RuntimeBatch {
            mut outcomes,
            planned,
            slots,
        } = plan_runtime(
            loaded.entries.as_ref(),
            &loaded.node_checks,
            self.settings.node_check_port,
            news,
        );
        let socket = &self.settings.admin_socket;
        let checks = runtime::pack(
            planned.iter().map(|(_, p)| p.checks.join("; ")),
            runtime::LINE_MAX,
        );
        for (line, _) in checks {
            if let Err(e) = runtime::run(socket, &line).await {
                loaded.forget_running();
                for (i, _) in &planned {
                    outcomes[*i] = Applied::Failed(e.clone());
                }
                return outcomes;
            }
        }
        if let Some(slots) = slots {
            loaded.node_checks = slots;
        }
        let mut failed: BTreeMap<usize, ProviderError> = BTreeMap::new();
        let lines = runtime::pack(
            planned.iter().map(|(_, p)| p.batches.join("; ")),
            runtime::LINE_MAX,
        );
        for (line, members) in lines {
            match runtime::ask(socket, &line).await {
                Ok(out) if runtime::all_succeeded(&out) => {}
                // Refused (a server still draining, say), or not answered:
                // each of its Services alone.
                _ => {
                    for m in members {
                        if let Err(e) = run_batches(socket, &planned[m].1.batches).await {
                            failed.insert(m, e);
                        }
                    }
                }
            }
        }
        for (m, (i, plan)) in planned.into_iter().enumerate() {
            if let Some(e) = failed.remove(&m) {
                outcomes[i] = Applied::Failed(e);
                continue;
            }
            let new = &news[i];
            self.record_drains(loaded, new, plan.drains);
            if let Some(running) = loaded.entries.as_mut() {
                running.insert(new.spec.lb.clone(), new.clone());
            }
            loaded.unchecked.insert(new.spec.lb.clone());
            outcomes[i] = Applied::Done;
        }
        if outcomes.iter().any(|o| matches!(o, Applied::Failed(_))) {
            loaded.forget_running();
        } else {
            loaded.file_stale = true;
            loaded.version += 1;
            // HAProxy runs what no file says yet; the flush names it again.
            loaded.served_sha = None;
        }
        outcomes
    }

    /// How many Services the runtime API changed since a configuration
    /// holding them was checked: the next load checks those too.
    pub async fn unchecked_services(&self) -> usize {
        self.loaded.lock().await.unchecked.len()
    }

    /// Has the file written once runtime API changes pause.
    pub(crate) fn flush_soon(&self) {
        self.flusher.get_or_init(|| {
            tokio::spawn(flush_loop(
                self.loaded.clone(),
                self.flush.clone(),
                self.global(),
                self.settings.process.clone(),
            ))
        });
        self.flush.notify_one();
    }
}

/// What a batch of target-only changes takes (see [`plan_runtime`]).
#[derive(Debug)]
pub(crate) struct RuntimeBatch {
    /// By change: `Done` when HAProxy runs it already, `Reload` when it
    /// needs one; the planned ones are `Reload` until they went through.
    pub outcomes: Vec<Applied>,
    /// The changes that can go through the runtime API, by index, with
    /// their commands.
    pub planned: Vec<(usize, runtime::RuntimePlan)>,
    /// The shared node checks once every planned change ran, when they
    /// took or readdressed any.
    pub slots: Option<runtime::CheckSlots>,
}

/// Decides, for each of `news` against what HAProxy runs (`running`,
/// `None` when unknown) and its shared node checks (`slots`, checked on
/// `node_check_port`), whether it goes through the runtime API, and with
/// which commands; a change that is more than a target change away from
/// what runs, or that finds no spare node check, needs a reload. Changes
/// are planned in order, each on top of the ones before it. Pure.
pub(crate) fn plan_runtime(
    running: Option<&BTreeMap<LoadBalancerRef, Entry>>,
    slots: &runtime::CheckSlots,
    node_check_port: Option<u16>,
    news: &[Entry],
) -> RuntimeBatch {
    let mut outcomes = vec![Applied::Reload; news.len()];
    let mut slots = slots.clone();
    let mut slots_taken = false;
    let mut view: BTreeMap<&LoadBalancerRef, &Entry> = BTreeMap::new();
    let mut planned = Vec::new();
    for (i, new) in news.iter().enumerate() {
        let lb = &new.spec.lb;
        let old = view
            .get(lb)
            .copied()
            .or_else(|| running.and_then(|r| r.get(lb)));
        let Some(old) = old.filter(|old| *old == new || runtime_only(old, new)) else {
            continue;
        };
        if old == new {
            outcomes[i] = Applied::Done;
            continue;
        }
        let checks = node_check_port.map(|port| runtime::NodeChecks {
            port,
            slots: &slots,
        });
        // `None`: no spare node check left, a reload.
        if let Some(plan) = runtime::commands(old, new, checks) {
            if let Some(s) = &plan.slots {
                slots = s.clone();
                slots_taken = true;
            }
            view.insert(lb, new);
            planned.push((i, plan));
        }
    }
    RuntimeBatch {
        outcomes,
        planned,
        slots: slots_taken.then_some(slots),
    }
}

/// Checks, with `haproxy -c`, the sections of the Services the runtime
/// API changed since a configuration was checked, and marks those still
/// unchanged as checked: a node change touches every Service's backend,
/// and the next burst would otherwise check them all before its reload
/// (0.4–0.8 s at 1,000–2,000 Services) instead of its own. Runs outside
/// HAProxy's lock; what fails stays unchecked, for the next load to judge.
async fn check_runtime_changes(
    loaded: &tokio::sync::Mutex<Loaded>,
    process: &process::ProcessSettings,
    global: &GlobalSettings,
) {
    let unchecked: Vec<Entry> = {
        let l = loaded.lock().await;
        let Some(running) = l.entries.as_ref() else {
            return;
        };
        l.unchecked
            .iter()
            .filter_map(|k| running.get(k).cloned())
            .collect()
    };
    if unchecked.is_empty() {
        return;
    }
    let text = render::render(global, &unchecked);
    if let Err(e) = process::check_sections(process, &text).await {
        tracing::warn!(error = %e, services = unchecked.len(), "checking runtime API changes failed; the next load checks them");
        return;
    }
    let mut l = loaded.lock().await;
    let Loaded {
        entries,
        unchecked: marks,
        ..
    } = &mut *l;
    for e in &unchecked {
        if entries.as_ref().and_then(|r| r.get(&e.spec.lb)) == Some(e) {
            marks.remove(&e.spec.lb);
        }
    }
}

/// Runs one Service's runtime batches, one line each. A server whose
/// removal waited for its connections to drain is still there: readdressed
/// and made ready instead of added.
async fn run_batches(socket: &std::path::Path, batches: &[String]) -> Result<(), ProviderError> {
    for batch in batches {
        let mut result = runtime::run(socket, batch).await;
        if let Err(e) = &result
            && e.message.contains(runtime::ALREADY_EXISTS)
        {
            result = runtime::run(socket, &runtime::readding(batch)).await;
        }
        result?;
    }
    Ok(())
}

/// Whether `new` differs from `old` in what the runtime API can change
/// alone: the targets.
pub(crate) fn runtime_only(old: &Entry, new: &Entry) -> bool {
    old.vips == new.vips
        && old.options == new.options
        && old.spec.differs_only_in_targets(&new.spec)
}

/// How long runtime API changes must pause before the file is written.
const FLUSH_QUIET: Duration = Duration::from_millis(200);
/// The longest the file lags behind a steady stream of runtime changes.
const FLUSH_MAX_WAIT: Duration = Duration::from_secs(2);

/// Writes what HAProxy runs to the file once a burst of runtime API changes
/// settles: one write per burst instead of one per Service. The rendering
/// happens outside the lock, so runtime updates are not held up by it; the
/// file is written only if nothing changed meanwhile (else the next round
/// writes it).
///
/// Then the Services the runtime API changed are checked with `haproxy -c`
/// (see [`check_runtime_changes`]), off every reconcile's path.
pub(crate) async fn flush_loop(
    loaded: Arc<tokio::sync::Mutex<Loaded>>,
    notify: Arc<tokio::sync::Notify>,
    global: GlobalSettings,
    process: process::ProcessSettings,
) {
    loop {
        notify.notified().await;
        let started = tokio::time::Instant::now();
        loop {
            let seen = loaded.lock().await.version;
            tokio::time::sleep(FLUSH_QUIET).await;
            if loaded.lock().await.version == seen || started.elapsed() >= FLUSH_MAX_WAIT {
                break;
            }
        }
        let (entries, version) = {
            let l = loaded.lock().await;
            if !l.file_stale {
                continue;
            }
            let entries: Vec<Entry> = l.entries.iter().flat_map(|e| e.values().cloned()).collect();
            (entries, l.version)
        };
        let text = render::render(&global, &entries);
        drop(entries);
        let mut l = loaded.lock().await;
        if l.version != version {
            // Changed while rendering: written on the next round.
            notify.notify_one();
            continue;
        }
        match process::write_atomically(&process.config_path, &text).await {
            Ok(()) => {
                l.file_stale = false;
                l.served_sha = Some(apply::sha256_hex(&text));
                drop(l);
                check_runtime_changes(&loaded, &process, &global).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "writing runtime API changes to the configuration file failed")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{CheckSlots, test_entry as entry};

    fn running(entries: &[&Entry]) -> BTreeMap<LoadBalancerRef, Entry> {
        entries
            .iter()
            .map(|e| (e.spec.lb.clone(), (*e).clone()))
            .collect()
    }

    /// Each change's outcome before anything ran: `planned`, `done` or
    /// `reload`.
    fn verdicts(b: &RuntimeBatch) -> Vec<&'static str> {
        b.outcomes
            .iter()
            .enumerate()
            .map(|(i, o)| match o {
                _ if b.planned.iter().any(|(p, _)| *p == i) => "planned",
                Applied::Done => "done",
                Applied::Reload => "reload",
                Applied::Failed(_) => "failed",
                Applied::Queued => "queued",
            })
            .collect()
    }

    /// A change queued while a batch goes through hears Queued at once;
    /// the batch's end tells the controller, and asked again it hears
    /// what the batch did to it. (What HAProxy runs is unknown here, so
    /// the batch finds both need a reload, without a runtime API call.)
    #[tokio::test]
    async fn a_change_queued_behind_a_batch_hears_its_outcome_when_asked_again() {
        let dir = std::env::temp_dir().join(format!("ferrylb-queue-{}", std::process::id()));
        let p = std::sync::Arc::new(HaproxyProvider::new(crate::HaproxySettings::in_dir(
            "127.0.0.100/30".parse().unwrap(),
            &dir,
        )));
        let mut told = p.applied.subscribe();
        let (a, b) = (entry("a", N12), entry("b", N12));
        let haproxy = p.loaded.lock().await;
        let first = tokio::spawn({
            let (p, a) = (p.clone(), a.clone());
            async move { p.apply_targets(a).await }
        });
        while p.queue().ask(&a).is_none() {
            tokio::task::yield_now().await;
        }
        // a's asker applies, and waits for HAProxy's state: b is queued.
        assert!(matches!(p.apply_targets(b.clone()).await, Applied::Queued));
        drop(haproxy);
        assert!(matches!(first.await.unwrap(), Applied::Reload));
        told.changed().await.expect("the batch's end is told");
        assert!(matches!(p.apply_targets(b.clone()).await, Applied::Reload));
        // Asked once more, b is new again: this time its asker applies.
        assert!(matches!(p.apply_targets(b).await, Applied::Reload));
    }

    const N12: &[(&str, &str)] = &[("n1", "10.0.0.1"), ("n2", "10.0.0.2")];
    const N123: &[(&str, &str)] = &[("n1", "10.0.0.1"), ("n2", "10.0.0.2"), ("n3", "10.0.0.3")];

    #[test]
    fn each_change_goes_through_the_runtime_api_or_needs_a_reload() {
        let (web, api) = (entry("web", N12), entry("api", N12));
        let now = running(&[&web, &api]);
        let slots = CheckSlots::loaded(&[&web, &api]);
        let mut moved = entry("web", N123);
        moved.vips = vec!["127.0.0.101".parse().unwrap()];
        let mut other_port = entry("api", N123);
        other_port.spec.listeners[0].node_port = 30099;
        type Case<'a> = (
            &'a str,
            Option<&'a BTreeMap<LoadBalancerRef, Entry>>,
            Vec<Entry>,
            Vec<&'a str>,
        );
        let table: Vec<Case> = vec![
            (
                "what HAProxy runs is unknown",
                None,
                vec![entry("web", N123)],
                vec!["reload"],
            ),
            (
                "a Service HAProxy does not run",
                Some(&now),
                vec![entry("new", N123)],
                vec!["reload"],
            ),
            (
                "nothing changed",
                Some(&now),
                vec![web.clone()],
                vec!["done"],
            ),
            (
                "a node added",
                Some(&now),
                vec![entry("web", N123)],
                vec!["planned"],
            ),
            (
                "a node removed",
                Some(&now),
                vec![entry("web", &N12[..1])],
                vec!["planned"],
            ),
            ("its VIP moved too", Some(&now), vec![moved], vec!["reload"]),
            (
                "its nodePort changed too",
                Some(&now),
                vec![other_port],
                vec!["reload"],
            ),
            (
                "several Services in one batch",
                Some(&now),
                vec![entry("web", N123), entry("api", N123), entry("gone", N12)],
                vec!["planned", "planned", "reload"],
            ),
        ];
        for (what, run, news, want) in table {
            let b = plan_runtime(run, &slots, Some(10256), &news);
            assert_eq!(verdicts(&b), want, "{what}");
        }
    }

    #[test]
    fn a_node_new_to_haproxy_takes_one_spare_check_for_every_service() {
        let (web, api) = (entry("web", N12), entry("api", N12));
        let now = running(&[&web, &api]);
        let slots = CheckSlots::loaded(&[&web, &api]);
        let b = plan_runtime(
            Some(&now),
            &slots,
            Some(10256),
            &[entry("web", N123), entry("api", N123)],
        );
        // The first change takes the spare; the second tracks it.
        assert_eq!(b.planned[0].1.checks.len(), 3, "{:?}", b.planned[0].1);
        assert!(b.planned[1].1.checks.is_empty());
        let taken = b.slots.expect("a spare taken");
        assert_eq!(taken.free.len(), slots.free.len() - 1);
        assert!(taken.by_node.contains_key("n3"));
        // Without shared checks, nothing is taken.
        let b = plan_runtime(Some(&now), &slots, None, &[entry("web", N123)]);
        assert!(b.slots.is_none() && b.planned[0].1.checks.is_empty());
        // No spare left: that change needs a reload (fresh spares).
        let none_left = CheckSlots {
            free: Vec::new(),
            ..slots
        };
        let b = plan_runtime(Some(&now), &none_left, Some(10256), &[entry("web", N123)]);
        assert_eq!(verdicts(&b), ["reload"]);
    }

    #[test]
    fn a_removed_node_is_drained_and_two_changes_of_one_service_build_on_each_other() {
        let web = entry("web", N123);
        let now = running(&[&web]);
        let slots = CheckSlots::loaded(&[&web]);
        let fewer = entry("web", N12);
        let b = plan_runtime(Some(&now), &slots, None, std::slice::from_ref(&fewer));
        let drains: Vec<&str> = b.planned[0]
            .1
            .drains
            .iter()
            .map(|(_, n)| n.as_str())
            .collect();
        assert_eq!(drains, ["n3"]);
        assert!(b.planned[0].1.batches[0].contains("/n3 state drain"));
        // n3 leaves, then comes back: the second is planned against the
        // first, so n3 is added again (not found unchanged).
        let b = plan_runtime(Some(&now), &slots, None, &[fewer, web.clone()]);
        assert_eq!(verdicts(&b), ["planned", "planned"]);
        assert!(
            b.planned[1].1.batches[0].contains("add server"),
            "{:?}",
            b.planned[1].1
        );
    }
}
