//! Container output into log files, as a kubelet on containerd has it: each container's
//! stdout and stderr are FIFOs the agent reads, framing every line in the CRI format with
//! its time and stream ([`pkg::kubelet::logs`]) into
//! `<logs root>/<namespace>_<pod>_<uid>/<container>/<restart>.log`, one file per run.
//! The files outlive the container's runs (for `kubectl logs --previous`) and go with the pod.
//!
//! Upstream: containerd internal/cri/io/logger.go, pkg/kubelet/kuberuntime/kuberuntime_container.go (log paths)

use pkg::api::{Object, Pod};
use pkg::kubelet::logs::{rfc3339_nano, Framer, Stream};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// `<root>/<namespace>_<pod>_<uid>`: everything logged by one pod.
pub fn pod_dir(root: &Path, pod: &Pod) -> PathBuf {
    root.join(format!("{}_{}_{}", pod.namespace().unwrap_or("default"), pod.name(), pod.uid().unwrap_or_default()))
}

/// The log of one run of a container (its restart count).
pub fn file(root: &Path, pod: &Pod, container: &str, restart: i32) -> PathBuf {
    pod_dir(root, pod).join(container).join(format!("{restart}.log"))
}

/// Copy one FIFO into the log, line by line, until its writer closes.
fn copy(fifo: PathBuf, log: Arc<Mutex<std::fs::File>>, s: Stream) -> std::io::Result<()> {
    let mut r = std::fs::File::open(&fifo)?;
    let mut framer = Framer::default();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = r.read(&mut buf)?;
        let ts = rfc3339_nano(jiff::Timestamp::now());
        let lines = if n == 0 { framer.finish(&ts, s) } else { framer.push(&buf[..n], &ts, s) };
        if !lines.is_empty() {
            log.lock().expect("log lock").write_all(&lines)?;
        }
        if n == 0 {
            return Ok(());
        }
    }
}

/// The task's output FIFOs (made here), copied into `log` on threads of their own (each
/// open waits for the shim). With a terminal there is only one stream, stdout.
pub fn start_copiers(fifo_dir: &Path, container: &str, log: &Path, tty: bool) -> std::io::Result<(String, String)> {
    std::fs::create_dir_all(fifo_dir)?;
    if let Some(parent) = log.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let file = Arc::new(Mutex::new(std::fs::OpenOptions::new().create(true).append(true).open(log)?));
    let mut paths = vec![];
    for (name, s) in [("stdout", Stream::Stdout), ("stderr", Stream::Stderr)] {
        if tty && s == Stream::Stderr {
            paths.push(String::new());
            continue;
        }
        let fifo = fifo_dir.join(format!("{container}.{name}"));
        if !fifo.exists() {
            crate::exec::mkfifo(&fifo)?;
        }
        let (f, l) = (fifo.clone(), file.clone());
        std::thread::spawn(move || {
            if let Err(e) = copy(f, l, s) {
                tracing::debug!(error = %e, "log copier ended");
            }
        });
        paths.push(fifo.display().to_string());
    }
    Ok((paths[0].clone(), paths[1].clone()))
}
