//! The agent's node API, which the apiserver reaches for `kubectl logs`, `exec`,
//! `attach`, `cp` and `port-forward` (as kube-apiserver reaches the kubelet's). Logs are
//! plain HTTP; the others are WebSockets speaking the `v5.channel.k8s.io` channel
//! protocol ([`pkg::remotecommand`]).
//!
//! - `GET /containerLogs/{ns}/{pod}/{container}?follow=&previous=&timestamps=&tailLines=&limitBytes=&sinceSeconds=`:
//!   the container's output, from the CRI log the kubelet writes, to its end or as it grows;
//! - `GET /exec/{ns}/{pod}/{container}?command=..&stdin=..&stdout=..&stderr=..&tty=..`:
//!   a new process in the container ([`crate::exec`]);
//! - `GET /attach/{ns}/{pod}/{container}?...`: the container's own process: its output
//!   from the log file as it grows, its stdin through the pipe the kubelet made for it;
//! - `GET /portForward/{ns}/{pod}?port=P`: one TCP connection to `localhost:P` inside
//!   the pod's network namespace; channel 0 carries its bytes both ways, channel 1 an error.
//!
//! The container named must be one of the pod's (never a path: issue "containerLogs").
//!
//! Upstream: k8s.io/kubelet/pkg/cri/streaming (remotecommand/, portforward/)

use crate::client::Client;
use crate::exec::{ExecRequest, ExecSession};
use crate::runtime::Runtime;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use pkg::api::{Object, Pod, PodExt};
use pkg::remotecommand::{self as rc, query_bool};
use std::path::PathBuf;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// What the streaming endpoints need.
#[derive(Clone)]
pub struct Streaming {
    pub client: Client,
    pub runtime: Runtime,
    pub state_dir: PathBuf,
    /// Where the kubelet writes container logs.
    pub logs_dir: PathBuf,
}

pub fn router(s: Streaming) -> axum::Router {
    use axum::routing::get;
    axum::Router::new()
        .route("/containerLogs/{ns}/{pod}/{container}", get(logs))
        .route("/exec/{ns}/{pod}/{container}", get(exec))
        .route("/attach/{ns}/{pod}/{container}", get(attach))
        .route("/portForward/{ns}/{pod}", get(port_forward))
        .with_state(s)
}

/// Every `key=value` of a query, repeated keys kept (`command=sh&command=-c`).
pub fn query_pairs(q: &Option<String>) -> Vec<(String, String)> {
    form_urlencoded::parse(q.as_deref().unwrap_or("").as_bytes()).into_owned().collect()
}

fn first<'a>(q: &'a [(String, String)], k: &str) -> Option<&'a str> {
    q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
}

fn refuse(code: StatusCode, msg: String) -> Response {
    (code, msg).into_response()
}

/// The pod and the containerd id of one of its containers (`None`: not one of its containers).
async fn resolve(s: &Streaming, ns: &str, pod: &str, container: &str) -> Result<(Pod, String), Response> {
    let p: Pod =
        s.client.get(&format!("/api/v1/namespaces/{ns}/pods/{pod}")).await.map_err(|e| refuse(StatusCode::NOT_FOUND, e.to_string()))?;
    if !p.containers().iter().any(|c| c.name == container) {
        return Err(refuse(StatusCode::NOT_FOUND, format!("container {container:?} is not in pod {ns}/{pod}")));
    }
    let id = crate::kubelet::container_id(p.uid().unwrap_or_default(), container);
    Ok((p, id))
}

fn upgrade(ws: WebSocketUpgrade, f: impl FnOnce(WebSocket) -> futures::future::BoxFuture<'static, ()> + Send + 'static) -> Response {
    ws.protocols([rc::V5]).on_upgrade(f)
}

/// The log file of a container's current run, or its previous one (`previous=true`).
fn log_file(s: &Streaming, p: &Pod, container: &str, previous: bool) -> Result<PathBuf, String> {
    let st = p
        .container_statuses()
        .iter()
        .chain(p.status.as_ref().and_then(|s| s.init_container_statuses.as_deref()).unwrap_or(&[]))
        .find(|c| c.name == container)
        .cloned();
    let pod = p.name();
    let Some(st) = st else { return Err(format!("container \"{container}\" in pod \"{pod}\" is waiting to start - no logs yet")) };
    if previous {
        if st.restart_count == 0 || st.last_state.as_ref().and_then(|l| l.terminated.as_ref()).is_none() {
            return Err(format!("previous terminated container \"{container}\" in pod \"{pod}\" not found"));
        }
        return Ok(crate::kubelet::logs::file(&s.logs_dir, p, container, st.restart_count - 1));
    }
    if let Some(w) = st.state.as_ref().and_then(|s| s.waiting.as_ref()).filter(|_| st.restart_count == 0) {
        let why = match w.reason.as_deref() {
            Some("ErrImagePull") => "image can't be pulled".to_string(),
            Some("ImagePullBackOff") => "trying and failing to pull image".to_string(),
            Some(r) => r.to_string(),
            None => "no logs yet".to_string(),
        };
        return Err(format!("container \"{container}\" in pod \"{pod}\" is waiting to start: {why}"));
    }
    Ok(crate::kubelet::logs::file(&s.logs_dir, p, container, st.restart_count))
}

/// `GET /containerLogs/{ns}/{pod}/{container}?follow=&previous=&timestamps=&tailLines=&limitBytes=&sinceSeconds=&sinceTime=`:
/// the CRI log of the container's run, as `kubectl logs` shows it ([`pkg::kubelet::logs::Reader`]).
pub async fn logs(
    State(s): State<Streaming>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    RawQuery(q): RawQuery,
) -> Response {
    use pkg::kubelet::logs as cri;
    let q = query_pairs(&q);
    let (p, id) = match resolve(&s, &ns, &pod, &container).await {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    let path = match log_file(&s, &p, &container, query_bool(first(&q, "previous"))) {
        Ok(f) => f,
        Err(msg) => return refuse(StatusCode::BAD_REQUEST, msg),
    };
    let num = |k: &str| first(&q, k).and_then(|v| v.parse::<i64>().ok()).filter(|v| *v >= 0);
    let since = match (first(&q, "sinceTime").and_then(|t| t.parse::<jiff::Timestamp>().ok()), num("sinceSeconds")) {
        (Some(t), _) => Some(t.as_nanosecond()),
        (None, Some(secs)) => Some(jiff::Timestamp::now().as_nanosecond() - i128::from(secs) * 1_000_000_000),
        _ => None,
    };
    let opts = cri::Options {
        tail_lines: num("tailLines").map(|n| n as usize),
        limit_bytes: num("limitBytes").map(|n| n as u64),
        since_nanos: since,
        timestamps: query_bool(first(&q, "timestamps")),
    };
    let all = tokio::fs::read(&path).await.unwrap_or_default();
    let text = |b: Vec<u8>| ([(axum::http::header::CONTENT_TYPE, "text/plain")], b).into_response();
    if !query_bool(first(&q, "follow")) {
        return text(cri::read_all(&all, &opts));
    }
    // Follow: what is there, then what the container writes, until it stops (or the client goes).
    let start = cri::tail_start(&all, opts.tail_lines) as u64;
    let state = (path, start, cri::Reader::new(cri::Options { tail_lines: None, ..opts }), s.runtime.clone(), id, false);
    let stream = futures::stream::unfold(state, |(path, mut at, mut reader, rt, id, mut done)| async move {
        use tokio::io::AsyncSeekExt;
        loop {
            if done {
                return None;
            }
            let mut grew = false;
            if let Ok(mut f) = tokio::fs::File::open(&path).await {
                let mut buf = vec![0u8; 32 * 1024];
                if f.seek(std::io::SeekFrom::Start(at)).await.is_ok() {
                    if let Ok(n) = f.read(&mut buf).await {
                        at += n as u64;
                        grew = n > 0;
                        let (out, limit_reached) = reader.feed(&buf[..n]);
                        done = limit_reached;
                        if !out.is_empty() {
                            return Some((Ok::<_, std::io::Error>(Bytes::from(out)), (path, at, reader, rt, id, done)));
                        }
                    }
                }
            }
            if !grew && !matches!(rt.task_state(&id).await, Ok(crate::runtime::TaskState::Running { .. })) {
                return None; // the container stopped: the log is complete
            }
            if !grew {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
    });
    ([(axum::http::header::CONTENT_TYPE, "text/plain")], axum::body::Body::from_stream(stream)).into_response()
}

/// `GET /exec/{ns}/{pod}/{container}`.
pub async fn exec(
    State(s): State<Streaming>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    RawQuery(q): RawQuery,
    ws: WebSocketUpgrade,
) -> Response {
    let q = query_pairs(&q);
    let r = ExecRequest {
        command: q.iter().filter(|(k, _)| k == "command").map(|(_, v)| v.clone()).collect(),
        stdin: query_bool(first(&q, "stdin")),
        stdout: query_bool(first(&q, "stdout")),
        stderr: query_bool(first(&q, "stderr")),
        tty: query_bool(first(&q, "tty")),
    };
    if r.command.is_empty() {
        return refuse(StatusCode::BAD_REQUEST, "no command given".into());
    }
    let id = match resolve(&s, &ns, &pod, &container).await {
        Ok((_, id)) => id,
        Err(resp) => return resp,
    };
    let session = match s.runtime.exec(&id, &r, &s.state_dir.join("exec")).await {
        Ok(x) => x,
        Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, format!("exec in {ns}/{pod}/{container}: {e}")),
    };
    upgrade(ws, move |socket| Box::pin(run_exec(socket, session)))
}

/// Copy a pipe to the socket's writer as messages on `channel`, then say it ended.
fn pump(mut from: impl AsyncRead + Unpin + Send + 'static, channel: u8, out: mpsc::Sender<Message>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match from.read(&mut buf[1..]).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    buf[0] = channel;
                    if out.send(Message::Binary(Bytes::copy_from_slice(&buf[..=n]))).await.is_err() {
                        return;
                    }
                }
            }
        }
    })
}

/// The socket's writer: messages from the pumps in order, then a normal close.
fn writer(mut sink: futures::stream::SplitSink<WebSocket, Message>) -> (mpsc::Sender<Message>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Message>(32);
    let task = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.send(m).await.is_err() {
                return;
            }
        }
        let _ = sink.send(Message::Close(Some(CloseFrame { code: 1000, reason: "".into() }))).await;
    });
    (tx, task)
}

async fn run_exec(socket: WebSocket, mut session: ExecSession) {
    let (sink, mut stream) = socket.split();
    let (out, written) = writer(sink);
    let mut pumps = vec![];
    if let Some(o) = session.stdout.take() {
        pumps.push(pump(o, rc::STDOUT, out.clone()));
    }
    if let Some(e) = session.stderr.take() {
        pumps.push(pump(e, rc::STDERR, out.clone()));
    }
    let Some(mut exit) = session.exit.take() else { return };
    let code = loop {
        tokio::select! {
            code = &mut exit => break code.unwrap_or(255),
            msg = stream.next() => match msg {
                Some(Ok(Message::Binary(b))) => client_message(&mut session, &b).await,
                Some(Ok(Message::Text(t))) => client_message(&mut session, t.as_bytes()).await,
                Some(Ok(_)) => {}
                // The client went away: end the command too.
                None | Some(Err(_)) => {
                    session.kill().await;
                    break (&mut exit).await.unwrap_or(255);
                }
            }
        }
    };
    // Output still in the pipes comes before the status (children may hold them open: not forever).
    for p in pumps {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), p).await;
    }
    let status = serde_json::to_vec(&rc::exit_status(code)).unwrap_or_default();
    let _ = out.send(Message::Binary([&[rc::ERROR][..], &status].concat().into())).await;
    drop(out);
    let _ = written.await;
    session.finish().await;
}

/// A message from the client: stdin bytes, a terminal size, or the end of stdin.
async fn client_message(session: &mut ExecSession, b: &[u8]) {
    let Some((&ch, body)) = b.split_first() else { return };
    match ch {
        rc::STDIN => {
            if let Some(w) = session.stdin.as_mut() {
                if w.write_all(body).await.is_err() {
                    session.stdin = None;
                }
            }
        }
        rc::RESIZE => {
            for (w, h) in rc::parse_resize(body) {
                session.resize(u32::from(w), u32::from(h)).await;
            }
        }
        rc::CLOSE if body == [rc::STDIN] => session.close_stdin().await,
        _ => {}
    }
}

/// `GET /attach/{ns}/{pod}/{container}`: the container's own process. Its output comes
/// from the log file from now on (with a terminal, or stdout and stderr interleaved as the
/// file holds them, on stdout); stdin goes to the pipe the kubelet made when the
/// container asked for `stdin: true`; the session ends when the container does.
pub async fn attach(
    State(s): State<Streaming>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    RawQuery(q): RawQuery,
    ws: WebSocketUpgrade,
) -> Response {
    let q = query_pairs(&q);
    let (p, id) = match resolve(&s, &ns, &pod, &container).await {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    let spec = p.containers().iter().find(|c| c.name == container).cloned().unwrap_or_default();
    let uid = p.uid().unwrap_or_default().to_string();
    let restarts = p.container_statuses().iter().find(|c| c.name == container).map_or(0, |c| c.restart_count);
    let log = crate::kubelet::logs::file(&s.logs_dir, &p, &container, restarts);
    let stdin_pipe =
        (query_bool(first(&q, "stdin")) && spec.stdin == Some(true)).then(|| crate::kubelet::stdin_path(&s.state_dir, &uid, &container));
    let once = spec.stdin_once == Some(true);
    let rt = s.runtime.clone();
    upgrade(ws, move |socket| Box::pin(run_attach(socket, rt, id, log, stdin_pipe, once)))
}

async fn run_attach(socket: WebSocket, rt: Runtime, id: String, log: PathBuf, stdin_pipe: Option<PathBuf>, once: bool) {
    let (sink, mut stream) = socket.split();
    let (out, written) = writer(sink);
    let from = tokio::fs::metadata(&log).await.map(|m| m.len()).unwrap_or(0);
    let output = tokio::spawn(follow_to(log, from, out.clone()));
    // Non-blocking: no reader (the container is gone) is an error now, not a wait forever.
    let mut stdin = stdin_pipe.and_then(|p| tokio::net::unix::pipe::OpenOptions::new().open_sender(p).ok());
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
    let code = loop {
        tokio::select! {
            _ = tick.tick() => match rt.task_state(&id).await {
                Ok(crate::runtime::TaskState::Exited { code, .. }) => break Some(code),
                Ok(crate::runtime::TaskState::Missing) | Err(_) => break Some(255),
                _ => {}
            },
            msg = stream.next() => {
                let b = match msg {
                    Some(Ok(Message::Binary(b))) => b.to_vec(),
                    Some(Ok(Message::Text(t))) => t.as_bytes().to_vec(),
                    Some(Ok(_)) => continue,
                    None | Some(Err(_)) => break None,
                };
                match b.split_first() {
                    Some((&rc::STDIN, data)) => if let Some(w) = stdin.as_mut() { let _ = w.write_all(data).await; },
                    Some((&rc::RESIZE, data)) => for (w, h) in rc::parse_resize(data) { rt.resize_task(&id, u32::from(w), u32::from(h)).await },
                    Some((&rc::CLOSE, [rc::STDIN])) => {
                        stdin = None;
                        if once { rt.close_task_stdin(&id).await }
                    }
                    _ => {}
                }
            }
        }
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await; // the last output reaches the log
    output.abort();
    if let Some(code) = code {
        let status = serde_json::to_vec(&rc::exit_status(code)).unwrap_or_default();
        let _ = out.send(Message::Binary([&[rc::ERROR][..], &status].concat().into())).await;
    }
    drop(out);
    let _ = written.await;
}

/// Send what is appended to a CRI log from `at` on, as stdout messages (the lines' text).
async fn follow_to(path: PathBuf, mut at: u64, out: mpsc::Sender<Message>) {
    use tokio::io::AsyncSeekExt;
    let mut buf = vec![0u8; 32 * 1024];
    let mut reader = pkg::kubelet::logs::Reader::new(Default::default());
    loop {
        if let Ok(mut f) = tokio::fs::File::open(&path).await {
            if f.seek(std::io::SeekFrom::Start(at)).await.is_err() {
                return;
            }
            loop {
                match f.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        at += n as u64;
                        let (text, _) = reader.feed(&buf[..n]);
                        if !text.is_empty() && out.send(Message::Binary([&[rc::STDOUT][..], &text].concat().into())).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// `GET /portForward/{ns}/{pod}?port=P`.
pub async fn port_forward(
    State(s): State<Streaming>,
    Path((ns, pod)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    ws: WebSocketUpgrade,
) -> Response {
    let q = query_pairs(&q);
    let Some(port) = first(&q, "port").and_then(|p| p.parse::<u16>().ok()).filter(|p| *p > 0) else {
        return refuse(StatusCode::BAD_REQUEST, "port must be 1-65535".into());
    };
    let p: Pod = match s.client.get(&format!("/api/v1/namespaces/{ns}/pods/{pod}")).await {
        Ok(p) => p,
        Err(e) => return refuse(StatusCode::NOT_FOUND, e.to_string()),
    };
    let netns = std::path::Path::new(crate::network::NETNS_DIR).join(crate::kubelet::netns_name(p.uid().unwrap_or_default()));
    upgrade(ws, move |socket| Box::pin(run_port_forward(socket, netns, port)))
}

async fn run_port_forward(socket: WebSocket, netns: PathBuf, port: u16) {
    let (sink, mut stream) = socket.split();
    let (out, written) = writer(sink);
    let conn = match crate::network::connect_in_netns(Some(netns), ([127, 0, 0, 1], port).into(), std::time::Duration::from_secs(5)).await {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("error forwarding port {port} to pod: {e}");
            let _ = out.send(Message::Binary([&[1u8][..], msg.as_bytes()].concat().into())).await;
            drop(out);
            let _ = written.await;
            return;
        }
    };
    let (rd, mut wr) = conn.into_split();
    let from_pod = pump(rd, 0, out.clone());
    drop(out);
    while let Some(Ok(m)) = stream.next().await {
        let b = match &m {
            Message::Binary(b) => &b[..],
            Message::Close(_) => break,
            _ => continue,
        };
        match b.split_first() {
            Some((0, data)) if wr.write_all(data).await.is_err() => break,
            Some((&rc::CLOSE, [0])) => {
                let _ = wr.shutdown().await;
            }
            _ => {}
        }
    }
    let _ = wr.shutdown().await;
    // The client is gone: so is anything the pod still sends.
    from_pod.abort();
    let _ = written.await;
}
