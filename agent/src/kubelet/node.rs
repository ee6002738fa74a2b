//! The node itself: register it (or find it again after a restart), renew its Lease in
//! `kube-node-lease` every 10 s (the heartbeat the node lifecycle controller watches), and
//! post its NodeStatus (addresses, capacity, nodeInfo, the Ready condition) when it
//! changes or every 5 minutes. These run on their own tasks, so no pod's work (a slow
//! image pull, a long grace period) can delay a heartbeat.
//!
//! Upstream: pkg/kubelet/kubelet_node_status.go, k8s.io/component-helpers/apimachinery/lease

use super::Config;
use crate::proxy::iptables::Runner;
use k8s_openapi::api::core::v1::{DaemonEndpoint, NodeDaemonEndpoints, NodeSystemInfo};
use kube::api::{Api, Patch, PatchParams, PostParams};
use pkg::alloc::Cidr;
use pkg::api::*;
use pkg::kubelet::node as decide;
use serde_json::json;
use std::time::{Duration, Instant};

pub const MANAGER: &str = "kubelet";

/// Create the Node if it does not exist (a restarted agent finds its own, CIDR and all).
pub async fn register(client: &kube::Client, cfg: &Config) -> anyhow::Result<Node> {
    let nodes: Api<Node> = Api::all(client.clone());
    loop {
        match nodes.get_opt(&cfg.node_name).await {
            Ok(Some(n)) => return Ok(n),
            Ok(None) => {
                let node: Node = serde_json::from_value(json!({
                    "metadata": {"name": cfg.node_name, "labels": {"kubernetes.io/hostname": cfg.node_name, "kubernetes.io/os": "linux", "kubernetes.io/arch": go_arch()}},
                    "status": {"addresses": [{"type": "InternalIP", "address": cfg.node_ip.to_string()}, {"type": "Hostname", "address": cfg.node_name}]}
                }))?;
                match nodes.create(&PostParams { field_manager: Some(MANAGER.into()), ..Default::default() }, &node).await {
                    Ok(n) => return Ok(n),
                    Err(kube::Error::Api(e)) if e.code == 409 => continue,
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

/// What the node can give pods: cpu (milli) and memory (bytes).
pub fn allocatable() -> (i64, i64) {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as i64;
    (cpus * 1000, meminfo_kib() as i64 * 1024)
}

/// The NodeStatus this agent reports: Ready since `since`, heartbeat `now`.
pub fn status(cfg: &Config, now: &Time, since: &Time) -> NodeStatus {
    let (cpu, mem) = allocatable();
    let cap: std::collections::BTreeMap<String, Quantity> = [
        ("cpu".to_string(), Quantity((cpu / 1000).to_string())),
        ("memory".into(), Quantity(format!("{}Ki", mem / 1024))),
        ("pods".into(), Quantity("110".into())),
    ]
    .into();
    let version = format!("v1.32.0-ownkube.{}", env!("CARGO_PKG_VERSION"));
    let ready = NodeCondition {
        type_: "Ready".into(),
        status: "True".into(),
        reason: Some("KubeletReady".into()),
        message: Some("kubelet is posting ready status".into()),
        last_heartbeat_time: Some(now.clone()),
        last_transition_time: Some(since.clone()),
    };
    NodeStatus {
        addresses: Some(vec![
            NodeAddress { type_: "InternalIP".into(), address: cfg.node_ip.to_string() },
            NodeAddress { type_: "Hostname".into(), address: cfg.node_name.clone() },
        ]),
        capacity: Some(cap.clone()),
        allocatable: Some(cap),
        conditions: Some(vec![ready]),
        node_info: Some(NodeSystemInfo {
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
        }),
        daemon_endpoints: Some(NodeDaemonEndpoints { kubelet_endpoint: Some(DaemonEndpoint { port: cfg.port.into() }) }),
        ..Default::default()
    }
}

/// Renew the Lease every `cfg.lease_renew`, forever.
pub async fn lease_loop(client: kube::Client, cfg: Config, node_uid: Option<String>) {
    let leases: Api<Lease> = Api::namespaced(client, decide::LEASE_NAMESPACE);
    let pp = PatchParams::apply(MANAGER).force();
    loop {
        let l = decide::lease(&cfg.node_name, node_uid.as_deref(), now_micro());
        if let Err(e) = leases.patch(&cfg.node_name, &pp, &Patch::Apply(&l)).await {
            tracing::warn!(error = %e, "lease renewal failed");
        }
        tokio::time::sleep(cfg.lease_renew).await;
    }
}

/// Post the node's status when the server's copy differs from it (heartbeat times aside:
/// also when the node lifecycle controller marked the node `Unknown`) or every 5 minutes.
pub async fn status_loop(client: kube::Client, cfg: Config) {
    let nodes: Api<Node> = Api::all(client);
    let mut last: Option<Instant> = None;
    let since = now();
    loop {
        let now = now();
        let mine = Node { status: Some(status(&cfg, &now, &since)), ..Default::default() };
        let server = nodes.get_opt(&cfg.node_name).await.ok().flatten().unwrap_or_default();
        let due = last.is_none_or(|at| at.elapsed() >= decide::STATUS_REPORT_EVERY) || decide::status_changed(&server, &mine);
        if due {
            let body = json!({"status": mine.status});
            match nodes
                .patch_status(
                    &cfg.node_name,
                    &PatchParams { field_manager: Some(MANAGER.into()), ..Default::default() },
                    &Patch::Strategic(body),
                )
                .await
            {
                Ok(_) => last = Some(Instant::now()),
                Err(e) => tracing::warn!(error = %e, "node status update failed"),
            }
        }
        tokio::time::sleep(decide::STATUS_CHECK_EVERY.min(cfg.lease_renew)).await;
    }
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
pub async fn prepare_host(r: &Runner, cluster_cidr: &str, pod_cidr: Cidr) {
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
        cluster_cidr,
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
