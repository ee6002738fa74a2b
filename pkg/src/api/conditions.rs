//! Conditions: the `status.conditions` lists of pods and nodes (`Ready`, `PodScheduled`,
//! `MemoryPressure`, ...), each a type, a status (`True`, `False`, `Unknown`) and the time
//! it last changed. Setting one keeps `lastTransitionTime` when its status stays the same,
//! so a client can tell how long a pod has been Ready.
//!
//! Upstream: k8s.io/kubernetes/pkg/api/v1/pod/util.go (UpdatePodCondition)

use super::{NodeCondition, PodCondition, Time};

/// What pod and node conditions share.
pub trait ConditionLike {
    fn type_(&self) -> &str;
    fn status(&self) -> &str;
    fn transition_time(&self) -> Option<&Time>;
    fn set_transition_time(&mut self, t: Option<Time>);
}

impl ConditionLike for PodCondition {
    fn type_(&self) -> &str {
        &self.type_
    }
    fn status(&self) -> &str {
        &self.status
    }
    fn transition_time(&self) -> Option<&Time> {
        self.last_transition_time.as_ref()
    }
    fn set_transition_time(&mut self, t: Option<Time>) {
        self.last_transition_time = t;
    }
}

impl ConditionLike for NodeCondition {
    fn type_(&self) -> &str {
        &self.type_
    }
    fn status(&self) -> &str {
        &self.status
    }
    fn transition_time(&self) -> Option<&Time> {
        self.last_transition_time.as_ref()
    }
    fn set_transition_time(&mut self, t: Option<Time>) {
        self.last_transition_time = t;
    }
}

/// Find a condition by type.
pub fn condition<'a, C: ConditionLike>(conditions: &'a [C], type_: &str) -> Option<&'a C> {
    conditions.iter().find(|c| c.type_() == type_)
}

/// Set a condition, keeping `lastTransitionTime` when the status does not change.
pub fn set_condition<C: ConditionLike>(conditions: &mut Vec<C>, mut new: C, now: &Time) {
    match conditions.iter_mut().find(|c| c.type_() == new.type_()) {
        Some(old) => {
            let t = if old.status() == new.status() { old.transition_time().cloned() } else { Some(now.clone()) };
            new.set_transition_time(t.or_else(|| Some(now.clone())));
            *old = new;
        }
        None => {
            new.set_transition_time(Some(now.clone()));
            conditions.push(new);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_moves_only_when_the_status_does() {
        let t = |s: i64| Time(jiff::Timestamp::from_second(s).unwrap());
        let cond = |status: &str| PodCondition { type_: "Ready".into(), status: status.into(), ..Default::default() };
        let mut cs = vec![];
        set_condition(&mut cs, cond("False"), &t(10));
        set_condition(&mut cs, cond("False"), &t(20));
        assert_eq!(cs[0].last_transition_time, Some(t(10)));
        set_condition(&mut cs, cond("True"), &t(30));
        assert_eq!((cs.len(), cs[0].status.as_str(), cs[0].last_transition_time.clone()), (1, "True", Some(t(30))));
    }
}
