//! Network namespaces for tests that need real interfaces (root, as CI has).

use std::process::{Command, Output};

/// A network namespace of the test's own, removed when dropped (also when
/// the test fails).
pub struct Netns(pub String);

impl Netns {
    /// Creates `<prefix>-<pid>`.
    pub fn new(prefix: &str) -> Self {
        let ns = Netns(format!("{prefix}-{}", std::process::id()));
        let out = Command::new("ip")
            .args(["netns", "add", &ns.0])
            .output()
            .expect("ip is not installed");
        assert!(
            out.status.success(),
            "creating a network namespace needs root: {out:?}"
        );
        ns
    }

    /// `ip -n <ns> ARGS`, whatever its outcome.
    pub fn ip(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["-n", &self.0])
            .args(args)
            .output()
            .expect("ip is not installed")
    }

    /// `ip -n <ns> ARGS`, which must succeed.
    pub fn ip_ok(&self, args: &[&str]) {
        let out = self.ip(args);
        assert!(out.status.success(), "ip {args:?}: {out:?}");
    }

    /// An `eth0` that is up: one end of a veth pair whose other end, `eth1`,
    /// stays in the namespace too.
    pub fn with_eth0(&self) {
        self.ip_ok(&[
            "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
        ]);
        self.ip_ok(&["link", "set", "eth0", "up"]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

impl Netns {
    /// A wrapper script in `dir`, named as `program`, that runs `program`
    /// inside this namespace (for settings that take a binary's path).
    pub fn wrapper(&self, dir: &std::path::Path, program: &str) -> std::path::PathBuf {
        let name = std::path::Path::new(program).file_name().unwrap();
        let wrapper = dir.join(name);
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nexec ip netns exec {} {program} \"$@\"\n",
                self.0
            ),
        )
        .unwrap();
        Command::new("chmod")
            .arg("+x")
            .arg(&wrapper)
            .status()
            .unwrap();
        wrapper
    }
}

/// The path of the installed program `name` (Debian puts daemons in
/// /usr/sbin, which a non-login PATH may lack).
pub fn program(name: &str) -> String {
    for dir in ["/usr/sbin", "/usr/bin", "/sbin", "/bin"] {
        let p = format!("{dir}/{name}");
        if std::path::Path::new(&p).exists() {
            return p;
        }
    }
    panic!("{name} is not installed; tests/run installs it from Debian");
}

/// Waits until `ok` holds, checking every 100 ms for `within`.
pub async fn until(what: &str, within: std::time::Duration, mut ok: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if ok() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ok(), "{what} within {within:?}");
}
