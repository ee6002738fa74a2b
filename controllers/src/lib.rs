//! # controllers
//!
//! What kube-scheduler and kube-controller-manager do, as control loops that reach the
//! cluster only through the apiserver's HTTP API (the `kube` crate's client and its
//! `kube::runtime` watchers, reflectors and `Controller`), exactly as a real
//! controller-manager does. They run inside the apiserver process by default (the
//! lab's), or apart as `controller-manager --server URL`; either way they hold no state
//! of their own that the API does not have, so restarting them is always safe.
//!
//! - [`cache`]: informers (a reflector's store plus the stream of changes), one shared
//!   per kind ([`cache::Shared`]), and indexes of a store ([`cache::Index`]);
//! - [`scheduler`]: places pending pods on nodes (`pods/binding`), with events;
//! - [`replicaset`]: keeps each ReplicaSet's pods (create, adopt, release, delete the
//!   least valuable first) and its status;
//! - [`deployment`]: rolls Deployments out through their ReplicaSets (rolling update,
//!   recreate, history, pause, progress deadline, status);
//! - [`garbagecollector`]: deletes dependents whose owners are gone, honours
//!   `Foreground` and `Orphan` deletion;
//! - [`endpoints`] and [`endpointslice`]: the Endpoints and EndpointSlices of each service;
//! - [`run`]: start them all.
//!
//! Every decision is a pure function in [`pkg`] (`pkg::workloads`, `pkg::scheduler`,
//! `pkg::endpoints`, `pkg::endpointslice`); the files here only read, decide and write.
//!
//! Upstream: cmd/kube-controller-manager, cmd/kube-scheduler

pub mod cache;
pub mod deployment;
pub mod endpoints;
pub mod endpointslice;
pub mod garbagecollector;
pub mod replicaset;
pub mod scheduler;

use std::time::Duration;

/// Why a reconcile failed; the controller logs it and tries again after a back-off.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("apiserver: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Other(String),
}

/// A reconcile's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How often every object is reconciled even if nothing changed (kube-controller-manager's
/// `--min-resync-period` is 12 h; ours is short so a learner sees drift repaired).
pub const RESYNC: Duration = Duration::from_secs(300);

/// Log a failed pass; the object is tried again in a second.
pub fn on_error(e: &Error) -> kube::runtime::controller::Action {
    tracing::warn!(error = %e, "reconcile failed; retrying");
    kube::runtime::controller::Action::requeue(Duration::from_secs(1))
}

/// The code of an API error, if the error is one.
pub fn code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// A client for the apiserver at `url` (`http://127.0.0.1:8080`).
pub fn client_for(url: &str) -> anyhow::Result<kube::Client> {
    let cfg = kube::Config::new(url.parse()?);
    Ok(kube::Client::try_from(cfg)?)
}

/// Start every controller and the scheduler; each runs until the process ends.
///
/// Pods, the busiest kind, are watched once for all of them ([`cache::Shared`]), as a
/// real controller-manager shares one informer per kind among its controllers.
pub fn run(client: kube::Client) {
    let pods = cache::Shared::start(kube::Api::<pkg::api::Pod>::all(client.clone()));
    tokio::spawn(scheduler::run(client.clone(), pods.clone()));
    tokio::spawn(replicaset::run(client.clone(), pods.clone()));
    tokio::spawn(deployment::run(client.clone(), pods.clone()));
    tokio::spawn(garbagecollector::run(client.clone()));
    tokio::spawn(endpoints::run(client.clone(), pods.clone()));
    tokio::spawn(endpointslice::run(client, pods));
}
