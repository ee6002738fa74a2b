//! Configuration handed to pods: ConfigMap (plain key/value data), Secret (the same, base64
//! on the wire and meant for credentials) and ServiceAccount (the identity a pod runs as;
//! every namespace gets a `default` one).
//!
//! Upstream: k8s.io/api/core/v1/types.go (ConfigMap, Secret, ServiceAccount)

use super::{Extra, ObjectMeta};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Non-secret configuration: `data` holds UTF-8 strings, `binaryData` base64 bytes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMap {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub binary_data: BTreeMap<String, String>,
    /// Once true, `data` and `binaryData` can never change (the object can only be deleted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub immutable: Option<bool>,
}
crate::object!(ConfigMap, "ConfigMap", "configmaps", true);

/// Credentials: `data` values are base64. `stringData` is a write-only convenience: the
/// apiserver encodes it into `data` and never stores or returns it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Secret {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub string_data: BTreeMap<String, String>,
    /// `Opaque` (the default), `kubernetes.io/tls`, `kubernetes.io/dockerconfigjson`, ...
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub immutable: Option<bool>,
}
crate::object!(Secret, "Secret", "secrets", true);

/// An identity for processes in pods. ownkube issues no tokens; the object exists so that
/// manifests and clients that expect `default` find it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccount {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// `secrets`, `imagePullSecrets`, `automountServiceAccountToken`, kept as sent.
    #[serde(flatten)]
    pub extra: Extra,
}
crate::object!(ServiceAccount, "ServiceAccount", "serviceaccounts", true);
