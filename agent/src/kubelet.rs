//! The kubelet: register this Node, keep its heartbeat, and make the pods bound to it
//! run — then report what they are doing.
//!
//! One reconcile loop compares what the apiserver wants (pods with
//! `spec.nodeName=<this node>`, from an informer) with what is really there (containerd's
//! containers and tasks, netns files, IPAM records) and closes the gap: create the pod's
//! network namespace, veth and address; pull and unpack images; create and start
//! containers; restart them per `restartPolicy` with a growing back-off; stop them with
//! SIGTERM, the grace period, then SIGKILL when the pod is being deleted; release
//! everything of pods that no longer exist. Nothing is kept only in memory that cannot be
//! rebuilt: a restarted agent finds its pods' containers by their labels and adopts them.

use crate::client::{Change, Client};
use crate::network::{self, Ipam};
use crate::proxy::iptables::Runner;
use crate::registry::{self, Registries};
use crate::runtime::{self, ImageConfig, PodFiles, Runtime, TaskState, LABEL_CONTAINER, LABEL_POD, LABEL_POD_UID};
use k8s_openapi::api::core::v1::{DaemonEndpoint, HostIP};
use pkg::alloc::Cidr;
use pkg::api::*;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

#[derive(Clone, Debug)]
pub struct Config {
    pub node_name: String,
    pub node_ip: Ipv4Addr,
    pub cluster_cidr: String,
    pub state_dir: PathBuf,
    /// The port the agent serves logs on (advertised in the Node's daemonEndpoints).
    pub port: u16,
    pub registries: Registries,
    pub heartbeat: Duration,
    /// The node's network namespace, when it is not this process's own (tests run a whole
    /// node inside a throwaway namespace).
    pub netns: Option<String>,
}

/// Back-off between restarts (and pulls): 1 s doubling to 5 min, as the kubelet does
/// (it starts at 10 s; shorter here so a learner sees restarts happen).
fn backoff(n: u32) -> Duration {
    Duration::from_secs((1u64 << n.min(9)).min(300))
}

#[derive(Default)]
struct ContainerTrack {
    restarts: u32,
    not_before: Option<Instant>,
    waiting: Option<(String, String)>,
    started_at: Option<Time>,
    last_exit: Option<(u32, Option<String>)>,
}

#[derive(Default)]
struct PodTrack {
    containers: HashMap<String, ContainerTrack>,
    terminating_since: Option<Instant>,
    killed: bool,
    last_status: Option<PodStatus>,
    start_time: Option<Time>,
}

pub struct Kubelet {
    client: Client,
    rt: Runtime,
    net: rtnetlink::Handle,
    cfg: Config,
    pod_cidr: Cidr,
    ipam: Ipam,
    http: reqwest::Client,
    tracks: HashMap<String, PodTrack>,
    images: HashMap<String, ImageConfig>,
    /// Copiers of terminal output into log files, by container id.
    consoles: HashMap<String, tokio::task::JoinHandle<std::io::Result<u64>>>,
}

/// The names everything of one pod goes by.
pub fn netns_name(uid: &str) -> String {
    format!("ownkube-{uid}")
}
pub fn container_id(uid: &str, name: &str) -> String {
    format!("{uid}-{name}")
}

impl Kubelet {
    /// Register (or find) this Node and get its pod CIDR; prepare the host.
    pub async fn start(client: Client, rt: Runtime, cfg: Config) -> anyhow::Result<Kubelet> {
        let node = register(&client, &cfg).await?;
        let pod_cidr: Cidr = node.pod_cidr().ok_or_else(|| anyhow::anyhow!("node has no podCIDR"))?.parse()?;
        tracing::info!(node = %cfg.node_name, %pod_cidr, "node registered");
        let (net, runner) = match &cfg.netns {
            Some(name) => (network::connect_in(&std::path::Path::new(network::NETNS_DIR).join(name)).await?, Runner::in_netns(name)),
            None => (network::connect()?, Runner::default()),
        };
        network::ensure_bridge(&net, pod_cidr).await?;
        prepare_host(&runner, &cfg, pod_cidr).await;
        let ipam = Ipam::new(&cfg.state_dir, pod_cidr)?;
        Ok(Kubelet {
            client,
            rt,
            net,
            cfg,
            pod_cidr,
            ipam,
            http: reqwest::Client::new(),
            tracks: HashMap::new(),
            images: HashMap::new(),
            consoles: HashMap::new(),
        })
    }

    fn pod_dir(&self, uid: &str) -> PathBuf {
        self.cfg.state_dir.join("pods").join(uid)
    }

    /// The pipe a container with `stdin: true` reads, which `kubectl attach` writes.
    pub fn stdin_path(state_dir: &std::path::Path, uid: &str, container: &str) -> PathBuf {
        state_dir.join("pods").join(uid).join(format!("{container}.stdin"))
    }

    /// A terminal's output comes through a FIFO; copy it into the container's log file
    /// (once per container: a copier already running keeps going).
    fn console_pipe(&mut self, id: &str, log: &std::path::Path) -> anyhow::Result<PathBuf> {
        let fifo = log.with_extension("console");
        if !fifo.exists() {
            crate::exec::mkfifo(&fifo)?;
        }
        if self.consoles.get(id).is_some_and(|h| !h.is_finished()) {
            return Ok(fifo);
        }
        let (from, to) = (fifo.clone(), log.to_path_buf());
        let copier = tokio::task::spawn_blocking(move || -> std::io::Result<u64> {
            let mut r = std::fs::File::open(&from)?;
            let mut w = std::fs::OpenOptions::new().create(true).append(true).open(&to)?;
            std::io::copy(&mut r, &mut w)
        });
        self.consoles.insert(id.to_string(), copier);
        Ok(fifo)
    }

    /// The log file of one container.
    pub fn log_path(state_dir: &std::path::Path, uid: &str, container: &str) -> PathBuf {
        state_dir.join("pods").join(uid).join(format!("{container}.log"))
    }

    /// Run forever: pods from the apiserver in, containers and statuses out.
    pub async fn run(mut self) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let sel = format!("/api/v1/pods?fieldSelector=spec.nodeName%3D{}", self.cfg.node_name);
        self.client.spawn_informer(sel, tx.clone(), |c: Change<Pod>| Msg::Pod(c));
        self.client.spawn_informer("/api/v1/nodes".into(), tx, |c: Change<Node>| Msg::Node(c));
        let mut pods: HashMap<String, Pod> = HashMap::new();
        let mut nodes: HashMap<String, Node> = HashMap::new();
        let mut synced = false;
        let mut next_beat = Instant::now();
        loop {
            if Instant::now() >= next_beat {
                if let Err(e) = heartbeat(&self.client, &self.cfg).await {
                    tracing::warn!(error = %e, "heartbeat failed");
                }
                next_beat = Instant::now() + self.cfg.heartbeat;
            }
            match tokio::time::timeout(Duration::from_millis(500), rx.recv()).await {
                Ok(None) => return,
                Ok(Some(first)) => {
                    let mut next = Some(first);
                    while let Some(m) = next.take().or_else(|| rx.try_recv().ok()) {
                        match m {
                            Msg::Pod(c) => {
                                synced |= matches!(c, Change::Synced(_));
                                c.apply_to(&mut pods, |p| p.uid().unwrap_or_default().to_string())
                            }
                            Msg::Node(c) => {
                                c.apply_to(&mut nodes, |n| n.name().to_string());
                                self.sync_routes(&nodes).await;
                            }
                        }
                    }
                }
                Err(_) => {}
            }
            if synced {
                self.reconcile(&pods).await;
            }
        }
    }

    /// Routes to every other node's pod CIDR via its InternalIP.
    async fn sync_routes(&self, nodes: &HashMap<String, Node>) {
        for n in nodes.values().filter(|n| n.name() != self.cfg.node_name) {
            let (Some(cidr), Some(ip)) = (n.pod_cidr().and_then(|c| c.parse::<Cidr>().ok()), n.internal_ip().and_then(|i| i.parse().ok()))
            else {
                continue;
            };
            if let Err(e) = network::ensure_route(&self.net, cidr, ip).await {
                tracing::warn!(node = %n.name(), error = %e, "route to node failed");
            }
        }
    }

    /// One pass over every pod: converge, report, clean up.
    pub async fn reconcile(&mut self, pods: &HashMap<String, Pod>) {
        for (uid, pod) in pods {
            let result = if pod.is_deleting() { self.terminate(uid, pod).await } else { self.ensure(uid, pod).await };
            if let Err(e) = result {
                tracing::warn!(pod = %pod.name(), error = %format!("{e:#}"), "pod sync failed");
            }
        }
        if let Err(e) = self.sweep(pods).await {
            tracing::warn!(error = %format!("{e:#}"), "cleanup failed");
        }
    }

    async fn image(&mut self, image: &str) -> Result<ImageConfig, (String, String)> {
        if let Some(c) = self.images.get(image) {
            return Ok(c.clone());
        }
        let found = self.rt.prepare_image(image).await.map_err(|e| ("ErrImagePull".to_string(), e.to_string()))?;
        let cfg = match found {
            Some(c) => c,
            None => {
                tracing::info!(%image, "pulling");
                registry::pull(&self.rt, &self.http, &self.cfg.registries, image).await.map_err(|e| ("ErrImagePull".to_string(), e))?;
                self.rt
                    .prepare_image(image)
                    .await
                    .map_err(|e| ("ErrImagePull".to_string(), e.to_string()))?
                    .ok_or_else(|| ("ErrImagePull".to_string(), "image vanished after pull".to_string()))?
            }
        };
        self.images.insert(image.to_string(), cfg.clone());
        Ok(cfg)
    }

    /// Make a pod's sandbox and containers exist and run, then report its status.
    async fn ensure(&mut self, uid: &str, pod: &Pod) -> anyhow::Result<()> {
        let track = self.tracks.entry(uid.to_string()).or_default();
        if track.start_time.is_none() {
            track.start_time = pod.status.as_ref().and_then(|s| s.start_time.clone()).or_else(|| Some(now()));
            // After an agent restart, restart counts come back from the reported status.
            for cs in pod.container_statuses() {
                track.containers.entry(cs.name.clone()).or_default().restarts = cs.restart_count.max(0) as u32;
            }
        }
        let ns_name = netns_name(uid);
        let ns = network::create_netns(&ns_name)?;
        let ip = self.ipam.allocate(uid)?;
        network::attach_pod(&self.net, &ns_name, &ns, self.pod_cidr, ip).await?;
        let dir = self.pod_dir(uid);
        std::fs::create_dir_all(&dir)?;
        let files = PodFiles { hosts: dir.join("hosts"), hostname: dir.join("hostname"), resolv: dir.join("resolv.conf") };
        let name = pod.spec.as_ref().and_then(|s| s.hostname.clone()).unwrap_or_else(|| pod.name().to_string());
        std::fs::write(&files.hosts, format!("127.0.0.1\tlocalhost\n::1\tlocalhost\n{ip}\t{name}\n"))?;
        std::fs::write(&files.hostname, format!("{name}\n"))?;
        if !files.resolv.exists() {
            std::fs::write(&files.resolv, std::fs::read("/etc/resolv.conf").unwrap_or_default())?;
        }
        let policy = pod.restart_policy();
        for c in pod.containers() {
            let id = container_id(uid, &c.name);
            let state = self.rt.task_state(&id).await?;
            if matches!(state, TaskState::Running { .. }) && c.tty == Some(true) {
                // After an agent restart, the terminal's copier starts again.
                self.console_pipe(&id, &Self::log_path(&self.cfg.state_dir, uid, &c.name))?;
            }
            let tr = self.tracks.get_mut(uid).unwrap().containers.entry(c.name.clone()).or_default();
            let due = tr.not_before.is_none_or(|t| Instant::now() >= t);
            match state {
                TaskState::Running { .. } => {
                    tr.waiting = None;
                    if tr.started_at.is_none() {
                        tr.started_at = Some(now());
                    }
                    continue;
                }
                TaskState::Exited { code, at } => {
                    if tr.last_exit.as_ref().map(|e| &e.1) != Some(&at) {
                        tr.last_exit = Some((code, at.clone()));
                        tr.started_at = None;
                        if policy.restarts(code as i32) {
                            tr.not_before = Some(Instant::now() + backoff(tr.restarts));
                            tr.waiting = Some((
                                "CrashLoopBackOff".into(),
                                format!("back-off restarting failed container {} (exit code {code})", c.name),
                            ));
                            tracing::info!(pod = %pod.name(), container = %c.name, code, "container exited; restarting after back-off");
                        }
                        continue;
                    }
                    if !policy.restarts(code as i32) || !due {
                        continue;
                    }
                    self.rt.delete_task(&id).await?;
                    let tr = self.tracks.get_mut(uid).unwrap().containers.get_mut(&c.name).unwrap();
                    tr.restarts += 1;
                }
                TaskState::Created => {
                    self.rt.delete_task(&id).await?;
                }
                TaskState::Missing => {}
            }
            if !due {
                continue;
            }
            // Create the container if containerd does not have it, then start its task.
            let image = c.image.clone().unwrap_or_default();
            let img = match self.image(&image).await {
                Ok(i) => i,
                Err((reason, msg)) => {
                    let tr = self.tracks.get_mut(uid).unwrap().containers.get_mut(&c.name).unwrap();
                    let was_pull_err = tr.waiting.as_ref().is_some_and(|w| w.0 == "ErrImagePull" || w.0 == "ImagePullBackOff");
                    let n = tr.restarts.max(1);
                    tr.not_before = Some(Instant::now() + backoff(n.min(4)));
                    tr.waiting = Some((if was_pull_err { "ImagePullBackOff".into() } else { reason }, msg));
                    continue;
                }
            };
            let env: Vec<(String, String)> =
                c.env.iter().flatten().map(|e| (e.name.clone(), e.value.clone().unwrap_or_default())).collect();
            let args = runtime::process_args(&img, c.command.as_deref().unwrap_or(&[]), c.args.as_deref().unwrap_or(&[]));
            let env = runtime::process_env(&img, &env);
            let cwd = c.working_dir.clone().unwrap_or(img.working_dir.clone());
            let mut spec = runtime::oci_spec(&args, &env, &cwd, &name, &ns, &files);
            let tty = c.tty == Some(true);
            spec["process"]["terminal"] = json!(tty);
            let stdin = (c.stdin == Some(true)).then(|| Self::stdin_path(&self.cfg.state_dir, uid, &c.name));
            if let Some(p) = stdin.as_deref().filter(|p| !p.exists()) {
                crate::exec::mkfifo(p)?;
            }
            let labels = HashMap::from([
                (LABEL_POD_UID.to_string(), uid.to_string()),
                (LABEL_POD.to_string(), format!("{}/{}", pod.namespace().unwrap_or("default"), pod.name())),
                (LABEL_CONTAINER.to_string(), c.name.clone()),
            ]);
            self.rt.create_container(&id, &image, &img.chain_id, &spec, labels).await?;
            let log = Self::log_path(&self.cfg.state_dir, uid, &c.name);
            let out = if tty { self.console_pipe(&id, &log)? } else { log };
            let started = self.rt.start_task(&id, &out, stdin.as_deref(), tty).await;
            let tr = self.tracks.get_mut(uid).unwrap().containers.get_mut(&c.name).unwrap();
            match started {
                Ok(_) => {
                    tr.waiting = None;
                    tr.started_at = Some(now());
                }
                Err(e) => {
                    tr.waiting = Some(("RunContainerError".into(), e.to_string()));
                    tr.not_before = Some(Instant::now() + backoff(tr.restarts));
                    let _ = self.rt.delete_task(&id).await;
                }
            }
        }
        self.report(uid, pod, Some(ip)).await
    }

    /// Build and send the pod's status if it changed.
    async fn report(&mut self, uid: &str, pod: &Pod, ip: Option<Ipv4Addr>) -> anyhow::Result<()> {
        let mut statuses = vec![];
        let (mut running, mut exited_ok, mut exited_bad, mut waiting) = (0, 0, 0, 0);
        let policy = pod.restart_policy();
        for c in pod.containers() {
            let id = container_id(uid, &c.name);
            let state = self.rt.task_state(&id).await?;
            let tr = self.tracks.get(uid).and_then(|t| t.containers.get(&c.name));
            let restarts = tr.map_or(0, |t| t.restarts);
            let (st, ready) = match (&state, tr.and_then(|t| t.waiting.clone())) {
                (TaskState::Running { .. }, _) => {
                    running += 1;
                    let started_at = tr.and_then(|t| t.started_at.clone());
                    (ContainerState { running: Some(ContainerStateRunning { started_at }), ..Default::default() }, true)
                }
                (_, Some((reason, message))) => {
                    waiting += 1;
                    let w = ContainerStateWaiting { reason: Some(reason), message: Some(message) };
                    (ContainerState { waiting: Some(w), ..Default::default() }, false)
                }
                (TaskState::Exited { code, at }, None) => {
                    if *code == 0 {
                        exited_ok += 1
                    } else {
                        exited_bad += 1
                    }
                    let reason = if *code == 0 { "Completed" } else { "Error" };
                    let finished_at = at.as_deref().and_then(|t| t.parse::<jiff::Timestamp>().ok()).map(Time);
                    let t = ContainerStateTerminated {
                        exit_code: *code as i32,
                        reason: Some(reason.into()),
                        finished_at,
                        ..Default::default()
                    };
                    (ContainerState { terminated: Some(t), ..Default::default() }, false)
                }
                _ => {
                    waiting += 1;
                    let w = ContainerStateWaiting { reason: Some("ContainerCreating".into()), message: None };
                    (ContainerState { waiting: Some(w), ..Default::default() }, false)
                }
            };
            statuses.push(ContainerStatus {
                name: c.name.clone(),
                image: c.image.clone().unwrap_or_default(),
                ready,
                restart_count: restarts as i32,
                started: Some(ready),
                state: Some(st),
                container_id: (!matches!(state, TaskState::Missing)).then(|| format!("containerd://{id}")),
                ..Default::default()
            });
        }
        let n = pod.containers().len();
        let phase = if running > 0 || (waiting > 0 && statuses.iter().any(|s| s.restart_count > 0)) {
            PodPhase::Running
        } else if exited_ok + exited_bad == n
            && n > 0
            && policy != RestartPolicy::Always
            && (exited_bad == 0 || policy == RestartPolicy::Never)
        {
            if exited_bad > 0 {
                PodPhase::Failed
            } else {
                PodPhase::Succeeded
            }
        } else {
            PodPhase::Pending
        };
        let all_ready = running == n && n > 0;
        let track = self.tracks.get_mut(uid).unwrap();
        let now = now();
        let old_conditions = pod.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
        let mut conditions = old_conditions.clone();
        for (ty, ok) in [("Initialized", true), ("Ready", all_ready), ("ContainersReady", all_ready), ("PodScheduled", true)] {
            let cond = PodCondition { type_: ty.into(), status: ConditionStatus::from_bool(ok).as_str().into(), ..Default::default() };
            set_condition(&mut conditions, cond, &now);
        }
        let status = PodStatus {
            phase: Some(phase.as_str().into()),
            host_ip: Some(self.cfg.node_ip.to_string()),
            host_ips: Some(vec![HostIP { ip: self.cfg.node_ip.to_string() }]),
            pod_ip: ip.map(|i| i.to_string()),
            pod_ips: ip.map(|i| vec![PodIP { ip: i.to_string() }]),
            start_time: track.start_time.clone(),
            container_statuses: Some(statuses),
            conditions: Some(conditions),
            qos_class: Some("BestEffort".into()),
            ..Default::default()
        };
        if track.last_status.as_ref() == Some(&status) {
            return Ok(());
        }
        let mut body = pod.clone();
        body.status = Some(status.clone());
        body.metadata.resource_version = None;
        let path = format!("/api/v1/namespaces/{}/pods/{}/status", pod.namespace().unwrap_or("default"), pod.name());
        match self.client.update(&path, &body).await {
            Ok(_) => track.last_status = Some(status),
            Err(e) if e.code() == 404 => {}
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    /// A pod being deleted: SIGTERM, wait up to its grace period, SIGKILL, release
    /// everything, then delete the pod object for good.
    async fn terminate(&mut self, uid: &str, pod: &Pod) -> anyhow::Result<()> {
        let grace = Duration::from_secs(pod.metadata.deletion_grace_period_seconds.unwrap_or(30).clamp(0, 10 * 365 * 86400) as u64);
        let track = self.tracks.entry(uid.to_string()).or_default();
        let first = track.terminating_since.is_none();
        let since = *track.terminating_since.get_or_insert_with(Instant::now);
        let kill = !track.killed && since.elapsed() >= grace;
        if kill {
            track.killed = true;
        }
        let mut all_stopped = true;
        for c in pod.containers() {
            let id = container_id(uid, &c.name);
            match self.rt.task_state(&id).await? {
                TaskState::Running { .. } | TaskState::Created => {
                    all_stopped = false;
                    if first {
                        self.rt.kill(&id, libc::SIGTERM as u32).await?;
                    } else if kill {
                        self.rt.kill(&id, libc::SIGKILL as u32).await?;
                    }
                }
                _ => {}
            }
        }
        if !all_stopped {
            return Ok(());
        }
        self.teardown(uid).await?;
        let path = format!("/api/v1/namespaces/{}/pods/{}?gracePeriodSeconds=0", pod.namespace().unwrap_or("default"), pod.name());
        match self.client.delete(&path).await {
            Err(e) if e.code() != 404 => Err(e.into()),
            _ => {
                tracing::info!(pod = %pod.name(), "pod stopped and removed");
                Ok(())
            }
        }
    }

    /// Release everything of one pod: tasks, containers, snapshots, veth, netns, address.
    async fn teardown(&mut self, uid: &str) -> anyhow::Result<()> {
        for (id, labels) in self.rt.list().await? {
            if labels.get(LABEL_POD_UID).map(String::as_str) == Some(uid) {
                self.rt.kill(&id, libc::SIGKILL as u32).await?;
                for _ in 0..50 {
                    if !matches!(self.rt.task_state(&id).await?, TaskState::Running { .. } | TaskState::Created) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                self.rt.delete_task(&id).await?;
                self.rt.delete_container(&id).await?;
            }
        }
        network::detach_pod(&self.net, &netns_name(uid)).await?;
        self.ipam.release(uid);
        let _ = std::fs::remove_dir_all(self.pod_dir(uid));
        self.tracks.remove(uid);
        Ok(())
    }

    /// Remove what belongs to pods that are no longer bound here.
    async fn sweep(&mut self, pods: &HashMap<String, Pod>) -> anyhow::Result<()> {
        let mut orphans: HashSet<String> = HashSet::new();
        for (_, labels) in self.rt.list().await? {
            if let Some(uid) = labels.get(LABEL_POD_UID) {
                orphans.insert(uid.clone());
            }
        }
        orphans.extend(self.ipam.all().into_iter().map(|(_, owner)| owner));
        if let Ok(rd) = std::fs::read_dir(network::NETNS_DIR) {
            orphans.extend(rd.flatten().filter_map(|e| e.file_name().to_str()?.strip_prefix("ownkube-").map(String::from)));
        }
        for uid in orphans.into_iter().filter(|u| !pods.contains_key(u)) {
            tracing::info!(%uid, "removing what is left of a pod that no longer exists");
            self.teardown(&uid).await?;
        }
        Ok(())
    }
}

// Each message lives for one hop through a channel; boxing would only add allocations.
#[allow(clippy::large_enum_variant)]
enum Msg {
    Pod(Change<Pod>),
    Node(Change<Node>),
}

/// Create the Node if it does not exist (a restarted agent finds its own, CIDR and all).
async fn register(client: &Client, cfg: &Config) -> anyhow::Result<Node> {
    let path = format!("/api/v1/nodes/{}", cfg.node_name);
    loop {
        match client.get::<Node>(&path).await {
            Ok(n) => return Ok(n),
            Err(e) if e.code() == 404 => {
                let node: Node = serde_json::from_value(json!({
                    "metadata": {"name": cfg.node_name, "labels": {"kubernetes.io/hostname": cfg.node_name, "kubernetes.io/os": "linux", "kubernetes.io/arch": go_arch()}},
                    "status": {"addresses": [{"type": "InternalIP", "address": cfg.node_ip.to_string()}, {"type": "Hostname", "address": cfg.node_name}]}
                }))?;
                match client.create("/api/v1/nodes", &node).await {
                    Ok(n) => return Ok(n),
                    Err(e) if e.code() == 409 => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "waiting for the apiserver");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

fn meminfo_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().find(|l| l.starts_with("MemTotal:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

/// Post the node's status: Ready, addresses, capacity, a fresh heartbeat time.
pub async fn heartbeat(client: &Client, cfg: &Config) -> anyhow::Result<()> {
    let path = format!("/api/v1/nodes/{}", cfg.node_name);
    let mut node: Node = client.get(&path).await?;
    let now = now();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let cap: std::collections::BTreeMap<String, Quantity> = [
        ("cpu".to_string(), Quantity(cpus.to_string())),
        ("memory".into(), Quantity(format!("{}Ki", meminfo_kib()))),
        ("pods".into(), Quantity("110".into())),
    ]
    .into();
    let version = format!("v1.32.0-ownkube.{}", env!("CARGO_PKG_VERSION"));
    let status = node.status.get_or_insert_with(Default::default);
    status.addresses = Some(vec![
        NodeAddress { type_: "InternalIP".into(), address: cfg.node_ip.to_string() },
        NodeAddress { type_: "Hostname".into(), address: cfg.node_name.clone() },
    ]);
    status.capacity = Some(cap.clone());
    status.allocatable = Some(cap);
    status.node_info = Some(NodeSystemInfo {
        kubelet_version: version.clone(),
        kube_proxy_version: version,
        kernel_version: read_trimmed("/proc/sys/kernel/osrelease"),
        os_image: os_image(),
        container_runtime_version: "containerd://".into(),
        operating_system: "linux".into(),
        architecture: go_arch().into(),
        machine_id: machine_id(),
        system_uuid: system_uuid(),
        boot_id: read_trimmed("/proc/sys/kernel/random/boot_id"),
        ..Default::default()
    });
    status.daemon_endpoints = Some(NodeDaemonEndpoints { kubelet_endpoint: Some(DaemonEndpoint { port: cfg.port.into() }) });
    let ready = NodeCondition {
        type_: "Ready".into(),
        status: "True".into(),
        reason: Some("KubeletReady".into()),
        message: Some("ownkube agent is posting ready status".into()),
        last_heartbeat_time: Some(now.clone()),
        ..Default::default()
    };
    set_condition(status.conditions.get_or_insert_with(Vec::new), ready, &now);
    node.metadata.resource_version = None;
    client.update(&format!("{path}/status"), &node).await?;
    Ok(())
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path).map(|s| s.trim().to_string()).unwrap_or_default()
}

/// `/etc/machine-id` (systemd's), else D-Bus's copy: what the kubelet reports as machineID.
fn machine_id() -> String {
    ["/etc/machine-id", "/var/lib/dbus/machine-id"].iter().map(|p| read_trimmed(p)).find(|s| !s.is_empty()).unwrap_or_default()
}

/// The SMBIOS product UUID where the kernel shows it; node containers often cannot read
/// it, so fall back to the machine ID (the kubelet's own fallback chain ends the same way).
fn system_uuid() -> String {
    Some(read_trimmed("/sys/class/dmi/id/product_uuid")).filter(|s| !s.is_empty()).unwrap_or_else(machine_id)
}

/// Go's name for the CPU architecture, which clients compare against (`amd64`, not `x86_64`).
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn os_image() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_string())))
        .unwrap_or_else(|| "linux".into())
}

/// Host settings pods need: forwarding, iptables on bridged traffic (hairpin through a
/// service), and masquerading of pod traffic leaving the cluster network.
async fn prepare_host(r: &Runner, cfg: &Config, pod_cidr: Cidr) {
    let _ = r.run("modprobe", &["br_netfilter"]).await;
    for kv in ["net.ipv4.ip_forward=1", "net.bridge.bridge-nf-call-iptables=1"] {
        if let Err(e) = r.run("sysctl", &["-q", "-w", kv]).await {
            tracing::warn!(%kv, error = %e, "could not set sysctl");
        }
    }
    let rule: Vec<String> = [
        "-s",
        &pod_cidr.to_string(),
        "!",
        "-d",
        &cfg.cluster_cidr,
        "-m",
        "comment",
        "--comment",
        "ownkube: pod traffic leaving the cluster network",
        "-j",
        "MASQUERADE",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Err(e) = r.ensure_rule("nat", "POSTROUTING", &rule).await {
        tracing::warn!(error = %e, "could not add the masquerade rule");
    }
}
