//! The pod conditions the kubelet owns: `Initialized` (every init container succeeded),
//! `ContainersReady` (every container is ready: started, and its readiness probe, if any,
//! succeeded) and `Ready` (containers ready, and every readiness gate True). Endpoints
//! list a pod as ready only while `Ready` is True, which is how a failing readiness probe
//! takes a pod out of a Service.
//!
//! Upstream: pkg/kubelet/status/generate.go

use crate::api::{ContainerStatus, PodCondition, PodPhase, PodSpec};

fn cond(type_: &str, ok: bool, reason: Option<&str>, message: Option<String>) -> PodCondition {
    PodCondition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.map(String::from),
        message: message.filter(|m| !m.is_empty()),
        ..Default::default()
    }
}

fn names(v: &[&str]) -> String {
    format!("[{}]", v.join(" "))
}

/// `containers with unknown status: [a], containers with unready status: [b]`.
fn not_ready_message(unknown: &[&str], unready: &[&str]) -> String {
    let mut parts = vec![];
    if !unknown.is_empty() {
        parts.push(format!("containers with unknown status: {}", names(unknown)));
    }
    if !unready.is_empty() {
        parts.push(format!("containers with unready status: {}", names(unready)));
    }
    parts.join(", ")
}

pub fn containers_ready(spec: &PodSpec, statuses: &[ContainerStatus], phase: PodPhase) -> PodCondition {
    if phase == PodPhase::Succeeded {
        return cond("ContainersReady", false, Some("PodCompleted"), None);
    }
    let (mut unknown, mut unready) = (vec![], vec![]);
    for c in &spec.containers {
        match statuses.iter().find(|s| s.name == c.name) {
            None => unknown.push(c.name.as_str()),
            Some(s) if !s.ready => unready.push(c.name.as_str()),
            _ => {}
        }
    }
    if unknown.is_empty() && unready.is_empty() {
        return cond("ContainersReady", true, None, None);
    }
    cond("ContainersReady", false, Some("ContainersNotReady"), Some(not_ready_message(&unknown, &unready)))
}

/// `Ready`: `ContainersReady`, then the readiness gates (conditions other components set).
pub fn ready(spec: &PodSpec, containers_ready: &PodCondition, others: &[PodCondition]) -> PodCondition {
    if containers_ready.status != "True" {
        let mut c = containers_ready.clone();
        c.type_ = "Ready".into();
        return c;
    }
    let mut msgs = vec![];
    for g in spec.readiness_gates.iter().flatten() {
        match others.iter().find(|c| c.type_ == g.condition_type) {
            None => msgs.push(format!("corresponding condition of pod readiness gate \"{}\" does not exist.", g.condition_type)),
            Some(c) if c.status != "True" => {
                msgs.push(format!("the status of pod readiness gate \"{}\" is not \"True\", but {}", g.condition_type, c.status))
            }
            _ => {}
        }
    }
    if msgs.is_empty() {
        cond("Ready", true, None, None)
    } else {
        cond("Ready", false, Some("ReadinessGatesNotReady"), Some(msgs.join(", ")))
    }
}

pub fn initialized(spec: &PodSpec, init: &[ContainerStatus], containers: &[ContainerStatus], phase: PodPhase) -> PodCondition {
    if phase == PodPhase::Succeeded {
        return cond("Initialized", true, Some("PodCompleted"), None);
    }
    let started = containers.iter().any(|s| s.state.as_ref().is_some_and(|st| st.running.is_some() || st.terminated.is_some()));
    if started {
        return cond("Initialized", true, None, None);
    }
    let (mut unknown, mut incomplete) = (vec![], vec![]);
    for c in spec.init_containers.iter().flatten() {
        match init.iter().find(|s| s.name == c.name) {
            None => unknown.push(c.name.as_str()),
            Some(s) if !s.ready => incomplete.push(c.name.as_str()),
            _ => {}
        }
    }
    if unknown.is_empty() && incomplete.is_empty() {
        return cond("Initialized", true, None, None);
    }
    let mut parts = vec![];
    if !unknown.is_empty() {
        parts.push(format!("containers with unknown status: {}", names(&unknown)));
    }
    if !incomplete.is_empty() {
        parts.push(format!("containers with incomplete status: {}", names(&incomplete)));
    }
    cond("Initialized", false, Some("ContainersNotInitialized"), Some(parts.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::super::phase::tests::*;
    use super::*;

    #[test]
    fn readiness_and_initialization_say_which_containers() {
        let s = spec("Always", &["setup"], &["a", "b"]);
        let mut a = running("a");
        a.ready = true;
        let c = containers_ready(&s, &[a.clone(), running("b")], PodPhase::Running);
        assert_eq!((c.status.as_str(), c.reason.as_deref()), ("False", Some("ContainersNotReady")));
        assert_eq!(c.message.as_deref(), Some("containers with unready status: [b]"));
        let r = ready(&s, &c, &[]);
        assert_eq!((r.type_.as_str(), r.message), ("Ready", c.message.clone()));
        let mut b = running("b");
        b.ready = true;
        assert_eq!(containers_ready(&s, &[a, b], PodPhase::Running).status, "True");
        let i = initialized(&s, &[running("setup")], &[], PodPhase::Pending);
        assert_eq!(i.message.as_deref(), Some("containers with incomplete status: [setup]"));
        let mut done = exited("setup", 0);
        done.ready = true;
        assert_eq!(initialized(&s, &[done], &[], PodPhase::Pending).status, "True");
        assert_eq!(containers_ready(&s, &[], PodPhase::Succeeded).reason.as_deref(), Some("PodCompleted"));
    }
}
