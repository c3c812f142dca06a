//! Per-Service options from `ferrylb.io/haproxy-*` annotations, parsed into
//! typed values. Only these typed values are ever rendered, never the
//! annotation's text.

use std::collections::BTreeMap;
use std::time::Duration;

use ferrylb_model::ProviderError;

pub const BALANCE: &str = "ferrylb.io/haproxy-balance";
pub const TIMEOUT_CONNECT: &str = "ferrylb.io/haproxy-timeout-connect";
pub const TIMEOUT_CLIENT: &str = "ferrylb.io/haproxy-timeout-client";
pub const TIMEOUT_SERVER: &str = "ferrylb.io/haproxy-timeout-server";
pub const CHECK_INTERVAL: &str = "ferrylb.io/haproxy-check-interval";
pub const PROXY_PROTOCOL: &str = "ferrylb.io/haproxy-proxy-protocol";
pub const DRAIN_TIMEOUT: &str = "ferrylb.io/haproxy-drain-timeout";

const PREFIX: &str = "ferrylb.io/haproxy-";
const KNOWN: &[&str] = &[
    BALANCE,
    TIMEOUT_CONNECT,
    TIMEOUT_CLIENT,
    TIMEOUT_SERVER,
    CHECK_INTERVAL,
    PROXY_PROTOCOL,
    DRAIN_TIMEOUT,
];

/// Load-balancing algorithms: only HAProxy's dynamic ones, so servers can
/// change through the runtime API without a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    LeastConn,
    First,
    Random,
}

impl Balance {
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::RoundRobin => "roundrobin",
            Balance::LeastConn => "leastconn",
            Balance::First => "first",
            Balance::Random => "random",
        }
    }
}

/// Typed options for one Service, defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub balance: Balance,
    pub timeout_connect: Duration,
    pub timeout_client: Duration,
    pub timeout_server: Duration,
    pub check_interval: Duration,
    /// Send PROXY protocol v2 to the nodes.
    pub proxy_protocol_v2: bool,
    /// How long a leaving node's server drains before its open sessions
    /// are cut; `None`: the provider's default (`--haproxy-drain-timeout`).
    pub drain_timeout: Option<Duration>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            balance: Balance::RoundRobin,
            // Nodes are on the cluster's network, where a connection is
            // taken within a millisecond or two: one a node (or the pod
            // kube-proxy sent it to) has not taken within a quarter second
            // is retried on another node, up to 7 times (`render`'s
            // connect budget).
            timeout_connect: Duration::from_millis(250),
            timeout_client: Duration::from_secs(60),
            timeout_server: Duration::from_secs(60),
            check_interval: Duration::from_secs(2),
            proxy_protocol_v2: false,
            drain_timeout: None,
        }
    }
}

impl Options {
    /// Parses the `ferrylb.io/haproxy-*` annotations.
    ///
    /// # Errors
    /// [`ProviderError::invalid`] naming the annotation, the value and what is
    /// allowed; unknown `ferrylb.io/haproxy-*` names are errors too, so a typo
    /// is never silently ignored.
    pub fn parse(annotations: &BTreeMap<String, String>) -> Result<Options, ProviderError> {
        let mut o = Options::default();
        for (k, v) in annotations.iter().filter(|(k, _)| k.starts_with(PREFIX)) {
            match k.as_str() {
                BALANCE => {
                    o.balance = match v.as_str() {
                        "roundrobin" => Balance::RoundRobin,
                        "leastconn" => Balance::LeastConn,
                        "first" => Balance::First,
                        "random" => Balance::Random,
                        _ => {
                            return Err(ProviderError::invalid(
                                k,
                                v,
                                "one of roundrobin, leastconn, first, random",
                            ));
                        }
                    }
                }
                TIMEOUT_CONNECT => o.timeout_connect = duration(k, v)?,
                TIMEOUT_CLIENT => o.timeout_client = duration(k, v)?,
                TIMEOUT_SERVER => o.timeout_server = duration(k, v)?,
                CHECK_INTERVAL => o.check_interval = duration(k, v)?,
                DRAIN_TIMEOUT => o.drain_timeout = Some(duration(k, v)?),
                PROXY_PROTOCOL => {
                    o.proxy_protocol_v2 = match v.as_str() {
                        "v2" => true,
                        "none" => false,
                        _ => return Err(ProviderError::invalid(k, v, "v2 or none")),
                    }
                }
                _ => {
                    return Err(ProviderError::invalid(
                        k,
                        v,
                        &format!("unknown annotation; known ones are {}", KNOWN.join(", ")),
                    ));
                }
            }
        }
        Ok(o)
    }
}

/// `<number><unit>` with unit ms, s, m or h; 1 ms to 24 h.
fn duration(key: &str, v: &str) -> Result<Duration, ProviderError> {
    let bad = || {
        ProviderError::invalid(
            key,
            v,
            "a duration such as 500ms, 30s, 5m or 1h, between 1ms and 24h",
        )
    };
    let split = v.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (num, unit) = v.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(bad)?),
        "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(bad)?),
        _ => return Err(bad()),
    };
    if d < Duration::from_millis(1) || d > Duration::from_secs(86_400) {
        return Err(bad());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<Options, ProviderError> {
        Options::parse(
            &pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn defaults_and_every_option() {
        assert_eq!(parse(&[]).unwrap(), Options::default());
        let o = parse(&[
            (BALANCE, "leastconn"),
            (TIMEOUT_CONNECT, "500ms"),
            (TIMEOUT_CLIENT, "5m"),
            (TIMEOUT_SERVER, "1h"),
            (CHECK_INTERVAL, "10s"),
            (PROXY_PROTOCOL, "v2"),
            (DRAIN_TIMEOUT, "2m"),
            ("ferrylb.io/load-balancer-ips", "ignored here"),
        ])
        .unwrap();
        assert_eq!(o.balance, Balance::LeastConn);
        assert_eq!(o.timeout_connect, Duration::from_millis(500));
        assert_eq!(o.timeout_client, Duration::from_secs(300));
        assert_eq!(o.timeout_server, Duration::from_secs(3600));
        assert_eq!(o.check_interval, Duration::from_secs(10));
        assert!(o.proxy_protocol_v2);
        assert_eq!(o.drain_timeout, Some(Duration::from_secs(120)));
    }

    #[test]
    fn rejections_name_annotation_and_value() {
        for (k, v) in [
            (BALANCE, "static-rr"),
            (TIMEOUT_CLIENT, "30"),
            (TIMEOUT_CLIENT, "0s"),
            (TIMEOUT_CLIENT, "25h"),
            (TIMEOUT_SERVER, "1s\nlisten x"),
            (CHECK_INTERVAL, "-1s"),
            (PROXY_PROTOCOL, "v1"),
            (DRAIN_TIMEOUT, "forever"),
            ("ferrylb.io/haproxy-timeout-clinet", "30s"),
        ] {
            let e = parse(&[(k, v)]).unwrap_err();
            assert!(
                e.message.contains(k) && e.message.contains(&format!("{v:?}")),
                "{e}"
            );
            assert_eq!(e.reason, "InvalidAnnotation");
        }
    }
}
