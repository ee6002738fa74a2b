//! The files a `configMap`, `secret` or `downwardAPI` volume holds: every key (or the
//! `items` asked for, each at its `path`), with `defaultMode` 0644. Paths must stay inside
//! the volume. The agent writes them atomically (a new `..<time>` directory, then one
//! rename of the `..data` link), so a program never sees half an update.
//!
//! Upstream: pkg/volume/configmap, pkg/volume/secret, pkg/volume/downwardapi, pkg/volume/util/atomic_writer.go

use super::env::{field_ref, Node};
use crate::api::{ConfigMap, Pod, Secret};
use k8s_openapi::api::core::v1::{ConfigMapVolumeSource, DownwardAPIVolumeSource, KeyToPath, SecretVolumeSource};
use std::collections::BTreeMap;

/// Relative path → (contents, mode).
pub type Payload = BTreeMap<String, (Vec<u8>, u32)>;

pub const DEFAULT_MODE: u32 = 0o644;

/// A path inside a volume: relative, no `..` element, not starting with `..`, short enough.
pub fn valid_path(p: &str) -> Result<(), String> {
    if p.is_empty() || p.starts_with('/') {
        return Err(format!("invalid path {p:?}: must be relative"));
    }
    if p.len() > 4096 || p.split('/').any(|e| e == ".." || e.len() > 255) || p.starts_with("..") {
        return Err(format!("invalid path {p:?}: must not contain '..' or overlong elements"));
    }
    Ok(())
}

fn from_keys(
    data: BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
    mode: u32,
    what: &str,
    optional: bool,
) -> Result<Payload, String> {
    let mut out = Payload::new();
    match items {
        None => {
            for (k, v) in data {
                valid_path(&k)?;
                out.insert(k, (v, mode));
            }
        }
        Some(items) => {
            for it in items {
                valid_path(&it.path)?;
                match data.get(&it.key) {
                    Some(v) => drop(out.insert(it.path.clone(), (v.clone(), it.mode.map_or(mode, |m| m as u32)))),
                    None if optional => {}
                    None => return Err(format!("{what} references non-existent config key: {}", it.key)),
                }
            }
        }
    }
    Ok(out)
}

pub fn config_map(cm: Option<&ConfigMap>, src: &ConfigMapVolumeSource) -> Result<Payload, String> {
    let optional = src.optional == Some(true);
    let Some(cm) = cm else {
        return if optional { Ok(Payload::new()) } else { Err(format!("configmap \"{}\" not found", src.name)) };
    };
    let mut data: BTreeMap<String, Vec<u8>> = cm.data.clone().unwrap_or_default().into_iter().map(|(k, v)| (k, v.into_bytes())).collect();
    data.extend(cm.binary_data.clone().unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)));
    from_keys(data, src.items.as_ref(), src.default_mode.map_or(DEFAULT_MODE, |m| m as u32), "configmap", optional)
}

pub fn secret(s: Option<&Secret>, src: &SecretVolumeSource) -> Result<Payload, String> {
    let optional = src.optional == Some(true);
    let name = src.secret_name.clone().unwrap_or_default();
    let Some(s) = s else {
        return if optional { Ok(Payload::new()) } else { Err(format!("secret \"{name}\" not found")) };
    };
    let data = s.data.clone().unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect();
    from_keys(data, src.items.as_ref(), src.default_mode.map_or(DEFAULT_MODE, |m| m as u32), "secret", optional)
}

/// A whole map as downwardAPI writes it: sorted `key="value"` lines, no final newline.
pub fn format_map(m: &BTreeMap<String, String>) -> String {
    m.iter().map(|(k, v)| format!("{k}={v:?}")).collect::<Vec<_>>().join("\n")
}

pub fn downward_api(pod: &Pod, src: &DownwardAPIVolumeSource, node: &Node) -> Result<Payload, String> {
    let mode = src.default_mode.map_or(DEFAULT_MODE, |m| m as u32);
    let mut out = Payload::new();
    for it in src.items.iter().flatten() {
        valid_path(&it.path)?;
        let Some(f) = &it.field_ref else { continue };
        let value = match f.field_path.as_str() {
            "metadata.labels" => format_map(pod.metadata.labels.as_ref().unwrap_or(&BTreeMap::new())),
            "metadata.annotations" => format_map(pod.metadata.annotations.as_ref().unwrap_or(&BTreeMap::new())),
            p => field_ref(pod, p, node)?,
        };
        out.insert(it.path.clone(), (value.into_bytes(), it.mode.map_or(mode, |m| m as u32)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn payloads_keys_items_modes_and_paths() {
        let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "c"}, "data": {"app.conf": "x=1", "other": "y"}})).unwrap();
        let all = config_map(Some(&cm), &ConfigMapVolumeSource { name: "c".into(), ..Default::default() }).unwrap();
        assert_eq!(all["app.conf"], (b"x=1".to_vec(), 0o644));
        let some: ConfigMapVolumeSource =
            serde_json::from_value(json!({"name": "c", "items": [{"key": "app.conf", "path": "conf/app.conf", "mode": 0o600}]})).unwrap();
        let p = config_map(Some(&cm), &some).unwrap();
        assert_eq!(p.keys().collect::<Vec<_>>(), ["conf/app.conf"]);
        assert_eq!(p["conf/app.conf"].1, 0o600);
        assert_eq!(config_map(None, &some).unwrap_err(), "configmap \"c\" not found");
        let evil: ConfigMapVolumeSource =
            serde_json::from_value(json!({"name": "c", "items": [{"key": "other", "path": "../../etc/x"}]})).unwrap();
        assert!(config_map(Some(&cm), &evil).is_err());
        assert!(valid_path("..data").is_err() && valid_path("/abs").is_err() && valid_path("a/b").is_ok());
        assert_eq!(format_map(&[("b".into(), "2".into()), ("a".into(), "x\"y".into())].into()), "a=\"x\\\"y\"\nb=\"2\"");
    }
}
