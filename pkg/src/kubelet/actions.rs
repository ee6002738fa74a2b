//! What to do next with a pod's containers (the kubelet's `computePodActions`): which
//! init container runs now (one at a time, in order, each to a successful exit), which
//! containers to start or restart (per `restartPolicy`), which running ones to kill
//! because their liveness or startup probe failed, and whether the whole pod has failed.
//!
//! Upstream: pkg/kubelet/kuberuntime/kuberuntime_manager.go (computePodActions, findNextInitContainerToRun)

use crate::api::{Container, ContainerStatus, PodSpec, RestartPolicy};

/// The plan for one sync.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// The init container to (re)start now, by index.
    pub start_init: Option<usize>,
    /// Containers to start now (none exists, or it stopped and should restart).
    pub start: Vec<String>,
    /// Running containers to stop first, with the Killing event's message.
    pub kill: Vec<(String, String)>,
    /// An init container failed and `restartPolicy: Never`: stop everything.
    pub kill_pod: bool,
}

fn running(s: &ContainerStatus) -> bool {
    s.state.as_ref().is_some_and(|st| st.running.is_some())
}

fn exit_code(s: &ContainerStatus) -> Option<i32> {
    s.state.as_ref()?.terminated.as_ref().map(|t| t.exit_code)
}

/// Should a container that is not running (or has no status) be started again?
pub fn should_restart(policy: RestartPolicy, status: Option<&ContainerStatus>) -> bool {
    match status {
        None => true,
        Some(s) if running(s) => false,
        Some(s) => match exit_code(s) {
            None => true, // created, or waiting: not started yet
            Some(code) => policy.restarts(code),
        },
    }
}

/// Which probe failed on a running container (`liveness` or `startup`), if one did.
pub type FailedProbe<'a> = &'a dyn Fn(&str) -> Option<&'static str>;

pub fn plan(spec: &PodSpec, init: &[ContainerStatus], statuses: &[ContainerStatus], failed_probe: FailedProbe<'_>) -> Plan {
    let policy = RestartPolicy::parse(spec.restart_policy.as_deref());
    let find = |list: &[ContainerStatus], n: &str| list.iter().find(|s| s.name == n).cloned();
    let mut p = Plan::default();
    // Init containers first, one at a time, unless the app containers already started.
    let started = statuses.iter().any(|s| running(s) || exit_code(s).is_some());
    if !started {
        for (i, c) in spec.init_containers.iter().flatten().enumerate() {
            match find(init, &c.name) {
                Some(s) if exit_code(&s) == Some(0) => continue,
                Some(s) if running(&s) => return p,
                Some(s) if exit_code(&s).is_some() && policy == RestartPolicy::Never => {
                    p.kill_pod = true;
                    return p;
                }
                _ => {
                    p.start_init = Some(i);
                    return p;
                }
            }
        }
    }
    for c in &spec.containers {
        let s = find(statuses, &c.name);
        if let Some(s) = s.as_ref().filter(|s| running(s)) {
            if let Some(probe) = failed_probe(&c.name) {
                let again = if policy == RestartPolicy::Never { "" } else { ", will be restarted" };
                p.kill.push((c.name.clone(), format!("Container {} failed {probe} probe{again}", c.name)));
                let _ = s;
            }
            continue;
        }
        if should_restart(policy, s.as_ref()) {
            p.start.push(c.name.clone());
        }
    }
    p
}

/// The container of a pod spec (init or regular) by name.
pub fn container<'a>(spec: &'a PodSpec, name: &str) -> Option<&'a Container> {
    spec.containers.iter().chain(spec.init_containers.iter().flatten()).find(|c| c.name == name)
}

#[cfg(test)]
mod tests {
    use super::super::phase::tests::{exited, running, spec};
    use super::{plan, should_restart, Plan, RestartPolicy};

    #[test]
    fn init_containers_run_in_order_then_the_app() {
        let s = spec("Always", &["one", "two"], &["app"]);
        let none = |_: &str| None;
        assert_eq!(plan(&s, &[], &[], &none).start_init, Some(0));
        assert_eq!(plan(&s, &[running("one")], &[], &none), Plan::default(), "wait for the running one");
        assert_eq!(plan(&s, &[exited("one", 0)], &[], &none).start_init, Some(1));
        assert_eq!(plan(&s, &[exited("one", 0), exited("two", 1)], &[], &none).start_init, Some(1), "a failed init container runs again");
        assert_eq!(plan(&s, &[exited("one", 0), exited("two", 0)], &[], &none).start, ["app"]);
        let never = spec("Never", &["one"], &["app"]);
        assert!(plan(&never, &[exited("one", 1)], &[], &none).kill_pod);
    }

    #[test]
    fn restarts_follow_the_policy_and_failed_liveness_kills() {
        let none = |_: &str| None;
        let s = spec("OnFailure", &[], &["ok", "bad", "up"]);
        let p = plan(&s, &[], &[exited("ok", 0), exited("bad", 3), running("up")], &none);
        assert_eq!(p.start, ["bad"]);
        let live = |n: &str| (n == "up").then_some("liveness");
        let p = plan(&s, &[], &[exited("ok", 0), exited("bad", 3), running("up")], &live);
        assert_eq!(p.kill, [("up".to_string(), "Container up failed liveness probe, will be restarted".to_string())]);
        assert!(!should_restart(RestartPolicy::Never, Some(&exited("x", 1))));
        assert!(should_restart(RestartPolicy::Always, Some(&exited("x", 0))));
    }
}
