//! Server-side printing: `kubectl get` asks for `application/json;as=Table;g=meta.k8s.io;v=v1`
//! and prints the columns the server chooses (kube-apiserver's `pkg/printers/internalversion`).
//! Columns with priority 1 appear only with `-o wide`.

use pkg::api::*;
use serde_json::{json, Value};

pub trait Printable: Object {
    /// (name, type, priority)
    const COLUMNS: &'static [(&'static str, &'static str, u8)];
    fn cells(&self, now: chrono::DateTime<chrono::Utc>) -> Vec<Value>;
}

/// The AGE column, as `kubectl` shows it (`45s`, `3m20s`, `5h`, `2d3h`, ...).
pub fn human_age(created: Option<&str>, now: chrono::DateTime<chrono::Utc>) -> String {
    let Some(t) = created.and_then(|c| chrono::DateTime::parse_from_rfc3339(c).ok()) else { return "<unknown>".into() };
    let s = (now - t.with_timezone(&chrono::Utc)).num_seconds().max(0);
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

fn age<T: Object>(o: &T, now: chrono::DateTime<chrono::Utc>) -> Value {
    json!(human_age(o.meta().creation_timestamp.as_deref(), now))
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
    fn cells(&self, now: chrono::DateTime<chrono::Utc>) -> Vec<Value> {
        let statuses = &self.status.container_statuses;
        let ready = statuses.iter().filter(|c| c["ready"] == json!(true)).count();
        let restarts: i64 = statuses.iter().filter_map(|c| c["restartCount"].as_i64()).sum();
        let waiting = statuses.iter().find_map(|c| c["state"]["waiting"]["reason"].as_str());
        let terminated = statuses.iter().find_map(|c| c["state"]["terminated"]["reason"].as_str());
        let mut status = self.status.reason.clone().or_else(|| waiting.map(String::from)).or_else(|| terminated.map(String::from));
        if status.is_none() || self.status.phase.as_deref() == Some("Running") && waiting.is_none() {
            status = self.status.phase.clone();
        }
        if self.metadata.deletion_timestamp.is_some() {
            status = Some("Terminating".into());
        }
        vec![
            json!(self.metadata.name),
            json!(format!("{ready}/{}", self.spec.containers.len())),
            json!(status.unwrap_or_else(|| "Pending".into())),
            json!(restarts.to_string()),
            age(self, now),
            json!(self.status.pod_ip.clone().unwrap_or_else(|| "<none>".into())),
            json!(self.spec.node_name.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| "<none>".into())),
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
    fn cells(&self, now: chrono::DateTime<chrono::Utc>) -> Vec<Value> {
        let ports: Vec<String> = self
            .spec
            .ports
            .iter()
            .map(|p| match p.node_port {
                Some(n) => format!("{}:{n}/{}", p.port, p.protocol()),
                None => format!("{}/{}", p.port, p.protocol()),
            })
            .collect();
        let external = match self.spec.type_() {
            "ExternalName" => self.spec.external_name.clone().unwrap_or_default(),
            "LoadBalancer" => "<pending>".into(),
            _ => "<none>".into(),
        };
        let selector = match &self.spec.selector {
            Some(s) if !s.is_empty() => s.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","),
            _ => "<none>".into(),
        };
        vec![
            json!(self.metadata.name),
            json!(self.spec.type_()),
            json!(self.spec.cluster_ip.clone().unwrap_or_else(|| "<none>".into())),
            json!(external),
            json!(if ports.is_empty() { "<none>".into() } else { ports.join(",") }),
            age(self, now),
            json!(selector),
        ]
    }
}

impl Printable for Endpoints {
    const COLUMNS: &'static [(&'static str, &'static str, u8)] = &[("Name", "string", 0), ("Endpoints", "string", 0), ("Age", "string", 0)];
    fn cells(&self, now: chrono::DateTime<chrono::Utc>) -> Vec<Value> {
        let mut eps: Vec<String> = vec![];
        for s in &self.subsets {
            for a in &s.addresses {
                for p in &s.ports {
                    eps.push(format!("{}:{}", a.ip, p.port));
                }
            }
        }
        let shown = if eps.is_empty() {
            "<none>".to_string()
        } else if eps.len() > 3 {
            format!("{} + {} more...", eps[..3].join(","), eps.len() - 3)
        } else {
            eps.join(",")
        };
        vec![json!(self.metadata.name), json!(shown), age(self, now)]
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
    fn cells(&self, now: chrono::DateTime<chrono::Utc>) -> Vec<Value> {
        let mut status = if self.is_ready() { "Ready".to_string() } else { "NotReady".to_string() };
        if self.spec.unschedulable == Some(true) {
            status.push_str(",SchedulingDisabled");
        }
        let info = self.status.extra.get("nodeInfo").cloned().unwrap_or(Value::Null);
        let s = |v: &Value| v.as_str().filter(|s| !s.is_empty()).unwrap_or("<unknown>").to_string();
        vec![
            json!(self.metadata.name),
            json!(status),
            json!("<none>"),
            age(self, now),
            json!(s(&info["kubeletVersion"])),
            json!(self.internal_ip().unwrap_or("<none>")),
            json!("<none>"),
            json!(s(&info["osImage"])),
            json!(s(&info["kernelVersion"])),
            json!(s(&info["containerRuntimeVersion"])),
        ]
    }
}

impl Printable for Namespace {
    const COLUMNS: &'static [(&'static str, &'static str, u8)] = &[("Name", "string", 0), ("Status", "string", 0), ("Age", "string", 0)];
    fn cells(&self, now: chrono::DateTime<chrono::Utc>) -> Vec<Value> {
        let phase = self.status.as_ref().and_then(|s| s["phase"].as_str()).unwrap_or("Active");
        vec![json!(self.metadata.name), json!(phase), age(self, now)]
    }
}

impl Printable for ConfigMap {
    const COLUMNS: &'static [(&'static str, &'static str, u8)] = &[("Name", "string", 0), ("Data", "integer", 0), ("Age", "string", 0)];
    fn cells(&self, now: chrono::DateTime<chrono::Utc>) -> Vec<Value> {
        vec![json!(self.metadata.name), json!(self.data.len() + self.binary_data.len()), age(self, now)]
    }
}

impl Printable for Secret {
    const COLUMNS: &'static [(&'static str, &'static str, u8)] =
        &[("Name", "string", 0), ("Type", "string", 0), ("Data", "integer", 0), ("Age", "string", 0)];
    fn cells(&self, now: chrono::DateTime<chrono::Utc>) -> Vec<Value> {
        vec![json!(self.metadata.name), json!(self.type_.as_deref().unwrap_or("Opaque")), json!(self.data.len()), age(self, now)]
    }
}

impl Printable for ServiceAccount {
    const COLUMNS: &'static [(&'static str, &'static str, u8)] = &[("Name", "string", 0), ("Secrets", "integer", 0), ("Age", "string", 0)];
    fn cells(&self, now: chrono::DateTime<chrono::Utc>) -> Vec<Value> {
        let secrets = self.extra.get("secrets").and_then(Value::as_array).map_or(0, Vec::len);
        vec![json!(self.metadata.name), json!(secrets), age(self, now)]
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
    fn cells(&self, now: chrono::DateTime<chrono::Utc>) -> Vec<Value> {
        let event_time = self.extra.get("eventTime").and_then(Value::as_str);
        let last = self.last_timestamp.as_deref().or(event_time).or(self.metadata.creation_timestamp.as_deref());
        let first = self.first_timestamp.as_deref().or(event_time).or(self.metadata.creation_timestamp.as_deref());
        let io = &self.involved_object;
        let source = self.source.as_ref().and_then(|s| s.component.clone()).unwrap_or_default();
        vec![
            json!(human_age(last, now)),
            json!(self.type_.as_deref().unwrap_or("")),
            json!(self.reason.as_deref().unwrap_or("")),
            json!(format!("{}/{}", io.kind.to_lowercase(), io.name)),
            json!(io.field_path.as_deref().unwrap_or("")),
            json!(source),
            json!(self.message.as_deref().unwrap_or("").trim()),
            json!(human_age(first, now)),
            json!(self.count.unwrap_or(1).to_string()),
            json!(self.metadata.name),
        ]
    }
}

impl Printable for Lease {
    const COLUMNS: &'static [(&'static str, &'static str, u8)] = &[("Name", "string", 0), ("Holder", "string", 0), ("Age", "string", 0)];
    fn cells(&self, now: chrono::DateTime<chrono::Utc>) -> Vec<Value> {
        vec![json!(self.metadata.name), json!(self.spec.holder_identity.as_deref().unwrap_or("")), age(self, now)]
    }
}

/// A count from a workload's `status` (0 when the controller has not written it yet).
fn status_count(status: &Option<Value>, key: &str) -> i64 {
    status.as_ref().and_then(|s| s[key].as_i64()).unwrap_or(0)
}

/// `-o wide`: the template's containers, images and the selector.
fn template_cells(t: &PodTemplateSpec, sel: Option<&LabelSelectorSpec>) -> [Value; 3] {
    let names: Vec<&str> = t.spec.containers.iter().map(|c| c.name.as_str()).collect();
    let images: Vec<&str> = t.spec.containers.iter().map(|c| c.image.as_str()).collect();
    let sel: Vec<String> = sel.map(|s| s.match_labels.iter().map(|(k, v)| format!("{k}={v}")).collect()).unwrap_or_default();
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
    fn cells(&self, now: chrono::DateTime<chrono::Utc>) -> Vec<Value> {
        let s = &self.status;
        let mut cells = vec![
            json!(self.metadata.name),
            json!(format!("{}/{}", status_count(s, "readyReplicas"), self.spec.replicas.unwrap_or(1))),
            json!(status_count(s, "updatedReplicas")),
            json!(status_count(s, "availableReplicas")),
            age(self, now),
        ];
        cells.extend(template_cells(&self.spec.template, self.spec.selector.as_ref()));
        cells
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
    fn cells(&self, now: chrono::DateTime<chrono::Utc>) -> Vec<Value> {
        let s = &self.status;
        let mut cells = vec![
            json!(self.metadata.name),
            json!(self.spec.replicas.unwrap_or(1)),
            json!(status_count(s, "replicas")),
            json!(status_count(s, "readyReplicas")),
            age(self, now),
        ];
        cells.extend(template_cells(&self.spec.template, self.spec.selector.as_ref()));
        cells
    }
}

/// A `meta.k8s.io/v1` Table of `items`. `headers`: include the column definitions (a watch
/// sends them with its first event only).
pub fn table<T: Printable>(items: &[T], resource_version: Option<String>, headers: bool) -> Value {
    let now = chrono::Utc::now();
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
            // kubectl reads the namespace (for -A) and the name from the row's object.
            obj = json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"].take()});
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
        let now = chrono::DateTime::parse_from_rfc3339("2026-01-01T10:00:00Z").unwrap().with_timezone(&chrono::Utc);
        let at = |s: i64| (now - chrono::Duration::seconds(s)).to_rfc3339();
        assert_eq!(human_age(Some(&at(45)), now), "45s");
        assert_eq!(human_age(Some(&at(200)), now), "3m20s");
        assert_eq!(human_age(Some(&at(3600 * 5)), now), "5h");
        assert_eq!(human_age(Some(&at(86400 * 2 + 3600 * 3)), now), "2d3h");
        assert_eq!(human_age(None, now), "<unknown>");
    }
}
