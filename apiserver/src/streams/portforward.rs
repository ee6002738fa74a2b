//! port-forward through the apiserver. kubectl opens, for every local connection, a pair
//! of SPDY streams sharing a `requestid`: `streamtype: error` then `streamtype: data`,
//! with the pod's `port`. Each pair becomes one connection to the agent's
//! `/portForward/{ns}/{pod}?port=P`, whose channel 0 carries the bytes and channel 1 an
//! error; when the pod's side ends, both streams are ended (kubectl waits for the error
//! stream's end before it lets go of the local connection).
//!
//! kubectl 1.31+ sends the same SPDY inside a WebSocket (`SPDY/3.1+portforward.k8s.io`):
//! the WebSocket's binary messages are one byte stream, handed to the same SPDY server.
//! The Python client instead speaks channel pairs over a WebSocket (`?ports=80,8080`):
//! port *i* has data channel `2i` and error channel `2i+1`, each first announced with the
//! port in two little-endian bytes.
//!
//! Upstream: k8s.io/kubelet/pkg/cri/streaming/portforward (httpstream.go, websocket.go),
//! k8s.io/client-go/tools/portforward/tunneling_connection.go

use super::exec::{connect_agent, AgentSocket};
use super::{spdy, spdy_upgrade, Upgrade};
use crate::error::ApiError;
use axum::body::Body;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Request};
use axum::http::Response;
use axum::response::IntoResponse;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use pkg::remotecommand::{self as rc};
use std::collections::HashMap;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite;

pub async fn handle(
    kind: Upgrade,
    base: String,
    ns: &str,
    pod: &str,
    query: &[(String, String)],
    mut req: Request,
) -> Result<Response<Body>, ApiError> {
    let agent = format!("{base}/portForward/{ns}/{pod}");
    match kind {
        Upgrade::Spdy => {
            if !super::offered(req.headers()).iter().any(|p| p == rc::PORT_FORWARD) {
                return Err(ApiError::new(403, "Forbidden", "supported stream protocols: portforward.k8s.io"));
            }
            let (resp, on) = spdy_upgrade(&mut req, rc::PORT_FORWARD);
            tokio::spawn(async move {
                if let Ok(up) = on.await {
                    serve_spdy(hyper_util::rt::TokioIo::new(up), agent).await;
                }
            });
            Ok(resp)
        }
        Upgrade::WebSocket => {
            let (mut parts, _) = req.into_parts();
            let ws = WebSocketUpgrade::from_request_parts(&mut parts, &())
                .await
                .map_err(|e| ApiError::bad_request(format!("bad WebSocket upgrade: {e}")))?;
            let ws = ws.protocols([rc::PORT_FORWARD_TUNNEL, rc::V4, rc::PORT_FORWARD]);
            match ws.selected_protocol().and_then(|p| p.to_str().ok()) {
                Some(rc::PORT_FORWARD_TUNNEL) => Ok(ws.on_upgrade(move |s| serve_spdy(ws_bytes(s), agent)).into_response()),
                Some(_) => {
                    let ports = ports_of(query)?;
                    Ok(ws.on_upgrade(move |s| channel_pairs(s, agent, ports)).into_response())
                }
                None => Err(ApiError::bad_request("supported WebSocket subprotocols: SPDY/3.1+portforward.k8s.io, v4.channel.k8s.io")),
            }
        }
    }
}

/// `?ports=80,8080` (or repeated `ports`/`port`).
fn ports_of(q: &[(String, String)]) -> Result<Vec<u16>, ApiError> {
    let mut out = vec![];
    for (_, v) in q.iter().filter(|(k, _)| k == "ports" || k == "port") {
        for p in v.split(',').filter(|p| !p.is_empty()) {
            out.push(p.trim().parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| ApiError::bad_request(format!("invalid port {p:?}")))?);
        }
    }
    if out.is_empty() {
        return Err(ApiError::bad_request("at least one port is needed: ?ports=8080"));
    }
    Ok(out)
}

/// SPDY port-forward: pair streams by `requestid`, one agent connection per pair.
async fn serve_spdy<IO: AsyncRead + AsyncWrite + Send + 'static>(io: IO, agent: String) {
    let (mut streams, w) = spdy::serve(io);
    let mut errors: HashMap<String, spdy::Stream> = HashMap::new();
    while let Some(s) = streams.recv().await {
        let request = s.header("requestid").to_string();
        match s.header("streamtype") {
            "error" => drop(errors.insert(request, s)),
            "data" => {
                let Some(err) = errors.remove(&request) else {
                    w.reset(s.id).await;
                    continue;
                };
                let port = s.header("port").parse::<u16>().unwrap_or(0);
                tokio::spawn(forward_pair(s, err, w.clone(), format!("{agent}?port={port}")));
            }
            _ => w.reset(s.id).await,
        }
    }
}

async fn forward_pair(mut data: spdy::Stream, err: spdy::Stream, w: spdy::Writer, url: String) {
    let agent = match connect_agent(&url).await {
        Ok(a) => a,
        Err(e) => {
            w.send(err.id, e.as_bytes()).await;
            w.finish(err.id).await;
            w.finish(data.id).await;
            return;
        }
    };
    let (mut a_tx, mut a_rx) = agent.split();
    let up = tokio::spawn(async move {
        while let Some(b) = data.incoming.recv().await {
            if a_tx.send(tungstenite::Message::Binary([&[0u8][..], &b].concat().into())).await.is_err() {
                return;
            }
        }
        let _ = a_tx.send(tungstenite::Message::Binary(vec![rc::CLOSE, 0].into())).await;
        // Keep the half-closed connection until the pod's side ends.
        std::future::pending::<()>().await;
    });
    while let Some(Ok(tungstenite::Message::Binary(b))) = a_rx.next().await {
        let to = match b.first() {
            Some(0) => data.id,
            Some(1) => err.id,
            _ => continue,
        };
        if !w.send(to, &b[1..]).await {
            break;
        }
    }
    up.abort();
    w.finish(data.id).await;
    w.finish(err.id).await;
}

/// The Python client's protocol: one agent connection per port, channels `2i` and `2i+1`.
async fn channel_pairs(client: WebSocket, agent: String, ports: Vec<u16>) {
    let (mut c_tx, mut c_rx) = client.split();
    let (out_tx, mut out_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
    let mut senders = vec![];
    for (i, port) in ports.iter().enumerate() {
        let (d, e) = ((2 * i) as u8, (2 * i + 1) as u8);
        let announce = |ch: u8| vec![ch, (*port & 0xff) as u8, (*port >> 8) as u8];
        let _ = out_tx.send(announce(d)).await;
        let _ = out_tx.send(announce(e)).await;
        let sock: Result<AgentSocket, String> = connect_agent(&format!("{agent}?port={port}")).await;
        let Ok(sock) = sock else {
            let _ = out_tx.send([&[e][..], format!("cannot reach port {port}").as_bytes()].concat()).await;
            senders.push(None);
            continue;
        };
        let (a_tx, mut a_rx) = sock.split();
        senders.push(Some(a_tx));
        let out = out_tx.clone();
        tokio::spawn(async move {
            while let Some(Ok(tungstenite::Message::Binary(b))) = a_rx.next().await {
                let ch = if b.first() == Some(&1) { e } else { d };
                if out.send([&[ch][..], &b[1..]].concat()).await.is_err() {
                    return;
                }
            }
        });
    }
    drop(out_tx);
    let down = async {
        while let Some(m) = out_rx.recv().await {
            if c_tx.send(Message::Binary(m.into())).await.is_err() {
                return;
            }
        }
        let _ = c_tx.send(Message::Close(Some(CloseFrame { code: 1000, reason: "".into() }))).await;
    };
    let up = async {
        while let Some(Ok(m)) = c_rx.next().await {
            let b = match m {
                Message::Binary(b) => b,
                Message::Text(t) => Bytes::copy_from_slice(t.as_bytes()),
                Message::Close(_) => break,
                _ => continue,
            };
            let Some((&ch, data)) = b.split_first() else { continue };
            if let Some(Some(tx)) = senders.get_mut(usize::from(ch / 2)).filter(|_| ch % 2 == 0) {
                let _ = tx.send(tungstenite::Message::Binary([&[0u8][..], data].concat().into())).await;
            }
        }
        for tx in senders.iter_mut().flatten() {
            let _ = tx.close().await;
        }
    };
    tokio::select! {
        _ = down => {}
        _ = up => {}
    }
}

/// A WebSocket as a byte stream (for SPDY tunneled inside it): binary messages in are
/// read in order, writes go out as binary messages.
fn ws_bytes(ws: WebSocket) -> tokio::io::DuplexStream {
    {
        let (ours, theirs) = tokio::io::duplex(256 * 1024);
        let (mut rd, mut wr) = tokio::io::split(theirs);
        let (mut tx, mut rx) = ws.split();
        tokio::spawn(async move {
            while let Some(Ok(m)) = rx.next().await {
                match m {
                    Message::Binary(b) if wr.write_all(&b).await.is_err() => break,
                    Message::Close(_) => break,
                    _ => {}
                }
            }
            let _ = wr.shutdown().await;
        });
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.send(Message::Binary(Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = tx.send(Message::Close(Some(CloseFrame { code: 1000, reason: "".into() }))).await;
        });
        ours
    }
}
