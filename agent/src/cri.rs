//! The two plugins the kubelet drives, as traits: a container runtime (what CRI's
//! `RuntimeService` and `ImageService` give a real kubelet) and a pod network (what a CNI
//! plugin gives it). The kubelet's sync loop only ever calls these, so the same loop runs
//! on a real node (containerd over gRPC, [`crate::runtime::Runtime`]; veths and addresses
//! by rtnetlink, [`crate::network::Netlink`]) and on a hollow one ([`crate::hollow`]: pods
//! "run" in memory and get an address from the node's CIDR, nothing touches the kernel),
//! as kubemark's hollow kubelet runs the real kubelet on a fake CRI.
//!
//! Upstream: k8s.io/cri-api/pkg/apis/services.go, pkg/kubelet/dockershim/network (CNI)

use crate::exec::ExecRequest;
use crate::registry::Registries;
use crate::runtime::{ImageConfig, RuntimeError, Stdio, TaskState};
use futures::stream::BoxStream;
use pkg::alloc::Cidr;
use serde_json::Value;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

type Result<T> = std::result::Result<T, RuntimeError>;

/// Images, containers and their tasks (one process per container).
#[async_trait::async_trait]
pub trait ContainerRuntime: Send + Sync {
    /// The image's config if the image is present (and unpacked), `None` if not.
    async fn prepare_image(&self, name: &str) -> Result<Option<ImageConfig>>;
    /// Fetch an image from its registry; a message fit for `ErrImagePull` on failure.
    async fn pull_image(&self, http: &reqwest::Client, registries: &Registries, image: &str) -> std::result::Result<(), String>;
    /// Make a container (its rootfs on the image and its OCI spec); an earlier one of that
    /// id is an error ([`RuntimeError::is_already_exists`]).
    async fn create_container(&self, id: &str, image: &str, chain_id: &str, spec: &Value, labels: HashMap<String, String>) -> Result<()>;
    /// Start the container's process with this stdio; its pid.
    async fn start_task(&self, id: &str, io: &Stdio) -> Result<u32>;
    async fn task_state(&self, id: &str) -> Result<TaskState>;
    /// `(container id, exit code)` when a task exits, `(id, None)` for an OOM kill.
    async fn task_events(&self) -> Result<BoxStream<'static, (String, Option<u32>)>>;
    async fn kill(&self, id: &str, signal: u32) -> Result<()>;
    async fn delete_task(&self, id: &str) -> Result<()>;
    async fn delete_container(&self, id: &str) -> Result<()>;
    /// Every container the kubelet made: id and labels.
    async fn list(&self) -> Result<Vec<(String, HashMap<String, String>)>>;
    /// Run a command in a running container (an exec probe): exit code and up to 10 KiB of
    /// its output.
    async fn exec_probe(&self, id: &str, command: Vec<String>, dir: &Path) -> std::result::Result<(u32, Vec<u8>), String>;
    /// Where a container's stdout and stderr go: FIFOs copied into `log`, line by line
    /// (containerd), or nowhere (a hollow node).
    fn output_to(&self, fifo_dir: &Path, container: &str, log: &Path, tty: bool) -> std::io::Result<(String, String)>;
}

/// A pod's network: its namespace, interface and address, and the node's routes.
#[async_trait::async_trait]
pub trait PodNetwork: Send + Sync {
    /// The node's side, once at start: the bridge (the pods' gateway) and host settings.
    async fn prepare_node(&self, pod_cidr: Cidr, cluster_cidr: &str) -> anyhow::Result<()>;
    /// Give the pod `netns_name` its namespace and `ip`; the namespace's path.
    async fn attach(&self, netns_name: &str, pod_cidr: Cidr, ip: Ipv4Addr) -> anyhow::Result<PathBuf>;
    /// Remove the pod's interface and namespace.
    async fn detach(&self, netns_name: &str) -> anyhow::Result<()>;
    /// Pods' namespaces that exist now (by name), for sweeping those of pods now gone.
    fn namespaces(&self) -> Vec<String>;
    /// Whether pods reach other nodes' pods through routes this node must keep (one per
    /// node, from a watch of every Node): a hollow network reaches nothing.
    fn needs_routes(&self) -> bool {
        true
    }
    /// Reach another node's pod CIDR through that node's address.
    async fn ensure_route(&self, dest: Cidr, via: Ipv4Addr) -> anyhow::Result<()>;
    /// A TCP connection from the node to `addr` (a pod's, for a probe).
    async fn connect(&self, addr: SocketAddr, timeout: Duration) -> std::io::Result<tokio::net::TcpStream>;
}

#[async_trait::async_trait]
impl ContainerRuntime for crate::runtime::Runtime {
    async fn prepare_image(&self, name: &str) -> Result<Option<ImageConfig>> {
        crate::runtime::Runtime::prepare_image(self, name).await
    }
    async fn pull_image(&self, http: &reqwest::Client, registries: &Registries, image: &str) -> std::result::Result<(), String> {
        crate::registry::pull(self, http, registries, image).await
    }
    async fn create_container(&self, id: &str, image: &str, chain_id: &str, spec: &Value, labels: HashMap<String, String>) -> Result<()> {
        crate::runtime::Runtime::create_container(self, id, image, chain_id, spec, labels).await
    }
    async fn start_task(&self, id: &str, io: &Stdio) -> Result<u32> {
        crate::runtime::Runtime::start_task(self, id, io).await
    }
    async fn task_state(&self, id: &str) -> Result<TaskState> {
        crate::runtime::Runtime::task_state(self, id).await
    }
    async fn task_events(&self) -> Result<BoxStream<'static, (String, Option<u32>)>> {
        use futures::StreamExt;
        Ok(crate::runtime::Runtime::task_events(self).await?.boxed())
    }
    async fn kill(&self, id: &str, signal: u32) -> Result<()> {
        crate::runtime::Runtime::kill(self, id, signal).await
    }
    async fn delete_task(&self, id: &str) -> Result<()> {
        crate::runtime::Runtime::delete_task(self, id).await
    }
    async fn delete_container(&self, id: &str) -> Result<()> {
        crate::runtime::Runtime::delete_container(self, id).await
    }
    async fn list(&self) -> Result<Vec<(String, HashMap<String, String>)>> {
        crate::runtime::Runtime::list(self).await
    }
    async fn exec_probe(&self, id: &str, command: Vec<String>, dir: &Path) -> std::result::Result<(u32, Vec<u8>), String> {
        use tokio::io::AsyncReadExt;
        let r = ExecRequest { command, stdin: false, stdout: true, stderr: true, tty: false };
        let mut s = self.exec(id, &r, dir).await.map_err(|e| e.to_string())?;
        let mut out = vec![];
        for f in [s.stdout.take(), s.stderr.take()].into_iter().flatten() {
            let mut buf = vec![];
            let _ = f.take(10 * 1024).read_to_end(&mut buf).await;
            out.extend(buf);
        }
        let code = match s.exit.take() {
            Some(h) => h.await.unwrap_or(255),
            None => 255,
        };
        s.finish().await;
        Ok((code, out))
    }
    fn output_to(&self, fifo_dir: &Path, container: &str, log: &Path, tty: bool) -> std::io::Result<(String, String)> {
        crate::kubelet::logs::start_copiers(fifo_dir, container, log, tty)
    }
}
