//! `dns`: ownkube's cluster DNS, an add-on the way CoreDNS is one — a program of its own
//! that runs in the cluster as a Deployment behind the Service `kube-dns` (ClusterIP
//! 10.96.0.10), which every pod's `/etc/resolv.conf` names (the kubelet writes it, see
//! `pkg::kubelet::dns`). So `curl http://whoami` in a pod finds the Service.
//!
//! # Layout
//!
//! - [`watch`]: Services and EndpointSlices through the API (kube-rs reflectors); each
//!   change rebuilds the tables ([`pkg::dns::Records`], pure and unit-tested there) and
//!   swaps them in whole, so a query never sees half an update;
//! - [`zone`]: the tables' records as DNS records (class IN, TTL 5 s), and the zone's SOA;
//! - [`handler`]: one question in, one answer out — from the tables for the cluster's
//!   names, `NXDOMAIN` with the SOA for names there that do not exist, forwarded to the
//!   upstream resolver for the rest (`REFUSED` when there is none);
//! - [`forward`]: that forwarding, one UDP exchange with the upstream;
//! - `main.rs`: flags, and the UDP and TCP listeners (hickory-server answers both, and
//!   truncates a UDP answer that does not fit, setting TC so the client retries on TCP).
//!
//! Upstream: coredns/coredns plugin/kubernetes, plugin/forward

pub mod forward;
pub mod handler;
pub mod watch;
pub mod zone;
