//! Runs FerryLB's controller inside a test, scoped to one namespace and to
//! Nodes carrying one label, so tests running side by side never see each
//! other's Services or Nodes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ferrylb::controller::{self, ControllerConfig};
use ferrylb_model::LoadBalancerProvider;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A controller running in this process; stopped (gracefully) on drop.
pub struct RunningController {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

/// Config for a test controller: `classes` bound to their providers, only
/// `namespace`, only Nodes labelled `node_label=true`.
pub fn config(
    classes: Vec<(String, Arc<dyn LoadBalancerProvider>)>,
    default_class: Option<String>,
    namespace: &str,
    node_label: &str,
) -> ControllerConfig {
    ControllerConfig {
        classes: classes.into_iter().collect::<BTreeMap<_, _>>(),
        default_class,
        concurrency: 4,
        resync: Duration::from_secs(600),
        namespace: Some(namespace.to_owned()),
        node_selector: Some(format!("{node_label}=true")),
        instance: Some(format!("test-{namespace}")),
        telemetry: Arc::default(),
        provider_timeout: Duration::from_secs(60),
    }
}

impl RunningController {
    pub fn start(client: kube::Client, config: ControllerConfig) -> Self {
        init_tracing();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(controller::run(client, config, async move {
            let _ = rx.await;
        }));
        Self {
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Stops the controller and waits for in-flight reconciles to finish.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
        }
    }
}

impl Drop for RunningController {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Sends the controller's logs to the test output (shown for failing tests).
/// `RUST_LOG` overrides the default level.
pub fn init_tracing() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("ferrylb=debug,info"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}
