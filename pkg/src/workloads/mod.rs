//! The decisions of the workload controllers, as pure functions:
//!
//! - [`replicaset`]: which pods a ReplicaSet owns, adopts or releases, how many to create,
//!   which to delete first, and its status;
//! - [`deployment`]: the template hash, the new and old ReplicaSets, how far a rolling
//!   update (or a recreate) may scale each, revision history and the status conditions;
//! - [`expectations`]: what a controller waits to see in its cache after its own writes;
//! - [`gc`]: what the garbage collector does to an object whose owners are gone, or are
//!   being deleted in the foreground, or orphan it.
//!
//! Upstream: pkg/controller/replicaset, pkg/controller/deployment, pkg/controller/garbagecollector

pub mod deployment;
pub mod expectations;
pub mod gc;
pub mod replicaset;
