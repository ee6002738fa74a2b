//! One container: start it (image, environment, mounts, cgroup limits, stdio and logs),
//! and stop it (SIGTERM, then SIGKILL when the grace period is over). Every (re)start
//! makes the container afresh (a new rootfs on the image, as Kubernetes gives a restarted
//! container), and each step that fails says why in the container's waiting reason:
//! `ErrImagePull`/`ImagePullBackOff`, `CreateContainerConfigError`, `RunContainerError`.
//!
//! Upstream: pkg/kubelet/kuberuntime/kuberuntime_container.go (startContainer, killContainer), pkg/kubelet/images/image_manager.go

use super::steps::Steps;
use super::{logs, volumes, Ctx, NsSources};
use crate::runtime::{self, ImageConfig, PodFiles, Stdio, LABEL_CONTAINER, LABEL_POD, LABEL_POD_UID};
use pkg::api::*;
use pkg::kubelet::{env, resources};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Why a container is not running: the waiting reason and its message.
pub type Waiting = (String, String);

/// Whether an image has a tag of `latest` (or none): those are pulled `Always` by default.
fn pull_policy(c: &Container) -> &str {
    c.image_pull_policy.as_deref().unwrap_or("IfNotPresent")
}

/// The image, from containerd or pulled, as its policy says; pulls back off per image.
pub async fn ensure_image(ctx: &Ctx, pod: &Pod, c: &Container) -> Result<ImageConfig, Waiting> {
    let image = c.image.clone().unwrap_or_default();
    let policy = pull_policy(c).to_string();
    let err = |r: &str, m: String| (r.to_string(), m);
    let mut cache = ctx.images.lock().await;
    let present = match cache.get(&image) {
        Some(cfg) => Some(cfg.clone()),
        None => ctx.rt.prepare_image(&image).await.map_err(|e| err("ErrImagePull", e.to_string()))?,
    };
    if let Some(cfg) = present.filter(|_| policy != "Always") {
        cache.insert(image.clone(), cfg.clone());
        return Ok(cfg);
    }
    if policy == "Never" {
        let msg = format!("Container image \"{image}\" is not present with pull policy of Never");
        ctx.recorder.event(pod, Some(&c.name), true, "ErrImageNeverPull", &msg);
        return Err(err("ErrImageNeverPull", msg));
    }
    let key = format!("{}_{image}", pod.uid().unwrap_or_default());
    if ctx.pulls.lock().unwrap().in_backoff_since_update(&key, Instant::now()) {
        let msg = format!("Back-off pulling image \"{image}\"");
        ctx.recorder.event(pod, Some(&c.name), false, "BackOff", &msg);
        let last = ctx.pull_errors.lock().unwrap().get(&key).cloned().unwrap_or_default();
        return Err(err("ImagePullBackOff", format!("{msg}: ErrImagePull: {last}")));
    }
    ctx.recorder.event(pod, Some(&c.name), false, "Pulling", &format!("Pulling image \"{image}\""));
    let t = Instant::now();
    // Other pods' pulls go on meanwhile: the cache lock is not held while pulling.
    drop(cache);
    let pulled = async {
        ctx.rt.pull_image(&ctx.http, &ctx.cfg.registries, &image).await?;
        ctx.rt.prepare_image(&image).await.map_err(|e| e.to_string())?.ok_or_else(|| "image vanished after pull".to_string())
    }
    .await;
    match pulled {
        Ok(cfg) => {
            let msg = format!("Successfully pulled image \"{image}\" in {:.3}s", t.elapsed().as_secs_f64());
            ctx.recorder.event(pod, Some(&c.name), false, "Pulled", &msg);
            ctx.images.lock().await.insert(image, cfg.clone());
            Ok(cfg)
        }
        Err(e) => {
            ctx.pulls.lock().unwrap().next(&key, Instant::now());
            ctx.pull_errors.lock().unwrap().insert(key, e.clone());
            ctx.recorder.event(pod, Some(&c.name), true, "Failed", &format!("Failed to pull image \"{image}\": {e}"));
            Err(err("ErrImagePull", e))
        }
    }
}

/// What the rest of a start needs from the pod's sandbox.
pub struct Sandbox<'a> {
    pub netns: &'a Path,
    pub files: &'a PodFiles,
    pub hostname: &'a str,
    pub pod_ip: &'a str,
    pub volumes: &'a BTreeMap<String, PathBuf>,
}

/// The OCI spec of a container.
fn spec(
    id: &str,
    c: &Container,
    img: &ImageConfig,
    env: &[(String, String)],
    sb: &Sandbox<'_>,
    mounts: &[volumes::Mount],
) -> Result<serde_json::Value, Waiting> {
    let config_err = |m: String| ("CreateContainerConfigError".to_string(), m);
    let command = env::expand_command(c.command.as_deref().unwrap_or(&[]), env);
    let args = env::expand_command(c.args.as_deref().unwrap_or(&[]), env);
    let argv = runtime::process_args(img, &command, &args);
    if argv.is_empty() {
        return Err(config_err("no command specified".into()));
    }
    let envs = runtime::process_env(img, env);
    let cwd = c.working_dir.clone().unwrap_or(img.working_dir.clone());
    let mut s = runtime::oci_spec(&argv, &envs, &cwd, sb.hostname, sb.netns, sb.files);
    s["process"]["terminal"] = json!(c.tty == Some(true));
    s["linux"]["resources"] = resources::linux_resources(c).map_err(config_err)?;
    s["linux"]["cgroupsPath"] = json!(runtime::cgroup_path(id));
    let extra = s["mounts"].as_array_mut().expect("spec has mounts");
    for m in mounts {
        let opts = if m.read_only { json!(["rbind", "ro"]) } else { json!(["rbind", "rw"]) };
        extra.push(json!({"destination": m.destination, "type": "bind", "source": m.source, "options": opts}));
    }
    Ok(s)
}

/// Start (or restart) one container: made afresh, its output into log file `restart`.
pub async fn start(ctx: &Ctx, pod: &Pod, c: &Container, restart: i32, sb: &Sandbox<'_>, steps: &mut Steps) -> Result<(), Waiting> {
    let uid = pod.uid().unwrap_or_default();
    let id = super::container_id(uid, &c.name);
    let img = ensure_image(ctx, pod, c).await?;
    steps.mark("image");
    let node = env::Node {
        pod_ip: sb.pod_ip.into(),
        host_ip: ctx.cfg.node_ip.to_string(),
        allocatable_cpu_milli: ctx.allocatable.0,
        allocatable_memory: ctx.allocatable.1,
    };
    let ns = pod.namespace().unwrap_or("default");
    let failed = |r: &str, m: String| {
        ctx.recorder.event(pod, Some(&c.name), true, "Failed", &format!("Error: {m}"));
        (r.to_string(), m)
    };
    let env = env::make_env(pod, c, &NsSources { ctx, ns }, &node).map_err(|m| failed("CreateContainerConfigError", m))?;
    let mounts = volumes::mounts(pod, c, sb.volumes).map_err(|m| failed("CreateContainerConfigError", m))?;
    let spec = spec(&id, c, &img, &env, sb, &mounts)?;
    ctx.ooms.lock().unwrap().remove(&id);
    let labels = HashMap::from([
        (LABEL_POD_UID.to_string(), uid.to_string()),
        (LABEL_POD.to_string(), format!("{ns}/{}", pod.name())),
        (LABEL_CONTAINER.to_string(), c.name.clone()),
    ]);
    let image = c.image.clone().unwrap_or_default();
    let create = || ctx.rt.create_container(&id, &image, &img.chain_id, &spec, labels.clone());
    let _turn = ctx.starts.turn().await;
    steps.mark("queued");
    create_fresh(ctx, &id, restart == 0, create).await.map_err(|e| failed("CreateContainerError", e.to_string()))?;
    ctx.recorder.event(pod, Some(&c.name), false, "Created", &format!("Created container {}", c.name));
    steps.mark("create");
    let dir = super::pod_dir(&ctx.cfg.state_dir, uid);
    let tty = c.tty == Some(true);
    let log = logs::file(&ctx.cfg.logs_dir, pod, &c.name, restart);
    let (stdout, stderr) = ctx.rt.output_to(&dir.join("io"), &c.name, &log, tty).map_err(|e| failed("RunContainerError", e.to_string()))?;
    ctx.copiers.lock().unwrap().insert(id.clone());
    let stdin = match c.stdin == Some(true) {
        true => {
            let p = super::stdin_path(&ctx.cfg.state_dir, uid, &c.name);
            if !p.exists() {
                crate::exec::mkfifo(&p).map_err(|e| failed("RunContainerError", e.to_string()))?;
            }
            p.display().to_string()
        }
        false => String::new(),
    };
    let io = Stdio { stdin, stdout, stderr, terminal: tty };
    steps.mark("io");
    if let Err(e) = ctx.rt.start_task(&id, &io).await {
        let _ = ctx.rt.delete_task(&id).await;
        return Err(failed("RunContainerError", e.to_string()));
    }
    steps.mark("start_task");
    ctx.recorder.event(pod, Some(&c.name), false, "Started", &format!("Started container {}", c.name));
    Ok(())
}

/// A fresh container each run. A restart has the old one in the way, so its task and
/// record go first; a first run (`first`) usually has nothing to remove, and creates
/// straight away — three containerd calls fewer — unless containerd says one is left (an
/// agent that died between create and start).
async fn create_fresh<F, Fut>(ctx: &Ctx, id: &str, first: bool, create: F) -> Result<(), runtime::RuntimeError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), runtime::RuntimeError>>,
{
    if first {
        match create().await {
            Err(e) if e.is_already_exists() => tracing::debug!(container = id, "an earlier container is left: removing it"),
            done => return done,
        }
    }
    let _ = ctx.rt.delete_task(id).await;
    let _ = ctx.rt.delete_container(id).await;
    create().await
}

/// Stop a container the way the kubelet does: SIGTERM now, SIGKILL if it still runs
/// after `grace` (a shell as PID 1 ignores SIGTERM). Runs in the background.
pub fn stop(ctx: &std::sync::Arc<Ctx>, id: &str, grace: std::time::Duration) {
    let (ctx, id) = (ctx.clone(), id.to_string());
    tokio::spawn(async move {
        signal(&ctx, &id, false).await;
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !matches!(ctx.rt.task_state(&id).await, Ok(runtime::TaskState::Running { .. })) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        signal(&ctx, &id, true).await;
    });
}

/// Ask a container to stop (SIGTERM); SIGKILL when `force`.
pub async fn signal(ctx: &Ctx, id: &str, force: bool) {
    let sig = if force { libc::SIGKILL } else { libc::SIGTERM };
    if let Err(e) = ctx.rt.kill(id, sig as u32).await {
        tracing::warn!(container = id, error = %e, "kill failed");
    }
}
