//! The command line. Every flag can also be set through the environment
//! variable named beside it.

pub mod bgp;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use ferrylb_aws::{AwsSettings, RateLimits};
use ferrylb_haproxy::HaproxySettings;
use ferrylb_haproxy::pool::AddressPool;
use ferrylb_haproxy::process::{ProcessSettings, RunMode};
use ferrylb_haproxy::vrrp::VrrpSettings;

/// Kubernetes LoadBalancer Services on AWS and bare metal.
#[derive(Debug, Parser)]
#[command(name = "ferrylb", version)]
pub struct Cli {
    /// Log format.
    #[arg(long, env = "FERRYLB_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Watch Services and Nodes and provision load balancers.
    Controller(Box<ControllerArgs>),
    /// Print what FerryLB would build for Service, Node and EndpointSlice manifests,
    /// offline: HAProxy's address assignments and configuration, or AWS's
    /// NLBs, listeners, target groups, security group rules and tags.
    Plan(PlanArgs),
    /// List (and with --delete, remove) cloud resources tagged for this
    /// cluster whose Service no longer exists.
    Gc(Box<GcArgs>),
    /// Stop FerryLB's replicas and let go of the Services whose load
    /// balancers live only in the cluster (the chart's pre-delete hook).
    Uninstall(UninstallArgs),
    /// Exit 0 when the local HAProxy has a worker serving (keepalived runs
    /// this to decide whether this host may hold the VIPs).
    HaproxyCheck(HaproxyCheckArgs),
}

#[derive(Debug, Args)]
pub struct UninstallArgs {
    /// Kubeconfig to use; in-cluster configuration when unset.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Namespace of FerryLB's Deployment.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub namespace: String,

    /// FerryLB's Deployment, scaled to zero first.
    #[arg(long)]
    pub deployment: String,

    /// Classes whose Services are released (address, finalizer and class
    /// removed): those of providers that build nothing outside the cluster.
    #[arg(long = "release-class", required = true)]
    pub release_classes: Vec<String>,

    /// How long to wait for the replicas to stop.
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, Args)]
pub struct HaproxyCheckArgs {
    /// HAProxy's master CLI socket.
    #[arg(long)]
    pub master_socket: PathBuf,
}

/// Providers FerryLB can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProviderName {
    Aws,
    Haproxy,
}

#[derive(Debug, Args)]
pub struct ControllerArgs {
    /// Kubeconfig to use; in-cluster configuration when unset.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Providers to run, comma-separated.
    #[arg(
        long,
        env = "FERRYLB_PROVIDERS",
        value_delimiter = ',',
        required = true
    )]
    pub providers: Vec<ProviderName>,

    /// The provider that serves Services without spec.loadBalancerClass.
    /// Unset: such Services are left to another implementation.
    #[arg(long, env = "FERRYLB_DEFAULT_PROVIDER")]
    pub default_provider: Option<ProviderName>,

    /// Services reconciled at the same time.
    #[arg(long, env = "FERRYLB_CONCURRENCY", default_value_t = 8)]
    pub concurrency: u16,

    /// How often every Service is ensured again, repairing drift.
    #[arg(long, env = "FERRYLB_RESYNC", default_value = "10m", value_parser = humantime::parse_duration)]
    pub resync: Duration,

    /// The longest a provider call (ensure, update, delete) may take before
    /// it is abandoned and retried with backoff.
    #[arg(long, env = "FERRYLB_PROVIDER_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    pub provider_timeout: Duration,

    /// Watch Services in this namespace only.
    #[arg(long, env = "FERRYLB_NAMESPACE")]
    pub namespace: Option<String>,

    /// Only Nodes matching this label selector receive traffic.
    #[arg(long, env = "FERRYLB_NODE_SELECTOR")]
    pub node_selector: Option<String>,

    /// This replica's name in Events (the pod name in a cluster).
    #[arg(long, env = "POD_NAME")]
    pub instance: Option<String>,

    /// Serve /metrics, /healthz and /readyz here. Loopback by default: on
    /// an HAProxy host, 0.0.0.0 would take this port from every VIP (the
    /// chart sets the pod's own address).
    #[arg(
        long,
        env = "FERRYLB_METRICS_ADDRESS",
        default_value = "127.0.0.1:8080"
    )]
    pub metrics_address: std::net::SocketAddr,

    #[command(flatten)]
    pub leader: LeaderArgs,

    #[command(flatten)]
    pub aws: AwsArgs,

    #[command(flatten)]
    pub haproxy: HaproxyArgs,
}

#[derive(Debug, Args)]
pub struct LeaderArgs {
    /// Run only while holding a coordination.k8s.io Lease, so that of
    /// several replicas one acts.
    #[arg(long, env = "FERRYLB_LEADER_ELECT")]
    pub leader_elect: bool,

    /// Namespace of the Lease (the pod's own namespace in a cluster).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub leader_election_namespace: String,

    /// Name of the Lease.
    #[arg(long, env = "FERRYLB_LEADER_ELECTION_LEASE", default_value = "ferrylb")]
    pub leader_election_lease: String,

    /// A follower takes over after the leader stopped renewing for this long.
    #[arg(long, env = "FERRYLB_LEADER_ELECTION_LEASE_DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    pub leader_election_lease_duration: Duration,

    /// The replicas' pods (a label selector, in the Lease's namespace): a
    /// leader that cannot renew the Lease asks them (`GET /lease` on
    /// `--leader-election-peer-port`) before stepping down, and leads on
    /// through an API-server outage none of them sees through. Unset: it
    /// steps down at the renew deadline whatever the cause.
    #[arg(long, env = "FERRYLB_LEADER_ELECTION_PEER_SELECTOR")]
    pub leader_election_peer_selector: Option<String>,

    /// The port every replica serves `/lease` on (its metrics port).
    #[arg(
        long,
        env = "FERRYLB_LEADER_ELECTION_PEER_PORT",
        default_value_t = 8080
    )]
    pub leader_election_peer_port: u16,
}

#[derive(Debug, Args)]
pub struct AwsArgs {
    /// loadBalancerClass served by the AWS provider.
    #[arg(long, env = "FERRYLB_AWS_CLASS", default_value = "ferrylb.io/aws")]
    pub aws_class: String,

    /// This cluster's name: tagged on every resource FerryLB creates and the
    /// scope of garbage collection. Clusters sharing an account must differ.
    #[arg(long, env = "FERRYLB_AWS_CLUSTER_NAME")]
    pub aws_cluster_name: Option<String>,

    /// AWS region (default: AWS_REGION or the profile's).
    #[arg(long, env = "AWS_REGION")]
    pub aws_region: Option<String>,

    /// Endpoint for every AWS API, for LocalStack or moto
    /// (e.g. http://127.0.0.1:4566).
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    pub aws_endpoint_url: Option<String>,

    /// Discover subnets in this VPC only.
    #[arg(long, env = "FERRYLB_AWS_VPC_ID")]
    pub aws_vpc_id: Option<String>,

    /// Targets an NLB holds per zone (AWS's quota, 500 by default; each
    /// target group, one per port, counts). Past it each Service registers
    /// a stable subset of the nodes in each zone.
    #[arg(long, env = "FERRYLB_AWS_TARGETS_PER_ZONE", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
    pub aws_targets_per_zone: u32,

    /// Multiplies FerryLB's client-side AWS rate limits (1 keeps inside
    /// AWS's published buckets; raise it only for local endpoints).
    #[arg(long, env = "FERRYLB_AWS_API_RATE_SCALE", default_value_t = 1.0)]
    pub aws_api_rate_scale: f64,

    /// Share of the ELBv2 describe budget that periodic drift checks may use.
    #[arg(long, env = "FERRYLB_AWS_RESYNC_DESCRIBE_SHARE", default_value_t = 0.5)]
    pub aws_resync_describe_share: f64,

    /// Delete orphaned AWS resources (tagged for this cluster, Service gone)
    /// this often. Unset: never (run `ferrylb gc` by hand).
    #[arg(long, env = "FERRYLB_AWS_GC_INTERVAL", value_parser = humantime::parse_duration)]
    pub aws_gc_interval: Option<Duration>,
}

impl AwsArgs {
    /// The provider's settings.
    ///
    /// # Errors
    /// When no cluster name is given or a rate is out of range.
    pub fn settings(&self) -> anyhow::Result<AwsSettings> {
        let cluster = self.aws_cluster_name.clone().ok_or_else(|| {
            anyhow::anyhow!("the aws provider needs --aws-cluster-name (FERRYLB_AWS_CLUSTER_NAME)")
        })?;
        anyhow::ensure!(
            !cluster.is_empty()
                && cluster.len() <= 63
                && cluster
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
            "--aws-cluster-name {cluster:?}: 1-63 letters, digits, '-', '_' or '.'"
        );
        anyhow::ensure!(
            self.aws_api_rate_scale > 0.0,
            "--aws-api-rate-scale must be positive"
        );
        anyhow::ensure!(
            self.aws_resync_describe_share > 0.0 && self.aws_resync_describe_share <= 1.0,
            "--aws-resync-describe-share must be in (0, 1]"
        );
        let mut s = AwsSettings::new(cluster);
        s.vpc_id = self.aws_vpc_id.clone();
        s.targets_per_zone = self.aws_targets_per_zone as usize;
        s.limits = RateLimits {
            scale: self.aws_api_rate_scale,
            resync_share: self.aws_resync_describe_share,
        };
        Ok(s)
    }
}

#[derive(Debug, Args)]
pub struct GcArgs {
    /// Kubeconfig to use; in-cluster configuration when unset.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// The provider whose resources to collect.
    #[arg(long, value_enum)]
    pub provider: GcProvider,

    /// Delete the orphans (default: only list them).
    #[arg(long)]
    pub delete: bool,

    #[command(flatten)]
    pub aws: AwsArgs,
}

/// Providers that create cloud resources which can be orphaned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GcProvider {
    Aws,
}

#[derive(Debug, Args)]
pub struct HaproxyArgs {
    /// loadBalancerClass served by the HAProxy provider.
    #[arg(
        long,
        env = "FERRYLB_HAPROXY_CLASS",
        default_value = "ferrylb.io/haproxy"
    )]
    pub haproxy_class: String,

    /// VIP pool: CIDRs and ranges, comma-separated
    /// (e.g. 192.0.2.10-192.0.2.50,2001:db8::/120).
    #[arg(long, env = "FERRYLB_HAPROXY_POOL")]
    pub haproxy_pool: Option<AddressPool>,

    /// managed: FerryLB runs and supervises haproxy itself; external:
    /// another process runs it and FerryLB reloads it through the master socket.
    #[arg(long, env = "FERRYLB_HAPROXY_MODE", value_enum, default_value_t = HaproxyMode::Managed)]
    pub haproxy_mode: HaproxyMode,

    /// The haproxy binary (managed mode, and for validating configurations).
    #[arg(long, env = "FERRYLB_HAPROXY_BINARY", default_value = "haproxy")]
    pub haproxy_binary: PathBuf,

    /// Directory for haproxy.cfg and the sockets (created if missing).
    #[arg(long, env = "FERRYLB_HAPROXY_DIR", default_value = "/var/run/ferrylb")]
    pub haproxy_dir: PathBuf,

    /// The configuration file FerryLB owns (default: <dir>/haproxy.cfg).
    #[arg(long, env = "FERRYLB_HAPROXY_CONFIG")]
    pub haproxy_config: Option<PathBuf>,

    /// HAProxy's master CLI socket (default: <dir>/master.sock).
    #[arg(long, env = "FERRYLB_HAPROXY_MASTER_SOCKET")]
    pub haproxy_master_socket: Option<PathBuf>,

    /// Add each VIP to this interface and remove it when freed (needs
    /// NET_ADMIN). Unset: the host already owns the pool's addresses.
    #[arg(long, env = "FERRYLB_HAPROXY_VIP_INTERFACE")]
    pub haproxy_vip_interface: Option<String>,

    /// Old workers still draining connections after a reload stop after this.
    #[arg(long, env = "FERRYLB_HAPROXY_HARD_STOP_AFTER", default_value = "30s", value_parser = humantime::parse_duration)]
    pub haproxy_hard_stop_after: Duration,

    /// A node leaving a load balancer (tainted for removal, excluded, being
    /// deleted, gone) has its servers drained: no new connection, the open
    /// ones go on until they end or this passes, then they are closed. A
    /// Service may set its own (`ferrylb.io/haproxy-drain-timeout`).
    #[arg(long, env = "FERRYLB_HAPROXY_DRAIN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub haproxy_drain_timeout: Duration,

    /// Check each node once with `GET /healthz` on this port (kube-proxy's
    /// health port is 10256) and let every Service track that check. Needed
    /// for large clusters: per-Service checks cost a file descriptor per
    /// Service and node. Unset: each server checks its own nodePort.
    #[arg(long, env = "FERRYLB_HAPROXY_NODE_CHECK_PORT")]
    pub haproxy_node_check_port: Option<u16>,

    /// HAProxy's worker threads (`nbthread`). Each thread holds a share of
    /// every server (about 0.6 KiB): 30 MiB more per thread at 1,000
    /// Services × 50 nodes. Unset: HAProxy's default, one per CPU the
    /// process may run on.
    #[arg(long, env = "FERRYLB_HAPROXY_THREADS", value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub haproxy_threads: Option<u16>,

    #[command(flatten)]
    pub vrrp: VrrpArgs,

    #[command(flatten)]
    pub bgp: bgp::BgpArgs,
}

/// VIPs moved between replicas by VRRP (keepalived), instead of by the
/// leader adding them to its interface.
#[derive(Debug, Args)]
pub struct VrrpArgs {
    /// Run keepalived beside HAProxy on every replica and let VRRP decide
    /// which host holds the VIPs (on --haproxy-vip-interface). Every
    /// replica serves every VIP; failover needs neither the API server nor
    /// the leader.
    #[arg(long, env = "FERRYLB_HAPROXY_VRRP")]
    pub haproxy_vrrp: bool,

    /// The keepalived binary.
    #[arg(long, env = "FERRYLB_KEEPALIVED_BINARY", default_value = "keepalived")]
    pub keepalived_binary: PathBuf,

    /// VRRP's virtual_router_id: unique among VRRP routers on the network
    /// segment (1-255).
    #[arg(long, env = "FERRYLB_HAPROXY_VRRP_ROUTER_ID", default_value_t = 51, value_parser = clap::value_parser!(u8).range(1..))]
    pub haproxy_vrrp_router_id: u8,

    /// This replica's base VRRP priority (1-155); FerryLB adds 0-99 from
    /// the node's address, so that when the master leaves one backup takes
    /// over first. A replica coming back never takes the VIPs back.
    #[arg(long, env = "FERRYLB_HAPROXY_VRRP_PRIORITY", default_value_t = 100, value_parser = clap::value_parser!(u8).range(1..156))]
    pub haproxy_vrrp_priority: u8,

    /// Time between VRRP adverts: a backup takes over after about three
    /// missed (0.1s: failover in about 0.35 s, ten small packets a second
    /// per replica). 10ms to 40s.
    #[arg(long, env = "FERRYLB_HAPROXY_VRRP_ADVERT_INTERVAL", default_value = "100ms", value_parser = advert_interval)]
    pub haproxy_vrrp_advert_interval: Duration,

    /// This host's address for unicast adverts (the chart passes the
    /// node's address). Unset: multicast adverts.
    #[arg(long, env = "FERRYLB_HAPROXY_VRRP_SOURCE")]
    pub haproxy_vrrp_source: Option<std::net::IpAddr>,

    /// The other replicas are the pods matching this label selector in the
    /// leader election namespace; their node addresses are the unicast
    /// peers.
    #[arg(long, env = "FERRYLB_HAPROXY_VRRP_PEER_SELECTOR")]
    pub haproxy_vrrp_peer_selector: Option<String>,

    /// On a planned stop, the replica holding the VIPs (the VRRP master, or
    /// without VRRP the leader that put them on --haproxy-vip-interface)
    /// drops new TCP handshakes to them for this long before handing them
    /// over, so that
    /// the connections it accepted finish first; clients send their SYN
    /// again a second later and reach the new holder. Keep it well under
    /// one second (the first SYN retransmission) minus the takeover time;
    /// 0s hands over at once. Needs `nft` (nftables) and NET_ADMIN.
    #[arg(long, env = "FERRYLB_HAPROXY_VRRP_HANDOVER_PAUSE", default_value = "300ms", value_parser = handover_pause)]
    pub haproxy_vrrp_handover_pause: Duration,

    /// The nft binary for --haproxy-vrrp-handover-pause.
    #[arg(long, env = "FERRYLB_NFT_BINARY", default_value = "nft")]
    pub nft_binary: PathBuf,
}

fn handover_pause(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d > Duration::from_secs(5) {
        return Err(format!(
            "{s} is longer than 5s: clients whose SYN was dropped retry after 1s, then 3s, 7s"
        ));
    }
    Ok(d)
}

fn advert_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_millis(10) || d > Duration::from_secs(40) {
        return Err(format!("{s} is outside what VRRPv3 can send (10ms to 40s)"));
    }
    Ok(d)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HaproxyMode {
    Managed,
    External,
}

impl HaproxyArgs {
    /// The provider's settings.
    ///
    /// # Errors
    /// When no pool is given.
    pub fn settings(&self) -> anyhow::Result<HaproxySettings> {
        let pool = self.haproxy_pool.clone().ok_or_else(|| {
            anyhow::anyhow!("the haproxy provider needs --haproxy-pool (FERRYLB_HAPROXY_POOL)")
        })?;
        let dir = &self.haproxy_dir;
        Ok(HaproxySettings {
            pool,
            process: ProcessSettings {
                binary: self.haproxy_binary.clone(),
                config_path: self
                    .haproxy_config
                    .clone()
                    .unwrap_or_else(|| dir.join("haproxy.cfg")),
                master_socket: self
                    .haproxy_master_socket
                    .clone()
                    .unwrap_or_else(|| dir.join("master.sock")),
                mode: match self.haproxy_mode {
                    HaproxyMode::Managed => RunMode::Managed,
                    HaproxyMode::External => RunMode::External,
                },
            },
            admin_socket: dir.join("admin.sock"),
            vip_interface: self.haproxy_vip_interface.clone(),
            hard_stop_after: self.haproxy_hard_stop_after,
            node_check_port: self.haproxy_node_check_port,
            threads: self.haproxy_threads,
            vrrp: self.vrrp_settings()?,
            bgp: self.bgp.settings(
                dir,
                self.haproxy_master_socket
                    .clone()
                    .unwrap_or_else(|| dir.join("master.sock")),
                self.vrrp.haproxy_vrrp,
                &self.vrrp.nft_binary,
            )?,
            handover_pause: self.vrrp.haproxy_vrrp_handover_pause,
            nft_binary: self.vrrp.nft_binary.clone(),
            drain_timeout: self.haproxy_drain_timeout,
        })
    }

    fn vrrp_settings(&self) -> anyhow::Result<Option<VrrpSettings>> {
        let v = &self.vrrp;
        if !v.haproxy_vrrp {
            return Ok(None);
        }
        let interface = self.haproxy_vip_interface.clone().ok_or_else(|| {
            anyhow::anyhow!(
                "--haproxy-vrrp needs --haproxy-vip-interface: the interface VRRP adds the VIPs to"
            )
        })?;
        let master_socket = self
            .haproxy_master_socket
            .clone()
            .unwrap_or_else(|| self.haproxy_dir.join("master.sock"));
        let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "ferrylb".into());
        Ok(Some(VrrpSettings {
            binary: v.keepalived_binary.clone(),
            config_path: self.haproxy_dir.join("keepalived.conf"),
            interface,
            router_id: v.haproxy_vrrp_router_id,
            priority: v.haproxy_vrrp_priority,
            advert_interval: v.haproxy_vrrp_advert_interval,
            source: v.haproxy_vrrp_source,
            master_socket,
            name,
            await_peers: v.haproxy_vrrp_peer_selector.is_some(),
            handover_pause: v.haproxy_vrrp_handover_pause,
            nft_binary: v.nft_binary.clone(),
        }))
    }
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// YAML or JSON manifests of Services and Nodes (several documents, or
    /// `kind: List`); `-` reads standard input.
    pub file: PathBuf,

    /// The provider planned for.
    #[arg(long, value_enum, default_value = "haproxy")]
    pub provider: ProviderName,

    /// loadBalancerClass planned for with the HAProxy provider; Services with
    /// no class are included too.
    #[arg(
        long,
        env = "FERRYLB_HAPROXY_CLASS",
        default_value = "ferrylb.io/haproxy"
    )]
    pub haproxy_class: String,

    /// loadBalancerClass planned for with the AWS provider; Services with no
    /// class are included too.
    #[arg(long, env = "FERRYLB_AWS_CLASS", default_value = "ferrylb.io/aws")]
    pub aws_class: String,

    /// Cluster name for the AWS plan's tags.
    #[arg(long, env = "FERRYLB_AWS_CLUSTER_NAME", default_value = "kubernetes")]
    pub aws_cluster_name: String,

    /// VIP pool: CIDRs and ranges, comma-separated.
    #[arg(
        long,
        env = "FERRYLB_HAPROXY_POOL",
        default_value = "192.0.2.10-192.0.2.50"
    )]
    pub haproxy_pool: AddressPool,
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn controller(args: &[&str]) -> Result<Box<ControllerArgs>, String> {
        let argv = ["ferrylb", "controller", "--providers", "haproxy"];
        let cli = Cli::try_parse_from(argv.iter().chain(args)).map_err(|e| e.to_string())?;
        match cli.command {
            Command::Controller(c) => Ok(c),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn a_handover_pause_clients_would_not_wait_out_is_refused_by_name() {
        let c = controller(&["--haproxy-vrrp-handover-pause", "5s"]).unwrap();
        assert_eq!(
            c.haproxy.vrrp.haproxy_vrrp_handover_pause,
            Duration::from_secs(5)
        );
        let err = controller(&["--haproxy-vrrp-handover-pause", "6s"]).unwrap_err();
        assert!(
            err.contains("--haproxy-vrrp-handover-pause") && err.contains("6s is longer than 5s"),
            "{err}"
        );
    }

    #[test]
    fn haproxy_threads_are_at_least_one() {
        let c = controller(&["--haproxy-threads", "2"]).unwrap();
        assert_eq!(c.haproxy.haproxy_threads, Some(2));
        assert_eq!(controller(&[]).unwrap().haproxy.haproxy_threads, None);
        let err = controller(&["--haproxy-threads", "0"]).unwrap_err();
        assert!(err.contains("--haproxy-threads"), "{err}");
    }

    #[test]
    fn an_advert_interval_vrrp_cannot_send_is_refused_by_name() {
        for bad in ["5ms", "41s"] {
            let err = controller(&["--haproxy-vrrp-advert-interval", bad]).unwrap_err();
            assert!(
                err.contains("--haproxy-vrrp-advert-interval") && err.contains("10ms to 40s"),
                "{err}"
            );
        }
    }
}
