//! The test node shared by the stream tests: a segment server with its controller on
//! 127.0.0.1 with a development PKI, restartable on the same address and data.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tributary::controller::Controller;
use tributary::log::{LogConfig, SegmentLog};
use tributary::service::{Access, Client, SegmentServer};
use tributary::stream::{RetentionPolicy, ScalingPolicy, StreamConfig};
use tributary::tls::{client_config, server_config, transport, DevPki};

pub struct Node {
    pub dir: tempfile::TempDir,
    pub pki: DevPki,
    pub server: Option<SegmentServer>,
    pub controller: Option<Arc<Controller>>,
    pub addr: SocketAddr,
}

pub async fn serve(
    data: &Path,
    pki: &DevPki,
    addr: SocketAddr,
) -> (SegmentServer, Arc<Controller>) {
    serve_with(data, pki, addr, Access::open()).await
}

/// A server whose clients may do what `access` grants.
pub async fn serve_with(
    data: &Path,
    pki: &DevPki,
    addr: SocketAddr,
    access: Access,
) -> (SegmentServer, Arc<Controller>) {
    let log = Arc::new(SegmentLog::open(data, LogConfig::default()).expect("log"));
    let controller = Arc::new(Controller::open(log).await.expect("controller"));
    let tls = server_config(&pki.server).expect("server tls");
    let server = SegmentServer::start(addr, tls, controller.clone(), access).expect("start");
    (server, controller)
}

impl Node {
    pub async fn start() -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = DevPki::ensure(&dir.path().join("pki"), "test-client").expect("pki");
        let (server, controller) =
            serve(&dir.path().join("data"), &pki, ([127, 0, 0, 1], 0).into()).await;
        let addr = server.local_addr().expect("addr");
        Node {
            dir,
            pki,
            server: Some(server),
            controller: Some(controller),
            addr,
        }
    }

    pub async fn restart(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
        self.controller = None;
        let (server, controller) = serve(&self.dir.path().join("data"), &self.pki, self.addr).await;
        self.server = Some(server);
        self.controller = Some(controller);
    }

    pub fn controller(&self) -> &Controller {
        self.controller.as_ref().expect("running")
    }

    pub async fn client(&self) -> Client {
        connect(self.addr, &self.pki).await
    }
}

pub async fn connect(addr: SocketAddr, pki: &DevPki) -> Client {
    let mut tls = client_config(&pki.client).expect("client tls");
    // A SIGKILLed server is noticed after this much silence.
    tls.transport_config(transport(Duration::from_millis(1500)));
    Client::connect(addr, "localhost", tls)
        .await
        .expect("connect")
}

pub fn fixed(n: u32) -> StreamConfig {
    StreamConfig {
        scaling: ScalingPolicy::Fixed { segments: n },
        retention: RetentionPolicy::Forever,
    }
}
