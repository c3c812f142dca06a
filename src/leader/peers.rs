//! Telling an API-server outage from being cut off alone, by asking the
//! other replicas over the network the data path uses.
//!
//! A leader that cannot renew its Lease within the renew deadline must stop
//! holding the VIPs before a follower may take them. But when the API
//! server is down for everyone, no follower can take them either, and
//! dropping them would darken every Service for the length of the outage.
//! So, past its deadline, the leader asks each other replica (`GET
//! /lease` on its metrics port) how long it has reached the API server:
//! - every replica answers, and none reaches it, or none for long enough
//!   to take over ([`keep_through_outage`]): the outage is everyone's; the
//!   leader keeps the VIPs and keeps trying to renew, asking again every
//!   retry period;
//! - a replica does not answer (it may be cut off from this one and not
//!   from the API server), or reaches the API server: the leader steps
//!   down as client-go's semantics require.
//!
//! A follower that lost the API server and reaches it again counts the
//! Lease's expiry from then (see [`super::ApiContact`]), so it waits a
//! whole lease duration after coming back: the leader, asking every retry
//! period, steps down long before.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{WatchStreamExt as _, reflector, watcher};
use kube::{Api, Client};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// What a replica said when asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerAnswer {
    /// No answer in time: it may be cut off from this replica only.
    NoAnswer,
    /// It does not reach the API server either.
    ApiDown,
    /// It has reached the API server for this long without a failure.
    ApiUpFor(Duration),
}

/// Whether a leader past its renew deadline keeps its VIPs, given what the
/// other replicas answered: only when every one answered and none has
/// reached the API server for a third of the lease (it could take over a
/// whole lease after it came back; the leader, asking every retry period,
/// steps down well before). With no other replica, nobody can take over.
#[must_use]
pub fn keep_through_outage(answers: &[PeerAnswer], lease: Duration) -> bool {
    answers.iter().all(|a| match a {
        PeerAnswer::NoAnswer => false,
        PeerAnswer::ApiDown => true,
        PeerAnswer::ApiUpFor(d) => *d < lease / 3,
    })
}

/// The other replicas, watched while the API server answers.
pub struct Peers {
    store: reflector::Store<Pod>,
    synced: std::sync::Arc<std::sync::atomic::AtomicBool>,
    me: String,
    port: u16,
    _watch: super::AbortOnDrop,
}

impl Peers {
    /// Watches the pods matching `selector` in `namespace`; `me` is this
    /// replica's pod name, `port` the one every replica serves `/lease` on.
    #[must_use]
    pub fn watch(client: Client, namespace: &str, selector: &str, me: &str, port: u16) -> Self {
        let (store, writer) = reflector::store::<Pod>();
        let synced = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let events = watcher(
            Api::<Pod>::namespaced(client, namespace),
            watcher::Config::default().labels(selector),
        )
        .default_backoff()
        .reflect(writer);
        let flag = synced.clone();
        let watch = tokio::spawn(async move {
            futures::pin_mut!(events);
            while let Some(ev) = events.next().await {
                if matches!(ev, Ok(watcher::Event::InitDone)) {
                    flag.store(true, std::sync::atomic::Ordering::SeqCst);
                }
            }
        });
        Self {
            store,
            synced,
            me: me.to_owned(),
            port,
            _watch: super::AbortOnDrop(watch),
        }
    }

    /// The other replicas' addresses; `None` until the pods were listed
    /// once (who they are is not known yet).
    fn others(&self) -> Option<Vec<IpAddr>> {
        if !self.synced.load(std::sync::atomic::Ordering::SeqCst) {
            return None;
        }
        Some(
            self.store
                .state()
                .iter()
                .filter(|p| p.metadata.name.as_deref() != Some(self.me.as_str()))
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter_map(|p| p.status.as_ref()?.pod_ip.as_deref()?.parse().ok())
                .collect(),
        )
    }

    /// Whether the outage is everyone's (see [`keep_through_outage`]).
    pub async fn outage_for_all(&self, lease: Duration) -> bool {
        let Some(others) = self.others() else {
            return false;
        };
        let answers =
            futures::future::join_all(others.iter().map(|ip| ask(SocketAddr::new(*ip, self.port))))
                .await;
        let keep = keep_through_outage(&answers, lease);
        tracing::debug!(
            ?others,
            ?answers,
            keep,
            "asked the other replicas about the API server"
        );
        keep
    }
}

/// `GET /lease` of the replica at `addr`, within a second.
async fn ask(addr: SocketAddr) -> PeerAnswer {
    let io = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET /lease HTTP/1.0\r\nHost: ferrylb\r\n\r\n")
            .await
            .ok()?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.ok()?;
        parse(&String::from_utf8_lossy(&out))
    };
    tokio::time::timeout(Duration::from_secs(1), io)
        .await
        .ok()
        .flatten()
        .unwrap_or(PeerAnswer::NoAnswer)
}

/// The answer in an HTTP response from [`super::ApiContact::answer`].
fn parse(response: &str) -> Option<PeerAnswer> {
    let (head, body) = response.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.") || !head.lines().next()?.contains(" 200 ") {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(body.trim()).ok()?;
    match v.get("api_ok_for_ms")? {
        serde_json::Value::Null => Some(PeerAnswer::ApiDown),
        n => Some(PeerAnswer::ApiUpFor(Duration::from_millis(n.as_u64()?))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(15);

    #[test]
    fn the_vips_stay_only_when_every_other_replica_answers_and_none_could_take_over() {
        use PeerAnswer::*;
        let up = |s| ApiUpFor(Duration::from_secs(s));
        assert!(keep_through_outage(&[], LEASE), "alone: nobody takes over");
        assert!(keep_through_outage(&[ApiDown], LEASE));
        assert!(
            keep_through_outage(&[ApiDown, up(4)], LEASE),
            "back 4 s ago"
        );
        assert!(
            !keep_through_outage(&[up(5)], LEASE),
            "back a third of the lease"
        );
        assert!(
            !keep_through_outage(&[up(3600)], LEASE),
            "only this one is cut off"
        );
        assert!(!keep_through_outage(&[NoAnswer], LEASE));
        assert!(!keep_through_outage(&[ApiDown, NoAnswer], LEASE));
    }

    #[test]
    fn answers_are_read_from_the_response() {
        let ok =
            |body: &str| format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{body}");
        assert_eq!(
            parse(&ok(r#"{"api_ok_for_ms":null}"#)),
            Some(PeerAnswer::ApiDown)
        );
        assert_eq!(
            parse(&ok(r#"{"api_ok_for_ms":2500}"#)),
            Some(PeerAnswer::ApiUpFor(Duration::from_millis(2500)))
        );
        assert_eq!(parse("HTTP/1.1 404 Not Found\r\n\r\n"), None);
        assert_eq!(parse(&ok("not json")), None);
        assert_eq!(parse(&ok(r#"{"api_ok_for_ms":-1}"#)), None);
    }
}
