//! The kubelet's event recorder: `Pulling`, `Pulled`, `Created`, `Started`, `Killing`,
//! `BackOff`, `Unhealthy`, `FailedMount`, ... about a pod or one of its containers, sent
//! in the background (a slow apiserver never holds up pod work) and counted up when they
//! repeat ([`pkg::kubelet::events::Correlator`]), so `kubectl describe pod` tells the
//! pod's story without a thousand lines.
//!
//! Upstream: k8s.io/client-go/tools/record/event.go

use kube::api::{Api, Patch, PatchParams, PostParams};
use pkg::api::{now, Event, Pod};
use pkg::kubelet::events::{self as ev, Correlator, Sink};
use tokio::sync::mpsc;

#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Event>,
    host: String,
}

impl Recorder {
    pub fn start(client: kube::Client, host: &str) -> Recorder {
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
        Recorder { tx, host: host.to_string() }
    }

    /// Record an event about `pod` (and one of its containers); dropped if the queue is full.
    pub fn event(&self, pod: &Pod, container: Option<&str>, warning: bool, reason: &str, message: &str) {
        let nanos = jiff::Timestamp::now().as_nanosecond();
        let t = if warning { "Warning" } else { "Normal" };
        let e = ev::new_event(ev::pod_ref(pod, container), t, reason, message, ("kubelet", &self.host), &now(), nanos);
        let _ = self.tx.try_send(e);
    }
}
