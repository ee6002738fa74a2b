//! # agent
//!
//! ownkube's node agent: what the kubelet and kube-proxy do on every Kubernetes node, in
//! one process.
//!
//! - [`client`]: talking to the apiserver (typed REST calls and informers);
//! - [`proxy`]: kube-proxy's iptables mode, KUBE-SERVICES down to KUBE-SEP-*;
//! - [`debug`]: the agent's own HTTP port (`/debug/proxy`).

pub mod client;
pub mod debug;
pub mod network;
pub mod proxy;
pub mod runtime;
