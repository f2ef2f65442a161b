//! The UDP socket under every QUIC endpoint of the service, server and client.
//!
//! Linux gives a UDP socket a 208 KiB receive buffer by default. A QUIC sender on a
//! fast path fills that in well under a millisecond, and every datagram that arrives
//! while it is full is dropped: on loopback, a replication stream lost 45 % of its
//! datagrams that way and ran at the pace of loss recovery. Endpoints therefore ask for
//! [`RECV_BUFFER`]; the kernel caps the request at `net.core.rmem_max`.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;

use socket2::{Domain, Protocol, Socket, Type};

/// The receive buffer asked for: 4 MiB, about 4 ms of a 1 GB/s stream.
pub const RECV_BUFFER: usize = 4 << 20;

/// A QUIC endpoint bound to `addr`: a server if `server` is given, otherwise a client.
/// A server whose buffer the kernel caps below [`RECV_BUFFER`] says so once, naming the
/// setting to raise.
pub fn quic_endpoint(
    addr: SocketAddr,
    server: Option<quinn::ServerConfig>,
) -> io::Result<quinn::Endpoint> {
    let (socket, granted) = bind(addr)?;
    if server.is_some() && granted < RECV_BUFFER {
        tracing::warn!(
            granted,
            wanted = RECV_BUFFER,
            "the kernel capped the QUIC socket's receive buffer; fast senders will see \
             drops and slow down. Raise it with: sysctl -w net.core.rmem_max={RECV_BUFFER}"
        );
    }
    let mut config = quinn::EndpointConfig::default();
    // quinn accepts 1472 bytes by default, which also caps what path MTU discovery may
    // reach on this endpoint's connections.
    config
        .max_udp_payload_size(crate::tls::MAX_UDP_PAYLOAD)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let runtime: Arc<dyn quinn::Runtime> = Arc::new(quinn::TokioRuntime);
    quinn::Endpoint::new(config, server, socket, runtime)
}

/// A UDP socket bound to `addr` with [`RECV_BUFFER`] asked for, and the receive buffer
/// the kernel granted.
fn bind(addr: SocketAddr) -> io::Result<(UdpSocket, usize)> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_recv_buffer_size(RECV_BUFFER)?;
    socket.bind(&addr.into())?;
    // Linux reports twice what it grants (the kernel's bookkeeping share included).
    let granted = socket.recv_buffer_size()? / 2;
    Ok((socket.into(), granted))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_gets_the_buffer_the_kernel_allows() {
        let max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .expect("rmem_max")
            .trim()
            .parse()
            .expect("a number");
        let (socket, granted) = bind(([127, 0, 0, 1], 0).into()).expect("bind");
        assert_eq!(granted, RECV_BUFFER.min(max));
        assert!(socket.local_addr().expect("addr").port() > 0);
    }

    /// Loopback carries 64 KiB packets, so a connection's MTU discovery goes past
    /// Ethernet's 1472 bytes towards `MAX_UDP_PAYLOAD` (it may stop a little short when
    /// a probe is dropped by a full socket buffer), and its batches get through: were
    /// they larger than the kernel takes in one send, every full batch would be lost and
    /// quinn would fall back to 1200-byte packets (what 8952 did). Without the endpoint
    /// setting, discovery stops at 1472.
    #[tokio::test]
    async fn a_loopback_connection_grows_its_packets_to_the_largest_payload() {
        use crate::tls::{client_config, server_config, DevPki, MAX_UDP_PAYLOAD};
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = DevPki::ensure(dir.path(), "test-client").expect("pki");
        let localhost = ([127, 0, 0, 1], 0).into();
        let server = quic_endpoint(localhost, Some(server_config(&pki.server).expect("tls")))
            .expect("server");
        let addr = server.local_addr().expect("addr");
        let receiver = tokio::spawn(async move {
            let conn = server
                .accept()
                .await
                .expect("incoming")
                .await
                .expect("conn");
            let mut recv = conn.accept_uni().await.expect("stream");
            recv.read_to_end(usize::MAX).await.expect("read").len()
        });
        let mut client = quic_endpoint(localhost, None).expect("client");
        client.set_default_client_config(client_config(&pki.client).expect("tls"));
        let conn = client
            .connect(addr, "localhost")
            .expect("connect")
            .await
            .expect("handshake");
        let mut send = conn.open_uni().await.expect("stream");
        let block = bytes::Bytes::from(vec![7u8; 1 << 20]);
        for _ in 0..64 {
            send.write_chunk(block.clone()).await.expect("send");
        }
        send.finish().expect("finish");
        assert_eq!(receiver.await.expect("receiver"), 64 << 20);
        let path = conn.stats().path;
        assert!(
            path.current_mtu > 1472 && path.current_mtu <= MAX_UDP_PAYLOAD,
            "MTU {}; {} of {} packets lost",
            path.current_mtu,
            path.lost_packets,
            path.sent_packets
        );
    }
}
