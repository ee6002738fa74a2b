//! Protobuf bodies, encoded by the ecosystem's own types (`k8s-pb`, prost) exactly as
//! client-go encodes them, decoded by the apiserver and stored as the JSON Kubernetes
//! would store: names, maps, bytes, times, IntOrString, quantities and inlined structs.

mod common;
use common::*;
use k8s_pb::api::core::v1 as core;
use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_pb::apimachinery::pkg::util::intstr::IntOrString;
use prost::Message;
use serde_json::{json, Value};

/// `k8s\0` + runtime.Unknown{typeMeta, raw}, as client-go's protobuf serializer writes it.
fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
    let unknown = k8s_pb::apimachinery::pkg::runtime::Unknown {
        type_meta: Some(k8s_pb::apimachinery::pkg::runtime::TypeMeta { api_version: Some(api_version.into()), kind: Some(kind.into()) }),
        raw: Some(raw),
        content_encoding: Some(String::new()),
        content_type: Some(String::new()),
    };
    [b"k8s\0".to_vec(), unknown.encode_to_vec()].concat()
}

fn meta(name: &str) -> Option<meta::ObjectMeta> {
    Some(meta::ObjectMeta {
        name: Some(name.into()),
        labels: [("app".to_string(), "web".to_string())].into(),
        creation_timestamp: Some(meta::Time { seconds: Some(0), nanos: Some(0) }),
        ..Default::default()
    })
}

async fn post(c: &Cluster, path: &str, body: Vec<u8>) -> (u16, Value) {
    let r = c.http.post(c.url(path)).header("Content-Type", "application/vnd.kubernetes.protobuf").body(body).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn protobuf_bodies_become_the_objects_they_encode() {
    let c = Cluster::start().await;
    let cm = core::ConfigMap { metadata: meta("cfg"), data: [("k".to_string(), "v".to_string())].into(), ..Default::default() };
    let (code, v) = post(&c, "/api/v1/namespaces/default/configmaps", envelope("v1", "ConfigMap", cm.encode_to_vec())).await;
    assert_eq!(code, 201, "{v}");
    assert_eq!((v["data"]["k"].as_str(), v["metadata"]["labels"]["app"].as_str()), (Some("v"), Some("web")));

    let secret = core::Secret { metadata: meta("s"), data: [("pw".to_string(), b"hunter2".to_vec())].into(), ..Default::default() };
    let (code, v) = post(&c, "/api/v1/namespaces/default/secrets", envelope("v1", "Secret", secret.encode_to_vec())).await;
    assert_eq!((code, v["data"]["pw"].as_str()), (201, Some("aHVudGVyMg==")), "{v}");

    let port = |name: &str, port: i32, target: IntOrString| core::ServicePort {
        name: Some(name.into()),
        port: Some(port),
        target_port: Some(target),
        protocol: Some("TCP".into()),
        ..Default::default()
    };
    let svc = core::Service {
        metadata: meta("web"),
        spec: Some(core::ServiceSpec {
            r#type: Some("NodePort".into()),
            selector: [("app".to_string(), "web".to_string())].into(),
            ports: vec![
                port("http", 80, IntOrString { r#type: Some(0), int_val: Some(8080), str_val: None }),
                port("named", 81, IntOrString { r#type: Some(1), int_val: None, str_val: Some("metrics".into()) }),
            ],
            ..Default::default()
        }),
        status: Some(Default::default()),
    };
    let (code, v) = post(&c, "/api/v1/namespaces/default/services", envelope("v1", "Service", svc.encode_to_vec())).await;
    assert_eq!(code, 201, "{v}");
    assert_eq!(v["spec"]["ports"][0]["targetPort"], json!(8080));
    assert_eq!(v["spec"]["ports"][1]["targetPort"], json!("metrics"));
    assert!(v["spec"]["ports"][0]["nodePort"].is_number());

    // A pod: nested messages, quantities, and Go's embedded structs (Volume's VolumeSource,
    // Probe's ProbeHandler) whose fields JSON inlines.
    let pod = core::Pod {
        metadata: meta("p"),
        spec: Some(core::PodSpec {
            containers: vec![core::Container {
                name: Some("app".into()),
                image: Some("busybox".into()),
                resources: Some(core::ResourceRequirements {
                    limits: [("memory".to_string(), k8s_pb::apimachinery::pkg::api::resource::Quantity { string: Some("64Mi".into()) })]
                        .into(),
                    ..Default::default()
                }),
                readiness_probe: Some(core::Probe {
                    handler: Some(core::ProbeHandler {
                        http_get: Some(core::HttpGetAction {
                            path: Some("/readyz".into()),
                            port: Some(IntOrString { r#type: Some(0), int_val: Some(8080), str_val: None }),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    period_seconds: Some(2),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            volumes: vec![core::Volume {
                name: Some("cfg".into()),
                volume_source: Some(core::VolumeSource {
                    config_map: Some(core::ConfigMapVolumeSource {
                        local_object_reference: Some(core::LocalObjectReference { name: Some("cfg".into()) }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            }],
            ..Default::default()
        }),
        status: None,
    };
    let (code, v) = post(&c, "/api/v1/namespaces/default/pods", envelope("v1", "Pod", pod.encode_to_vec())).await;
    assert_eq!(code, 201, "{v}");
    let ctr = &v["spec"]["containers"][0];
    assert_eq!(ctr["resources"]["limits"]["memory"], "64Mi");
    assert_eq!(ctr["readinessProbe"], json!({"httpGet": {"path": "/readyz", "port": 8080}, "periodSeconds": 2}));
    assert_eq!(v["spec"]["volumes"][0], json!({"name": "cfg", "configMap": {"name": "cfg"}}));

    // Not protobuf after all, or a kind this server does not serve: 400, nothing stored.
    let (code, _) = post(&c, "/api/v1/namespaces/default/configmaps", b"k8s\0\xff".to_vec()).await;
    assert_eq!(code, 400);
    let (code, _) = post(&c, "/api/v1/namespaces/default/configmaps", envelope("example.com/v1", "Widget", vec![])).await;
    assert_eq!(code, 400);
}
