//! Names outside the cluster go to an upstream resolver: the first `nameserver` of the
//! DNS pod's own `resolv.conf` (its `dnsPolicy: Default` gives it the node's) that a pod
//! can reach — not a loopback address, which inside a pod is the pod itself (the
//! mistake CoreDNS's `loop` plugin exists to catch). One UDP exchange per question,
//! with a deadline; the answer is relayed as it came.
//!
//! Upstream: coredns/coredns plugin/forward (forward.go, connect.go)

use hickory_server::proto::op::Message;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::net::UdpSocket;

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("upstream {0}: {1}")]
    Io(SocketAddr, std::io::Error),
    #[error("upstream {0} did not answer within {1:?}")]
    Timeout(SocketAddr, Duration),
    #[error("upstream {0} sent an answer that is not DNS: {1}")]
    Garbled(SocketAddr, String),
}

/// Where forwarded questions go.
#[derive(Clone, Debug)]
pub struct Upstream {
    pub addr: SocketAddr,
    pub timeout: Duration,
}

/// The first usable `nameserver` of a `resolv.conf` (none is loopback), port 53.
pub fn from_resolv_conf(text: &str) -> Option<SocketAddr> {
    let r = pkg::kubelet::dns::Resolv::parse(text);
    r.nameservers.iter().filter_map(|n| n.parse::<IpAddr>().ok()).find(|ip| !ip.is_loopback()).map(|ip| SocketAddr::new(ip, 53))
}

impl Upstream {
    /// Send the question as the client sent it (`query`: its bytes) and read the answer.
    pub async fn exchange(&self, query: &[u8], id: u16) -> Result<Message, ForwardError> {
        let io = |e| ForwardError::Io(self.addr, e);
        let bind: SocketAddr = if self.addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("an address");
        let sock = UdpSocket::bind(bind).await.map_err(io)?;
        sock.connect(self.addr).await.map_err(io)?;
        sock.send(query).await.map_err(io)?;
        let mut buf = vec![0u8; 4096];
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let n = tokio::time::timeout_at(deadline, sock.recv(&mut buf))
                .await
                .map_err(|_| ForwardError::Timeout(self.addr, self.timeout))?
                .map_err(io)?;
            let msg = Message::from_vec(&buf[..n]).map_err(|e| ForwardError::Garbled(self.addr, e.to_string()))?;
            if msg.metadata.id == id {
                return Ok(msg);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_loopback_nameservers() {
        assert_eq!(from_resolv_conf("nameserver 127.0.0.11\noptions ndots:0\n"), None);
        assert_eq!(from_resolv_conf("nameserver 127.0.0.53\nnameserver 192.0.2.1\n"), Some("192.0.2.1:53".parse().unwrap()));
    }
}
