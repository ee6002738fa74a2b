//! # apiserver
//!
//! ownkube's control plane in one process: what kube-apiserver, kube-scheduler and
//! kube-controller-manager do in a real cluster.
//!
//! - [`routes`]: the URL layout (`/api/v1/...`, `/apis/{group}/{version}/...`) and
//!   [`discovery`], the documents that tell clients what is served;
//! - [`apply`]: server-side apply (`kubectl apply --server-side`) over [`pkg::managedfields`];
//! - [`handler`]: the verbs every resource shares (list with [`list`] pagination, create,
//!   get, update, patch, delete, deletecollection, `dryRun`), and [`watch`] streams;
//! - [`openapi`]: the OpenAPI v3 documents (`kubectl explain`), generated from the types;
//! - [`codec`]: content negotiation: JSON, YAML, patch types, Tables, PartialObjectMetadata;
//!   [`protobuf`]: request bodies in Kubernetes' protobuf (kubectl 1.32+ sends them);
//! - [`objects`] and [`registry`]: generic create/get/list/update/delete, per-kind rules and
//!   the ClusterIP, NodePort and pod-CIDR allocators, each write one etcd transaction;
//! - [`ui`]: `/ui/`, a live topology page (static files in the binary) that lists and watches
//!   like any client;
//! - [`streams`]: exec, attach, port-forward (SPDY and WebSocket) and logs, relayed to the agents;
//! - [`metrics`]: `/metrics`, request latency histograms under kube-apiserver's names;
//! - [`cacher`]: the watch cache: every kind's objects in memory, fed by one etcd watch,
//!   serving LISTs and WATCHes;
//! - [`storage`]: etcd (every object, every allocation; nothing lives only in memory),
//!   through [`members`]: one client per etcd member, moving to the next when one is down;
//! - [`controllers`]: node lifecycle, namespace deletion and default service accounts,
//!   in-process; the scheduler and the workload, endpoints and garbage-collection
//!   controllers are the [`::controllers`] crate, which talks to this server over HTTP
//!   only (run here by default, `--controllers=false` to run `controller-manager` apart).

pub mod apply;
pub mod binding;
pub mod cacher;
pub mod codec;
pub mod controllers;
pub mod discovery;
pub mod error;
pub mod handler;
pub mod list;
pub mod members;
pub mod metrics;
pub mod noderestriction;
pub mod objects;
pub mod openapi;
pub mod printers;
pub mod protobuf;
pub mod registry;
pub mod routes;
pub mod scale;
pub mod storage;
pub mod streams;
pub mod ui;
pub mod watch;

use pkg::alloc::{Cidr, PortRange};
use pkg::api::Namespace;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Flags of `apiserver`, named as kube-apiserver's.
#[derive(clap::Parser, Clone, Debug)]
#[command(version, about = "ownkube apiserver: the Kubernetes API on etcd")]
pub struct Config {
    /// etcd endpoints, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
    pub etcd_servers: Vec<String>,
    /// Address to serve the API on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Range ClusterIPs are allocated from.
    #[arg(long, default_value = "10.96.0.0/16")]
    pub service_cluster_ip_range: Cidr,
    /// Range nodePorts are allocated from.
    #[arg(long, default_value = "30000-32767")]
    pub service_node_port_range: PortRange,
    /// Pod network of the cluster; each node gets one subnet of it.
    #[arg(long, default_value = "10.244.0.0/16")]
    pub cluster_cidr: Cidr,
    /// Prefix length of each node's pod CIDR.
    #[arg(long, default_value_t = 24)]
    pub node_cidr_mask_size: u8,
    /// How long a node may go without a heartbeat before it becomes NotReady.
    #[arg(long, default_value = "40s", value_parser = parse_duration)]
    pub node_monitor_grace_period: Duration,
    /// Objects whose encoding is larger than this are refused (413) before their
    /// managedFields are worked out (which costs in proportion to their fields): etcd's
    /// `--max-request-bytes`, 1.5 MiB by default, would refuse them anyway.
    #[arg(long, default_value_t = 1536 * 1024)]
    pub max_object_bytes: usize,
    /// How long one etcd request may take before the API answers 503.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub etcd_timeout: Duration,
    /// Run the scheduler and the controllers (the `controllers` crate) in this process,
    /// talking to this server over HTTP; `false` to run `controller-manager` apart.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub controllers: bool,
    /// A file holding the token this server presents to the agents (their `--auth-token-file`).
    #[arg(long)]
    pub kubelet_token_file: Option<std::path::PathBuf>,
    /// Static tokens (`token,user,uid,"groups"` per line): agents present theirs as
    /// `system:node:<name>`, and only a node may register itself or change its status.
    #[arg(long)]
    pub token_auth_file: Option<std::path::PathBuf>,
    /// Serve LISTs and WATCHes from memory ([`cacher`]); `false` sends every one to etcd.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub watch_cache: bool,
    /// Events a watch holds for a client that reads slower than they come; a client that
    /// falls further behind has its watch ended (it watches again from where it was).
    #[arg(long, default_value_t = 1000)]
    pub watch_buffer: usize,
    /// The tokens read from `--token-auth-file` at start.
    #[arg(skip)]
    pub tokens: Option<noderestriction::Tokens>,
}

/// `500ms`, `5s`, `2m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.find(|c: char| !c.is_ascii_digit()).map(|i| s.split_at(i)).unwrap_or((s, "s"));
    let n: u64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("invalid duration {s:?}: use ms, s or m")),
    }
}

impl Config {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.node_cidr_mask_size < self.cluster_cidr.prefix || self.node_cidr_mask_size > 30 {
            anyhow::bail!("--node-cidr-mask-size {} does not fit in --cluster-cidr {}", self.node_cidr_mask_size, self.cluster_cidr);
        }
        Ok(())
    }
}

/// The namespaces every cluster has, created at start and never deleted: `kube-node-lease`
/// holds the nodes' heartbeat Leases, `kube-public` what everyone may read.
pub const BUILTIN_NAMESPACES: [&str; 4] = ["default", "kube-system", "kube-public", "kube-node-lease"];

/// How long a client may take to send a request's headers, the first or the next one on
/// a kept-alive connection, before the connection is closed (kube-apiserver: Go's
/// ReadHeaderTimeout, 32 s). Without it a client that sends half a request, or nothing,
/// holds its connection and a task for ever.
pub const REQUEST_HEADER_TIMEOUT: Duration = Duration::from_secs(32);

/// Serve the API on `listener`: HTTP/1.1 with upgrades (exec, attach, port-forward and
/// watches over WebSockets), as `axum::serve` does, plus [`REQUEST_HEADER_TIMEOUT`],
/// which `axum::serve` cannot set.
async fn serve(listener: tokio::net::TcpListener, app: axum::Router) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(REQUEST_HEADER_TIMEOUT);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            // Out of descriptors, say: wait, as axum::serve does, rather than spin.
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let svc = hyper_util::service::TowerToHyperService::new(app.clone());
        let conn = http.serve_connection(hyper_util::rt::TokioIo::new(stream), svc).with_upgrades();
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

/// A running apiserver.
pub struct Server {
    pub addr: SocketAddr,
    pub api: objects::Api,
    task: tokio::task::JoinHandle<()>,
}

/// Create the namespaces every cluster has (an existing one is fine); false while etcd
/// does not answer.
async fn builtin_namespaces(api: &objects::Api) -> bool {
    for ns in BUILTIN_NAMESPACES {
        let obj = Namespace { metadata: pkg::api::meta(None, ns), ..Default::default() };
        match api.create(None, obj).await {
            Ok(_) => {}
            Err(e) if e.code() == 409 => {}
            Err(_) => return false,
        }
    }
    true
}

impl Server {
    /// Connect to etcd, create the built-in namespaces, start the controllers and serve.
    pub async fn start(cfg: Config) -> anyhow::Result<Server> {
        cfg.validate()?;
        if let Some(f) = &cfg.kubelet_token_file {
            let token = std::fs::read_to_string(f)?.trim().to_string();
            anyhow::ensure!(!token.is_empty(), "{} holds no token", f.display());
            streams::set_kubelet_token(token);
        }
        let mut cfg = cfg;
        if let Some(f) = &cfg.token_auth_file {
            cfg.tokens = Some(noderestriction::Tokens::parse(&std::fs::read_to_string(f)?)?);
        }
        let store = storage::Store::connect(&cfg.etcd_servers, cfg.etcd_timeout).await?;
        let caches = cfg.watch_cache.then(|| cacher::Caches::new(store.clone()));
        let api = objects::Api { store, cfg: Arc::new(cfg.clone()), caches };
        // Serve at once, etcd or not: while it is away every request answers 503.
        let listener = tokio::net::TcpListener::bind(cfg.listen).await?;
        let addr = listener.local_addr()?;
        let app = routes::router(api.clone());
        let task = tokio::spawn(serve(listener, app));
        // The namespaces every cluster has: now if etcd answers, else as soon as it does.
        if !builtin_namespaces(&api).await {
            let api = api.clone();
            tokio::spawn(async move {
                while !builtin_namespaces(&api).await {
                    tracing::warn!("waiting for etcd");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            });
        }
        controllers::nodelifecycle::spawn(api.clone(), cfg.node_monitor_grace_period);
        controllers::serviceaccount::spawn(api.clone());
        controllers::namespace::spawn(api.clone());
        tracing::info!(%addr, "apiserver serving");
        if cfg.controllers {
            // Through the front door, as kube-controller-manager does.
            let host = if addr.ip().is_unspecified() { std::net::SocketAddr::from(([127, 0, 0, 1], addr.port())) } else { addr };
            ::controllers::run(::controllers::client_for(&format!("http://{host}"))?);
        }
        Ok(Server { addr, api, task })
    }

    pub async fn wait(mut self) {
        let _ = (&mut self.task).await;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}
