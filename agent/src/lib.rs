//! # agent
//!
//! ownkube's node agent: what the kubelet and kube-proxy do on every Kubernetes node, in
//! one process.
//!
//! - [`client`]: talking to the apiserver (typed REST calls and informers);
//! - [`kubelet`]: the node and its pods (the sync loop);
//! - [`cri`]: the two plugins the kubelet drives, as traits: a container runtime and a pod
//!   network;
//! - [`runtime`]: containerd over gRPC (images, snapshots, containers, tasks);
//! - [`registry`]: pulling images over the OCI distribution protocol;
//! - [`network`]: bridge, veth, netns and addresses through rtnetlink; [`network_view`]: the
//!   same read back from the kernel (`/debug/network`);
//! - [`proxy`]: kube-proxy, iptables mode (KUBE-SERVICES down to KUBE-SEP-*) or nftables
//!   mode (one `ip ownkube` table with verdict maps), from EndpointSlices;
//! - [`exec`]: running a command in a container (`kubectl exec`) through containerd;
//! - [`streaming`]: the node API the apiserver reaches: logs, exec, attach, port-forward;
//! - [`debug`]: the agent's own HTTP port (`/healthz`, `/debug/proxy`, `/debug/explain`,
//!   `/debug/network`, and the node API);
//! - [`auth`]: only the apiserver (its token) or the node itself may use that port;
//! - [`firewall`]: what pods may not reach (etcd, the agents' port);
//! - [`hollow`]: `--hollow N`, N nodes in one process with a runtime and network that
//!   touch nothing, for scale tests (kubemark's hollow nodes).

pub mod auth;
pub mod client;
pub mod cri;
pub mod debug;
pub mod exec;
pub mod firewall;
pub mod hollow;
pub mod kubelet;
pub mod network;
pub mod network_view;
pub mod proxy;
pub mod registry;
pub mod runtime;
pub mod streaming;
