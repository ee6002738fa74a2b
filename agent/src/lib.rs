//! # agent
//!
//! ownkube's node agent: what the kubelet and kube-proxy do on every Kubernetes node, in
//! one process.
//!
//! - [`client`]: talking to the apiserver (typed REST calls and informers);
//! - [`kubelet`]: the node and its pods (the sync loop);
//! - [`runtime`]: containerd over gRPC (images, snapshots, containers, tasks);
//! - [`registry`]: pulling images over the OCI distribution protocol;
//! - [`network`]: bridge, veth, netns and addresses through rtnetlink;
//! - [`proxy`]: kube-proxy's iptables mode, KUBE-SERVICES down to KUBE-SEP-*;
//! - [`debug`]: the agent's own HTTP port (logs, `/debug/proxy`).

pub mod client;
pub mod debug;
pub mod kubelet;
pub mod network;
pub mod proxy;
pub mod registry;
pub mod runtime;
