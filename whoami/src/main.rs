//! `whoami`: a tiny HTTP server for the lab. `GET /` answers
//! `HOSTNAME:<pod name> IP:<pod ip> VERSION:<$VERSION> CLIENT:<source ip>` so that
//! `curl NODE_IP:30001` shows which pod (and which version of a Deployment) answered. The
//! IP is the address the connection arrived on: behind a Service that is the pod's own,
//! because kube-proxy's DNAT rewrote the destination to it. CLIENT is the address it came
//! from: through a NodePort with `externalTrafficPolicy: Cluster` that is a node's (the
//! proxy masqueraded it, so the reply can return through that node); with `Local`, the
//! real client's.
//!
//! For probes and rollouts:
//! - `GET /healthz` (liveness) and `GET /readyz` (readiness) answer 200, or 503 once
//!   `GET /fail/healthz` or `/fail/readyz` asked them to (`/recover` undoes both): a way to
//!   watch a liveness probe restart the container, or a readiness probe take it out of a
//!   Service;
//! - on SIGTERM (what the kubelet sends first when a pod is deleted) it stops being ready,
//!   keeps answering for `$DRAIN_SECONDS` (2) while the endpoints controller and the
//!   proxies take it out of the Service, then exits: no request is refused during a rollout,
//!   and a deleted pod goes in seconds instead of after its 30 s grace period.
//!
//! Listens on `$PORT` (default 8080). Standard library (and `libc` for the signal), one
//! thread per connection.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

static TERMINATING: AtomicBool = AtomicBool::new(false);
static FAIL_HEALTH: AtomicBool = AtomicBool::new(false);
static FAIL_READY: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigterm(_: libc::c_int) {
    TERMINATING.store(true, Ordering::SeqCst);
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "unknown".into())
}

/// The answer to one path: status code and body.
fn route(path: &str, host: &str, ip: &str, version: &str, client: &str) -> (u16, String) {
    let ok = |b: &str| (200, format!("{b}\n"));
    match path {
        "/healthz" if FAIL_HEALTH.load(Ordering::SeqCst) => (503, "failing on purpose (GET /recover to stop)\n".into()),
        "/healthz" => ok("ok"),
        "/readyz" if FAIL_READY.load(Ordering::SeqCst) => (503, "not ready on purpose (GET /recover to stop)\n".into()),
        "/readyz" if TERMINATING.load(Ordering::SeqCst) => (503, "shutting down\n".into()),
        "/readyz" => ok("ok"),
        "/fail/healthz" => {
            FAIL_HEALTH.store(true, Ordering::SeqCst);
            ok("healthz now fails")
        }
        "/fail/readyz" => {
            FAIL_READY.store(true, Ordering::SeqCst);
            ok("readyz now fails")
        }
        "/recover" => {
            FAIL_HEALTH.store(false, Ordering::SeqCst);
            FAIL_READY.store(false, Ordering::SeqCst);
            ok("recovered")
        }
        _ => ok(&format!("HOSTNAME:{host} IP:{ip} VERSION:{version} CLIENT:{client}")),
    }
}

fn handle(mut s: TcpStream, host: &str, version: &str) -> std::io::Result<()> {
    let mut reader = BufReader::new(s.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    // Drain the headers.
    let mut h = String::new();
    while reader.read_line(&mut h)? > 2 {
        h.clear();
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/");
    let ip = s.local_addr()?.ip().to_string();
    let client = s.peer_addr()?.ip().to_string();
    let (code, body) = route(path, host, &ip, version, &client);
    let reason = if code == 200 { "OK" } else { "Service Unavailable" };
    // One write: `write!` straight to the socket would send each piece as its own segment.
    let response = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(response.as_bytes())
}

fn main() -> std::io::Result<()> {
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".into());
    let version = std::env::var("VERSION").unwrap_or_else(|_| "v1".into());
    let drain: u64 = std::env::var("DRAIN_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(2);
    // SAFETY: the handler only stores to an atomic.
    unsafe { libc::signal(libc::SIGTERM, on_sigterm as *const () as libc::sighandler_t) };
    let listener = TcpListener::bind(format!("0.0.0.0:{port}"))?;
    let host = hostname();
    eprintln!("whoami {host} {version} listening on :{port}");
    std::thread::spawn(move || {
        while !TERMINATING.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("SIGTERM: not ready any more; serving {drain}s more, then exiting");
        std::thread::sleep(Duration::from_secs(drain));
        std::process::exit(0);
    });
    for conn in listener.incoming() {
        let Ok(s) = conn else { continue };
        let (host, version) = (host.clone(), version.clone());
        std::thread::spawn(move || {
            let _ = handle(s, &host, &version);
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_fail_on_demand_and_while_draining() {
        assert_eq!(route("/", "web-1", "10.244.0.2", "v2", "172.30.0.1").1, "HOSTNAME:web-1 IP:10.244.0.2 VERSION:v2 CLIENT:172.30.0.1\n");
        assert_eq!(route("/readyz", "h", "i", "v", "c").0, 200);
        route("/fail/readyz", "h", "i", "v", "c");
        assert_eq!((route("/readyz", "h", "i", "v", "c").0, route("/healthz", "h", "i", "v", "c").0), (503, 200));
        route("/recover", "h", "i", "v", "c");
        TERMINATING.store(true, Ordering::SeqCst);
        assert_eq!(route("/readyz", "h", "i", "v", "c").0, 503, "draining: not ready");
        assert_eq!(route("/", "h", "i", "v", "c").0, 200, "but still serving");
    }
}
