//! `dns-bench`: queries per second and latency of a DNS server, from wherever it runs
//! (`scripts/bench dns` runs it in a pod, once through the kube-dns ClusterIP and once
//! straight at a DNS pod's IP). `--concurrency` clients each send one `A` question at a
//! time over UDP for `--seconds`; a question unanswered within 1 s counts as an error.
//! Prints one line of JSON. Asserts nothing.

use clap::Parser;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

#[derive(Parser)]
struct Flags {
    #[arg(long)]
    server: SocketAddr,
    #[arg(long, default_value = "whoami.default.svc.cluster.local")]
    name: String,
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// A label for the JSON line (e.g. "clusterIP").
    #[arg(long, default_value = "")]
    label: String,
}

/// A DNS question on the wire (RFC 1035 4.1): header (id, RD, one question), the name as
/// length-prefixed labels, type A, class IN.
fn query(id: u16, name: &str) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// One client: latencies of answered questions, and how many went unanswered.
async fn client(f: &Flags, seed: u16) -> (Vec<Duration>, u64) {
    let sock = UdpSocket::bind("0.0.0.0:0").await.expect("a UDP socket");
    sock.connect(f.server).await.expect("connect");
    let (mut lat, mut errors, mut buf) = (vec![], 0, [0u8; 1500]);
    let end = Instant::now() + Duration::from_secs(f.seconds);
    let mut id = seed.wrapping_mul(7919);
    while Instant::now() < end {
        id = id.wrapping_add(1);
        let t = Instant::now();
        if sock.send(&query(id, &f.name)).await.is_err() {
            errors += 1;
            continue;
        }
        let got = tokio::time::timeout(Duration::from_secs(1), async {
            loop {
                let n = sock.recv(&mut buf).await?;
                if n >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == id {
                    return Ok::<_, std::io::Error>(());
                }
            }
        })
        .await;
        match got {
            Ok(Ok(())) => lat.push(t.elapsed()),
            _ => errors += 1,
        }
    }
    (lat, errors)
}

#[tokio::main]
async fn main() {
    let f = std::sync::Arc::new(Flags::parse());
    let start = Instant::now();
    let tasks: Vec<_> = (0..f.concurrency)
        .map(|i| {
            let f = f.clone();
            tokio::spawn(async move { client(&f, i as u16).await })
        })
        .collect();
    let (mut lat, mut errors) = (vec![], 0);
    for t in tasks {
        let (l, e) = t.await.expect("a client");
        lat.extend(l);
        errors += e;
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1))).map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0)
    };
    println!(
        "{{\"label\": \"{}\", \"server\": \"{}\", \"concurrency\": {}, \"seconds\": {:.1}, \"answered\": {}, \"errors\": {}, \"qps\": {:.0}, \"p50_ms\": {:.3}, \"p99_ms\": {:.3}}}",
        f.label, f.server, f.concurrency, secs, lat.len(), errors, lat.len() as f64 / secs, pct(0.50), pct(0.99)
    );
}
