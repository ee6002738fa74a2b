//! `GET …?watch=true`: a stream of newline-delimited JSON events (`ADDED`, `MODIFIED`,
//! `DELETED`, `ERROR`, `BOOKMARK`) backed by one etcd watch on the kind's prefix.
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

fn line(v: &Value) -> Bytes {
    let mut line = serde_json::to_vec(v).unwrap_or_default();
    line.push(b'\n');
    line.into()
}

/// One line of a watch stream.
fn event<T: Printable>(kind: &str, obj: &T, out: Output, first: &mut bool) -> Bytes {
    let object = if out == Output::Table {
        let t = printers::table(std::slice::from_ref(obj), obj.meta().resource_version.clone(), *first);
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
    // Bookmarks go out on a timer beside the events, naming the last revision sent.
    let ticks = futures::stream::unfold((), |_| async {
        tokio::time::sleep(BOOKMARK_EVERY).await;
        Some(((), ()))
    })
    .filter(move |_| futures::future::ready(bookmarks))
    .map(move |_| bookmark::<T>(seen.load(Ordering::Relaxed), false));
    let merged = futures::stream::select(live, ticks).take_until(tokio::time::sleep(Duration::from_secs(timeout)));
    let stream = futures::stream::iter(initial).chain(merged).map(Ok::<_, std::convert::Infallible>);
    Ok(([(header::CONTENT_TYPE, "application/json")], Body::from_stream(stream)).into_response())
}
