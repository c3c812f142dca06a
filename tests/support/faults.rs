//! A fault-injecting HTTP proxy in front of moto: it throttles some
//! requests before they reach moto, and lets others through but answers
//! them with a 503, as if the response had been lost after AWS acted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Which requests fail: a fixed pseudo-random choice by sequence number,
/// so runs repeat but no call is always the unlucky one.
#[derive(Debug, Clone, Copy)]
pub struct Pattern {
    /// Percentage of requests throttled (they never reach moto).
    pub throttle_percent: u64,
    /// Percentage of requests that reach moto but whose answer becomes a 503.
    pub lose_percent: u64,
}

impl Pattern {
    fn roll(n: u64, salt: u64) -> u64 {
        (n.wrapping_add(salt).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) % 100
    }
}

struct Shared {
    upstream: String,
    client: Client<HttpConnector, Body>,
    pattern: Pattern,
    n: AtomicU64,
    pub injected: AtomicU64,
}

/// A running proxy; stops when dropped.
pub struct FaultProxy {
    pub endpoint: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    pub async fn start(upstream: &str, pattern: Pattern) -> Self {
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_owned(),
            client: Client::builder(TokioExecutor::new()).build_http(),
            pattern,
            n: AtomicU64::new(0),
            injected: AtomicU64::new(0),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            endpoint: format!("http://{addr}"),
            shared,
            task,
        }
    }

    /// How many faults were injected.
    pub fn injected(&self) -> u64 {
        self.shared.injected.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The API a request is for, by its wire protocol.
#[derive(Clone, Copy)]
enum Api {
    /// JSON (the tagging API).
    Json,
    /// EC2's query protocol, with its own error shape.
    Ec2,
    /// ELBv2's query protocol.
    Elb,
}

fn throttled(api: Api) -> Response {
    let (ctype, body) = match api {
        Api::Json => (
            "application/x-amz-json-1.1",
            r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#.to_owned(),
        ),
        Api::Ec2 => (
            "text/xml",
            "<Response><Errors><Error><Code>RequestLimitExceeded</Code>\
             <Message>Request limit exceeded.</Message></Error></Errors>\
             <RequestID>fault</RequestID></Response>"
                .to_owned(),
        ),
        Api::Elb => (
            "text/xml",
            "<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code>\
             <Message>Rate exceeded</Message></Error><RequestId>fault</RequestId></ErrorResponse>"
                .to_owned(),
        ),
    };
    Response::builder()
        .status(400)
        .header("content-type", ctype)
        .body(Body::from(body))
        .unwrap()
}

async fn forward(State(s): State<Arc<Shared>>, req: Request) -> Response {
    let n = s.n.fetch_add(1, Ordering::SeqCst) + 1;
    let json = req.headers().contains_key("x-amz-target");
    let (mut parts, body) = req.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    if Pattern::roll(n, 1) < s.pattern.throttle_percent {
        s.injected.fetch_add(1, Ordering::SeqCst);
        let api = if json {
            Api::Json
        } else if bytes.windows(18).any(|w| w == b"Version=2016-11-15") {
            Api::Ec2
        } else {
            Api::Elb
        };
        return throttled(api);
    }
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = format!("{}{path}", s.upstream).parse().unwrap();
    parts.headers.remove("host");
    let upstream = hyper::Request::from_parts(parts, Body::from(bytes));
    let resp = s.client.request(upstream).await.unwrap();
    if Pattern::roll(n, 7) < s.pattern.lose_percent {
        s.injected.fetch_add(1, Ordering::SeqCst);
        return Response::builder().status(503).body(Body::empty()).unwrap();
    }
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    Response::from_parts(parts, Body::from(bytes))
}
