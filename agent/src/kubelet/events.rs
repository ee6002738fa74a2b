//! The kubelet's events: `Pulling`, `Pulled`, `Created`, `Started`, `Killing`, `BackOff`,
//! `Unhealthy`, `FailedMount`, ... about a pod or one of its containers
//! (`fieldPath: spec.containers{name}`), through the shared [`events::Recorder`], so
//! `kubectl describe pod` tells the pod's story.
//!
//! Upstream: pkg/kubelet/events/event.go

use pkg::api::Pod;
use pkg::events::pod_ref;

#[derive(Clone)]
pub struct Recorder(events::Recorder);

impl Recorder {
    pub fn start(client: kube::Client, host: &str) -> Recorder {
        Recorder(events::Recorder::start(client, "kubelet", host))
    }

    /// Record an event about `pod` (and one of its containers); dropped if the queue is full.
    pub fn event(&self, pod: &Pod, container: Option<&str>, warning: bool, reason: &str, message: &str) {
        self.0.event(pod_ref(pod, container), warning, reason, message);
    }
}
