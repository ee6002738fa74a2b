//! Unknown fields. A body is decoded into k8s-openapi's structs, which drop every field
//! they do not declare; this module names those fields the way kube-apiserver's strict
//! decoder does (`spec.containers[0].imagePullPolcy`), so the server can warn about them
//! (`fieldValidation=Warn`, the default: a `Warning:` header, the field dropped) or refuse
//! the request (`fieldValidation=Strict`). `serde_ignored` reports each field a
//! `Deserialize` impl skipped, with its path.
//!
//! Upstream: k8s.io/apimachinery/pkg/runtime/serializer/json (strict decoding),
//! k8s.io/apiserver/pkg/endpoints/handlers/rest.go (fieldValidation)

use serde::de::DeserializeOwned;

/// Decode into `T` from any deserializer (a `Value`, or JSON bytes straight away),
/// returning the paths of the fields `T` does not have.
pub fn decode_reporting_unknown<'de, T: DeserializeOwned, D: serde::Deserializer<'de>>(d: D) -> Result<(T, Vec<String>), D::Error> {
    let mut unknown = vec![];
    let obj = serde_ignored::deserialize(d, |path| unknown.push(render(&path)))?;
    Ok((obj, unknown))
}

/// `serde_ignored`'s path (`spec.?.containers.?.0.bogus`, where `?` marks an `Option`) in
/// Kubernetes' notation (`spec.containers[0].bogus`).
fn render(path: &serde_ignored::Path) -> String {
    use serde_ignored::Path as P;
    match path {
        P::Root => String::new(),
        P::Seq { parent, index } => format!("{}[{index}]", render(parent)),
        P::Map { parent, key } => {
            let p = render(parent);
            if p.is_empty() {
                key.clone()
            } else {
                format!("{p}.{key}")
            }
        }
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => render(parent),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Pod;

    #[test]
    fn unknown_fields_are_named_by_their_path() {
        let body = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "colour": "blue"},
            "spec": {"containers": [{"name": "c", "image": "x", "imagePullPolcy": "Always",
                                     "ports": [{"containerPort": 80, "hostPorts": 1}]}],
                     "dnsPolicy": "ClusterFirst"}
        });
        let (pod, unknown) = decode_reporting_unknown::<Pod, _>(body).unwrap();
        assert_eq!(unknown, ["metadata.colour", "spec.containers[0].imagePullPolcy", "spec.containers[0].ports[0].hostPorts"]);
        assert_eq!(pod.spec.unwrap().dns_policy.as_deref(), Some("ClusterFirst"));
    }

    #[test]
    fn labels_are_data_not_fields() {
        let body = serde_json::json!({"metadata": {"name": "web", "labels": {"anything": "goes"}}});
        let (_, unknown) = decode_reporting_unknown::<Pod, _>(body).unwrap();
        assert!(unknown.is_empty());
    }
}
