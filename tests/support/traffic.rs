//! Real traffic for the HAProxy tests: stand-in node listeners, health
//! endpoints, and clients that count what answered.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;

/// A TCP server that answers every connection with its name and closes;
/// stops when dropped.
pub struct Answerer(JoinHandle<()>);

impl Drop for Answerer {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Listens on `ip:port` and runs `handle` for each connection, until the
/// [`Answerer`] is dropped.
async fn serve<F, Fut>(ip: &str, port: u16, handle: F) -> Answerer
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind((ip, port))
        .await
        .unwrap_or_else(|e| panic!("binding {ip}:{port}: {e}"));
    Answerer(tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            tokio::spawn(handle(conn));
        }
    }))
}

/// Listens on `ip:port` and answers each connection with `name`.
pub async fn answer(ip: &str, port: u16, name: &str) -> Answerer {
    let name = name.to_owned();
    serve(ip, port, move |mut conn| {
        let name = name.clone();
        async move {
            let _ = conn.write_all(name.as_bytes()).await;
        }
    })
    .await
}

/// A stand-in node that answers like [`answer`] until [`Freezable::freeze`],
/// and then answers nothing at all, as a dead host does: it stops
/// accepting, its accept queue fills, and the kernel drops every new SYN
/// (no refusal, no answer; connects and checks time out).
pub struct Freezable {
    addr: SocketAddr,
    stop: std::sync::Arc<tokio::sync::Notify>,
    accepting: Option<JoinHandle<()>>,
    _listener: std::sync::Arc<TcpListener>,
    /// Connections that fill the accept queue, never accepted.
    held: Vec<tokio::net::TcpStream>,
}

impl Drop for Freezable {
    fn drop(&mut self) {
        if let Some(t) = &self.accepting {
            t.abort();
        }
    }
}

/// Listens on `ip:port` (a queue of one connection) and answers each
/// connection with `name`, until frozen.
pub async fn answer_freezable(ip: &str, port: u16, name: &str) -> Freezable {
    let addr: SocketAddr = format!("{ip}:{port}").parse().unwrap();
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket
        .bind(addr)
        .unwrap_or_else(|e| panic!("binding {addr}: {e}"));
    let listener = std::sync::Arc::new(socket.listen(1).unwrap());
    let stop = std::sync::Arc::new(tokio::sync::Notify::new());
    let (l, s, name) = (listener.clone(), stop.clone(), name.to_owned());
    let accepting = tokio::spawn(async move {
        loop {
            tokio::select! {
                () = s.notified() => break,
                r = l.accept() => if let Ok((mut conn, _)) = r {
                    let name = name.clone();
                    tokio::spawn(async move {
                        let _ = conn.write_all(name.as_bytes()).await;
                    });
                }
            }
        }
    });
    Freezable {
        addr,
        stop,
        accepting: Some(accepting),
        _listener: listener,
        held: Vec::new(),
    }
}

impl Freezable {
    /// Stops answering: returns once a connection to it went unanswered.
    pub async fn freeze(&mut self) {
        self.stop.notify_one();
        if let Some(t) = self.accepting.take() {
            let _ = t.await;
        }
        for _ in 0..32 {
            let connect = tokio::net::TcpStream::connect(self.addr);
            match tokio::time::timeout(Duration::from_millis(300), connect).await {
                Ok(Ok(c)) => self.held.push(c),
                Ok(Err(e)) => panic!("{} refused instead of filling up: {e}", self.addr),
                Err(_) => return,
            }
        }
        panic!("{}'s accept queue never filled", self.addr);
    }
}

/// Like [`answer`], and a client that opens with `keep\n` keeps the
/// connection: each line it sends is answered with `name` and a newline,
/// until it closes (a long-lived connection). Others are answered after
/// 100 ms of silence.
pub async fn answer_kept(ip: &str, port: u16, name: &str) -> Answerer {
    let name = name.to_owned();
    serve(ip, port, move |mut conn| {
        let name = name.clone();
        async move {
            let mut buf = [0u8; 64];
            let first = tokio::time::timeout(Duration::from_millis(100), conn.read(&mut buf));
            let mut n = match first.await {
                Ok(Ok(n)) if buf[..n].starts_with(b"keep\n") => n,
                _ => {
                    let _ = conn.write_all(name.as_bytes()).await;
                    return;
                }
            };
            // One answer for each line after `keep`.
            let mut owed = buf[..n].iter().filter(|b| **b == b'\n').count() - 1;
            let line = format!("{name}\n");
            loop {
                for _ in 0..owed {
                    if conn.write_all(line.as_bytes()).await.is_err() {
                        return;
                    }
                }
                n = match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                owed = buf[..n].iter().filter(|b| **b == b'\n').count();
            }
        }
    })
    .await
}

/// A long-lived connection to a server of [`answer_kept`].
pub struct Kept {
    conn: tokio::net::TcpStream,
    /// The name that answered it.
    pub name: String,
}

impl Kept {
    /// Opens one to `addr`.
    pub async fn open(addr: SocketAddr) -> Option<Kept> {
        let mut conn =
            tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
                .await
                .ok()?
                .ok()?;
        conn.write_all(b"keep\n").await.ok()?;
        let mut k = Kept {
            conn,
            name: String::new(),
        };
        k.name = k.ask().await?;
        Some(k)
    }

    /// Sends a line and returns the answer; `None` once the connection
    /// is broken or closed.
    pub async fn ask(&mut self) -> Option<String> {
        let io = async {
            self.conn.write_all(b"ping\n").await.ok()?;
            let mut out = Vec::new();
            let mut byte = [0u8; 1];
            while out.last() != Some(&b'\n') {
                let n = self.conn.read(&mut byte).await.ok()?;
                if n == 0 {
                    return None;
                }
                out.push(byte[0]);
            }
            Some(String::from_utf8_lossy(&out).trim().to_owned())
        };
        tokio::time::timeout(Duration::from_secs(5), io)
            .await
            .ok()
            .flatten()
    }
}

/// Listens on `ip:port` and answers every HTTP request with `status`, as
/// kube-proxy's health check node port does.
pub async fn health(ip: &str, port: u16, status: u16) -> Answerer {
    serve(ip, port, move |mut conn| async move {
        let mut buf = [0u8; 1024];
        let _ = conn.read(&mut buf).await;
        let reason = if status == 200 {
            "OK"
        } else {
            "Service Unavailable"
        };
        let resp =
            format!("HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        let _ = conn.write_all(resp.as_bytes()).await;
    })
    .await
}

/// Connects to `addr` (from `from`, if given) and returns what the server
/// said, or `None` if the connection failed or closed silently.
pub async fn reply_from(addr: SocketAddr, from: Option<&str>) -> Option<String> {
    let io = async {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .ok()?;
        if let Some(src) = from {
            socket.bind(format!("{src}:0").parse().ok()?).ok()?;
        }
        let mut conn = socket.connect(addr).await.ok()?;
        let mut out = String::new();
        conn.read_to_string(&mut out).await.ok()?;
        (!out.is_empty()).then_some(out)
    };
    tokio::time::timeout(Duration::from_secs(5), io)
        .await
        .ok()
        .flatten()
}

/// What answered `n` connections to `addr` (failures are left out).
pub async fn sample(addr: SocketAddr, n: usize) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for _ in 0..n {
        if let Some(r) = reply_from(addr, None).await {
            seen.insert(r);
        }
    }
    seen
}

/// A set of names.
pub fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}
