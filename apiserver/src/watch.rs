//! `GET …?watch=true`: a stream of newline-delimited JSON events (`ADDED`, `MODIFIED`,
//! `DELETED`, `ERROR`, `BOOKMARK`) backed by one etcd watch on the kind's prefix.
//!
//! A watch must never share fate with other requests. Every etcd watch travels on the
//! one HTTP/2 connection all etcd traffic shares; if a client stops reading and its
//! etcd stream stops being read too, that stream's flow-control window fills, then the
//! connection's, and every request to etcd waits (three such clients took the whole API
//! down). So a task of its own reads each etcd watch at etcd's pace into a bounded
//! buffer (`--watch-buffer` events, 1,000 by default, and [`WATCH_BUFFER_BYTES`]) that the client drains at its pace. A client that
//! falls that far behind is dropped, as Kubernetes' watch cache drops unresponsive
//! watchers: its stream ends cleanly and it resumes from the last resourceVersion it saw.
//! The same task ends the watch at `timeoutSeconds`, whether or not the client reads.
//!
//! Upstream: k8s.io/apiserver/pkg/endpoints/handlers/watch.go, storage/etcd3/watcher.go

use crate::cacher::store::{Entry, Event};
use crate::cacher::Backlog;
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
use tokio::sync::broadcast;

/// How often a watch that asked for bookmarks (`allowWatchBookmarks=true`) gets one.
const BOOKMARK_EVERY: Duration = Duration::from_secs(60);

/// The bytes a watch holds for a client that reads slower than they come (beside
/// `--watch-buffer` events); past either and the client is dropped.
pub const WATCH_BUFFER_BYTES: usize = 8 << 20;

fn line(v: &Value) -> Bytes {
    let mut line = serde_json::to_vec(v).unwrap_or_default();
    line.push(b'\n');
    line.into()
}

/// One line of a watch stream.
fn event<T: Printable>(kind: &str, obj: &T, out: Output, first: &mut bool) -> Bytes {
    let object = if out == Output::Table {
        let t = printers::table(&[obj], obj.meta().resource_version.clone(), *first, Default::default());
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

/// Which event a change is for this client, if any: with a selector, an object that
/// starts matching is ADDED and one that stops is DELETED. (`prev` of a delete carries
/// the delete's revision, so a client can resume from it.)
/// `X` is the object or what holds it (a cache entry); `wanted` says whether one matches.
fn choose<'a, X>(new: Option<&'a X>, prev: Option<&'a X>, wanted: impl Fn(&X) -> bool) -> Option<(&'static str, &'a X)> {
    let new_m = new.is_some_and(&wanted);
    let prev_m = prev.is_some_and(&wanted);
    match (new, prev) {
        (Some(n), _) if new_m && prev_m => Some(("MODIFIED", n)),
        (Some(n), _) if new_m => Some(("ADDED", n)),
        (Some(n), _) if prev_m => Some(("DELETED", n)),
        (None, Some(p)) if prev_m => Some(("DELETED", p)),
        _ => None,
    }
}

/// One etcd change as the event this client should see, if any.
fn translate<T: Strategy>(ev: &RawEvent, l: &LabelSelector, f: &FieldSelector) -> Option<(&'static str, T)> {
    let dec = |v: &Option<(Vec<u8>, i64)>| v.as_ref().and_then(|(b, r)| storage::decode::<T>(b, *r).ok());
    let new = dec(&ev.value);
    let mut prev = dec(&ev.prev);
    if let (None, Some(p)) = (&new, &mut prev) {
        p.meta_mut().resource_version = Some(ev.revision.to_string());
    }
    choose(new.as_ref(), prev.as_ref(), |o| matches(o, l, f)).map(|(k, o)| (k, o.clone()))
}

/// Where a watch starts, from its `resourceVersion` and `sendInitialEvents`.
enum Start {
    /// With the objects there are now, as ADDED events (no `resourceVersion`: as of etcd's
    /// revision now; `0`: any recent state), then a bookmark if asked for.
    Objects { consistent: bool, bookmark: bool },
    /// With what happens from now on (`sendInitialEvents=false`, no `resourceVersion`).
    Now,
    /// With what happened after this revision.
    After(i64),
}

fn start_of(p: &HashMap<String, String>) -> Result<Start, ApiError> {
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
    Ok(match (rv, send_initial) {
        (None | Some("0"), None) | (_, Some(true)) => Start::Objects { consistent: rv != Some("0"), bookmark: send_initial == Some(true) },
        (None, Some(false)) => Start::Now,
        (Some(rv), _) => Start::After(
            rv.parse()
                .ok()
                .filter(|r| (0..i64::MAX).contains(r))
                .ok_or_else(|| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?,
        ),
    })
}

/// The lines a watch starts with and the revision its live events start at, read from etcd.
async fn initial<T: Strategy + Printable>(
    api: &Api,
    ns: Option<&str>,
    start: &Start,
    sel: (&LabelSelector, &FieldSelector),
    out: Output,
    first: &mut bool,
) -> Result<(Vec<Bytes>, i64), ApiError> {
    match *start {
        Start::Objects { bookmark: send, .. } => {
            let (items, rev) = api.list::<T>(ns).await?;
            let mut lines: Vec<Bytes> = items.iter().filter(|o| matches(*o, sel.0, sel.1)).map(|o| event("ADDED", o, out, first)).collect();
            if send {
                lines.push(bookmark::<T>(rev, true));
            }
            Ok((lines, rev + 1))
        }
        Start::Now => Ok((vec![], api.store.current_revision().await? + 1)),
        Start::After(rv) => {
            api.store.check_revision(rv).await?;
            Ok((vec![], rv + 1))
        }
    }
}

/// The stream of event lines of a watch served from etcd: its own etcd watch.
async fn from_etcd<T: Strategy + Printable>(
    api: &Api,
    ns: Option<&str>,
    start: &Start,
    sel: (LabelSelector, FieldSelector),
    out: Output,
    seen: Arc<AtomicI64>,
) -> Result<(Vec<Bytes>, futures::stream::BoxStream<'static, Bytes>), ApiError> {
    let (l, f) = sel;
    let mut first = true;
    let (initial, from) = initial::<T>(api, ns, start, (&l, &f), out, &mut first).await?;
    seen.store(from - 1, Ordering::Relaxed);
    let events = api.store.watch(&Api::prefix::<T>(ns), from).await?;
    let live = events.flat_map(move |batch| {
        let lines: Vec<Bytes> = match batch {
            Ok(evs) => {
                if let Some(e) = evs.last() {
                    seen.store(e.revision, Ordering::Relaxed);
                }
                evs.iter().filter_map(|ev| translate::<T>(ev, &l, &f)).map(|(k, o)| event(k, &o, out, &mut first)).collect()
            }
            Err(e) => vec![line(&json!({"type": "ERROR", "object": *e.0}))],
        };
        futures::stream::iter(lines)
    });
    Ok((initial, live.boxed()))
}

/// One event line from a cached object: for JSON, its kept encoding spliced in.
fn cached_event<T: Strategy + Printable>(kind: &str, e: &Entry<T>, out: Output, first: &mut bool) -> Bytes {
    if out != Output::Json {
        return event(kind, &e.obj, out, first);
    }
    e.event_line(kind)
}

/// The stream of event lines of a watch served from the watch cache, or `None` when the
/// cache cannot serve it (no cache; a revision older than its ring; not fresh in time).
async fn from_cache<T: Strategy + Printable>(
    api: &Api,
    ns: Option<&str>,
    start: &Start,
    sel: &(LabelSelector, FieldSelector),
    out: Output,
    seen: Arc<AtomicI64>,
) -> Result<Option<(Vec<Bytes>, futures::stream::BoxStream<'static, Bytes>)>, ApiError> {
    let Some(caches) = &api.caches else { return Ok(None) };
    let cache = caches.of::<T>().await?;
    let prefix = Api::prefix::<T>(ns);
    let (l, f) = sel.clone();
    let index = f.0.iter().find(|(path, _, eq)| path == crate::cacher::INDEXED && *eq).map(|(_, v, _)| v.as_str());
    let mut first = true;
    let sub = match *start {
        Start::Objects { consistent: true, .. } if !caches.wait_fresh().await? => return Ok(None),
        Start::Objects { .. } => cache.subscribe_with_objects(&prefix, index),
        Start::Now if !caches.wait_fresh().await? => return Ok(None),
        Start::Now => cache.subscribe_from(i64::MAX, index).expect("nothing is after the end"),
        // A revision the cache has not reached: wait for it, as for a LIST.
        Start::After(rv) => {
            caches.reach(rv).await?;
            match cache.subscribe_from(rv + 1, index) {
                Some(sub) => sub,
                None => return Ok(None),
            }
        }
    };
    let mut initial = vec![];
    match &sub.backlog {
        Backlog::Objects(objs) => {
            initial.extend(objs.iter().filter(|e| matches(&e.obj, &l, &f)).map(|e| cached_event("ADDED", e, out, &mut first)));
            if let Start::Objects { bookmark: true, .. } = start {
                initial.push(bookmark::<T>(sub.revision, true));
            }
        }
        Backlog::Events(evs) => initial.extend(evs.iter().filter_map(|ev| one_event(ev, &prefix, &l, &f, out, &mut first))),
    }
    // A client may name a revision the cache has not reached yet: nothing up to it is sent.
    let after = match *start {
        Start::After(rv) => rv.max(sub.revision),
        _ => sub.revision,
    };
    seen.store(after, Ordering::Relaxed);
    let live = futures::stream::unfold(sub.live, |mut rx| async move {
        match rx.recv().await {
            Ok(ev) => Some((ev, rx)),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(kind = T::KIND, behind = n, "watcher too slow for the watch cache: ending its watch");
                None
            }
            Err(broadcast::error::RecvError::Closed) => None,
        }
    })
    .filter(move |ev| futures::future::ready(ev.revision > after))
    .filter_map(move |ev| {
        seen.fetch_max(ev.revision, Ordering::Relaxed);
        futures::future::ready(one_event(&ev, &prefix, &l, &f, out, &mut first))
    });
    Ok(Some((initial, live.boxed())))
}

/// The line a cached event is for this watcher (its namespace, its selectors), if any.
fn one_event<T: Strategy + Printable>(
    ev: &Event<T>,
    prefix: &str,
    l: &LabelSelector,
    f: &FieldSelector,
    out: Output,
    first: &mut bool,
) -> Option<Bytes> {
    if !ev.key.starts_with(prefix) {
        return None;
    }
    let (kind, entry) = choose(ev.new.as_ref(), ev.prev.as_ref(), |e| matches(&e.obj, l, f))?;
    Some(cached_event(kind, entry, out, first))
}

/// `GET …?watch=true` until `timeoutSeconds` or the client goes away.
pub async fn watch<T: Strategy + Printable>(
    api: &Api,
    ns: Option<&str>,
    p: &HashMap<String, String>,
    sel: (LabelSelector, FieldSelector),
    out: Output,
) -> Result<Response, ApiError> {
    let start = start_of(p)?;
    let timeout = match p.get("timeoutSeconds") {
        None => 1800,
        Some(t) => t.parse::<u64>().map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds {t:?}")))?,
    };
    let bookmarks = p.get("allowWatchBookmarks").is_some_and(|b| b == "true");
    let seen = Arc::new(AtomicI64::new(0));
    let (initial, live) = match from_cache::<T>(api, ns, &start, &sel, out, seen.clone()).await? {
        Some(served) => served,
        None => from_etcd::<T>(api, ns, &start, sel, out, seen.clone()).await?,
    };
    // When the live events end (etcd's watch went away or compacted past it, the cache
    // started over, the watcher lagged), the client's watch must end too, so it watches
    // again; a timer left running beside it would hold it open, dead.
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
    let (rx, held) = pump(merged, Duration::from_secs(timeout), api.cfg.watch_buffer, T::KIND);
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
/// buffer of `capacity` lines; stop at `timeout`, when the client has gone, or when
/// the buffer is full (the client is too slow). Stopping drops the etcd watch. Returns
/// the buffer and the bytes it holds (the reader subtracts what it takes).
fn pump(
    events: impl futures::Stream<Item = Bytes> + Send + 'static,
    timeout: Duration,
    capacity: usize,
    kind: &'static str,
) -> (tokio::sync::mpsc::Receiver<Bytes>, Arc<std::sync::atomic::AtomicUsize>) {
    let (tx, rx) = tokio::sync::mpsc::channel(capacity.max(1));
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

#[cfg(test)]
mod tests {
    use super::*;
    use pkg::api::ConfigMap;

    fn cm(tier: &str) -> ConfigMap {
        let mut c = ConfigMap { metadata: pkg::api::meta(Some("default"), "a"), ..Default::default() };
        c.metadata.labels = Some([("tier".to_string(), tier.to_string())].into());
        c
    }

    #[test]
    fn a_selector_turns_changes_into_adds_and_deletes() {
        let l = LabelSelector::parse("tier=front").unwrap();
        let f = FieldSelector::default();
        let (front, back) = (cm("front"), cm("back"));
        let kind = |new: Option<&ConfigMap>, prev: Option<&ConfigMap>| choose(new, prev, |o| matches(o, &l, &f)).map(|(k, _)| k);
        assert_eq!(kind(Some(&front), None), Some("ADDED"));
        assert_eq!(kind(Some(&front), Some(&front)), Some("MODIFIED"));
        assert_eq!(kind(Some(&front), Some(&back)), Some("ADDED"), "starts matching");
        assert_eq!(kind(Some(&back), Some(&front)), Some("DELETED"), "stops matching");
        assert_eq!(kind(None, Some(&front)), Some("DELETED"));
        assert_eq!(kind(None, Some(&back)), None);
        assert_eq!(kind(Some(&back), None), None);
    }
}
