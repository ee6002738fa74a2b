//! Protobuf request bodies, turned into the JSON the rest of the apiserver speaks.
//!
//! kubectl 1.32 and later send built-in objects as `application/vnd.kubernetes.protobuf`
//! (`kubectl create configmap` does), and client-go's controllers do the same. The body
//! is the 4 bytes `k8s\0`, then a `runtime.Unknown` message holding the `apiVersion` and
//! `kind` and, as bytes, the object's own message (k8s.io/api/core/v1/generated.proto).
//!
//! Protobuf carries field *numbers*, not names, so decoding needs the schema: [`schema`]
//! lists, for every message reachable from the kinds served, each field's number, JSON
//! name and type (generated from the `k8s-pb` and `k8s-openapi` crates by
//! `scripts/gen-protobuf-schema`). A few apimachinery types are written differently in
//! JSON than their messages suggest (Time is a string, IntOrString an int or a string,
//! Quantity a string), and embedded Go structs are inlined: both handled here.
//!
//! Why not decode into `k8s-pb`'s structs: they have no serde, so they could not become
//! JSON without hand-writing a conversion for each of ~240 messages.
//!
//! Upstream: k8s.io/apimachinery/pkg/runtime/serializer/protobuf/protobuf.go

mod schema;
mod wire;

use base64::Engine;
use serde_json::{json, Map, Value};
use wire::{Reader, WireType};

/// How a field is written in JSON.
#[derive(Debug)]
pub enum Ty {
    Str,
    I32,
    I64,
    Bool,
    F64,
    /// `[]byte`: base64 in JSON.
    Bytes,
    /// Another message, by its full name.
    Msg(&'static str),
    /// `map<string, V>`.
    Map(&'static Ty),
    /// meta/v1 Time: `{seconds, nanos}` → RFC 3339 to the second.
    Time,
    /// meta/v1 MicroTime: RFC 3339 with microseconds.
    MicroTime,
    /// resource.Quantity: `{string}` → `"100m"`.
    Quantity,
    /// intstr.IntOrString: `{type, intVal, strVal}` → `8080` or `"http"`.
    IntOrString,
    /// runtime.RawExtension and meta/v1 FieldsV1: JSON bytes, embedded as they are.
    RawJson,
    /// meta/v1 Duration: nanoseconds → Go's duration string.
    Duration,
}

/// One message of the schema.
pub struct Message {
    pub name: &'static str,
    /// (field number, JSON name or "" for an inlined struct, type, repeated)
    pub fields: &'static [(u32, &'static str, Ty, bool)],
}

/// The protobuf envelope's magic number.
pub const MAGIC: &[u8] = b"k8s\0";

/// Why a protobuf body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("not a Kubernetes protobuf body: it must start with \"k8s\\x00\"")]
    NoMagic,
    #[error("malformed protobuf: {0}")]
    Malformed(&'static str),
    #[error("protobuf bodies of {0} are not supported")]
    UnknownKind(String),
    #[error("field {field} of {message} is not valid UTF-8")]
    NotUtf8 { message: &'static str, field: &'static str },
    /// Field number 0, which no message has (Go's generated decoders say the same).
    #[error("proto: illegal tag 0 (wire type {0})")]
    IllegalTag(u64),
    /// A field the schema knows, sent with a wire type it cannot have.
    #[error("proto: wrong wireType = {wire} for field {field}")]
    WrongWireType { wire: u8, field: &'static str },
}

/// Decode a `k8s\0` + `runtime.Unknown` body into the object's JSON form. An envelope
/// whose TypeMeta is empty holds the kind the endpoint serves (`default`: apiVersion,
/// kind), as kube-apiserver's decoder fills in the defaults it was given.
pub fn decode_body(body: &[u8], default: (&str, &str)) -> Result<Value, ProtoError> {
    let rest = body.strip_prefix(MAGIC).ok_or(ProtoError::NoMagic)?;
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    let mut r = Reader::new(rest);
    while let Some((field, wt)) = r.key()? {
        match (field, wt) {
            (1, WireType::Len) => {
                let mut tm = Reader::new(r.bytes()?);
                while let Some((f, wt)) = tm.key()? {
                    match (f, wt) {
                        (1, WireType::Len) => api_version = utf8(tm.bytes()?, "TypeMeta", "apiVersion")?,
                        (2, WireType::Len) => kind = utf8(tm.bytes()?, "TypeMeta", "kind")?,
                        (1 | 2, wt) => return Err(ProtoError::WrongWireType { wire: wt as u8, field: "TypeMeta" }),
                        (_, wt) => tm.skip(wt)?,
                    }
                }
            }
            (2, WireType::Len) => raw = r.bytes()?,
            (1, wt) => return Err(ProtoError::WrongWireType { wire: wt as u8, field: "TypeMeta" }),
            (2, wt) => return Err(ProtoError::WrongWireType { wire: wt as u8, field: "Raw" }),
            (_, wt) => r.skip(wt)?,
        }
    }
    if api_version.is_empty() {
        api_version = default.0.to_string();
    }
    if kind.is_empty() {
        kind = default.1.to_string();
    }
    let name = message_name(&api_version, &kind).ok_or_else(|| ProtoError::UnknownKind(format!("{api_version} {kind}")))?;
    let msg = find(&name).ok_or(ProtoError::UnknownKind(name))?;
    let mut obj = Map::new();
    decode_message(raw, msg, &mut obj)?;
    obj.insert("apiVersion".into(), json!(api_version));
    obj.insert("kind".into(), json!(kind));
    Ok(Value::Object(obj))
}

/// `apps/v1` + `Deployment` → `api.apps.v1.Deployment`; `v1` is the core group and
/// `meta.k8s.io` lives in apimachinery.
fn message_name(api_version: &str, kind: &str) -> Option<String> {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("core", api_version));
    if group == "meta.k8s.io" {
        return Some(format!("apimachinery.pkg.apis.meta.{version}.{kind}"));
    }
    let short = group.strip_suffix(".k8s.io").unwrap_or(group);
    (!short.contains('.') && !version.is_empty()).then(|| format!("api.{short}.{version}.{kind}"))
}

fn find(name: &str) -> Option<&'static Message> {
    schema::MESSAGES.iter().find(|m| m.name == name)
}

fn utf8(b: &[u8], message: &'static str, field: &'static str) -> Result<String, ProtoError> {
    String::from_utf8(b.to_vec()).map_err(|_| ProtoError::NotUtf8 { message, field })
}

/// Decode one message's fields into `out` (the JSON object it belongs in).
fn decode_message(buf: &[u8], msg: &'static Message, out: &mut Map<String, Value>) -> Result<(), ProtoError> {
    let mut r = Reader::new(buf);
    while let Some((number, wt)) = r.key()? {
        let Some((_, name, ty, repeated)) = msg.fields.iter().find(|f| f.0 == number) else {
            r.skip(wt)?; // a field newer than our schema
            continue;
        };
        if name.is_empty() {
            let Ty::Msg(inner) = ty else { return Err(ProtoError::Malformed("inlined field is not a message")) };
            let inner = find(inner).ok_or(ProtoError::Malformed("inlined message missing from the schema"))?;
            decode_message(r.bytes()?, inner, out)?;
            continue;
        }
        if *repeated && wt == WireType::Len && ty.is_packable() {
            let mut packed = Reader::new(r.bytes()?);
            while !packed.is_empty() {
                let v = scalar(&mut packed, ty, msg.name, name)?;
                push(out, name, v);
            }
            continue;
        }
        let v = value(&mut r, wt, ty, msg.name, name)?;
        // Go writes every non-pointer string to protobuf, empty or not; its JSON leaves the
        // empty ones out (`omitempty`), and so do we: `restartPolicy: ""` would be invalid.
        if v == json!("") && !*repeated && matches!(ty, Ty::Str) {
            continue;
        }
        match ty {
            Ty::Map(_) => merge_map(out, name, v),
            _ if *repeated => push(out, name, v),
            _ => drop(out.insert(name.to_string(), v)),
        }
    }
    Ok(())
}

fn push(out: &mut Map<String, Value>, name: &str, v: Value) {
    if let Value::Array(a) = out.entry(name).or_insert_with(|| json!([])) {
        a.push(v);
    }
}

fn merge_map(out: &mut Map<String, Value>, name: &str, entry: Value) {
    if let (Value::Object(m), Value::Object(e)) = (out.entry(name).or_insert_with(|| json!({})), entry) {
        m.extend(e);
    }
}

impl Ty {
    fn is_packable(&self) -> bool {
        matches!(self, Ty::I32 | Ty::I64 | Ty::Bool | Ty::F64)
    }
}

/// A varint or fixed64 scalar.
fn scalar(r: &mut Reader, ty: &Ty, message: &'static str, field: &'static str) -> Result<Value, ProtoError> {
    let _ = (message, field);
    Ok(match ty {
        Ty::I32 => json!(r.varint()? as i32),
        Ty::I64 => json!(r.varint()? as i64),
        Ty::Bool => json!(r.varint()? != 0),
        Ty::F64 => json!(f64::from_bits(r.fixed64()?)),
        _ => return Err(ProtoError::Malformed("a packed field that is not numeric")),
    })
}

/// One field's value, of its wire type.
fn value(r: &mut Reader, wt: WireType, ty: &Ty, message: &'static str, field: &'static str) -> Result<Value, ProtoError> {
    let expected = match ty {
        Ty::I32 | Ty::I64 | Ty::Bool => WireType::Varint,
        Ty::F64 => WireType::Fixed64,
        _ => WireType::Len,
    };
    if wt != expected {
        return Err(ProtoError::WrongWireType { wire: wt as u8, field });
    }
    if expected != WireType::Len {
        return scalar(r, ty, message, field);
    }
    let b = r.bytes()?;
    Ok(match ty {
        Ty::Str => json!(utf8(b, message, field)?),
        Ty::Bytes => json!(base64::engine::general_purpose::STANDARD.encode(b)),
        Ty::Msg(name) => {
            let m = find(name).ok_or(ProtoError::Malformed("message missing from the schema"))?;
            let mut o = Map::new();
            decode_message(b, m, &mut o)?;
            Value::Object(o)
        }
        Ty::Map(v) => map_entry(b, v, message, field)?,
        special => wire::special(b, special)?,
    })
}

/// A map entry is a message `{1: key, 2: value}`; returned as a one-key object.
fn map_entry(b: &[u8], vty: &Ty, message: &'static str, field: &'static str) -> Result<Value, ProtoError> {
    let mut r = Reader::new(b);
    let (mut key, mut val) = (String::new(), Value::Null);
    while let Some((n, wt)) = r.key()? {
        match n {
            1 => key = utf8(r.bytes()?, message, field)?,
            2 => val = value(&mut r, wt, vty, message, field)?,
            _ => r.skip(wt)?,
        }
    }
    if val.is_null() {
        val = match vty {
            Ty::Str | Ty::Bytes | Ty::Quantity => json!(""),
            _ => json!({}),
        };
    }
    Ok(json!({ key: val }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_versions_name_messages() {
        assert_eq!(message_name("v1", "ConfigMap").unwrap(), "api.core.v1.ConfigMap");
        assert_eq!(message_name("apps/v1", "Deployment").unwrap(), "api.apps.v1.Deployment");
        assert_eq!(message_name("coordination.k8s.io/v1", "Lease").unwrap(), "api.coordination.v1.Lease");
        assert_eq!(message_name("meta.k8s.io/v1", "DeleteOptions").unwrap(), "apimachinery.pkg.apis.meta.v1.DeleteOptions");
        assert_eq!(message_name("example.com/v1", "Widget"), None);
    }

    #[test]
    fn every_message_the_schema_names_is_in_it() {
        for m in schema::MESSAGES {
            for (_, _, ty, _) in m.fields {
                let inner = if let Ty::Map(v) = ty { v } else { ty };
                if let Ty::Msg(n) = inner {
                    assert!(find(n).is_some(), "{}: {n} missing", m.name);
                }
            }
        }
    }

    #[test]
    fn bad_bodies_are_errors_not_panics() {
        const CM: (&str, &str) = ("v1", "ConfigMap");
        assert!(matches!(decode_body(b"{}", CM), Err(ProtoError::NoMagic)));
        for junk in [&b"k8s\0\x0a"[..], b"k8s\0\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", b"k8s\0\x12\x05ab"] {
            assert!(decode_body(junk, CM).is_err(), "{junk:?}");
        }
        // Field number 0, in the envelope or in the object; Raw sent as a varint.
        assert!(matches!(decode_body(b"k8s\0\x00\x01", CM), Err(ProtoError::IllegalTag(0))));
        assert!(matches!(decode_body(b"k8s\0\x12\x02\x00\x01", CM), Err(ProtoError::IllegalTag(0))));
        assert!(matches!(decode_body(b"k8s\0\x10\x05", CM), Err(ProtoError::WrongWireType { wire: 0, field: "Raw" })));
    }

    #[test]
    fn an_empty_type_meta_is_the_endpoints_kind() {
        // No TypeMeta at all (a bare `k8s\0`), and an empty one: a ConfigMap with no fields.
        for body in [&b"k8s\0"[..], b"k8s\0\x0a\x00"] {
            assert_eq!(decode_body(body, ("v1", "ConfigMap")).unwrap(), json!({"apiVersion": "v1", "kind": "ConfigMap"}), "{body:?}");
        }
    }
}
