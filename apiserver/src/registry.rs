//! Per-kind behaviour ("strategies" in kube-apiserver's `pkg/registry`): what is validated,
//! what the server fills in on create, which fields an update may not change, which numbers
//! an object claims from the allocators, and how field selectors read it.
//!
//! Upstream: k8s.io/kubernetes/pkg/registry/core/{pod,service,node,...}/strategy.go

use crate::Config;
use k8s_openapi::api::autoscaling::v1::{Scale, ScaleSpec, ScaleStatus};
use pkg::alloc::first_free;
use pkg::api::*;
use pkg::validation::{self, ServiceRanges};
use serde_json::Value;
use std::collections::HashSet;

/// Where each allocator records who holds what.
pub const SERVICE_IPS: &str = "/registry/ranges/serviceips/";
pub const NODE_PORTS: &str = "/registry/ranges/servicenodeports/";
pub const POD_CIDRS: &str = "/registry/ranges/podcidrs/";

/// A number an object takes from an allocator: the key recording it, and how to report it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub key: String,
    /// The field that holds the number (`spec.clusterIP`, `spec.ports[0].nodePort`).
    pub field: String,
    pub value: String,
    /// Asked for by the user: if taken, that is the user's error (422), not a retry.
    pub requested: bool,
}

/// Replace `to`'s top-level `field` (`status`, `spec`) with `from`'s, through JSON: the
/// same few lines for every kind, whatever the field's type.
fn copy_field<T: Object>(to: &mut T, from: &T, field: &str) {
    let (Ok(mut doc), Ok(mut src)) = (serde_json::to_value(&*to), serde_json::to_value(from)) else { return };
    match src.get_mut(field).map(Value::take) {
        Some(v) => drop(doc.as_object_mut().map(|m| m.insert(field.to_string(), v))),
        None => drop(doc.as_object_mut().map(|m| m.remove(field))),
    }
    if let Ok(o) = serde_json::from_value(doc) {
        *to = o;
    }
}

/// What a kind does beyond generic storage.
pub trait Strategy: Object {
    fn validate(&self, cfg: &Config) -> Vec<StatusCause>;

    /// Whether the kind has a `status` only the `/status` subresource writes.
    const HAS_STATUS: bool = false;

    /// Reset what a client may not set on create (status, mostly) and fill in defaults.
    fn prepare_create(&mut self) {}

    /// For a PUT on the object: keep what only the status subresource may change and
    /// report fields that may not change.
    fn prepare_update(&mut self, old: &Self) -> Vec<StatusCause> {
        if Self::HAS_STATUS {
            copy_field(self, old, "status");
        }
        vec![]
    }

    /// For a PUT on `/status`: take everything but the status from the stored object.
    /// `false`: the kind has no status subresource.
    fn prepare_status_update(&mut self, old: &Self) -> bool {
        if Self::HAS_STATUS {
            let mut merged = old.clone();
            copy_field(&mut merged, self, "status");
            *self = merged;
        }
        Self::HAS_STATUS
    }

    /// Allocator prefixes whose taken set should be read before choosing (small ranges
    /// where order matters, such as pod CIDRs). Other allocators pick at random first.
    const PRELOAD: &'static [&'static str] = &[];
    /// Allocator prefixes this kind draws from.
    const ALLOCATORS: &'static [&'static str] = &[];

    /// Choose any numbers the object still needs (writing them into it) and list every
    /// claim it holds afterwards. `old` is the stored object on update; `taken` tells
    /// which claim keys are known to be held already.
    fn claims(&mut self, _old: Option<&Self>, _cfg: &Config, _taken: &HashSet<String>, _seed: u64) -> Result<Vec<Claim>, ApiErrorKind> {
        Ok(vec![])
    }

    /// The field selectors this kind supports, and the value of each.
    const FIELDS: &'static [&'static str] = &["metadata.name", "metadata.namespace"];
    fn field(&self, path: &str) -> String {
        default_field(self, path)
    }

    /// The `scale` subresource (an autoscaling/v1 `Scale`); `None`: the kind has none.
    fn scale(&self) -> Option<Scale> {
        None
    }
    /// What a write to `scale` does: set the desired replicas.
    fn set_replicas(&mut self, _replicas: i32) {}

    /// Objects of this kind expire this many seconds after their last write (events).
    const TTL_SECONDS: Option<i64> = None;

    /// Instead of deleting at once, mark the object as being deleted (and say so by
    /// returning true). Only pods do this: their kubelet must stop them first.
    fn begin_graceful_delete(&mut self, _grace: Option<i64>) -> bool {
        false
    }
}

/// Why [`Strategy::claims`] could not choose.
#[derive(Debug)]
pub enum ApiErrorKind {
    Invalid(Vec<StatusCause>),
    RangeFull(String),
}

fn default_field<T: Object>(o: &T, path: &str) -> String {
    match path {
        "metadata.name" => o.name().to_string(),
        "metadata.namespace" => o.namespace().unwrap_or_default().to_string(),
        _ => String::new(),
    }
}

/// `metadata.generation`: 1 on create, one more each time the spec changes, so a
/// controller can say which spec its status describes (`status.observedGeneration`).
fn next_generation<T: Object>(new: &mut T, old: Option<&T>, spec_changed: bool) {
    let g = match old {
        None => 1,
        Some(o) => o.meta().generation.unwrap_or(1) + i64::from(spec_changed),
    };
    new.meta_mut().generation = Some(g);
}

// ---------------------------------------------------------------- Pod

impl Strategy for Pod {
    fn validate(&self, _: &Config) -> Vec<StatusCause> {
        validation::validate_pod(self)
    }
    const HAS_STATUS: bool = true;
    fn prepare_create(&mut self) {
        self.status = Some(PodStatus { phase: Some("Pending".into()), qos_class: Some("BestEffort".into()), ..Default::default() });
        if let Some(spec) = self.spec.as_mut() {
            spec.restart_policy.get_or_insert_with(|| "Always".into());
            spec.dns_policy.get_or_insert_with(|| "ClusterFirst".into());
            spec.termination_grace_period_seconds.get_or_insert(30);
            spec.scheduler_name.get_or_insert_with(|| "default-scheduler".into());
            for c in spec.containers.iter_mut().chain(spec.init_containers.iter_mut().flatten()) {
                c.termination_message_path.get_or_insert_with(|| "/dev/termination-log".into());
                c.termination_message_policy.get_or_insert_with(|| "File".into());
                // Go's ResourceRequirements is a struct, not a pointer: kubectl always
                // sends `resources: {}`, so store it that way whatever the client sent
                // (else `rollout undo` would see a template that differs from its own).
                c.resources.get_or_insert_with(Default::default);
                let latest =
                    c.image.as_deref().is_some_and(|i| !i.rsplit('/').next().unwrap_or("").contains(':') || i.ends_with(":latest"));
                c.image_pull_policy.get_or_insert_with(|| if latest { "Always" } else { "IfNotPresent" }.into());
                for p in c.ports.iter_mut().flatten() {
                    p.protocol.get_or_insert_with(|| "TCP".into());
                }
            }
        }
    }
    fn prepare_update(&mut self, old: &Self) -> Vec<StatusCause> {
        copy_field(self, old, "status");
        let mut c = vec![];
        if let Some(old_node) = old.node_name() {
            if self.node_name() != Some(old_node) {
                c.push(StatusCause::invalid(
                    "spec.nodeName",
                    format!("\"{}\"", self.node_name().unwrap_or("")),
                    "field is immutable once the pod is bound",
                ));
            }
        }
        let names = |p: &Pod| p.containers().iter().map(|c| c.name.clone()).collect::<Vec<_>>();
        if names(self) != names(old) {
            c.push(StatusCause::invalid("spec.containers", "[...]", "pod updates may not add or remove containers"));
        }
        c
    }
    /// A pod bound to a node is deleted gracefully: the API marks it (`deletionTimestamp`,
    /// `deletionGracePeriodSeconds`), its kubelet sends SIGTERM, waits up to the grace
    /// period, kills, releases everything and then deletes the object for good with a
    /// grace period of 0. Unbound or finished pods, and `gracePeriodSeconds=0`, go at once.
    fn begin_graceful_delete(&mut self, grace: Option<i64>) -> bool {
        if self.node_name().is_none() || self.is_terminal() {
            return false;
        }
        let spec_grace = self.spec.as_ref().and_then(|s| s.termination_grace_period_seconds).unwrap_or(30);
        // A negative grace period means one second, as in Kubernetes (rest.BeforeDelete).
        let grace = match grace {
            Some(g) if g < 0 => 1,
            Some(g) => g,
            None => spec_grace.max(0),
        };
        if grace == 0 {
            return false;
        }
        if self.metadata.deletion_grace_period_seconds.is_some_and(|g| g <= grace) {
            return true; // already being deleted, at least as fast
        }
        // A grace period beyond what a timestamp can hold ends at the last representable second.
        let at = jiff::Timestamp::now().checked_add(jiff::SignedDuration::from_secs(grace)).unwrap_or(jiff::Timestamp::MAX);
        self.metadata.deletion_timestamp = Some(Time(at));
        self.metadata.deletion_grace_period_seconds = Some(grace);
        true
    }
    const FIELDS: &'static [&'static str] = &["metadata.name", "metadata.namespace", "spec.nodeName", "status.phase", "status.podIP"];
    fn field(&self, path: &str) -> String {
        match path {
            "spec.nodeName" => self.node_name().unwrap_or_default().to_string(),
            "status.phase" => self.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default(),
            "status.podIP" => self.pod_ip().unwrap_or_default().to_string(),
            p => default_field(self, p),
        }
    }
}

// ---------------------------------------------------------------- Service

/// The defaults kube-apiserver gives a service's ports and type.
fn default_service(spec: &mut ServiceSpec) {
    for p in spec.ports.iter_mut().flatten() {
        p.protocol.get_or_insert_with(|| "TCP".into());
        if p.target_port.is_none() && (1..=65535).contains(&p.port) {
            p.target_port = Some(IntOrString::Int(p.port));
        }
    }
    spec.type_.get_or_insert_with(|| "ClusterIP".into());
    spec.session_affinity.get_or_insert_with(|| "None".into());
    if spec.session_affinity.as_deref() == Some("ClientIP") {
        let cfg = spec.session_affinity_config.get_or_insert_with(Default::default);
        let client = cfg.client_ip.get_or_insert_with(Default::default);
        client.timeout_seconds.get_or_insert(pkg::proxy::DEFAULT_AFFINITY_SECS as i32);
    }
    if spec.type_.as_deref() != Some("ExternalName") {
        spec.internal_traffic_policy.get_or_insert_with(|| "Cluster".into());
        spec.ip_families.get_or_insert_with(|| vec!["IPv4".into()]);
        spec.ip_family_policy.get_or_insert_with(|| "SingleStack".into());
    }
    if matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer")) {
        spec.external_traffic_policy.get_or_insert_with(|| "Cluster".into());
    }
}

/// What an update that changes a service's type leaves behind from the old type, and
/// the user did not change, goes: `externalTrafficPolicy` when it stops being reachable
/// from outside, `healthCheckNodePort` when it stops being a `Local` LoadBalancer (as
/// kube-apiserver's dropTypeDependentFields does; `kubectl apply` sends the old values back).
fn drop_type_dependent_fields(new: &mut Service, old: &Service) {
    let (Some(spec), Some(old_spec)) = (new.spec.as_mut(), old.spec.as_ref()) else { return };
    let external = matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer"));
    if !external && spec.external_traffic_policy == old_spec.external_traffic_policy {
        spec.external_traffic_policy = None;
    }
    let wants_hc = spec.type_.as_deref() == Some("LoadBalancer") && spec.external_traffic_policy.as_deref() == Some("Local");
    if !wants_hc && spec.health_check_node_port == old_spec.health_check_node_port {
        spec.health_check_node_port = None;
    }
}

impl Strategy for Service {
    fn validate(&self, cfg: &Config) -> Vec<StatusCause> {
        validation::validate_service(
            self,
            &ServiceRanges { cluster_ips: cfg.service_cluster_ip_range, node_ports: cfg.service_node_port_range },
        )
    }
    const HAS_STATUS: bool = true;
    fn prepare_create(&mut self) {
        self.status = Some(serde_json::from_value(serde_json::json!({"loadBalancer": {}})).unwrap_or_default());
        default_service(self.spec.get_or_insert_with(Default::default));
    }
    fn prepare_update(&mut self, old: &Self) -> Vec<StatusCause> {
        copy_field(self, old, "status");
        drop_type_dependent_fields(self, old);
        default_service(self.spec.get_or_insert_with(Default::default));
        let mut c = vec![];
        let old_spec = old.spec.clone().unwrap_or_default();
        let is_external = self.type_() == "ExternalName";
        let wants_node_ports = self.wants_node_ports();
        let spec = self.spec.get_or_insert_with(Default::default);
        // Like Kubernetes, an update that leaves the ClusterIP out keeps the allocated one.
        match spec.cluster_ip.as_deref() {
            None | Some("") => {
                spec.cluster_ip = old_spec.cluster_ip.clone();
                spec.cluster_ips = old_spec.cluster_ips.clone();
            }
            Some(ip) if old_spec.cluster_ip.as_deref().is_some_and(|o| o != ip) && !is_external => {
                c.push(StatusCause::invalid("spec.clusterIP", format!("\"{ip}\""), "field is immutable"))
            }
            _ => {}
        }
        // ... and so do node ports left out of a port that still exists.
        if wants_node_ports {
            let old_ports = old_spec.ports.unwrap_or_default();
            for p in spec.ports.iter_mut().flatten() {
                if p.node_port.unwrap_or(0) == 0 {
                    p.node_port = old_ports
                        .iter()
                        .find(|o| o.port == p.port && protocol(&o.protocol) == protocol(&p.protocol))
                        .and_then(|o| o.node_port);
                }
            }
        }
        c
    }
    const ALLOCATORS: &'static [&'static str] = &[SERVICE_IPS, NODE_PORTS];
    fn claims(&mut self, old: Option<&Self>, cfg: &Config, taken: &HashSet<String>, seed: u64) -> Result<Vec<Claim>, ApiErrorKind> {
        let mut claims = vec![];
        let cx = ClaimCx { old, cfg, taken, seed };
        self.claim_cluster_ip(&cx, &mut claims)?;
        self.claim_node_ports(&cx, &mut claims)?;
        self.claim_health_check_node_port(&cx, &mut claims)?;
        Ok(claims)
    }
}

/// What every claim of an object is decided from: the stored object (on an update), the
/// ranges, the numbers already taken, and a random seed for where to start looking.
struct ClaimCx<'a, T> {
    old: Option<&'a T>,
    cfg: &'a Config,
    taken: &'a HashSet<String>,
    seed: u64,
}

trait ServiceClaims: Sized {
    fn claim_cluster_ip(&mut self, cx: &ClaimCx<'_, Self>, out: &mut Vec<Claim>) -> Result<(), ApiErrorKind>;
    fn claim_node_ports(&mut self, cx: &ClaimCx<'_, Self>, out: &mut Vec<Claim>) -> Result<(), ApiErrorKind>;
    fn claim_health_check_node_port(&mut self, cx: &ClaimCx<'_, Self>, out: &mut Vec<Claim>) -> Result<(), ApiErrorKind>;
}

impl ServiceClaims for Service {
    /// A ClusterIP: the one asked for, or one chosen at random from the range's free ones.
    fn claim_cluster_ip(&mut self, cx: &ClaimCx<'_, Self>, out: &mut Vec<Claim>) -> Result<(), ApiErrorKind> {
        let (old, cfg, taken, seed) = (cx.old, cx.cfg, cx.taken, cx.seed);
        let owner_ips: HashSet<String> = old.and_then(|o| o.cluster_ip()).map(String::from).into_iter().collect();
        let wants = self.wants_cluster_ip();
        let external = self.type_() == "ExternalName";
        let spec = self.spec.get_or_insert_with(Default::default);
        if !wants {
            spec.cluster_ips = if external { None } else { Some(vec!["None".into()]) };
            if external {
                spec.cluster_ip = None;
            }
            return Ok(());
        }
        let (ip, requested) = match spec.cluster_ip.as_deref() {
            Some(ip) if !ip.is_empty() => (ip.to_string(), !owner_ips.contains(ip)),
            _ => {
                let range = cfg.service_cluster_ip_range;
                let usable = range.usable();
                let n = usable.end - usable.start;
                let pick = first_free(n, seed % n, |i| taken.contains(&format!("{SERVICE_IPS}{}", range.nth(usable.start + i).unwrap())))
                    .ok_or_else(|| ApiErrorKind::RangeFull(format!("failed to allocate a serviceIP: range {range} is full")))?;
                (range.nth(usable.start + pick).unwrap().to_string(), false)
            }
        };
        spec.cluster_ip = Some(ip.clone());
        spec.cluster_ips = Some(vec![ip.clone()]);
        out.push(Claim { key: format!("{SERVICE_IPS}{ip}"), field: "spec.clusterIP".into(), value: ip, requested });
        Ok(())
    }

    /// A nodePort for every port of a NodePort or LoadBalancer service.
    fn claim_node_ports(&mut self, cx: &ClaimCx<'_, Self>, out: &mut Vec<Claim>) -> Result<(), ApiErrorKind> {
        let (old, cfg, taken, seed) = (cx.old, cx.cfg, cx.taken, cx.seed);
        let wants = self.wants_node_ports();
        let ports = self.spec.get_or_insert_with(Default::default).ports.get_or_insert_with(Vec::new);
        if !wants {
            ports.iter_mut().for_each(|p| p.node_port = None);
            return Ok(());
        }
        let held: HashSet<i32> = old.into_iter().flat_map(|o| o.ports().iter().filter_map(|p| p.node_port)).collect();
        let mut mine: HashSet<i32> = ports.iter().filter_map(|p| p.node_port).filter(|&p| p != 0).collect();
        let range = cfg.service_node_port_range;
        for (i, p) in ports.iter_mut().enumerate() {
            let (port, requested) = match p.node_port.filter(|&n| n != 0) {
                Some(n) => (n, !held.contains(&n)),
                None => {
                    let pick = first_free(range.size(), (seed >> 20).wrapping_add(i as u64 * 7919) % range.size(), |j| {
                        let port = range.low as i32 + j as i32;
                        mine.contains(&port) || taken.contains(&format!("{NODE_PORTS}{port}"))
                    })
                    .ok_or_else(|| ApiErrorKind::RangeFull(format!("failed to allocate a nodePort: range {range} is full")))?;
                    (range.low as i32 + pick as i32, false)
                }
            };
            mine.insert(port);
            p.node_port = Some(port);
            // TCP and UDP on one port of the same service share one claim.
            let key = format!("{NODE_PORTS}{port}");
            if !out.iter().any(|c| c.key == key) {
                out.push(Claim { key, field: format!("spec.ports[{i}].nodePort"), value: port.to_string(), requested });
            }
        }
        Ok(())
    }

    /// The `healthCheckNodePort` of a LoadBalancer service with `externalTrafficPolicy:
    /// Local`: the one asked for, the one it had, or a free one from the nodePort range
    /// (it shares the range, and its claims, with the nodePorts).
    fn claim_health_check_node_port(&mut self, cx: &ClaimCx<'_, Self>, out: &mut Vec<Claim>) -> Result<(), ApiErrorKind> {
        let (old, cfg, taken, seed) = (cx.old, cx.cfg, cx.taken, cx.seed);
        let wants = self.wants_health_check();
        let held = old.and_then(|o| o.spec.as_ref()).and_then(|s| s.health_check_node_port);
        let spec = self.spec.get_or_insert_with(Default::default);
        if !wants {
            spec.health_check_node_port = None;
            return Ok(());
        }
        let port = match spec.health_check_node_port.filter(|&n| n != 0).or(held) {
            Some(n) => n,
            None => {
                let range = cfg.service_node_port_range;
                let mine: HashSet<String> = out.iter().map(|c| c.key.clone()).collect();
                let pick = first_free(range.size(), (seed >> 30) % range.size(), |j| {
                    let key = format!("{NODE_PORTS}{}", range.low as i64 + j as i64);
                    mine.contains(&key) || taken.contains(&key)
                })
                .ok_or_else(|| ApiErrorKind::RangeFull(format!("failed to allocate a healthCheckNodePort: range {range} is full")))?;
                range.low as i32 + pick as i32
            }
        };
        spec.health_check_node_port = Some(port);
        let key = format!("{NODE_PORTS}{port}");
        if out.iter().any(|c| c.key == key) {
            let cause = StatusCause::invalid("spec.healthCheckNodePort", port, "may not be the same as a nodePort of the service");
            return Err(ApiErrorKind::Invalid(vec![cause]));
        }
        out.push(Claim { key, field: "spec.healthCheckNodePort".into(), value: port.to_string(), requested: held != Some(port) });
        Ok(())
    }
}

// ---------------------------------------------------------------- the other core kinds

impl Strategy for Endpoints {
    fn validate(&self, _: &Config) -> Vec<StatusCause> {
        validation::validate_endpoints(self)
    }
}

impl Strategy for EndpointSlice {
    fn validate(&self, _: &Config) -> Vec<StatusCause> {
        validation::validate_endpoint_slice(self)
    }
    /// What kube-proxy watches: `kubernetes.io/service-name` is a label, so a label selector
    /// finds a service's slices; the field selectors are the generic ones.
    const FIELDS: &'static [&'static str] = &["metadata.name", "metadata.namespace"];
}

impl Strategy for Namespace {
    fn validate(&self, _: &Config) -> Vec<StatusCause> {
        validation::validate_namespace(self)
    }
    /// A namespace is not deleted at once: it turns Terminating, and the namespace
    /// controller removes it (with a grace period of 0) once it is empty.
    fn begin_graceful_delete(&mut self, grace: Option<i64>) -> bool {
        if grace == Some(0) {
            return false;
        }
        self.metadata.deletion_timestamp.get_or_insert_with(pkg::api::now);
        self.status.get_or_insert_with(Default::default).phase = Some("Terminating".into());
        true
    }
    const HAS_STATUS: bool = true;
    fn prepare_create(&mut self) {
        self.status = Some(NamespaceStatus { phase: Some("Active".into()), ..Default::default() });
        self.spec = Some(NamespaceSpec { finalizers: Some(vec!["kubernetes".into()]) });
        let name = self.name().to_string();
        self.meta_mut().labels.get_or_insert_with(Default::default).insert("kubernetes.io/metadata.name".into(), name);
    }
}

impl Strategy for Node {
    fn validate(&self, _: &Config) -> Vec<StatusCause> {
        validation::validate_node(self)
    }
    const HAS_STATUS: bool = true;
    fn prepare_update(&mut self, old: &Self) -> Vec<StatusCause> {
        copy_field(self, old, "status");
        let spec = self.spec.get_or_insert_with(Default::default);
        match (spec.pod_cidr.as_deref(), old.pod_cidr()) {
            (None, Some(_)) => {
                let o = old.spec.clone().unwrap_or_default();
                spec.pod_cidr = o.pod_cidr;
                spec.pod_cidrs = o.pod_cidrs;
                vec![]
            }
            (Some(new), Some(o)) if new != o => {
                vec![StatusCause::invalid("spec.podCIDR", format!("\"{new}\""), "field is immutable once set")]
            }
            _ => vec![],
        }
    }
    const PRELOAD: &'static [&'static str] = &[POD_CIDRS];
    const ALLOCATORS: &'static [&'static str] = &[POD_CIDRS];
    /// A node gets the first /24 (by default) of the cluster CIDR that no other node has,
    /// in the same transaction that creates it: the node IPAM controller, made atomic.
    fn claims(&mut self, old: Option<&Self>, cfg: &Config, taken: &HashSet<String>, _seed: u64) -> Result<Vec<Claim>, ApiErrorKind> {
        let key = |c: &str| format!("{POD_CIDRS}{}", c.replace('/', "-"));
        let (cidr, requested) = match self.pod_cidr() {
            Some(c) => (c.to_string(), old.and_then(|o| o.pod_cidr()) != Some(c)),
            None => {
                let n = cfg.cluster_cidr.subnet_count(cfg.node_cidr_mask_size);
                let i =
                    first_free(n, 0, |i| taken.contains(&key(&cfg.cluster_cidr.subnet(cfg.node_cidr_mask_size, i).unwrap().to_string())))
                        .ok_or_else(|| ApiErrorKind::RangeFull(format!("no pod CIDR left in {}", cfg.cluster_cidr)))?;
                (cfg.cluster_cidr.subnet(cfg.node_cidr_mask_size, i).unwrap().to_string(), false)
            }
        };
        let spec = self.spec.get_or_insert_with(Default::default);
        spec.pod_cidr = Some(cidr.clone());
        spec.pod_cidrs = Some(vec![cidr.clone()]);
        Ok(vec![Claim { key: key(&cidr), field: "spec.podCIDR".into(), value: cidr, requested }])
    }
    const FIELDS: &'static [&'static str] = &["metadata.name", "spec.unschedulable"];
    fn field(&self, path: &str) -> String {
        match path {
            "spec.unschedulable" => self.unschedulable().to_string(),
            p => default_field(self, p),
        }
    }
}

/// An immutable ConfigMap or Secret (`immutable: true`) keeps its data and stays immutable.
fn immutable_kept<V: PartialEq>(old_immutable: Option<bool>, new_immutable: Option<bool>, old: &V, new: &V) -> Vec<StatusCause> {
    let mut c = vec![];
    if old_immutable == Some(true) {
        if new_immutable != Some(true) {
            c.push(StatusCause::invalid("immutable", "false", "field is immutable when `immutable` is set"));
        }
        if old != new {
            c.push(StatusCause::invalid("data", "<data>", "field is immutable when `immutable` is set"));
        }
    }
    c
}

impl Strategy for ConfigMap {
    fn validate(&self, _: &Config) -> Vec<StatusCause> {
        validation::validate_configmap(self)
    }
    fn prepare_update(&mut self, old: &Self) -> Vec<StatusCause> {
        immutable_kept(old.immutable, self.immutable, &(&old.data, &old.binary_data), &(&self.data, &self.binary_data))
    }
}

impl Strategy for Secret {
    fn validate(&self, _: &Config) -> Vec<StatusCause> {
        validation::validate_secret(self)
    }
    /// `stringData` is folded into `data` and never stored; `type` defaults to Opaque.
    fn prepare_create(&mut self) {
        for (k, v) in self.string_data.take().into_iter().flatten() {
            self.data.get_or_insert_with(Default::default).insert(k, ByteString(v.into_bytes()));
        }
        if self.type_.as_deref().unwrap_or("").is_empty() {
            self.type_ = Some("Opaque".into());
        }
    }
    fn prepare_update(&mut self, old: &Self) -> Vec<StatusCause> {
        self.prepare_create();
        let mut c = immutable_kept(old.immutable, self.immutable, &old.data, &self.data);
        if self.type_ != old.type_ {
            c.push(StatusCause::invalid("type", format!("\"{}\"", self.type_.as_deref().unwrap_or("")), "field is immutable"));
        }
        c
    }
}

impl Strategy for ServiceAccount {
    fn validate(&self, _: &Config) -> Vec<StatusCause> {
        validation::validate_service_account(self)
    }
}

impl Strategy for Event {
    fn validate(&self, _: &Config) -> Vec<StatusCause> {
        validation::validate_event(self)
    }
    /// kube-apiserver's default `--event-ttl`.
    const TTL_SECONDS: Option<i64> = Some(3600);
    /// What `kubectl describe` asks for: the events of one object.
    const FIELDS: &'static [&'static str] = &[
        "metadata.name",
        "metadata.namespace",
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    ];
    fn field(&self, path: &str) -> String {
        let io = &self.involved_object;
        let s = |v: &Option<String>| v.clone().unwrap_or_default();
        match path {
            "involvedObject.kind" => s(&io.kind),
            "involvedObject.namespace" => s(&io.namespace),
            "involvedObject.name" => s(&io.name),
            "involvedObject.uid" => s(&io.uid),
            "involvedObject.apiVersion" => s(&io.api_version),
            "involvedObject.resourceVersion" => s(&io.resource_version),
            "involvedObject.fieldPath" => s(&io.field_path),
            "reason" => s(&self.reason),
            "reportingComponent" => s(&self.reporting_component),
            "source" => self.source.as_ref().map(|src| s(&src.component)).unwrap_or_default(),
            "type" => s(&self.type_),
            p => default_field(self, p),
        }
    }
}

impl Strategy for Lease {
    fn validate(&self, _: &Config) -> Vec<StatusCause> {
        validation::validate_lease(self)
    }
}

// ---------------------------------------------------------------- apps/v1

/// The defaults kube-apiserver gives a pod template (pkg/apis/core/v1/defaults.go).
fn default_template(t: &mut PodTemplateSpec) {
    let mut pod = Pod { spec: t.spec.take(), ..Default::default() };
    let status = pod.status.take();
    pod.prepare_create();
    pod.status = status;
    t.spec = pod.spec;
}

/// The defaults kube-apiserver gives a Deployment (pkg/apis/apps/v1/defaults.go).
fn default_deployment(spec: &mut DeploymentSpec) {
    spec.replicas.get_or_insert(1);
    spec.revision_history_limit.get_or_insert(10);
    spec.progress_deadline_seconds.get_or_insert(600);
    let strategy = spec.strategy.get_or_insert_with(Default::default);
    let ty = strategy.type_.get_or_insert_with(|| "RollingUpdate".into()).clone();
    if ty == "RollingUpdate" {
        let ru = strategy.rolling_update.get_or_insert_with(Default::default);
        ru.max_surge.get_or_insert_with(|| IntOrString::String("25%".into()));
        ru.max_unavailable.get_or_insert_with(|| IntOrString::String("25%".into()));
    }
    default_template(&mut spec.template);
}

/// apps/v1 selectors are immutable: a changed selector would orphan every pod.
fn selector_kept(new: &LabelSelector, old: &LabelSelector) -> Vec<StatusCause> {
    if new != old {
        return vec![StatusCause::invalid("spec.selector", "{...}", "field is immutable")];
    }
    vec![]
}

/// The `Scale` of a workload: its metadata, desired and current replicas, and selector.
fn workload_scale(meta: &ObjectMeta, desired: Option<i32>, current: Option<i32>, selector: &LabelSelector) -> Scale {
    let selector = pkg::selector::LabelSelector::from_spec(selector).map(|s| s.to_string()).unwrap_or_default();
    Scale {
        metadata: ObjectMeta {
            name: meta.name.clone(),
            namespace: meta.namespace.clone(),
            uid: meta.uid.clone(),
            resource_version: meta.resource_version.clone(),
            creation_timestamp: meta.creation_timestamp.clone(),
            ..Default::default()
        },
        spec: Some(ScaleSpec { replicas: desired }),
        status: Some(ScaleStatus { replicas: current.unwrap_or(0), selector: Some(selector) }),
    }
}

impl Strategy for Deployment {
    fn validate(&self, _: &Config) -> Vec<StatusCause> {
        let Some(spec) = &self.spec else { return vec![StatusCause::required("spec")] };
        let mut c = validation::validate_workload(&self.metadata, spec.replicas, &spec.selector, Some(&spec.template));
        if let Some(t) = spec.strategy.as_ref().and_then(|s| s.type_.as_deref()).filter(|t| !["RollingUpdate", "Recreate"].contains(t)) {
            c.push(StatusCause::not_supported("spec.strategy.type", t, &["Recreate", "RollingUpdate"]));
        }
        c
    }
    const HAS_STATUS: bool = true;
    fn prepare_create(&mut self) {
        self.status = Some(DeploymentStatus::default());
        default_deployment(self.spec.get_or_insert_with(Default::default));
        next_generation(self, None, true);
    }
    fn prepare_update(&mut self, old: &Self) -> Vec<StatusCause> {
        copy_field(self, old, "status");
        default_deployment(self.spec.get_or_insert_with(Default::default));
        let changed = self.spec != old.spec;
        next_generation(self, Some(old), changed);
        let sel = |d: &Self| d.spec.as_ref().map(|s| s.selector.clone()).unwrap_or_default();
        selector_kept(&sel(self), &sel(old))
    }
    fn scale(&self) -> Option<Scale> {
        let spec = self.spec.as_ref()?;
        Some(workload_scale(&self.metadata, spec.replicas, self.status.as_ref().and_then(|s| s.replicas), &spec.selector))
    }
    fn set_replicas(&mut self, replicas: i32) {
        self.spec.get_or_insert_with(Default::default).replicas = Some(replicas);
    }
}

fn default_replicaset(spec: &mut ReplicaSetSpec) {
    spec.replicas.get_or_insert(1);
    default_template(spec.template.get_or_insert_with(Default::default));
}

impl Strategy for ReplicaSet {
    fn validate(&self, _: &Config) -> Vec<StatusCause> {
        let Some(spec) = &self.spec else { return vec![StatusCause::required("spec")] };
        validation::validate_workload(&self.metadata, spec.replicas, &spec.selector, spec.template.as_ref())
    }
    const HAS_STATUS: bool = true;
    fn prepare_create(&mut self) {
        self.status = Some(ReplicaSetStatus::default());
        default_replicaset(self.spec.get_or_insert_with(Default::default));
        next_generation(self, None, true);
    }
    fn prepare_update(&mut self, old: &Self) -> Vec<StatusCause> {
        copy_field(self, old, "status");
        default_replicaset(self.spec.get_or_insert_with(Default::default));
        let changed = self.spec != old.spec;
        next_generation(self, Some(old), changed);
        let sel = |r: &Self| r.spec.as_ref().map(|s| s.selector.clone()).unwrap_or_default();
        selector_kept(&sel(self), &sel(old))
    }
    fn scale(&self) -> Option<Scale> {
        let spec = self.spec.as_ref()?;
        Some(workload_scale(&self.metadata, spec.replicas, self.status.as_ref().map(|s| s.replicas), &spec.selector))
    }
    fn set_replicas(&mut self, replicas: i32) {
        self.spec.get_or_insert_with(Default::default).replicas = Some(replicas);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A template written without `resources` (YAML) and the same one as kubectl sends it
    /// back in `rollout undo` (`resources: {}`) are the same version once defaulted.
    #[test]
    fn defaulted_templates_do_not_depend_on_empty_resources() {
        let template = |resources: serde_json::Value| {
            let mut c = serde_json::json!({"name": "web", "image": "whoami:v1"});
            if !resources.is_null() {
                c["resources"] = resources;
            }
            let mut t: PodTemplateSpec = serde_json::from_value(serde_json::json!({"spec": {"containers": [c]}})).unwrap();
            default_template(&mut t);
            t
        };
        let (from_yaml, from_kubectl) = (template(serde_json::Value::Null), template(serde_json::json!({})));
        assert!(pkg::workloads::deployment::same_template(&from_yaml, &from_kubectl));
        let mut limited = template(serde_json::json!({"limits": {"memory": "64Mi"}}));
        assert!(!pkg::workloads::deployment::same_template(&from_yaml, &limited));
        default_template(&mut limited);
        assert_eq!(limited.spec.unwrap().containers[0].resources.as_ref().unwrap().limits.as_ref().unwrap().len(), 1, "kept");
    }
}
