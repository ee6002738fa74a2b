//! A ReplicaSet keeps `replicas` pods made from its template running. Its pods are the
//! ones its selector matches *and* that name it as their controller (`ownerReferences`
//! with `controller: true`); a matching pod with no controller is adopted, an owned pod
//! that stopped matching is released. Too few: create pods (`generateName: <rs>-`); too
//! many: delete the least valuable first (not scheduled, pending, not ready, ready the
//! shortest time, restarted the most, newest).
//!
//! Upstream: pkg/controller/replicaset/replica_set.go, pkg/controller/controller_utils.go (ActivePods sort)

use crate::api::*;
use crate::selector::LabelSelector as Parsed;

/// The owner reference a controller puts on what it creates.
pub fn controller_ref(api_version: &str, kind: &str, name: &str, uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: api_version.into(),
        kind: kind.into(),
        name: name.into(),
        uid: uid.into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The controller of an object, if any.
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references.iter().flatten().find(|r| r.controller == Some(true))
}

/// Counts toward replicas: not finished, not being deleted.
pub fn is_active(p: &Pod) -> bool {
    !p.is_terminal() && !p.is_deleting()
}

/// What a controller must do about the objects (pods of a ReplicaSet, ReplicaSets of a
/// Deployment) of its namespace.
#[derive(Debug, PartialEq)]
pub struct Claims<T> {
    /// Owned and matching (the owner's own).
    pub owned: Vec<T>,
    /// Matching, without a controller: to adopt.
    pub adopt: Vec<T>,
    /// Owned, no longer matching: to release.
    pub release: Vec<T>,
}

/// Sort `objects` by what the owner (`owner_uid`, with `selector`) must do about them.
/// An empty selector matches nothing (validation forbids one anyway).
pub fn claim<T: Object + Clone>(owner_uid: &str, selector: &LabelSelector, objects: &[T]) -> Claims<T> {
    let sel = Parsed::from_spec(selector).unwrap_or_default();
    let mut c = Claims { owned: vec![], adopt: vec![], release: vec![] };
    for o in objects {
        let matches = !sel.0.is_empty() && sel.matches(o.labels());
        match controller_of(o.meta()) {
            Some(r) if r.uid == owner_uid && matches => c.owned.push(o.clone()),
            Some(r) if r.uid == owner_uid => c.release.push(o.clone()),
            None if matches && !o.is_deleting() => c.adopt.push(o.clone()),
            _ => {}
        }
    }
    c
}

fn rank(p: &Pod) -> (u8, u8, u8, i64, i32, i64) {
    let scheduled = u8::from(p.node_name().is_some());
    let phase = match p.phase() {
        PodPhase::Pending => 0,
        PodPhase::Unknown => 1,
        _ => 2,
    };
    let ready = u8::from(p.is_ready());
    // Ready for a shorter time is less valuable: a later transition sorts first.
    let ready_since = p.pod_condition("Ready").and_then(|c| c.last_transition_time.as_ref()).map_or(0, |t| t.0.as_second());
    let restarts: i32 = p.container_statuses().iter().map(|s| s.restart_count).sum();
    let created = p.metadata.creation_timestamp.as_ref().map_or(0, |t| t.0.as_second());
    (scheduled, phase, ready, -ready_since, -restarts, -created)
}

/// The `n` pods to delete when scaling down, least valuable first.
pub fn to_delete(mut pods: Vec<Pod>, n: usize) -> Vec<Pod> {
    pods.sort_by_key(rank);
    pods.truncate(n);
    pods
}

/// Available: ready for at least `min_ready_seconds` (at `now`, seconds).
pub fn is_available(p: &Pod, min_ready_seconds: i32, now: i64) -> bool {
    if !p.is_ready() {
        return false;
    }
    let since = p.pod_condition("Ready").and_then(|c| c.last_transition_time.as_ref()).map_or(now, |t| t.0.as_second());
    min_ready_seconds <= 0 || now - since >= i64::from(min_ready_seconds)
}

/// The pod a ReplicaSet makes from its template.
pub fn new_pod(rs: &ReplicaSet) -> Pod {
    let spec = rs.spec.clone().unwrap_or_default();
    let t = spec.template.unwrap_or_default();
    let tm = t.metadata.unwrap_or_default();
    let rs_name = rs.name();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{rs_name}-")),
            namespace: rs.metadata.namespace.clone(),
            labels: tm.labels,
            annotations: tm.annotations,
            owner_references: Some(vec![controller_ref("apps/v1", "ReplicaSet", rs_name, rs.uid().unwrap_or_default())]),
            ..Default::default()
        },
        spec: t.spec,
        ..Default::default()
    }
}

/// The status from the owned pods.
pub fn status(rs: &ReplicaSet, owned: &[Pod], now: i64) -> ReplicaSetStatus {
    let spec = rs.spec.clone().unwrap_or_default();
    let active: Vec<&Pod> = owned.iter().filter(|p| is_active(p)).collect();
    let labels = spec.template.as_ref().and_then(|t| t.metadata.as_ref()).and_then(|m| m.labels.clone()).unwrap_or_default();
    let full = active.iter().filter(|p| labels.iter().all(|(k, v)| p.labels().get(k) == Some(v))).count();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    ReplicaSetStatus {
        replicas: active.len() as i32,
        fully_labeled_replicas: Some(full as i32),
        ready_replicas: Some(active.iter().filter(|p| p.is_ready()).count() as i32),
        available_replicas: Some(active.iter().filter(|p| is_available(p, min_ready, now)).count() as i32),
        observed_generation: rs.metadata.generation,
        ..Default::default()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    pub fn pod(name: &str, labels: serde_json::Value, owner: Option<&str>, node: Option<&str>, ready: bool, created: i64) -> Pod {
        let owners = owner.map(|u| json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": u, "controller": true}]));
        let t = |s: i64| jiff::Timestamp::from_second(s).unwrap().to_string();
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels, "ownerReferences": owners, "creationTimestamp": t(created)},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x"}]},
            "status": {"phase": if node.is_some() { "Running" } else { "Pending" },
                       "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }, "lastTransitionTime": t(created + 5)}]}}))
        .unwrap()
    }

    #[test]
    fn claims_adopt_release_and_rank() {
        let sel: LabelSelector = serde_json::from_value(json!({"matchLabels": {"app": "web"}})).unwrap();
        let pods = vec![
            pod("mine", json!({"app": "web"}), Some("u1"), Some("n1"), true, 100),
            pod("orphan", json!({"app": "web"}), None, Some("n1"), true, 100),
            pod("relabeled", json!({"app": "db"}), Some("u1"), Some("n1"), true, 100),
            pod("other", json!({"app": "web"}), Some("u2"), Some("n1"), true, 100),
        ];
        let c = claim("u1", &sel, &pods);
        let names = |v: &[Pod]| v.iter().map(|p| p.name().to_string()).collect::<Vec<_>>();
        assert_eq!(
            (names(&c.owned), names(&c.adopt), names(&c.release)),
            (vec!["mine".to_string()], vec!["orphan".to_string()], vec!["relabeled".to_string()])
        );
        let candidates = vec![
            pod("old-ready", json!({}), None, Some("n1"), true, 100),
            pod("new-ready", json!({}), None, Some("n1"), true, 200),
            pod("not-ready", json!({}), None, Some("n1"), false, 100),
            pod("unscheduled", json!({}), None, None, false, 50),
        ];
        assert_eq!(names(&to_delete(candidates, 3)), ["unscheduled", "not-ready", "new-ready"]);
    }
}
