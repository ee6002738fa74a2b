//! The Kubernetes API types ownkube speaks: `core/v1` Pod, Service, Endpoints, Node and
//! Namespace here, in the same JSON shape as `k8s.io/api/core/v1`; ConfigMap, Secret and
//! ServiceAccount in [`config`], Event in [`event`], `coordination.k8s.io/v1` Lease in
//! [`lease`], and `apps/v1` Deployment and ReplicaSet in [`apps`].
//!
//! Upstream: k8s.io/api/core/v1/types.go
//!
//! Every struct names only the fields ownkube reads or writes. Everything else a real
//! manifest carries (resources, probes, annotations on a container, ...) lands in the
//! `extra` map of the struct it belongs to (`#[serde(flatten)]`) and is written back out
//! unchanged, so `kubectl get -o yaml` returns what was sent.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

pub mod apps;
pub mod config;
pub mod event;
pub mod lease;
pub use apps::{Deployment, DeploymentSpec, LabelSelectorSpec, PodTemplateSpec, ReplicaSet, ReplicaSetSpec};
pub use config::{ConfigMap, Secret, ServiceAccount};
pub use event::{Event, EventSource};
pub use lease::{Lease, LeaseSpec};

/// Unknown fields, kept as they came.
pub type Extra = Map<String, Value>;

/// `metadata`, common to every object.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generate_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// The etcd revision at which the object was last written (a string, as in Kubernetes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
    /// Set when a graceful delete has begun: the kubelet stops the pod, then removes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_grace_period_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// What every stored kind has in common; the apiserver's generic handlers work on this.
pub trait Object: Serialize + serde::de::DeserializeOwned + Clone + Send + Sync + 'static {
    /// `Pod`, `Service`, ...
    const KIND: &'static str;
    /// The plural used in URLs: `pods`, `services`, ...
    const RESOURCE: &'static str;
    /// Whether objects live inside a namespace (`/api/v1/namespaces/{ns}/pods`) or not (`/api/v1/nodes`).
    const NAMESPACED: bool;
    /// `v1` for the core group, `group/version` otherwise (`coordination.k8s.io/v1`).
    const API_VERSION: &'static str;
    fn meta(&self) -> &ObjectMeta;
    fn meta_mut(&mut self) -> &mut ObjectMeta;
    /// Fill `apiVersion` and `kind`, which clients may leave out.
    fn set_type_meta(&mut self);
}

/// Implement [`Object`] for a struct with `apiVersion`, `kind` and `metadata` fields.
#[macro_export]
macro_rules! object {
    ($ty:ident, $kind:literal, $resource:literal, $namespaced:literal) => {
        $crate::object!($ty, $kind, $resource, $namespaced, "v1");
    };
    ($ty:ident, $kind:literal, $resource:literal, $namespaced:literal, $api_version:literal) => {
        impl $crate::api::Object for $ty {
            const KIND: &'static str = $kind;
            const RESOURCE: &'static str = $resource;
            const NAMESPACED: bool = $namespaced;
            const API_VERSION: &'static str = $api_version;
            fn meta(&self) -> &$crate::api::ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut $crate::api::ObjectMeta {
                &mut self.metadata
            }
            fn set_type_meta(&mut self) {
                self.api_version = Some($api_version.into());
                self.kind = Some($kind.into());
            }
        }
    };
}

// ---------------------------------------------------------------- Pod

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pod {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PodSpec,
    #[serde(default)]
    pub status: PodStatus,
}
object!(Pod, "Pod", "pods", true);

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    #[serde(default)]
    pub containers: Vec<Container>,
    /// The node the scheduler bound this pod to; the kubelet of that node runs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// `Always` (the default), `OnFailure` or `Never`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_grace_period_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub image: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ContainerPort>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvVar {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub container_port: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    /// `Pending`, `Running`, `Succeeded`, `Failed` or `Unknown`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, rename = "podIP", skip_serializing_if = "Option::is_none")]
    pub pod_ip: Option<String>,
    #[serde(default, rename = "hostIP", skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub container_statuses: Vec<Value>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// A pod or node condition (`Ready`, `PodScheduled`, ...).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// Find a condition by type.
pub fn condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Set a condition, keeping `lastTransitionTime` when the status does not change.
pub fn set_condition(conditions: &mut Vec<Condition>, mut new: Condition, now: &str) {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(old) => {
            new.last_transition_time = if old.status == new.status { old.last_transition_time.clone() } else { Some(now.to_string()) };
            *old = new;
        }
        None => {
            new.last_transition_time = Some(now.to_string());
            conditions.push(new);
        }
    }
}

impl Pod {
    /// Running with a `Ready=True` condition: what the endpoints controller puts behind a service.
    pub fn is_ready(&self) -> bool {
        self.status.phase.as_deref() == Some("Running") && condition(&self.status.conditions, "Ready").is_some_and(|c| c.status == "True")
    }
    /// Succeeded or Failed: the pod will not run again.
    pub fn is_terminal(&self) -> bool {
        matches!(self.status.phase.as_deref(), Some("Succeeded" | "Failed"))
    }
}

// ---------------------------------------------------------------- Service

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ServiceSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Value>,
}
object!(Service, "Service", "services", true);

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// `ClusterIP` (the default), `NodePort`, `LoadBalancer` or `ExternalName`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    #[serde(default, rename = "clusterIP", skip_serializing_if = "Option::is_none")]
    pub cluster_ip: Option<String>,
    #[serde(default, rename = "clusterIPs", skip_serializing_if = "Option::is_none")]
    pub cluster_ips: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ServicePort>,
    /// Pods whose labels match all of these are the service's endpoints. No selector:
    /// the user manages the Endpoints object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_name: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default)]
    pub port: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<IntOrString>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_port: Option<i64>,
    #[serde(flatten)]
    pub extra: Extra,
}

impl ServicePort {
    pub fn protocol(&self) -> &str {
        self.protocol.as_deref().unwrap_or("TCP")
    }
}

impl ServiceSpec {
    pub fn type_(&self) -> &str {
        self.type_.as_deref().unwrap_or("ClusterIP")
    }
    /// NodePort and LoadBalancer services open a port on every node.
    pub fn wants_node_ports(&self) -> bool {
        matches!(self.type_(), "NodePort" | "LoadBalancer")
    }
    /// Headless (`clusterIP: None`) and ExternalName services get no virtual IP.
    pub fn wants_cluster_ip(&self) -> bool {
        self.type_() != "ExternalName" && self.cluster_ip.as_deref() != Some("None")
    }
}

/// A port given as a number or as the name of a container port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum IntOrString {
    Int(i64),
    Str(String),
}

// ---------------------------------------------------------------- Endpoints

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoints {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subsets: Vec<EndpointSubset>,
}
object!(Endpoints, "Endpoints", "endpoints", true);

/// A set of addresses that all serve the same ports.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSubset {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<EndpointAddress>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ready_addresses: Vec<EndpointAddress>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<EndpointPort>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointAddress {
    pub ip: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<ObjectReference>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectReference {
    #[serde(default)]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    /// Which part of the object, e.g. `spec.containers{app}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field_path: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointPort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub port: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

// ---------------------------------------------------------------- Node

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: NodeSpec,
    #[serde(default)]
    pub status: NodeStatus,
}
object!(Node, "Node", "nodes", false);

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeSpec {
    /// The /24 (by default) of the cluster CIDR this node hands its pods addresses from.
    #[serde(default, rename = "podCIDR", skip_serializing_if = "Option::is_none")]
    pub pod_cidr: Option<String>,
    #[serde(default, rename = "podCIDRs", skip_serializing_if = "Option::is_none")]
    pub pod_cidrs: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unschedulable: Option<bool>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<NodeAddress>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocatable: Option<BTreeMap<String, String>>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeAddress {
    #[serde(rename = "type")]
    pub type_: String,
    pub address: String,
}

impl Node {
    pub fn is_ready(&self) -> bool {
        condition(&self.status.conditions, "Ready").is_some_and(|c| c.status == "True")
    }
    pub fn internal_ip(&self) -> Option<&str> {
        self.status.addresses.iter().find(|a| a.type_ == "InternalIP").map(|a| a.address.as_str())
    }
}

// ---------------------------------------------------------------- Namespace

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Namespace {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Value>,
}
object!(Namespace, "Namespace", "namespaces", false);

// ---------------------------------------------------------------- Status

/// The error body every Kubernetes API error has: `kind: Status` with a machine-readable
/// `reason` (`NotFound`, `AlreadyExists`, `Invalid`, ...) and, for invalid input, the fields.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub kind: String,
    pub api_version: String,
    pub metadata: Map<String, Value>,
    pub status: String,
    pub message: String,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<StatusDetails>,
    pub code: u16,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusDetails {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<StatusCause>,
}

/// One reason an object is invalid: which field, and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusCause {
    /// `FieldValueInvalid`, `FieldValueRequired`, `FieldValueDuplicate`, ...
    pub reason: String,
    pub message: String,
    /// The JSON path of the field, e.g. `spec.ports[0].nodePort`.
    pub field: String,
}

impl StatusCause {
    pub fn invalid(field: impl Into<String>, value: impl std::fmt::Display, why: &str) -> Self {
        StatusCause { reason: "FieldValueInvalid".into(), message: format!("Invalid value: {value}: {why}"), field: field.into() }
    }
    pub fn required(field: impl Into<String>) -> Self {
        StatusCause { reason: "FieldValueRequired".into(), message: "Required value".into(), field: field.into() }
    }
    pub fn duplicate(field: impl Into<String>, value: impl std::fmt::Display) -> Self {
        StatusCause { reason: "FieldValueDuplicate".into(), message: format!("Duplicate value: {value}"), field: field.into() }
    }
    pub fn not_supported(field: impl Into<String>, value: &str, supported: &[&str]) -> Self {
        let list: Vec<String> = supported.iter().map(|s| format!("\"{s}\"")).collect();
        StatusCause {
            reason: "FieldValueNotSupported".into(),
            message: format!("Unsupported value: \"{value}\": supported values: {}", list.join(", ")),
            field: field.into(),
        }
    }
}

impl Status {
    pub fn failure(code: u16, reason: &str, message: impl Into<String>) -> Self {
        Status {
            kind: "Status".into(),
            api_version: "v1".into(),
            metadata: Map::new(),
            status: "Failure".into(),
            message: message.into(),
            reason: reason.into(),
            details: None,
            code,
        }
    }
    pub fn success() -> Self {
        let mut s = Self::failure(200, "", "");
        s.status = "Success".into();
        s
    }
    pub fn with_details(mut self, kind: &str, name: &str) -> Self {
        let d = self.details.get_or_insert_with(Default::default);
        d.kind = Some(kind.to_string());
        d.name = Some(name.to_string());
        self
    }
    /// `422 Invalid`, listing every cause, as `kubectl` prints them.
    pub fn invalid(kind: &str, name: &str, causes: Vec<StatusCause>) -> Self {
        let msgs: Vec<String> = causes.iter().map(|c| format!("{}: {}", c.field, c.message)).collect();
        let mut s = Self::failure(422, "Invalid", format!("{kind} \"{name}\" is invalid: {}", msgs.join(", ")))
            .with_details(&kind.to_lowercase(), name);
        s.details.as_mut().unwrap().causes = causes;
        s
    }
}

/// RFC 3339 time in UTC with seconds, the format of every Kubernetes timestamp.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_survive_a_round_trip() {
        let manifest = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "annotations": {"a": "b"}, "finalizers": ["x"]},
            "spec": {
                "containers": [{
                    "name": "c", "image": "nginx",
                    "resources": {"limits": {"cpu": "100m"}},
                    "livenessProbe": {"httpGet": {"path": "/", "port": 80}},
                    "ports": [{"containerPort": 80, "hostPort": 8080}]
                }],
                "dnsPolicy": "ClusterFirst"
            }
        });
        let pod: Pod = serde_json::from_value(manifest.clone()).unwrap();
        assert_eq!(pod.spec.containers[0].ports[0].container_port, 80);
        let back = serde_json::to_value(&pod).unwrap();
        assert_eq!(back["spec"]["containers"][0]["resources"], manifest["spec"]["containers"][0]["resources"]);
        assert_eq!(back["spec"]["containers"][0]["livenessProbe"]["httpGet"]["port"], 80);
        assert_eq!(back["spec"]["containers"][0]["ports"][0]["hostPort"], 8080);
        assert_eq!(back["spec"]["dnsPolicy"], "ClusterFirst");
        assert_eq!(back["metadata"]["finalizers"][0], "x");
    }

    #[test]
    fn target_port_is_int_or_string() {
        let p: ServicePort = serde_json::from_str(r#"{"port":80,"targetPort":"http"}"#).unwrap();
        assert_eq!(p.target_port, Some(IntOrString::Str("http".into())));
        let p: ServicePort = serde_json::from_str(r#"{"port":80,"targetPort":8080}"#).unwrap();
        assert_eq!(p.target_port, Some(IntOrString::Int(8080)));
    }
}
