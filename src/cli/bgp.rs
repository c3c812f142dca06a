//! `--haproxy-bgp…`: VIPs announced over BGP by a BIRD every replica runs.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use ferrylb_haproxy::bgp::{BgpSettings, BirdConfig, Community, Peer};

/// Every replica announces every VIP its HAProxy serves to the user's
/// routers over BGP (active-active), instead of one host holding them.
#[derive(Debug, Args)]
pub struct BgpArgs {
    /// Run BIRD beside HAProxy on every replica and announce each VIP it
    /// serves, as a /32 or /128, to the --haproxy-bgp-peer routers.
    #[arg(long, env = "FERRYLB_HAPROXY_BGP")]
    pub haproxy_bgp: bool,

    /// This host's AS number.
    #[arg(long, env = "FERRYLB_HAPROXY_BGP_LOCAL_ASN", default_value_t = 64512, value_parser = clap::value_parser!(u32).range(1..))]
    pub haproxy_bgp_local_asn: u32,

    /// A router to announce to:
    /// `address=10.0.0.1,asn=64500[,bfd=true][,hold=9s][,password-file=PATH]`
    /// (repeat the flag for each; `;` separates them in the environment
    /// variable). The password file holds the TCP MD5 key (a Secret).
    #[arg(
        long = "haproxy-bgp-peer",
        env = "FERRYLB_HAPROXY_BGP_PEERS",
        value_delimiter = ';'
    )]
    pub haproxy_bgp_peers: Vec<Peer>,

    /// BGP's router id: this host's IPv4 address (the chart passes the
    /// node's).
    #[arg(long, env = "FERRYLB_HAPROXY_BGP_ROUTER_ID")]
    pub haproxy_bgp_router_id: Option<Ipv4Addr>,

    /// Standard communities `ASN:VALUE` added to every announcement
    /// (comma-separated).
    #[arg(long, env = "FERRYLB_HAPROXY_BGP_COMMUNITIES", value_delimiter = ',')]
    pub haproxy_bgp_communities: Vec<Community>,

    /// BFD's transmit and receive interval, for peers with bfd=true
    /// (10ms to 10s).
    #[arg(long, env = "FERRYLB_HAPROXY_BGP_BFD_INTERVAL", default_value = "100ms", value_parser = bfd_interval)]
    pub haproxy_bgp_bfd_interval: Duration,

    /// Missed BFD packets that declare a peer (or this host) down (2-255).
    #[arg(long, env = "FERRYLB_HAPROXY_BGP_BFD_MULTIPLIER", default_value_t = 3, value_parser = clap::value_parser!(u8).range(2..))]
    pub haproxy_bgp_bfd_multiplier: u8,

    /// On a planned stop (pod deleted, drain, `helm upgrade`), every route
    /// is withdrawn this long before BIRD stops; HAProxy serves on meanwhile
    /// and after, for what it carries. 0s to 30s.
    #[arg(long, env = "FERRYLB_HAPROXY_BGP_WITHDRAW_PAUSE", default_value = "2s", value_parser = withdraw_pause)]
    pub haproxy_bgp_withdraw_pause: Duration,

    /// On a planned stop, new TCP handshakes to the VIPs are dropped for
    /// this long before the routes are withdrawn, so that the connections
    /// this host just accepted finish while their packets still reach it;
    /// clients send their SYN again a second later, and the routers send it
    /// to a host that stays. Keep it well under one second; 0s withdraws at
    /// once. Needs `nft` (nftables).
    #[arg(long, env = "FERRYLB_HAPROXY_BGP_HANDOVER_PAUSE", default_value = "300ms", value_parser = super::handover_pause)]
    pub haproxy_bgp_handover_pause: Duration,

    /// The bird binary (BIRD 2).
    #[arg(long, env = "FERRYLB_BIRD_BINARY", default_value = "bird")]
    pub bird_binary: PathBuf,

    /// The birdc binary.
    #[arg(long, env = "FERRYLB_BIRDC_BINARY", default_value = "birdc")]
    pub birdc_binary: PathBuf,
}

fn bfd_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_millis(10) || d > Duration::from_secs(10) {
        return Err(format!("{s} is outside 10ms to 10s"));
    }
    Ok(d)
}

fn withdraw_pause(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d > Duration::from_secs(30) {
        return Err(format!("{s} is longer than 30s"));
    }
    Ok(d)
}

impl BgpArgs {
    /// The BGP settings, `None` unless --haproxy-bgp.
    ///
    /// # Errors
    /// Without a peer or a router id, or beside VRRP.
    pub fn settings(
        &self,
        dir: &Path,
        master_socket: PathBuf,
        vrrp: bool,
        nft: &Path,
    ) -> anyhow::Result<Option<BgpSettings>> {
        if !self.haproxy_bgp {
            return Ok(None);
        }
        if vrrp {
            anyhow::bail!(
                "--haproxy-bgp and --haproxy-vrrp are two ways to announce the VIPs: choose one"
            );
        }
        if self.haproxy_bgp_peers.is_empty() {
            anyhow::bail!(
                "--haproxy-bgp needs at least one --haproxy-bgp-peer (FERRYLB_HAPROXY_BGP_PEERS)"
            );
        }
        let router_id = self.haproxy_bgp_router_id.ok_or_else(|| {
            anyhow::anyhow!("--haproxy-bgp needs --haproxy-bgp-router-id: this host's IPv4 address")
        })?;
        Ok(Some(BgpSettings {
            bird: self.bird_binary.clone(),
            birdc: self.birdc_binary.clone(),
            ip: "ip".into(),
            config_path: dir.join("bird.conf"),
            config: BirdConfig {
                router_id,
                local_asn: self.haproxy_bgp_local_asn,
                peers: self.haproxy_bgp_peers.clone(),
                communities: self.haproxy_bgp_communities.clone(),
                bfd_interval: self.haproxy_bgp_bfd_interval,
                bfd_multiplier: self.haproxy_bgp_bfd_multiplier,
            },
            master_socket: Some(master_socket),
            withdraw_pause: self.haproxy_bgp_withdraw_pause,
            handover_pause: self.haproxy_bgp_handover_pause,
            nft: nft.to_path_buf(),
        }))
    }
}
