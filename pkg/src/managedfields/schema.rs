//! How each list and object of the built-in kinds merges under server-side apply, from
//! k8s.io/api's markers (`+listType=map`, `+listMapKey=name`, `+listType=set`,
//! `+mapType=atomic`, `+structType=atomic`): a keyed list's items are owned one by one,
//! an atomic list or object is owned whole. Lists not named here are atomic, objects
//! not named here are granular (each field owned on its own), as in structured-merge-diff.
//!
//! Paths name fields only, skipping list items: `spec.containers.ports` is the ports of
//! every container of a pod.
//!
//! Upstream: k8s.io/api/core/v1/types.go and apps/v1/types.go (the markers), sigs.k8s.io/structured-merge-diff/v4/schema

/// What a node of an object is, for ownership.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// An object whose fields are owned one by one (the default).
    Granular,
    /// An object or list owned as one value.
    Atomic,
    /// A list whose items are told apart by these fields (and their defaults when absent).
    Keyed(&'static [(&'static str, Option<&'static str>)]),
    /// A list of distinct scalars (`finalizers`).
    Set,
}

use Shape::*;

const BY_NAME: Shape = Keyed(&[("name", None)]);
const BY_TYPE: Shape = Keyed(&[("type", None)]);

/// Pod spec markers, relative to the spec.
const POD_SPEC: &[(&str, Shape)] = &[
    ("containers", BY_NAME),
    ("initContainers", BY_NAME),
    ("ephemeralContainers", BY_NAME),
    ("volumes", BY_NAME),
    ("imagePullSecrets", BY_NAME),
    ("hostAliases", Keyed(&[("ip", None)])),
    ("topologySpreadConstraints", Keyed(&[("topologyKey", None), ("whenUnsatisfiable", None)])),
    ("schedulingGates", BY_NAME),
    ("resourceClaims", BY_NAME),
    ("nodeSelector", Atomic),
    ("containers.ports", Keyed(&[("containerPort", None), ("protocol", Some("\"TCP\""))])),
    ("initContainers.ports", Keyed(&[("containerPort", None), ("protocol", Some("\"TCP\""))])),
    ("containers.env", BY_NAME),
    ("initContainers.env", BY_NAME),
    ("containers.volumeMounts", Keyed(&[("mountPath", None)])),
    ("initContainers.volumeMounts", Keyed(&[("mountPath", None)])),
    ("containers.volumeDevices", Keyed(&[("devicePath", None)])),
    ("containers.env.valueFrom.configMapKeyRef", Atomic),
    ("containers.env.valueFrom.secretKeyRef", Atomic),
    ("containers.env.valueFrom.fieldRef", Atomic),
    ("containers.env.valueFrom.resourceFieldRef", Atomic),
    ("containers.resources.claims", BY_NAME),
];

/// The shape of the node at `path` (field names joined by dots) in an object of `kind`.
pub fn shape(kind: &str, path: &str) -> Shape {
    let common: &[(&str, Shape)] = &[
        ("metadata.finalizers", Set),
        ("metadata.ownerReferences", Keyed(&[("uid", None)])),
        ("metadata.managedFields", Atomic),
        ("status.conditions", BY_TYPE),
    ];
    if let Some((_, s)) = common.iter().find(|(p, _)| *p == path) {
        return *s;
    }
    let pod_spec = match kind {
        "Pod" => Some("spec"),
        "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" | "Job" | "PodTemplate" => Some("spec.template.spec"),
        _ => None,
    };
    if let Some(rest) = pod_spec.and_then(|at| path.strip_prefix(at)).and_then(|r| r.strip_prefix('.')) {
        if let Some((_, s)) = POD_SPEC.iter().find(|(p, _)| *p == rest) {
            return *s;
        }
    }
    let own: &[(&str, Shape)] = match kind {
        "Pod" => &[("status.podIPs", Keyed(&[("ip", None)]))],
        "Service" => &[("spec.ports", Keyed(&[("port", None), ("protocol", Some("\"TCP\""))])), ("spec.selector", Atomic)],
        "Node" => &[("status.addresses", BY_TYPE), ("spec.podCIDRs", Set)],
        "ServiceAccount" => &[("secrets", BY_NAME)],
        "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" | "Job" => &[("spec.selector", Atomic)],
        _ => &[],
    };
    own.iter().find(|(p, _)| *p == path).map_or(Granular, |(_, s)| *s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_by_kind_and_path() {
        assert_eq!(shape("Pod", "spec.containers"), BY_NAME);
        assert_eq!(shape("Deployment", "spec.template.spec.containers.env"), BY_NAME);
        assert_eq!(shape("Deployment", "spec.selector"), Atomic);
        assert_eq!(shape("Service", "spec.selector"), Atomic);
        assert_eq!(shape("Pod", "metadata.finalizers"), Set);
        assert_eq!(shape("Pod", "spec.containers.command"), Granular, "unlisted: lists are atomic by their JSON, objects granular");
    }
}
