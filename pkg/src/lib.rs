//! `pkg`: what every ownkube component shares and that does no I/O of its own.
//!
//! - [`api`]: the Kubernetes object types (Pod, Service, Endpoints, Node, Namespace, ConfigMap,
//!   Secret, ServiceAccount, Event, Lease, Status);
//! - [`validation`]: the checks behind `422 Invalid`;
//! - [`patch`]: JSON merge patch and strategic merge patch, as pure functions;
//! - [`managedfields`]: server-side apply (merge, ownership, pruning, conflicts) and `managedFields`;
//! - [`selector`]: label and field selectors;
//! - [`alloc`]: CIDR and port-range arithmetic for the ClusterIP, NodePort and pod CIDR allocators;
//! - [`remotecommand`]: the channels and status of `kubectl exec`/`attach`/`port-forward` streams;
//! - [`proxy`]: kube-proxy's model (service ports, which endpoints get traffic) and its two
//!   renderers: [`proxy::iptables`] (`iptables-restore` text) and [`proxy::nftables`] (`nft -f`);
//! - [`kubelet`]: the kubelet's decisions (phase, conditions, restarts, back-off, probes, env,
//!   volumes, resources, CRI logs, the node Lease), as pure functions;
//! - [`endpointslice`]: the EndpointSlices of a service (ready, serving, terminating) and how to converge them;
//! - [`explain`]: a packet's path through the node's rules as read back from the kernel (iptables-save, nft -j), every endpoint with its probability;
//! - [`dns`]: the cluster DNS's names (Services, headless endpoints, named ports, pods, reverse) and its answers;
//! - [`events`]: Events about an object, and how repeats are counted up (the event correlator);
//! - [`deletion`]: what a DELETE does (at once, or marked while finalizers remain);
//! - [`workloads`]: the ReplicaSet, Deployment and garbage-collector decisions;
//! - [`endpoints`] and [`scheduler`]: the decisions of the endpoints controllers and the scheduler.

pub mod alloc;
pub mod api;
pub mod deletion;
pub mod dns;
pub mod endpoints;
pub mod endpointslice;
pub mod events;
pub mod explain;
pub mod kubelet;
pub mod managedfields;
pub mod patch;
pub mod proxy;
pub mod remotecommand;
pub mod scheduler;
pub mod selector;
pub mod validation;
pub mod workloads;
