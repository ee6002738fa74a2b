//! The remote-command protocol of `kubectl exec`, `attach` and `port-forward`, the parts
//! both ends agree on: which channel carries what, how the end of a command is reported
//! (a `Status` on the error channel), and how a terminal's size is sent.
//!
//! Over a WebSocket (`v5.channel.k8s.io`), every message starts with its channel byte:
//! 0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize; `[255, c]` closes channel `c` (the
//! client's stdin ended). Over SPDY each channel is its own stream, named by its
//! `streamtype` header. ownkube's apiserver speaks both to clients and the WebSocket
//! form to the agents.
//!
//! Upstream: k8s.io/apimachinery/pkg/util/remotecommand/constants.go, k8s.io/client-go/tools/remotecommand/v4.go

use crate::api::{Status, StatusCause, StatusDetails, StatusExt};

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const ERROR: u8 = 3;
pub const RESIZE: u8 = 4;
/// `[CLOSE, channel]`: that channel is done (v5 only).
pub const CLOSE: u8 = 255;

/// The subprotocols, newest first.
pub const V5: &str = "v5.channel.k8s.io";
pub const V4: &str = "v4.channel.k8s.io";
/// Port-forward's SPDY protocol, and the same tunneled in a WebSocket (kubectl 1.31+).
pub const PORT_FORWARD: &str = "portforward.k8s.io";
pub const PORT_FORWARD_TUNNEL: &str = "SPDY/3.1+portforward.k8s.io";

/// The error channel's last word: success, or the exit code the way clients read it.
pub fn exit_status(code: u32) -> Status {
    if code == 0 {
        return Status { status: Some("Success".into()), ..Default::default() };
    }
    let mut s = Status::failure(0, "NonZeroExitCode", format!("command terminated with non-zero exit code: exit status {code}"));
    s.code = None;
    s.details = Some(StatusDetails {
        causes: Some(vec![StatusCause { reason: Some("ExitCode".into()), message: Some(code.to_string()), field: None }]),
        ..Default::default()
    });
    s
}

/// Terminal sizes from a resize channel: one or more `{"Width":W,"Height":H}` objects
/// (kubectl sends Go's field names; any case is accepted, as Go's decoder does).
pub fn parse_resize(b: &[u8]) -> Vec<(u16, u16)> {
    serde_json::Deserializer::from_slice(b)
        .into_iter::<serde_json::Value>()
        .map_while(Result::ok)
        .filter_map(|v| {
            let get = |k: &str| v.as_object()?.iter().find(|(n, _)| n.eq_ignore_ascii_case(k)).and_then(|(_, x)| x.as_u64());
            Some((u16::try_from(get("width")?).ok()?, u16::try_from(get("height")?).ok()?))
        })
        .collect()
}

/// A boolean query parameter as Kubernetes reads it: absent, `0` or `false` is false.
pub fn query_bool(v: Option<&str>) -> bool {
    v.is_some_and(|v| !v.eq_ignore_ascii_case("false") && v != "0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_reported_as_clients_read_them() {
        let ok = serde_json::to_value(exit_status(0)).unwrap();
        assert_eq!(ok["status"], "Success");
        let bad = serde_json::to_value(exit_status(3)).unwrap();
        assert_eq!((bad["reason"].as_str(), bad["details"]["causes"][0]["reason"].as_str()), (Some("NonZeroExitCode"), Some("ExitCode")));
        assert_eq!(bad["details"]["causes"][0]["message"], "3");
        assert!(bad.get("code").is_none());
        assert_eq!(parse_resize(b"{\"Width\":120,\"Height\":40}\n{\"width\":80,\"height\":24}"), [(120, 40), (80, 24)]);
        assert!(
            query_bool(Some("true")) && query_bool(Some("True")) && query_bool(Some("1")) && !query_bool(Some("0")) && !query_bool(None)
        );
    }
}
