//! A container's environment, as the kubelet builds it: `envFrom` first (every key of a
//! ConfigMap or Secret, with an optional prefix), then `env` in order, each `value`
//! expanded with `$(VAR)` against the variables defined so far, or taken `valueFrom` a
//! ConfigMap or Secret key, a field of the pod (`metadata.name`, `status.podIP`, ...) or
//! a resource limit. A missing ConfigMap, Secret or key that is not `optional` is an
//! error: the container waits with `CreateContainerConfigError`.
//!
//! Upstream: pkg/kubelet/kubelet_pods.go (makeEnvironmentVariables, podFieldSelectorRuntimeValue),
//! third_party/forked/golang/expansion/expand.go

use super::resources::{cpu_milli, memory_bytes};
use crate::api::{ConfigMap, Container, Object, Pod, PodExt, Secret};
use std::collections::BTreeMap;

/// Where ConfigMaps and Secrets come from (the agent's caches), in the pod's namespace.
pub trait Sources {
    fn config_map(&self, name: &str) -> Option<ConfigMap>;
    fn secret(&self, name: &str) -> Option<Secret>;
}

/// What the pod has been given by the node: its IP, the node's IP, the node's allocatable
/// cpu (milli) and memory (bytes), for fieldRef and resourceFieldRef.
#[derive(Clone, Debug, Default)]
pub struct Node {
    pub pod_ip: String,
    pub host_ip: String,
    pub allocatable_cpu_milli: i64,
    pub allocatable_memory: i64,
}

/// `$(NAME)` becomes NAME's value if `lookup` knows it (else stays as written); `$$` is a
/// literal `$`; nothing is expanded twice.
pub fn expand(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'$' || i + 1 == b.len() {
            let ch = s[i..].chars().next().unwrap_or('$');
            out.push(ch);
            i += ch.len_utf8();
            continue;
        }
        match b[i + 1] {
            b'$' => {
                out.push('$');
                i += 2;
            }
            b'(' => match s[i + 2..].find(')') {
                Some(end) => {
                    let name = &s[i + 2..i + 2 + end];
                    out.push_str(&lookup(name).unwrap_or_else(|| format!("$({name})")));
                    i += 3 + end;
                }
                None => {
                    out.push_str("$(");
                    i += 2;
                }
            },
            _ => {
                out.push('$');
                i += 1;
            }
        }
    }
    out
}

/// A field of the pod, for `fieldRef` (env and downwardAPI volumes).
pub fn field_ref(pod: &Pod, path: &str, node: &Node) -> Result<String, String> {
    let m = &pod.metadata;
    let key = |p: &str, prefix: &str| {
        p.strip_prefix(prefix).and_then(|r| r.strip_prefix("['")).and_then(|r| r.strip_suffix("']")).map(String::from)
    };
    Ok(match path {
        "metadata.name" => pod.name().to_string(),
        "metadata.namespace" => pod.namespace().unwrap_or("default").to_string(),
        "metadata.uid" => pod.uid().unwrap_or_default().to_string(),
        "spec.nodeName" => pod.node_name().unwrap_or_default().to_string(),
        "spec.serviceAccountName" => pod.spec.as_ref().and_then(|s| s.service_account_name.clone()).unwrap_or_else(|| "default".into()),
        "status.podIP" | "status.podIPs" => node.pod_ip.clone(),
        "status.hostIP" | "status.hostIPs" => node.host_ip.clone(),
        p if p.starts_with("metadata.labels[") => key(p, "metadata.labels").and_then(|k| pod.labels().get(&k).cloned()).unwrap_or_default(),
        p if p.starts_with("metadata.annotations[") => {
            key(p, "metadata.annotations").and_then(|k| m.annotations.as_ref().and_then(|a| a.get(&k).cloned())).unwrap_or_default()
        }
        other => return Err(format!("unsupported fieldRef path {other:?}")),
    })
}

/// A container's limit or request, for `resourceFieldRef` (unset limits are the node's
/// allocatable), divided by the divisor and rounded up.
pub fn resource_ref(c: &Container, resource: &str, divisor: Option<&str>, node: &Node) -> Result<String, String> {
    let res = c.resources.clone().unwrap_or_default();
    let (kind, which) = resource.split_once('.').ok_or_else(|| format!("unsupported resource {resource:?}"))?;
    let map = if kind == "limits" { res.limits } else { res.requests };
    let q = map.as_ref().and_then(|m| m.get(which)).map(|q| q.0.clone());
    match which {
        "cpu" => {
            let v = q.map(|q| cpu_milli(&q)).transpose()?.unwrap_or(node.allocatable_cpu_milli);
            let d = divisor.map(cpu_milli).transpose()?.unwrap_or(1000).max(1);
            Ok(((v + d - 1) / d).to_string())
        }
        "memory" => {
            let v = q.map(|q| memory_bytes(&q)).transpose()?.unwrap_or(node.allocatable_memory);
            let d = divisor.map(memory_bytes).transpose()?.unwrap_or(1).max(1);
            Ok(((v + d - 1) / d).to_string())
        }
        _ => Err(format!("unsupported resource {resource:?}")),
    }
}

fn set(env: &mut Vec<(String, String)>, k: String, v: String) {
    match env.iter_mut().find(|(n, _)| *n == k) {
        Some(e) => e.1 = v,
        None => env.push((k, v)),
    }
}

fn secret_value(v: &[u8]) -> String {
    String::from_utf8_lossy(v).into_owned()
}

/// The container's environment, in order; or why it cannot be built.
pub fn make_env(pod: &Pod, c: &Container, src: &dyn Sources, node: &Node) -> Result<Vec<(String, String)>, String> {
    let ns = pod.namespace().unwrap_or("default").to_string();
    let mut env: Vec<(String, String)> = vec![];
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(r) = &from.config_map_ref {
            match src.config_map(&r.name) {
                Some(cm) => cm.data.into_iter().flatten().for_each(|(k, v)| set(&mut env, format!("{prefix}{k}"), v)),
                None if r.optional == Some(true) => {}
                None => return Err(format!("configmap \"{}\" not found", r.name)),
            }
        }
        if let Some(r) = &from.secret_ref {
            match src.secret(&r.name) {
                Some(s) => s.data.into_iter().flatten().for_each(|(k, v)| set(&mut env, format!("{prefix}{k}"), secret_value(&v.0))),
                None if r.optional == Some(true) => {}
                None => return Err(format!("secret \"{}\" not found", r.name)),
            }
        }
    }
    for e in c.env.iter().flatten() {
        let value = match &e.value_from {
            None => {
                let so_far = env.clone();
                let lookup = move |n: &str| so_far.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
                Some(expand(e.value.as_deref().unwrap_or(""), &lookup))
            }
            Some(vf) => {
                if let Some(f) = &vf.field_ref {
                    Some(field_ref(pod, &f.field_path, node)?)
                } else if let Some(r) = &vf.resource_field_ref {
                    let target = r.container_name.as_deref().and_then(|n| super::actions::container(pod.spec.as_ref()?, n)).unwrap_or(c);
                    Some(resource_ref(target, &r.resource, r.divisor.as_ref().map(|d| d.0.as_str()), node)?)
                } else if let Some(k) = &vf.config_map_key_ref {
                    let optional = k.optional == Some(true);
                    match src.config_map(&k.name) {
                        None if optional => None,
                        None => return Err(format!("configmap \"{}\" not found", k.name)),
                        Some(cm) => match cm.data.as_ref().and_then(|d| d.get(&k.key)) {
                            Some(v) => Some(v.clone()),
                            None if optional => None,
                            None => return Err(format!("couldn't find key {} in ConfigMap {ns}/{}", k.key, k.name)),
                        },
                    }
                } else if let Some(k) = &vf.secret_key_ref {
                    let optional = k.optional == Some(true);
                    match src.secret(&k.name) {
                        None if optional => None,
                        None => return Err(format!("secret \"{}\" not found", k.name)),
                        Some(s) => match s.data.as_ref().and_then(|d| d.get(&k.key)) {
                            Some(v) => Some(secret_value(&v.0)),
                            None if optional => None,
                            None => return Err(format!("couldn't find key {} in Secret {ns}/{}", k.key, k.name)),
                        },
                    }
                } else {
                    None
                }
            }
        };
        if let Some(v) = value {
            set(&mut env, e.name.clone(), v);
        }
    }
    Ok(env)
}

/// `command` and `args` with `$(VAR)` expanded against the final environment.
pub fn expand_command(list: &[String], env: &[(String, String)]) -> Vec<String> {
    let map: BTreeMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let lookup = |n: &str| map.get(n).map(|v| v.to_string());
    list.iter().map(|s| expand(s, &lookup)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Src;
    impl Sources for Src {
        fn config_map(&self, name: &str) -> Option<ConfigMap> {
            (name == "cfg")
                .then(|| serde_json::from_value(json!({"metadata": {"name": "cfg"}, "data": {"MODE": "fast", "LEVEL": "2"}})).unwrap())
        }
        fn secret(&self, name: &str) -> Option<Secret> {
            (name == "pw")
                .then(|| serde_json::from_value(json!({"metadata": {"name": "pw"}, "data": {"password": "aHVudGVyMg=="}})).unwrap())
        }
    }

    #[test]
    fn expansion_follows_kubernetes() {
        let l = |n: &str| (n == "A").then(|| "1".to_string());
        assert_eq!(expand("x$(A)y", &l), "x1y");
        assert_eq!(expand("$(B)", &l), "$(B)", "unknown stays");
        assert_eq!(expand("$$(A)", &l), "$(A)", "escaped");
        assert_eq!(expand("$(A", &l), "$(A");
        assert_eq!(expand("cost $5", &l), "cost $5");
        assert_eq!(expand("end$", &l), "end$");
    }

    #[test]
    fn env_from_config_secrets_fields_and_limits() {
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
            "spec": {"nodeName": "node1", "containers": [{"name": "c", "image": "x",
              "resources": {"limits": {"memory": "64Mi", "cpu": "250m"}},
              "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}],
              "env": [{"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "pw", "key": "password"}}},
                      {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                      {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                      {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                      {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
                      {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1m"}}},
                      {"name": "URL", "value": "http://$(POD):$(CFG_LEVEL)"},
                      {"name": "OPT", "valueFrom": {"configMapKeyRef": {"name": "gone", "key": "k", "optional": true}}}]}]}}))
        .unwrap();
        let node =
            Node { pod_ip: "10.244.0.5".into(), host_ip: "172.30.0.11".into(), allocatable_cpu_milli: 2000, allocatable_memory: 1 << 30 };
        let env = make_env(&pod, &pod.containers()[0], &Src, &node).unwrap();
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(
            (get("CFG_MODE"), get("PASSWORD"), get("POD"), get("IP")),
            (Some("fast"), Some("hunter2"), Some("web"), Some("10.244.0.5"))
        );
        assert_eq!((get("APP"), get("MEM"), get("CPU"), get("URL")), (Some("web"), Some("64"), Some("250"), Some("http://web:2")));
        assert_eq!(get("OPT"), None, "optional and missing: no variable");
        let mut bad = pod.clone();
        bad.spec.as_mut().unwrap().containers[0].env =
            serde_json::from_value(json!([{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "NOPE"}}}])).unwrap();
        assert_eq!(make_env(&bad, &bad.containers()[0], &Src, &node).unwrap_err(), "couldn't find key NOPE in ConfigMap shop/cfg");
        assert_eq!(expand_command(&["echo".into(), "$(POD)".into()], &env), ["echo", "web"]);
    }
}
