//! Benchmark: proxy sync times with the real iptables, in a throwaway network namespace.
//! For 100, 1,000 and 5,000 services of 10 endpoints each: a full sync, a one-service
//! change (partial sync), and `iptables-restore` alone loading the full ruleset into a
//! fresh namespace in the same run.

#[path = "../tests/netns/mod.rs"]
mod netns;

use agent::proxy::{iptables::Runner, Proxier};
use netns::Netns;
use pkg::api::{Endpoints, Service};
use serde_json::json;
use std::time::Instant;

fn world(n: usize) -> (Vec<Service>, Vec<Endpoints>) {
    let mut s = vec![];
    let mut e = vec![];
    for i in 0..n {
        let name = format!("svc-{i}");
        s.push(
            serde_json::from_value(json!({"metadata": {"name": name, "namespace": "bench"}, "spec": {"type": "NodePort",
                "clusterIP": format!("10.96.{}.{}", i / 250, i % 250 + 1),
                "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP", "nodePort": 30000 + (i % 2700)}]}}))
            .unwrap(),
        );
        let addrs: Vec<_> = (0..10).map(|j| json!({"ip": format!("10.244.{}.{}", (i * 10 + j) / 250, (i * 10 + j) % 250 + 1)})).collect();
        e.push(serde_json::from_value(json!({"metadata": {"name": name, "namespace": "bench"}, "subsets": [{"addresses": addrs, "ports": [{"port": 8080, "protocol": "TCP"}]}]})).unwrap());
    }
    (s, e)
}

async fn sync(p: &mut Proxier, s: &[Service], e: &[Endpoints]) -> f64 {
    let sv: Vec<&Service> = s.iter().collect();
    let backends = pkg::proxy::backends_from_endpoints(e);
    let t = Instant::now();
    p.sync(&sv, &backends).await.expect("sync");
    t.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    println!("{:>9} {:>8} {:>13} {:>16} {:>22}", "services", "rules", "full sync s", "one change s", "iptables-restore s");
    // Sizes from the command line (`cargo bench -p agent --bench proxy -- 100 1000`).
    let mut sizes: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    if sizes.is_empty() {
        sizes = vec![100, 1_000, 5_000];
    }
    for n in sizes {
        let ns = Netns::new("bench");
        let mut p = Proxier::new(Runner::in_netns(&ns.name), "10.244.0.0/16");
        let (s, mut e) = world(n);
        let full = sync(&mut p, &s, &e).await;
        let stats = p.stats.lock().unwrap().clone();
        // One service loses an endpoint.
        e[n / 2].subsets.as_mut().unwrap()[0].addresses.as_mut().unwrap().pop();
        let partial = sync(&mut p, &s, &e).await;
        let written = p.stats.lock().unwrap().last_sync_service_ports_written;
        // The same full ruleset loaded by iptables-restore alone, into an empty namespace.
        let fresh = Netns::new("raw");
        let raw = Runner::in_netns(&fresh.name);
        let t = Instant::now();
        raw.restore(&stats.last_ruleset).await.expect("restore");
        let restore = t.elapsed().as_secs_f64();
        println!("{n:>9} {:>8} {full:>13.3} {partial:>16.3} {restore:>22.3}   (partial wrote {written} service port)", stats.rules);
    }
}
