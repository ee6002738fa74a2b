//! The container runtime side of the kubelet: containerd over its gRPC API (what CRI's
//! containerd plugin does for a real kubelet), in containerd namespace `k8s.io`.
//!
//! - images: use one already in containerd, or pull it ([`crate::registry`]) into the
//!   content store; unpack its layers into overlayfs snapshots (Snapshots.Prepare,
//!   Diff.Apply, Snapshots.Commit, keyed by the layers' chain IDs);
//! - containers: a writable snapshot on top of the image, an OCI runtime spec that joins
//!   the pod's network namespace, and a runc task whose stdout/stderr go to a log file.

use containerd_client::services::v1::container::Runtime as RuntimeSpec;
use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::diff_client::DiffClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, MountsRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::*;
use containerd_client::types::{Descriptor, Mount};
use futures::StreamExt;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tonic::transport::Channel;
use tonic::{Code, Request};

pub const NAMESPACE: &str = "k8s.io";
pub const SNAPSHOTTER: &str = "overlayfs";
/// Labels on every container the agent makes: which pod and which container it is.
pub const LABEL_POD_UID: &str = "io.ownkube.pod.uid";
pub const LABEL_POD: &str = "io.ownkube.pod";
pub const LABEL_CONTAINER: &str = "io.ownkube.container";

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("containerd: {0}")]
    Grpc(#[from] tonic::Status),
    #[error("containerd connection: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("image {0}: {1}")]
    Image(String, String),
}

impl RuntimeError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, RuntimeError::Grpc(s) if s.code() == Code::NotFound)
    }

    /// A container (or its snapshot) of that id is still there.
    pub fn is_already_exists(&self) -> bool {
        matches!(self, RuntimeError::Grpc(s) if s.code() == Code::AlreadyExists)
    }
}

type Result<T> = std::result::Result<T, RuntimeError>;

pub(crate) fn req<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut().insert("containerd-namespace", NAMESPACE.parse().expect("ascii"));
    r
}

/// A request made under a lease (see [`Runtime::lease`]).
fn leased<T>(msg: T, lease: &str) -> Request<T> {
    let mut r = req(msg);
    if let Ok(v) = lease.parse() {
        r.metadata_mut().insert("containerd-lease", v);
    }
    r
}

/// What an image says about how to run it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    /// The chain ID of the top layer: the snapshot a container's rootfs starts from.
    pub chain_id: String,
}

/// A container's task, as containerd sees it.
#[derive(Clone, Debug, PartialEq)]
pub enum TaskState {
    Missing,
    Created,
    Running { pid: u32 },
    Exited { code: u32, at: Option<String> },
}

#[derive(Clone)]
pub struct Runtime {
    channel: Channel,
}

/// `chainID(n) = sha256(chainID(n-1) + " " + diffID(n))`, `chainID(0) = diffID(0)`.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = vec![];
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => format!("sha256:{:x}", Sha256::digest(format!("{prev} {d}").as_bytes())),
        };
        out.push(next);
    }
    out
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

pub fn is_index(media_type: &str) -> bool {
    media_type.contains("image.index") || media_type.contains("manifest.list")
}

/// Pick this platform's manifest from an index.
pub fn pick_manifest(index: &Value) -> Option<&Value> {
    index["manifests"].as_array()?.iter().find(|m| m["platform"]["os"] == "linux" && m["platform"]["architecture"] == arch())
}

impl Runtime {
    pub async fn connect(socket: &Path) -> Result<Runtime> {
        let channel = containerd_client::connect(socket).await?;
        Ok(Runtime { channel })
    }

    pub(crate) fn channel(&self) -> Channel {
        self.channel.clone()
    }

    pub async fn read_blob(&self, digest: &str) -> Result<Vec<u8>> {
        let mut stream = ContentClient::new(self.channel.clone())
            .read(req(ReadContentRequest { digest: digest.into(), offset: 0, size: 0 }))
            .await?
            .into_inner();
        let mut out = vec![];
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk?.data);
        }
        Ok(out)
    }

    /// Write a blob into the content store (a no-op if it is there already).
    pub async fn write_blob(&self, digest: &str, data: Vec<u8>, labels: HashMap<String, String>) -> Result<()> {
        self.write_blob_leased(None, digest, data, labels).await
    }

    /// [`Runtime::write_blob`] under a lease: a pull's blobs are referenced by nothing until
    /// its manifest and image record are written.
    pub async fn write_blob_leased(&self, lease: Option<&str>, digest: &str, data: Vec<u8>, labels: HashMap<String, String>) -> Result<()> {
        let total = data.len() as i64;
        let reference = format!("ownkube-{digest}");
        let mut msgs = vec![];
        let mut offset = 0usize;
        for chunk in data.chunks(1 << 20) {
            msgs.push(WriteContentRequest {
                action: WriteAction::Write as i32,
                r#ref: reference.clone(),
                total,
                expected: digest.into(),
                offset: offset as i64,
                data: chunk.to_vec(),
                labels: HashMap::new(),
            });
            offset += chunk.len();
        }
        msgs.push(WriteContentRequest {
            action: WriteAction::Commit as i32,
            r#ref: reference,
            total,
            expected: digest.into(),
            offset: offset as i64,
            data: vec![],
            labels,
        });
        let stream = futures::stream::iter(msgs);
        let request = match lease {
            Some(l) => leased(stream, l),
            None => req(stream),
        };
        let resp = ContentClient::new(self.channel.clone()).write(request).await;
        match resp {
            Ok(r) => {
                let mut s = r.into_inner();
                while let Some(m) = s.next().await {
                    match m {
                        Err(e) if e.code() == Code::AlreadyExists => return Ok(()),
                        Err(e) => return Err(e.into()),
                        Ok(_) => {}
                    }
                }
                Ok(())
            }
            Err(e) if e.code() == Code::AlreadyExists => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The image record, if containerd has it.
    pub async fn image_target(&self, name: &str) -> Result<Option<Descriptor>> {
        match ImagesClient::new(self.channel.clone()).get(req(GetImageRequest { name: name.into() })).await {
            Ok(r) => Ok(r.into_inner().image.and_then(|i| i.target)),
            Err(e) if e.code() == Code::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Record an image name pointing at a manifest (or index).
    pub async fn create_image(&self, name: &str, target: Descriptor) -> Result<()> {
        let image = Image { name: name.into(), target: Some(target), ..Default::default() };
        let mut images = ImagesClient::new(self.channel.clone());
        match images.create(req(CreateImageRequest { image: Some(image.clone()), ..Default::default() })).await {
            Err(e) if e.code() == Code::AlreadyExists => {
                images.update(req(UpdateImageRequest { image: Some(image), ..Default::default() })).await?;
                Ok(())
            }
            r => r.map(|_| ()).map_err(Into::into),
        }
    }

    async fn json_blob(&self, digest: &str) -> Result<Value> {
        let bytes = self.read_blob(digest).await?;
        serde_json::from_slice(&bytes).map_err(|e| RuntimeError::Image(digest.into(), format!("not JSON: {e}")))
    }

    /// Read an image's config and make sure its layers are unpacked into snapshots.
    pub async fn prepare_image(&self, name: &str) -> Result<Option<ImageConfig>> {
        let Some(target) = self.image_target(name).await? else { return Ok(None) };
        let mut manifest = self.json_blob(&target.digest).await?;
        if is_index(&target.media_type) || manifest.get("manifests").is_some() {
            let m = pick_manifest(&manifest).ok_or_else(|| RuntimeError::Image(name.into(), format!("no linux/{} manifest", arch())))?;
            let digest = m["digest"].as_str().unwrap_or_default().to_string();
            manifest = self.json_blob(&digest).await?;
        }
        let config_digest = manifest["config"]["digest"].as_str().unwrap_or_default().to_string();
        let config = self.json_blob(&config_digest).await?;
        let layers: Vec<Descriptor> = manifest["layers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|l| Descriptor {
                media_type: l["mediaType"].as_str().unwrap_or_default().into(),
                digest: l["digest"].as_str().unwrap_or_default().into(),
                size: l["size"].as_i64().unwrap_or(0),
                annotations: HashMap::new(),
            })
            .collect();
        let diff_ids: Vec<String> =
            config["rootfs"]["diff_ids"].as_array().into_iter().flatten().filter_map(|d| d.as_str().map(String::from)).collect();
        if diff_ids.len() != layers.len() || layers.is_empty() {
            return Err(RuntimeError::Image(name.into(), "layers and diff_ids do not match".into()));
        }
        let chains = chain_ids(&diff_ids);
        // Under a lease until the image's config refers to the top snapshot.
        let lease = self.lease().await?;
        let unpacked = self.unpack(&lease, &layers, &chains).await;
        if unpacked.is_ok() {
            // Tell containerd's garbage collector the top snapshot belongs to this image.
            let labels = HashMap::from([(format!("containerd.io/gc.ref.snapshot.{SNAPSHOTTER}"), chains.last().unwrap().clone())]);
            let info = Info { digest: config_digest, labels, ..Default::default() };
            let mask = prost_types::FieldMask { paths: vec![format!("labels.containerd.io/gc.ref.snapshot.{SNAPSHOTTER}")] };
            let _ = ContentClient::new(self.channel.clone()).update(req(UpdateRequest { info: Some(info), update_mask: Some(mask) })).await;
        }
        self.end_lease(&lease).await;
        unpacked?;
        let c = &config["config"];
        let strings = |v: &Value| v.as_array().into_iter().flatten().filter_map(|s| s.as_str().map(String::from)).collect::<Vec<_>>();
        Ok(Some(ImageConfig {
            entrypoint: strings(&c["Entrypoint"]),
            cmd: strings(&c["Cmd"]),
            env: strings(&c["Env"]),
            working_dir: c["WorkingDir"].as_str().unwrap_or("").to_string(),
            chain_id: chains.last().unwrap().clone(),
        }))
    }

    async fn snapshot_exists(&self, key: &str) -> Result<bool> {
        match SnapshotsClient::new(self.channel.clone())
            .stat(req(StatSnapshotRequest { snapshotter: SNAPSHOTTER.into(), key: key.into() }))
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.code() == Code::NotFound => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Apply each layer on top of its parent and commit it under its chain ID.
    async fn unpack(&self, lease: &str, layers: &[Descriptor], chains: &[String]) -> Result<()> {
        let mut snaps = SnapshotsClient::new(self.channel.clone());
        for (i, (layer, chain)) in layers.iter().zip(chains).enumerate() {
            if self.snapshot_exists(chain).await? {
                continue;
            }
            let key = format!("extract-{}-{chain}", rand::random::<u32>());
            let parent = if i == 0 { String::new() } else { chains[i - 1].clone() };
            let mounts = snaps
                .prepare(leased(
                    PrepareSnapshotRequest { snapshotter: SNAPSHOTTER.into(), key: key.clone(), parent, labels: HashMap::new() },
                    lease,
                ))
                .await?
                .into_inner()
                .mounts;
            let applied = DiffClient::new(self.channel.clone())
                .apply(req(ApplyRequest { diff: Some(layer.clone()), mounts, payloads: HashMap::new(), sync_fs: false }))
                .await;
            let committed = match applied {
                Ok(_) => {
                    snaps
                        .commit(leased(
                            CommitSnapshotRequest {
                                snapshotter: SNAPSHOTTER.into(),
                                name: chain.clone(),
                                key: key.clone(),
                                labels: HashMap::new(),
                            },
                            lease,
                        ))
                        .await
                }
                Err(e) => Err(e),
            };
            if let Err(e) = committed {
                let _ = snaps.remove(req(RemoveSnapshotRequest { snapshotter: SNAPSHOTTER.into(), key })).await;
                if e.code() != Code::AlreadyExists {
                    return Err(e.into());
                }
            }
        }
        Ok(())
    }

    /// A containerd lease. containerd's garbage collector deletes every snapshot and blob
    /// nothing refers to, and runs whenever something is deleted: a snapshot just prepared
    /// for a container not created yet is such a thing (measured: 2 of 100 pods started
    /// together lost theirs while the previous 100 were being deleted). What is made under a
    /// lease is kept until the lease goes ([`Runtime::end_lease`]), or after an hour if the
    /// agent dies first. (containerd's CRI plugin does the same.)
    pub async fn lease(&self) -> Result<String> {
        let id = format!("ownkube-{:016x}", rand::random::<u64>());
        let expire = (jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1)).to_string();
        let labels = HashMap::from([("containerd.io/gc.expire".to_string(), expire)]);
        leases_client::LeasesClient::new(self.channel.clone()).create(req(CreateRequest { id: id.clone(), labels })).await?;
        Ok(id)
    }

    pub async fn end_lease(&self, id: &str) {
        let r = leases_client::LeasesClient::new(self.channel.clone()).delete(req(DeleteRequest { id: id.into(), sync: false })).await;
        if let Err(e) = r {
            tracing::warn!(lease = id, error = %e, "could not end a containerd lease; it expires within the hour");
        }
    }

    /// Create a container: its writable snapshot and its record with the OCI spec, under a
    /// lease until the record (which then keeps the snapshot) exists. A container or
    /// snapshot of that id left from before is an error ([`RuntimeError::is_already_exists`]):
    /// the caller removes it and tries again, so a new run never inherits an old spec.
    pub async fn create_container(
        &self,
        id: &str,
        image: &str,
        chain_id: &str,
        spec: &Value,
        labels: HashMap<String, String>,
    ) -> Result<()> {
        let lease = self.lease().await?;
        let r = self.create_container_leased(&lease, id, image, chain_id, spec, labels).await;
        self.end_lease(&lease).await;
        r
    }

    async fn create_container_leased(
        &self,
        lease: &str,
        id: &str,
        image: &str,
        chain_id: &str,
        spec: &Value,
        labels: HashMap<String, String>,
    ) -> Result<()> {
        let prepare =
            PrepareSnapshotRequest { snapshotter: SNAPSHOTTER.into(), key: id.into(), parent: chain_id.into(), labels: HashMap::new() };
        SnapshotsClient::new(self.channel.clone()).prepare(leased(prepare, lease)).await?;
        let container = Container {
            id: id.into(),
            image: image.into(),
            labels,
            runtime: Some(RuntimeSpec { name: "io.containerd.runc.v2".into(), options: None }),
            spec: Some(prost_types::Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
                value: serde_json::to_vec(spec).expect("spec serializes"),
            }),
            snapshotter: SNAPSHOTTER.into(),
            snapshot_key: id.into(),
            ..Default::default()
        };
        ContainersClient::new(self.channel.clone()).create(leased(CreateContainerRequest { container: Some(container) }, lease)).await?;
        Ok(())
    }

    /// Create and start the container's task with this stdio (paths of FIFOs the kubelet
    /// reads and writes, or `file://` URIs the shim appends to).
    pub async fn start_task(&self, id: &str, io: &Stdio) -> Result<u32> {
        let mounts: Vec<Mount> = SnapshotsClient::new(self.channel.clone())
            .mounts(req(MountsRequest { snapshotter: SNAPSHOTTER.into(), key: id.into() }))
            .await?
            .into_inner()
            .mounts;
        let mut tasks = TasksClient::new(self.channel.clone());
        let created = tasks
            .create(req(CreateTaskRequest {
                container_id: id.into(),
                rootfs: mounts,
                stdout: io.stdout.clone(),
                stderr: if io.terminal { String::new() } else { io.stderr.clone() },
                stdin: io.stdin.clone(),
                terminal: io.terminal,
                ..Default::default()
            }))
            .await?
            .into_inner();
        tasks.start(req(StartRequest { container_id: id.into(), exec_id: String::new() })).await?;
        Ok(created.pid)
    }

    /// containerd's task events: `(container id, exit code)` when a task exits, `(id, None)`
    /// when the kernel OOM-killed something in it. The stream ends if containerd goes away.
    pub async fn task_events(&self) -> Result<impl futures::Stream<Item = (String, Option<u32>)>> {
        use containerd_client::services::v1::events_client::EventsClient;
        use prost::Message;
        let filters = vec!["topic==\"/tasks/exit\"".to_string(), "topic==\"/tasks/oom\"".to_string()];
        let stream = EventsClient::new(self.channel.clone()).subscribe(req(SubscribeRequest { filters })).await?.into_inner();
        Ok(stream.filter_map(|e| async move {
            let e = e.ok()?;
            let any = e.event?;
            match e.topic.as_str() {
                "/tasks/exit" => containerd_client::events::TaskExit::decode(&any.value[..])
                    .ok()
                    .filter(|x| x.id == x.container_id)
                    .map(|x| (x.container_id, Some(x.exit_status))),
                "/tasks/oom" => containerd_client::events::TaskOom::decode(&any.value[..]).ok().map(|x| (x.container_id, None)),
                _ => None,
            }
        }))
    }

    pub async fn task_state(&self, id: &str) -> Result<TaskState> {
        match TasksClient::new(self.channel.clone()).get(req(GetRequest { container_id: id.into(), exec_id: String::new() })).await {
            Err(e) if e.code() == Code::NotFound => Ok(TaskState::Missing),
            Err(e) => Err(e.into()),
            Ok(r) => {
                let p = r.into_inner().process.unwrap_or_default();
                Ok(match p.status {
                    1 => TaskState::Created,
                    2 | 4 | 5 => TaskState::Running { pid: p.pid },
                    3 => TaskState::Exited { code: p.exit_status, at: p.exited_at.map(|t| timestamp(&t)) },
                    _ => TaskState::Missing,
                })
            }
        }
    }

    pub async fn kill(&self, id: &str, signal: u32) -> Result<()> {
        match TasksClient::new(self.channel.clone())
            .kill(req(KillRequest { container_id: id.into(), exec_id: String::new(), signal, all: true }))
            .await
        {
            Err(e) if e.code() != Code::NotFound && e.code() != Code::FailedPrecondition => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Remove a stopped task (its exit status is returned by containerd and dropped here).
    pub async fn delete_task(&self, id: &str) -> Result<()> {
        match TasksClient::new(self.channel.clone()).delete(req(DeleteTaskRequest { container_id: id.into() })).await {
            Err(e) if e.code() != Code::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Remove the container record and its snapshot.
    pub async fn delete_container(&self, id: &str) -> Result<()> {
        match ContainersClient::new(self.channel.clone()).delete(req(DeleteContainerRequest { id: id.into() })).await {
            Err(e) if e.code() != Code::NotFound => return Err(e.into()),
            _ => {}
        }
        match SnapshotsClient::new(self.channel.clone())
            .remove(req(RemoveSnapshotRequest { snapshotter: SNAPSHOTTER.into(), key: id.into() }))
            .await
        {
            Err(e) if e.code() != Code::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Every container the agent made: id and labels.
    pub async fn list(&self) -> Result<Vec<(String, HashMap<String, String>)>> {
        let filter = format!("labels.\"{LABEL_POD_UID}\"");
        let resp = ContainersClient::new(self.channel.clone()).list(req(ListContainersRequest { filters: vec![filter] })).await?;
        Ok(resp.into_inner().containers.into_iter().map(|c| (c.id, c.labels)).collect())
    }

    pub async fn snapshot_keys(&self) -> Result<Vec<String>> {
        let mut s = SnapshotsClient::new(self.channel.clone())
            .list(req(containerd_client::services::v1::snapshots::ListSnapshotsRequest {
                snapshotter: SNAPSHOTTER.into(),
                filters: vec![],
            }))
            .await?
            .into_inner();
        let mut out = vec![];
        while let Some(m) = s.next().await {
            out.extend(m?.info.into_iter().map(|i| i.name));
        }
        Ok(out)
    }
}

fn timestamp(t: &prost_types::Timestamp) -> String {
    chrono::DateTime::from_timestamp(t.seconds, t.nanos as u32)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// What a container runs: Kubernetes' rules for `command`/`args` over the image's
/// `Entrypoint`/`Cmd`: command replaces the entrypoint (and drops the image's Cmd), args
/// replace Cmd.
pub fn process_args(image: &ImageConfig, command: &[String], args: &[String]) -> Vec<String> {
    match (command.is_empty(), args.is_empty()) {
        (false, _) => command.iter().chain(args).cloned().collect(),
        (true, false) => image.entrypoint.iter().chain(args).cloned().collect(),
        (true, true) => image.entrypoint.iter().chain(&image.cmd).cloned().collect(),
    }
}

/// The image's environment with the container's on top (same name: the container wins).
pub fn process_env(image: &ImageConfig, env: &[(String, String)]) -> Vec<String> {
    let mut out: Vec<String> = image.env.iter().filter(|e| !env.iter().any(|(k, _)| e.starts_with(&format!("{k}=")))).cloned().collect();
    out.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
    if !out.iter().any(|e| e.starts_with("PATH=")) {
        out.insert(0, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    }
    out
}

/// Files every container of a pod shares: /etc/hosts, /etc/hostname, /etc/resolv.conf.
/// The cgroup every container of the agent runs in (below the node's own).
pub fn cgroup_path(id: &str) -> String {
    format!("/ownkube/{id}")
}

/// Whether the kernel OOM-killed something in a container's cgroup (v2 `memory.events`,
/// v1 `memory.oom_control`), for an exit whose OOM event was missed.
pub fn oom_killed(id: &str) -> bool {
    let count = |path: String, key: &str| {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.lines().find_map(|l| l.strip_prefix(key).and_then(|v| v.trim().parse::<u64>().ok())))
    };
    let p = cgroup_path(id);
    count(format!("/sys/fs/cgroup{p}/memory.events"), "oom_kill ")
        .or_else(|| count(format!("/sys/fs/cgroup/memory{p}/memory.oom_control"), "oom_kill "))
        .is_some_and(|n| n > 0)
}

/// A task's stdin, stdout and stderr: FIFO paths (or `file://` URIs); empty: none.
#[derive(Clone, Debug, Default)]
pub struct Stdio {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

pub struct PodFiles {
    pub hosts: PathBuf,
    pub hostname: PathBuf,
    pub resolv: PathBuf,
}

/// An OCI runtime spec (the `config.json` runc reads): the process, the pod's network
/// namespace, fresh pid/ipc/uts/mount namespaces, Docker's default capabilities.
pub fn oci_spec(args: &[String], env: &[String], cwd: &str, hostname: &str, netns: &Path, files: &PodFiles) -> Value {
    let caps = [
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FSETID",
        "CAP_FOWNER",
        "CAP_MKNOD",
        "CAP_NET_RAW",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETFCAP",
        "CAP_SETPCAP",
        "CAP_NET_BIND_SERVICE",
        "CAP_SYS_CHROOT",
        "CAP_KILL",
        "CAP_AUDIT_WRITE",
    ];
    let bind = |dest: &str, src: &Path, ro: bool| json!({"destination": dest, "type": "bind", "source": src, "options": if ro { json!(["rbind", "ro"]) } else { json!(["rbind", "rw"]) }});
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": env,
            "cwd": if cwd.is_empty() { "/" } else { cwd },
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": false},
        "hostname": hostname,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            bind("/etc/hosts", &files.hosts, false),
            bind("/etc/hostname", &files.hostname, false),
            bind("/etc/resolv.conf", &files.resolv, false)
        ],
        "linux": {
            "namespaces": [
                {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
                {"type": "network", "path": netns}
            ],
            "maskedPaths": ["/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
            "readonlyPaths": ["/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_oci_rule() {
        let d = vec!["sha256:a".to_string(), "sha256:b".to_string()];
        let c = chain_ids(&d);
        assert_eq!(c[0], "sha256:a");
        assert_eq!(c[1], format!("sha256:{:x}", Sha256::digest(b"sha256:a sha256:b")));
    }

    #[test]
    fn command_and_args_follow_kubernetes() {
        let img = ImageConfig { entrypoint: vec!["/entry".into()], cmd: vec!["--default".into()], ..Default::default() };
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(process_args(&img, &[], &[]), s(&["/entry", "--default"]));
        assert_eq!(process_args(&img, &[], &s(&["-x"])), s(&["/entry", "-x"]));
        assert_eq!(process_args(&img, &s(&["/bin/sh"]), &[]), s(&["/bin/sh"]));
        assert_eq!(process_args(&img, &s(&["/bin/sh"]), &s(&["-c", "true"])), s(&["/bin/sh", "-c", "true"]));
        let img = ImageConfig { env: vec!["A=1".into(), "PATH=/x".into()], ..Default::default() };
        assert_eq!(process_env(&img, &[("A".into(), "2".into())]), s(&["PATH=/x", "A=2"]));
    }
}
