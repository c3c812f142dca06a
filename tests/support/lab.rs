//! The lab (`tests/lab/up`): a real cluster of three kubelet + containerd +
//! kube-proxy nodes in network namespaces, a client namespace outside the
//! cluster, and FerryLB installed from its chart. Shared by every test of a
//! binary; torn down when the binary exits.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde::Deserialize;

use super::env::{repo_root, tempdir};
use super::process::ChildGuard;

/// The client namespace's name (`tests/lab/lib.sh`).
pub const CLIENT_NS: &str = "ferrylb-lab-client";
/// The users' router (BGP mode) and the client behind it
/// (`tests/lab/lib.sh`).
pub const ROUTER_NS: &str = "ferrylb-lab-router";
pub const OUTSIDE_NS: &str = "ferrylb-lab-outside";
/// The lab's nodes.
pub const NODES: [&str; 3] = ["node1", "node2", "node3"];
/// The VIP pool, on the nodes' network.
pub const POOL: &str = "10.250.0.200-10.250.0.219,fd51::200-fd51::21f";

/// A running lab.
#[derive(Debug)]
pub struct Lab {
    pub dir: PathBuf,
    /// kube-apiserver, kubectl, kubelet … (from `tests/env/build-kube`).
    pub kube_bin: PathBuf,
    /// helm (from `tests/env/build-helm`).
    pub helm_bin: PathBuf,
}

static SHARED: OnceLock<Lab> = OnceLock::new();

/// The lab shared by this test binary: the one named by `FERRYLB_LAB_DIR`
/// when it runs, otherwise a new one tied to this process.
pub fn shared() -> &'static Lab {
    SHARED.get_or_init(|| {
        let dir = match std::env::var("FERRYLB_LAB_DIR") {
            Ok(d) if Path::new(&d).join("env").exists() => PathBuf::from(d),
            _ => {
                let dir = tempdir("ferrylb-lab");
                let mut up = Command::new(repo_root().join("tests/lab/up"));
                // The binary cargo built for these tests goes into the lab's
                // image (cargo cannot build again while it runs them).
                if let Some(bin) = option_env!("CARGO_BIN_EXE_ferrylb") {
                    up.env("FERRYLB_BINARY", bin);
                }
                let out = up
                    .arg("--dir")
                    .arg(&dir)
                    .arg("--watch-pid")
                    .arg(std::process::id().to_string())
                    .stderr(std::process::Stdio::inherit())
                    .output()
                    .expect("running tests/lab/up (needs root, bash, go)");
                assert!(
                    out.status.success(),
                    "tests/lab/up failed (see its output above)"
                );
                dir
            }
        };
        let env = std::fs::read_to_string(dir.join("env")).expect("reading the lab's env file");
        let path = env
            .lines()
            .find_map(|l| l.strip_prefix("export PATH="))
            .expect("PATH in the lab's env file");
        let mut parts = path.split(':');
        Lab {
            kube_bin: parts.next().unwrap().into(),
            helm_bin: parts.next().unwrap().into(),
            dir,
        }
    })
}

impl Lab {
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// An admin client.
    pub async fn client(&self) -> Client {
        let kc = Kubeconfig::read_from(self.kubeconfig()).expect("reading the lab kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .expect("lab client config");
        Client::try_from(config).expect("lab client")
    }

    /// Runs helm against the lab from the repository root.
    pub fn helm(&self, args: &[&str]) -> Output {
        Command::new(self.helm_bin.join("helm"))
            .args(args)
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .current_dir(repo_root())
            .output()
            .expect("running helm")
    }

    /// Runs kubectl against the lab and returns its output (stdout, then
    /// stderr), whatever happened: for what runs while a failure unwinds.
    pub fn kubectl_quiet(&self, args: &[&str]) -> String {
        Command::new(self.kube_bin.join("kubectl"))
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(args)
            .output()
            .map(|o| {
                let mut out = String::from_utf8_lossy(&o.stdout).into_owned();
                out.push_str(&String::from_utf8_lossy(&o.stderr));
                out
            })
            .unwrap_or_else(|e| format!("running kubectl: {e}"))
    }

    /// Runs kubectl against the lab; panics with its stderr when it fails.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let out = Command::new(self.kube_bin.join("kubectl"))
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(args)
            .output()
            .expect("running kubectl");
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `kubectl apply` of a YAML manifest.
    pub fn apply(&self, yaml: &str) {
        use std::io::Write as _;
        let mut child = Command::new(self.kube_bin.join("kubectl"))
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(["apply", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("running kubectl apply");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(yaml.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "kubectl apply: {}\n{yaml}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs `cmd` inside the lab namespace `ns` (e.g. `ferrylb-lab-node1`).
    pub fn in_ns(&self, ns: &str, cmd: &[&str]) -> Output {
        Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{ns}"))
            .args(cmd)
            .output()
            .expect("running nsenter")
    }

    /// One HTTP request from the client namespace: the echo server's answer,
    /// or `None` when the connection failed.
    pub fn fetch(&self, vip: &str, port: u16) -> Option<Answer> {
        let out = self.in_ns(
            CLIENT_NS,
            &["curl", "-sS", "-m", "2", &format!("http://{vip}:{port}/")],
        );
        out.status
            .success()
            .then(|| Answer::parse(&String::from_utf8_lossy(&out.stdout)))
            .flatten()
    }

    /// Starts a client in the client namespace opening `rate` new
    /// connections a second to `vip:port` until [`Probe::finish`].
    pub fn probe(&self, vip: &str, port: u16, rate: u32) -> Probe {
        self.probe_from(CLIENT_NS, vip, port, rate)
    }

    /// [`Self::probe`] whose client waits `timeout` for each connection
    /// (SYNs sent again meanwhile), as clients with a longer connect
    /// timeout than the probe's 2 s do.
    pub fn probe_patient(&self, vip: &str, port: u16, rate: u32, timeout: Duration) -> Probe {
        self.probe_with(
            CLIENT_NS,
            vip,
            port,
            rate,
            &["--timeout", &timeout.as_secs_f64().to_string()],
        )
    }

    /// `n` long-lived connections from the client namespace to `vip:port`,
    /// each sending a line a second that the echo server answers, until
    /// [`Probe::finish`]: `failed` counts the connections that broke.
    /// Returns once every connection is open (or failed: `finish` counts it).
    pub async fn probe_kept(&self, vip: &str, port: u16, n: u32) -> Probe {
        self.probe_kept_from(CLIENT_NS, vip, port, n).await
    }

    /// [`Self::probe_kept`] from the namespace `ns` (e.g. [`OUTSIDE_NS`]).
    pub async fn probe_kept_from(&self, ns: &str, vip: &str, port: u16, n: u32) -> Probe {
        let probe = self.probe_with(ns, vip, port, 1, &["--kept", &n.to_string()]);
        let ready = PathBuf::from(format!("{}.ready", probe.out.display()));
        super::wait::until(
            "the long-lived connections to open",
            Duration::from_secs(60),
            || {
                let ready = ready.clone();
                async move { ready.exists().then_some(()) }
            },
        )
        .await;
        probe
    }

    /// [`Self::probe`] from the namespace `ns` (e.g. [`OUTSIDE_NS`]).
    pub fn probe_from(&self, ns: &str, vip: &str, port: u16, rate: u32) -> Probe {
        self.probe_with(ns, vip, port, rate, &[])
    }

    fn probe_with(&self, ns: &str, vip: &str, port: u16, rate: u32, extra: &[&str]) -> Probe {
        let out = tempdir("ferrylb-probe").join("summary.json");
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/var/run/netns/{ns}"))
            .arg(repo_root().join("tests/lab/probe"))
            .arg("--target")
            .arg(format!("{vip}:{port}"))
            .arg("--rate")
            .arg(rate.to_string())
            .arg("--out")
            .arg(&out)
            .args(extra);
        let child = ChildGuard::spawn("probe", &mut cmd, &out.with_extension("log"));
        Probe { child, out }
    }
}

/// What the lab's echo server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub pod: String,
    pub node: String,
    pub client: String,
}

impl Answer {
    fn parse(body: &str) -> Option<Answer> {
        let field = |k: &str| {
            body.split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
                .map(str::to_owned)
        };
        Some(Answer {
            pod: field("pod")?,
            node: field("node")?,
            client: field("client")?,
        })
    }
}

/// A running client that counts answers and failures.
pub struct Probe {
    child: ChildGuard,
    out: PathBuf,
}

/// The counts a [`Probe`] reports.
#[derive(Debug, Clone, Deserialize)]
pub struct Summary {
    pub sent: u64,
    pub ok: u64,
    pub failed: u64,
    pub errors: std::collections::BTreeMap<String, u64>,
    pub nodes: std::collections::BTreeMap<String, u64>,
    pub pods: std::collections::BTreeMap<String, u64>,
    pub longest_gap_s: f64,
    pub duration_s: f64,
    /// Answered connections that took over 0.5 s (a SYN sent again).
    #[serde(default)]
    pub slow: u64,
    /// The longest an answered connection took.
    #[serde(default)]
    pub slowest_s: f64,
    /// The first failed attempts: seconds after `started_at`, and the error.
    #[serde(default)]
    pub failures: Vec<(f64, String)>,
    /// Unix time the client started, to match failures with logs.
    #[serde(default)]
    pub started_at: f64,
}

impl Probe {
    /// Stops the client (SIGTERM: it waits for connections in flight) and
    /// returns its counts.
    pub async fn finish(mut self) -> Summary {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.pid().to_string())
            .status();
        // It waits for the connections in flight (2 s at most each); at 100
        // a second over a minute that is thousands of threads to join.
        for _ in 0..600 {
            if !self.child.running() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let text = std::fs::read_to_string(&self.out).unwrap_or_else(|e| {
            panic!(
                "the probe wrote no summary ({e}); its log: {}",
                std::fs::read_to_string(self.out.with_extension("log")).unwrap_or_default()
            )
        });
        serde_json::from_str(&text).expect("parsing the probe's summary")
    }
}
