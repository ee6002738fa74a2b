//! Content negotiation: which body formats a request may carry (`Content-Type`) and which
//! representation the client wants back (`Accept`): a plain object, YAML, a server-side
//! `Table` for kubectl, or just the metadata (`PartialObjectMetadata`) for clients such as
//! the garbage collector and `kubectl get -o name`.
//!
//! Upstream: k8s.io/apiserver/pkg/endpoints/handlers/negotiation/negotiate.go

use crate::error::ApiError;
use crate::printers::{self, Printable};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use pkg::api::Object;
use serde_json::{json, Value};

/// What a client asked to get back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Json,
    Yaml,
    /// `application/json;as=Table;g=meta.k8s.io;v=v1`
    Table,
    /// `application/json;as=PartialObjectMetadata[List];g=meta.k8s.io;v=v1`
    PartialMetadata,
}

/// Pick the first representation of the `Accept` header this server can produce, or 406.
pub fn negotiate(h: &HeaderMap) -> Result<Output, ApiError> {
    let Some(accept) = h.get(header::ACCEPT).and_then(|v| v.to_str().ok()).filter(|a| !a.trim().is_empty()) else {
        return Ok(Output::Json);
    };
    for media in accept.split(',') {
        let mut parts = media.split(';').map(str::trim);
        let mime = parts.next().unwrap_or("");
        let params: Vec<(&str, &str)> = parts.filter_map(|p| p.split_once('=')).collect();
        let as_ = params.iter().find(|(k, _)| *k == "as").map(|(_, v)| *v);
        let json_like = matches!(mime, "application/json" | "*/*" | "application/*");
        match (json_like, mime, as_) {
            (true, _, Some("Table")) => return Ok(Output::Table),
            (true, _, Some("PartialObjectMetadata" | "PartialObjectMetadataList")) => return Ok(Output::PartialMetadata),
            (_, _, Some(_)) => continue, // another representation we do not serve (APIGroupDiscoveryList, ...)
            (true, _, None) => return Ok(Output::Json),
            (_, "application/yaml", None) => return Ok(Output::Yaml),
            _ => continue,
        }
    }
    Err(ApiError::new(
        406,
        "NotAcceptable",
        format!("only the following media types are accepted: application/json, application/yaml (asked for {accept})"),
    ))
}

/// The body formats a write may use: JSON, YAML, protobuf, and for PATCH the four patch types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyType {
    Json,
    Yaml,
    /// `application/vnd.kubernetes.protobuf`: see [`crate::protobuf`].
    Protobuf,
    MergePatch,
    StrategicMergePatch,
    JsonPatch,
    ApplyPatch,
}

/// Read `Content-Type`; anything else is 415, as kube-apiserver answers. A missing header
/// is taken as JSON (curl without `-H`).
pub fn body_type(h: &HeaderMap) -> Result<BodyType, ApiError> {
    let ct = h.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("application/json");
    let mime = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    Ok(match mime.as_str() {
        "application/json" | "" => BodyType::Json,
        "application/yaml" | "application/x-yaml" | "text/yaml" => BodyType::Yaml,
        "application/vnd.kubernetes.protobuf" => BodyType::Protobuf,
        "application/merge-patch+json" => BodyType::MergePatch,
        "application/strategic-merge-patch+json" => BodyType::StrategicMergePatch,
        "application/json-patch+json" => BodyType::JsonPatch,
        "application/apply-patch+yaml" => BodyType::ApplyPatch,
        _ => {
            return Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                format!("the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf (got {ct:?})"),
            ))
        }
    })
}

/// Parse a JSON or YAML body into documents (YAML may hold several, separated by `---`).
/// `kind` (apiVersion, kind) is what the endpoint takes: a protobuf body whose envelope
/// leaves its type out is one of those.
pub fn parse_documents(h: &HeaderMap, body: &[u8], kind: (&str, &str)) -> Result<Vec<Value>, ApiError> {
    let ty = body_type(h)?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("the request body is empty"));
    }
    match ty {
        BodyType::Json => {
            if too_deep(body, b"\"") {
                return Err(nested_too_deeply());
            }
            let v = serde_json::from_slice(body).map_err(|e| decode_error("JSON", e))?;
            Ok(vec![v])
        }
        BodyType::Yaml => parse_yaml(body),
        BodyType::Protobuf => {
            let v = crate::protobuf::decode_body(body, kind).map_err(|e| {
                let (version, kind) = kind;
                ApiError::bad_request(format!("{kind} in version \"{version}\" cannot be handled as a {kind}: {e}"))
            })?;
            Ok(vec![v])
        }
        _ => Err(ApiError::new(415, "UnsupportedMediaType", "a patch content type is only accepted by PATCH")),
    }
}

/// How deeply a body may nest. serde_json and serde_yaml stop at 128 levels, but the
/// YAML parser underneath takes time quadratic in the depth of `[`/`{` before that
/// (100,000 of them: 16 s of a request thread), so such bodies are refused unread.
pub const MAX_DEPTH: usize = 128;

fn nested_too_deeply() -> ApiError {
    ApiError::bad_request(format!("the request body is nested too deeply (more than {MAX_DEPTH} levels)"))
}

/// Whether `[`/`{` nest more than [`MAX_DEPTH`] deep outside quoted strings (`quotes`:
/// the characters that open one; a YAML `'` only after a separator, since `it's` is plain).
fn too_deep(body: &[u8], quotes: &[u8]) -> bool {
    let (mut depth, mut quote, mut escaped, mut prev) = (0usize, None::<u8>, false, b' ');
    for &b in body {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if b == b'\\' && q == b'"' {
                escaped = true;
            } else if b == q {
                quote = None;
            }
        } else if quotes.contains(&b) && (b == b'"' || b" \t\n:[{,".contains(&prev)) {
            quote = Some(b);
        } else if b == b'[' || b == b'{' {
            depth += 1;
            if depth > MAX_DEPTH {
                return true;
            }
        } else if b == b']' || b == b'}' {
            depth = depth.saturating_sub(1);
        }
        prev = b;
    }
    false
}

/// A decoding error, told plainly when it is the decoders' own depth limit.
fn decode_error(what: &str, e: impl std::fmt::Display) -> ApiError {
    let e = e.to_string();
    if e.contains("recursion limit") {
        return nested_too_deeply();
    }
    ApiError::bad_request(format!("unable to decode {what} body: {e}"))
}

pub fn parse_yaml(body: &[u8]) -> Result<Vec<Value>, ApiError> {
    if too_deep(body, b"\"'") {
        return Err(nested_too_deeply());
    }
    let mut docs = vec![];
    for doc in serde_yaml::Deserializer::from_slice(body) {
        let v: Value = serde::Deserialize::deserialize(doc).map_err(|e| decode_error("YAML", e))?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    if docs.is_empty() {
        return Err(ApiError::bad_request("the request body holds no object"));
    }
    Ok(docs)
}

/// `?fieldValidation=`: what to do with fields the kind does not have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldValidation {
    /// Drop them silently.
    Ignore,
    /// Drop them and say so in a `Warning:` header (the default since Kubernetes 1.27).
    Warn,
    /// Refuse the request (`kubectl --validate=strict`, kubectl's default, asks for this).
    Strict,
}

impl FieldValidation {
    pub fn from_params(p: &std::collections::HashMap<String, String>) -> Result<FieldValidation, ApiError> {
        match p.get("fieldValidation").map(String::as_str) {
            None | Some("") | Some("Warn") => Ok(FieldValidation::Warn),
            Some("Ignore") => Ok(FieldValidation::Ignore),
            Some("Strict") => Ok(FieldValidation::Strict),
            Some(v) => Err(ApiError::bad_request(format!(
                "fieldValidation: Unsupported value: {v:?}: supported values: \"Ignore\", \"Strict\", \"Warn\""
            ))),
        }
    }
}

/// A decoded object and the warnings to send with the answer.
pub struct Decoded<T> {
    pub obj: T,
    pub warnings: Vec<String>,
}

/// Decode one document into `T`, checking `kind` and `apiVersion` if it gives them, and
/// reporting the fields `T` does not have as `fv` asks.
pub fn decode_value<T: Object>(value: Value, fv: FieldValidation) -> Result<Decoded<T>, ApiError> {
    if !value.is_object() {
        return Err(ApiError::bad_request("the request body must be an object"));
    }
    check_type::<T>(value.get("kind").and_then(Value::as_str), value.get("apiVersion").and_then(Value::as_str))?;
    let decoded = pkg::api::fields::decode_reporting_unknown::<T, _>(value).map_err(|e| cannot::<T>(e.to_string()))?;
    reporting::<T>(decoded, fv)
}

/// Decode a JSON object straight into `T`, with no `Value` in between: a body's maps and
/// strings are made once (a ConfigMap of 200,000 keys: ~40 MB instead of ~70 MB).
fn decode_json<T: Object>(body: &[u8], fv: FieldValidation) -> Result<Decoded<T>, ApiError> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct TypeMeta {
        kind: Option<String>,
        api_version: Option<String>,
    }
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::bad_request("the request body must be an object"));
    }
    if too_deep(body, b"\"") {
        return Err(nested_too_deeply());
    }
    // (the fields it does not name are skipped, not kept)
    let tm: TypeMeta = serde_json::from_slice(body).map_err(|e| decode_error("JSON", e))?;
    check_type::<T>(tm.kind.as_deref(), tm.api_version.as_deref())?;
    let mut de = serde_json::Deserializer::from_slice(body);
    let decoded = pkg::api::fields::decode_reporting_unknown::<T, _>(&mut de).map_err(|e| cannot::<T>(e.to_string()))?;
    de.end().map_err(|e| decode_error("JSON", e))?;
    reporting::<T>(decoded, fv)
}

/// Every object of a JSON, YAML or protobuf body, decoded into `T`.
pub fn decode_documents<T: Object>(h: &HeaderMap, body: &[u8], fv: FieldValidation) -> Result<Vec<Decoded<T>>, ApiError> {
    if body_type(h)? == BodyType::Json && !body.iter().all(u8::is_ascii_whitespace) {
        return Ok(vec![decode_json(body, fv)?]);
    }
    parse_documents(h, body, (T::API_VERSION, T::KIND))?.into_iter().map(|d| decode_value(d, fv)).collect()
}

fn check_type<T: Object>(kind: Option<&str>, api_version: Option<&str>) -> Result<(), ApiError> {
    if let Some(kind) = kind.filter(|k| *k != T::KIND) {
        return Err(ApiError::bad_request(format!("the body is a {kind}, but this endpoint takes {}", T::KIND)));
    }
    if let Some(v) = api_version.filter(|v| *v != T::API_VERSION) {
        return Err(ApiError::bad_request(format!("apiVersion {v:?} is not served here (want {:?})", T::API_VERSION)));
    }
    Ok(())
}

fn cannot<T: Object>(why: String) -> ApiError {
    ApiError::bad_request(format!("{} in version \"{}\" cannot be handled as a {}: {why}", T::KIND, T::VERSION, T::KIND))
}

/// The unknown fields of a decoded object as `fv` asks: warnings, an error, or nothing.
fn reporting<T: Object>((obj, unknown): (T, Vec<String>), fv: FieldValidation) -> Result<Decoded<T>, ApiError> {
    let warnings: Vec<String> = unknown.iter().map(|f| format!("unknown field \"{f}\"")).collect();
    match fv {
        FieldValidation::Strict if !warnings.is_empty() => Err(cannot::<T>(format!("strict decoding error: {}", warnings.join(", ")))),
        FieldValidation::Warn => Ok(Decoded { obj, warnings }),
        _ => Ok(Decoded { obj, warnings: vec![] }),
    }
}

/// Decode a JSON, YAML or protobuf body holding exactly one object.
pub fn decode_body<T: Object>(h: &HeaderMap, body: &[u8], fv: FieldValidation) -> Result<Decoded<T>, ApiError> {
    let mut docs = decode_documents::<T>(h, body, fv)?;
    if docs.len() != 1 {
        return Err(ApiError::bad_request(format!("expected one object, the body holds {}", docs.len())));
    }
    Ok(docs.remove(0))
}

/// `Warning: 299 - "..."` headers, as kube-apiserver sends them (kubectl prints each).
pub fn with_warnings(mut r: Response, warnings: &[String]) -> Response {
    for w in warnings {
        let text = format!("299 - \"{}\"", w.replace('\\', "\\\\").replace('"', "\\\""));
        if let Ok(v) = axum::http::HeaderValue::from_str(&text) {
            r.headers_mut().append(header::WARNING, v);
        }
    }
    r
}

/// Write `value` as JSON or YAML.
pub fn respond(code: StatusCode, out: Output, value: Value) -> Response {
    if out == Output::Yaml {
        let text = serde_yaml::to_string(&value).unwrap_or_default();
        return (code, [(header::CONTENT_TYPE, "application/yaml")], text).into_response();
    }
    (code, axum::Json(value)).into_response()
}

/// `{kind: PartialObjectMetadata, metadata}` of an object.
pub fn partial_metadata<T: Object>(o: &T) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o.meta()})
}

/// One object in the representation asked for.
pub fn represent<T: Printable>(out: Output, obj: &T) -> Value {
    match out {
        Output::Table => printers::table(&[obj], obj.meta().resource_version.clone(), true, Default::default()),
        Output::PartialMetadata => partial_metadata(obj),
        Output::Json | Output::Yaml => serde_json::to_value(obj).unwrap_or(Value::Null),
    }
}

pub fn respond_obj<T: Printable>(code: StatusCode, out: Output, obj: &T) -> Response {
    respond(code, out, represent(out, obj))
}
