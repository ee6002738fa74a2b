//! Probes: for each running container with a readiness, liveness or startup probe, a task
//! asks it every `periodSeconds` (an HTTP GET to the pod's IP, a TCP connect, or a command
//! run inside it) and publishes a result when the thresholds of [`pkg::kubelet::probe`]
//! say it changed; the pod's worker then marks it ready (or not), or restarts it. Failed
//! tries are recorded as `Unhealthy` events. Each container run gets new probe tasks.
//!
//! Upstream: pkg/kubelet/prober (worker.go, prober.go), pkg/probe/{http,tcp,exec}

use super::{worker, Ctx};
use pkg::api::{Container, IntOrString, Object, Pod, Probe};
use pkg::kubelet::probe::{self, Outcome, ProbeKind, State, Timing};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Results = Arc<Mutex<HashMap<(String, ProbeKind), Option<bool>>>>;

/// The probe tasks of one pod and their published results.
#[derive(Default)]
pub struct Probes {
    tasks: HashMap<(String, ProbeKind), (u64, tokio::task::JoinHandle<()>)>,
    results: Results,
}

fn probe_of(c: &Container, kind: ProbeKind) -> Option<&Probe> {
    match kind {
        ProbeKind::Liveness => c.liveness_probe.as_ref(),
        ProbeKind::Readiness => c.readiness_probe.as_ref(),
        ProbeKind::Startup => c.startup_probe.as_ref(),
    }
}

impl Probes {
    fn result(&self, c: &str, kind: ProbeKind) -> Option<bool> {
        self.results.lock().unwrap().get(&(c.to_string(), kind)).copied().flatten()
    }

    /// Started: no startup probe, or it succeeded.
    pub fn started(&self, c: &Container) -> bool {
        c.startup_probe.is_none() || self.result(&c.name, ProbeKind::Startup) == Some(true)
    }

    /// Ready: started, and no readiness probe or it succeeded.
    pub fn ready(&self, c: &Container) -> bool {
        self.started(c) && (c.readiness_probe.is_none() || self.result(&c.name, ProbeKind::Readiness) == Some(true))
    }

    /// A published liveness or startup failure: the container must be restarted.
    pub fn failed(&self, c: &str) -> Option<&'static str> {
        match (self.result(c, ProbeKind::Liveness), self.result(c, ProbeKind::Startup)) {
            (Some(false), _) => Some("liveness"),
            (_, Some(false)) => Some("startup"),
            _ => None,
        }
    }

    /// Probe tasks for run `run` of a running container (started at `since`).
    pub fn ensure(&mut self, ctx: &Arc<Ctx>, pod: &Arc<Pod>, c: &Container, run: u64, since: Instant, pod_ip: &str) {
        for kind in [ProbeKind::Startup, ProbeKind::Liveness, ProbeKind::Readiness] {
            let Some(p) = probe_of(c, kind) else { continue };
            let key = (c.name.clone(), kind);
            if self.tasks.get(&key).is_some_and(|(r, _)| *r == run) {
                continue;
            }
            if let Some((_, old)) = self.tasks.remove(&key) {
                old.abort();
            }
            self.results.lock().unwrap().insert(key.clone(), State::new(kind).result);
            let job = Job {
                ctx: ctx.clone(),
                pod: pod.clone(),
                container: c.clone(),
                probe: p.clone(),
                kind,
                since,
                ip: pod_ip.to_string(),
                results: self.results.clone(),
            };
            self.tasks.insert(key, (run, tokio::spawn(job.run())));
        }
    }

    /// A container stopped: its probes end and their results are forgotten.
    pub fn forget(&mut self, c: &str) {
        self.tasks.retain(|(name, _), (_, h)| {
            let keep = name != c;
            if !keep {
                h.abort();
            }
            keep
        });
        self.results.lock().unwrap().retain(|(name, _), _| name != c);
    }

    pub fn stop_all(&mut self) {
        self.tasks.drain().for_each(|(_, (_, h))| h.abort());
    }
}

/// The status code of an HTTP response. The status line may come in several segments (a
/// busy server, a small first write): read until it is whole, the peer closes, or 1 KiB
/// came without one.
async fn status_code<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<u16>> {
    let (mut head, mut n) = (vec![0u8; 1024], 0);
    while n < head.len() && !head[..n].windows(2).any(|w| w == b"\r\n") {
        match r.read(&mut head[n..]).await? {
            0 => break,
            got => n += got,
        }
    }
    let line = String::from_utf8_lossy(&head[..n]);
    Ok(line.split_whitespace().nth(1).and_then(|c| c.parse::<u16>().ok()))
}

struct Job {
    ctx: Arc<Ctx>,
    pod: Arc<Pod>,
    container: Container,
    probe: Probe,
    kind: ProbeKind,
    since: Instant,
    ip: String,
    results: Results,
}

impl Job {
    async fn run(self) {
        let t = Timing::of(&self.probe);
        let mut state = State::new(self.kind);
        let uid = self.pod.uid().unwrap_or_default().to_string();
        loop {
            let started = self.container.startup_probe.is_none()
                || self.results.lock().unwrap().get(&(self.container.name.clone(), ProbeKind::Startup)).copied().flatten() == Some(true);
            if probe::due(self.kind, Some(self.since.elapsed()), started, &t) {
                let outcome = self.attempt(&t).await;
                if let Some((reason, msg)) = probe::event(self.kind, &outcome) {
                    self.ctx.recorder.event(&self.pod, Some(&self.container.name), true, reason, &msg);
                }
                if let Some(now) = state.observe(outcome.ok(), &t) {
                    self.results.lock().unwrap().insert((self.container.name.clone(), self.kind), Some(now));
                    worker::wake(&self.ctx, &uid);
                }
            }
            // The first try comes after the initial delay, the others every period.
            let next = if self.since.elapsed() < t.initial_delay { t.initial_delay - self.since.elapsed() } else { t.period };
            tokio::time::sleep(next).await;
        }
    }

    fn port(&self, p: &IntOrString) -> Result<u16, String> {
        match p {
            IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("invalid port {n}")),
            IntOrString::String(name) => self
                .container
                .ports
                .iter()
                .flatten()
                .find(|cp| cp.name.as_deref() == Some(name))
                .and_then(|cp| u16::try_from(cp.container_port).ok())
                .ok_or_else(|| format!("unable to find port {name:?} in the container's ports")),
        }
    }

    async fn connect(&self, host: Option<&str>, port: u16, timeout: Duration) -> Result<tokio::net::TcpStream, String> {
        let host = host.filter(|h| !h.is_empty()).unwrap_or(&self.ip);
        let addr: std::net::SocketAddr = format!("{host}:{port}").parse().map_err(|e| format!("{e}"))?;
        self.ctx.net.connect(addr, timeout).await.map_err(|e| format!("dial tcp {addr}: {e}"))
    }

    async fn attempt(&self, t: &Timing) -> Outcome {
        let p = &self.probe;
        let r = tokio::time::timeout(t.timeout, async {
            if let Some(h) = &p.http_get {
                return self.http(h, t.timeout).await;
            }
            if let Some(s) = &p.tcp_socket {
                let port = self.port(&s.port).map_err(Outcome::Failure)?;
                self.connect(s.host.as_deref(), port, t.timeout).await.map_err(Outcome::Failure)?;
                return Ok(Outcome::Success);
            }
            if let Some(e) = &p.exec {
                return self.exec(e.command.clone().unwrap_or_default()).await;
            }
            Err(Outcome::Failure("ownkube runs httpGet, tcpSocket and exec probes (not grpc)".into()))
        })
        .await;
        match r {
            Ok(Ok(o)) | Ok(Err(o)) => o,
            Err(_) => Outcome::Failure(match &p.exec {
                Some(e) => format!("command {:?} timed out", e.command.clone().unwrap_or_default().join(" ")),
                None => "context deadline exceeded (Client.Timeout exceeded while awaiting headers)".into(),
            }),
        }
    }

    /// A plain HTTP/1.1 GET, made by hand: the connection may have to start in the node's
    /// network namespace, which no HTTP client library can be told.
    async fn http(&self, h: &k8s_openapi::api::core::v1::HTTPGetAction, timeout: Duration) -> Result<Outcome, Outcome> {
        if h.scheme.as_deref().is_some_and(|s| !s.eq_ignore_ascii_case("http")) {
            return Err(Outcome::Failure("ownkube's httpGet probes speak HTTP only".into()));
        }
        let port = self.port(&h.port).map_err(Outcome::Failure)?;
        let host = h.host.clone().filter(|s| !s.is_empty()).unwrap_or(self.ip.clone());
        let path = h.path.clone().filter(|p| !p.is_empty()).unwrap_or("/".into());
        let url = format!("http://{host}:{port}{path}");
        let mut s = self.connect(Some(&host), port, timeout).await.map_err(|e| Outcome::Failure(format!("Get \"{url}\": {e}")))?;
        let mut req =
            format!("GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.32\r\nAccept: */*\r\nConnection: close\r\n");
        for hd in h.http_headers.iter().flatten() {
            req.push_str(&format!("{}: {}\r\n", hd.name, hd.value));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).await.map_err(|e| Outcome::Failure(format!("Get \"{url}\": {e}")))?;
        let code = status_code(&mut s).await.map_err(|e| Outcome::Failure(format!("Get \"{url}\": {e}")))?;
        Ok(code.map_or(Outcome::Failure(format!("Get \"{url}\": malformed HTTP response")), probe::http_outcome))
    }

    async fn exec(&self, command: Vec<String>) -> Result<Outcome, Outcome> {
        let id = super::container_id(self.pod.uid().unwrap_or_default(), &self.container.name);
        let dir = self.ctx.cfg.state_dir.join("exec");
        let (code, out) = self.ctx.rt.exec_probe(&id, command, &dir).await.map_err(Outcome::Failure)?;
        let text = String::from_utf8_lossy(&out).trim().to_string();
        Ok(if code == 0 { Outcome::Success } else { Outcome::Failure(text) })
    }
}

#[cfg(test)]
mod tests {
    use super::status_code;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_status_line_in_pieces_is_read_whole() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            for piece in ["HTTP/1.1 ", "2", "00 OK\r\n", "Content-Length: 0\r\n\r\n"] {
                server.write_all(piece.as_bytes()).await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        });
        assert_eq!(status_code(&mut client).await.unwrap(), Some(200));
        writer.await.unwrap();
        let (mut client, mut server) = tokio::io::duplex(64);
        server.write_all(b"garbage").await.unwrap();
        drop(server);
        assert_eq!(status_code(&mut client).await.unwrap(), None, "no status line before EOF");
    }
}
