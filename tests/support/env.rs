//! The test environment: a real kube-apiserver (with etcd) and a moto server,
//! started by `tests/env/up`, either already running (attach) or started for
//! this test binary and stopped when it exits.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Where `tests/env/up` keeps the running environment and how to reach it.
#[derive(Debug, Clone)]
pub struct TestEnv {
    /// The environment's state directory (pid files, logs, certificates).
    pub dir: PathBuf,
}

static SHARED: OnceLock<TestEnv> = OnceLock::new();

/// The repository root (where `Cargo.toml` of the workspace lives).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The environment shared by every test of this binary.
///
/// Attaches to the environment named by `FERRYLB_ENV_DIR` when that
/// directory holds a running one (as `.ci/run` and `tests/run` arrange);
/// otherwise starts one in a fresh directory, tied to this process so it
/// stops when the test binary exits, panics included.
pub fn shared() -> &'static TestEnv {
    SHARED.get_or_init(|| {
        if let Ok(dir) = std::env::var("FERRYLB_ENV_DIR") {
            let dir = PathBuf::from(dir);
            if dir.join("env").exists() {
                return TestEnv { dir };
            }
        }
        TestEnv::start_private(&["kube", "aws"])
    })
}

impl TestEnv {
    /// Starts a new environment with the given components (`kube`, `aws`)
    /// that belongs to this test binary alone, for tests that stop and
    /// restart its servers. It stops when this process exits.
    pub fn start_private(components: &[&str]) -> TestEnv {
        let dir = tempdir("ferrylb-env");
        run_up(&dir, components, true);
        TestEnv { dir }
    }

    /// Path of the admin kubeconfig.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// moto's endpoint URL, e.g. `http://127.0.0.1:4566`.
    pub fn aws_endpoint(&self) -> String {
        let port = read_trimmed(&self.dir.join("moto.port"));
        format!("http://127.0.0.1:{port}")
    }

    /// Directory holding the kube-apiserver, etcd and kubectl binaries.
    pub fn kube_bin(&self) -> PathBuf {
        PathBuf::from(read_trimmed(&self.dir.join("kube-bin")))
    }

    /// Stops one server (`apiserver`, `etcd` or `moto`) of this environment.
    pub fn stop(&self, component: &str) {
        let status = Command::new(repo_root().join("tests/env/down"))
            .arg("--dir")
            .arg(&self.dir)
            .arg(component)
            .status()
            .expect("running tests/env/down");
        assert!(status.success(), "tests/env/down {component} failed");
    }

    /// Starts again whatever of `components` is not running, on the same
    /// ports, certificates and data.
    pub fn start(&self, components: &[&str]) {
        run_up(&self.dir, components, false);
    }
}

fn run_up(dir: &Path, components: &[&str], remove_after: bool) {
    let mut cmd = Command::new(repo_root().join("tests/env/up"));
    cmd.arg("--dir")
        .arg(dir)
        .arg("--watch-pid")
        .arg(std::process::id().to_string());
    if remove_after {
        cmd.arg("--remove-after");
    }
    let out = cmd
        .args(components)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run tests/env/up ({e}); it needs bash, go, python3 and openssl, which .ci/run installs")
        });
    assert!(
        out.status.success(),
        "tests/env/up failed; the test environment could not start. \
         .ci/run installs what it needs (Go toolchain for kube-apiserver/etcd, python3-venv for moto).\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn read_trimmed(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .trim()
        .to_owned()
}

/// A new, empty directory under the system temporary directory.
pub fn tempdir(prefix: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating a temporary directory");
    dir
}
