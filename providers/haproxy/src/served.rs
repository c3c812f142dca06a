//! What HAProxy really serves, asked of HAProxy itself: the frontends its
//! current worker runs and whether each accepts connections. A Service's
//! address is Ready only when every TCP port of it has an open frontend
//! here, never because a configuration holding it was planned or written.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrylb_model::{Protocol, ProviderError, reason};

use crate::render::{self, Entry};

/// Frontend name to its status (`OPEN`, `FULL`, `PAUSED`, `STOP`).
pub type Frontends = BTreeMap<String, String>;

/// How long an answer of HAProxy's stands for the next questions: within a
/// burst, a hundred Services asking share one `show stat`.
const FRESH: Duration = Duration::from_millis(500);

/// The frontends in `show stat -1 1 -1` CSV output (frontend rows only).
pub fn parse_frontends(csv: &str) -> Frontends {
    let mut lines = csv.lines();
    let Some(header) = lines.next().and_then(|h| h.strip_prefix("# ")) else {
        return Frontends::new();
    };
    let status_at = header.split(',').position(|c| c == "status");
    lines
        .filter_map(|l| {
            let cols: Vec<&str> = l.split(',').collect();
            (cols.get(1) == Some(&"FRONTEND")).then(|| {
                let status = status_at.and_then(|i| cols.get(i)).unwrap_or(&"");
                (cols[0].to_owned(), (*status).to_owned())
            })
        })
        .collect()
}

/// Whether HAProxy serves every TCP port of `entry`: `Ok` when each has a
/// frontend that accepts connections, otherwise an error naming the
/// address and what HAProxy runs for it.
pub fn check(entry: &Entry, frontends: &Frontends) -> Result<(), ProviderError> {
    let missing: Vec<String> = entry
        .spec
        .listeners
        .iter()
        .filter(|l| l.protocol == Protocol::Tcp)
        .filter_map(|l| {
            let name = render::frontend_name(entry, l.port);
            let addr = entry
                .vips
                .iter()
                .map(|&vip| render::addr(vip, l.port))
                .collect::<Vec<_>>()
                .join(" and ");
            match frontends.get(&name).map(String::as_str) {
                Some("OPEN" | "FULL") => None,
                Some(status) => Some(format!("{addr} (its frontend is {status})")),
                None => Some(format!("{addr} (no frontend for it is loaded)")),
            }
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(ProviderError::transient(
        reason::NOT_SERVED,
        format!(
            "HAProxy does not serve {}; FerryLB reloads it with the configuration it should run",
            missing.join(", ")
        ),
    ))
}

/// The last answer of HAProxy's, shared by the questions that follow it.
#[derive(Default)]
pub struct ServedView {
    last: tokio::sync::Mutex<Option<(Instant, u64, Arc<Frontends>)>>,
}

impl ServedView {
    /// The frontends HAProxy serves, asked at most every [`FRESH`] and
    /// again whenever `generation` (the configurations loaded) moved.
    ///
    /// # Errors
    /// When HAProxy's admin socket does not answer.
    pub async fn frontends(
        &self,
        socket: &Path,
        generation: u64,
    ) -> Result<Arc<Frontends>, ProviderError> {
        let mut last = self.last.lock().await;
        if let Some((at, g, f)) = last.as_ref()
            && *g == generation
            && at.elapsed() < FRESH
        {
            return Ok(f.clone());
        }
        let f = Arc::new(parse_frontends(&show_frontends(socket).await?));
        *last = Some((Instant::now(), generation, f.clone()));
        Ok(f)
    }

    /// Forgets the last answer: the next question asks HAProxy.
    pub async fn forget(&self) {
        *self.last.lock().await = None;
    }
}

/// `show stat` for frontends only, on the admin socket.
async fn show_frontends(socket: &Path) -> Result<String, ProviderError> {
    crate::runtime::ask(socket, "show stat -1 1 -1")
        .await
        .map_err(|e| {
            ProviderError::transient(
                reason::HAPROXY_UNAVAILABLE,
                format!("HAProxy is not serving ({e})"),
            )
        })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use ferrylb_model::conformance::sample_spec;

    use super::*;
    use crate::options::Options;

    /// As HAProxy 2.6 prints it (columns after `status` cut short).
    const CSV: &str = "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight\n\
        fe_a_80,FRONTEND,,,0,0,9979,0,0,0,0,0,0,,,,,OPEN,\n\
        fe_a_443,FRONTEND,,,0,0,9979,0,0,0,0,0,0,,,,,PAUSED,\n\n";

    fn entry(ports: &[u16]) -> Entry {
        let mut spec = sample_spec("shop", "web", 30080, Vec::new());
        let l = spec.listeners[0].clone();
        spec.listeners = ports
            .iter()
            .map(|p| ferrylb_model::Listener {
                port: *p,
                ..l.clone()
            })
            .collect();
        spec.lb.name = "a".into();
        spec.annotations = BTreeMap::new();
        Entry {
            spec,
            vips: vec!["127.0.0.100".parse().unwrap()],
            options: Options::default(),
        }
    }

    #[test]
    fn reads_frontends_and_their_status() {
        let f = parse_frontends(CSV);
        assert_eq!(f.len(), 2);
        assert_eq!(f["fe_a_80"], "OPEN");
        assert_eq!(f["fe_a_443"], "PAUSED");
        assert!(parse_frontends("").is_empty());
    }

    #[test]
    fn served_only_when_every_tcp_port_has_an_open_frontend() {
        let f = parse_frontends(CSV);
        assert!(check(&entry(&[80]), &f).is_ok());
        let err = check(&entry(&[80, 443]), &f).unwrap_err();
        assert_eq!(err.reason, reason::NOT_SERVED);
        assert!(
            err.message
                .contains("127.0.0.100:443 (its frontend is PAUSED)"),
            "{}",
            err.message
        );
        let err = check(&entry(&[8080]), &f).unwrap_err();
        assert!(
            err.message
                .contains("127.0.0.100:8080 (no frontend for it is loaded)"),
            "{}",
            err.message
        );
    }
}
