//! The `ferrylb` command.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use ferrylb::cli::{Cli, Command, ControllerArgs, LogFormat, PlanArgs, ProviderName};
use ferrylb::controller::{self, ControllerConfig};
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
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
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
    print!(
        "{}",
        ferrylb::plan::plan(&text, &args.haproxy_class, args.haproxy_pool.clone())?
    );
    Ok(())
}

async fn run_controller(args: ControllerArgs) -> anyhow::Result<()> {
    let client = match &args.kubeconfig {
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
    };

    let mut classes: BTreeMap<String, Arc<dyn LoadBalancerProvider>> = BTreeMap::new();
    let mut haproxy: Option<Arc<HaproxyProvider>> = None;
    for p in &args.providers {
        match p {
            ProviderName::Haproxy => {
                let settings = args.haproxy.settings()?;
                if let Some(dir) = settings.process.config_path.parent() {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("creating {}", dir.display()))?;
                }
                let provider = Arc::new(HaproxyProvider::new(settings));
                haproxy = Some(provider.clone());
                classes.insert(args.haproxy.haproxy_class.clone(), provider);
            }
        }
    }
    let class_of = |p: ProviderName| match p {
        ProviderName::Haproxy => args.haproxy.haproxy_class.clone(),
    };
    let default_class = match args.default_provider {
        Some(p) if args.providers.contains(&p) => Some(class_of(p)),
        Some(p) => anyhow::bail!("--default-provider {p:?} is not among --providers"),
        None => None,
    };

    let config = ControllerConfig {
        classes,
        default_class,
        concurrency: args.concurrency,
        resync: args.resync,
        namespace: args.namespace.clone(),
        node_selector: args.node_selector.clone(),
        instance: args.instance.clone(),
    };
    tracing::info!(classes = ?config.classes.keys().collect::<Vec<_>>(), default = ?config.default_class, "starting controller");
    controller::run(client, config, shutdown_signal()).await?;
    if let Some(h) = haproxy {
        h.shutdown().await;
    }
    tracing::info!("stopped");
    Ok(())
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
