//! The proxy's picture of the cluster, kept change by change, and which services changed
//! since the last sync.
//!
//! A proxy watches every Service and every EndpointSlice of the cluster, and syncs about
//! once a second while a rollout goes on. Building every service port from every slice at
//! each sync costs what the cluster holds (at 1,500 services, 15,000 endpoints made again
//! each time); kube-proxy's change trackers make a sync cost what *changed*. This cache does
//! the same:
//!
//! - each Service or EndpointSlice change marks the service it belongs to (a slice names
//!   its service in the `kubernetes.io/service-name` label; a relabelled slice marks both);
//! - [`Cache::ports`] rebuilds the backends and service ports of the marked services only,
//!   and shares (`Arc`) every other port with the last sync's map ([`update_ports`]);
//! - a relist (a watch that had to start over) marks everything, and so does
//!   [`Cache::mark_all`], which the proxy calls after a failed sync (what it had planned
//!   from was never loaded).
//!
//! Upstream: pkg/proxy/servicechangetracker.go, endpointschangetracker.go, endpointslicecache.go

use super::{backends_from_slices, key_of, service_of, update_ports, Backend, Ports};
use crate::api::{EndpointSlice, Service};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Which services a sync must look at again.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Changed {
    /// These (`namespace/name`).
    Some(BTreeSet<String>),
    /// All of them: the first sync, after a relist, after a failed sync.
    #[default]
    All,
}

impl Changed {
    fn mark(&mut self, key: String) {
        if let Changed::Some(set) = self {
            set.insert(key);
        }
    }

    pub fn is_empty(&self) -> bool {
        matches!(self, Changed::Some(set) if set.is_empty())
    }
}

/// Services and EndpointSlices as the informers last said, indexed by service.
#[derive(Debug, Default)]
pub struct Cache {
    services: HashMap<String, Service>,
    slices: HashMap<String, EndpointSlice>,
    /// Service → the slices labelled with it.
    slices_of: HashMap<String, BTreeSet<String>>,
    /// Service → its backends, as of the last [`Cache::ports`].
    backends: BTreeMap<String, Vec<Backend>>,
    changed: Changed,
}

impl Cache {
    pub fn has_service(&self, key: &str) -> bool {
        self.services.contains_key(key)
    }

    pub fn has_slice(&self, key: &str) -> bool {
        self.slices.contains_key(key)
    }

    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.services.values()
    }

    /// Those of `changed` that exist.
    pub fn services_in<'a>(&'a self, changed: &'a Changed) -> Vec<&'a Service> {
        match changed {
            Changed::All => self.services.values().collect(),
            Changed::Some(keys) => keys.iter().filter_map(|k| self.services.get(k)).collect(),
        }
    }

    /// A Service was added or modified.
    pub fn apply_service(&mut self, svc: Service) {
        let key = key_of(&svc);
        self.changed.mark(key.clone());
        self.services.insert(key, svc);
    }

    pub fn delete_service(&mut self, key: &str) {
        self.changed.mark(key.to_string());
        self.services.remove(key);
    }

    /// A fresh list of every Service.
    pub fn list_services(&mut self, items: Vec<Service>) {
        self.services = items.into_iter().map(|s| (key_of(&s), s)).collect();
        self.changed = Changed::All;
    }

    /// An EndpointSlice was added or modified.
    pub fn apply_slice(&mut self, slice: EndpointSlice) {
        let key = key_of(&slice);
        self.delete_slice(&key);
        if let Some(svc) = service_of(&slice) {
            self.slices_of.entry(svc.clone()).or_default().insert(key.clone());
            self.changed.mark(svc);
        }
        self.slices.insert(key, slice);
    }

    pub fn delete_slice(&mut self, key: &str) {
        let Some(old) = self.slices.remove(key) else { return };
        let Some(svc) = service_of(&old) else { return };
        if let Some(set) = self.slices_of.get_mut(&svc) {
            set.remove(key);
            if set.is_empty() {
                self.slices_of.remove(&svc);
            }
        }
        self.changed.mark(svc);
    }

    /// A fresh list of every EndpointSlice.
    pub fn list_slices(&mut self, items: Vec<EndpointSlice>) {
        self.slices.clear();
        self.slices_of.clear();
        for s in items {
            self.apply_slice(s);
        }
        self.changed = Changed::All;
    }

    /// Look at everything again next time (the last sync failed).
    pub fn mark_all(&mut self) {
        self.changed = Changed::All;
    }

    /// The service ports now: `old` (what the last sync programmed) with the changed
    /// services' ports made again for node `node`. Returns them and what changed, and
    /// starts counting changes afresh.
    pub fn ports(&mut self, old: &Ports, node: &str) -> (Ports, Changed) {
        let changed = std::mem::replace(&mut self.changed, Changed::Some(BTreeSet::new()));
        let ports = match &changed {
            Changed::All => {
                self.backends = backends_from_slices(self.slices.values());
                super::service_ports(self.services.values(), &self.backends, node)
            }
            Changed::Some(keys) => {
                for key in keys {
                    self.refresh_backends(key);
                }
                update_ports(old, keys, keys.iter().filter_map(|k| self.services.get(k)), &self.backends, node)
            }
        };
        (ports, changed)
    }

    fn refresh_backends(&mut self, key: &str) {
        let slices = self.slices_of.get(key).into_iter().flatten().filter_map(|k| self.slices.get(k));
        match backends_from_slices(slices).remove(key) {
            Some(list) => self.backends.insert(key.to_string(), list),
            None => self.backends.remove(key),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::service_ports;

    fn svc(name: &str, ip: &str) -> Service {
        serde_json::from_value(serde_json::json!({"metadata": {"name": name, "namespace": "default"},
            "spec": {"clusterIP": ip, "ports": [{"port": 80, "targetPort": 8080}]}}))
        .unwrap()
    }

    fn slice(name: &str, service: &str, ips: &[&str]) -> EndpointSlice {
        let eps: Vec<_> = ips.iter().map(|ip| serde_json::json!({"addresses": [ip]})).collect();
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "default", "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4", "ports": [{"port": 8080, "protocol": "TCP"}], "endpoints": eps}))
        .unwrap()
    }

    /// What a sync from scratch would make of the cache's contents.
    fn from_scratch(c: &Cache) -> Ports {
        service_ports(c.services.values(), &backends_from_slices(c.slices.values()), "node-a")
    }

    #[test]
    fn a_change_rebuilds_its_own_service_only_and_agrees_with_a_full_rebuild() {
        let mut c = Cache::default();
        c.list_services(vec![svc("a", "10.96.0.1"), svc("b", "10.96.0.2")]);
        c.list_slices(vec![slice("a-1", "a", &["10.244.0.1"]), slice("b-1", "b", &["10.244.0.2"])]);
        let (first, changed) = c.ports(&Ports::new(), "node-a");
        assert_eq!(changed, Changed::All);
        assert_eq!(first, from_scratch(&c));

        // A second slice for a: only a changes; b's port is the very same allocation.
        c.apply_slice(slice("a-2", "a", &["10.244.0.3"]));
        let (next, changed) = c.ports(&first, "node-a");
        assert_eq!(changed, Changed::Some(["default/a".to_string()].into()));
        assert_eq!(next, from_scratch(&c));
        let b = ("default/b:80".to_string(), "tcp".to_string());
        assert!(Arc::ptr_eq(&first[&b], &next[&b]));
        assert_eq!(next[&("default/a:80".to_string(), "tcp".to_string())].endpoints.len(), 2);

        // A slice relabelled from a to b changes both; a deleted service loses its ports.
        c.apply_slice(slice("a-2", "b", &["10.244.0.3"]));
        let (moved, changed) = c.ports(&next, "node-a");
        assert_eq!(changed, Changed::Some(["default/a".to_string(), "default/b".to_string()].into()));
        assert_eq!(moved, from_scratch(&c));
        c.delete_service("default/a");
        c.delete_slice("default/a-1");
        let (gone, _) = c.ports(&moved, "node-a");
        assert_eq!(gone, from_scratch(&c));
        assert_eq!(gone.len(), 1);

        // Nothing changed: the same ports, nothing to look at.
        let (same, changed) = c.ports(&gone, "node-a");
        assert!(changed.is_empty());
        assert_eq!(same, gone);
    }

    #[test]
    fn a_relist_or_a_failed_sync_looks_at_everything_again() {
        let mut c = Cache::default();
        c.list_services(vec![svc("a", "10.96.0.1")]);
        c.list_slices(vec![]);
        let (ports, _) = c.ports(&Ports::new(), "node-a");
        c.mark_all();
        assert_eq!(c.ports(&ports, "node-a").1, Changed::All);
        c.list_slices(vec![slice("a-1", "a", &["10.244.0.1"])]);
        let (relisted, changed) = c.ports(&ports, "node-a");
        assert_eq!(changed, Changed::All);
        assert_eq!(relisted, from_scratch(&c));
    }

    use std::sync::Arc;
}
