//! exec and attach through the apiserver: the client's session relayed to the agent's.
//!
//! A WebSocket client already speaks the agent's channel protocol, so its messages are
//! passed through as they are. A SPDY client opens one stream per channel (`streamtype:
//! error`, `stdin`, `stdout`, `stderr`, `resize`); once all it asked for are open, each
//! stream is joined to its channel: stdin and resize data go to the agent, the agent's
//! stdout, stderr and error channels come back on their streams, and when the agent
//! closes, every stream is ended (kubectl waits for stdout and stderr to end, then reads
//! the error stream's `Status` to learn the exit code).
//!
//! Upstream: k8s.io/apiserver/pkg/util/proxy/streamtranslator.go, k8s.io/kubelet/pkg/cri/streaming/remotecommand/httpstream.go

use super::spdy;
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use pkg::remotecommand::{self as rc, query_bool};
use std::collections::HashMap;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};

pub type AgentSocket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Open the agent's side: a WebSocket in the `v5.channel.k8s.io` protocol.
pub async fn connect_agent(http_url: &str) -> Result<AgentSocket, String> {
    let url = http_url.replacen("http://", "ws://", 1);
    let mut req = url.into_client_request().map_err(|e| e.to_string())?;
    req.headers_mut().insert("sec-websocket-protocol", rc::V5.parse().expect("ascii"));
    if let Some(a) = super::agent_authorization().and_then(|a| a.parse().ok()) {
        req.headers_mut().insert("authorization", a);
    }
    let (ws, _) = tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::connect_async(req))
        .await
        .map_err(|_| "the agent did not answer in 10 s".to_string())?
        .map_err(|e| match e {
            tungstenite::Error::Http(r) => String::from_utf8_lossy(r.body().as_deref().unwrap_or(b"")).into_owned(),
            e => e.to_string(),
        })?;
    Ok(ws)
}

/// The error channel's message for a failure before anything ran.
fn failure(msg: &str) -> Vec<u8> {
    use pkg::api::StatusExt;
    serde_json::to_vec(&pkg::api::Status::failure(500, "InternalError", format!("Internal error occurred: {msg}"))).unwrap_or_default()
}

/// A WebSocket client: relay messages both ways until the agent closes.
pub async fn relay_websocket(client: WebSocket, agent_url: String) {
    let (mut c_tx, mut c_rx) = client.split();
    let agent = match connect_agent(&agent_url).await {
        Ok(a) => a,
        Err(e) => {
            let _ = c_tx.send(Message::Binary([&[rc::ERROR][..], &failure(&e)].concat().into())).await;
            let _ = c_tx.send(Message::Close(Some(CloseFrame { code: 1000, reason: "".into() }))).await;
            return;
        }
    };
    let (mut a_tx, mut a_rx) = agent.split();
    let up = async {
        while let Some(Ok(m)) = c_rx.next().await {
            let b: Bytes = match m {
                Message::Binary(b) => b,
                Message::Text(t) => Bytes::copy_from_slice(t.as_bytes()),
                Message::Close(_) => break,
                _ => continue,
            };
            if a_tx.send(tungstenite::Message::Binary(b)).await.is_err() {
                break;
            }
        }
        let _ = a_tx.close().await;
    };
    let down = async {
        while let Some(Ok(m)) = a_rx.next().await {
            match m {
                tungstenite::Message::Binary(b) if c_tx.send(Message::Binary(b.clone())).await.is_err() => return,
                tungstenite::Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = c_tx.send(Message::Close(Some(CloseFrame { code: 1000, reason: "".into() }))).await;
    };
    // The session is over when the agent closes; the client's side then has nothing to say.
    tokio::select! {
        _ = down => {}
        _ = async { up.await; std::future::pending::<()>().await } => {}
    }
}

/// Which streams a SPDY client will open, from its query.
#[derive(Clone, Copy, Debug)]
pub struct Wanted {
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
}

impl Wanted {
    pub fn from_query(q: &[(String, String)]) -> Wanted {
        let b = |k: &str| query_bool(q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str()));
        Wanted { stdin: b("stdin"), stdout: b("stdout"), stderr: b("stderr") && !b("tty"), tty: b("tty") }
    }
    fn names(&self) -> Vec<&'static str> {
        let mut n = vec!["error"];
        for (on, name) in [(self.stdin, "stdin"), (self.stdout, "stdout"), (self.stderr, "stderr"), (self.tty, "resize")] {
            if on {
                n.push(name);
            }
        }
        n
    }
}

/// A SPDY client: wait for its streams, then join them to the agent's channels.
pub async fn serve_spdy<IO: AsyncRead + AsyncWrite + Send + 'static>(io: IO, agent_url: String, wanted: Wanted) {
    let (mut streams, w) = spdy::serve(io);
    let mut open: HashMap<String, spdy::Stream> = HashMap::new();
    let names = wanted.names();
    let collected = tokio::time::timeout(Duration::from_secs(30), async {
        while names.iter().any(|n| !open.contains_key(*n)) {
            let Some(s) = streams.recv().await else { return false };
            open.insert(s.header("streamtype").to_string(), s);
        }
        true
    })
    .await;
    if collected != Ok(true) {
        w.go_away().await;
        return;
    }
    let id = |n: &str| open.get(n).map(|s| s.id);
    let (err_id, out_id, errout_id) = (id("error"), id("stdout"), id("stderr"));
    let agent = match connect_agent(&agent_url).await {
        Ok(a) => a,
        Err(e) => {
            if let Some(i) = err_id {
                w.send(i, &failure(&e)).await;
                w.finish(i).await;
            }
            w.go_away().await;
            return;
        }
    };
    let (mut a_tx, mut a_rx) = agent.split();
    // Client to agent: stdin (its end is the end of stdin) and terminal sizes.
    let (up_tx, mut up_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(32);
    for (name, ch) in [("stdin", rc::STDIN), ("resize", rc::RESIZE)] {
        if let Some(mut s) = open.remove(name) {
            let tx = up_tx.clone();
            tokio::spawn(async move {
                while let Some(b) = s.incoming.recv().await {
                    if tx.send([&[ch][..], &b].concat()).await.is_err() {
                        return;
                    }
                }
                if ch == rc::STDIN {
                    let _ = tx.send(vec![rc::CLOSE, rc::STDIN]).await;
                }
            });
        }
    }
    drop(up_tx);
    let up = tokio::spawn(async move {
        while let Some(m) = up_rx.recv().await {
            if a_tx.send(tungstenite::Message::Binary(m.into())).await.is_err() {
                return;
            }
        }
    });
    // Agent to client: each channel to its stream, then the end of all of them.
    while let Some(Ok(m)) = a_rx.next().await {
        let b = match m {
            tungstenite::Message::Binary(b) => b,
            tungstenite::Message::Close(_) => break,
            _ => continue,
        };
        let target = match b.first() {
            Some(&rc::STDOUT) => out_id,
            Some(&rc::STDERR) => errout_id,
            Some(&rc::ERROR) => err_id,
            _ => None,
        };
        if let Some(i) = target {
            if !w.send(i, &b[1..]).await {
                break;
            }
        }
    }
    for i in [out_id, errout_id, err_id].into_iter().flatten() {
        w.finish(i).await;
    }
    up.abort();
    // kubectl closes the connection once it has read everything; do not wait forever.
    let _ = tokio::time::timeout(Duration::from_secs(10), async { while streams.recv().await.is_some() {} }).await;
    w.go_away().await;
}
