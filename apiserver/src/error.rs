//! API errors: every failure leaves the apiserver as a Kubernetes `Status` object with the
//! HTTP code, a machine-readable `reason` and, for invalid objects, the offending fields.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use pkg::api::{Status, StatusCause, StatusExt};

#[derive(Debug)]
pub struct ApiError(pub Box<Status>);

impl ApiError {
    pub fn new(code: u16, reason: &str, message: impl Into<String>) -> Self {
        ApiError(Box::new(Status::failure(code, reason, message)))
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }
    pub fn not_found(kind: &str, name: &str) -> Self {
        let resource = plural(kind);
        let mut e = Self::new(404, "NotFound", format!("{resource} \"{name}\" not found"));
        *e.0 = e.0.as_ref().clone().with_details(&resource, name);
        e
    }
    pub fn already_exists(kind: &str, name: &str) -> Self {
        let resource = plural(kind);
        let mut e = Self::new(409, "AlreadyExists", format!("{resource} \"{name}\" already exists"));
        *e.0 = e.0.as_ref().clone().with_details(&resource, name);
        e
    }
    pub fn conflict(kind: &str, name: &str) -> Self {
        let resource = plural(kind);
        let mut e = Self::new(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on {resource} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"),
        );
        *e.0 = e.0.as_ref().clone().with_details(&resource, name);
        e
    }
    /// `409` with kube-apiserver's "Operation cannot be fulfilled on {what} "{name}": {why}".
    pub fn conflict_because(what: &str, name: &str, why: &str) -> Self {
        let mut e = Self::new(409, "Conflict", format!("Operation cannot be fulfilled on {what} \"{name}\": {why}"));
        *e.0 = e.0.as_ref().clone().with_details(what, name);
        e
    }
    /// `409` for a write whose precondition failed at the store (a PUT whose `uid` is not
    /// the stored object's), worded as kube-apiserver's etcd3 store words it, key included.
    pub fn storage_precondition(kind: &str, name: &str, key: &str, why: &str) -> Self {
        let why = format!(
            "StorageError: invalid object, Code: 4, Key: {key}, ResourceVersion: 0, AdditionalErrorMsg: Precondition failed: {why}"
        );
        Self::conflict_because(&plural(kind), name, &why)
    }
    pub fn invalid(kind: &str, name: &str, causes: Vec<StatusCause>) -> Self {
        ApiError(Box::new(Status::invalid(kind, name, causes)))
    }
    /// `422` for a bad request option (`force` on a merge patch, no `fieldManager` on apply).
    pub fn invalid_options(kind: &str, field: &str, why: &str) -> Self {
        use pkg::api::CauseExt;
        ApiError::invalid(kind, "", vec![StatusCause::invalid(field, "", why)])
    }
    /// `422` for options kube-apiserver validates as `<Kind>Options.meta.k8s.io`.
    pub fn invalid_meta_options(kind: &str, causes: Vec<StatusCause>) -> Self {
        let mut e = ApiError::invalid(&format!("{kind}.meta.k8s.io"), "", causes);
        if let Some(d) = e.0.details.as_mut() {
            (d.group, d.kind) = (Some("meta.k8s.io".into()), Some(kind.into()));
        }
        e
    }
    /// `504` for a `resourceVersion` the server has not reached, with the cause client-go's
    /// reflector looks for (it then lists without one).
    pub fn too_large_resource_version(asked: i64, current: i64) -> Self {
        let mut e = Self::new(504, "Timeout", format!("Too large resource version: {asked}, current: {current}"));
        e.0.details = Some(pkg::api::StatusDetails {
            causes: Some(vec![StatusCause {
                reason: Some("ResourceVersionTooLarge".into()),
                message: Some("Too large resource version".into()),
                field: None,
            }]),
            retry_after_seconds: Some(1),
            ..Default::default()
        });
        e
    }
    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "ServiceUnavailable", message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }
    pub fn code(&self) -> u16 {
        self.0.code()
    }
    pub fn message(&self) -> &str {
        self.0.message()
    }
}

/// `Pod` -> `pods`, the word Kubernetes uses in its messages.
fn plural(kind: &str) -> String {
    match kind {
        "Endpoints" => "endpoints".into(),
        k => format!("{}s", k.to_lowercase()),
    }
}

impl From<etcd_client::Error> for ApiError {
    fn from(e: etcd_client::Error) -> Self {
        use etcd_client::Error as E;
        match &e {
            E::GRpcStatus(s) if s.message().contains("compacted") => ApiError::gone(format!("too old resource version: {}", s.message())),
            // etcd refuses requests over its limit (1.5 MiB by default): the object is too big.
            E::GRpcStatus(s) if s.message().contains("request is too large") || s.code() == tonic::Code::ResourceExhausted => {
                ApiError::new(413, "RequestEntityTooLarge", format!("Request entity too large: etcd refused it ({})", s.message()))
            }
            E::GRpcStatus(s) if s.message().contains("future revision") => {
                ApiError::new(504, "Timeout", format!("Too large resource version: {}", s.message()))
            }
            E::GRpcStatus(s)
                if matches!(
                    s.code(),
                    tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled | tonic::Code::Unknown
                ) =>
            {
                ApiError::unavailable(format!("etcd is unavailable: {}", s.message()))
            }
            E::TransportError(_) | E::IoError(_) | E::WatchError(_) => ApiError::unavailable(format!("etcd is unavailable: {e}")),
            _ => ApiError::internal(format!("etcd: {e}")),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.0.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (code, axum::Json(*self.0)).into_response()
    }
}
