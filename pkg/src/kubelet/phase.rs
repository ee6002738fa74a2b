//! A pod's phase, from the states of its init containers and containers (what `kubectl
//! get pods` shows before it looks at reasons). A container that crashed and waits to be
//! restarted counts as stopped, so a crash-looping pod stays `Running`; init containers
//! that have not all succeeded keep it `Pending`.
//!
//! Upstream: pkg/kubelet/kubelet_pods.go (getPhase)

use crate::api::{ContainerStatus, PodPhase, PodSpec, RestartPolicy};

fn find<'a>(statuses: &'a [ContainerStatus], name: &str) -> Option<&'a ContainerStatus> {
    statuses.iter().find(|s| s.name == name)
}

fn exited_with(s: &ContainerStatus) -> Option<i32> {
    s.state.as_ref()?.terminated.as_ref().map(|t| t.exit_code)
}

fn last_exit(s: &ContainerStatus) -> Option<i32> {
    s.last_state.as_ref()?.terminated.as_ref().map(|t| t.exit_code)
}

fn is_running(s: &ContainerStatus) -> bool {
    s.state.as_ref().is_some_and(|st| st.running.is_some())
}

fn is_waiting(s: &ContainerStatus) -> bool {
    s.state.as_ref().is_some_and(|st| st.waiting.is_some())
}

/// The phase. `pod_is_terminal`: the pod is being stopped for good (deleted), so
/// containers that stopped make it Succeeded or Failed whatever its restart policy.
pub fn pod_phase(spec: &PodSpec, init: &[ContainerStatus], containers: &[ContainerStatus], pod_is_terminal: bool) -> PodPhase {
    let policy = RestartPolicy::parse(spec.restart_policy.as_deref());
    let (mut pending_init, mut failed_init) = (0, 0);
    for c in spec.init_containers.iter().flatten() {
        match find(init, &c.name) {
            Some(s) if exited_with(s).is_some() => failed_init += usize::from(exited_with(s) != Some(0)),
            Some(s) if is_waiting(s) && last_exit(s).is_some_and(|c| c != 0) => failed_init += 1,
            _ => pending_init += 1,
        }
    }
    let (mut unknown, mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0, 0);
    for c in &spec.containers {
        match find(containers, &c.name) {
            None => unknown += 1,
            Some(s) if is_running(s) => running += 1,
            Some(s) if exited_with(s).is_some() => {
                stopped += 1;
                succeeded += usize::from(exited_with(s) == Some(0));
            }
            Some(s) if is_waiting(s) && last_exit(s).is_some() => stopped += 1,
            Some(s) if is_waiting(s) => waiting += 1,
            Some(_) => unknown += 1,
        }
    }
    let regular_started = containers.iter().any(|s| is_running(s) || exited_with(s).is_some());
    if failed_init > 0 && policy == RestartPolicy::Never {
        return PodPhase::Failed;
    }
    if (pending_init > 0 && !regular_started) || waiting > 0 {
        return PodPhase::Pending;
    }
    if running > 0 && unknown == 0 {
        return PodPhase::Running;
    }
    if running == 0 && stopped > 0 && unknown == 0 {
        return match () {
            _ if pod_is_terminal => {
                if stopped == succeeded {
                    PodPhase::Succeeded
                } else {
                    PodPhase::Failed
                }
            }
            _ if policy == RestartPolicy::Always => PodPhase::Running,
            _ if stopped == succeeded => PodPhase::Succeeded,
            _ if policy == RestartPolicy::Never => PodPhase::Failed,
            _ => PodPhase::Running,
        };
    }
    PodPhase::Pending
}

/// A pod that reached Succeeded or Failed stays there.
pub fn sticky(computed: PodPhase, reported: PodPhase) -> PodPhase {
    match reported {
        PodPhase::Succeeded | PodPhase::Failed => reported,
        _ => computed,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    pub fn spec(policy: &str, init: &[&str], containers: &[&str]) -> PodSpec {
        let c = |n: &&str| json!({"name": n, "image": "x"});
        serde_json::from_value(json!({"restartPolicy": policy, "initContainers": init.iter().map(c).collect::<Vec<_>>(),
                                      "containers": containers.iter().map(c).collect::<Vec<_>>()}))
        .unwrap()
    }
    pub fn st(name: &str, state: serde_json::Value) -> ContainerStatus {
        serde_json::from_value(json!({"name": name, "image": "x", "imageID": "", "ready": false, "restartCount": 0, "state": state}))
            .unwrap()
    }
    pub fn running(n: &str) -> ContainerStatus {
        st(n, json!({"running": {}}))
    }
    pub fn exited(n: &str, code: i32) -> ContainerStatus {
        st(n, json!({"terminated": {"exitCode": code}}))
    }
    pub fn crashlooping(n: &str, code: i32) -> ContainerStatus {
        let mut s = st(n, json!({"waiting": {"reason": "CrashLoopBackOff"}}));
        s.last_state = serde_json::from_value(json!({"terminated": {"exitCode": code}})).unwrap();
        s
    }
    pub fn creating(n: &str) -> ContainerStatus {
        st(n, json!({"waiting": {"reason": "ContainerCreating"}}))
    }

    #[test]
    fn phases_follow_upstream() {
        let always = spec("Always", &[], &["a", "b"]);
        assert_eq!(pod_phase(&always, &[], &[], false), PodPhase::Pending, "no statuses yet");
        assert_eq!(pod_phase(&always, &[], &[running("a"), creating("b")], false), PodPhase::Pending, "one not started");
        assert_eq!(pod_phase(&always, &[], &[running("a"), running("b")], false), PodPhase::Running);
        assert_eq!(pod_phase(&always, &[], &[running("a"), crashlooping("b", 1)], false), PodPhase::Running, "crash loops stay Running");
        assert_eq!(pod_phase(&always, &[], &[exited("a", 0), exited("b", 1)], false), PodPhase::Running, "Always restarts");
        assert_eq!(pod_phase(&always, &[], &[exited("a", 0), exited("b", 143)], true), PodPhase::Failed, "deleted: terminal");
        let never = spec("Never", &[], &["a"]);
        assert_eq!(pod_phase(&never, &[], &[exited("a", 0)], false), PodPhase::Succeeded);
        assert_eq!(pod_phase(&never, &[], &[exited("a", 2)], false), PodPhase::Failed);
        let on_failure = spec("OnFailure", &[], &["a"]);
        assert_eq!(pod_phase(&on_failure, &[], &[exited("a", 2)], false), PodPhase::Running);
        assert_eq!(pod_phase(&on_failure, &[], &[exited("a", 0)], false), PodPhase::Succeeded);
    }

    #[test]
    fn init_containers_hold_the_pod_pending() {
        let s = spec("Always", &["i1", "i2"], &["a"]);
        let waiting = st("a", json!({"waiting": {"reason": "PodInitializing"}}));
        assert_eq!(pod_phase(&s, &[exited("i1", 0), running("i2")], std::slice::from_ref(&waiting), false), PodPhase::Pending);
        assert_eq!(pod_phase(&s, &[exited("i1", 0), crashlooping("i2", 1)], &[waiting], false), PodPhase::Pending);
        let never = spec("Never", &["i1"], &["a"]);
        assert_eq!(pod_phase(&never, &[exited("i1", 1)], &[st("a", json!({"waiting": {}}))], false), PodPhase::Failed);
        assert_eq!(sticky(PodPhase::Running, PodPhase::Succeeded), PodPhase::Succeeded);
    }
}
