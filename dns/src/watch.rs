//! The tables follow the cluster: two kube-rs reflectors (Services, EndpointSlices) keep
//! their stores in step with the API through list+watch, and after each burst of
//! changes the tables are rebuilt from both stores and swapped in whole. A query reads
//! whichever tables are current: the old ones or the new, never half of each. Until both
//! lists have arrived once the tables stay empty, and questions about cluster names are
//! answered as if the cluster had no names — the kubelet's readiness probe on `/ready`
//! keeps the pod out of the Service until then ([`READY`]).
//!
//! Upstream: coredns/coredns plugin/kubernetes (controller.go: dnsControl)

use futures::{FutureExt, Stream, StreamExt};
use hickory_server::proto::rr::Record;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use pkg::alloc::Cidr;
use pkg::api::{EndpointSlice, Service};
use pkg::dns::Records;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

/// The tables in use, how many times they were rebuilt, and the zone's SOA at that
/// serial (built once per rebuild, not per negative answer; none before the first).
#[derive(Default)]
pub struct Tables {
    pub records: Records,
    pub serial: u32,
    pub soa: Option<Record>,
}

/// The tables, shared by the watcher (which replaces them) and every query.
pub type Shared = Arc<RwLock<Tables>>;

/// What the tables are built for.
#[derive(Clone, Debug)]
pub struct Zone {
    pub domain: String,
    /// The ranges whose reverse names are ours (service and pod CIDRs).
    pub reverse: Vec<Cidr>,
    /// The TTL of the SOA (and so how long a negative answer may be cached).
    pub ttl: u32,
}

/// Whether both lists have arrived once (for `/ready`).
pub static READY: AtomicBool = AtomicBool::new(false);

/// A change seen by one of the two reflectors; `true` once its first list is complete.
fn changes<K>(api: Api<K>) -> (Store<K>, impl Stream<Item = Result<bool, watcher::Error>> + Send)
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .map(|ev| ev.map(|e| matches!(e, watcher::Event::InitDone)));
    (store, stream)
}

/// Keep `shared` in step with the cluster's Services and EndpointSlices; returns only
/// if both watches end.
pub async fn run(client: kube::Client, zone: Zone, shared: Shared) {
    let (services, svc_events) = changes(Api::<Service>::all(client.clone()));
    let (slices, slice_events) = changes(Api::<EndpointSlice>::all(client));
    let mut events = futures::stream::select(svc_events.map(|e| (0, e)), slice_events.map(|e| (1, e))).boxed();
    let mut listed = [false, false];
    while let Some(first) = events.next().await {
        // A burst of changes becomes one rebuild: take whatever else is already queued.
        let mut next = Some(first);
        while let Some((which, ev)) = next.take().or_else(|| events.next().now_or_never().flatten()) {
            match ev {
                Ok(done) => listed[which] |= done,
                Err(e) => tracing::warn!(error = %e, "watch failed; retrying"),
            }
        }
        if listed == [true, true] {
            rebuild(&zone, &services, &slices, &shared);
            READY.store(true, Ordering::Relaxed);
        }
    }
}

fn rebuild(zone: &Zone, services: &Store<Service>, slices: &Store<EndpointSlice>, shared: &Shared) {
    let (svcs, eps) = (services.state(), slices.state());
    let eps: Vec<&EndpointSlice> = eps.iter().map(|s| s.as_ref()).collect();
    let records = Records::build(&zone.domain, &zone.reverse, svcs.iter().map(|s| s.as_ref()), &eps);
    let mut t = shared.write().expect("tables lock");
    t.serial = t.serial.wrapping_add(1);
    tracing::debug!(serial = t.serial, names = records.len(), "tables rebuilt");
    t.records = records;
    t.soa = Some(crate::zone::soa(&zone.domain, t.serial, zone.ttl));
}
