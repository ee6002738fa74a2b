//! A pod's status, from what containerd says of each container's task and what the
//! kubelet remembers of it (restarts, the last termination, why it waits), through the
//! pure rules of [`pkg::kubelet::phase`] and [`pkg::kubelet::conditions`].
//!
//! Upstream: pkg/kubelet/kubelet_pods.go (generateAPIPodStatus, convertToAPIContainerStatuses)

use crate::runtime::TaskState;
use pkg::api::*;
use pkg::kubelet::{conditions, phase, resources};
use std::time::Instant;

/// What the kubelet remembers of one container across its runs.
#[derive(Clone, Debug, Default)]
pub struct Track {
    pub restarts: i32,
    /// The previous run's end (`lastState.terminated`).
    pub last: Option<ContainerStateTerminated>,
    /// Why it is not running (`CrashLoopBackOff`, `ErrImagePull`, ...), with a message.
    pub waiting: Option<(String, String)>,
    pub started_at: Option<Time>,
    /// The current run's end, when it was seen.
    pub exited: Option<(ContainerStateTerminated, Instant)>,
    /// Counts runs, so probes start over for each.
    pub run: u64,
    /// A stop was asked for this run (a failed liveness probe).
    pub stopping: bool,
}

fn time_of(at: &Option<String>) -> Option<Time> {
    at.as_deref().and_then(|t| t.parse::<jiff::Timestamp>().ok()).map(Time)
}

/// How containerd's exit reads in Kubernetes: `OOMKilled`, `Completed` or `Error`.
pub fn terminated(code: u32, at: &Option<String>, started: Option<Time>, oom: bool, id: &str) -> ContainerStateTerminated {
    let reason = if oom {
        "OOMKilled"
    } else if code == 0 {
        "Completed"
    } else {
        "Error"
    };
    ContainerStateTerminated {
        exit_code: code as i32,
        reason: Some(reason.into()),
        finished_at: time_of(at),
        started_at: started,
        container_id: Some(format!("containerd://{id}")),
        ..Default::default()
    }
}

/// One container's status.
pub fn container_status(
    c: &Container,
    id: &str,
    task: &TaskState,
    tr: &Track,
    started: bool,
    ready: bool,
    has_init: bool,
) -> ContainerStatus {
    let waiting = |reason: String, message: Option<String>| ContainerState {
        waiting: Some(ContainerStateWaiting { reason: Some(reason), message }),
        ..Default::default()
    };
    let state = match (task, &tr.waiting) {
        (TaskState::Running { .. }, _) => {
            ContainerState { running: Some(ContainerStateRunning { started_at: tr.started_at.clone() }), ..Default::default() }
        }
        (_, Some((reason, message))) => waiting(reason.clone(), Some(message.clone())),
        (TaskState::Exited { .. }, None) if tr.exited.is_some() => {
            ContainerState { terminated: tr.exited.as_ref().map(|(t, _)| t.clone()), ..Default::default() }
        }
        _ => waiting(if has_init { "PodInitializing" } else { "ContainerCreating" }.into(), None),
    };
    let running = matches!(task, TaskState::Running { .. });
    ContainerStatus {
        name: c.name.clone(),
        image: c.image.clone().unwrap_or_default(),
        image_id: String::new(),
        container_id: (!matches!(task, TaskState::Missing)).then(|| format!("containerd://{id}")),
        ready: running && started && ready,
        started: Some(running && started),
        restart_count: tr.restarts,
        state: Some(state),
        last_state: tr.last.clone().map(|t| ContainerState { terminated: Some(t), ..Default::default() }),
        ..Default::default()
    }
}

/// An init container is ready once it exited 0.
pub fn init_ready(mut s: ContainerStatus) -> ContainerStatus {
    s.ready = s.state.as_ref().and_then(|st| st.terminated.as_ref()).is_some_and(|t| t.exit_code == 0);
    s
}

/// The whole status: phase, conditions (transition times kept from `old` when unchanged),
/// addresses, container statuses, QoS class.
#[allow(clippy::too_many_arguments)]
pub fn pod_status(
    pod: &Pod,
    init: Vec<ContainerStatus>,
    containers: Vec<ContainerStatus>,
    terminal: bool,
    pod_ip: Option<String>,
    host_ip: &str,
    start_time: Option<Time>,
    now: &Time,
) -> PodStatus {
    let spec = pod.spec.clone().unwrap_or_default();
    let computed = phase::pod_phase(&spec, &init, &containers, terminal);
    let p = phase::sticky(computed, pod.phase());
    let old = pod.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
    let initialized = conditions::initialized(&spec, &init, &containers, p);
    let containers_ready = conditions::containers_ready(&spec, &containers, p);
    let ready = conditions::ready(&spec, &containers_ready, &old);
    let mut conds: Vec<PodCondition> =
        old.iter().filter(|c| !["Initialized", "Ready", "ContainersReady"].contains(&c.type_.as_str())).cloned().collect();
    if !conds.iter().any(|c| c.type_ == "PodScheduled") {
        conds.push(PodCondition { type_: "PodScheduled".into(), status: "True".into(), ..Default::default() });
    }
    for mut c in [initialized, ready, containers_ready] {
        c.last_transition_time = match old.iter().find(|o| o.type_ == c.type_) {
            Some(o) if o.status == c.status => o.last_transition_time.clone(),
            _ => Some(now.clone()),
        };
        conds.push(c);
    }
    for c in conds.iter_mut().filter(|c| c.last_transition_time.is_none()) {
        c.last_transition_time = Some(now.clone());
    }
    PodStatus {
        phase: Some(p.as_str().into()),
        host_ip: Some(host_ip.to_string()),
        host_ips: Some(vec![k8s_openapi::api::core::v1::HostIP { ip: host_ip.to_string() }]),
        pod_ip: pod_ip.clone(),
        pod_ips: pod_ip.map(|ip| vec![PodIP { ip }]),
        start_time,
        init_container_statuses: Some(init).filter(|v| !v.is_empty()),
        container_statuses: Some(containers),
        conditions: Some(conds),
        qos_class: Some(resources::qos_class(pod).as_str().into()),
        ..Default::default()
    }
}
