//! `GET …?watch=true`: a stream of newline-delimited JSON events (`ADDED`, `MODIFIED`,
//! `DELETED`, `ERROR`, `BOOKMARK`) backed by one etcd watch on the kind's prefix.
//!
//! A watch must never share fate with other requests. Every etcd watch travels on the
//! one HTTP/2 connection all etcd traffic shares; if a client stops reading and its
//! etcd stream stops being read too, that stream's flow-control window fills, then the
//! connection's, and every request to etcd waits (three such clients took the whole API
//! down). So a task of its own reads each etcd watch at etcd's pace into a bounded
//! buffer ([`WATCH_BUFFER`] events, [`WATCH_BUFFER_BYTES`]) that the client drains at its pace. A client that
//! falls that far behind is dropped, as Kubernetes' watch cache drops unresponsive
//! watchers: its stream ends cleanly and it resumes from the last resourceVersion it saw.
//! The same task ends the watch at `timeoutSeconds`, whether or not the client reads.
//!
//! Upstream: k8s.io/apiserver/pkg/endpoints/handlers/watch.go, storage/etcd3/watcher.go

use crate::codec::{self, Output};
use crate::error::ApiError;
use crate::objects::Api;
use crate::printers::{self, Printable};
use crate::registry::Strategy;
use crate::storage::{self, RawEvent};
use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use pkg::selector::{FieldSelector, LabelSelector};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often a watch that asked for bookmarks (`allowWatchBookmarks=true`) gets one.
const BOOKMARK_EVERY: Duration = Duration::from_secs(60);

/// Events a watch holds for a client that reads slower than they come, and their bytes;
/// past either and the client is dropped.
pub const WATCH_BUFFER: usize = 1000;
pub const WATCH_BUFFER_BYTES: usize = 8 << 20;

fn line(v: &Value) -> Bytes {
    let mut line = serde_json::to_vec(v).unwrap_or_default();
    line.push(b'\n');
    line.into()
}

/// One line of a watch stream.
fn event<T: Printable>(kind: &str, obj: &T, out: Output, first: &mut bool) -> Bytes {
    let object = if out == Output::Table {
        let t = printers::table(std::slice::from_ref(obj), obj.meta().resource_version.clone(), *first, Default::default());
        *first = false;
        t
    } else {
        codec::represent(out, obj)
    };
    line(&json!({"type": kind, "object": object}))
}

/// A BOOKMARK: "you have seen everything up to this revision"; only the resourceVersion counts.
fn bookmark<T: Strategy>(rev: i64, initial_done: bool) -> Bytes {
    let mut meta = json!({"resourceVersion": rev.to_string()});
    if initial_done {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    line(&json!({"type": "BOOKMARK", "object": {"kind": T::KIND, "apiVersion": T::API_VERSION, "metadata": meta}}))
}

pub fn matches<T: Strategy>(o: &T, l: &LabelSelector, f: &FieldSelector) -> bool {
    l.matches(o.labels()) && f.matches(|path| o.field(path))
}

/// Turn one etcd change into the watch event this client should see, if any. With a
/// selector, an object that starts matching is ADDED and one that stops is DELETED.
fn translate<T: Strategy>(ev: &RawEvent, l: &LabelSelector, f: &FieldSelector) -> Option<(&'static str, T)> {
    let dec = |v: &Option<(Vec<u8>, i64)>| v.as_ref().and_then(|(b, r)| storage::decode::<T>(b, *r).ok());
    let new = dec(&ev.value);
    let prev = dec(&ev.prev);
    let new_m = new.as_ref().is_some_and(|o| matches(o, l, f));
    let prev_m = prev.as_ref().is_some_and(|o| matches(o, l, f));
    match (new, prev) {
        (Some(n), _) if new_m && prev_m => Some(("MODIFIED", n)),
        (Some(n), _) if new_m => Some(("ADDED", n)),
        (Some(n), _) if prev_m => Some(("DELETED", n)),
        (None, Some(mut p)) if prev_m => {
            // A deleted object carries the revision of its deletion, so a client can resume.
            p.meta_mut().resource_version = Some(ev.revision.to_string());
            Some(("DELETED", p))
        }
        _ => None,
    }
}

/// Where a watch starts: the current objects as ADDED events (no `resourceVersion`, "0",
/// or `sendInitialEvents=true`), or only what happened after the given revision.
async fn initial<T: Strategy + Printable>(
    api: &Api,
    ns: Option<&str>,
    p: &HashMap<String, String>,
    sel: (&LabelSelector, &FieldSelector),
    out: Output,
    first: &mut bool,
) -> Result<(Vec<Bytes>, i64), ApiError> {
    let send_initial = match p.get("sendInitialEvents").map(String::as_str) {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(v) => return Err(ApiError::bad_request(format!("sendInitialEvents: invalid value {v:?}"))),
    };
    let rv = p.get("resourceVersion").map(String::as_str).filter(|r| !r.is_empty());
    if send_initial == Some(true) && p.get("allowWatchBookmarks").map(String::as_str) != Some("true") {
        return Err(ApiError::bad_request("sendInitialEvents requires allowWatchBookmarks=true"));
    }
    if send_initial.is_some() && p.get("resourceVersionMatch").map(String::as_str) != Some("NotOlderThan") {
        return Err(ApiError::bad_request("sendInitialEvents requires resourceVersionMatch=NotOlderThan"));
    }
    match (rv, send_initial) {
        (None | Some("0"), None) | (_, Some(true)) => {
            let (items, rev) = api.list::<T>(ns).await?;
            let mut lines: Vec<Bytes> = items.iter().filter(|o| matches(*o, sel.0, sel.1)).map(|o| event("ADDED", o, out, first)).collect();
            if send_initial == Some(true) {
                lines.push(bookmark::<T>(rev, true));
            }
            Ok((lines, rev + 1))
        }
        (None, Some(false)) => Ok((vec![], api.store.current_revision().await? + 1)),
        (Some(rv), _) => {
            let rv: i64 =
                rv.parse().ok().filter(|r| *r >= 0).ok_or_else(|| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?;
            api.store.check_revision(rv).await?;
            Ok((vec![], rv + 1))
        }
    }
}

/// `GET …?watch=true` until `timeoutSeconds` or the client goes away.
pub async fn watch<T: Strategy + Printable>(
    api: &Api,
    ns: Option<&str>,
    p: &HashMap<String, String>,
    sel: (LabelSelector, FieldSelector),
    out: Output,
) -> Result<Response, ApiError> {
    let (l, f) = sel;
    let mut first = true;
    let (initial, start) = initial::<T>(api, ns, p, (&l, &f), out, &mut first).await?;
    let events = api.store.watch(&Api::prefix::<T>(ns), start).await?;
    let timeout = match p.get("timeoutSeconds") {
        None => 1800,
        Some(t) => t.parse::<u64>().map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds {t:?}")))?,
    };
    let bookmarks = p.get("allowWatchBookmarks").is_some_and(|b| b == "true");
    let seen = Arc::new(AtomicI64::new(start - 1));
    let seen_by_live = seen.clone();
    let live = events.flat_map(move |batch| {
        let lines: Vec<Bytes> = match batch {
            Ok(evs) => {
                if let Some(e) = evs.last() {
                    seen_by_live.store(e.revision, Ordering::Relaxed);
                }
                evs.iter().filter_map(|ev| translate::<T>(ev, &l, &f)).map(|(k, o)| event(k, &o, out, &mut first)).collect()
            }
            Err(e) => vec![line(&json!({"type": "ERROR", "object": *e.0}))],
        };
        futures::stream::iter(lines)
    });
    // When etcd's watch ends (etcd went away, or compacted past it), the client's must end
    // too, so it watches again; a timer left running beside it would hold it open, dead.
    let (live_done, live_ended) = tokio::sync::oneshot::channel::<()>();
    let live = live.chain(
        futures::stream::once(async move {
            let _ = live_done.send(());
            None
        })
        .filter_map(futures::future::ready),
    );
    // Bookmarks go out on a timer beside the events, naming the last revision sent.
    let ticks = futures::stream::unfold((), |_| async {
        tokio::time::sleep(BOOKMARK_EVERY).await;
        Some(((), ()))
    })
    .filter(move |_| futures::future::ready(bookmarks))
    .map(move |_| bookmark::<T>(seen.load(Ordering::Relaxed), false))
    .take_until(live_ended);
    let merged = futures::stream::select(live, ticks);
    let (rx, held) = pump(merged, Duration::from_secs(timeout), T::KIND);
    let buffered = futures::stream::unfold(rx, move |mut rx| {
        let held = held.clone();
        async move {
            let line = rx.recv().await?;
            held.fetch_sub(line.len(), Ordering::Relaxed);
            Some((line, rx))
        }
    });
    let stream = futures::stream::iter(initial).chain(buffered).map(Ok::<_, std::convert::Infallible>);
    Ok(([(header::CONTENT_TYPE, "application/json")], Body::from_stream(stream)).into_response())
}

/// Read `events` (the etcd watch and the bookmark timer) on a task of its own, into a
/// buffer of [`WATCH_BUFFER`] lines; stop at `timeout`, when the client has gone, or when
/// the buffer is full (the client is too slow). Stopping drops the etcd watch. Returns
/// the buffer and the bytes it holds (the reader subtracts what it takes).
fn pump(
    events: impl futures::Stream<Item = Bytes> + Send + 'static,
    timeout: Duration,
    kind: &'static str,
) -> (tokio::sync::mpsc::Receiver<Bytes>, Arc<std::sync::atomic::AtomicUsize>) {
    let (tx, rx) = tokio::sync::mpsc::channel(WATCH_BUFFER);
    let held = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let bytes = held.clone();
    tokio::spawn(async move {
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline, events);
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                _ = tx.closed() => break,
                next = events.next() => match next {
                    None => break,
                    Some(line) => {
                        let n = line.len();
                        // Counted before it is sent, so the reader never takes more than was added.
                        let before = bytes.fetch_add(n, Ordering::Relaxed);
                        if before + n > WATCH_BUFFER_BYTES || tx.try_send(line).is_err() {
                            tracing::warn!(kind, "watcher too slow to keep up: ending its watch");
                            break;
                        }
                    }
                },
            }
        }
    });
    (rx, held)
}
