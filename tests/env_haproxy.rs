//! The test environment's HAProxy is the real binary carrying real traffic.

mod support;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use support::process::{ChildGuard, require_program};
use support::{env, wait};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A TCP listener that answers every connection with `name` and closes.
async fn answering_listener(addr: &str, name: &'static str) -> u16 {
    let listener = TcpListener::bind(addr)
        .await
        .expect("binding a test listener");
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = conn.write_all(name.as_bytes()).await;
            });
        }
    });
    port
}

fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn read_reply(addr: &str) -> Option<String> {
    let mut conn = TcpStream::connect(addr).await.ok()?;
    let mut buf = String::new();
    conn.read_to_string(&mut buf).await.ok()?;
    (!buf.is_empty()).then_some(buf)
}

#[tokio::test]
async fn haproxy_forwards_a_loopback_address_to_two_listeners() {
    let haproxy = require_program(
        "haproxy",
        ".ci/run installs it with `apt-get install haproxy`",
    );
    let dir = env::tempdir("haproxy");
    let a = answering_listener("127.0.0.21:0", "backend-a").await;
    let b = answering_listener("127.0.0.22:0", "backend-b").await;
    let front = format!("127.0.0.20:{}", free_port("127.0.0.20"));
    let cfg = format!(
        "global\n  maxconn 100\n\
         defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 10s\n  timeout server 10s\n\
         frontend fe\n  bind {front}\n  default_backend be\n\
         backend be\n  balance roundrobin\n  server a 127.0.0.21:{a}\n  server b 127.0.0.22:{b}\n"
    );
    let cfg_path = dir.join("haproxy.cfg");
    std::fs::write(&cfg_path, cfg).unwrap();

    let check = Command::new(&haproxy)
        .arg("-c")
        .arg("-f")
        .arg(&cfg_path)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "haproxy -c rejected the config: {check:?}"
    );

    let _proxy = ChildGuard::spawn(
        "haproxy",
        Command::new(&haproxy)
            .arg("-W")
            .arg("-db")
            .arg("-f")
            .arg(&cfg_path),
        &dir.join("haproxy.log"),
    );

    wait::until("haproxy to accept", Duration::from_secs(10), || {
        read_reply(&front)
    })
    .await;
    let mut seen = BTreeSet::new();
    for _ in 0..10 {
        seen.insert(read_reply(&front).await.expect("a reply through haproxy"));
    }
    assert_eq!(
        seen,
        BTreeSet::from(["backend-a".to_owned(), "backend-b".to_owned()]),
        "round-robin through haproxy should reach both listeners"
    );
}
