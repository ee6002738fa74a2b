//! Object validation, as `k8s.io/kubernetes/pkg/apis/core/validation` does it: each check
//! adds a [`StatusCause`] naming the field (`spec.ports[0].port`) so the client sees every
//! problem at once in one `422 Invalid`.

use crate::alloc::{Cidr, PortRange};
use crate::api::*;
use crate::api::{CauseExt, NodeExt, ServiceExt};
use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;

/// DNS-1123 label: at most 63 lowercase alphanumerics or '-', starting and ending alphanumeric.
pub fn is_dns1123_label(s: &str) -> bool {
    s.len() <= 63 && dns1123_shaped(s)
}

/// Lower case alphanumerics and '-', starting and ending with an alphanumeric, of any length.
fn dns1123_shaped(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty() && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-') && b[0] != b'-' && b[b.len() - 1] != b'-'
}

/// DNS-1123 subdomain: dot-separated parts of DNS-1123 label characters, at most 253
/// characters in all (a part may be longer than a label's 63: kube-apiserver's regular
/// expression does not bound them).
pub fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(dns1123_shaped)
}

/// DNS-1035 label (service names): a DNS-1123 label that starts with a letter.
pub fn is_dns1035_label(s: &str) -> bool {
    is_dns1123_label(s) && s.as_bytes()[0].is_ascii_lowercase()
}

/// IANA service name (a named port): 1-15 lowercase alphanumerics or '-', with a letter.
pub fn is_port_name(s: &str) -> bool {
    (1..=15).contains(&s.len())
        && s.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && s.bytes().any(|c| c.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

/// A label value: empty, or up to 63 of `[A-Za-z0-9-_.]`, alphanumeric at both ends.
pub fn is_label_value(v: &str) -> bool {
    v.len() <= 63 && label_shaped(v)
}

/// A label key: `[prefix/]name`, the prefix a DNS-1123 subdomain, the name a non-empty label value.
pub fn is_label_key(k: &str) -> bool {
    qualified_name_errors(k).is_empty()
}

/// What apimachinery says of a name that is not a DNS-1123 subdomain.
const SUBDOMAIN_SHAPE: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

/// Which naming rule a kind's `metadata.name` follows.
#[derive(Clone, Copy)]
pub enum NameRule {
    Label,
    Subdomain,
    Dns1035,
}

pub fn validate_meta(meta: &ObjectMeta, rule: NameRule, causes: &mut Vec<StatusCause>) {
    let name = meta.name.as_deref().unwrap_or("");
    if name.is_empty() {
        causes.push(StatusCause::cause("FieldValueRequired", "Required value: name or generateName is required".into(), "metadata.name"));
    } else {
        let (ok, max, what) = match rule {
            NameRule::Label => (is_dns1123_label(name), 63, "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"),
            NameRule::Subdomain => (is_dns1123_subdomain(name), 253, SUBDOMAIN_SHAPE),
            NameRule::Dns1035 => (is_dns1035_label(name), 63, "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"),
        };
        // Too long is said as such (kube-apiserver reports both, the length first).
        if name.len() > max {
            causes.push(StatusCause::invalid("metadata.name", format!("\"{name}\""), &format!("must be no more than {max} characters")));
        } else if !ok {
            causes.push(StatusCause::invalid("metadata.name", format!("\"{name}\""), what));
        }
    }
    if let Some(labels) = &meta.labels {
        labels_valid(labels, "metadata.labels", causes);
    }
    annotations_valid(meta.annotations.as_ref(), causes);
    finalizers_valid(meta.finalizers.as_deref().unwrap_or_default(), causes);
}

/// All of an object's annotations (keys and values) may hold at most 256 KiB, and each
/// key is a qualified name, as a label key is (ValidateAnnotations).
fn annotations_valid(annotations: Option<&BTreeMap<String, String>>, causes: &mut Vec<StatusCause>) {
    let Some(a) = annotations else { return };
    for k in a.keys() {
        for why in qualified_name_errors(&k.to_lowercase()) {
            causes.push(StatusCause::invalid("metadata.annotations", format!("{k:?}"), &why));
        }
    }
    let total: usize = a.iter().map(|(k, v)| k.len() + v.len()).sum();
    if total > MAX_ANNOTATIONS_BYTES {
        causes.push(StatusCause::cause(
            "FieldValueTooLong",
            format!("Too long: may not be more than {MAX_ANNOTATIONS_BYTES} bytes"),
            "metadata.annotations",
        ));
    }
}

/// The most all of an object's annotations may hold (`TotalAnnotationSizeLimitB`).
pub const MAX_ANNOTATIONS_BYTES: usize = 256 * 1024;

/// A finalizer is one Kubernetes defines (`kubernetes`, `orphan`, `foregroundDeletion`)
/// or a qualified name with a domain (`example.com/cleanup`), as ValidateFinalizerName.
fn finalizers_valid(finalizers: &[String], causes: &mut Vec<StatusCause>) {
    const STANDARD: [&str; 3] = ["kubernetes", "orphan", "foregroundDeletion"];
    for (i, f) in finalizers.iter().enumerate() {
        let qualified = f.split_once('/').is_some_and(|(domain, _)| domain.contains('.')) && is_label_key(f);
        if !STANDARD.contains(&f.as_str()) && !qualified {
            let why = "name is neither a standard finalizer name nor is it fully qualified";
            causes.push(StatusCause::invalid(format!("metadata.finalizers[{i}]"), format!("{f:?}"), why));
        }
    }
}

fn labels_valid(labels: &BTreeMap<String, String>, field: &str, causes: &mut Vec<StatusCause>) {
    for (k, v) in labels {
        for why in qualified_name_errors(k) {
            causes.push(StatusCause::invalid(field, format!("{k:?}"), &why));
        }
        for why in label_value_errors(v) {
            causes.push(StatusCause::invalid(field, format!("{v:?}"), &why));
        }
    }
}

const QUALIFIED_NAME: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";

/// What is wrong with a label (or annotation) key, `[prefix/]name`, each worded as
/// apimachinery's `IsQualifiedName` words it; empty: nothing.
pub fn qualified_name_errors(k: &str) -> Vec<String> {
    let parts: Vec<&str> = k.split('/').collect();
    let (prefix, name) = match parts[..] {
        [name] => (None, name),
        [prefix, name] => (Some(prefix), name),
        _ => {
            return vec![format!(
                "a qualified name {QUALIFIED_NAME} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
            )]
        }
    };
    let mut errs = vec![];
    match prefix {
        Some("") => errs.push("prefix part must be non-empty".to_string()),
        Some(p) if p.len() > 253 => errs.push("prefix part must be no more than 253 characters".to_string()),
        Some(p) if !is_dns1123_subdomain(p) => errs.push(format!("prefix part {SUBDOMAIN_SHAPE}")),
        _ => {}
    }
    if name.is_empty() {
        errs.push("name part must be non-empty".to_string());
    } else if name.len() > 63 {
        errs.push("name part must be no more than 63 characters".to_string());
    }
    if name.is_empty() || !label_shaped(name) {
        errs.push(format!("name part {QUALIFIED_NAME}"));
    }
    errs
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]` or empty, of any length.
fn label_shaped(v: &str) -> bool {
    v.bytes().all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c))
        && v.bytes().next().is_none_or(|c| c.is_ascii_alphanumeric())
        && v.bytes().last().is_none_or(|c| c.is_ascii_alphanumeric())
}

/// What is wrong with a label value, as apimachinery's `IsValidLabelValue` words it.
pub fn label_value_errors(v: &str) -> Vec<String> {
    let mut errs = vec![];
    if v.len() > 63 {
        errs.push("must be no more than 63 characters".to_string());
    }
    if !label_shaped(v) {
        errs.push("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')".to_string());
    }
    errs
}

/// `dryRun` of any request's options: only `All` is a value (kube-apiserver's
/// `ValidateDryRun`, the bad value shown as Go's `%#v` of the list, as 1.33 shows it).
pub fn dry_run_cause(values: &[String]) -> Option<StatusCause> {
    if values.iter().all(|v| v == "All") {
        return None;
    }
    let list: Vec<String> = values.iter().map(|v| format!("{v:?}")).collect();
    let message = format!("Unsupported value: []string{{{}}}: supported values: \"All\"", list.join(", "));
    Some(StatusCause::cause("FieldValueNotSupported", message, "dryRun"))
}

fn port_valid(p: i32, field: String, causes: &mut Vec<StatusCause>) {
    if !(1..=65535).contains(&p) {
        causes.push(StatusCause::invalid(field, p, "must be between 1 and 65535, inclusive"));
    }
}

const PROTOCOLS: [&str; 3] = ["TCP", "UDP", "SCTP"];

fn protocol_valid(p: &Option<String>, field: String, causes: &mut Vec<StatusCause>) {
    if let Some(p) = p {
        if !PROTOCOLS.contains(&p.as_str()) {
            causes.push(StatusCause::not_supported(field, p, &PROTOCOLS));
        }
    }
}

fn container_valid(ctr: &Container, f: &str, names: &mut HashSet<String>, c: &mut Vec<StatusCause>) {
    if ctr.name.is_empty() {
        c.push(StatusCause::required(format!("{f}.name")));
    } else if !is_dns1123_label(&ctr.name) {
        c.push(StatusCause::invalid(format!("{f}.name"), format!("\"{}\"", ctr.name), "must be a DNS-1123 label"));
    } else if !names.insert(ctr.name.clone()) {
        c.push(StatusCause::duplicate(format!("{f}.name"), format!("\"{}\"", ctr.name)));
    }
    if ctr.image.as_deref().unwrap_or("").trim().is_empty() {
        c.push(StatusCause::required(format!("{f}.image")));
    }
    for (j, p) in ctr.ports.iter().flatten().enumerate() {
        port_valid(p.container_port, format!("{f}.ports[{j}].containerPort"), c);
        protocol_valid(&p.protocol, format!("{f}.ports[{j}].protocol"), c);
        if let Some(n) = &p.name {
            if !is_port_name(n) {
                c.push(StatusCause::invalid(
                    format!("{f}.ports[{j}].name"),
                    format!("\"{n}\""),
                    "must be an IANA_SVC_NAME (at most 15 characters, lowercase alphanumerics and '-')",
                ));
            }
        }
    }
    for (j, e) in ctr.env.iter().flatten().enumerate() {
        if e.name.is_empty() {
            c.push(StatusCause::required(format!("{f}.env[{j}].name")));
        }
    }
}

pub fn validate_pod(pod: &Pod) -> Vec<StatusCause> {
    let mut c = vec![];
    validate_meta(&pod.metadata, NameRule::Subdomain, &mut c);
    let Some(spec) = &pod.spec else {
        c.push(StatusCause::required("spec"));
        return c;
    };
    validate_pod_spec(spec, "spec", &mut c);
    c
}

/// A pod's spec, wherever it is (a Pod's `spec`, a template's `spec.template.spec`).
pub fn validate_pod_spec(spec: &PodSpec, f: &str, c: &mut Vec<StatusCause>) {
    if spec.containers.is_empty() {
        c.push(StatusCause::required(format!("{f}.containers")));
    }
    let mut names = HashSet::new();
    for (i, ctr) in spec.containers.iter().enumerate() {
        container_valid(ctr, &format!("{f}.containers[{i}]"), &mut names, c);
    }
    for (i, ctr) in spec.init_containers.iter().flatten().enumerate() {
        container_valid(ctr, &format!("{f}.initContainers[{i}]"), &mut names, c);
    }
    if let Some(p) = &spec.restart_policy {
        if !RestartPolicy::ALL.contains(&p.as_str()) {
            c.push(StatusCause::not_supported(format!("{f}.restartPolicy"), p, &RestartPolicy::ALL));
        }
    }
    if let Some(g) = spec.termination_grace_period_seconds {
        if g < 0 {
            c.push(StatusCause::invalid(format!("{f}.terminationGracePeriodSeconds"), g, "must be greater than or equal to 0"));
        }
    }
    if let Some(n) = &spec.node_name {
        if !n.is_empty() && !is_dns1123_subdomain(n) {
            c.push(StatusCause::invalid(format!("{f}.nodeName"), format!("\"{n}\""), "must be a DNS-1123 subdomain"));
        }
    }
    // Both end up in the pod's /etc/hosts: a newline in them would add a line of the client's choosing.
    for (field, v) in [("hostname", &spec.hostname), ("subdomain", &spec.subdomain)] {
        if let Some(v) = v.as_deref().filter(|v| !v.is_empty() && !is_dns1123_label(v)) {
            let msg = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character";
            c.push(StatusCause::invalid(format!("{f}.{field}"), format!("{v:?}"), msg));
        }
    }
    if let Some(sel) = &spec.node_selector {
        labels_valid(sel, &format!("{f}.nodeSelector"), c);
    }
}

/// What the service allocators are configured with; validation checks requests against it.
#[derive(Clone, Copy, Debug)]
pub struct ServiceRanges {
    pub cluster_ips: Cidr,
    pub node_ports: PortRange,
}

pub const SERVICE_TYPES: [&str; 4] = ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"];

pub fn validate_service(svc: &Service, ranges: &ServiceRanges) -> Vec<StatusCause> {
    let mut c = vec![];
    validate_meta(&svc.metadata, NameRule::Dns1035, &mut c);
    let empty = ServiceSpec::default();
    let spec = svc.spec.as_ref().unwrap_or(&empty);
    let ty = svc.type_();
    if !SERVICE_TYPES.contains(&ty) {
        c.push(StatusCause::not_supported("spec.type", ty, &SERVICE_TYPES));
        return c;
    }
    let ports = svc.ports();
    if ty == "ExternalName" {
        match spec.external_name.as_deref().unwrap_or("") {
            "" => c.push(StatusCause::required("spec.externalName")),
            // A DNS name, as a resolver would take it (a trailing dot allowed).
            n if !is_dns1123_subdomain(n.strip_suffix('.').unwrap_or(n)) => c.push(StatusCause::invalid(
                "spec.externalName",
                format!("\"{n}\""),
                "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
            )),
            _ => {}
        }
    } else if ports.is_empty() && svc.cluster_ip() != Some("None") {
        c.push(StatusCause::required("spec.ports"));
    }
    match svc.cluster_ip() {
        None | Some("None") => {}
        Some(ip) => match ip.parse::<Ipv4Addr>() {
            Err(_) => c.push(StatusCause::invalid("spec.clusterIP", format!("\"{ip}\""), "must be a valid IP address, (e.g. 10.9.8.7)")),
            Ok(a) if !ranges.cluster_ips.contains(a) => c.push(StatusCause::invalid(
                "spec.clusterIP",
                format!("\"{ip}\""),
                &format!("provided IP is not in the valid range. The range of valid IPs is {}", ranges.cluster_ips),
            )),
            // The range's network and broadcast addresses are never handed out.
            Ok(a) if !ranges.cluster_ips.usable().contains(&u64::from(u32::from(a) - u32::from(ranges.cluster_ips.addr))) => {
                c.push(StatusCause::invalid(
                    "spec.clusterIP",
                    format!("\"{ip}\""),
                    &format!("the network and broadcast addresses of {} are not valid service IPs", ranges.cluster_ips),
                ))
            }
            Ok(_) => {}
        },
    }
    if ty == "ExternalName" && svc.cluster_ip().is_some() {
        c.push(StatusCause::invalid(
            "spec.clusterIP",
            format!("\"{}\"", svc.cluster_ip().unwrap_or("")),
            "may not be set for ExternalName services",
        ));
    }
    let mut names = HashSet::new();
    let mut seen = HashSet::new();
    let mut node_ports = HashSet::new();
    for (i, p) in ports.iter().enumerate() {
        let f = format!("spec.ports[{i}]");
        match &p.name {
            Some(n) if !n.is_empty() => {
                if !is_dns1123_label(n) {
                    c.push(StatusCause::invalid(format!("{f}.name"), format!("\"{n}\""), "must be a DNS-1123 label"));
                } else if !names.insert(n.clone()) {
                    c.push(StatusCause::duplicate(format!("{f}.name"), format!("\"{n}\"")));
                }
            }
            _ if ports.len() > 1 => c.push(StatusCause::required(format!("{f}.name"))),
            _ => {}
        }
        port_valid(p.port, format!("{f}.port"), &mut c);
        protocol_valid(&p.protocol, format!("{f}.protocol"), &mut c);
        let proto = protocol(&p.protocol);
        if !seen.insert((p.port, proto.to_string())) {
            c.push(StatusCause::duplicate(f.clone(), format!("{}/{proto}", p.port)));
        }
        match &p.target_port {
            Some(IntOrString::Int(t)) if *t != 0 => port_valid(*t, format!("{f}.targetPort"), &mut c),
            Some(IntOrString::String(s)) if !is_port_name(s) => c.push(StatusCause::invalid(
                format!("{f}.targetPort"),
                format!("\"{s}\""),
                "must contain at least one letter and be an IANA_SVC_NAME",
            )),
            _ => {}
        }
        if let Some(np) = p.node_port.filter(|&n| n != 0) {
            let nf = format!("{f}.nodePort");
            if !svc.wants_node_ports() {
                c.push(StatusCause::invalid(nf, np, &format!("may not be used when `type` is '{ty}'")));
            } else if !ranges.node_ports.contains(i64::from(np)) {
                c.push(StatusCause::invalid(
                    nf,
                    np,
                    &format!("provided port is not in the valid range. The range of valid ports is {}", ranges.node_ports),
                ));
            } else if !node_ports.insert((np, proto.to_string())) {
                c.push(StatusCause::duplicate(nf, np));
            }
        }
    }
    if let Some(sel) = &spec.selector {
        labels_valid(sel, "spec.selector", &mut c);
    }
    validate_service_policies(svc, ranges, &node_ports, &mut c);
    c
}

/// Session affinity, the two traffic policies and the health-check port, as
/// kube-apiserver checks them.
fn validate_service_policies(svc: &Service, ranges: &ServiceRanges, node_ports: &HashSet<(i32, String)>, c: &mut Vec<StatusCause>) {
    let empty = ServiceSpec::default();
    let spec = svc.spec.as_ref().unwrap_or(&empty);
    let affinity = spec.session_affinity.as_deref().unwrap_or("None");
    if !["None", "ClientIP"].contains(&affinity) {
        c.push(StatusCause::not_supported("spec.sessionAffinity", affinity, &["ClientIP", "None"]));
    }
    let timeout = spec.session_affinity_config.as_ref().and_then(|a| a.client_ip.as_ref()).and_then(|ip| ip.timeout_seconds);
    match timeout {
        Some(t) if affinity == "ClientIP" && !(1..=86400).contains(&t) => c.push(StatusCause::invalid(
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
            t,
            "must be greater than 0 and less than 86400",
        )),
        Some(_) if affinity != "ClientIP" => {
            c.push(StatusCause::invalid("spec.sessionAffinityConfig", "{...}", "must not be set when `sessionAffinity` is None"))
        }
        _ => {}
    }
    for (field, value) in
        [("spec.externalTrafficPolicy", &spec.external_traffic_policy), ("spec.internalTrafficPolicy", &spec.internal_traffic_policy)]
    {
        if let Some(v) = value.as_deref().filter(|v| !["Cluster", "Local"].contains(v)) {
            c.push(StatusCause::not_supported(field, v, &["Cluster", "Local"]));
        }
    }
    if spec.external_traffic_policy.is_some() && !svc.wants_node_ports() {
        let ext = format!("\"{}\"", spec.external_traffic_policy.as_deref().unwrap_or(""));
        c.push(StatusCause::invalid("spec.externalTrafficPolicy", ext, "may only be set for externally-accessible services"));
    }
    let Some(hc) = spec.health_check_node_port.filter(|&p| p != 0) else { return };
    if !svc.wants_health_check() {
        c.push(StatusCause::invalid(
            "spec.healthCheckNodePort",
            hc,
            "may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'",
        ));
    } else if !ranges.node_ports.contains(i64::from(hc)) {
        let msg = format!("provided port is not in the valid range. The range of valid ports is {}", ranges.node_ports);
        c.push(StatusCause::invalid("spec.healthCheckNodePort", hc, &msg));
    } else if node_ports.iter().any(|(p, _)| *p == hc) {
        c.push(StatusCause::invalid("spec.healthCheckNodePort", hc, "may not be the same as a nodePort of the service"));
    }
}

pub fn validate_node(node: &Node) -> Vec<StatusCause> {
    let mut c = vec![];
    validate_meta(&node.metadata, NameRule::Subdomain, &mut c);
    if let Some(cidr) = node.pod_cidr() {
        if cidr.parse::<Cidr>().is_err() {
            c.push(StatusCause::invalid("spec.podCIDR", format!("\"{cidr}\""), "must be a valid CIDR (e.g. 10.244.1.0/24)"));
        }
    }
    let addresses = node.status.as_ref().and_then(|s| s.addresses.as_deref()).unwrap_or(&[]);
    for (i, a) in addresses.iter().enumerate() {
        if matches!(a.type_.as_str(), "InternalIP" | "ExternalIP") && a.address.parse::<Ipv4Addr>().is_err() {
            c.push(StatusCause::invalid(
                format!("status.addresses[{i}].address"),
                format!("\"{}\"", a.address),
                "must be a valid IP address",
            ));
        }
    }
    c
}

pub fn validate_namespace(ns: &Namespace) -> Vec<StatusCause> {
    let mut c = vec![];
    validate_meta(&ns.metadata, NameRule::Label, &mut c);
    c
}

pub fn validate_endpoints(ep: &Endpoints) -> Vec<StatusCause> {
    let mut c = vec![];
    validate_meta(&ep.metadata, NameRule::Subdomain, &mut c);
    for (i, s) in ep.subsets.iter().flatten().enumerate() {
        for (j, a) in s.addresses.iter().flatten().chain(s.not_ready_addresses.iter().flatten()).enumerate() {
            if a.ip.parse::<Ipv4Addr>().is_err() {
                c.push(StatusCause::invalid(
                    format!("subsets[{i}].addresses[{j}].ip"),
                    format!("\"{}\"", a.ip),
                    "must be a valid IP address",
                ));
            }
        }
        for (j, p) in s.ports.iter().flatten().enumerate() {
            port_valid(p.port, format!("subsets[{i}].ports[{j}].port"), &mut c);
            protocol_valid(&p.protocol, format!("subsets[{i}].ports[{j}].protocol"), &mut c);
        }
    }
    c
}

/// An EndpointSlice: a known address type, 1 to 100 addresses per endpoint (IPv4 ones
/// valid), at most 1,000 endpoints and 100 ports (kube-apiserver's limits).
pub fn validate_endpoint_slice(s: &EndpointSlice) -> Vec<StatusCause> {
    let mut c = vec![];
    validate_meta(&s.metadata, NameRule::Subdomain, &mut c);
    if !["IPv4", "IPv6", "FQDN"].contains(&s.address_type.as_str()) {
        c.push(StatusCause::not_supported("addressType", &s.address_type, &["FQDN", "IPv4", "IPv6"]));
    }
    if s.endpoints.len() > 1000 {
        c.push(StatusCause::invalid("endpoints", s.endpoints.len(), "must have at most 1000 items"));
    }
    for (i, e) in s.endpoints.iter().enumerate() {
        if e.addresses.is_empty() || e.addresses.len() > 100 {
            c.push(StatusCause::invalid(format!("endpoints[{i}].addresses"), e.addresses.len(), "must have between 1 and 100 items"));
        }
        for (j, a) in e.addresses.iter().enumerate() {
            if s.address_type == "IPv4" && a.parse::<Ipv4Addr>().is_err() {
                c.push(StatusCause::invalid(format!("endpoints[{i}].addresses[{j}]"), format!("\"{a}\""), "must be a valid IPv4 address"));
            }
        }
    }
    let ports = s.ports.as_deref().unwrap_or(&[]);
    if ports.len() > 100 {
        c.push(StatusCause::invalid("ports", ports.len(), "must have at most 100 items"));
    }
    for (j, p) in ports.iter().enumerate() {
        if let Some(n) = p.port {
            port_valid(n, format!("ports[{j}].port"), &mut c);
        }
        protocol_valid(&p.protocol, format!("ports[{j}].protocol"), &mut c);
    }
    c
}

/// A key of a ConfigMap or Secret: at most 253 of `[-._a-zA-Z0-9]`, and not `.` or `..`
/// (each key becomes a file name when mounted as a volume).
pub fn is_config_key(k: &str) -> bool {
    !k.is_empty() && k.len() <= 253 && k != "." && k != ".." && k.bytes().all(|c| c.is_ascii_alphanumeric() || b"-._".contains(&c))
}

/// A ConfigMap or Secret may hold at most 1 MiB of data in all (etcd's value limit, less room).
pub const MAX_CONFIG_BYTES: usize = 1024 * 1024;

/// The entries of an object's two maps (`data` and `binaryData`, `data` and
/// `stringData`; `(field, key, value length, key also in the first map)`): each key a
/// valid config key, no key in both, and at most 1 MiB of values in all, reported at
/// `size_field` as kube-apiserver reports it. (No set of the keys seen: at 200,000 keys
/// it cost more than the map itself. Base64 in `binaryData` and a Secret's `data` is
/// checked by decoding: a value that is not base64 does not decode.)
fn config_data_valid<'a>(
    entries: impl IntoIterator<Item = (&'a str, &'a String, usize, bool)>,
    size_field: &str,
    c: &mut Vec<StatusCause>,
) {
    let mut size = 0;
    for (field, k, len, in_both) in entries {
        size += len; // the values: kube-apiserver does not count the keys
        if !is_config_key(k) {
            c.push(StatusCause::invalid(
                format!("{field}[{k}]"),
                format!("\"{k}\""),
                "a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
            ));
        } else if in_both {
            c.push(StatusCause::duplicate(format!("{field}[{k}]"), format!("\"{k}\"")));
        }
    }
    if size > MAX_CONFIG_BYTES {
        c.push(StatusCause::cause("FieldValueTooLong", format!("Too long: may not be more than {MAX_CONFIG_BYTES} bytes"), size_field));
    }
}

pub fn validate_configmap(cm: &ConfigMap) -> Vec<StatusCause> {
    let mut c = vec![];
    validate_meta(&cm.metadata, NameRule::Subdomain, &mut c);
    let in_data = |k: &String| cm.data.as_ref().is_some_and(|d| d.contains_key(k));
    let data = cm.data.iter().flatten().map(|(k, v)| ("data", k, v.len(), false));
    let binary = cm.binary_data.iter().flatten().map(|(k, v)| ("binaryData", k, v.0.len(), in_data(k)));
    config_data_valid(data.chain(binary), "[]", &mut c);
    c
}

pub fn validate_secret(s: &Secret) -> Vec<StatusCause> {
    let mut c = vec![];
    validate_meta(&s.metadata, NameRule::Subdomain, &mut c);
    let in_data = |k: &String| s.data.as_ref().is_some_and(|d| d.contains_key(k));
    let data = s.data.iter().flatten().map(|(k, v)| ("data", k, v.0.len(), false));
    let strings = s.string_data.iter().flatten().map(|(k, v)| ("stringData", k, v.len(), in_data(k)));
    config_data_valid(data.chain(strings), "data", &mut c);
    c
}

pub fn validate_service_account(sa: &ServiceAccount) -> Vec<StatusCause> {
    let mut c = vec![];
    validate_meta(&sa.metadata, NameRule::Subdomain, &mut c);
    c
}

/// An event names the object it is about, in its own namespace (cluster-scoped objects'
/// events go to `default`, as Kubernetes records them).
pub fn validate_event(ev: &Event) -> Vec<StatusCause> {
    let mut c = vec![];
    validate_meta(&ev.metadata, NameRule::Subdomain, &mut c);
    let io = &ev.involved_object;
    if io.kind.as_deref().unwrap_or("").is_empty() {
        c.push(StatusCause::required("involvedObject.kind"));
    }
    if let (Some(ns), Some(mine)) = (io.namespace.as_deref().filter(|n| !n.is_empty()), ev.metadata.namespace.as_deref()) {
        if ns != mine {
            c.push(StatusCause::invalid("involvedObject.namespace", format!("\"{ns}\""), "does not match event.namespace"));
        }
    }
    if let Some(n) = ev.count.filter(|n| *n < 0) {
        c.push(StatusCause::invalid("count", n, "must be greater than or equal to 0"));
    }
    if let Some(t) = ev.type_.as_deref() {
        if !["Normal", "Warning"].contains(&t) {
            c.push(StatusCause::not_supported("type", t, &["Normal", "Warning"]));
        }
    }
    c
}

pub fn validate_lease(l: &Lease) -> Vec<StatusCause> {
    let mut c = vec![];
    validate_meta(&l.metadata, NameRule::Subdomain, &mut c);
    let Some(spec) = &l.spec else { return c };
    if let Some(d) = spec.lease_duration_seconds.filter(|&d| d <= 0) {
        c.push(StatusCause::invalid("spec.leaseDurationSeconds", d, "must be greater than 0"));
    }
    if let Some(n) = spec.lease_transitions.filter(|&n| n < 0) {
        c.push(StatusCause::invalid("spec.leaseTransitions", n, "must be greater than or equal to 0"));
    }
    c
}

/// What a Deployment and a ReplicaSet share: replicas, a selector that is not empty and
/// matches the template's labels, and a template that would make a valid pod.
pub fn validate_workload(
    meta: &ObjectMeta,
    replicas: Option<i32>,
    selector: &LabelSelector,
    template: Option<&PodTemplateSpec>,
) -> Vec<StatusCause> {
    let mut c = vec![];
    validate_meta(meta, NameRule::Subdomain, &mut c);
    if let Some(r) = replicas.filter(|r| *r < 0) {
        c.push(StatusCause::invalid("spec.replicas", r, "must be greater than or equal to 0"));
    }
    let empty = BTreeMap::new();
    let labels = template.and_then(|t| t.metadata.as_ref()).and_then(|m| m.labels.as_ref()).unwrap_or(&empty);
    match crate::selector::LabelSelector::from_spec(selector) {
        Err(e) => c.push(StatusCause::invalid("spec.selector", "{...}", &e.0)),
        Ok(sel) if sel.0.is_empty() => c.push(StatusCause::invalid("spec.selector", "{}", "empty selector is invalid for deployment")),
        Ok(sel) if !sel.matches(labels) => {
            c.push(StatusCause::invalid("spec.template.metadata.labels", "{...}", "`selector` does not match template `labels`"))
        }
        Ok(_) => {}
    }
    let Some(spec) = template.and_then(|t| t.spec.as_ref()) else {
        c.push(StatusCause::required("spec.template.spec"));
        return c;
    };
    // The template must make a valid pod (its name is the controller's to choose).
    if let Some(l) = template.and_then(|t| t.metadata.as_ref()).and_then(|m| m.labels.as_ref()) {
        labels_valid(l, "spec.template.metadata.labels", &mut c);
    }
    validate_pod_spec(spec, "spec.template.spec", &mut c);
    if let Some(p) = spec.restart_policy.as_deref().filter(|p| *p != "Always") {
        c.push(StatusCause::not_supported("spec.template.spec.restartPolicy", p, &["Always"]));
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_keys_and_values_are_worded_as_apimachinery_words_them() {
        assert!(qualified_name_errors("example.com/MyName").is_empty() && qualified_name_errors("A_b.C").is_empty());
        assert_eq!(
            qualified_name_errors(&format!("{}/{}", "p".repeat(253), "n".repeat(64))),
            ["name part must be no more than 63 characters"]
        );
        assert_eq!(qualified_name_errors(&format!("{}/n", "p".repeat(254))), ["prefix part must be no more than 253 characters"]);
        assert_eq!(qualified_name_errors("/a"), ["prefix part must be non-empty"]);
        let empty = qualified_name_errors("");
        assert_eq!((empty.len(), empty[0].as_str()), (2, "name part must be non-empty"));
        assert!(qualified_name_errors("a/b/c")[0].starts_with("a qualified name must consist of"));
        assert!(qualified_name_errors("a b")[0].starts_with("name part must consist of"));
        assert!(label_value_errors("").is_empty());
        assert_eq!(label_value_errors(&"v".repeat(64)), ["must be no more than 63 characters"]);
        assert!(label_value_errors("-a")[0].starts_with("a valid label must be an empty string"));
    }
    use serde_json::json;

    fn ranges() -> ServiceRanges {
        ServiceRanges { cluster_ips: "10.96.0.0/16".parse().unwrap(), node_ports: "30000-32767".parse().unwrap() }
    }

    fn fields(c: &[StatusCause]) -> Vec<&str> {
        c.iter().map(|c| c.field()).collect()
    }

    fn from<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn workloads_need_a_matching_selector_and_a_valid_template() {
        let t = |image: &str| -> PodTemplateSpec {
            from(json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": image}]}}))
        };
        let meta = ObjectMeta { name: Some("web".into()), ..Default::default() };
        let sel = |k: &str, v: &str| LabelSelector { match_labels: Some([(k.to_string(), v.to_string())].into()), ..Default::default() };
        assert!(validate_workload(&meta, Some(2), &sel("app", "web"), Some(&t("x"))).is_empty());
        assert_eq!(
            fields(&validate_workload(&meta, Some(-1), &LabelSelector::default(), Some(&t("x")))),
            ["spec.replicas", "spec.selector"]
        );
        assert_eq!(fields(&validate_workload(&meta, None, &sel("app", "db"), Some(&t("x")))), ["spec.template.metadata.labels"]);
        assert_eq!(fields(&validate_workload(&meta, None, &sel("app", "web"), Some(&t("")))), ["spec.template.spec.containers[0].image"]);
    }

    #[test]
    fn config_keys() {
        assert!(is_config_key("app.properties") && is_config_key("a_b-c"));
        assert!(!is_config_key("a/b") && !is_config_key("..") && !is_config_key(""));
        let cm: ConfigMap = from(json!({"metadata": {"name": "cfg"}, "data": {"k": "v"}, "binaryData": {"k": "dg==", "bad/key": "dg=="}}));
        let c = validate_configmap(&cm);
        assert_eq!(fields(&c), ["binaryData[bad/key]", "binaryData[k]"], "{c:?}");
        // A Secret's data is base64 on the wire: what is not does not even decode.
        assert!(serde_json::from_value::<Secret>(json!({"metadata": {"name": "s"}, "data": {"password": "not base64!"}})).is_err());
    }

    #[test]
    fn events_and_leases() {
        let ev: Event = from(json!({"metadata": {"name": "web.1", "namespace": "default"},
            "involvedObject": {"kind": "Pod", "namespace": "other", "name": "web"}, "type": "Info"}));
        assert_eq!(fields(&validate_event(&ev)), ["involvedObject.namespace", "type"]);
        let l: Lease = from(json!({"metadata": {"name": "node1"}, "spec": {"leaseDurationSeconds": 0}}));
        assert_eq!(fields(&validate_lease(&l)), ["spec.leaseDurationSeconds"]);
    }

    #[test]
    fn names() {
        assert!(is_dns1123_label("web-1"));
        assert!(!is_dns1123_label("Web"));
        assert!(!is_dns1123_label("-web"));
        assert!(!is_dns1123_label(&"a".repeat(64)));
        assert!(is_dns1123_subdomain("node1.example.com"));
        assert!(!is_dns1123_subdomain("a..b"));
        assert!(!is_dns1035_label("1web"));
        assert!(is_port_name("http") && !is_port_name("8080") && !is_port_name("a--b"));
    }

    #[test]
    fn pod_errors_name_their_fields() {
        let pod: Pod = from(json!({
            "metadata": {"name": "Bad_Name"},
            "spec": {"restartPolicy": "Sometimes", "containers": [
                {"name": "c", "image": "x", "ports": [{"containerPort": 70000}]},
                {"name": "c", "image": ""}
            ]}
        }));
        let c = validate_pod(&pod);
        assert_eq!(
            fields(&c),
            [
                "metadata.name",
                "spec.containers[0].ports[0].containerPort",
                "spec.containers[1].name",
                "spec.containers[1].image",
                "spec.restartPolicy"
            ]
        );
    }

    #[test]
    fn service_errors_name_their_fields() {
        let svc: Service = from(json!({
            "metadata": {"name": "web"},
            "spec": {"type": "NodePort", "clusterIP": "10.0.0.1", "ports": [
                {"name": "a", "port": 0, "nodePort": 80},
                {"port": 81, "targetPort": "no_such"}
            ]}
        }));
        let c = validate_service(&svc, &ranges());
        assert_eq!(
            fields(&c),
            ["spec.clusterIP", "spec.ports[0].port", "spec.ports[0].nodePort", "spec.ports[1].name", "spec.ports[1].targetPort"]
        );
        let svc: Service = from(json!({"metadata": {"name": "web"}, "spec": {"type": "Magic", "ports": [{"port": 80}]}}));
        assert_eq!(fields(&validate_service(&svc, &ranges())), ["spec.type"]);
        let svc: Service = from(json!({"metadata": {"name": "web"}, "spec": {"ports": [{"port": 80, "nodePort": 30001}]}}));
        assert_eq!(fields(&validate_service(&svc, &ranges())), ["spec.ports[0].nodePort"]);
    }

    #[test]
    fn node_cidr_must_parse() {
        let n: Node = from(json!({"metadata": {"name": "n1"}, "spec": {"podCIDR": "10.244.1.0/33"}}));
        assert_eq!(fields(&validate_node(&n)), ["spec.podCIDR"]);
    }
}
