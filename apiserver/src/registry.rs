//! Per-kind behaviour ("strategies" in kube-apiserver's `pkg/registry`): what is validated,
//! what the server fills in on create, which fields an update may not change, which numbers
//! an object claims from the allocators, and how field selectors read it.

use crate::Config;
use pkg::alloc::first_free;
use pkg::api::*;
use pkg::validation::{self, ServiceRanges};
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

/// What a kind does beyond generic storage.
pub trait Strategy: Object {
    fn validate(&self, cfg: &Config) -> Vec<StatusCause>;

    /// Reset what a client may not set on create (status, mostly).
    fn prepare_create(&mut self) {}

    /// For a PUT on the object: keep what only the status subresource may change and
    /// report fields that may not change.
    fn prepare_update(&mut self, _old: &Self) -> Vec<StatusCause> {
        vec![]
    }

    /// For a PUT on `/status`: take everything but the status from the stored object.
    fn prepare_status_update(&mut self, old: &Self) -> bool {
        let _ = old;
        false
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

impl Strategy for Pod {
    fn validate(&self, _: &Config) -> Vec<StatusCause> {
        validation::validate_pod(self)
    }
    fn prepare_create(&mut self) {
        self.status = PodStatus { phase: Some("Pending".into()), ..Default::default() };
        self.metadata.deletion_timestamp = None;
    }
    fn prepare_update(&mut self, old: &Self) -> Vec<StatusCause> {
        self.status = old.status.clone();
        self.metadata.deletion_timestamp = old.metadata.deletion_timestamp.clone();
        self.metadata.deletion_grace_period_seconds = old.metadata.deletion_grace_period_seconds;
        let mut c = vec![];
        if let Some(old_node) = old.spec.node_name.as_deref().filter(|n| !n.is_empty()) {
            if self.spec.node_name.as_deref() != Some(old_node) {
                c.push(StatusCause::invalid(
                    "spec.nodeName",
                    format!("\"{}\"", self.spec.node_name.as_deref().unwrap_or("")),
                    "field is immutable once the pod is bound",
                ));
            }
        }
        if self.spec.containers.len() != old.spec.containers.len()
            || self.spec.containers.iter().zip(&old.spec.containers).any(|(a, b)| a.name != b.name)
        {
            c.push(StatusCause::invalid("spec.containers", "[...]", "pod updates may not add or remove containers"));
        }
        c
    }
    fn prepare_status_update(&mut self, old: &Self) -> bool {
        let status = std::mem::take(&mut self.status);
        *self = Self { status, ..old.clone() };
        true
    }
    /// A pod bound to a node is deleted gracefully: the API marks it (`deletionTimestamp`,
    /// `deletionGracePeriodSeconds`), its kubelet sends SIGTERM, waits up to the grace
    /// period, kills, releases everything and then deletes the object for good with a
    /// grace period of 0. Unbound or finished pods, and `gracePeriodSeconds=0`, go at once.
    fn begin_graceful_delete(&mut self, grace: Option<i64>) -> bool {
        if self.spec.node_name.as_deref().unwrap_or("").is_empty() || self.is_terminal() {
            return false;
        }
        let grace = grace.unwrap_or(self.spec.termination_grace_period_seconds.unwrap_or(30)).max(0);
        if grace == 0 {
            return false;
        }
        if self.metadata.deletion_grace_period_seconds.is_some_and(|g| g <= grace) {
            return true; // already being deleted, at least as fast
        }
        let at = chrono::Utc::now() + chrono::Duration::seconds(grace);
        self.metadata.deletion_timestamp = Some(at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        self.metadata.deletion_grace_period_seconds = Some(grace);
        true
    }
    const FIELDS: &'static [&'static str] = &["metadata.name", "metadata.namespace", "spec.nodeName", "status.phase", "status.podIP"];
    fn field(&self, path: &str) -> String {
        match path {
            "spec.nodeName" => self.spec.node_name.clone().unwrap_or_default(),
            "status.phase" => self.status.phase.clone().unwrap_or_default(),
            "status.podIP" => self.status.pod_ip.clone().unwrap_or_default(),
            p => default_field(self, p),
        }
    }
}

fn default_field<T: Object>(o: &T, path: &str) -> String {
    let m = o.meta();
    match path {
        "metadata.name" => m.name.clone(),
        "metadata.namespace" => m.namespace.clone().unwrap_or_default(),
        _ => String::new(),
    }
}

impl Strategy for Service {
    fn validate(&self, cfg: &Config) -> Vec<StatusCause> {
        validation::validate_service(
            self,
            &ServiceRanges { cluster_ips: cfg.service_cluster_ip_range, node_ports: cfg.service_node_port_range },
        )
    }
    fn prepare_create(&mut self) {
        self.status = Some(serde_json::json!({"loadBalancer": {}}));
        for p in &mut self.spec.ports {
            if p.protocol.is_none() {
                p.protocol = Some("TCP".into());
            }
            if p.target_port.is_none() && (1..=65535).contains(&p.port) {
                p.target_port = Some(IntOrString::Int(p.port));
            }
        }
        if self.spec.type_.is_none() {
            self.spec.type_ = Some("ClusterIP".into());
        }
    }
    fn prepare_update(&mut self, old: &Self) -> Vec<StatusCause> {
        self.prepare_create();
        self.status = old.status.clone();
        let mut c = vec![];
        // Like Kubernetes, an update that leaves the ClusterIP out keeps the allocated one.
        match self.spec.cluster_ip.as_deref() {
            None | Some("") => {
                self.spec.cluster_ip = old.spec.cluster_ip.clone();
                self.spec.cluster_ips = old.spec.cluster_ips.clone();
            }
            Some(ip) if old.spec.cluster_ip.as_deref().is_some_and(|o| o != ip) && self.spec.type_() != "ExternalName" => {
                c.push(StatusCause::invalid("spec.clusterIP", format!("\"{ip}\""), "field is immutable"))
            }
            _ => {}
        }
        // ... and so do node ports left out of a port that still exists.
        if self.spec.wants_node_ports() {
            for p in &mut self.spec.ports {
                if p.node_port.unwrap_or(0) == 0 {
                    p.node_port =
                        old.spec.ports.iter().find(|o| o.port == p.port && o.protocol() == p.protocol()).and_then(|o| o.node_port);
                }
            }
        }
        c
    }
    fn prepare_status_update(&mut self, old: &Self) -> bool {
        let status = self.status.take();
        *self = Self { status, ..old.clone() };
        true
    }
    const ALLOCATORS: &'static [&'static str] = &[SERVICE_IPS, NODE_PORTS];
    fn claims(&mut self, old: Option<&Self>, cfg: &Config, taken: &HashSet<String>, seed: u64) -> Result<Vec<Claim>, ApiErrorKind> {
        let mut claims = vec![];
        let owner_ips: HashSet<String> = old.into_iter().flat_map(|o| o.spec.cluster_ip.clone()).collect();
        if self.spec.wants_cluster_ip() {
            let (ip, requested) = match self.spec.cluster_ip.as_deref() {
                Some(ip) if !ip.is_empty() => (ip.to_string(), !owner_ips.contains(ip)),
                _ => {
                    let range = cfg.service_cluster_ip_range;
                    let usable = range.usable();
                    let n = usable.end - usable.start;
                    let pick =
                        first_free(n, seed % n, |i| taken.contains(&format!("{SERVICE_IPS}{}", range.nth(usable.start + i).unwrap())))
                            .ok_or_else(|| ApiErrorKind::RangeFull(format!("failed to allocate a serviceIP: range {range} is full")))?;
                    (range.nth(usable.start + pick).unwrap().to_string(), false)
                }
            };
            self.spec.cluster_ip = Some(ip.clone());
            self.spec.cluster_ips = Some(vec![ip.clone()]);
            claims.push(Claim { key: format!("{SERVICE_IPS}{ip}"), field: "spec.clusterIP".into(), value: ip, requested });
        } else if self.spec.type_() == "ExternalName" {
            self.spec.cluster_ip = None;
            self.spec.cluster_ips = None;
        } else {
            self.spec.cluster_ips = Some(vec!["None".into()]);
        }
        if self.spec.wants_node_ports() {
            let held: HashSet<i64> = old.into_iter().flat_map(|o| o.spec.ports.iter().filter_map(|p| p.node_port)).collect();
            let mut mine: HashSet<i64> = self.spec.ports.iter().filter_map(|p| p.node_port).filter(|&p| p != 0).collect();
            let range = cfg.service_node_port_range;
            for (i, p) in self.spec.ports.iter_mut().enumerate() {
                let (port, requested) = match p.node_port.filter(|&n| n != 0) {
                    Some(n) => (n, !held.contains(&n)),
                    None => {
                        let pick = first_free(range.size(), (seed >> 20).wrapping_add(i as u64 * 7919) % range.size(), |j| {
                            let port = range.low as i64 + j as i64;
                            mine.contains(&port) || taken.contains(&format!("{NODE_PORTS}{port}"))
                        })
                        .ok_or_else(|| ApiErrorKind::RangeFull(format!("failed to allocate a nodePort: range {range} is full")))?;
                        (range.low as i64 + pick as i64, false)
                    }
                };
                mine.insert(port);
                p.node_port = Some(port);
                // TCP and UDP on one port of the same service share one claim.
                if !claims.iter().any(|c: &Claim| c.key == format!("{NODE_PORTS}{port}")) {
                    claims.push(Claim {
                        key: format!("{NODE_PORTS}{port}"),
                        field: format!("spec.ports[{i}].nodePort"),
                        value: port.to_string(),
                        requested,
                    });
                }
            }
        } else {
            for p in &mut self.spec.ports {
                p.node_port = None;
            }
        }
        Ok(claims)
    }
}

impl Strategy for Endpoints {
    fn validate(&self, _: &Config) -> Vec<StatusCause> {
        validation::validate_endpoints(self)
    }
}

impl Strategy for Namespace {
    fn validate(&self, _: &Config) -> Vec<StatusCause> {
        validation::validate_namespace(self)
    }
    fn prepare_create(&mut self) {
        self.status = Some(serde_json::json!({"phase": "Active"}));
    }
    fn prepare_update(&mut self, old: &Self) -> Vec<StatusCause> {
        self.status = old.status.clone();
        vec![]
    }
    fn prepare_status_update(&mut self, old: &Self) -> bool {
        let status = self.status.take();
        *self = Self { status, ..old.clone() };
        true
    }
}

impl Strategy for Node {
    fn validate(&self, _: &Config) -> Vec<StatusCause> {
        validation::validate_node(self)
    }
    fn prepare_update(&mut self, old: &Self) -> Vec<StatusCause> {
        self.status = old.status.clone();
        match (&self.spec.pod_cidr, &old.spec.pod_cidr) {
            (None, Some(_)) => {
                self.spec.pod_cidr = old.spec.pod_cidr.clone();
                self.spec.pod_cidrs = old.spec.pod_cidrs.clone();
                vec![]
            }
            (Some(new), Some(o)) if new != o => {
                vec![StatusCause::invalid("spec.podCIDR", format!("\"{new}\""), "field is immutable once set")]
            }
            _ => vec![],
        }
    }
    fn prepare_status_update(&mut self, old: &Self) -> bool {
        let status = std::mem::take(&mut self.status);
        *self = Self { status, ..old.clone() };
        true
    }
    const PRELOAD: &'static [&'static str] = &[POD_CIDRS];
    const ALLOCATORS: &'static [&'static str] = &[POD_CIDRS];
    /// A node gets the first /24 (by default) of the cluster CIDR that no other node has,
    /// in the same transaction that creates it: the node IPAM controller, made atomic.
    fn claims(&mut self, old: Option<&Self>, cfg: &Config, taken: &HashSet<String>, _seed: u64) -> Result<Vec<Claim>, ApiErrorKind> {
        let key = |c: &str| format!("{POD_CIDRS}{}", c.replace('/', "-"));
        let (cidr, requested) = match &self.spec.pod_cidr {
            Some(c) => (c.clone(), old.and_then(|o| o.spec.pod_cidr.as_ref()) != Some(c)),
            None => {
                let n = cfg.cluster_cidr.subnet_count(cfg.node_cidr_mask_size);
                let i =
                    first_free(n, 0, |i| taken.contains(&key(&cfg.cluster_cidr.subnet(cfg.node_cidr_mask_size, i).unwrap().to_string())))
                        .ok_or_else(|| ApiErrorKind::RangeFull(format!("no pod CIDR left in {}", cfg.cluster_cidr)))?;
                (cfg.cluster_cidr.subnet(cfg.node_cidr_mask_size, i).unwrap().to_string(), false)
            }
        };
        self.spec.pod_cidr = Some(cidr.clone());
        self.spec.pod_cidrs = Some(vec![cidr.clone()]);
        Ok(vec![Claim { key: key(&cidr), field: "spec.podCIDR".into(), value: cidr, requested }])
    }
    const FIELDS: &'static [&'static str] = &["metadata.name", "spec.unschedulable"];
    fn field(&self, path: &str) -> String {
        match path {
            "spec.unschedulable" => self.spec.unschedulable.unwrap_or(false).to_string(),
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
    /// `stringData` is folded into `data` (base64) and never stored; `type` defaults to Opaque.
    fn prepare_create(&mut self) {
        use base64::Engine;
        for (k, v) in std::mem::take(&mut self.string_data) {
            self.data.insert(k, base64::engine::general_purpose::STANDARD.encode(v));
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
        let extra = |k: &str| self.extra.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
        match path {
            "involvedObject.kind" => io.kind.clone(),
            "involvedObject.namespace" => io.namespace.clone().unwrap_or_default(),
            "involvedObject.name" => io.name.clone(),
            "involvedObject.uid" => io.uid.clone().unwrap_or_default(),
            "involvedObject.apiVersion" => io.api_version.clone().unwrap_or_default(),
            "involvedObject.resourceVersion" => io.resource_version.clone().unwrap_or_default(),
            "involvedObject.fieldPath" => io.field_path.clone().unwrap_or_default(),
            "reason" => self.reason.clone().unwrap_or_default(),
            "reportingComponent" => extra("reportingComponent"),
            "source" => self.source.as_ref().and_then(|s| s.component.clone()).unwrap_or_default(),
            "type" => self.type_.clone().unwrap_or_default(),
            p => default_field(self, p),
        }
    }
}

impl Strategy for Lease {
    fn validate(&self, _: &Config) -> Vec<StatusCause> {
        validation::validate_lease(self)
    }
}

/// `metadata.generation`: 1 on create, one more each time the spec changes, so a
/// controller can say which spec its status describes (`status.observedGeneration`).
fn generation(meta: &ObjectMeta) -> i64 {
    meta.extra.get("generation").and_then(serde_json::Value::as_i64).unwrap_or(0)
}

fn set_generation(meta: &mut ObjectMeta, g: i64) {
    meta.extra.insert("generation".into(), serde_json::json!(g));
}

/// The defaults kube-apiserver gives a Deployment (pkg/apis/apps/v1/defaults.go).
fn default_deployment(spec: &mut DeploymentSpec) {
    spec.replicas.get_or_insert(1);
    spec.revision_history_limit.get_or_insert(10);
    spec.progress_deadline_seconds.get_or_insert(600);
    let strategy = spec.strategy.get_or_insert_with(|| serde_json::json!({}));
    if strategy.get("type").is_none() {
        strategy["type"] = serde_json::json!("RollingUpdate");
    }
    if strategy["type"] == "RollingUpdate" && strategy.get("rollingUpdate").is_none() {
        strategy["rollingUpdate"] = serde_json::json!({"maxSurge": "25%", "maxUnavailable": "25%"});
    }
    spec.template.spec.restart_policy.get_or_insert_with(|| "Always".into());
}

impl Strategy for Deployment {
    fn validate(&self, _: &Config) -> Vec<StatusCause> {
        let mut c = validation::validate_workload(&self.metadata, self.spec.replicas, self.spec.selector.as_ref(), &self.spec.template);
        if let Some(t) = self.spec.strategy.as_ref().and_then(|s| s["type"].as_str()).filter(|t| !["RollingUpdate", "Recreate"].contains(t))
        {
            c.push(StatusCause::not_supported("spec.strategy.type", t, &["Recreate", "RollingUpdate"]));
        }
        c
    }
    fn prepare_create(&mut self) {
        self.status = Some(serde_json::json!({}));
        default_deployment(&mut self.spec);
        set_generation(&mut self.metadata, 1);
    }
    fn prepare_update(&mut self, old: &Self) -> Vec<StatusCause> {
        default_deployment(&mut self.spec);
        self.status = old.status.clone();
        let g = generation(&old.metadata) + i64::from(self.spec != old.spec);
        set_generation(&mut self.metadata, g);
        selector_kept(self.spec.selector.as_ref(), old.spec.selector.as_ref())
    }
    fn prepare_status_update(&mut self, old: &Self) -> bool {
        let status = self.status.take();
        *self = Self { status, ..old.clone() };
        true
    }
}

/// apps/v1 selectors are immutable: a changed selector would orphan every pod.
fn selector_kept(new: Option<&LabelSelectorSpec>, old: Option<&LabelSelectorSpec>) -> Vec<StatusCause> {
    if new != old {
        return vec![StatusCause::invalid("spec.selector", "{...}", "field is immutable")];
    }
    vec![]
}

impl Strategy for ReplicaSet {
    fn validate(&self, _: &Config) -> Vec<StatusCause> {
        validation::validate_workload(&self.metadata, self.spec.replicas, self.spec.selector.as_ref(), &self.spec.template)
    }
    fn prepare_create(&mut self) {
        self.status = Some(serde_json::json!({"replicas": 0}));
        self.spec.replicas.get_or_insert(1);
        self.spec.template.spec.restart_policy.get_or_insert_with(|| "Always".into());
        set_generation(&mut self.metadata, 1);
    }
    fn prepare_update(&mut self, old: &Self) -> Vec<StatusCause> {
        self.spec.replicas.get_or_insert(1);
        self.spec.template.spec.restart_policy.get_or_insert_with(|| "Always".into());
        self.status = old.status.clone();
        let g = generation(&old.metadata) + i64::from(self.spec != old.spec);
        set_generation(&mut self.metadata, g);
        selector_kept(self.spec.selector.as_ref(), old.spec.selector.as_ref())
    }
    fn prepare_status_update(&mut self, old: &Self) -> bool {
        let status = self.status.take();
        *self = Self { status, ..old.clone() };
        true
    }
}
