//! The Kubernetes API types ownkube speaks: the ecosystem's own, from the `k8s-openapi`
//! crate (generated from Kubernetes' OpenAPI document, so every field of
//! `k8s.io/api/core/v1` is there, typed, with its upstream documentation). ownkube adds
//! only what those structs cannot say:
//!
//! - [`Object`]: what the apiserver's generic handlers need of any stored kind (its URL
//!   plural, whether it lives in a namespace, and quick access to the common metadata);
//! - small readers ([`PodExt`], [`ServiceExt`], [`NodeExt`]) for the optional parts
//!   of a Pod, Service or Node that are read everywhere;
//! - [`status`]: building `Status` errors and their causes; [`conditions`]: pod and node
//!   conditions; [`enums`]: the values that drive logic (phase, restart policy, condition
//!   status), as enums rather than strings;
//! - [`fields`]: which fields of a decoded body the types did not know (what
//!   `fieldValidation=Warn|Strict` reports).
//!
//! Upstream: k8s.io/api/core/v1/types.go, k8s.io/apimachinery/pkg/apis/meta/v1/types.go

use serde::{de::DeserializeOwned, Serialize};
use std::collections::BTreeMap;

pub mod conditions;
pub mod enums;
pub mod fields;
pub mod status;

pub use conditions::{condition, set_condition, ConditionLike};
pub use enums::{ConditionStatus, PodPhase, RestartPolicy};
pub use status::{CauseExt, StatusExt};

pub use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentSpec, DeploymentStatus, DeploymentStrategy, ReplicaSet, ReplicaSetCondition, ReplicaSetSpec,
    ReplicaSetStatus, RollingUpdateDeployment,
};
pub use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
pub use k8s_openapi::api::core::v1::{
    ConfigMap, Container, ContainerPort, ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, EndpointAddress, EndpointPort, EndpointSubset, Endpoints, EnvVar, Event, EventSource, Namespace, NamespaceSpec,
    NamespaceStatus, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus, NodeSystemInfo, ObjectReference, Pod,
    PodCondition, PodDNSConfig, PodIP, PodSpec, PodStatus, PodTemplateSpec, Probe, Secret, Service, ServiceAccount, ServicePort,
    ServiceSpec,
};
pub use k8s_openapi::api::discovery::v1::{Endpoint as SliceEndpoint, EndpointConditions, EndpointPort as SlicePort, EndpointSlice};
pub use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ListMeta, MicroTime, ObjectMeta, OwnerReference, Status, StatusCause, StatusDetails, Time,
};
pub use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
pub use k8s_openapi::{ByteString, Metadata, Resource};

/// Whether a kind's objects live inside a namespace, read off k8s-openapi's scope types.
pub trait Scope {
    const NAMESPACED: bool;
}
impl Scope for k8s_openapi::NamespaceResourceScope {
    const NAMESPACED: bool = true;
}
impl Scope for k8s_openapi::ClusterResourceScope {
    const NAMESPACED: bool = false;
}
/// Subresource kinds (`Scale`) are decoded, never stored: their parents here are namespaced.
impl Scope for k8s_openapi::SubResourceScope {
    const NAMESPACED: bool = true;
}

static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

/// A kind qualified by its group, as kube-apiserver names it in messages: `Pod`,
/// `Deployment.apps`.
pub fn group_kind<T: Resource>() -> String {
    match T::GROUP {
        "" => T::KIND.to_string(),
        g => format!("{}.{g}", T::KIND),
    }
}

/// What every stored kind has in common; the apiserver's generic handlers work on this.
/// `KIND` (`Pod`), `API_VERSION` (`v1`, `apps/v1`) and `GROUP` come from k8s-openapi's
/// [`Resource`]; every k8s-openapi kind with an `ObjectMeta` is an `Object`.
pub trait Object:
    Resource + Metadata<Ty = ObjectMeta> + Serialize + DeserializeOwned + Clone + Default + PartialEq + std::fmt::Debug + Send + Sync + 'static
{
    /// The plural used in URLs: `pods`, `services`, ...
    const RESOURCE: &'static str;
    /// Whether objects live inside a namespace (`/api/v1/namespaces/{ns}/pods`) or not (`/api/v1/nodes`).
    const NAMESPACED: bool;

    fn meta(&self) -> &ObjectMeta {
        self.metadata()
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        self.metadata_mut()
    }
    /// `metadata.name`, or `""` before the server has chosen one.
    fn name(&self) -> &str {
        self.metadata().name.as_deref().unwrap_or("")
    }
    fn namespace(&self) -> Option<&str> {
        self.metadata().namespace.as_deref()
    }
    fn labels(&self) -> &BTreeMap<String, String> {
        self.metadata().labels.as_ref().unwrap_or(&NO_LABELS)
    }
    fn uid(&self) -> Option<&str> {
        self.metadata().uid.as_deref()
    }
    fn resource_version(&self) -> Option<&str> {
        self.metadata().resource_version.as_deref()
    }
    fn is_deleting(&self) -> bool {
        self.metadata().deletion_timestamp.is_some()
    }
}

impl<T> Object for T
where
    T: Resource
        + Metadata<Ty = ObjectMeta>
        + Serialize
        + DeserializeOwned
        + Clone
        + Default
        + PartialEq
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    T::Scope: Scope,
{
    const RESOURCE: &'static str = T::URL_PATH_SEGMENT;
    const NAMESPACED: bool = <T::Scope as Scope>::NAMESPACED;
}

/// `ObjectMeta` with a name (and a namespace), the way most objects are made in code.
pub fn meta(ns: Option<&str>, name: &str) -> ObjectMeta {
    ObjectMeta { name: Some(name.to_string()), namespace: ns.map(String::from), ..Default::default() }
}

/// The current time, as `metadata.creationTimestamp` and conditions carry it (seconds).
pub fn now() -> Time {
    Time(jiff::Timestamp::now())
}

/// The current time with microseconds, as Lease `renewTime` and Event `eventTime` carry it.
pub fn now_micro() -> MicroTime {
    MicroTime(jiff::Timestamp::now())
}

/// Seconds since the Unix epoch of a time (for arithmetic on ages and deadlines).
pub fn seconds(t: &Time) -> i64 {
    t.0.as_second()
}

/// RFC 3339 time in UTC with seconds, the format of every Kubernetes timestamp.
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

// ---------------------------------------------------------------- Pod

/// Reading a Pod's optional parts without unwrapping at every step.
pub trait PodExt {
    fn containers(&self) -> &[Container];
    /// The node the scheduler bound the pod to (`spec.nodeName`, if not empty).
    fn node_name(&self) -> Option<&str>;
    fn pod_ip(&self) -> Option<&str>;
    fn phase(&self) -> PodPhase;
    fn restart_policy(&self) -> RestartPolicy;
    fn pod_condition(&self, type_: &str) -> Option<&PodCondition>;
    fn container_statuses(&self) -> &[ContainerStatus];
    /// Running with a `Ready=True` condition: what the endpoints controller puts behind a service.
    fn is_ready(&self) -> bool;
    /// Succeeded or Failed: the pod will not run again.
    fn is_terminal(&self) -> bool;
}

impl PodExt for Pod {
    fn containers(&self) -> &[Container] {
        self.spec.as_ref().map_or(&[], |s| &s.containers)
    }
    fn node_name(&self) -> Option<&str> {
        self.spec.as_ref().and_then(|s| s.node_name.as_deref()).filter(|n| !n.is_empty())
    }
    fn pod_ip(&self) -> Option<&str> {
        self.status.as_ref().and_then(|s| s.pod_ip.as_deref()).filter(|ip| !ip.is_empty())
    }
    fn phase(&self) -> PodPhase {
        PodPhase::parse(self.status.as_ref().and_then(|s| s.phase.as_deref()))
    }
    fn restart_policy(&self) -> RestartPolicy {
        RestartPolicy::parse(self.spec.as_ref().and_then(|s| s.restart_policy.as_deref()))
    }
    fn pod_condition(&self, type_: &str) -> Option<&PodCondition> {
        condition(self.status.as_ref().and_then(|s| s.conditions.as_deref()).unwrap_or(&[]), type_)
    }
    fn container_statuses(&self) -> &[ContainerStatus] {
        self.status.as_ref().and_then(|s| s.container_statuses.as_deref()).unwrap_or(&[])
    }
    fn is_ready(&self) -> bool {
        self.phase() == PodPhase::Running && self.pod_condition("Ready").is_some_and(|c| c.status == "True")
    }
    fn is_terminal(&self) -> bool {
        matches!(self.phase(), PodPhase::Succeeded | PodPhase::Failed)
    }
}

// ---------------------------------------------------------------- Service

/// Reading a Service's spec with Kubernetes' defaults applied.
pub trait ServiceExt {
    /// `ClusterIP` (the default), `NodePort`, `LoadBalancer` or `ExternalName`.
    fn type_(&self) -> &str;
    fn ports(&self) -> &[ServicePort];
    fn cluster_ip(&self) -> Option<&str>;
    /// The pod selector, if it has one that is not empty.
    fn selector(&self) -> Option<&BTreeMap<String, String>>;
    /// NodePort and LoadBalancer services open a port on every node.
    fn wants_node_ports(&self) -> bool;
    /// Headless (`clusterIP: None`) and ExternalName services get no virtual IP.
    fn wants_cluster_ip(&self) -> bool;
    /// A LoadBalancer service with `externalTrafficPolicy: Local` has a
    /// `healthCheckNodePort` that load balancers probe on every node.
    fn wants_health_check(&self) -> bool;
}

impl ServiceExt for Service {
    fn type_(&self) -> &str {
        self.spec.as_ref().and_then(|s| s.type_.as_deref()).filter(|t| !t.is_empty()).unwrap_or("ClusterIP")
    }
    fn ports(&self) -> &[ServicePort] {
        self.spec.as_ref().and_then(|s| s.ports.as_deref()).unwrap_or(&[])
    }
    fn cluster_ip(&self) -> Option<&str> {
        self.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()).filter(|ip| !ip.is_empty())
    }
    fn selector(&self) -> Option<&BTreeMap<String, String>> {
        self.spec.as_ref().and_then(|s| s.selector.as_ref()).filter(|s| !s.is_empty())
    }
    fn wants_node_ports(&self) -> bool {
        matches!(self.type_(), "NodePort" | "LoadBalancer")
    }
    fn wants_cluster_ip(&self) -> bool {
        self.type_() != "ExternalName" && self.cluster_ip() != Some("None")
    }
    fn wants_health_check(&self) -> bool {
        self.type_() == "LoadBalancer" && self.spec.as_ref().and_then(|s| s.external_traffic_policy.as_deref()) == Some("Local")
    }
}

/// A service port's protocol, `TCP` when not given.
pub fn protocol(p: &Option<String>) -> &str {
    p.as_deref().filter(|p| !p.is_empty()).unwrap_or("TCP")
}

// ---------------------------------------------------------------- Node

pub trait NodeExt {
    fn is_ready(&self) -> bool;
    fn internal_ip(&self) -> Option<&str>;
    fn pod_cidr(&self) -> Option<&str>;
    fn node_condition(&self, type_: &str) -> Option<&NodeCondition>;
    fn unschedulable(&self) -> bool;
}

impl NodeExt for Node {
    fn is_ready(&self) -> bool {
        self.node_condition("Ready").is_some_and(|c| c.status == "True")
    }
    fn internal_ip(&self) -> Option<&str> {
        let addrs = self.status.as_ref().and_then(|s| s.addresses.as_deref()).unwrap_or(&[]);
        addrs.iter().find(|a| a.type_ == "InternalIP").map(|a| a.address.as_str())
    }
    fn pod_cidr(&self) -> Option<&str> {
        self.spec.as_ref().and_then(|s| s.pod_cidr.as_deref()).filter(|c| !c.is_empty())
    }
    fn node_condition(&self, type_: &str) -> Option<&NodeCondition> {
        condition(self.status.as_ref().and_then(|s| s.conditions.as_deref()).unwrap_or(&[]), type_)
    }
    fn unschedulable(&self) -> bool {
        self.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_an_object_with_its_plural_and_scope() {
        assert_eq!((Pod::KIND, Pod::RESOURCE, Pod::NAMESPACED, Pod::API_VERSION), ("Pod", "pods", true, "v1"));
        assert_eq!((Node::RESOURCE, Node::NAMESPACED), ("nodes", false));
        assert_eq!((Deployment::API_VERSION, Deployment::RESOURCE), ("apps/v1", "deployments"));
        assert_eq!(Lease::API_VERSION, "coordination.k8s.io/v1");
    }

    #[test]
    fn readers_apply_kubernetes_defaults() {
        let svc: Service =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "s"}, "spec": {"ports": [{"port": 80}]}})).unwrap();
        assert_eq!(svc.type_(), "ClusterIP");
        assert!(svc.wants_cluster_ip() && !svc.wants_node_ports());
        assert_eq!(protocol(&svc.ports()[0].protocol), "TCP");
        let pod = Pod::default();
        assert_eq!(pod.phase(), PodPhase::Pending);
        assert_eq!(pod.restart_policy(), RestartPolicy::Always);
        assert!(pod.containers().is_empty() && pod.node_name().is_none() && !pod.is_ready());
    }

    #[test]
    fn target_port_is_int_or_string() {
        let p: ServicePort = serde_json::from_str(r#"{"port":80,"targetPort":"http"}"#).unwrap();
        assert_eq!(p.target_port, Some(IntOrString::String("http".into())));
        let p: ServicePort = serde_json::from_str(r#"{"port":80,"targetPort":8080}"#).unwrap();
        assert_eq!(p.target_port, Some(IntOrString::Int(8080)));
    }
}
