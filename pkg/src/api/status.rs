//! `Status`: the body of every Kubernetes API error (and of a few successes), with a
//! machine-readable `reason` (`NotFound`, `AlreadyExists`, `Invalid`, ...) and, for invalid
//! input, one [`StatusCause`] per offending field so a client sees every problem at once.
//!
//! Upstream: k8s.io/apimachinery/pkg/api/errors/errors.go, pkg/util/validation/field/errors.go

use super::{Status, StatusCause, StatusDetails};

/// Building and reading `Status` objects.
pub trait StatusExt {
    fn failure(code: u16, reason: &str, message: impl Into<String>) -> Status;
    fn success() -> Status;
    /// Name the object the status is about (`details.kind`, `details.name`).
    fn with_details(self, kind: &str, name: &str) -> Status;
    /// `422 Invalid`, listing every cause, as `kubectl` prints them.
    fn invalid(kind: &str, name: &str, causes: Vec<StatusCause>) -> Status;
    fn code(&self) -> u16;
    fn reason(&self) -> &str;
    fn message(&self) -> &str;
}

impl StatusExt for Status {
    fn failure(code: u16, reason: &str, message: impl Into<String>) -> Status {
        Status {
            code: Some(code.into()),
            message: Some(message.into()),
            reason: Some(reason.to_string()).filter(|r| !r.is_empty()),
            status: Some("Failure".into()),
            ..Default::default()
        }
    }
    fn success() -> Status {
        Status { code: Some(200), status: Some("Success".into()), ..Default::default() }
    }
    fn with_details(mut self, kind: &str, name: &str) -> Status {
        let d = self.details.get_or_insert_with(StatusDetails::default);
        d.kind = Some(kind.to_string());
        d.name = Some(name.to_string());
        self
    }
    fn invalid(kind: &str, name: &str, causes: Vec<StatusCause>) -> Status {
        let msgs: Vec<String> = causes.iter().map(|c| format!("{}: {}", c.field(), c.message.as_deref().unwrap_or(""))).collect();
        // One error as it is, several in brackets (apimachinery's ErrorList.ToAggregate).
        let listed = if msgs.len() == 1 { msgs[0].clone() } else { format!("[{}]", msgs.join(", ")) };
        let mut s = Self::failure(422, "Invalid", format!("{kind} \"{name}\" is invalid: {listed}")).with_details(kind, name);
        if let Some(d) = s.details.as_mut() {
            d.causes = Some(causes);
        }
        s
    }
    fn code(&self) -> u16 {
        self.code.and_then(|c| u16::try_from(c).ok()).unwrap_or(500)
    }
    fn reason(&self) -> &str {
        self.reason.as_deref().unwrap_or("")
    }
    fn message(&self) -> &str {
        self.message.as_deref().unwrap_or("")
    }
}

/// One reason an object is invalid: which field, and what is wrong with it.
pub trait CauseExt {
    fn cause(reason: &str, message: String, field: impl Into<String>) -> StatusCause;
    fn invalid(field: impl Into<String>, value: impl std::fmt::Display, why: &str) -> StatusCause;
    fn required(field: impl Into<String>) -> StatusCause;
    fn duplicate(field: impl Into<String>, value: impl std::fmt::Display) -> StatusCause;
    fn not_supported(field: impl Into<String>, value: &str, supported: &[&str]) -> StatusCause;
    /// The JSON path of the field, e.g. `spec.ports[0].nodePort`.
    fn field(&self) -> &str;
}

impl CauseExt for StatusCause {
    fn cause(reason: &str, message: String, field: impl Into<String>) -> StatusCause {
        StatusCause { reason: Some(reason.into()), message: Some(message), field: Some(field.into()) }
    }
    fn invalid(field: impl Into<String>, value: impl std::fmt::Display, why: &str) -> StatusCause {
        Self::cause("FieldValueInvalid", format!("Invalid value: {value}: {why}"), field)
    }
    fn required(field: impl Into<String>) -> StatusCause {
        Self::cause("FieldValueRequired", "Required value".into(), field)
    }
    fn duplicate(field: impl Into<String>, value: impl std::fmt::Display) -> StatusCause {
        Self::cause("FieldValueDuplicate", format!("Duplicate value: {value}"), field)
    }
    fn not_supported(field: impl Into<String>, value: &str, supported: &[&str]) -> StatusCause {
        let list: Vec<String> = supported.iter().map(|s| format!("\"{s}\"")).collect();
        Self::cause("FieldValueNotSupported", format!("Unsupported value: \"{value}\": supported values: {}", list.join(", ")), field)
    }
    fn field(&self) -> &str {
        self.field.as_deref().unwrap_or("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_lists_every_cause_in_its_message() {
        let s = Status::invalid(
            "Pod",
            "web",
            vec![StatusCause::required("spec.containers"), StatusCause::invalid("metadata.name", "\"A\"", "bad")],
        );
        assert_eq!(s.code(), 422);
        assert_eq!(s.message(), "Pod \"web\" is invalid: [spec.containers: Required value, metadata.name: Invalid value: \"A\": bad]");
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!((v["kind"].as_str(), v["details"]["causes"][0]["field"].as_str()), (Some("Status"), Some("spec.containers")));
    }
}
