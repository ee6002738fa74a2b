//! The kubelet's decisions, as pure functions: what a node agent should *do* about a pod,
//! given what it sees, with no I/O (the agent's `kubelet` module does the I/O). Each is
//! unit-tested against upstream's rules.
//!
//! - [`phase`]: a pod's phase from its containers' states (`getPhase`);
//! - [`conditions`]: the `Initialized`, `ContainersReady` and `Ready` conditions;
//! - [`actions`]: which containers to start, restart or kill next (`computePodActions`);
//! - [`backoff`]: the crash-loop and image-pull back-off (10 s doubling to 5 min);
//! - [`probe`]: when a probe runs and when its results count (thresholds, startup gating);
//! - [`env`]: a container's environment (`valueFrom`, `envFrom`, `$(VAR)` expansion);
//! - [`volumes`]: the files a configMap, secret or downwardAPI volume holds;
//! - [`resources`]: requests and limits as cgroup settings, and the QoS class;
//! - [`logs`]: the CRI log format containers' output is written in, and reading it back;
//! - [`node`]: the node's heartbeat Lease;
//! - [`dns`]: the pod's `resolv.conf` from `dnsPolicy` and `dnsConfig`.
//!
//! Upstream: k8s.io/kubernetes/pkg/kubelet (kubelet_pods.go, status/generate.go,
//! kuberuntime/kuberuntime_manager.go, prober/, kuberuntime/logs/, network/dns/), client-go tools/record

pub mod actions;
pub mod backoff;
pub mod conditions;
pub mod dns;
pub mod env;
pub mod logs;
pub mod node;
pub mod phase;
pub mod probe;
pub mod resources;
pub mod volumes;
