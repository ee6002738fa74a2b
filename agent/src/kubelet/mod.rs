//! The kubelet: register this Node, keep its heartbeat, and make the pods bound to it run,
//! then report what they are doing.
//!
//! - [`node`]: registration, the Lease heartbeat and NodeStatus, each on a task of its own;
//! - [`worker`]: one task per pod, fed the latest version of it (older updates collapse),
//!   so pods start, restart and stop in parallel;
//! - [`sync`]: one pass over a pod: sandbox (network namespace, address, files), volumes,
//!   the next actions ([`pkg::kubelet::actions`]), its status;
//! - [`container`]: starting one container (image, environment, mounts, cgroups, logs) and
//!   stopping one (SIGTERM, the grace period, SIGKILL);
//! - [`status`]: the pod's status from what containerd says and what the kubelet remembers;
//! - [`prober`]: readiness, liveness and startup probes; [`volumes`]; [`logs`]; [`events`];
//! - [`starts`]: at most twice as many container starts at once as the node has CPUs;
//! - [`steps`]: where a pod's start goes, step by step, in one log line.
//!
//! Nothing is kept only in memory that cannot be rebuilt: a restarted agent finds its pods'
//! containers by their labels and recovers restart counts from the pods' reported status.
//! It reaches the apiserver through the `kube` crate (typed calls, `kube::runtime` watchers).
//!
//! Upstream: pkg/kubelet/kubelet.go (syncLoop, HandlePodCleanups)

pub mod container;
pub mod events;
pub mod logs;
pub mod node;
pub mod prober;
pub mod starts;
pub mod status;
pub mod steps;
pub mod sync;
pub mod volumes;
pub mod worker;

use crate::cri::{ContainerRuntime, PodNetwork};
use crate::network::{self, Ipam};
use crate::registry::Registries;
use crate::runtime::{ImageConfig, Runtime, LABEL_POD_UID};
use futures::StreamExt;
use kube::runtime::{reflector, watcher, WatchStreamExt};
use pkg::alloc::Cidr;
use pkg::api::*;
use pkg::kubelet::backoff::Backoff;
use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Config {
    pub node_name: String,
    pub node_ip: Ipv4Addr,
    pub cluster_cidr: String,
    pub state_dir: PathBuf,
    /// Where container logs go (`/var/log/pods` on a node).
    pub logs_dir: PathBuf,
    /// The port the agent serves its node API on (advertised in the Node's daemonEndpoints).
    pub port: u16,
    pub registries: Registries,
    /// How often the node's Lease is renewed (10 s in Kubernetes).
    pub lease_renew: Duration,
    /// The node's network namespace, when it is not this process's own (tests run a whole
    /// node inside a throwaway namespace).
    pub netns: Option<String>,
    /// The cluster's DNS (`--cluster-dns`, `--cluster-domain`): what `ClusterFirst` pods'
    /// `/etc/resolv.conf` names. No servers: those pods get the node's (and an event).
    pub dns: pkg::kubelet::dns::ClusterDns,
    /// At most this many containers created and started at once ([`starts`]); 0: no limit.
    pub max_parallel_starts: usize,
}

/// The names everything of one pod goes by.
pub fn netns_name(uid: &str) -> String {
    format!("ownkube-{uid}")
}
pub fn container_id(uid: &str, name: &str) -> String {
    format!("{uid}-{name}")
}
/// The pod a container id belongs to (uids are 36 characters).
pub fn uid_of(container_id: &str) -> Option<&str> {
    container_id.get(..36).filter(|_| container_id.as_bytes().get(36) == Some(&b'-'))
}
/// A pod's own directory: its files, FIFOs and volumes.
pub fn pod_dir(state_dir: &std::path::Path, uid: &str) -> PathBuf {
    state_dir.join("pods").join(uid)
}
/// The pipe a container with `stdin: true` reads, which `kubectl attach` writes.
pub fn stdin_path(state_dir: &std::path::Path, uid: &str, container: &str) -> PathBuf {
    pod_dir(state_dir, uid).join(format!("{container}.stdin"))
}

/// A client of the apiserver at `url` (plain HTTP, as in the lab).
pub fn client_for(url: &str) -> anyhow::Result<kube::Client> {
    client_with_token(url, None)
}

/// [`client_for`], presenting this node's token (what makes it `system:node:<name>`,
/// the only one who may register the Node and post its status).
pub fn client_with_token(url: &str, token: Option<String>) -> anyhow::Result<kube::Client> {
    let mut cfg = kube::Config::new(url.parse()?);
    cfg.auth_info.token = token.map(Into::into);
    Ok(kube::Client::try_from(cfg)?)
}

/// ConfigMaps and Secrets, from the informers' stores, for one namespace.
pub struct NsSources<'a> {
    pub ctx: &'a Ctx,
    pub ns: &'a str,
}

impl pkg::kubelet::env::Sources for NsSources<'_> {
    fn config_map(&self, name: &str) -> Option<ConfigMap> {
        self.ctx.config_maps.get(&reflector::ObjectRef::new(name).within(self.ns)).map(|c| (*c).clone())
    }
    fn secret(&self, name: &str) -> Option<Secret> {
        self.ctx.secrets.get(&reflector::ObjectRef::new(name).within(self.ns)).map(|c| (*c).clone())
    }
}

/// The runtime and the network a kubelet drives ([`crate::cri`]).
pub struct Plugins {
    pub runtime: Arc<dyn ContainerRuntime>,
    pub network: Arc<dyn PodNetwork>,
}

/// What every pod worker shares.
pub struct Ctx {
    pub client: kube::Client,
    pub rt: Arc<dyn ContainerRuntime>,
    pub net: Arc<dyn PodNetwork>,
    pub cfg: Config,
    pub pod_cidr: Cidr,
    pub ipam: Ipam,
    pub http: reqwest::Client,
    pub images: tokio::sync::Mutex<HashMap<String, ImageConfig>>,
    /// Image pulls and container restarts back off separately.
    pub pulls: Mutex<Backoff>,
    pub crashes: Mutex<Backoff>,
    /// The last failure of each image pull (by pod and image), for `ImagePullBackOff`.
    pub pull_errors: Mutex<HashMap<String, String>>,
    pub config_maps: reflector::Store<ConfigMap>,
    pub secrets: reflector::Store<Secret>,
    pub recorder: events::Recorder,
    /// Containers whose output is being copied into their log (by containerd id).
    pub copiers: Mutex<HashSet<String>>,
    /// Containers the kernel OOM-killed something in since they started.
    pub ooms: Mutex<HashSet<String>>,
    pub workers: Mutex<HashMap<String, worker::Handle>>,
    /// The node's allocatable cpu and memory, for `resourceFieldRef`.
    pub allocatable: (i64, i64),
    /// The queue of container starts ([`starts`]).
    pub starts: starts::Starts,
}

pub struct Kubelet {
    ctx: Arc<Ctx>,
    node_uid: Option<String>,
    cm_writer: reflector::store::Writer<ConfigMap>,
    secret_writer: reflector::store::Writer<Secret>,
}

impl Kubelet {
    /// A kubelet on this machine: containerd, and pods wired by netlink in the node's
    /// network namespace (or `cfg.netns`).
    pub async fn start(client: kube::Client, rt: Runtime, cfg: Config) -> anyhow::Result<Kubelet> {
        let network = Arc::new(network::Netlink::connect(cfg.netns.as_deref()).await?);
        Self::start_with(client, Plugins { runtime: Arc::new(rt), network }, cfg).await
    }

    /// Register (or find) this Node and get its pod CIDR; prepare the node's network.
    pub async fn start_with(client: kube::Client, plugins: Plugins, cfg: Config) -> anyhow::Result<Kubelet> {
        let node = node::register(&client, &cfg).await?;
        let pod_cidr: Cidr = node.pod_cidr().ok_or_else(|| anyhow::anyhow!("node has no podCIDR"))?.parse()?;
        tracing::info!(node = %cfg.node_name, %pod_cidr, "node registered");
        let Plugins { runtime: rt, network: net } = plugins;
        net.prepare_node(pod_cidr, &cfg.cluster_cidr).await?;
        let ipam = Ipam::new(&cfg.state_dir, pod_cidr)?;
        let (config_maps, cm_writer) = reflector::store();
        let (secrets, secret_writer) = reflector::store();
        let recorder = events::Recorder::start(client.clone(), &cfg.node_name);
        let cfg_starts = cfg.max_parallel_starts;
        let ctx = Ctx {
            client,
            rt,
            net,
            cfg,
            pod_cidr,
            ipam,
            http: reqwest::Client::new(),
            images: Default::default(),
            pulls: Default::default(),
            crashes: Default::default(),
            pull_errors: Default::default(),
            config_maps,
            secrets,
            recorder,
            copiers: Default::default(),
            ooms: Default::default(),
            workers: Default::default(),
            allocatable: node::allocatable(),
            starts: starts::Starts::new(cfg_starts),
        };
        Ok(Kubelet { ctx: Arc::new(ctx), node_uid: node.metadata.uid.clone(), cm_writer, secret_writer })
    }

    /// Run forever: heartbeats, informers, a worker per pod, housekeeping.
    pub async fn run(self) {
        let ctx = self.ctx.clone();
        tokio::spawn(node::lease_loop(ctx.client.clone(), ctx.cfg.clone(), self.node_uid.clone()));
        tokio::spawn(node::status_loop(ctx.client.clone(), ctx.cfg.clone()));
        tokio::spawn(watch_config::<ConfigMap>(ctx.clone(), self.cm_writer));
        tokio::spawn(watch_config::<Secret>(ctx.clone(), self.secret_writer));
        tokio::spawn(task_events(ctx.clone()));
        if ctx.net.needs_routes() {
            tokio::spawn(routes(ctx.clone()));
        }
        let pods: kube::Api<Pod> = kube::Api::all(ctx.client.clone());
        let cfg = watcher::Config::default().fields(&format!("spec.nodeName={}", ctx.cfg.node_name));
        let mut stream = std::pin::pin!(watcher(pods, cfg).default_backoff());
        let mut listing: Option<HashSet<String>> = None;
        let mut synced = false;
        let mut housekeeping = tokio::time::interval(Duration::from_secs(2));
        loop {
            tokio::select! {
                ev = stream.next() => match ev {
                    Some(Ok(watcher::Event::Apply(p))) | Some(Ok(watcher::Event::InitApply(p))) => {
                        if let Some(l) = listing.as_mut() { l.insert(p.uid().unwrap_or_default().to_string()); }
                        worker::update(&ctx, Some(Arc::new(p)), None);
                    }
                    Some(Ok(watcher::Event::Delete(p))) => worker::update(&ctx, None, p.uid()),
                    Some(Ok(watcher::Event::Init)) => listing = Some(HashSet::new()),
                    Some(Ok(watcher::Event::InitDone)) => {
                        // Pods the new listing lacks were deleted while we were not watching.
                        let seen = listing.take().unwrap_or_default();
                        let known: Vec<String> = ctx.workers.lock().unwrap().keys().cloned().collect();
                        for uid in known.into_iter().filter(|u| !seen.contains(u)) {
                            worker::update(&ctx, None, Some(&uid));
                        }
                        synced = true;
                    }
                    Some(Err(e)) => tracing::warn!(error = %e, "pod watch failed; retrying"),
                    None => return,
                },
                _ = housekeeping.tick(), if synced => {
                    if let Err(e) = sweep(&ctx).await {
                        tracing::warn!(error = %format!("{e:#}"), "cleanup failed");
                    }
                }
            }
        }
    }
}

/// Keep a store of ConfigMaps (or Secrets) and wake the pods of a namespace when one of
/// its objects changes (volumes and environment read them).
async fn watch_config<K>(ctx: Arc<Ctx>, writer: reflector::store::Writer<K>)
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let api: kube::Api<K> = kube::Api::all(ctx.client.clone());
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()).default_backoff());
    let mut stream = std::pin::pin!(stream.applied_objects());
    while let Some(ev) = stream.next().await {
        if let Ok(obj) = ev {
            let ns = obj.meta().namespace.clone().unwrap_or_default();
            worker::wake_namespace(&ctx, &ns);
        }
    }
}

/// containerd's task exits and OOM kills wake the pod they belong to at once.
async fn task_events(ctx: Arc<Ctx>) {
    loop {
        match ctx.rt.task_events().await {
            Ok(events) => {
                // Whatever exited while no stream was open is found by a pass over every pod
                // (the kubelet's PLEG relists for the same reason).
                worker::wake_all(&ctx);
                let mut events = std::pin::pin!(events);
                while let Some((id, exit)) = events.next().await {
                    if exit.is_none() {
                        ctx.ooms.lock().unwrap().insert(id.clone());
                    }
                    if let Some(uid) = uid_of(&id) {
                        worker::wake(&ctx, uid);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "containerd events unavailable"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Routes to every other node's pod CIDR via its InternalIP.
async fn routes(ctx: Arc<Ctx>) {
    let nodes: kube::Api<Node> = kube::Api::all(ctx.client.clone());
    let mut stream = std::pin::pin!(watcher(nodes, watcher::Config::default()).default_backoff().applied_objects());
    while let Some(ev) = stream.next().await {
        let Ok(n) = ev else { continue };
        if n.name() == ctx.cfg.node_name {
            continue;
        }
        let (Some(cidr), Some(ip)) = (n.pod_cidr().and_then(|c| c.parse::<Cidr>().ok()), n.internal_ip().and_then(|i| i.parse().ok()))
        else {
            continue;
        };
        if let Err(e) = ctx.net.ensure_route(cidr, ip).await {
            tracing::warn!(node = %n.name(), error = %e, "route to node failed");
        }
    }
}

/// Remove what belongs to pods that have no worker any more: containers, netns, addresses.
async fn sweep(ctx: &Arc<Ctx>) -> anyhow::Result<()> {
    let mut orphans: HashSet<String> = HashSet::new();
    for (_, labels) in ctx.rt.list().await? {
        if let Some(uid) = labels.get(LABEL_POD_UID) {
            orphans.insert(uid.clone());
        }
    }
    orphans.extend(ctx.ipam.all().into_iter().map(|(_, owner)| owner));
    orphans.extend(ctx.net.namespaces().iter().filter_map(|n| n.strip_prefix("ownkube-").map(String::from)));
    let known: HashSet<String> = ctx.workers.lock().unwrap().keys().cloned().collect();
    for uid in orphans.into_iter().filter(|u| !known.contains(u)) {
        tracing::info!(%uid, "removing what is left of a pod that no longer exists");
        sync::teardown(ctx, &uid).await?;
    }
    Ok(())
}
