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
