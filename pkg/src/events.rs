//! What components tell `kubectl describe`: events about an object (a pod, one of its
//! containers with `fieldPath: spec.containers{name}`, a ReplicaSet, a Deployment), and
//! how repeats are counted instead of piling up. The same event again (same object, reason and message) within 10 minutes
//! raises `count` on the existing Event (a PATCH), so `describe` shows `(x5 over 3m)`.
//!
//! Upstream: k8s.io/client-go/tools/record/events_cache.go (EventCorrelator), pkg/kubelet/events

use crate::api::{Event, EventSource, MicroTime, Object, ObjectReference, Pod, Time};
use std::collections::HashMap;

/// How long a repeat is counted on the same Event.
pub const WINDOW_SECS: i64 = 600;
const MAX_KEYS: usize = 4096;

/// The object an event is about.
pub fn object_ref<T: Object>(o: &T) -> ObjectReference {
    ObjectReference {
        api_version: Some(T::API_VERSION.into()),
        kind: Some(T::KIND.into()),
        name: o.meta().name.clone(),
        namespace: o.meta().namespace.clone(),
        uid: o.meta().uid.clone(),
        resource_version: o.meta().resource_version.clone(),
        field_path: None,
    }
}

/// The object an event is about: the pod, or one of its containers.
pub fn pod_ref(pod: &Pod, container: Option<&str>) -> ObjectReference {
    let init = container.is_some_and(|c| pod.spec.as_ref().is_some_and(|s| s.init_containers.iter().flatten().any(|i| i.name == c)));
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: pod.metadata.name.clone(),
        namespace: pod.metadata.namespace.clone(),
        uid: pod.metadata.uid.clone(),
        resource_version: pod.metadata.resource_version.clone(),
        field_path: container.map(|c| if init { format!("spec.initContainers{{{c}}}") } else { format!("spec.containers{{{c}}}") }),
    }
}

/// A new event, `Normal` or `Warning`, from `(component, host)`; named after the
/// object and the time in nanoseconds (hex), as client-go names them.
pub fn new_event(
    on: ObjectReference,
    type_: &str,
    reason: &str,
    message: &str,
    (component, host): (&str, &str),
    now: &Time,
    nanos: i128,
) -> Event {
    let name = format!("{}.{:x}", on.name.as_deref().unwrap_or("event"), nanos);
    Event {
        metadata: crate::api::meta(on.namespace.as_deref().or(Some("default")), &name),
        involved_object: on,
        type_: Some(type_.into()),
        reason: Some(reason.into()),
        message: Some(message.into()),
        source: Some(EventSource { component: Some(component.into()), host: Some(host.into()) }),
        reporting_component: Some(component.into()),
        reporting_instance: Some(host.into()),
        first_timestamp: Some(now.clone()),
        last_timestamp: Some(now.clone()),
        event_time: None::<MicroTime>,
        count: Some(1),
        ..Default::default()
    }
}

/// What to send.
#[derive(Debug, PartialEq)]
pub enum Sink {
    Create(Box<Event>),
    /// Raise the count of an Event that exists: `{count, lastTimestamp, message}`.
    Patch {
        namespace: String,
        name: String,
        body: serde_json::Value,
    },
}

fn key(e: &Event) -> String {
    let o = &e.involved_object;
    let s = |v: &Option<String>| v.clone().unwrap_or_default();
    let src = e.source.clone().unwrap_or_default();
    [
        s(&src.component),
        s(&src.host),
        s(&o.kind),
        s(&o.namespace),
        s(&o.name),
        s(&o.field_path),
        s(&o.uid),
        s(&e.type_),
        s(&e.reason),
        s(&e.message),
    ]
    .join("\u{1f}")
}

/// Remembers recent events by what they say.
#[derive(Default)]
pub struct Correlator {
    seen: HashMap<String, Event>,
}

impl Correlator {
    /// Create `e`, or count it on the same event sent in the last 10 minutes.
    pub fn correlate(&mut self, e: Event, now: &Time) -> Sink {
        let k = key(&e);
        if let Some(prev) = self.seen.get_mut(&k) {
            let last = prev.last_timestamp.as_ref().map_or(0, |t| t.0.as_second());
            if now.0.as_second() - last <= WINDOW_SECS {
                let count = prev.count.unwrap_or(1) + 1;
                prev.count = Some(count);
                prev.last_timestamp = Some(now.clone());
                let body = serde_json::json!({"count": count, "lastTimestamp": now, "message": e.message});
                return Sink::Patch { namespace: prev.namespace().unwrap_or("default").to_string(), name: prev.name().to_string(), body };
            }
        }
        if self.seen.len() >= MAX_KEYS {
            self.seen.clear();
        }
        self.seen.insert(k, e.clone());
        Sink::Create(Box::new(e))
    }

    /// A patched event was gone (404): forget it so the next one is created.
    pub fn forget(&mut self, e: &Event) {
        self.seen.remove(&key(e));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn repeats_are_counted_on_one_event() {
        let pod: Pod =
            serde_json::from_value(json!({"metadata": {"name": "web", "namespace": "default", "uid": "u1"}, "spec": {"containers": []}}))
                .unwrap();
        let t = |s: i64| Time(jiff::Timestamp::from_second(s).unwrap());
        let ev = |at: &Time| {
            new_event(
                pod_ref(&pod, Some("app")),
                "Warning",
                "BackOff",
                "Back-off restarting failed container",
                ("kubelet", "node1"),
                at,
                42,
            )
        };
        let mut c = Correlator::default();
        let first = c.correlate(ev(&t(1000)), &t(1000));
        let Sink::Create(e) = first else { panic!("first is created") };
        assert_eq!((e.name(), e.involved_object.field_path.as_deref()), ("web.2a", Some("spec.containers{app}")));
        match c.correlate(ev(&t(1010)), &t(1010)) {
            Sink::Patch { name, body, .. } => assert_eq!((name.as_str(), body["count"].as_i64()), ("web.2a", Some(2))),
            other => panic!("{other:?}"),
        }
        assert!(matches!(c.correlate(ev(&t(2000)), &t(2000)), Sink::Create(_)), "after 10 minutes: a new event");
    }
}
