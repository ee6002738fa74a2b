//! A Deployment owns one ReplicaSet per version of its pod template (named
//! `<deployment>-<template hash>`, the hash also a `pod-template-hash` label on its pods),
//! and rolls a change out by moving replicas from the old ReplicaSets to the new one:
//!
//! - **RollingUpdate**: the new one grows while the total stays within `replicas +
//!   maxSurge`; the old ones shrink while the available pods stay at least `replicas -
//!   maxUnavailable` (25% each by default). One step per pass; each pass waits for what
//!   the last one changed to become available.
//! - **Recreate**: the old ones go to zero, and once their pods are gone the new one grows.
//!
//! Each ReplicaSet carries its revision (`deployment.kubernetes.io/revision`), which is
//! what `kubectl rollout history` lists and `rollout undo` goes back to; at most
//! `revisionHistoryLimit` old, empty ReplicaSets are kept.
//!
//! Upstream: pkg/controller/deployment (rolling.go, recreate.go, sync.go, util/deployment_util.go, progress.go)

use crate::api::*;
use std::collections::BTreeMap;

pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const DESIRED: &str = "deployment.kubernetes.io/desired-replicas";
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
pub const HASH_LABEL: &str = "pod-template-hash";
pub const CHANGE_CAUSE: &str = "kubernetes.io/change-cause";

/// Kubernetes' `SafeEncodeString`: each character mapped into an alphabet without vowels.
fn safe_encode(s: &str) -> String {
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    s.bytes().map(|b| ALPHANUMS[b as usize % ALPHANUMS.len()] as char).collect()
}

/// The template's hash (FNV-32a of its JSON, and the collision count if any).
pub fn template_hash(t: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut h: u32 = 0x811c_9dc5;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u32::from(*b);
            h = h.wrapping_mul(0x0100_0193);
        }
    };
    eat(&serde_json::to_vec(t).unwrap_or_default());
    if let Some(c) = collision_count {
        eat(c.to_string().as_bytes());
    }
    safe_encode(&h.to_string())
}

/// Two templates are the same version if they differ at most in the hash label.
pub fn same_template(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    let strip = |t: &PodTemplateSpec| {
        let mut t = t.clone();
        if let Some(l) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
            l.remove(HASH_LABEL);
        }
        t
    };
    strip(a) == strip(b)
}

pub fn revision(meta: &ObjectMeta) -> i64 {
    meta.annotations.as_ref().and_then(|a| a.get(REVISION)).and_then(|r| r.parse().ok()).unwrap_or(0)
}

/// A percentage or a number of `total`, rounded up (surge) or down (unavailable).
pub fn resolve(v: Option<&IntOrString>, total: i32, round_up: bool) -> i32 {
    match v {
        None => 0,
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::String(s)) => {
            let p: f64 = s.trim_end_matches('%').parse().unwrap_or(0.0);
            let x = p * f64::from(total) / 100.0;
            (if round_up { x.ceil() } else { x.floor() }) as i32
        }
    }
}

/// `(maxSurge, maxUnavailable)` for `desired` replicas; both 0 would never progress, so
/// `maxUnavailable` is then 1.
pub fn surge_and_unavailable(d: &DeploymentSpec, desired: i32) -> (i32, i32) {
    let ru = d.strategy.as_ref().and_then(|s| s.rolling_update.clone()).unwrap_or_default();
    let surge = resolve(ru.max_surge.as_ref().or(Some(&IntOrString::String("25%".into()))), desired, true);
    let mut unavailable = resolve(ru.max_unavailable.as_ref().or(Some(&IntOrString::String("25%".into()))), desired, false);
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    (surge, unavailable.min(desired))
}

/// One ReplicaSet as the rollout sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rs {
    pub name: String,
    /// `spec.replicas`.
    pub replicas: i32,
    pub available: i32,
    /// Creation time (seconds): older ones shrink first.
    pub created: i64,
}

/// The scale changes of one pass: `(ReplicaSet, new replicas)`.
pub type Scales = Vec<(String, i32)>;

/// One step of a rolling update: grow the new ReplicaSet if the surge allows, else shrink
/// old ones as far as availability allows (unhealthy pods first).
pub fn rolling_step(desired: i32, surge: i32, unavailable: i32, new: &Rs, old: &[Rs]) -> Scales {
    let all: i32 = new.replicas + old.iter().map(|r| r.replicas).sum::<i32>();
    if new.replicas > desired {
        return vec![(new.name.clone(), desired)];
    }
    if new.replicas < desired {
        let up = (desired + surge - all).min(desired - new.replicas);
        if up > 0 {
            return vec![(new.name.clone(), new.replicas + up)];
        }
    }
    let old_count: i32 = old.iter().map(|r| r.replicas).sum();
    if old_count == 0 {
        return vec![];
    }
    let min_available = desired - unavailable;
    let new_unavailable = new.replicas - new.available;
    let mut budget = all - min_available - new_unavailable;
    let mut out = vec![];
    let mut sorted: Vec<Rs> = old.to_vec();
    sorted.sort_by_key(|r| r.created);
    // Unhealthy pods of old ReplicaSets go first: they serve nobody.
    let mut left: BTreeMap<String, i32> = sorted.iter().map(|r| (r.name.clone(), r.replicas)).collect();
    for r in &sorted {
        let unhealthy = (r.replicas - r.available).max(0).min(budget.max(0));
        if unhealthy > 0 {
            *left.get_mut(&r.name).unwrap() -= unhealthy;
            budget -= unhealthy;
        }
    }
    // Then available ones, as far as availability allows.
    let available: i32 = new.available + sorted.iter().map(|r| r.available.min(left[&r.name])).sum::<i32>();
    let mut scale_down = (available - min_available).max(0).min(budget.max(0));
    for r in &sorted {
        let n = left[&r.name].min(scale_down);
        *left.get_mut(&r.name).unwrap() -= n;
        scale_down -= n;
    }
    for r in &sorted {
        if left[&r.name] != r.replicas {
            out.push((r.name.clone(), left[&r.name]));
        }
    }
    out
}

/// One step of a recreate: the old ReplicaSets to zero; once none of their pods is left
/// (`old_pods_left`), the new one to `desired`.
pub fn recreate_step(desired: i32, new: &Rs, old: &[Rs], old_pods_left: usize) -> Scales {
    let shrink: Scales = old.iter().filter(|r| r.replicas > 0).map(|r| (r.name.clone(), 0)).collect();
    if !shrink.is_empty() {
        return shrink;
    }
    if old_pods_left == 0 && new.replicas != desired {
        return vec![(new.name.clone(), desired)];
    }
    vec![]
}

/// Old ReplicaSets to delete: empty ones beyond `revisionHistoryLimit`, oldest revision first.
pub fn history_to_delete(old: &[(String, i64, i32)], limit: i32) -> Vec<String> {
    let mut empty: Vec<&(String, i64, i32)> = old.iter().filter(|(_, _, replicas)| *replicas == 0).collect();
    empty.sort_by_key(|(_, rev, _)| *rev);
    let excess = empty.len().saturating_sub(limit.max(0) as usize);
    empty.into_iter().take(excess).map(|(n, _, _)| n.clone()).collect()
}

/// The `ScalingReplicaSet` event's message.
pub fn scaling_message(rs: &str, from: i32, to: i32) -> String {
    let way = if to > from { "up" } else { "down" };
    format!("Scaled {way} replica set {rs} from {from} to {to}")
}

/// What the status says of a rollout.
pub struct Progress<'a> {
    pub new_rs: &'a str,
    pub new_rs_created: bool,
    pub complete: bool,
    pub progressed: bool,
    pub paused: bool,
    pub deadline_exceeded: bool,
}

fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    old: &[DeploymentCondition],
    now: &Time,
    changed: bool,
) -> DeploymentCondition {
    let status = if status { "True" } else { "False" }.to_string();
    let prev = old.iter().find(|c| c.type_ == type_);
    let same = prev.is_some_and(|p| p.status == status);
    DeploymentCondition {
        type_: type_.into(),
        status,
        reason: Some(reason.into()),
        message: Some(message),
        last_transition_time: if same { prev.and_then(|p| p.last_transition_time.clone()) } else { Some(now.clone()) },
        last_update_time: if changed || !same || prev.is_none_or(|p| p.reason.as_deref() != Some(reason)) {
            Some(now.clone())
        } else {
            prev.and_then(|p| p.last_update_time.clone())
        },
    }
}

/// The `Available` and `Progressing` conditions.
pub fn conditions(available_ok: bool, p: &Progress<'_>, old: &[DeploymentCondition], now: &Time) -> Vec<DeploymentCondition> {
    let available = if available_ok {
        condition("Available", true, "MinimumReplicasAvailable", "Deployment has minimum availability.".into(), old, now, false)
    } else {
        condition(
            "Available",
            false,
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.".into(),
            old,
            now,
            false,
        )
    };
    let progressing = if p.paused {
        let mut c = condition("Progressing", false, "DeploymentPaused", "Deployment is paused".into(), old, now, false);
        c.status = "Unknown".into();
        c
    } else if p.complete {
        condition(
            "Progressing",
            true,
            "NewReplicaSetAvailable",
            format!("ReplicaSet \"{}\" has successfully progressed.", p.new_rs),
            old,
            now,
            false,
        )
    } else if p.deadline_exceeded {
        condition(
            "Progressing",
            false,
            "ProgressDeadlineExceeded",
            format!("ReplicaSet \"{}\" has timed out progressing.", p.new_rs),
            old,
            now,
            false,
        )
    } else if p.new_rs_created {
        condition("Progressing", true, "NewReplicaSetCreated", format!("Created new replica set \"{}\"", p.new_rs), old, now, true)
    } else {
        condition("Progressing", true, "ReplicaSetUpdated", format!("ReplicaSet \"{}\" is progressing.", p.new_rs), old, now, p.progressed)
    };
    vec![available, progressing]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rs(name: &str, replicas: i32, available: i32, created: i64) -> Rs {
        Rs { name: name.into(), replicas, available, created }
    }

    /// Run a rollout of 4 replicas to the end, every pod becoming available at once.
    fn rollout(surge: i32, unavailable: i32) -> Vec<(i32, i32)> {
        let (mut new, mut old) = (rs("new", 0, 0, 2), rs("old", 4, 4, 1));
        let mut trace = vec![];
        for _ in 0..20 {
            let scales = rolling_step(4, surge, unavailable, &new, std::slice::from_ref(&old));
            if scales.is_empty() {
                break;
            }
            for (n, r) in scales {
                if n == "new" {
                    new.replicas = r;
                    new.available = r;
                } else {
                    old.replicas = r;
                    old.available = r;
                }
            }
            trace.push((new.replicas, old.replicas));
            // Availability never dips below replicas - maxUnavailable; the total never exceeds replicas + maxSurge.
            assert!(new.available + old.available >= 4 - unavailable);
            assert!(new.replicas + old.replicas <= 4 + surge);
        }
        trace
    }

    #[test]
    fn rolling_updates_respect_surge_and_unavailability() {
        assert_eq!(surge_and_unavailable(&DeploymentSpec::default(), 4), (1, 1), "25% of 4, rounded up and down");
        assert_eq!(rollout(1, 0), [(1, 4), (1, 3), (2, 3), (2, 2), (3, 2), (3, 1), (4, 1), (4, 0)]);
        assert_eq!(rollout(1, 1).last(), Some(&(4, 0)));
        // New pods not yet available hold the old ones up.
        let scales = rolling_step(4, 1, 0, &rs("new", 1, 0, 2), &[rs("old", 4, 4, 1)]);
        assert!(scales.is_empty(), "{scales:?}");
        assert_eq!(recreate_step(3, &rs("new", 0, 0, 2), &[rs("old", 3, 3, 1)], 3), [("old".to_string(), 0)]);
        assert!(recreate_step(3, &rs("new", 0, 0, 2), &[rs("old", 0, 0, 1)], 1).is_empty(), "old pods still stopping");
        assert_eq!(recreate_step(3, &rs("new", 0, 0, 2), &[rs("old", 0, 0, 1)], 0), [("new".to_string(), 3)]);
    }

    #[test]
    fn hashes_history_and_messages() {
        let t: PodTemplateSpec = serde_json::from_value(
            serde_json::json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "v1"}]}}),
        )
        .unwrap();
        let h = template_hash(&t, None);
        assert_eq!(h, template_hash(&t, None));
        assert!(h.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
        assert_ne!(h, template_hash(&t, Some(1)));
        let mut labeled = t.clone();
        labeled.metadata.as_mut().unwrap().labels.as_mut().unwrap().insert(HASH_LABEL.into(), h);
        assert!(same_template(&t, &labeled));
        let old = vec![("a".to_string(), 1, 0), ("b".to_string(), 2, 0), ("c".to_string(), 3, 0), ("d".to_string(), 4, 2)];
        assert_eq!(history_to_delete(&old, 1), ["a", "b"]);
        assert_eq!(scaling_message("web-abc", 0, 3), "Scaled up replica set web-abc from 0 to 3");
        assert_eq!(resolve(Some(&IntOrString::String("25%".into())), 10, true), 3);
    }
}
