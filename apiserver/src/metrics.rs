//! `/metrics`: how long requests take, in Prometheus' text format, under kube-apiserver's
//! own metric names, so a learner can read the same numbers Kubernetes' scalability SLOs
//! are stated in (clusterloader2 reads `apiserver_request_duration_seconds` and takes its
//! 99th percentile per verb, resource, subresource and scope).
//!
//! - `apiserver_request_duration_seconds{verb,resource,subresource,scope}`: a histogram of
//!   every request but the long-running ones (WATCH, logs, exec, attach, port-forward),
//!   measured from the request's arrival to its response's headers;
//! - `apiserver_request_total{verb,resource,subresource,scope,code}`: every request.
//!
//! Verbs are Kubernetes' upper-case ones: GET, LIST, WATCH, POST, PUT, PATCH, APPLY
//! (server-side apply), DELETE, DELETECOLLECTION. Scope is `resource` (one named object),
//! `namespace` (a collection in one namespace) or `cluster` (across namespaces).
//!
//! Upstream: k8s.io/apiserver/pkg/endpoints/metrics/metrics.go

use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use std::sync::LazyLock;

/// kube-apiserver's buckets, with 1 ms, 2.5 ms and 10 ms added below its first 25 ms, where
/// most of ownkube's requests fall and percentiles would otherwise say only "< 25 ms".
const BUCKETS: [f64; 26] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 20.0, 30.0,
    45.0, 60.0,
];

struct Metrics {
    registry: Registry,
    duration: HistogramVec,
    total: IntCounterVec,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let labels = ["verb", "resource", "subresource", "scope"];
    let duration = HistogramVec::new(
        HistogramOpts::new(
            "apiserver_request_duration_seconds",
            "Response latency distribution in seconds for each verb, resource, subresource and scope.",
        )
        .buckets(BUCKETS.to_vec()),
        &labels,
    )
    .expect("valid histogram");
    let total = IntCounterVec::new(
        Opts::new(
            "apiserver_request_total",
            "Counter of apiserver requests broken out for each verb, resource, subresource, scope and HTTP response code.",
        ),
        &["verb", "resource", "subresource", "scope", "code"],
    )
    .expect("valid counter");
    let registry = Registry::new();
    registry.register(Box::new(duration.clone())).expect("registered once");
    registry.register(Box::new(total.clone())).expect("registered once");
    Metrics { registry, duration, total }
});

/// What one request was, in the metrics' labels.
#[derive(Debug, PartialEq, Eq)]
pub struct RequestInfo {
    pub verb: &'static str,
    pub resource: String,
    pub subresource: String,
    pub scope: &'static str,
}

impl RequestInfo {
    /// Kubernetes' verb and scope for a method on a target; `watch` from the query.
    pub fn of(
        method: &axum::http::Method,
        ns: Option<&str>,
        resource: &str,
        name: Option<&str>,
        sub: Option<&str>,
        watch: bool,
        apply: bool,
    ) -> RequestInfo {
        use axum::http::Method;
        let verb = match (method, name.is_some()) {
            (&Method::GET, _) if watch => "WATCH",
            (&Method::GET, true) => "GET",
            (&Method::GET, false) => "LIST",
            (&Method::POST, _) => "POST",
            (&Method::PUT, _) => "PUT",
            (&Method::PATCH, _) if apply => "APPLY",
            (&Method::PATCH, _) => "PATCH",
            (&Method::DELETE, true) => "DELETE",
            (&Method::DELETE, false) => "DELETECOLLECTION",
            _ => "OTHER",
        };
        let scope = match (name.is_some() && verb != "POST", ns.is_some()) {
            (true, _) => "resource",
            (false, true) => "namespace",
            (false, false) => "cluster",
        };
        RequestInfo { verb, resource: resource.to_string(), subresource: sub.unwrap_or_default().to_string(), scope }
    }

    /// Whether the request streams for as long as the client likes (not timed).
    pub fn long_running(&self) -> bool {
        self.verb == "WATCH" || matches!(self.subresource.as_str(), "log" | "exec" | "attach" | "portforward" | "proxy")
    }

    /// Count the request, and time it unless it is long-running.
    pub fn observe(&self, code: u16, seconds: f64) {
        let m = &*METRICS;
        let labels = [self.verb, self.resource.as_str(), self.subresource.as_str(), self.scope];
        if !self.long_running() {
            m.duration.with_label_values(&labels).observe(seconds);
        }
        let code = code.to_string();
        m.total.with_label_values(&[labels[0], labels[1], labels[2], labels[3], code.as_str()]).inc();
    }
}

/// The text `/metrics` answers with.
pub fn render() -> String {
    let mut out = vec![];
    prometheus::TextEncoder::new().encode(&METRICS.registry.gather(), &mut out).expect("text encoding cannot fail");
    String::from_utf8(out).expect("the text format is UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Method;

    fn info(m: Method, ns: Option<&str>, name: Option<&str>, sub: Option<&str>, watch: bool) -> (&'static str, &'static str) {
        let i = RequestInfo::of(&m, ns, "pods", name, sub, watch, false);
        (i.verb, i.scope)
    }

    #[test]
    fn verbs_and_scopes_are_kubernetes_own() {
        assert_eq!(info(Method::GET, Some("a"), None, None, false), ("LIST", "namespace"));
        assert_eq!(info(Method::GET, None, None, None, false), ("LIST", "cluster"));
        assert_eq!(info(Method::GET, None, None, None, true), ("WATCH", "cluster"));
        assert_eq!(info(Method::GET, Some("a"), Some("p"), None, false), ("GET", "resource"));
        assert_eq!(info(Method::POST, Some("a"), None, None, false), ("POST", "namespace"));
        // A binding is POSTed to a named pod's subresource: still a create, in a namespace.
        assert_eq!(info(Method::POST, Some("a"), Some("p"), Some("binding"), false), ("POST", "namespace"));
        assert_eq!(info(Method::PATCH, Some("a"), Some("p"), Some("status"), false), ("PATCH", "resource"));
        assert_eq!(info(Method::DELETE, Some("a"), None, None, false), ("DELETECOLLECTION", "namespace"));
        assert_eq!(RequestInfo::of(&Method::PATCH, None, "leases", Some("n"), None, false, true).verb, "APPLY");
    }

    #[test]
    fn long_running_requests_are_counted_but_not_timed() {
        let w = RequestInfo::of(&Method::GET, None, "metricstest", None, None, true, false);
        w.observe(200, 100.0);
        let g = RequestInfo::of(&Method::GET, Some("a"), "metricstest", Some("x"), None, false, false);
        g.observe(200, 0.003);
        let text = render();
        assert!(
            text.contains(r#"apiserver_request_total{code="200",resource="metricstest",scope="cluster",subresource="",verb="WATCH"} 1"#),
            "{text}"
        );
        assert!(!text.contains(r#"apiserver_request_duration_seconds_count{resource="metricstest",scope="cluster""#), "{text}");
        assert!(text.contains(r#"apiserver_request_duration_seconds_bucket{resource="metricstest",scope="resource",subresource="",verb="GET",le="0.005"} 1"#), "{text}");
    }
}
