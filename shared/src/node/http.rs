//! A tiny HTTP/1.1 server for health, metrics and status: `GET /health`, `GET /metrics`
//! and, where the node has one, `GET /status` (JSON); one request per connection (`Connection: close`). It parses only the request line
//! and never panics on what a client sends; plain HTTP, so bind it to a local or
//! management address.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};

/// The health check: `Ok(notes)` makes `/health` answer 200 with "ok" and the notes
/// (what is degraded but serving, one per line); `Err(reason)`, 503 with the reason.
pub type HealthCheck = Arc<dyn Fn() -> Result<Vec<String>, String> + Send + Sync>;
/// The body of `/metrics`, in the Prometheus text format.
pub type MetricsFn = Arc<dyn Fn() -> String + Send + Sync>;
/// The body of `/status`, a JSON document.
pub type StatusFn = Arc<dyn Fn() -> String + Send + Sync>;

/// A label value as the Prometheus text format writes it (`\\`, `"` and newlines
/// escaped).
pub fn label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Largest request head (request line and headers) read.
const MAX_HEAD: usize = 8 << 10;
/// How long a client has to send its request head (a probe sends it at once).
const HEAD_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections served at once; further ones wait to be accepted. Idle connections cost
/// a task each until [`HEAD_TIMEOUT`]: this many must not keep `/health` waiting (it
/// is what systemd, load balancers and Kubernetes probe).
const MAX_CONNECTIONS: usize = 4096;
/// The Prometheus text exposition format.
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// A running HTTP server.
pub struct HttpServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for HttpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpServer")
            .field("addr", &self.addr)
            .finish()
    }
}

struct Handlers {
    health: HealthCheck,
    metrics: MetricsFn,
    status: Option<StatusFn>,
}

impl HttpServer {
    /// Listens on `addr` (port 0 picks one) and serves `/health` from `health`,
    /// `/metrics` from `metrics` and `/status` from `status`.
    pub async fn start(
        addr: SocketAddr,
        health: HealthCheck,
        metrics: MetricsFn,
        status: Option<StatusFn>,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let handlers = Arc::new(Handlers {
            health,
            metrics,
            status,
        });
        let task = tokio::spawn(accept_loop(listener, handlers));
        Ok(HttpServer { addr, task })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops listening and drops every connection in progress.
    pub async fn shutdown(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

async fn accept_loop(listener: TcpListener, handlers: Arc<Handlers>) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    // Owns the connection tasks: aborting this loop aborts them all.
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let Ok(permit) = limit.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, _)) => {
                let handlers = handlers.clone();
                conns.spawn(async move {
                    serve(stream, &handlers).await;
                    drop(permit);
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: wait a little rather than spin.
                tracing::warn!(error = %e, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// A response: status, extra headers, body.
struct Response {
    status: u16,
    reason: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    content_type: &'static str,
    body: String,
}

impl Response {
    fn text(status: u16, reason: &'static str, body: impl Into<String>) -> Self {
        Response {
            status,
            reason,
            headers: Vec::new(),
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }

    fn encode(&self, head_only: bool) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len()
        );
        for (k, v) in &self.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str("\r\n");
        if !head_only {
            out.push_str(&self.body);
        }
        out.into_bytes()
    }
}

async fn serve(mut stream: TcpStream, handlers: &Handlers) {
    let (response, head_only) =
        match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream)).await {
            Err(_) => (
                Response::text(408, "Request Timeout", "request timeout\n"),
                false,
            ),
            Ok(Err(HeadError::Closed)) => return,
            Ok(Err(HeadError::Bad(why))) => (
                Response::text(400, "Bad Request", format!("bad request: {why}\n")),
                false,
            ),
            Ok(Ok(head)) => match parse_request_line(&head) {
                Ok((method, path)) => (route(method, path, handlers), method == "HEAD"),
                Err(why) => (
                    Response::text(400, "Bad Request", format!("bad request: {why}\n")),
                    false,
                ),
            },
        };
    let _ = stream.write_all(&response.encode(head_only)).await;
    let _ = stream.shutdown().await;
    // Closing with unread input would reset the connection, and the client could lose
    // the response: read what is left (briefly, boundedly) before closing.
    let drain = async {
        let mut chunk = [0u8; 1024];
        let mut left = MAX_HEAD * 8;
        while let Ok(n @ 1..) = stream.read(&mut chunk).await {
            left = left.saturating_sub(n);
            if left == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

fn route(method: &str, path: &str, h: &Handlers) -> Response {
    let path = path.split(['?', '#']).next().unwrap_or(path);
    let known = match path {
        "/health" | "/metrics" => true,
        "/status" => h.status.is_some(),
        _ => false,
    };
    if !known {
        return Response::text(404, "Not Found", "not found\n");
    }
    if method != "GET" && method != "HEAD" {
        let mut r = Response::text(405, "Method Not Allowed", "method not allowed\n");
        r.headers.push(("Allow", "GET, HEAD"));
        return r;
    }
    match (path, &h.status) {
        ("/health", _) => match (h.health)() {
            Ok(notes) => {
                let body: String = std::iter::once("ok".to_string())
                    .chain(notes)
                    .map(|l| l + "\n")
                    .collect();
                Response::text(200, "OK", body)
            }
            Err(why) => Response::text(503, "Service Unavailable", format!("{why}\n")),
        },
        ("/status", Some(status)) => {
            let mut r = Response::text(200, "OK", status());
            r.content_type = "application/json";
            r
        }
        _ => {
            let mut r = Response::text(200, "OK", (h.metrics)());
            r.content_type = METRICS_CONTENT_TYPE;
            r
        }
    }
}

enum HeadError {
    /// The client closed without sending anything.
    Closed,
    /// Not an HTTP/1 request head.
    Bad(&'static str),
}

/// Reads up to the blank line ending the request head.
async fn read_head(stream: &mut TcpStream) -> Result<Vec<u8>, HeadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|_| HeadError::Closed)?;
        if n == 0 {
            return Err(if buf.is_empty() {
                HeadError::Closed
            } else {
                HeadError::Bad("incomplete request head")
            });
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = head_end(&buf) {
            buf.truncate(end);
            return Ok(buf);
        }
        if buf.len() > MAX_HEAD {
            return Err(HeadError::Bad("request head too large"));
        }
    }
}

/// Where the head ends (`\r\n\r\n`, or bare `\n\n`), if it has.
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = buf.windows(2).position(|w| w == b"\n\n");
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// `METHOD TARGET HTTP/1.x` → (method, target).
fn parse_request_line(head: &[u8]) -> Result<(&str, &str), &'static str> {
    let line = head.split(|&b| b == b'\n').next().unwrap_or(head);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let line = std::str::from_utf8(line).map_err(|_| "request line is not UTF-8")?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("request line is not METHOD TARGET VERSION");
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err("bad method");
    }
    if !target.starts_with('/') {
        return Err("target must be a path");
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err("only HTTP/1.0 and HTTP/1.1 are spoken");
    }
    Ok((method, target))
}

/// GETs `/status` from a node's HTTP address (what `tributary-edge status` and
/// `tributary-cloud status` show) and decodes the JSON document.
pub async fn fetch_status<T: serde::de::DeserializeOwned>(addr: SocketAddr) -> Result<T, String> {
    let io = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(b"GET /status HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n")
            .await?;
        let mut buf = Vec::new();
        s.take(64 << 20).read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let buf = match tokio::time::timeout(Duration::from_secs(10), io).await {
        Err(_) => return Err(format!("{addr}: no answer in 10 s")),
        Ok(Err(e)) => return Err(format!("is the node running? (HTTP {addr}): {e}")),
        Ok(Ok(buf)) => buf,
    };
    let text = String::from_utf8_lossy(&buf);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Err(format!("{addr}: not an HTTP response"));
    };
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("{addr}: {}", head.lines().next().unwrap_or("")));
    }
    serde_json::from_str(body).map_err(|e| format!("{addr}: not a status document: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    struct Reply {
        status: u16,
        head: String,
        body: String,
    }

    async fn request(addr: SocketAddr, raw: &[u8]) -> Reply {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(raw).await.expect("send");
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.expect("read reply");
        let text = String::from_utf8(out).expect("utf-8 reply");
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status code");
        Reply {
            status,
            head: head.to_string(),
            body: body.to_string(),
        }
    }

    async fn get(addr: SocketAddr, path: &str) -> Reply {
        request(
            addr,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        )
        .await
    }

    async fn server(healthy: Arc<AtomicBool>) -> HttpServer {
        HttpServer::start(
            ([127, 0, 0, 1], 0).into(),
            Arc::new(move || {
                if healthy.load(Ordering::SeqCst) {
                    Ok(Vec::new())
                } else {
                    Err("log failed".into())
                }
            }),
            Arc::new(|| "tributary_up 1\n".to_string()),
            Some(Arc::new(|| "{\"streams\":[]}".to_string())),
        )
        .await
        .expect("start")
    }

    /// What probes need: `/health` answered at once while 1,000 clients hold idle
    /// connections (before, 64 of them delayed it by 10 s; 1,000 blocked it).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn health_answers_within_a_second_past_a_thousand_idle_connections() {
        let s = server(Arc::new(AtomicBool::new(true))).await;
        let addr = s.local_addr();
        let mut idle = Vec::new();
        for _ in 0..1000 {
            idle.push(TcpStream::connect(addr).await.expect("idle connection"));
        }
        let started = std::time::Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(5), get(addr, "/health"))
            .await
            .expect("an answer");
        let took = started.elapsed();
        assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));
        assert!(took < Duration::from_secs(1), "/health took {took:?}");
        // The idle ones are answered and closed once their head timeout passes.
        let mut rest = Vec::new();
        tokio::time::timeout(HEAD_TIMEOUT * 3, idle[0].read_to_end(&mut rest))
            .await
            .expect("closed by the server")
            .expect("read");
        assert!(rest.starts_with(b"HTTP/1.1 4"), "{rest:?}");
        drop(idle);
        s.shutdown().await;
    }

    #[tokio::test]
    async fn health_and_metrics() {
        let healthy = Arc::new(AtomicBool::new(true));
        let s = server(healthy.clone()).await;
        let addr = s.local_addr();

        let r = get(addr, "/health").await;
        assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));
        assert!(r.head.contains("Connection: close"), "{}", r.head);

        healthy.store(false, Ordering::SeqCst);
        let r = get(addr, "/health").await;
        assert_eq!((r.status, r.body.as_str()), (503, "log failed\n"));

        let r = get(addr, "/metrics?x=1").await;
        assert_eq!(r.status, 200);
        assert!(
            r.head
                .contains("Content-Type: text/plain; version=0.0.4\r\n"),
            "{}",
            r.head
        );
        assert_eq!(r.body, "tributary_up 1\n");

        let r = request(addr, b"HEAD /metrics HTTP/1.0\n\n").await;
        assert_eq!((r.status, r.body.as_str()), (200, ""));
        assert!(r.head.contains("Content-Length: 15"), "{}", r.head);

        let r = get(addr, "/status").await;
        assert_eq!((r.status, r.body.as_str()), (200, "{\"streams\":[]}"));
        assert!(
            r.head.contains("Content-Type: application/json"),
            "{}",
            r.head
        );

        assert_eq!(get(addr, "/").await.status, 404);
        assert_eq!(get(addr, "/healthz").await.status, 404);
        let r = request(addr, b"POST /health HTTP/1.1\r\n\r\n").await;
        assert_eq!(r.status, 405);
        assert!(r.head.contains("Allow: GET, HEAD"), "{}", r.head);
        s.shutdown().await;
        assert!(TcpStream::connect(addr).await.is_err(), "still listening");
    }

    #[tokio::test]
    async fn bad_requests_get_400_and_the_server_goes_on() {
        let s = server(Arc::new(AtomicBool::new(true))).await;
        let addr = s.local_addr();
        let bad: [&[u8]; 9] = [
            b"\r\n\r\n",
            b"GET\r\n\r\n",
            b"GET /health\r\n\r\n",
            b"GET /health HTTP/1.1 extra\r\n\r\n",
            b"GET /health HTTP/2.0\r\n\r\n",
            b"get /health HTTP/1.1\r\n\r\n",
            b"GET health HTTP/1.1\r\n\r\n",
            b"GET /\xff\xfe HTTP/1.1\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ];
        for raw in bad {
            let r = request(addr, raw).await;
            assert_eq!(
                r.status,
                400,
                "{:?}: {}",
                String::from_utf8_lossy(raw),
                r.head
            );
        }
        // Too large a head, and a head cut short by the client.
        let mut big = b"GET /health HTTP/1.1\r\nX: ".to_vec();
        big.resize(MAX_HEAD + 100, b'a');
        assert_eq!(request(addr, &big).await.status, 400);
        let mut c = TcpStream::connect(addr).await.expect("connect");
        c.write_all(b"GET /health HTTP/1.1\r\n")
            .await
            .expect("send");
        c.shutdown().await.expect("half close");
        let mut out = Vec::new();
        c.read_to_end(&mut out).await.expect("read");
        assert!(out.starts_with(b"HTTP/1.1 400 "), "{out:?}");
        // A client that connects and leaves.
        drop(TcpStream::connect(addr).await.expect("connect"));

        assert_eq!(get(addr, "/health").await.status, 200);
        s.shutdown().await;
    }
}
