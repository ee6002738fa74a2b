//! OpenAPI v2 (Swagger 2.0), the document kubectl 1.27 and 1.28 read before `apply`,
//! `diff`, `edit`, `create` and `explain`. kubectl asks for it in gnostic's protobuf
//! form (`application/com.github.proto-openapi.spec.v2@v1.0+protobuf`) and cannot read
//! JSON there, so this module writes that protobuf by hand from the same generated
//! schemas as the v3 documents: a few message types of gnostic's `OpenAPIv2.proto`, each
//! field a tag and a length-prefixed value. (No maintained crate ships gnostic's types.)
//!
//! The document has `definitions` (every kind, with its `x-kubernetes-group-version-kind`)
//! and no `paths`: kubectl finds no PATCH operation advertising strategic merge patch in
//! it and takes patch merge keys from its compiled-in copy of k8s.io/api, which is what
//! a real apiserver's merge keys say anyway.
//!
//! Upstream: k8s.io/kube-openapi/pkg/handler/handler.go, github.com/google/gnostic-models/openapiv2/OpenAPIv2.proto

use serde_json::{Map, Value};

/// Protobuf encoding: a field is `(number << 3 | wire type)` as a varint, then its value.
#[derive(Default)]
struct Msg(Vec<u8>);

impl Msg {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    /// A length-delimited field (wire type 2): strings and embedded messages.
    fn bytes(&mut self, field: u32, b: &[u8]) -> &mut Self {
        self.varint(u64::from(field << 3 | 2));
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
        self
    }
    fn string(&mut self, field: u32, s: &str) -> &mut Self {
        self.bytes(field, s.as_bytes())
    }
    fn msg(&mut self, field: u32, m: Msg) -> &mut Self {
        self.bytes(field, &m.0)
    }
    /// A varint field (wire type 0): booleans.
    fn bool(&mut self, field: u32, b: bool) -> &mut Self {
        self.varint(u64::from(field << 3));
        self.varint(u64::from(b));
        self
    }
}

/// gnostic's `NamedAny`: a vendor extension, its value as YAML text (JSON is YAML).
fn named_any(name: &str, value: &Value) -> Msg {
    let mut any = Msg::default();
    any.string(2, &value.to_string());
    let mut m = Msg::default();
    m.string(1, name).msg(2, any);
    m
}

/// gnostic's `Schema` from a JSON schema in Swagger 2.0 form.
fn schema(s: &Map<String, Value>) -> Msg {
    let mut m = Msg::default();
    let text = |k: &str| s.get(k).and_then(Value::as_str);
    if let Some(r) = text("$ref") {
        m.string(1, &r.replace("#/components/schemas/", "#/definitions/"));
    }
    if let Some(f) = text("format") {
        m.string(2, f);
    }
    if let Some(d) = text("description") {
        m.string(4, d);
    }
    for r in s.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
        m.string(19, r);
    }
    match s.get("additionalProperties") {
        Some(Value::Object(a)) => {
            m.msg(21, sub(1, schema(a)));
        }
        Some(Value::Bool(b)) => {
            let mut a = Msg::default();
            a.bool(2, *b);
            m.msg(21, a);
        }
        _ => {}
    }
    if let Some(t) = text("type") {
        m.msg(22, sub_str(1, t));
    }
    if let Some(Value::Object(items)) = s.get("items") {
        m.msg(23, sub(1, schema(items)));
    }
    if let Some(Value::Object(props)) = s.get("properties") {
        let mut p = Msg::default();
        for (name, v) in props {
            if let Value::Object(v) = v {
                p.msg(1, named_schema(name, v));
            }
        }
        m.msg(25, p);
    }
    for (k, v) in s.iter().filter(|(k, _)| k.starts_with("x-")) {
        m.msg(31, named_any(k, v));
    }
    m
}

fn sub(field: u32, inner: Msg) -> Msg {
    let mut m = Msg::default();
    m.msg(field, inner);
    m
}

fn sub_str(field: u32, s: &str) -> Msg {
    let mut m = Msg::default();
    m.string(field, s);
    m
}

fn named_schema(name: &str, s: &Map<String, Value>) -> Msg {
    let mut m = Msg::default();
    m.string(1, name).msg(2, schema(s));
    m
}

/// The whole `Document`: `swagger: "2.0"`, `info`, and `definitions`.
pub fn encode(definitions: &Map<String, Value>, version: &str) -> Vec<u8> {
    let mut info = Msg::default();
    info.string(1, "ownkube").string(2, version);
    let mut defs = Msg::default();
    for (name, s) in definitions {
        if let Value::Object(s) = s {
            defs.msg(1, named_schema(name, s));
        }
    }
    let mut doc = Msg::default();
    doc.string(1, "2.0").msg(2, info).msg(9, defs);
    doc.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_are_tagged_and_length_prefixed() {
        let defs = json!({"A": {"type": "object", "description": "a", "properties": {"x": {"$ref": "#/definitions/B"}},
                                "x-kubernetes-group-version-kind": [{"group": "", "kind": "A", "version": "v1"}]}});
        let b = encode(defs.as_object().unwrap(), "1.33");
        // swagger = "2.0": field 1, wire type 2, length 3.
        assert_eq!(&b[..5], &[0x0a, 3, b'2', b'.', b'0']);
        let text = String::from_utf8_lossy(&b);
        assert!(text.contains("#/definitions/B") && text.contains("x-kubernetes-group-version-kind") && text.contains("\"kind\":\"A\""));
        let mut m = Msg::default();
        m.varint(300);
        assert_eq!(m.0, [0xac, 0x02]);
    }
}
