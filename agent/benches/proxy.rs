//! Benchmark: proxy sync times in both modes, with the real iptables and nft, in
//! throwaway network namespaces. For 100, 1,000 and 5,000 services of 10 endpoints each:
//! a full sync, a one-endpoint change and a one-service change (partial syncs), and the
//! bare loader (`iptables-restore`, or the same chunked `nft -f` transactions) loading
//! the full ruleset into a fresh namespace in the same run. Prints a table, writes
//! `results/proxy.json` and a chart of full-sync time against services,
//! `results/proxy.svg`. Then connection setup through a ClusterIP and straight to its
//! backend, for every size, in interleaved rounds. Asserts nothing.
//!
//!     cargo bench -p agent --bench proxy -- [--mode iptables|nftables|both] [N | N:MODE ...]
//!
//! (About 3 minutes for all sizes and both modes on this machine.)

#[path = "../tests/netns/mod.rs"]
mod netns;

use agent::proxy::{iptables::Runner, Mode, Proxier};
use netns::{Lab, Netns};
use pkg::api::{Endpoints, Service};
use serde_json::json;
use std::time::Instant;

fn world(n: usize) -> (Vec<Service>, Vec<Endpoints>) {
    let mut s = vec![];
    let mut e = vec![];
    for i in 0..n {
        let name = format!("svc-{i}");
        s.push(
            // NodePorts for the first 2,700 (the range has 2,768), ClusterIP only after.
            serde_json::from_value(json!({"metadata": {"name": name, "namespace": "bench"}, "spec": {
                "type": if i < 2700 { "NodePort" } else { "ClusterIP" },
                "clusterIP": format!("10.96.{}.{}", i / 250, i % 250 + 1),
                "ports": [if i < 2700 { json!({"port": 80, "targetPort": 8080, "protocol": "TCP", "nodePort": 30000 + i}) }
                          else { json!({"port": 80, "targetPort": 8080, "protocol": "TCP"}) }]}}))
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

/// The bare loader: the last sync's text, loaded into an empty namespace by the mode's own tool.
async fn bare_load(mode: Mode, text: &str) -> f64 {
    let fresh = Netns::new("raw");
    let raw = Runner::in_netns(&fresh.name);
    if mode == Mode::Iptables {
        // What a full sync ensures before its first restore: the chains service chains jump to.
        let fixed = ":KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n";
        raw.restore(&format!("*nat\n{fixed}COMMIT\n")).await.expect("iptables-restore");
    }
    let t = Instant::now();
    // The same transactions the sync ran, each its own restore / `nft -f`.
    for tx in text.split(pkg::proxy::NEXT_TRANSACTION) {
        match mode {
            Mode::Iptables => raw.restore(tx).await.expect("iptables-restore"),
            Mode::Nftables => raw.nft_apply(tx).await.expect("nft -f"),
        }
    }
    t.elapsed().as_secs_f64()
}

/// The probe: a service sorted after every `bench/svc-*`, in front of the lab's backend.
fn probe() -> (Service, Endpoints) {
    let s = serde_json::from_value(json!({"metadata": {"name": "probe", "namespace": "zz"},
        "spec": {"clusterIP": "10.96.250.250", "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]}}))
    .unwrap();
    let e = serde_json::from_value(json!({"metadata": {"name": "probe", "namespace": "zz"},
        "subsets": [{"addresses": [{"ip": Lab::backend_ip(0)}], "ports": [{"port": 8080, "protocol": "TCP"}]}]}))
    .unwrap();
    (s, e)
}

/// Connection setup times (µs) of `n` connections from the client to `target`,
/// each one opened, read to its end (the backend writes and closes) and dropped.
fn connect_times(lab: &Lab, target: &str, n: usize) -> Vec<f64> {
    let target: std::net::SocketAddr = target.parse().unwrap();
    lab.client
        .run(move || {
            use std::io::Read;
            (0..n)
                .map(|_| {
                    let t = Instant::now();
                    let mut c = std::net::TcpStream::connect_timeout(&target, std::time::Duration::from_secs(3)).expect("connect");
                    let us = t.elapsed().as_secs_f64() * 1e6;
                    let _ = c.read_to_end(&mut vec![]);
                    us
                })
                .collect::<Vec<f64>>()
        })
        .join()
        .unwrap()
}

fn serve(lab: &Lab) {
    let ready = std::sync::Arc::new(std::sync::Barrier::new(2));
    let r = ready.clone();
    lab.backends[0].run(move || {
        use std::io::Write;
        let l = std::net::TcpListener::bind("0.0.0.0:8080").unwrap();
        r.wait();
        for mut c in l.incoming().flatten() {
            let _ = c.write_all(b"be1");
        }
    });
    ready.wait();
}

/// One size in one mode: full sync, one endpoint less, one service more, bare loader.
/// The lab is handed back, its rules still loaded, for the connection rounds.
async fn measure(mode: Mode, n: usize) -> (serde_json::Value, Lab) {
    let lab = Lab::new(1);
    serve(&lab);
    let mut p = Proxier::with_mode(Runner::in_netns(&lab.node.name), "10.244.0.0/16", mode);
    p.prepare_host().await;
    let (mut s, mut e) = world(n);
    let (ps, pe) = probe();
    s.push(ps);
    e.push(pe);
    let full = sync(&mut p, &s, &e).await;
    let stats = p.stats.lock().unwrap().clone();
    e[n / 2].subsets.as_mut().unwrap()[0].addresses.as_mut().unwrap().pop();
    let endpoint = sync(&mut p, &s, &e).await;
    let (s1, e1) = world(n + 1);
    s.push(s1[n].clone());
    e.push(e1[n].clone());
    let service = sync(&mut p, &s, &e).await;
    let service_apply = p.stats.lock().unwrap().last_sync_apply_millis / 1000.0;
    let bare = bare_load(mode, &stats.last_ruleset).await;
    let mode_name = format!("{mode:?}").to_lowercase();
    println!("{mode_name:>9} {n:>9} {:>8} {full:>12.3} {endpoint:>15.3} {service:>14.3} {service_apply:>12.3} {bare:>12.3}", stats.rules);
    let row = json!({"mode": mode_name, "services": n, "endpoints_per_service": 10, "rules": stats.rules, "full_sync_s": full,
           "one_endpoint_change_s": endpoint, "one_service_change_s": service, "one_service_change_loader_s": service_apply, "bare_loader_s": bare,
           "transactions": stats.last_ruleset.matches(pkg::proxy::NEXT_TRANSACTION).count() + 1});
    (row, lab)
}

/// Connection setup through each lab's probe ClusterIP and straight to its backend, in
/// interleaved rounds (every lab once per round), so that whatever else the machine does
/// falls on all sizes alike rather than on whichever ran last.
fn connection_rounds(labs: &[Lab], rows: &mut [serde_json::Value]) {
    const ROUNDS: usize = 10;
    const PER_ROUND: usize = 300;
    let mut via = vec![vec![]; labs.len()];
    let mut direct = vec![vec![]; labs.len()];
    for _ in 0..ROUNDS {
        for (i, lab) in labs.iter().enumerate() {
            via[i].extend(connect_times(lab, "10.96.250.250:80", PER_ROUND));
            direct[i].extend(connect_times(lab, &format!("{}:8080", Lab::backend_ip(0)), PER_ROUND));
        }
    }
    let stats = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let pct = |q: f64| v[((v.len() - 1) as f64 * q) as usize];
        json!({"p50": pct(0.5), "p99": pct(0.99), "mean": v.iter().sum::<f64>() / v.len() as f64})
    };
    println!(
        "\n{:>9} {:>9} {:>16} {:>12} {:>13} {:>14}",
        "mode", "services", "ClusterIP p50 us", "p99 us", "direct p50 us", "ClusterIP mean"
    );
    for (i, row) in rows.iter_mut().enumerate() {
        let (v, d) = (stats(&mut via[i]), stats(&mut direct[i]));
        println!(
            "{:>9} {:>9} {:>16.1} {:>12.1} {:>13.1} {:>14.1}",
            row["mode"].as_str().unwrap(),
            row["services"],
            v["p50"].as_f64().unwrap(),
            v["p99"].as_f64().unwrap(),
            d["p50"].as_f64().unwrap(),
            v["mean"].as_f64().unwrap()
        );
        row["clusterip_connect_us"] = v;
        row["direct_connect_us"] = d;
        row["connections"] = json!(ROUNDS * PER_ROUND);
    }
}

/// Full-sync seconds against services, one line per mode, log-log.
fn chart(rows: &[serde_json::Value]) -> String {
    let (w, h, m) = (640.0, 400.0, 60.0);
    let pts = |mode: &str| -> Vec<(f64, f64)> {
        rows.iter()
            .filter(|r| r["mode"] == mode)
            .map(|r| (r["services"].as_f64().unwrap(), r["full_sync_s"].as_f64().unwrap().max(1e-3)))
            .collect()
    };
    let (xmin, xmax, ymin, ymax) = (50f64.log10(), 10_000f64.log10(), 0.01f64.log10(), 3_000f64.log10());
    let x = |v: f64| m + (v.log10() - xmin) / (xmax - xmin) * (w - 2.0 * m);
    let y = |v: f64| h - m - (v.log10() - ymin) / (ymax - ymin) * (h - 2.0 * m);
    let mut svg = format!("<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' font-family='sans-serif' font-size='12'>\n");
    svg += &format!("<text x='{m}' y='24' font-size='14'>proxy full sync time (s) against services, 10 endpoints each (log-log)</text>\n");
    for (t, v) in [("100", 100.0), ("1,000", 1000.0), ("5,000", 5000.0)] {
        svg += &format!(
            "<line x1='{0}' y1='{1}' x2='{0}' y2='{2}' stroke='#ddd'/><text x='{0}' y='{3}' text-anchor='middle'>{t}</text>\n",
            x(v),
            m,
            h - m,
            h - m + 18.0
        );
    }
    for (t, v) in [("0.01", 0.01), ("0.1", 0.1), ("1", 1.0), ("10", 10.0), ("100", 100.0), ("1000", 1000.0)] {
        svg += &format!(
            "<line x1='{m}' y1='{0}' x2='{1}' y2='{0}' stroke='#ddd'/><text x='{2}' y='{3}' text-anchor='end'>{t}</text>\n",
            y(v),
            w - m,
            m - 6.0,
            y(v) + 4.0
        );
    }
    for (mode, color) in [("iptables", "#c0392b"), ("nftables", "#2471a3")] {
        let p = pts(mode);
        if p.is_empty() {
            continue;
        }
        let path: Vec<String> = p.iter().map(|(a, b)| format!("{:.1},{:.1}", x(*a), y(*b))).collect();
        svg += &format!("<polyline fill='none' stroke='{color}' stroke-width='2' points='{}'/>\n", path.join(" "));
        for (a, b) in &p {
            svg += &format!(
                "<circle cx='{:.1}' cy='{:.1}' r='3' fill='{color}'/><text x='{:.1}' y='{:.1}' fill='{color}'>{b:.2}</text>\n",
                x(*a),
                y(*b),
                x(*a) + 6.0,
                y(*b) - 6.0
            );
        }
        let (la, lb) = p[p.len() - 1];
        svg += &format!("<text x='{:.1}' y='{:.1}' fill='{color}' font-weight='bold'>{mode}</text>\n", x(la) - 30.0, y(lb) + 20.0);
    }
    svg + "</svg>\n"
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.iter().position(|a| a == "--mode").and_then(|i| args.get(i + 1)).map(String::as_str).unwrap_or("both");
    let modes: Vec<Mode> = match mode {
        "iptables" => vec![Mode::Iptables],
        "nftables" => vec![Mode::Nftables],
        _ => vec![Mode::Iptables, Mode::Nftables],
    };
    // Sizes from the command line (`-- 100 1000 5000:nftables`: a size for one mode only).
    let mut sizes: Vec<(usize, Option<Mode>)> = args
        .iter()
        .filter_map(|a| {
            let (n, m) = a.split_once(':').map_or((a.as_str(), None), |(n, m)| (n, Some(m)));
            let mode = match m {
                Some("iptables") => Some(Mode::Iptables),
                Some("nftables") => Some(Mode::Nftables),
                _ => None,
            };
            Some((n.parse().ok()?, mode))
        })
        .collect();
    if sizes.is_empty() {
        sizes = vec![(100, None), (1_000, None), (5_000, None)];
    }
    println!(
        "{:>9} {:>9} {:>8} {:>12} {:>15} {:>14} {:>12} {:>12}",
        "mode", "services", "rules", "full sync s", "-1 endpoint s", "+1 service s", "(in loader)", "bare load s"
    );
    let (mut rows, mut labs) = (vec![], vec![]);
    for (n, only) in sizes {
        for &m in modes.iter().filter(|m| only.is_none_or(|o| o == **m)) {
            let (row, lab) = measure(m, n).await;
            rows.push(row);
            labs.push(lab);
        }
    }
    connection_rounds(&labs, &mut rows);
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../results");
    std::fs::create_dir_all(dir).expect("results/");
    std::fs::write(format!("{dir}/proxy.json"), serde_json::to_string_pretty(&json!({"benchmark": "proxy", "rows": rows})).unwrap())
        .unwrap();
    std::fs::write(format!("{dir}/proxy.svg"), chart(&rows)).unwrap();
    println!("wrote results/proxy.json and results/proxy.svg");
}
