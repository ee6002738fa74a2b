//! A container runtime that runs nothing: containers and their tasks are entries in a map.
//! A started task is `Running` until it is killed, then `Exited` with 128 + the signal
//! (143 for SIGTERM, 137 for SIGKILL), and the exit is sent as a task event, as
//! containerd's `/tasks/exit` would be. Every image is present. The kubelet above it does
//! all its real work: pod workers, status, events, back-off, termination.
//!
//! Upstream: pkg/kubelet/cri/remote/fake/fake_runtime.go (kubemark's hollow kubelet)

use crate::cri::ContainerRuntime;
use crate::registry::Registries;
use crate::runtime::{ImageConfig, RuntimeError, Stdio, TaskState};
use futures::stream::BoxStream;
use futures::StreamExt;
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use tokio::sync::broadcast;

type Result<T> = std::result::Result<T, RuntimeError>;

struct Container {
    labels: HashMap<String, String>,
    /// `None`: created, no task yet (or its task deleted).
    task: Option<TaskState>,
}

pub struct FakeRuntime {
    containers: Mutex<HashMap<String, Container>>,
    exits: broadcast::Sender<(String, Option<u32>)>,
    pids: AtomicU32,
}

impl Default for FakeRuntime {
    fn default() -> Self {
        FakeRuntime { containers: Mutex::default(), exits: broadcast::channel(1024).0, pids: AtomicU32::new(1000) }
    }
}

fn not_found(id: &str) -> RuntimeError {
    RuntimeError::Grpc(tonic::Status::not_found(format!("container \"{id}\": not found")))
}

impl FakeRuntime {
    /// How many containers have a running task (for the hollow node's log line).
    pub fn running(&self) -> usize {
        self.containers.lock().unwrap().values().filter(|c| matches!(c.task, Some(TaskState::Running { .. }))).count()
    }
}

#[async_trait::async_trait]
impl ContainerRuntime for FakeRuntime {
    async fn prepare_image(&self, name: &str) -> Result<Option<ImageConfig>> {
        Ok(Some(ImageConfig { entrypoint: vec!["/hollow".into()], chain_id: format!("hollow:{name}"), ..Default::default() }))
    }
    async fn pull_image(&self, _: &reqwest::Client, _: &Registries, _: &str) -> std::result::Result<(), String> {
        Ok(())
    }
    async fn create_container(&self, id: &str, _: &str, _: &str, _: &Value, labels: HashMap<String, String>) -> Result<()> {
        let mut all = self.containers.lock().unwrap();
        if all.contains_key(id) {
            return Err(RuntimeError::Grpc(tonic::Status::already_exists(format!("container \"{id}\": already exists"))));
        }
        all.insert(id.to_string(), Container { labels, task: None });
        Ok(())
    }
    async fn start_task(&self, id: &str, _: &Stdio) -> Result<u32> {
        let pid = self.pids.fetch_add(1, Ordering::Relaxed);
        let mut all = self.containers.lock().unwrap();
        let c = all.get_mut(id).ok_or_else(|| not_found(id))?;
        c.task = Some(TaskState::Running { pid });
        Ok(pid)
    }
    async fn task_state(&self, id: &str) -> Result<TaskState> {
        Ok(self.containers.lock().unwrap().get(id).and_then(|c| c.task.clone()).unwrap_or(TaskState::Missing))
    }
    async fn task_events(&self) -> Result<BoxStream<'static, (String, Option<u32>)>> {
        let rx = self.exits.subscribe();
        Ok(tokio_stream_from(rx))
    }
    async fn kill(&self, id: &str, signal: u32) -> Result<()> {
        let mut all = self.containers.lock().unwrap();
        if let Some(c) = all.get_mut(id) {
            if matches!(c.task, Some(TaskState::Running { .. })) {
                let at = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
                c.task = Some(TaskState::Exited { code: 128 + signal, at: Some(at) });
                let _ = self.exits.send((id.to_string(), Some(128 + signal)));
            }
        }
        Ok(())
    }
    async fn delete_task(&self, id: &str) -> Result<()> {
        if let Some(c) = self.containers.lock().unwrap().get_mut(id) {
            if !matches!(c.task, Some(TaskState::Running { .. })) {
                c.task = None;
            }
        }
        Ok(())
    }
    async fn delete_container(&self, id: &str) -> Result<()> {
        self.containers.lock().unwrap().remove(id);
        Ok(())
    }
    async fn list(&self) -> Result<Vec<(String, HashMap<String, String>)>> {
        Ok(self.containers.lock().unwrap().iter().map(|(id, c)| (id.clone(), c.labels.clone())).collect())
    }
    async fn exec_probe(&self, id: &str, _: Vec<String>, _: &Path) -> std::result::Result<(u32, Vec<u8>), String> {
        match self.task_state(id).await {
            Ok(TaskState::Running { .. }) => Ok((0, vec![])),
            _ => Err(format!("container {id} is not running")),
        }
    }
    fn output_to(&self, _: &Path, _: &str, _: &Path, _: bool) -> std::io::Result<(String, String)> {
        Ok((String::new(), String::new()))
    }
}

/// A broadcast receiver as a stream (a receiver that lagged just carries on).
fn tokio_stream_from(rx: broadcast::Receiver<(String, Option<u32>)>) -> BoxStream<'static, (String, Option<u32>)> {
    futures::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(ev) => return Some((ev, rx)),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_runs_until_killed_then_exits_with_the_signal() {
        let rt = FakeRuntime::default();
        let mut events = rt.task_events().await.unwrap();
        rt.create_container("c1", "img", "", &Value::Null, HashMap::new()).await.unwrap();
        assert!(rt.create_container("c1", "img", "", &Value::Null, HashMap::new()).await.unwrap_err().is_already_exists());
        assert_eq!(rt.task_state("c1").await.unwrap(), TaskState::Missing);
        rt.start_task("c1", &Stdio::default()).await.unwrap();
        assert!(matches!(rt.task_state("c1").await.unwrap(), TaskState::Running { .. }));
        assert_eq!(rt.running(), 1);
        rt.kill("c1", 15).await.unwrap();
        assert!(matches!(rt.task_state("c1").await.unwrap(), TaskState::Exited { code: 143, .. }));
        assert_eq!(events.next().await, Some(("c1".to_string(), Some(143))));
        rt.delete_task("c1").await.unwrap();
        rt.delete_container("c1").await.unwrap();
        assert!(rt.list().await.unwrap().is_empty());
        assert!(rt.start_task("c1", &Stdio::default()).await.unwrap_err().is_not_found());
    }
}
