//! Draining the servers of nodes that leave a load balancer: no new
//! connection goes to them, the ones they carry finish, and each is removed
//! once its last session ended or its drain timeout passed.
//!
//! Expected flow:
//! 1. A node leaves a Service's targets (tainted for removal, excluded,
//!    being deleted, gone). The runtime API puts its server in each of the
//!    Service's backends in `drain` (see `runtime::commands`), and a
//!    [`Drain`] is recorded for each. No reload.
//! 2. Every tick, HAProxy's current worker is asked how many sessions each
//!    draining server holds (`show stat <backend> 6 -1`), and [`step`]
//!    decides: wait, or remove it (cutting what is left once the timeout
//!    passed).
//! 3. A reload while a server drains takes it out of the new worker; the
//!    old workers carry its sessions until they end or `hard-stop-after`,
//!    and take no new ones. Such a drain is followed there (the master
//!    CLI's `@!<pid>` prefix) and ends once no session through the server
//!    is left in any old worker.
//! 4. Each finished drain is reported once ([`Finished`]), for an Event and
//!    a metric, so drain tooling can wait for it.
//!
//! Guarantees: a drain never removes a server the node came back to (the
//! re-adding cancels it, under the same lock as the removal), and never
//! reports finished while a session through that server may remain in
//! HAProxy, except the ones its timeout cut, which it counts.

mod provider;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use ferrylb_model::{LoadBalancerRef, Protocol};

use crate::render::{Entry, backend_name, server_name};

/// One server draining: `backend/server`, for `node`, in `lb`'s backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drain {
    pub lb: LoadBalancerRef,
    pub node: String,
    pub started: Instant,
    /// Sessions still open then are cut.
    pub deadline: Instant,
    /// A reload took the server out of the current worker: its sessions
    /// are in old workers.
    pub reloaded: bool,
    /// Sessions closed when the deadline passed.
    pub cut: u64,
}

impl Drain {
    /// A drain of `node`'s server in `lb`'s backend, starting `now`.
    #[must_use]
    pub fn new(lb: LoadBalancerRef, node: String, now: Instant, timeout: Duration) -> Self {
        Drain {
            lb,
            node,
            started: now,
            deadline: now + timeout,
            reloaded: false,
            cut: 0,
        }
    }

    /// How it ended, once its server is gone.
    #[must_use]
    pub fn outcome(&self) -> Outcome {
        if self.reloaded {
            Outcome::Reloaded
        } else if self.cut > 0 {
            Outcome::TimedOut { cut: self.cut }
        } else {
            Outcome::Empty
        }
    }
}

/// `(backend, server)`.
pub type ServerKey = (String, String);

/// What to do with a drain now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Wait,
    /// Remove the server; `cut` sessions are still open and get closed.
    Remove {
        cut: u64,
    },
    /// Nothing left to remove (a reload took the server away, and no old
    /// worker carries its sessions any more): report it finished.
    Forget,
}

/// Decides the next step of `d`, given the sessions its server holds in the
/// current worker (`None`: the worker has no such server), the sessions
/// through it in old workers (`Some(0)` when none runs; `None`: unknown),
/// and the time.
#[must_use]
pub fn step(d: &Drain, current: Option<u64>, old: Option<u64>, now: Instant) -> Step {
    match current {
        Some(n) if !d.reloaded => {
            if n == 0 {
                Step::Remove { cut: 0 }
            } else if now >= d.deadline {
                Step::Remove { cut: n }
            } else {
                Step::Wait
            }
        }
        // Taken out by a reload (or never there): old workers carry its
        // sessions until they end or hard-stop-after stops them, and take no
        // new ones.
        _ if old == Some(0) => Step::Forget,
        _ => Step::Wait,
    }
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Its last session ended.
    Empty,
    /// Its timeout passed with sessions open: they were closed.
    TimedOut { cut: u64 },
    /// A reload took it out, and no session through it is left in the old
    /// workers that carried them.
    Reloaded,
}

impl Outcome {
    /// Its name in metrics.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Empty => "empty",
            Outcome::TimedOut { .. } => "timed_out",
            Outcome::Reloaded => "reloaded",
        }
    }
}

/// A drain that ended: reported once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    pub lb: LoadBalancerRef,
    pub node: String,
    pub backend: String,
    pub took: Duration,
    pub outcome: Outcome,
}

/// The servers of `entry`'s backends, one per TCP port and node.
fn servers(entry: &Entry) -> BTreeMap<ServerKey, &str> {
    let backends: Vec<String> = entry
        .spec
        .listeners
        .iter()
        .filter(|l| l.protocol == Protocol::Tcp)
        .map(|l| backend_name(entry, l.port))
        .collect();
    backends
        .iter()
        .flat_map(|b| {
            entry
                .spec
                .targets
                .iter()
                .map(|t| ((b.clone(), server_name(&t.node)), t.node.as_str()))
        })
        .collect()
}

/// The drains once a reload replaced what HAProxy ran (`running`, when
/// known) by `desired`: a drain whose Service is gone ends with its
/// backend, and one whose node came back to the Service ends too; the
/// others, and every server the reload itself took out of a Service that
/// stays, drain on in the old worker. `timeout(entry)` is a drain's.
pub fn after_reload(
    drains: &mut BTreeMap<ServerKey, Drain>,
    running: Option<&BTreeMap<LoadBalancerRef, Entry>>,
    desired: &BTreeMap<LoadBalancerRef, Entry>,
    now: Instant,
    timeout: impl Fn(&Entry) -> Duration,
) {
    let nodes: BTreeMap<&LoadBalancerRef, BTreeSet<&str>> = desired
        .iter()
        .map(|(lb, e)| (lb, e.spec.targets.iter().map(|t| t.node.as_str()).collect()))
        .collect();
    drains.retain(|_, d| {
        d.reloaded = true;
        nodes
            .get(&d.lb)
            .is_some_and(|n| !n.contains(d.node.as_str()))
    });
    for (lb, old) in running.into_iter().flatten() {
        let (Some(new), Some(now_there)) = (desired.get(lb), nodes.get(lb)) else {
            continue;
        };
        for (key, node) in servers(old) {
            if !now_there.contains(node) {
                drains.entry(key).or_insert_with(|| Drain {
                    reloaded: true,
                    ..Drain::new(lb.clone(), node.to_owned(), now, timeout(new))
                });
            }
        }
    }
}

/// The sessions of each server in `show stat <backend> 6 -1` CSV output
/// (several backends' answers may follow each other), by (backend,
/// server), and the backends that answered (each has its `BACKEND` row).
#[must_use]
pub fn parse_sessions(csv: &str) -> (BTreeMap<ServerKey, u64>, BTreeSet<String>) {
    let mut scur_at = None;
    let mut out = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for line in csv.lines() {
        if let Some(header) = line.strip_prefix("# ") {
            scur_at = header.split(',').position(|c| c == "scur");
            continue;
        }
        let cols: Vec<&str> = line.split(',').collect();
        let (Some(px), Some(sv), Some(at)) = (cols.first(), cols.get(1), scur_at) else {
            continue;
        };
        match *sv {
            "BACKEND" => {
                seen.insert((*px).to_owned());
            }
            "FRONTEND" => {}
            _ => {
                if let Some(n) = cols.get(at).and_then(|v| v.parse().ok()) {
                    out.insert(((*px).to_owned(), (*sv).to_owned()), n);
                }
            }
        }
    }
    (out, seen)
}

/// The runtime API lines asking for `backends`' servers and totals, each
/// at most about `max` bytes (see [`crate::runtime::pack`]): thousands of
/// backends take several lines. Each command starts with `prefix` (the
/// master CLI's `@!<pid> ` reaches an old worker).
#[must_use]
pub fn stat_commands<'a>(
    backends: impl IntoIterator<Item = &'a str>,
    prefix: &str,
    max: usize,
) -> Vec<String> {
    crate::runtime::pack(
        backends
            .into_iter()
            .map(|b| format!("{prefix}show stat {b} 6 -1")),
        max,
    )
    .into_iter()
    .map(|(line, _)| line)
    .collect()
}

/// The drains' state for metrics: by node, the servers draining and the
/// sessions they hold (known for those in the current worker).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Draining {
    pub servers: u64,
    pub sessions: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lb(name: &str) -> LoadBalancerRef {
        LoadBalancerRef::for_service(ferrylb_model::ServiceKey {
            namespace: "ns".into(),
            name: name.into(),
            uid: format!("uid-{name}"),
        })
    }

    fn drain(timeout: Duration, reloaded: bool) -> (Drain, Instant) {
        let now = Instant::now();
        let d = Drain {
            reloaded,
            ..Drain::new(lb("web"), "n1".into(), now, timeout)
        };
        (d, now)
    }

    #[test]
    fn a_server_is_removed_once_empty_or_at_its_deadline_cutting_what_is_left() {
        let (d, now) = drain(Duration::from_secs(30), false);
        let none = Some(0);
        assert_eq!(step(&d, Some(0), none, now), Step::Remove { cut: 0 });
        assert_eq!(step(&d, Some(3), none, now), Step::Wait);
        assert_eq!(
            step(&d, Some(3), none, now + Duration::from_secs(29)),
            Step::Wait
        );
        assert_eq!(
            step(&d, Some(3), none, now + Duration::from_secs(30)),
            Step::Remove { cut: 3 }
        );
        // Old workers do not matter while the current worker has it.
        assert_eq!(step(&d, Some(0), Some(2), now), Step::Remove { cut: 0 });
        assert_eq!(step(&d, Some(0), None, now), Step::Remove { cut: 0 });
    }

    #[test]
    fn a_drain_a_reload_took_away_ends_with_the_old_workers() {
        for reloaded in [true, false] {
            let (d, now) = drain(Duration::from_secs(30), reloaded);
            // Gone from the current worker: its sessions are in old ones.
            assert_eq!(step(&d, None, Some(2), now), Step::Wait);
            assert_eq!(
                step(&d, None, Some(2), now + Duration::from_secs(60)),
                Step::Wait,
                "hard-stop-after bounds old workers, not the drain timeout"
            );
            // Unknown (the master CLI did not answer): nothing ends.
            assert_eq!(step(&d, None, None, now), Step::Wait);
            // No session through it left in any old worker (they take no
            // new ones), whether or not old workers still run.
            assert_eq!(step(&d, None, Some(0), now), Step::Forget);
        }
        // A server of the same name in the new worker is not this drain's.
        let (d, now) = drain(Duration::from_secs(30), true);
        assert_eq!(step(&d, Some(0), Some(1), now), Step::Wait);
        assert_eq!(step(&d, Some(5), Some(0), now), Step::Forget);
    }

    fn entry(name: &str, port: u16, nodes: &[&str]) -> Entry {
        let targets = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| ferrylb_model::Target {
                node: (*n).into(),
                addresses: vec![format!("10.0.0.{}", i + 1).parse().unwrap()],
                provider_id: None,
            })
            .collect();
        let mut spec = ferrylb_model::conformance::sample_spec("ns", name, 30080, targets);
        spec.listeners[0].port = port;
        Entry {
            spec,
            vips: vec!["127.0.0.100".parse().unwrap()],
            options: crate::options::Options::default(),
        }
    }

    fn state(entries: &[Entry]) -> BTreeMap<LoadBalancerRef, Entry> {
        entries
            .iter()
            .map(|e| (e.spec.lb.clone(), e.clone()))
            .collect()
    }

    #[test]
    fn a_reload_ends_drains_of_services_gone_and_nodes_back_and_moves_the_rest_to_old_workers() {
        let now = Instant::now();
        let t = Duration::from_secs(30);
        let (web, api, gone) = (
            entry("web", 80, &["n1", "n3"]),
            entry("api", 80, &["n1"]),
            entry("gone", 80, &["n1"]),
        );
        let key = |e: &Entry, node: &str| (backend_name(e, 80), node.to_owned());
        let mut drains = BTreeMap::from([
            // n2 left web, and stays away.
            (
                key(&web, "n2"),
                Drain::new(web.spec.lb.clone(), "n2".into(), now, t),
            ),
            // n3 left web and came back before the reload.
            (
                key(&web, "n3"),
                Drain::new(web.spec.lb.clone(), "n3".into(), now, t),
            ),
            // The Service went away.
            (
                key(&gone, "n2"),
                Drain::new(gone.spec.lb.clone(), "n2".into(), now, t),
            ),
        ]);
        // The reload also takes n2 out of api, and moves web's port (its
        // servers are renamed with the backend: no node left).
        let running = state(&[web.clone(), entry("api", 80, &["n1", "n2"]), gone]);
        let moved = entry("web", 8080, &["n1", "n3"]);
        let desired = state(&[moved, api.clone()]);
        after_reload(&mut drains, Some(&running), &desired, now, |_| t);
        let left: Vec<(&ServerKey, bool)> = drains.iter().map(|(k, d)| (k, d.reloaded)).collect();
        assert_eq!(
            left,
            vec![(&key(&api, "n2"), true), (&key(&web, "n2"), true)],
            "{drains:#?}"
        );
        assert_eq!(drains[&key(&api, "n2")].node, "n2");
        assert_eq!(drains[&key(&api, "n2")].outcome(), Outcome::Reloaded);
        // Unknown what ran before: only the known drains move.
        let mut none = BTreeMap::new();
        after_reload(&mut none, None, &desired, now, |_| t);
        assert!(none.is_empty());
    }

    #[test]
    fn an_outcome_says_whether_sessions_were_cut() {
        let (mut d, _) = drain(Duration::from_secs(1), false);
        assert_eq!(d.outcome(), Outcome::Empty);
        d.cut = 4;
        assert_eq!(d.outcome(), Outcome::TimedOut { cut: 4 });
    }

    #[test]
    fn sessions_are_read_per_backend_and_server() {
        let csv = "# pxname,svname,qcur,qmax,scur,smax,slim\n\
                   be_a_80,n1,0,0,3,5,\n\
                   be_a_80,n2,0,0,0,1,\n\
                   be_a_80,BACKEND,0,0,3,5,\n\
                   \n\
                   # pxname,svname,qcur,qmax,scur,smax,slim\n\
                   be_b_443,n1,0,0,7,9,\n\
                   be_b_443,BACKEND,0,0,7,9,\n\
                   be_c_80,BACKEND,0,0,0,0,\n";
        let (s, seen) = parse_sessions(csv);
        assert_eq!(s.len(), 3);
        assert_eq!(s[&("be_a_80".into(), "n1".into())], 3);
        assert_eq!(s[&("be_a_80".into(), "n2".into())], 0);
        assert_eq!(s[&("be_b_443".into(), "n1".into())], 7);
        // A backend that answered without the server: the server is gone.
        assert_eq!(seen.len(), 3);
        assert!(seen.contains("be_c_80"));
        let (s, seen) = parse_sessions("Can't find backend.\n");
        assert!(s.is_empty() && seen.is_empty());
    }

    #[test]
    fn thousands_of_backends_are_asked_in_lines_of_bounded_length() {
        let names: Vec<String> = (0..2000)
            .map(|i| format!("be_fl-ns-svc-{i:05}_80"))
            .collect();
        for prefix in ["", "@!4242 "] {
            let lines = stat_commands(names.iter().map(String::as_str), prefix, 8192);
            assert!(lines.len() > 1);
            assert!(lines.iter().all(|l| l.len() <= 8192));
            let asked: Vec<&str> = lines
                .iter()
                .flat_map(|l| l.split("; "))
                .map(|c| {
                    let c = c.strip_prefix(prefix).unwrap();
                    c.split_whitespace().nth(2).unwrap()
                })
                .collect();
            assert_eq!(asked, names.iter().map(String::as_str).collect::<Vec<_>>());
        }
        assert!(stat_commands([], "", 8192).is_empty());
    }
}
