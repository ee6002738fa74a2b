//! What a DELETE does to an object, as pure functions over its metadata.
//!
//! An object with `metadata.finalizers` is not removed by a DELETE: it is *marked*
//! (`deletionTimestamp`, and `deletionGracePeriodSeconds: 0`) and stays, readable and
//! watchable, until every finalizer has been taken off by whoever put it there; the update
//! that removes the last one removes the object. The `propagationPolicy` of the DELETE
//! adds the garbage collector's own finalizers:
//!
//! - `Background` (the default): none; the object goes at once and the garbage collector
//!   deletes its dependents afterwards, seeing their owner gone;
//! - `Foreground`: `foregroundDeletion`; the garbage collector deletes the dependents
//!   first and removes the finalizer when none that blocks (`blockOwnerDeletion`) is left;
//! - `Orphan`: `orphan`; the garbage collector removes the object from its dependents'
//!   `ownerReferences`, then removes the finalizer, and the dependents stay.
//!
//! A marked object may lose finalizers but gain none.
//!
//! Upstream: staging/src/k8s.io/apiserver/pkg/registry/generic/registry/store.go (Delete, updateForGracefulDeletionAndFinalizers)

use crate::api::{CauseExt, ObjectMeta, StatusCause, Time};
use crate::workloads::gc::{FOREGROUND, ORPHAN};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::DeleteOptions;

/// `DeleteOptions.propagationPolicy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Propagation {
    #[default]
    Background,
    Foreground,
    Orphan,
}

impl Propagation {
    pub fn parse(s: &str) -> Option<Propagation> {
        match s {
            "Background" => Some(Propagation::Background),
            "Foreground" => Some(Propagation::Foreground),
            "Orphan" => Some(Propagation::Orphan),
            _ => None,
        }
    }
}

/// What kube-apiserver's `ValidateDeleteOptions` refuses in a DELETE's options.
pub fn validate_options(o: &DeleteOptions) -> Vec<StatusCause> {
    let mut causes = vec![];
    if let (Some(_), Some(p)) = (o.orphan_dependents, &o.propagation_policy) {
        causes.push(StatusCause::invalid(
            "propagationPolicy",
            format!("{p:?}"),
            "orphanDependents and deletionPropagation cannot be both set",
        ));
    }
    if let Some(p) = o.propagation_policy.as_deref().filter(|p| Propagation::parse(p).is_none()) {
        causes.push(StatusCause::not_supported("propagationPolicy", p, &["Foreground", "Background", "Orphan", "nil"]));
    }
    causes.extend(crate::validation::dry_run_cause(o.dry_run.as_deref().unwrap_or_default()));
    causes
}

/// The policy a DELETE asks for: `propagationPolicy`, or the old `orphanDependents` flag
/// (which kubectl no longer sends but clients may); `None`: the kind's default.
pub fn propagation_of(o: &DeleteOptions) -> Option<Propagation> {
    match (o.propagation_policy.as_deref(), o.orphan_dependents) {
        (Some(p), _) => Propagation::parse(p),
        (None, Some(true)) => Some(Propagation::Orphan),
        (None, Some(false)) => Some(Propagation::Background),
        (None, None) => None,
    }
}

/// The grace period a DELETE asks for: a negative one is taken as 1 s, as kube-apiserver
/// has done since 1.22 (`rest.BeforeDelete`).
pub fn grace_of(o: &DeleteOptions) -> Option<i64> {
    o.grace_period_seconds.map(|g| if g < 0 { 1 } else { g })
}

/// The finalizers an object has once a DELETE with this policy has been applied: the
/// policy's own finalizer replaces the other one's (a later DELETE may change its mind).
pub fn finalizers_after(existing: &[String], policy: Option<Propagation>) -> Vec<String> {
    let Some(policy) = policy else { return existing.to_vec() };
    let mut out: Vec<String> = existing.iter().filter(|f| *f != FOREGROUND && *f != ORPHAN).cloned().collect();
    match policy {
        Propagation::Background => {}
        Propagation::Foreground => out.push(FOREGROUND.into()),
        Propagation::Orphan => out.push(ORPHAN.into()),
    }
    out
}

/// What the DELETE does.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Remove the object now.
    Remove,
    /// Write the object back with this metadata (marked, finalizers changed).
    Mark(Box<ObjectMeta>),
    /// Already marked as asked: nothing to write.
    Unchanged,
}

/// The DELETE of an object that is not (or no longer) waiting for a graceful stop:
/// `meta` is its metadata now, `policy` the request's propagation policy.
pub fn delete(meta: &ObjectMeta, policy: Option<Propagation>, now: &Time) -> Outcome {
    let finalizers = finalizers_after(meta.finalizers.as_deref().unwrap_or(&[]), policy);
    if finalizers.is_empty() {
        return Outcome::Remove;
    }
    let mut m = meta.clone();
    m.finalizers = Some(finalizers);
    m.deletion_timestamp.get_or_insert_with(|| now.clone());
    m.deletion_grace_period_seconds = Some(0);
    if m == *meta {
        return Outcome::Unchanged;
    }
    Outcome::Mark(Box::new(m))
}

/// After an update: is this a marked object whose last finalizer just went (so the
/// update removes it)? A pod still in its grace period waits for its kubelet.
pub fn finalized(meta: &ObjectMeta) -> bool {
    meta.deletion_timestamp.is_some()
        && meta.finalizers.as_ref().is_none_or(|f| f.is_empty())
        && meta.deletion_grace_period_seconds.unwrap_or(0) == 0
}

/// Finalizers an update adds to a marked object (which it may not do).
pub fn added_finalizers(old: &ObjectMeta, new: &ObjectMeta) -> Vec<String> {
    if old.deletion_timestamp.is_none() {
        return vec![];
    }
    let had = old.finalizers.as_deref().unwrap_or(&[]);
    new.finalizers.iter().flatten().filter(|f| !had.contains(f)).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delete_options_are_validated_as_kube_apiserver_does() {
        let o = |v: serde_json::Value| serde_json::from_value::<DeleteOptions>(v).unwrap();
        let fields = |v| validate_options(&o(v)).into_iter().map(|c| (c.field.unwrap(), c.message.unwrap())).collect::<Vec<_>>();
        assert_eq!(
            fields(serde_json::json!({"propagationPolicy": "garbage"})),
            [(
                "propagationPolicy".into(),
                r#"Unsupported value: "garbage": supported values: "Foreground", "Background", "Orphan", "nil""#.into()
            )]
        );
        assert_eq!(
            fields(serde_json::json!({"orphanDependents": true, "propagationPolicy": "Orphan"})),
            [(
                "propagationPolicy".into(),
                r#"Invalid value: "Orphan": orphanDependents and deletionPropagation cannot be both set"#.into()
            )]
        );
        assert_eq!(
            fields(serde_json::json!({"dryRun": ["foo"]})),
            [("dryRun".into(), r#"Unsupported value: []string{"foo"}: supported values: "All""#.into())]
        );
        assert!(fields(serde_json::json!({"dryRun": ["All"], "propagationPolicy": "Foreground"})).is_empty());
        assert_eq!(grace_of(&o(serde_json::json!({"gracePeriodSeconds": -5}))), Some(1));
        assert_eq!(propagation_of(&o(serde_json::json!({"orphanDependents": true}))), Some(Propagation::Orphan));
    }

    fn meta(finalizers: &[&str]) -> ObjectMeta {
        ObjectMeta { finalizers: Some(finalizers.iter().map(|s| s.to_string()).collect()), ..Default::default() }
    }

    #[test]
    fn finalizers_hold_an_object_until_the_last_is_removed() {
        let now = crate::api::now();
        assert_eq!(delete(&meta(&[]), None, &now), Outcome::Remove);
        assert_eq!(delete(&meta(&[]), Some(Propagation::Background), &now), Outcome::Remove);
        let Outcome::Mark(m) = delete(&meta(&["example.com/keep"]), None, &now) else { panic!() };
        assert!(m.deletion_timestamp.is_some());
        assert_eq!(m.deletion_grace_period_seconds, Some(0));
        assert_eq!(delete(&m, None, &now), Outcome::Unchanged, "a second DELETE changes nothing");
        assert!(!finalized(&m));
        let mut done = (*m).clone();
        done.finalizers = Some(vec![]);
        assert!(finalized(&done));
        assert_eq!(added_finalizers(&m, &meta(&["example.com/keep", "more"])), ["more"]);
        assert!(added_finalizers(&meta(&[]), &meta(&["fine"])).is_empty(), "before deletion anything goes");
    }

    #[test]
    fn propagation_policies_become_the_collectors_finalizers() {
        let now = crate::api::now();
        let Outcome::Mark(m) = delete(&meta(&[]), Some(Propagation::Foreground), &now) else { panic!() };
        assert_eq!(m.finalizers.as_deref(), Some(&[FOREGROUND.to_string()][..]));
        let Outcome::Mark(o) = delete(&m, Some(Propagation::Orphan), &now) else { panic!() };
        assert_eq!(o.finalizers.as_deref(), Some(&[ORPHAN.to_string()][..]), "a later DELETE may change its mind");
        assert_eq!(delete(&o, Some(Propagation::Background), &now), Outcome::Remove);
        assert_eq!(Propagation::parse("Orphan"), Some(Propagation::Orphan));
        assert_eq!(Propagation::parse("orphan"), None);
    }
}
