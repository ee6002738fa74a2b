//! One pass over one pod (the kubelet's `SyncPod`), and its end (`SyncTerminatingPod`):
//!
//! 1. **Sandbox**: the pod's network namespace, veth and address, its `/etc/hosts`.
//! 2. **Volumes**: ready before any container starts (or the pod waits, `FailedMount`).
//! 3. **Observe**: each container's task in containerd; an exit seen for the first time
//!    becomes the run's termination (`OOMKilled` if the kernel killed it for memory).
//! 4. **Decide** ([`pkg::kubelet::actions::plan`]): the next init container, the
//!    containers to (re)start, those a failed liveness probe condemns.
//! 5. **Act**: kill, then (re)start, each restart only when its back-off allows.
//! 6. **Report**: the status, written only when it changed.
//!
//! Termination: SIGTERM to every container, SIGKILL once the grace period is over, the
//! final status (`Succeeded` or `Failed`), everything released, the object deleted.
//!
//! Upstream: pkg/kubelet/kubelet.go (SyncPod, SyncTerminatingPod), kuberuntime/kuberuntime_manager.go (SyncPod)

use super::container::{self, Sandbox};
use super::status::{self, Track};
use super::steps::Steps;
use super::worker::Next;
use super::{logs, prober, volumes, Ctx, NsSources};
use crate::runtime::{PodFiles, TaskState, LABEL_POD_UID};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use pkg::api::*;
use pkg::kubelet::{actions, backoff};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Resync a pod this often when nothing wakes its worker (the kubelet's
/// `--sync-frequency`, 1 min). What changes a pod's state wakes its worker at once: the pod
/// itself, its namespace's ConfigMaps and Secrets, a container's exit, a probe result; so
/// this pass only repairs what changed behind the kubelet's back (a veth deleted by hand).
pub const RESYNC: Duration = Duration::from_secs(60);

/// What a pod's worker remembers between passes.
#[derive(Default)]
pub struct PodState {
    pub tracks: HashMap<String, Track>,
    pub start_time: Option<Time>,
    pub last_status: Option<PodStatus>,
    /// When termination began, and whether SIGKILL was sent.
    pub terminating: Option<Instant>,
    pub killed: bool,
    pub probes: prober::Probes,
    recovered: bool,
}

impl PodState {
    pub fn stop_probes(&mut self) {
        self.probes.stop_all();
    }

    /// After an agent restart: restart counts, last terminations and times from the
    /// status the pod last reported.
    fn recover(&mut self, pod: &Pod) {
        if std::mem::replace(&mut self.recovered, true) {
            return;
        }
        self.start_time = pod.status.as_ref().and_then(|s| s.start_time.clone());
        let s = pod.status.clone().unwrap_or_default();
        for cs in s.container_statuses.iter().flatten().chain(s.init_container_statuses.iter().flatten()) {
            let tr = self.tracks.entry(cs.name.clone()).or_default();
            tr.restarts = cs.restart_count;
            tr.last = cs.last_state.as_ref().and_then(|l| l.terminated.clone());
            tr.started_at = cs.state.as_ref().and_then(|st| st.running.as_ref()).and_then(|r| r.started_at.clone());
        }
    }
}

fn ns_of(pod: &Pod) -> &str {
    pod.namespace().unwrap_or("default")
}

/// The network namespace, address and files of the pod; returns its IP and files.
async fn sandbox(ctx: &Ctx, pod: &Pod, uid: &str, steps: &mut Steps) -> anyhow::Result<(std::net::Ipv4Addr, std::path::PathBuf, PodFiles)> {
    let ns_name = super::netns_name(uid);
    let ip = ctx.ipam.allocate(uid)?;
    let netns = ctx.net.attach(&ns_name, ctx.pod_cidr, ip).await?;
    steps.mark("network");
    let dir = super::pod_dir(&ctx.cfg.state_dir, uid);
    std::fs::create_dir_all(&dir)?;
    let files = PodFiles { hosts: dir.join("hosts"), hostname: dir.join("hostname"), resolv: dir.join("resolv.conf") };
    let name = hostname(pod);
    let hosts =
        format!("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{ip}\t{name}\n");
    write_if_changed(&files.hosts, &hosts)?;
    write_if_changed(&files.hostname, &format!("{name}\n"))?;
    write_if_changed(&files.resolv, &resolv_conf(ctx, pod))?;
    Ok((ip, netns, files))
}

/// Write a file only if it does not hold `content` already: a pod is synced every minute,
/// and rewriting its three files each time was most of a steady pass's cost.
fn write_if_changed(path: &std::path::Path, content: &str) -> std::io::Result<()> {
    match std::fs::read(path) {
        Ok(now) if now == content.as_bytes() => Ok(()),
        _ => std::fs::write(path, content),
    }
}

/// The pod's `/etc/resolv.conf`, from its `dnsPolicy` and `dnsConfig`
/// ([`pkg::kubelet::dns::pod_resolv`]) and the node's own file.
fn resolv_conf(ctx: &Ctx, pod: &Pod) -> String {
    use pkg::kubelet::dns::{pod_resolv, DnsPolicy, Resolv};
    let spec = pod.spec.as_ref();
    let policy = DnsPolicy::of(spec.and_then(|s| s.dns_policy.as_deref()));
    let host = Resolv::parse(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default());
    let (resolv, fell_back) =
        pod_resolv(policy, spec.and_then(|s| s.dns_config.as_ref()), &ctx.cfg.dns, pod.namespace().unwrap_or("default"), &host);
    if fell_back {
        let msg = "pod: \"ClusterFirst\" policy specified without a cluster DNS (--cluster-dns); falling back to \"Default\" policy";
        ctx.recorder.event(pod, None, true, "MissingClusterDNS", msg);
    }
    resolv.render()
}

/// `spec.hostname`, else the pod's name.
pub fn hostname(pod: &Pod) -> String {
    pod.spec.as_ref().and_then(|s| s.hostname.clone()).filter(|h| !h.is_empty()).unwrap_or_else(|| pod.name().to_string())
}

/// Every container of the pod (init ones first), with its task's state; an exit seen for
/// the first time is recorded in its track.
async fn observe(ctx: &Ctx, pod: &Pod, st: &mut PodState) -> anyhow::Result<Vec<(Container, bool, TaskState)>> {
    let uid = pod.uid().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let all = spec.init_containers.iter().flatten().map(|c| (c.clone(), true)).chain(spec.containers.iter().map(|c| (c.clone(), false)));
    let mut out = vec![];
    for (c, init) in all {
        let id = super::container_id(uid, &c.name);
        let task = ctx.rt.task_state(&id).await?;
        let tr = st.tracks.entry(c.name.clone()).or_default();
        match &task {
            TaskState::Running { .. } => {
                if tr.started_at.is_none() {
                    tr.started_at = Some(now()); // adopted after an agent restart
                }
                if !ctx.copiers.lock().unwrap().contains(&id) {
                    let log = logs::file(&ctx.cfg.logs_dir, pod, &c.name, tr.restarts);
                    let dir = super::pod_dir(&ctx.cfg.state_dir, uid).join("io");
                    if ctx.rt.output_to(&dir, &c.name, &log, c.tty == Some(true)).is_ok() {
                        ctx.copiers.lock().unwrap().insert(id.clone());
                    }
                }
            }
            TaskState::Exited { code, at } if tr.exited.is_none() => {
                let oom = ctx.ooms.lock().unwrap().contains(&id) || (*code == 137 && crate::runtime::oom_killed(&id));
                let t = status::terminated(*code, at, tr.started_at.clone(), oom, &id);
                tracing::info!(pod = %pod.name(), container = %c.name, code, reason = ?t.reason, "container exited");
                tr.exited = Some((t, Instant::now()));
                tr.started_at = None;
                ctx.copiers.lock().unwrap().remove(&id);
                st.probes.forget(&c.name);
            }
            _ => {}
        }
        out.push((c, init, task));
    }
    Ok(out)
}

/// The container statuses of the observed containers: (init, regular).
fn statuses(pod: &Pod, st: &PodState, seen: &[(Container, bool, TaskState)]) -> (Vec<ContainerStatus>, Vec<ContainerStatus>) {
    let uid = pod.uid().unwrap_or_default();
    let has_init = seen.iter().any(|(_, init, _)| *init);
    let (mut init, mut regular) = (vec![], vec![]);
    for (c, is_init, task) in seen {
        let tr = st.tracks.get(&c.name).cloned().unwrap_or_default();
        let id = super::container_id(uid, &c.name);
        let s = status::container_status(c, &id, task, &tr, st.probes.started(c), st.probes.ready(c), has_init && !is_init);
        if *is_init {
            init.push(status::init_ready(s));
        } else {
            regular.push(s);
        }
    }
    (init, regular)
}

/// Start a container if its back-off allows; `Some(when)` to look again.
async fn restart(ctx: &Ctx, pod: &Pod, c: &Container, st: &mut PodState, sb: &Sandbox<'_>, steps: &mut Steps) -> Option<Duration> {
    let uid = pod.uid().unwrap_or_default();
    let key = format!("{uid}/{}", c.name);
    let tr = st.tracks.entry(c.name.clone()).or_default();
    let mut restart_no = tr.restarts;
    if let Some((_, seen)) = &tr.exited {
        let now = Instant::now();
        let mut b = ctx.crashes.lock().unwrap();
        if b.in_backoff_since(&key, *seen, now) {
            let wait = b.get(&key);
            let msg = backoff::crashloop_message(wait, &c.name, pod.name(), ns_of(pod), uid);
            let left = b.until(&key, *seen).map_or(wait, |t| t.saturating_duration_since(now));
            drop(b);
            if tr.waiting.as_ref().is_none_or(|w| w.0 != "CrashLoopBackOff") {
                let ev = format!("Back-off restarting failed container {} in pod {}_{}({uid})", c.name, pod.name(), ns_of(pod));
                ctx.recorder.event(pod, Some(&c.name), true, "BackOff", &ev);
            }
            tr.waiting = Some(("CrashLoopBackOff".into(), msg));
            return Some(left);
        }
        b.next(&key, now);
        restart_no += 1;
    }
    match container::start(ctx, pod, c, restart_no, sb, steps).await {
        Ok(()) => {
            let tr = st.tracks.entry(c.name.clone()).or_default();
            if let Some((t, _)) = tr.exited.take() {
                tr.last = Some(t);
                tr.restarts = restart_no;
            }
            tr.waiting = None;
            tr.started_at = Some(now());
            tr.run += 1;
            tr.stopping = false;
            None
        }
        Err(w) => {
            let retry = if w.0 == "ImagePullBackOff" || w.0 == "ErrImagePull" { Duration::from_secs(2) } else { Duration::from_secs(5) };
            st.tracks.entry(c.name.clone()).or_default().waiting = Some(w);
            Some(retry)
        }
    }
}

/// A pass over a pod that is to run.
pub async fn sync_pod(ctx: &Arc<Ctx>, pod: &Arc<Pod>, st: &mut PodState) -> anyhow::Result<Next> {
    let uid = pod.uid().unwrap_or_default().to_string();
    st.recover(pod);
    st.start_time.get_or_insert_with(now);
    let mut steps = Steps::default();
    let (ip, netns, files) = sandbox(ctx, pod, &uid, &mut steps).await?;
    steps.mark("files");
    let node = pkg::kubelet::env::Node {
        pod_ip: ip.to_string(),
        host_ip: ctx.cfg.node_ip.to_string(),
        allocatable_cpu_milli: ctx.allocatable.0,
        allocatable_memory: ctx.allocatable.1,
    };
    let dir = super::pod_dir(&ctx.cfg.state_dir, &uid);
    let vols = match volumes::prepare(pod, &dir, &NsSources { ctx, ns: ns_of(pod) }, &node) {
        Ok(v) => v,
        Err(msg) => {
            ctx.recorder.event(pod, None, true, "FailedMount", &msg);
            let seen = observe(ctx, pod, st).await?;
            report(ctx, pod, st, &seen, Some(ip), false).await?;
            return Ok(Next::After(Duration::from_secs(2)));
        }
    };
    steps.mark("volumes");
    let seen = observe(ctx, pod, st).await?;
    steps.mark("observe");
    let spec = pod.spec.clone().unwrap_or_default();
    let (init, regular) = statuses(pod, st, &seen);
    let plan = actions::plan(&spec, &init, &regular, &|c| st.probes.failed(c));
    let id = |name: &str| super::container_id(&uid, name);
    if plan.kill_pod {
        for (c, _, t) in &seen {
            if matches!(t, TaskState::Running { .. }) {
                container::signal(ctx, &id(&c.name), true).await;
            }
        }
    }
    let grace = Duration::from_secs(spec.termination_grace_period_seconds.unwrap_or(30).clamp(0, 3600) as u64);
    for (name, why) in &plan.kill {
        let tr = st.tracks.entry(name.clone()).or_default();
        if !std::mem::replace(&mut tr.stopping, true) {
            ctx.recorder.event(pod, Some(name), false, "Killing", why);
            container::stop(ctx, &id(name), grace);
        }
    }
    let hostname = hostname(pod);
    let pod_ip = ip.to_string();
    let sb = Sandbox { netns: &netns, files: &files, hostname: &hostname, pod_ip: &pod_ip, volumes: &vols };
    let mut next = RESYNC;
    let to_start: Vec<Container> = match plan.start_init {
        Some(i) => spec.init_containers.iter().flatten().nth(i).cloned().into_iter().collect(),
        None => plan.start.iter().filter_map(|n| actions::container(&spec, n).cloned()).collect(),
    };
    for c in &to_start {
        if let Some(d) = restart(ctx, pod, c, st, &sb, &mut steps).await {
            next = next.min(d);
        } else {
            next = Duration::from_millis(200); // see it running
        }
    }
    // Probes for every running container, one set per run.
    for (c, _, t) in &seen {
        if matches!(t, TaskState::Running { .. }) {
            let run = st.tracks.get(&c.name).map_or(0, |t| t.run);
            st.probes.ensure(ctx, pod, c, run, Instant::now(), &pod_ip);
        }
    }
    let seen = if to_start.is_empty() && plan.kill.is_empty() { seen } else { observe(ctx, pod, st).await? };
    steps.mark("observe");
    report(ctx, pod, st, &seen, Some(ip), false).await?;
    steps.mark("status");
    if !to_start.is_empty() {
        tracing::info!(pod = %pod.name(), total_ms = format!("{:.1}", steps.total_ms()), steps = %steps.summary(), "sync started containers");
    }
    Ok(Next::After(next))
}

/// Write the pod's status if it changed since the last write.
async fn report(
    ctx: &Ctx,
    pod: &Pod,
    st: &mut PodState,
    seen: &[(Container, bool, TaskState)],
    ip: Option<std::net::Ipv4Addr>,
    terminal: bool,
) -> anyhow::Result<()> {
    let (init, regular) = statuses(pod, st, seen);
    let status = status::pod_status(
        pod,
        init,
        regular,
        terminal,
        ip.map(|i| i.to_string()),
        &ctx.cfg.node_ip.to_string(),
        st.start_time.clone(),
        &now(),
    );
    let comparable = |s: &PodStatus| {
        let mut s = s.clone();
        s.conditions.iter_mut().flatten().for_each(|c| c.last_transition_time = None);
        s
    };
    if st.last_status.as_ref().map(comparable) == Some(comparable(&status)) {
        return Ok(());
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns_of(pod));
    let body = serde_json::json!({"status": status});
    match pods
        .patch_status(
            pod.name(),
            &PatchParams { field_manager: Some(super::node::MANAGER.into()), ..Default::default() },
            &Patch::Merge(&body),
        )
        .await
    {
        Ok(_) => st.last_status = Some(status),
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// A pod being deleted: SIGTERM, up to its grace period, SIGKILL, the final status,
/// everything released, then the object deleted for good (with its uid as precondition).
pub async fn terminate(ctx: &Arc<Ctx>, pod: &Arc<Pod>, st: &mut PodState) -> anyhow::Result<Next> {
    let uid = pod.uid().unwrap_or_default().to_string();
    st.recover(pod);
    st.probes.stop_all();
    let grace = Duration::from_secs(pod.metadata.deletion_grace_period_seconds.unwrap_or(30).clamp(0, 10 * 365 * 86400) as u64);
    let seen = observe(ctx, pod, st).await?;
    let running: Vec<&Container> =
        seen.iter().filter(|(_, _, t)| matches!(t, TaskState::Running { .. } | TaskState::Created)).map(|(c, _, _)| c).collect();
    let first = st.terminating.is_none();
    let since = *st.terminating.get_or_insert_with(Instant::now);
    if !running.is_empty() {
        let kill = since.elapsed() >= grace;
        for c in &running {
            let id = super::container_id(&uid, &c.name);
            if first {
                ctx.recorder.event(pod, Some(&c.name), false, "Killing", &format!("Stopping container {}", c.name));
                container::signal(ctx, &id, false).await;
            } else if kill && !st.killed {
                container::signal(ctx, &id, true).await;
            }
        }
        st.killed |= kill;
        return Ok(Next::After(grace.saturating_sub(since.elapsed()).clamp(Duration::from_millis(100), Duration::from_secs(1))));
    }
    let ip = ctx.ipam.lookup(&uid);
    report(ctx, pod, st, &seen, ip, true).await?;
    teardown(ctx, &uid).await?;
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns_of(pod));
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions { uid: Some(uid.clone()), resource_version: None }),
        ..Default::default()
    };
    match pods.delete(pod.name(), &dp).await {
        Err(kube::Error::Api(e)) if e.code != 404 && e.code != 409 => return Err(anyhow::anyhow!("deleting the pod: {}", e.message)),
        _ => tracing::info!(pod = %pod.name(), "pod stopped and removed"),
    }
    Ok(Next::Done)
}

/// Release everything of one pod: tasks, containers, snapshots, veth, netns, address,
/// files and logs.
pub async fn teardown(ctx: &Ctx, uid: &str) -> anyhow::Result<()> {
    for (id, labels) in ctx.rt.list().await? {
        if labels.get(LABEL_POD_UID).map(String::as_str) == Some(uid) {
            ctx.rt.kill(&id, libc::SIGKILL as u32).await?;
            for _ in 0..50 {
                if !matches!(ctx.rt.task_state(&id).await?, TaskState::Running { .. } | TaskState::Created) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            ctx.rt.delete_task(&id).await?;
            ctx.rt.delete_container(&id).await?;
            ctx.copiers.lock().unwrap().remove(&id);
        }
    }
    ctx.net.detach(&super::netns_name(uid)).await?;
    ctx.ipam.release(uid);
    let _ = std::fs::remove_dir_all(super::pod_dir(&ctx.cfg.state_dir, uid));
    if let Ok(rd) = std::fs::read_dir(&ctx.cfg.logs_dir) {
        for e in rd.flatten().filter(|e| e.file_name().to_string_lossy().ends_with(&format!("_{uid}"))) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    ctx.crashes.lock().unwrap().forget(&format!("{uid}/"));
    Ok(())
}
