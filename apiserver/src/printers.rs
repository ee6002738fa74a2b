//! Server-side printing: `kubectl get` asks for `application/json;as=Table;g=meta.k8s.io;v=v1`
//! and prints the columns the server chooses (kube-apiserver's `pkg/printers/internalversion`).
//! Columns with priority 1 appear only with `-o wide`.

use pkg::api::*;
use serde_json::{json, Value};

/// Seconds since the Unix epoch: the "now" every AGE column is measured from.
pub type Now = i64;

pub trait Printable: Object {
    /// (name, type, priority)
    const COLUMNS: &'static [(&'static str, &'static str, u8)];
    fn cells(&self, now: Now) -> Vec<Value>;
}

/// The AGE column, as `kubectl` shows it (`45s`, `3m20s`, `5h`, `2d3h`, ...).
pub fn human_age(created: Option<i64>, now: Now) -> String {
    let Some(t) = created else { return "<unknown>".into() };
    let s = (now - t).max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86400);
    match () {
        _ if s < 120 => format!("{s}s"),
        _ if m < 10 && s % 60 != 0 => format!("{m}m{}s", s % 60),
        _ if m < 180 => format!("{m}m"),
        _ if h < 8 && m % 60 != 0 => format!("{h}h{}m", m % 60),
        _ if h < 48 => format!("{h}h"),
        _ if h < 192 && h % 24 != 0 => format!("{d}d{}h", h % 24),
        _ if d < 730 => format!("{d}d"),
        _ => format!("{}y", d / 365),
    }
}

fn age<T: Object>(o: &T, now: Now) -> Value {
    json!(human_age(o.meta().creation_timestamp.as_ref().map(seconds), now))
}

fn or_none(s: Option<&str>) -> Value {
    json!(s.filter(|s| !s.is_empty()).unwrap_or("<none>"))
}

/// The STATUS column of `kubectl get pods`: a waiting or terminated reason says more than
/// the phase (`CrashLoopBackOff`, `ErrImagePull`, `Completed`), `Terminating` most.
fn pod_status(pod: &Pod) -> String {
    let statuses = pod.container_statuses();
    let state = |f: fn(&ContainerState) -> Option<&String>| statuses.iter().find_map(|c| c.state.as_ref().and_then(f)).cloned();
    let waiting = state(|s| s.waiting.as_ref().and_then(|w| w.reason.as_ref()));
    let terminated = state(|s| s.terminated.as_ref().and_then(|t| t.reason.as_ref()));
    let phase = pod.phase();
    let reason = pod.status.as_ref().and_then(|s| s.reason.clone());
    let mut status = reason.or(waiting.clone()).or(terminated);
    if status.is_none() || phase == PodPhase::Running && waiting.is_none() {
        status = Some(phase.as_str().to_string());
    }
    if pod.is_deleting() {
        status = Some("Terminating".into());
    }
    status.unwrap_or_else(|| "Pending".into())
}

impl Printable for Pod {
    const COLUMNS: &'static [(&'static str, &'static str, u8)] = &[
        ("Name", "string", 0),
        ("Ready", "string", 0),
        ("Status", "string", 0),
        ("Restarts", "string", 0),
        ("Age", "string", 0),
        ("IP", "string", 1),
        ("Node", "string", 1),
        ("Nominated Node", "string", 1),
        ("Readiness Gates", "string", 1),
    ];
    fn cells(&self, now: Now) -> Vec<Value> {
        let statuses = self.container_statuses();
        let ready = statuses.iter().filter(|c| c.ready).count();
        let restarts: i32 = statuses.iter().map(|c| c.restart_count).sum();
        vec![
            json!(self.name()),
            json!(format!("{ready}/{}", self.containers().len())),
            json!(pod_status(self)),
            json!(restarts.to_string()),
            age(self, now),
            or_none(self.pod_ip()),
            or_none(self.node_name()),
            json!("<none>"),
            json!("<none>"),
        ]
    }
}

impl Printable for Service {
    const COLUMNS: &'static [(&'static str, &'static str, u8)] = &[
        ("Name", "string", 0),
        ("Type", "string", 0),
        ("Cluster-IP", "string", 0),
        ("External-IP", "string", 0),
        ("Port(s)", "string", 0),
        ("Age", "string", 0),
        ("Selector", "string", 1),
    ];
    fn cells(&self, now: Now) -> Vec<Value> {
        let ports: Vec<String> = self
            .ports()
            .iter()
            .map(|p| match p.node_port {
                Some(n) => format!("{}:{n}/{}", p.port, protocol(&p.protocol)),
                None => format!("{}/{}", p.port, protocol(&p.protocol)),
            })
            .collect();
        let external = match self.type_() {
            "ExternalName" => self.spec.as_ref().and_then(|s| s.external_name.clone()).unwrap_or_default(),
            "LoadBalancer" => "<pending>".into(),
            _ => "<none>".into(),
        };
        let selector = self.selector().map(|s| s.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","));
        vec![
            json!(self.name()),
            json!(self.type_()),
            or_none(self.cluster_ip()),
            json!(external),
            or_none(Some(&ports.join(","))),
            age(self, now),
            or_none(selector.as_deref()),
        ]
    }
}

impl Printable for Endpoints {
    const COLUMNS: &'static [(&'static str, &'static str, u8)] = &[("Name", "string", 0), ("Endpoints", "string", 0), ("Age", "string", 0)];
    fn cells(&self, now: Now) -> Vec<Value> {
        let mut eps: Vec<String> = vec![];
        for s in self.subsets.iter().flatten() {
            for a in s.addresses.iter().flatten() {
                for p in s.ports.iter().flatten() {
                    eps.push(format!("{}:{}", a.ip, p.port));
                }
            }
        }
        let shown = if eps.len() > 3 { format!("{} + {} more...", eps[..3].join(","), eps.len() - 3) } else { eps.join(",") };
        vec![json!(self.name()), or_none(Some(&shown)), age(self, now)]
    }
}

impl Printable for Node {
    const COLUMNS: &'static [(&'static str, &'static str, u8)] = &[
        ("Name", "string", 0),
        ("Status", "string", 0),
        ("Roles", "string", 0),
        ("Age", "string", 0),
        ("Version", "string", 0),
        ("Internal-IP", "string", 1),
        ("External-IP", "string", 1),
        ("OS-Image", "string", 1),
        ("Kernel-Version", "string", 1),
        ("Container-Runtime", "string", 1),
    ];
    fn cells(&self, now: Now) -> Vec<Value> {
        let mut status = if self.is_ready() { "Ready".to_string() } else { "NotReady".to_string() };
        if self.unschedulable() {
            status.push_str(",SchedulingDisabled");
        }
        let info = self.status.as_ref().and_then(|s| s.node_info.clone()).unwrap_or_default();
        let s = |v: &str| if v.is_empty() { "<unknown>".to_string() } else { v.to_string() };
        vec![
            json!(self.name()),
            json!(status),
            json!("<none>"),
            age(self, now),
            json!(s(&info.kubelet_version)),
            or_none(self.internal_ip()),
            json!("<none>"),
            json!(s(&info.os_image)),
            json!(s(&info.kernel_version)),
            json!(s(&info.container_runtime_version)),
        ]
    }
}

impl Printable for Namespace {
    const COLUMNS: &'static [(&'static str, &'static str, u8)] = &[("Name", "string", 0), ("Status", "string", 0), ("Age", "string", 0)];
    fn cells(&self, now: Now) -> Vec<Value> {
        let phase = self.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Active");
        vec![json!(self.name()), json!(phase), age(self, now)]
    }
}

impl Printable for ConfigMap {
    const COLUMNS: &'static [(&'static str, &'static str, u8)] = &[("Name", "string", 0), ("Data", "integer", 0), ("Age", "string", 0)];
    fn cells(&self, now: Now) -> Vec<Value> {
        let n = self.data.as_ref().map_or(0, |d| d.len()) + self.binary_data.as_ref().map_or(0, |d| d.len());
        vec![json!(self.name()), json!(n), age(self, now)]
    }
}

impl Printable for Secret {
    const COLUMNS: &'static [(&'static str, &'static str, u8)] =
        &[("Name", "string", 0), ("Type", "string", 0), ("Data", "integer", 0), ("Age", "string", 0)];
    fn cells(&self, now: Now) -> Vec<Value> {
        let n = self.data.as_ref().map_or(0, |d| d.len());
        vec![json!(self.name()), json!(self.type_.as_deref().unwrap_or("Opaque")), json!(n), age(self, now)]
    }
}

impl Printable for ServiceAccount {
    const COLUMNS: &'static [(&'static str, &'static str, u8)] = &[("Name", "string", 0), ("Secrets", "integer", 0), ("Age", "string", 0)];
    fn cells(&self, now: Now) -> Vec<Value> {
        vec![json!(self.name()), json!(self.secrets.as_ref().map_or(0, |s| s.len())), age(self, now)]
    }
}

/// `kubectl get events`: the columns of kube-apiserver's event printer.
impl Printable for Event {
    const COLUMNS: &'static [(&'static str, &'static str, u8)] = &[
        ("Last Seen", "string", 0),
        ("Type", "string", 0),
        ("Reason", "string", 0),
        ("Object", "string", 0),
        ("Subobject", "string", 1),
        ("Source", "string", 1),
        ("Message", "string", 0),
        ("First Seen", "string", 1),
        ("Count", "string", 1),
        ("Name", "string", 1),
    ];
    fn cells(&self, now: Now) -> Vec<Value> {
        let event_time = self.event_time.as_ref().map(|t| t.0.as_second());
        let created = self.metadata.creation_timestamp.as_ref().map(seconds);
        let last = self.last_timestamp.as_ref().map(seconds).or(event_time).or(created);
        let first = self.first_timestamp.as_ref().map(seconds).or(event_time).or(created);
        let io = &self.involved_object;
        let source = self.source.as_ref().and_then(|s| s.component.clone()).or(self.reporting_component.clone()).unwrap_or_default();
        vec![
            json!(human_age(last, now)),
            json!(self.type_.as_deref().unwrap_or("")),
            json!(self.reason.as_deref().unwrap_or("")),
            json!(format!("{}/{}", io.kind.as_deref().unwrap_or("").to_lowercase(), io.name.as_deref().unwrap_or(""))),
            json!(io.field_path.as_deref().unwrap_or("")),
            json!(source),
            json!(self.message.as_deref().unwrap_or("").trim()),
            json!(human_age(first, now)),
            json!(self.count.unwrap_or(1).to_string()),
            json!(self.name()),
        ]
    }
}

impl Printable for Lease {
    const COLUMNS: &'static [(&'static str, &'static str, u8)] = &[("Name", "string", 0), ("Holder", "string", 0), ("Age", "string", 0)];
    fn cells(&self, now: Now) -> Vec<Value> {
        let holder = self.spec.as_ref().and_then(|s| s.holder_identity.as_deref()).unwrap_or("");
        vec![json!(self.name()), json!(holder), age(self, now)]
    }
}

/// `-o wide`: the template's containers, images and the selector.
fn template_cells(t: Option<&PodTemplateSpec>, sel: &LabelSelector) -> [Value; 3] {
    let containers = t.and_then(|t| t.spec.as_ref()).map_or(&[][..], |s| &s.containers[..]);
    let names: Vec<&str> = containers.iter().map(|c| c.name.as_str()).collect();
    let images: Vec<&str> = containers.iter().map(|c| c.image.as_deref().unwrap_or("")).collect();
    let sel: Vec<String> = sel.match_labels.iter().flatten().map(|(k, v)| format!("{k}={v}")).collect();
    [json!(names.join(",")), json!(images.join(",")), json!(sel.join(","))]
}

impl Printable for Deployment {
    const COLUMNS: &'static [(&'static str, &'static str, u8)] = &[
        ("Name", "string", 0),
        ("Ready", "string", 0),
        ("Up-to-date", "integer", 0),
        ("Available", "integer", 0),
        ("Age", "string", 0),
        ("Containers", "string", 1),
        ("Images", "string", 1),
        ("Selector", "string", 1),
    ];
    fn cells(&self, now: Now) -> Vec<Value> {
        let s = self.status.clone().unwrap_or_default();
        let spec = self.spec.clone().unwrap_or_default();
        let mut cells = vec![
            json!(self.name()),
            json!(format!("{}/{}", s.ready_replicas.unwrap_or(0), spec.replicas.unwrap_or(1))),
            json!(s.updated_replicas.unwrap_or(0)),
            json!(s.available_replicas.unwrap_or(0)),
            age(self, now),
        ];
        cells.extend(template_cells(Some(&spec.template), &spec.selector));
        cells
    }
}

impl Printable for EndpointSlice {
    const COLUMNS: &'static [(&'static str, &'static str, u8)] =
        &[("Name", "string", 0), ("AddressType", "string", 0), ("Ports", "string", 0), ("Endpoints", "string", 0), ("Age", "string", 0)];
    fn cells(&self, now: Now) -> Vec<Value> {
        let ports: Vec<String> = self.ports.iter().flatten().filter_map(|p| p.port.map(|n| n.to_string())).collect();
        let addrs: Vec<&str> = self.endpoints.iter().flat_map(|e| e.addresses.iter().map(String::as_str)).collect();
        let shown = match addrs.len() {
            0 => "<unset>".to_string(),
            n if n <= 3 => addrs.join(","),
            n => format!("{} + {} more...", addrs[..3].join(","), n - 3),
        };
        let ports = if ports.is_empty() { "<unset>".to_string() } else { ports.join(",") };
        vec![json!(self.name()), json!(self.address_type), json!(ports), json!(shown), age(self, now)]
    }
}

impl Printable for ReplicaSet {
    const COLUMNS: &'static [(&'static str, &'static str, u8)] = &[
        ("Name", "string", 0),
        ("Desired", "integer", 0),
        ("Current", "integer", 0),
        ("Ready", "integer", 0),
        ("Age", "string", 0),
        ("Containers", "string", 1),
        ("Images", "string", 1),
        ("Selector", "string", 1),
    ];
    fn cells(&self, now: Now) -> Vec<Value> {
        let s = self.status.clone().unwrap_or_default();
        let spec = self.spec.clone().unwrap_or_default();
        let mut cells = vec![
            json!(self.name()),
            json!(spec.replicas.unwrap_or(1)),
            json!(s.replicas),
            json!(s.ready_replicas.unwrap_or(0)),
            age(self, now),
        ];
        cells.extend(template_cells(spec.template.as_ref(), &spec.selector));
        cells
    }
}

/// What each row of a Table carries besides its cells (`?includeObject=`): nothing, the
/// object's metadata (the default: kubectl reads the name and namespace from it), or the
/// whole object (what `kubectl get --sort-by` asks for, to sort by any field).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IncludeObject {
    None,
    #[default]
    Metadata,
    Object,
}

impl IncludeObject {
    /// The query parameter's value; anything else is a 400 naming it.
    pub fn from_param(v: Option<&str>) -> Result<IncludeObject, crate::error::ApiError> {
        match v.unwrap_or("") {
            "" | "Metadata" => Ok(IncludeObject::Metadata),
            "None" => Ok(IncludeObject::None),
            "Object" => Ok(IncludeObject::Object),
            other => Err(crate::error::ApiError::bad_request(format!(
                "includeObject: unsupported value {other:?}: want None, Metadata or Object"
            ))),
        }
    }
}

/// A `meta.k8s.io/v1` Table of `items`. `headers`: include the column definitions (a watch
/// sends them with its first event only).
pub fn table<T: Printable>(items: &[&T], resource_version: Option<String>, headers: bool, include: IncludeObject) -> Value {
    let now = jiff::Timestamp::now().as_second();
    let columns: Vec<Value> = if headers {
        T::COLUMNS
            .iter()
            .map(|(name, ty, prio)| {
                let mut c = json!({"name": name, "type": ty, "format": "", "description": name, "priority": prio});
                if *name == "Name" {
                    c["format"] = json!("name");
                }
                c
            })
            .collect()
    } else {
        vec![]
    };
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            let mut obj = serde_json::to_value(o).unwrap_or(Value::Null);
            match include {
                IncludeObject::Object => {}
                // kubectl reads the namespace (for -A) and the name from the row's object.
                IncludeObject::Metadata => {
                    obj = json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"].take()})
                }
                IncludeObject::None => return json!({"cells": o.cells(now)}),
            }
            json!({"cells": o.cells(now), "object": obj})
        })
        .collect();
    let mut meta = serde_json::Map::new();
    if let Some(rv) = resource_version {
        meta.insert("resourceVersion".into(), json!(rv));
    }
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "columnDefinitions": columns, "rows": rows})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_kubectl() {
        let now = 1_800_000_000;
        let at = |s: i64| Some(now - s);
        assert_eq!(human_age(at(45), now), "45s");
        assert_eq!(human_age(at(200), now), "3m20s");
        assert_eq!(human_age(at(3600 * 5), now), "5h");
        assert_eq!(human_age(at(86400 * 2 + 3600 * 3), now), "2d3h");
        assert_eq!(human_age(None, now), "<unknown>");
    }
}
