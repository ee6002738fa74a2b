//! # events
//!
//! The event recorder every ownkube component shares (client-go's `tools/record`): the
//! kubelet's `Pulled`/`Started`/`Killing`, the scheduler's `Scheduled`/`FailedScheduling`,
//! the controllers' `SuccessfulCreate`/`ScalingReplicaSet`, all become core/v1 `Event`
//! objects that `kubectl describe` and `kubectl get events` show.
//!
//! An event is queued and sent in the background: a slow apiserver never holds up the
//! work it describes, and when the queue is full the event is dropped, not waited for.
//! Repeats (same object, reason and message within 10 minutes) raise `count` on the
//! Event already there ([`pkg::events::Correlator`]) instead of piling up.
//!
//! Upstream: k8s.io/client-go/tools/record/event.go

use kube::api::{Api, Patch, PatchParams, PostParams};
use pkg::api::{now, Event, ObjectReference};
use pkg::events::{self as ev, Correlator, Sink};
use tokio::sync::mpsc;

/// A handle to the background sender; cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Event>,
    component: String,
    host: String,
}

impl Recorder {
    /// Start the sender for events from `component` (`kubelet`, `deployment-controller`)
    /// on `host` (a node's name, or empty for the control plane).
    pub fn start(client: kube::Client, component: &str, host: &str) -> Recorder {
        let (tx, mut rx) = mpsc::channel::<Event>(1000);
        tokio::spawn(async move {
            let mut c = Correlator::default();
            while let Some(e) = rx.recv().await {
                let ns = e.metadata.namespace.clone().unwrap_or_else(|| "default".into());
                let api: Api<Event> = Api::namespaced(client.clone(), &ns);
                match c.correlate(e.clone(), &now()) {
                    Sink::Create(e) => {
                        if let Err(err) = api.create(&PostParams::default(), &e).await {
                            tracing::debug!(error = %err, "event not recorded");
                        }
                    }
                    Sink::Patch { name, body, .. } => {
                        if let Err(kube::Error::Api(s)) = api.patch(&name, &PatchParams::default(), &Patch::Merge(body)).await {
                            if s.code == 404 {
                                c.forget(&e);
                            }
                        }
                    }
                }
            }
        });
        Recorder { tx, component: component.to_string(), host: host.to_string() }
    }

    /// Record an event about `on`; dropped if the queue is full.
    pub fn event(&self, on: ObjectReference, warning: bool, reason: &str, message: &str) {
        let nanos = jiff::Timestamp::now().as_nanosecond();
        let t = if warning { "Warning" } else { "Normal" };
        let e = ev::new_event(on, t, reason, message, (&self.component, &self.host), &now(), nanos);
        let _ = self.tx.try_send(e);
    }
}
