//! `kubectl exec` on the node: run a command in a running container through containerd's
//! Exec API, with its stdin, stdout and stderr on named pipes (FIFOs) the agent creates.
//!
//! The order matters, as containerd's own CRI plugin does it: make the FIFOs, begin
//! opening our ends (each `open` blocks until the shim opens the other end), `Exec`,
//! `Wait` (so the exit status is not missed), `Start`; then copy, resize the terminal
//! (`ResizePty`) and, when the client's stdin ends, close our writer *and* ask the shim
//! to close its own (`CloseIO`), or the process never sees end-of-file.
//!
//! An open that is still blocked when the exec fails (the container stopped between the
//! probe's decision and `Exec`, say) or when its caller gives up (a probe's timeout) would
//! wait forever on its thread; [`FifoOpen`] releases it by opening the other end itself.
//! A leaked blocking thread is worse than it looks: a tokio runtime waits for its blocking
//! threads when it shuts down, so one such open hung a whole test binary in CI.
//!
//! Upstream: containerd internal/cri/server/container_execsync.go, pkg/cio

use crate::runtime::{req, Runtime, RuntimeError};
use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{
    CloseIoRequest, DeleteProcessRequest, ExecProcessRequest, GetContainerRequest, ResizePtyRequest, StartRequest, WaitRequest,
};
use std::path::{Path, PathBuf};
use tokio::fs::File;
use tokio::task::JoinHandle;

/// What the client asked for.
#[derive(Clone, Debug, Default)]
pub struct ExecRequest {
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// A started exec: its pipes and its exit status to come.
pub struct ExecSession {
    pub stdin: Option<File>,
    pub stdout: Option<File>,
    pub stderr: Option<File>,
    /// The exit status (128 + signal when killed), when the process ends.
    pub exit: Option<JoinHandle<u32>>,
    rt: Runtime,
    container: String,
    exec_id: String,
    dir: PathBuf,
}

pub fn mkfifo(path: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// One end of a FIFO being opened on a blocking thread: the open returns once the shim
/// opens the other end. Dropped before that (the exec failed, or the caller gave up), it
/// opens the FIFO for reading and writing without blocking, for a moment, so the waiting
/// thread returns instead of waiting forever.
struct FifoOpen {
    path: PathBuf,
    open: Option<JoinHandle<std::io::Result<std::fs::File>>>,
}

impl FifoOpen {
    fn start(path: PathBuf, write: bool) -> FifoOpen {
        let p = path.clone();
        let open = tokio::task::spawn_blocking(move || std::fs::OpenOptions::new().read(!write).write(write).open(p));
        FifoOpen { path, open: Some(open) }
    }

    /// Our end, once the shim has opened its own.
    async fn opened(mut self) -> Result<File, RuntimeError> {
        let h = self.open.as_mut().expect("awaited once");
        let f = h.await;
        self.open = None;
        Ok(File::from_std(f.map_err(err)?.map_err(err)?))
    }
}

impl Drop for FifoOpen {
    fn drop(&mut self) {
        let Some(open) = self.open.take() else { return };
        // The thread may not have begun its open yet: knock until it has returned.
        let path = self.path.clone();
        std::thread::spawn(move || {
            use std::os::unix::fs::OpenOptionsExt;
            for _ in 0..1000 {
                let _ = std::fs::OpenOptions::new().read(true).write(true).custom_flags(libc::O_NONBLOCK).open(&path);
                if open.is_finished() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        });
    }
}

fn err(e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Image("exec".into(), e.to_string())
}

impl Runtime {
    /// The process of a container's OCI spec (user, env, cwd, capabilities) to run `cmd` with.
    async fn exec_process(&self, container: &str, cmd: &[String], tty: bool) -> Result<serde_json::Value, RuntimeError> {
        let c = ContainersClient::new(self.channel()).get(req(GetContainerRequest { id: container.into() })).await?.into_inner();
        let spec: serde_json::Value =
            c.container.and_then(|c| c.spec).map(|s| serde_json::from_slice(&s.value)).transpose().map_err(err)?.unwrap_or_default();
        let mut p = spec.get("process").cloned().unwrap_or_default();
        p["args"] = serde_json::json!(cmd);
        p["terminal"] = serde_json::json!(tty);
        if tty {
            if let Some(env) = p["env"].as_array_mut() {
                env.push(serde_json::json!("TERM=xterm"));
            }
        }
        Ok(p)
    }

    /// Resize the terminal of a container's own process (`kubectl attach -t`).
    pub async fn resize_task(&self, container: &str, width: u32, height: u32) {
        let r = ResizePtyRequest { container_id: container.into(), exec_id: String::new(), width, height };
        let _ = TasksClient::new(self.channel()).resize_pty(req(r)).await;
    }

    /// End a container's own stdin (`stdinOnce`: the attached client is done).
    pub async fn close_task_stdin(&self, container: &str) {
        let r = CloseIoRequest { container_id: container.into(), exec_id: String::new(), stdin: true };
        let _ = TasksClient::new(self.channel()).close_io(req(r)).await;
    }

    /// Start `r.command` in `container`; its pipes live under `dir` until [`ExecSession::finish`].
    pub async fn exec(&self, container: &str, r: &ExecRequest, dir: &Path) -> Result<ExecSession, RuntimeError> {
        let process = self.exec_process(container, &r.command, r.tty).await?;
        let exec_id = format!("exec{:016x}", rand::random::<u64>());
        let dir = dir.join(&exec_id);
        std::fs::create_dir_all(&dir).map_err(err)?;
        let path = |name: &str, wanted: bool| -> Result<Option<PathBuf>, RuntimeError> {
            if !wanted {
                return Ok(None);
            }
            let p = dir.join(name);
            mkfifo(&p).map_err(err)?;
            Ok(Some(p))
        };
        // With a terminal, the shim copies the console to stdout only. Without one, it
        // needs both output pipes or neither (given one, it fails opening the other's ""),
        // so, as containerd's CRI does, both are made and what was not asked for is
        // read and dropped ([`drain`]).
        let both = !r.tty && (r.stdout || r.stderr);
        let (i, o, e) = (path("stdin", r.stdin)?, path("stdout", r.stdout || both)?, path("stderr", (r.stderr && !r.tty) || both)?);
        let opens = (
            i.clone().map(|p| FifoOpen::start(p, true)),
            o.clone().map(|p| FifoOpen::start(p, false)),
            e.clone().map(|p| FifoOpen::start(p, false)),
        );
        let s = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
        let mut tasks = TasksClient::new(self.channel());
        tasks
            .exec(req(ExecProcessRequest {
                container_id: container.into(),
                stdin: s(&i),
                stdout: s(&o),
                stderr: s(&e),
                terminal: r.tty,
                spec: Some(prost_types::Any {
                    type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
                    value: serde_json::to_vec(&process).map_err(err)?,
                }),
                exec_id: exec_id.clone(),
            }))
            .await?;
        let mut waiter = tasks.clone();
        let (cid, eid) = (container.to_string(), exec_id.clone());
        let exit = tokio::spawn(async move {
            match waiter.wait(req(WaitRequest { container_id: cid, exec_id: eid })).await {
                Ok(w) => w.into_inner().exit_status,
                Err(_) => 255,
            }
        });
        tasks.start(req(StartRequest { container_id: container.into(), exec_id: exec_id.clone() })).await?;
        let join = |o: Option<FifoOpen>| async move {
            match o {
                Some(o) => o.opened().await.map(Some),
                None => Ok(None),
            }
        };
        let (stdin, stdout, stderr) = (join(opens.0).await?, join(opens.1).await?, join(opens.2).await?);
        let (stdout, stderr) = (drain(stdout, r.stdout), drain(stderr, r.stderr && !r.tty));
        Ok(ExecSession { stdin, stdout, stderr, exit: Some(exit), rt: self.clone(), container: container.into(), exec_id, dir })
    }
}

/// A pipe the client asked for, or `None` for one it did not, which is read to its end
/// and dropped (a pipe nobody reads would block the command once it is full).
fn drain(pipe: Option<File>, wanted: bool) -> Option<File> {
    match pipe {
        Some(mut f) if !wanted => {
            tokio::spawn(async move { tokio::io::copy(&mut f, &mut tokio::io::sink()).await });
            None
        }
        p => p,
    }
}

impl ExecSession {
    /// The client's terminal changed size.
    pub async fn resize(&self, width: u32, height: u32) {
        let r = ResizePtyRequest { container_id: self.container.clone(), exec_id: self.exec_id.clone(), width, height };
        let _ = TasksClient::new(self.rt.channel()).resize_pty(req(r)).await;
    }

    /// The client's stdin ended: close our end and the shim's.
    pub async fn close_stdin(&mut self) {
        self.stdin = None;
        let r = CloseIoRequest { container_id: self.container.clone(), exec_id: self.exec_id.clone(), stdin: true };
        let _ = TasksClient::new(self.rt.channel()).close_io(req(r)).await;
    }

    /// The client went away before the command ended: end it.
    pub async fn kill(&self) {
        let r = containerd_client::services::v1::KillRequest {
            container_id: self.container.clone(),
            exec_id: self.exec_id.clone(),
            signal: libc::SIGKILL as u32,
            all: false,
        };
        let _ = TasksClient::new(self.rt.channel()).kill(req(r)).await;
    }

    /// Forget the process (its status was read) and remove its pipes.
    pub async fn finish(self) {
        let r = DeleteProcessRequest { container_id: self.container.clone(), exec_id: self.exec_id.clone() };
        let _ = TasksClient::new(self.rt.channel()).delete_process(req(r)).await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
