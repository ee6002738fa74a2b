//! kube-proxy (iptables mode): watch Services and EndpointSlices, keep the `nat` table's KUBE-*
//! chains in step with them.
//!
//! Each sync renders the rules ([`pkg::proxy`]) and loads them with one
//! `iptables-restore --noflush`: either every change or none is visible. Changes that
//! arrive together are batched into one sync. A *full* sync (at start, after a failure, and
//! every `resync` period) writes every chain, ensures the jumps from the built-in chains
//! exist exactly once, and removes KUBE-SVC/KUBE-SEP chains nothing needs any more (read
//! from `iptables-save`); in between, a *partial* sync rewrites only the chains of the
//! services that changed. Rules not named KUBE-* are never touched, and the rules stay
//! in the kernel while the agent is down.
//!
//! Between syncs, what the informers say goes into a [`Cache`], which remembers which
//! services changed: a sync makes the ports of those again and shares the rest with the
//! last sync (kube-proxy's change trackers), so a sync during a rollout of one Deployment
//! costs that Deployment's services, not the cluster's.

pub mod explain;
pub mod healthcheck;
pub mod history;
pub mod iptables;
pub mod nftables;

use crate::client::{Change, Client};
use iptables::Runner;
use pkg::api::{EndpointSlice, Service};
use pkg::proxy::cache::{Cache, Changed};
use pkg::proxy::nftables as nft;
use pkg::proxy::{health_checks, jumps, key_of, service_ports, unsupported, Backend, Planner, Ports};
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// What `/debug/proxy` shows.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    /// The mode writing the rules (`--proxy-mode`).
    pub mode: Mode,
    pub syncs: u64,
    pub full_syncs: u64,
    pub failed_syncs: u64,
    pub last_sync_full: bool,
    pub last_sync_millis: f64,
    /// Of that, the time `iptables-restore` or `nft -f` took (the rest is planning).
    pub last_sync_apply_millis: f64,
    /// Service ports whose own chains the last sync wrote.
    pub last_sync_service_ports_written: usize,
    pub last_sync_chains_deleted: usize,
    /// `-A` rules in the last ruleset loaded.
    pub rules: usize,
    pub service_ports: usize,
    pub last_error: Option<String>,
    /// The text last fed to `iptables-restore --noflush`.
    pub last_ruleset: String,
}

/// Which of kube-proxy's two modes writes the rules (`--proxy-mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// KUBE-* chains in the `nat` and `filter` tables (`iptables-restore`).
    #[default]
    Iptables,
    /// One `ip ownkube` table with verdict maps (`nft -f`).
    Nftables,
}

/// What one sync applied, for `/debug/proxy`: rules written, service ports whose chains
/// were written, chains deleted, and the text loaded.
struct Synced {
    /// Milliseconds spent in `iptables-restore` / `nft -f`.
    apply_millis: f64,
    rules: usize,
    written: usize,
    deleted: usize,
    text: String,
}

/// The planner of the mode in use.
enum Engine {
    Iptables(Planner),
    Nftables(nft::Planner),
}

pub struct Proxier {
    runner: Runner,
    cluster_cidr: String,
    engine: Engine,
    /// This node's name: which endpoints are local, for the `Local` traffic policies.
    node_name: String,
    last_ports: Ports,
    need_full: bool,
    /// Whether the other mode's rules (left by an earlier run in that mode) are gone.
    other_mode_removed: bool,
    pub stats: Arc<Mutex<Stats>>,
    /// The last syncs, for `/debug/proxy/history`.
    pub history: Arc<history::History>,
    /// What happened since the last sync ([`Proxier::note`]), for its history record.
    triggers: Vec<String>,
}

impl Proxier {
    /// A proxier in iptables mode.
    pub fn new(runner: Runner, cluster_cidr: &str) -> Proxier {
        Self::with_mode(runner, cluster_cidr, Mode::Iptables)
    }

    pub fn with_mode(runner: Runner, cluster_cidr: &str, mode: Mode) -> Proxier {
        let engine = match mode {
            Mode::Iptables => Engine::Iptables(Planner::default()),
            Mode::Nftables => Engine::Nftables(nft::Planner::default()),
        };
        Proxier {
            runner,
            cluster_cidr: cluster_cidr.to_string(),
            engine,
            node_name: String::new(),
            last_ports: Ports::new(),
            need_full: true,
            other_mode_removed: false,
            stats: Arc::new(Mutex::new(Stats { mode, ..Default::default() })),
            history: Default::default(),
            triggers: vec![],
        }
    }

    /// The proxier of the node `name` (endpoints whose `nodeName` is this are local).
    pub fn on_node(mut self, name: &str) -> Proxier {
        self.node_name = name.to_string();
        self
    }

    /// The service ports the last successful sync programmed.
    pub fn ports(&self) -> &Ports {
        &self.last_ports
    }

    /// The node this proxier runs on.
    pub fn node(&self) -> &str {
        &self.node_name
    }

    /// Host settings kube-proxy needs: forwarding, and NodePorts on 127.0.0.1.
    pub async fn prepare_host(&self) {
        for (key, val) in [("net.ipv4.ip_forward", "1"), ("net.ipv4.conf.all.route_localnet", "1")] {
            let kv = format!("{key}={val}");
            if let Err(e) = self.runner.run("sysctl", &["-q", "-w", &kv]).await {
                tracing::warn!(%kv, error = %e, "could not set sysctl");
            }
        }
    }

    /// Say what the next sync is for ("EndpointSlice default/web-x1 modified"): its
    /// history record lists these.
    pub fn note(&mut self, trigger: String) {
        const MAX_TRIGGERS: usize = 50;
        if self.triggers.len() < MAX_TRIGGERS {
            self.triggers.push(trigger);
        }
    }

    /// Converge the kernel's rules to these services and endpoints.
    pub async fn sync(&mut self, services: &[&Service], backends: &BTreeMap<String, Vec<Backend>>) -> anyhow::Result<()> {
        self.sync_ports(service_ports(services.iter().copied(), backends, &self.node_name)).await
    }

    /// Converge the kernel's rules to these service ports (what [`Cache::ports`] made).
    pub async fn sync_ports(&mut self, ports: Ports) -> anyhow::Result<()> {
        let (start, time) = (Instant::now(), jiff::Timestamp::now().to_string());
        let full = self.need_full;
        let lines = match self.engine {
            Engine::Iptables(_) => pkg::proxy::history::Lines::Iptables,
            Engine::Nftables(_) => pkg::proxy::history::Lines::Nftables,
        };
        let (changes, diff) = pkg::proxy::history::summarize(&self.last_ports, &ports, &self.cluster_cidr, lines);
        let result = self.try_sync(ports, full).await;
        let millis = start.elapsed().as_secs_f64() * 1000.0;
        self.count(&result, full, millis);
        let error = result.as_ref().err().map(|e| format!("{e:#}"));
        let triggers = std::mem::take(&mut self.triggers);
        let record = history::SyncRecord { time, full, triggers, changes, millis, error, ..Default::default() };
        self.history.record(record.with_lines(diff));
        result
    }

    /// Count a sync in the statistics; after a failure, plan the next one full.
    fn count(&mut self, result: &anyhow::Result<()>, full: bool, millis: f64) {
        let mut st = self.stats.lock().unwrap();
        st.syncs += 1;
        st.last_sync_millis = millis;
        match result {
            Ok(()) => {
                self.need_full = false;
                st.last_error = None;
                if full {
                    st.full_syncs += 1;
                }
                st.last_sync_full = full;
            }
            Err(e) => {
                // Whatever is in the kernel now, the next sync rewrites it all.
                self.need_full = true;
                match &mut self.engine {
                    Engine::Iptables(p) => p.reset(),
                    Engine::Nftables(p) => p.reset(),
                }
                st.failed_syncs += 1;
                st.last_error = Some(format!("{e:#}"));
            }
        }
    }

    /// Ask for the next sync to be full (the periodic resync).
    pub fn request_full(&mut self) {
        self.need_full = true;
    }

    /// Whether stale nftables chains wait for the next sync to be deleted.
    pub fn pending(&self) -> bool {
        matches!(&self.engine, Engine::Nftables(p) if p.pending())
    }

    async fn try_sync(&mut self, ports: Ports, full: bool) -> anyhow::Result<()> {
        if !self.other_mode_removed {
            self.remove_other_mode().await;
        }
        let (runner, cidr) = (&self.runner, self.cluster_cidr.as_str());
        let Synced { apply_millis, rules, written, deleted, text } = match &mut self.engine {
            Engine::Iptables(planner) => sync_iptables(runner, cidr, planner, &ports, full).await?,
            Engine::Nftables(planner) => sync_nftables(runner, cidr, planner, &ports, full).await?,
        };
        self.clear_udp_conntrack(&ports).await;
        {
            let mut st = self.stats.lock().unwrap();
            st.rules = rules;
            st.last_sync_apply_millis = apply_millis;
            st.service_ports = ports.len();
            st.last_sync_service_ports_written = written;
            st.last_sync_chains_deleted = deleted;
            st.last_ruleset = text;
        }
        tracing::debug!(full, written, deleted, rules, "proxy synced");
        self.last_ports = ports;
        Ok(())
    }

    /// Remove what the other mode left if it ran on this node before (once per start, as
    /// kube-proxy's cleanup does): the `ip ownkube` table, or every KUBE-* chain and jump
    /// (a failure is told and tried again next sync, not fatal: our own rules work without it).
    async fn remove_other_mode(&mut self) {
        match self.engine {
            Engine::Iptables(_) => self.runner.nft_delete_table().await,
            Engine::Nftables(_) => {
                if let Err(e) = self.runner.remove_iptables_rules().await {
                    tracing::warn!(error = %e, "could not remove the iptables mode's rules");
                    return;
                }
            }
        }
        self.other_mode_removed = true;
    }

    /// UDP has no connection to close: conntrack keeps sending a flow to the endpoint it
    /// first picked. When an endpoint goes, delete its flows so clients move on.
    async fn clear_udp_conntrack(&self, ports: &Ports) {
        for (key, old) in self.last_ports.iter().filter(|(_, p)| p.protocol == "udp") {
            let still: Vec<&String> = ports.get(key).map(|p| p.endpoints.iter().map(|(ip, _)| ip).collect()).unwrap_or_default();
            for (ip, _) in old.endpoints.iter().filter(|(ip, _)| !still.contains(&ip)) {
                if let Some(cip) = &old.cluster_ip {
                    let _ = self.runner.run("conntrack", &["-D", "-p", "udp", "--orig-dst", cip, "--dst-nat", ip]).await;
                }
                if let Some(np) = old.node_port {
                    let _ = self.runner.run("conntrack", &["-D", "-p", "udp", "--orig-port-dst", &np.to_string(), "--dst-nat", ip]).await;
                }
            }
        }
    }
}

/// iptables mode: the jumps ensured (full syncs), then one `iptables-restore --noflush`.
async fn sync_iptables(runner: &Runner, cidr: &str, planner: &mut Planner, ports: &Ports, full: bool) -> anyhow::Result<Synced> {
    let mut existing = vec![];
    if full {
        // Every chain a service chain may jump to exists before the first restore.
        for (table, chains) in [
            ("nat", &["KUBE-SERVICES", "KUBE-POSTROUTING", "KUBE-MARK-MASQ", "KUBE-NODEPORTS"][..]),
            ("filter", &["KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES"][..]),
        ] {
            for c in chains {
                runner.ensure_chain(table, c).await?;
            }
        }
        for (table, chain, rule) in jumps() {
            runner.ensure_rule(table, chain, &rule).await?;
        }
        existing = iptables::chains(&runner.save("nat").await?);
    }
    let mut plan = planner.plan(cidr, ports, full, &existing);
    let t = Instant::now();
    for tx in &plan.transactions {
        runner.restore(tx).await?;
    }
    let out = Synced {
        apply_millis: t.elapsed().as_secs_f64() * 1000.0,
        rules: plan.ruleset.rules,
        written: plan.written,
        deleted: plan.deleted.len(),
        text: std::mem::take(&mut plan.ruleset.text),
    };
    planner.applied(plan);
    Ok(out)
}

/// nftables mode: each transaction of the plan through `nft -f -`, in order.
async fn sync_nftables(runner: &Runner, cidr: &str, planner: &mut nft::Planner, ports: &Ports, full: bool) -> anyhow::Result<Synced> {
    let mut existing = vec![];
    if full {
        existing = runner.nft_objects().await;
    }
    let plan = planner.plan(cidr, ports, full, &existing);
    let t = Instant::now();
    for tx in &plan.transactions {
        runner.nft_apply(tx).await?;
    }
    let out = Synced {
        apply_millis: t.elapsed().as_secs_f64() * 1000.0,
        rules: plan.rules,
        written: plan.written,
        deleted: plan.deleted.len(),
        text: plan.transactions.join(nft::NEXT_TRANSACTION),
    };
    planner.applied(plan);
    Ok(out)
}

// Each message lives for one hop through a channel; boxing would only add allocations.
#[allow(clippy::large_enum_variant)]
enum Msg {
    Svc(Change<Service>),
    Slice(Change<EndpointSlice>),
}

/// What the proxy tells the world besides the rules: events about Services it will not
/// program, and the health checks of `externalTrafficPolicy: Local` services.
#[derive(Default)]
pub struct Reporting {
    pub events: Option<events::Recorder>,
    pub health: healthcheck::HealthServers,
    /// `(service uid, message)` already reported, so each is said once per agent run.
    reported: HashSet<(String, String)>,
}

impl Reporting {
    /// Events from `kube-proxy` on `node` through `client`.
    pub fn with_events(client: kube::Client, node: &str) -> Reporting {
        Reporting { events: Some(events::Recorder::start(client, "kube-proxy", node)), ..Default::default() }
    }

    /// A hollow node's: events, and no health-check servers.
    pub fn hollow(client: kube::Client, node: &str) -> Reporting {
        Reporting { health: healthcheck::HealthServers::hollow(), ..Self::with_events(client, node) }
    }

    /// After a sync: report ports left out (SCTP) of the services that changed, and
    /// converge the health-check servers.
    async fn after_sync(&mut self, cache: &Cache, changed: &Changed, ports: &Ports) {
        let services = cache.services_in(changed);
        for (key, msg) in unsupported(services.iter().copied()) {
            let Some(svc) = services.iter().find(|s| key_of(**s) == key) else { continue };
            let uid = svc.metadata.uid.clone().unwrap_or_default();
            if self.reported.insert((uid, msg.clone())) {
                tracing::warn!(service = %key, "{msg}");
                if let Some(r) = &self.events {
                    r.event(pkg::events::object_ref(*svc), true, "UnsupportedProtocol", &msg);
                }
            }
        }
        self.health.sync(&health_checks(ports, cache.services())).await; // failures are logged, retried next sync
    }
}

/// How often the proxy syncs: a full sync every `resync` (`--iptables-resync-seconds`), and
/// no two syncs closer together than `min_sync` (kube-proxy's `--min-sync-period`: a
/// change after a quiet spell is synced at once; changes that keep coming are gathered
/// into one sync per period, so a node's CPU is not spent rewriting rules for every
/// endpoint of a rollout).
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub resync: Duration,
    pub min_sync: Duration,
}

impl Timing {
    /// A full resync every `resync`, changes synced as they come.
    pub fn every(resync: Duration) -> Timing {
        Timing { resync, min_sync: Duration::ZERO }
    }
}

/// What the informers said ([`Cache`]: which services changed since the last sync), and
/// whether both lists have arrived.
#[derive(Default)]
struct Seen {
    cache: Cache,
    have_svcs: bool,
    have_eps: bool,
}

impl Seen {
    /// Apply one informer message, noting it for the next sync's history record.
    fn apply(&mut self, m: Msg, proxier: &mut Proxier) {
        let cache = &mut self.cache;
        match m {
            Msg::Svc(c) => {
                self.have_svcs |= matches!(c, Change::Synced(_));
                proxier.note(describe("Service", &c, |k| cache.has_service(k)));
                match c {
                    Change::Synced(items) => cache.list_services(items),
                    Change::Upsert(o) => cache.apply_service(o),
                    Change::Deleted(o) => cache.delete_service(&key_of(&o)),
                }
            }
            Msg::Slice(c) => {
                self.have_eps |= matches!(c, Change::Synced(_));
                proxier.note(describe("EndpointSlice", &c, |k| cache.has_slice(k)));
                match c {
                    Change::Synced(items) => cache.list_slices(items),
                    Change::Upsert(o) => cache.apply_slice(o),
                    Change::Deleted(o) => cache.delete_slice(&key_of(&o)),
                }
            }
        }
    }
}

/// The proxy's loop: informers feed caches; each burst of changes becomes one sync (at
/// most one per `min_sync`); a failed sync is retried; every `resync` a full sync repairs
/// anything changed behind our back.
pub async fn run(client: Client, mut proxier: Proxier, timing: Timing, mut reporting: Reporting) {
    proxier.prepare_host().await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    client.spawn_informer("/api/v1/services".into(), tx.clone(), Msg::Svc);
    client.spawn_informer("/apis/discovery.k8s.io/v1/endpointslices".into(), tx, Msg::Slice);
    let mut seen = Seen::default();
    let mut dirty = false;
    let mut next_full = Instant::now() + timing.resync;
    let mut last_sync: Option<Instant> = None;
    loop {
        let wait = if dirty { Duration::from_secs(1) } else { next_full.saturating_duration_since(Instant::now()) };
        match tokio::time::timeout(wait, rx.recv()).await {
            Ok(None) => return,
            Ok(Some(first)) => {
                // Batch: take what is queued, and what arrives in the next few milliseconds
                // (or until `min_sync` has passed since the last sync).
                let hold = last_sync.map_or(Duration::ZERO, |t| timing.min_sync.saturating_sub(t.elapsed()));
                tokio::time::sleep(hold.max(Duration::from_millis(5))).await;
                let mut next = Some(first);
                while let Some(m) = next.take().or_else(|| rx.try_recv().ok()) {
                    seen.apply(m, &mut proxier);
                }
                dirty = true;
            }
            Err(_) if Instant::now() >= next_full => {
                proxier.note("periodic full resync".into());
                proxier.request_full();
                next_full = Instant::now() + timing.resync;
                dirty = true;
            }
            Err(_) => proxier.note("retry, or deleting what the last sync flushed".into()),
        }
        // Never sync from half a picture: wait until both lists have arrived once.
        if !(dirty && seen.have_svcs && seen.have_eps) {
            continue;
        }
        last_sync = Some(Instant::now());
        // Only the services that changed get their ports made again.
        let (ports, changed) = seen.cache.ports(proxier.ports(), proxier.node());
        match proxier.sync_ports(ports).await {
            // Stale nftables chains are deleted by the next sync: make it come (after 1 s).
            Ok(()) => {
                dirty = proxier.pending();
                reporting.after_sync(&seen.cache, &changed, proxier.ports()).await;
            }
            Err(e) => {
                // What this sync was planned from never reached the kernel.
                seen.cache.mark_all();
                tracing::error!(error = %format!("{e:#}"), "proxy sync failed; retrying with a full sync")
            }
        }
    }
}

/// One line for the history: what a watch event did to the proxy's cache
/// ("EndpointSlice default/web-x1 modified (resourceVersion 812)").
fn describe<T: pkg::api::Object>(kind: &str, change: &Change<T>, known: impl Fn(&str) -> bool) -> String {
    let rv = |o: &T| o.meta().resource_version.as_ref().map(|v| format!(" (resourceVersion {v})")).unwrap_or_default();
    match change {
        Change::Synced(items) => format!("{kind} list: {} object(s)", items.len()),
        Change::Upsert(o) if known(&key_of(o)) => format!("{kind} {} modified{}", key_of(o), rv(o)),
        Change::Upsert(o) => format!("{kind} {} added{}", key_of(o), rv(o)),
        Change::Deleted(o) => format!("{kind} {} deleted", key_of(o)),
    }
}
