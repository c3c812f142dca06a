//! The `ferrylb` command.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use ferrylb::cli::{
    AwsArgs, Cli, Command, ControllerArgs, GcArgs, GcProvider, LogFormat, PlanArgs, ProviderName,
};
use ferrylb::controller::{self, ControllerConfig};
use ferrylb::leader::LeaseLock;
use ferrylb::telemetry::{self, Telemetry};
use ferrylb_aws::AwsProvider;
use ferrylb_haproxy::HaproxyProvider;
use ferrylb_model::LoadBalancerProvider;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Controller(args) => run_controller(*args).await,
        Command::Plan(args) => run_plan(&args),
        Command::Gc(args) => run_gc(*args).await,
        Command::Uninstall(args) => {
            let client = kube_client(args.kubeconfig.as_deref()).await?;
            let report = ferrylb::uninstall::run(
                &client,
                &args.namespace,
                &args.deployment,
                &args.release_classes,
                args.timeout,
            )
            .await?;
            print!("{}", ferrylb::uninstall::render(&report));
            anyhow::ensure!(
                report.failed.is_empty(),
                "{} Service(s) could not be released",
                report.failed.len()
            );
            Ok(())
        }
        Command::HaproxyCheck(args) => {
            if let Err(e) = ferrylb_haproxy::process::serving(&args.master_socket).await {
                eprintln!("{e}");
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: a container's log is a file.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn run_plan(args: &PlanArgs) -> anyhow::Result<()> {
    let text = if args.file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading standard input")?
    } else {
        std::fs::read_to_string(&args.file)
            .with_context(|| format!("reading {}", args.file.display()))?
    };
    let plan = match args.provider {
        ProviderName::Haproxy => {
            ferrylb::plan::plan(&text, &args.haproxy_class, args.haproxy_pool.clone())?
        }
        ProviderName::Aws => {
            ferrylb::plan::plan_aws(&text, &args.aws_class, &args.aws_cluster_name)?
        }
    };
    print!("{plan}");
    Ok(())
}

async fn kube_client(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<kube::Client> {
    Ok(match kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            let config =
                kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
            kube::Client::try_from(config)?
        }
        None => kube::Client::try_default()
            .await
            .context("loading in-cluster configuration")?,
    })
}

async fn aws_provider(args: &AwsArgs) -> anyhow::Result<AwsProvider> {
    let settings = args.settings()?;
    let sdk =
        ferrylb_aws::load_sdk_config(args.aws_region.as_deref(), args.aws_endpoint_url.as_deref())
            .await;
    anyhow::ensure!(
        sdk.region().is_some(),
        "the aws provider needs a region: --aws-region, AWS_REGION or a profile's region"
    );
    Ok(AwsProvider::new(&sdk, settings))
}

async fn run_gc(args: GcArgs) -> anyhow::Result<()> {
    let client = kube_client(args.kubeconfig.as_deref()).await?;
    let provider = match args.provider {
        GcProvider::Aws => aws_provider(&args.aws).await?,
    };
    let report = ferrylb::gc::collect(&client, &provider, args.delete).await?;
    print!("{}", ferrylb::gc::render(&report, args.delete));
    anyhow::ensure!(
        report.failed.is_empty(),
        "{} orphan(s) could not be deleted",
        report.failed.len()
    );
    Ok(())
}

async fn run_controller(args: ControllerArgs) -> anyhow::Result<()> {
    let client = kube_client(args.kubeconfig.as_deref()).await?;

    let mut classes: BTreeMap<String, Arc<dyn LoadBalancerProvider>> = BTreeMap::new();
    let mut haproxy: Option<Arc<HaproxyProvider>> = None;
    let mut gc_providers = Vec::new();
    for p in &args.providers {
        match p {
            ProviderName::Aws => {
                let provider = Arc::new(aws_provider(&args.aws).await?);
                gc_providers.push(provider.clone());
                classes.insert(args.aws.aws_class.clone(), provider);
            }
            ProviderName::Haproxy => {
                let settings = args.haproxy.settings()?;
                if let Some(dir) = settings.process.config_path.parent() {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("creating {}", dir.display()))?;
                }
                let provider = Arc::new(HaproxyProvider::new(settings));
                provider.write_initial_config().await?;
                haproxy = Some(provider.clone());
                classes.insert(args.haproxy.haproxy_class.clone(), provider);
            }
        }
    }
    let class_of = |p: ProviderName| match p {
        ProviderName::Aws => args.aws.aws_class.clone(),
        ProviderName::Haproxy => args.haproxy.haproxy_class.clone(),
    };
    let default_class = match args.default_provider {
        Some(p) if args.providers.contains(&p) => Some(class_of(p)),
        Some(p) => anyhow::bail!("--default-provider {p:?} is not among --providers"),
        None => None,
    };

    let telemetry = Arc::new(Telemetry::default());
    let server = telemetry::serve(args.metrics_address, telemetry.clone())
        .await
        .with_context(|| format!("serving metrics on {}", args.metrics_address))?;
    let checker = tokio::spawn(check_providers(
        classes.values().cloned().collect(),
        telemetry.clone(),
    ));
    let config = ControllerConfig {
        classes,
        default_class,
        concurrency: args.concurrency,
        resync: args.resync,
        namespace: args.namespace.clone(),
        node_selector: args.node_selector.clone(),
        instance: args.instance.clone(),
        telemetry: telemetry.clone(),
        provider_timeout: args.provider_timeout,
    };

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });

    let lock = args.leader.leader_elect.then(|| {
        let identity = args.instance.clone().unwrap_or_else(default_identity);
        let lock = LeaseLock::new(
            client.clone(),
            &args.leader.leader_election_namespace,
            &args.leader.leader_election_lease,
            &identity,
            args.leader.leader_election_lease_duration,
        )
        .with_contact(telemetry.api_contact());
        match &args.leader.leader_election_peer_selector {
            Some(selector) => lock.with_peers(Arc::new(ferrylb::leader::peers::Peers::watch(
                client.clone(),
                &args.leader.leader_election_namespace,
                selector,
                &identity,
                args.leader.leader_election_peer_port,
            ))),
            None => lock,
        }
    });
    let mut side_tasks = Vec::new();
    if let Some(h) = &haproxy {
        let events = (
            ferrylb::bgp_events::recorder(client.clone(), args.instance.clone()),
            ferrylb::bgp_events::pod_ref(
                &args.leader.leader_election_namespace,
                args.instance.as_deref().unwrap_or("ferrylb"),
            ),
        );
        side_tasks.push(tokio::spawn(report_haproxy(
            h.clone(),
            telemetry.clone(),
            events,
        )));
        if let Some(k) = h.keepalived().cloned() {
            // A replica going away hands its VIPs over first, before it
            // finishes in-flight work, while its HAProxy still serves.
            let rx = stop_rx.clone();
            tokio::spawn(async move {
                stopped(rx).await;
                k.stop().await;
            });
        }
        if let Some(b) = h.bird().cloned() {
            // Likewise, its BGP routes are withdrawn first.
            let rx = stop_rx.clone();
            tokio::spawn(async move {
                stopped(rx).await;
                b.stop().await;
            });
        }
        if let (Some(k), Some(selector)) = (
            h.keepalived(),
            args.haproxy.vrrp.haproxy_vrrp_peer_selector.clone(),
        ) {
            side_tasks.push(tokio::spawn(ferrylb::mirror::peers(
                client.clone(),
                args.leader.leader_election_namespace.clone(),
                selector,
                k.clone(),
            )));
        }
    }
    if let Some(h) = &haproxy {
        h.clear_handover_pause().await;
    }
    // Follower and leader in turn. A leader that loses the Lease drops its
    // reconciles and its VIPs at once and stands by again, its HAProxy (and
    // keepalived or BIRD) serving on, so an API-server outage never stops
    // the data path; SIGTERM ends either phase.
    loop {
        if let Some(lock) = &lock {
            telemetry.set_leader(false);
            // Until it leads, a replica serves what the leader provisioned.
            let mirror = haproxy.clone().map(|h| {
                h.set_holding(false);
                tokio::spawn(ferrylb::mirror::run(ferrylb::mirror::Mirror {
                    client: client.clone(),
                    haproxy: h,
                    class: args.haproxy.haproxy_class.clone(),
                    namespace: args.namespace.clone(),
                    node_selector: args.node_selector.clone(),
                }))
            });
            tracing::info!(lease = %args.leader.leader_election_lease, "waiting to lead");
            let leading = tokio::select! {
                () = lock.acquire() => true,
                () = stopped(stop_rx.clone()) => false,
            };
            if let Some(m) = mirror {
                m.abort();
            }
            if !leading {
                tracing::info!("stopped before leading");
                break;
            }
            if let Some(h) = &haproxy {
                h.start_holding().await;
            }
        }
        telemetry.set_leader(true);
        let gc_tasks: Vec<_> = gc_providers
            .iter()
            .filter_map(|provider| {
                let every = args.aws.aws_gc_interval?;
                Some(tokio::spawn(periodic_gc(
                    client.clone(),
                    provider.clone(),
                    every,
                )))
            })
            .collect();
        let lost = lead(
            &lock,
            &haproxy,
            client.clone(),
            config.clone(),
            stop_rx.clone(),
        )
        .await?;
        for t in gc_tasks {
            t.abort();
        }
        if !lost {
            // SIGTERM while leading: in-flight work finished; the Lease is
            // released below.
            if let Some(lock) = &lock
                && let Err(e) = lock.release().await
            {
                tracing::warn!(error = %e, "releasing the leader Lease failed; a follower takes over when it expires");
            }
            break;
        }
        tracing::warn!(
            "lost the leader Lease: stopped holding VIPs and dropped the reconciles in flight; standing by"
        );
    }
    checker.abort();
    for t in side_tasks {
        t.abort();
    }
    if let Some(h) = haproxy {
        h.shutdown().await;
    }
    server.abort();
    tracing::info!("stopped");
    Ok(())
}

/// Runs the controller while this replica leads. Returns `true` when
/// leadership was lost (the VIPs handed over and off the interface, and
/// every reconcile in flight dropped, so nothing is held or written after
/// the renew deadline and the handover pause, well before the lease runs
/// out), `false` on SIGTERM (the VIPs handed over first, in-flight
/// reconciles finished).
async fn lead(
    lock: &Option<LeaseLock>,
    haproxy: &Option<Arc<HaproxyProvider>>,
    client: kube::Client,
    config: controller::ControllerConfig,
    stop_rx: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<bool> {
    let (lost_tx, lost_rx) = tokio::sync::watch::channel(false);
    let stop = {
        let (lock, rx, haproxy) = (lock.clone(), stop_rx.clone(), haproxy.clone());
        async move {
            match lock {
                Some(lock) => tokio::select! {
                    () = lock.hold() => {
                        // Past the renew deadline, the lease has a third of
                        // its duration left: enough for the handover pause,
                        // so that connections HAProxy accepted just before
                        // finish here instead of hanging once the VIPs go.
                        if let Some(h) = &haproxy {
                            h.hand_over().await;
                        }
                        let _ = lost_tx.send(true);
                        return;
                    }
                    () = stopped(rx) => {}
                },
                None => stopped(rx).await,
            }
            // A planned stop: the VIPs on this node are handed over first,
            // while HAProxy serves on, before in-flight work finishes and
            // the Lease is released.
            if let Some(h) = &haproxy {
                h.hand_over().await;
            }
        }
    };
    tracing::info!(classes = ?config.classes.keys().collect::<Vec<_>>(), default = ?config.default_class, "starting controller");
    // The controller wants a Sync future; the Lease renewal is not one, so a
    // task of its own turns it into a channel.
    let (halt_tx, halt_rx) = tokio::sync::watch::channel(false);
    let watchdog = tokio::spawn(async move {
        stop.await;
        let _ = halt_tx.send(true);
    });
    let mut lost_wait = lost_rx.clone();
    let lost = tokio::select! {
        r = controller::run(client, config, stopped(halt_rx)) => {
            r?;
            *lost_rx.borrow()
        }
        // An error means the renewal ended without losing: not this arm.
        Ok(_) = lost_wait.wait_for(|l| *l) => true,
    };
    watchdog.abort();
    Ok(lost)
}

/// Resolves once `rx` says the process is stopping (SIGTERM, or a halt).
async fn stopped(mut rx: tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// This replica's name for leader election when no pod name is given.
fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "ferrylb".to_owned());
    format!("{host}-{}", std::process::id())
}

/// Asks every provider whether its backend answers, every 30 s, for
/// readiness.
async fn check_providers(providers: Vec<Arc<dyn LoadBalancerProvider>>, telemetry: Arc<Telemetry>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(30));
    loop {
        tick.tick().await;
        let mut problems = Vec::new();
        for p in &providers {
            if let Err(e) = p.check().await {
                tracing::warn!(provider = p.name(), error = %e, "provider unreachable");
                problems.push(format!("provider {}: {e}", p.name()));
            }
        }
        telemetry.set_provider_problem((!problems.is_empty()).then(|| problems.join("; ")));
    }
}

/// Copies what the HAProxy provider serves, keepalived's and BIRD's state
/// and the drains of leaving nodes into the metrics once a second; moves
/// the drains on, and publishes Events for BGP sessions and finished
/// drains.
async fn report_haproxy(
    h: Arc<HaproxyProvider>,
    telemetry: Arc<Telemetry>,
    (recorder, pod): (
        kube::runtime::events::Recorder,
        k8s_openapi::api::core::v1::ObjectReference,
    ),
) {
    let by = pod.name.clone().unwrap_or_default();
    let mut sessions = BTreeMap::new();
    if h.bird().is_some() {
        // Not ready before BIRD's state is read.
        telemetry.set_bgp(&ferrylb_haproxy::bgp::BgpStatus::default());
    }
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tick.tick().await;
        if let (generation, Some(sha)) = h.served().await {
            telemetry.set_served(generation, &sha);
        }
        if let Some(k) = h.keepalived() {
            let status = k.status();
            let master = status.state == "MASTER";
            let vips = k.vips().await.into_iter().map(|ip| (ip, master)).collect();
            telemetry.set_vrrp(&status.state, &status.transitions, &vips);
        }
        if let Some(b) = h.bird() {
            let status = b.status().await;
            telemetry.set_bgp(&status);
            let changed = ferrylb::bgp_events::changes(&sessions, &status.sessions);
            ferrylb::bgp_events::publish(&recorder, &pod, &changed).await;
            if status.running {
                sessions = status.sessions;
            }
        }
        let (finished, draining) = h.advance_drains().await;
        telemetry.set_drains(&draining, &finished);
        if !finished.is_empty() {
            let events = ferrylb::drain_events::events(&finished, &draining, &by);
            ferrylb::drain_events::publish(&recorder, events).await;
        }
    }
}

/// Deletes orphaned AWS resources every `every`.
async fn periodic_gc(client: kube::Client, provider: Arc<AwsProvider>, every: std::time::Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        match ferrylb::gc::collect(&client, &provider, true).await {
            Ok(r) if r.orphans.is_empty() => tracing::debug!("garbage collection: no orphans"),
            Ok(r) => tracing::info!(
                orphans = r.orphans.len(),
                failed = r.failed.len(),
                "garbage collection done"
            ),
            Err(e) => tracing::warn!(error = %e, "garbage collection failed"),
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down: finishing in-flight work");
}
