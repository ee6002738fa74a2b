//! The service health checks: for each LoadBalancer Service with
//! `externalTrafficPolicy: Local`, an HTTP server on its `healthCheckNodePort` that
//! answers 200 while the service has endpoints on this node and 503 while it has none.
//! A cloud load balancer probes it on every node and sends only to the nodes that answer
//! 200 — the ones that can serve without a second hop, so the client's source address
//! survives. (In the lab there is no cloud load balancer; `curl NODE:healthCheckNodePort`
//! shows what it would see.)
//!
//! [`HealthServers::sync`] reconciles: a server for each wanted port, the answer updated
//! in place, servers of ports no longer wanted stopped.
//!
//! Upstream: pkg/proxy/healthcheck/service_health.go

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use pkg::proxy::HealthCheck;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use tokio::task::JoinHandle;

/// One running server: the answer it gives, and its task.
struct Server {
    answer: Arc<Mutex<HealthCheck>>,
    task: JoinHandle<()>,
}

/// The health-check servers of this node, by port.
#[derive(Default)]
pub struct HealthServers {
    servers: BTreeMap<u16, Server>,
    /// Where servers listen (0.0.0.0 on a node; 127.0.0.1 in tests).
    address: Option<Ipv4Addr>,
    /// A hollow node serves none: hundreds of them in one process would all want the
    /// same ports.
    hollow: bool,
}

/// The answer: kube-proxy's JSON, 200 with local endpoints, 503 without.
async fn answer(State(hc): State<Arc<Mutex<HealthCheck>>>) -> impl IntoResponse {
    let hc = hc.lock().unwrap().clone();
    let (ns, name) = hc.service.split_once('/').unwrap_or(("", &hc.service));
    let body = serde_json::json!({
        "service": {"namespace": ns, "name": name},
        "localEndpoints": hc.local_endpoints,
        "serviceProxyHealthy": true,
    });
    let code = if hc.local_endpoints > 0 { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, [("content-type", "application/json"), ("x-content-type-options", "nosniff")], body.to_string())
}

impl HealthServers {
    /// Servers that listen on `address` only (tests use 127.0.0.1).
    pub fn on(address: Ipv4Addr) -> HealthServers {
        HealthServers { servers: BTreeMap::new(), address: Some(address), hollow: false }
    }

    /// Servers that are never started ([`crate::hollow`]).
    pub fn hollow() -> HealthServers {
        HealthServers { servers: BTreeMap::new(), address: None, hollow: true }
    }

    /// Converge to `wanted`: start servers for new ports, update the answers of the others,
    /// stop the ones no longer wanted. A port that cannot be bound is logged, returned, and
    /// retried at the next sync.
    pub async fn sync(&mut self, wanted: &BTreeMap<u16, HealthCheck>) -> Vec<(u16, std::io::Error)> {
        let mut failed = vec![];
        if self.hollow {
            return failed;
        }
        self.servers.retain(|port, s| {
            let keep = wanted.contains_key(port) && !s.task.is_finished();
            if !keep {
                s.task.abort();
            }
            keep
        });
        for (port, hc) in wanted {
            if let Some(s) = self.servers.get(port) {
                *s.answer.lock().unwrap() = hc.clone();
                continue;
            }
            let addr = SocketAddr::from((self.address.unwrap_or(Ipv4Addr::UNSPECIFIED), *port));
            let listener = match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(%addr, service = %hc.service, error = %e, "cannot serve the health check");
                    failed.push((*port, e));
                    continue;
                }
            };
            let answer = Arc::new(Mutex::new(hc.clone()));
            let app = axum::Router::new().fallback(self::answer).with_state(answer.clone());
            let task = tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            tracing::info!(%addr, service = %hc.service, "serving the health check");
            self.servers.insert(*port, Server { answer, task });
        }
        failed
    }

    /// The ports served now.
    pub fn ports(&self) -> Vec<u16> {
        self.servers.keys().copied().collect()
    }
}

impl Drop for HealthServers {
    fn drop(&mut self) {
        for s in self.servers.values() {
            s.task.abort();
        }
    }
}
