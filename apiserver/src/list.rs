//! LIST with `limit` and `continue`: a large collection is read in pages, every page from
//! the same etcd revision as the first, so the client sees one consistent snapshot even
//! while objects change. The `continue` token carries that revision and the key to resume
//! from; once etcd has compacted the revision away the token is `410 Expired` and the
//! client starts over.
//!
//! Which source answers (as kube-apiserver's cacher decides): the watch cache
//! ([`crate::cacher`]) — after waiting until it has caught up with etcd's current revision
//! when no `resourceVersion` is given (a consistent read), at once for `resourceVersion=0`
//! ("any recent state will do"; `limit` is then ignored, as in Kubernetes), or once it
//! reaches the given revision (`NotOlderThan`). Pages come from the cache too, each as the
//! objects were at the first page's revision (the cache undoes the changes its ring holds
//! since, as Kubernetes 1.33's snapshots of the cache do); a page whose revision the ring
//! no longer reaches back to, and `resourceVersionMatch=Exact`, are read from etcd at their
//! revision. Tokens from either source continue in the other.
//!
//! Upstream: k8s.io/apiserver/pkg/storage/etcd3/store.go (GetList), storage/continue.go,
//! storage/cacher/cacher.go (GetList, shouldDelegateList), cacher/store_btree.go

use crate::cacher::store::Entry;
use crate::error::ApiError;
use crate::objects::Api;
use crate::registry::Strategy;
use crate::storage;
use base64::Engine;
use pkg::selector::{FieldSelector, LabelSelector};
use serde_json::{json, Value};
use std::sync::Arc;

/// What a LIST request asks for.
pub struct ListQuery<'a> {
    pub labels: &'a LabelSelector,
    pub fields: &'a FieldSelector,
    /// At most this many items (0: all).
    pub limit: i64,
    pub continue_token: Option<&'a str>,
    /// `resourceVersion`: `None` (unset or empty), `Some(0)`, or a revision.
    pub resource_version: Option<i64>,
    /// `resourceVersionMatch=Exact`: exactly the snapshot at `resource_version`.
    pub exact: bool,
}

impl<'a> ListQuery<'a> {
    /// A LIST of everything the selectors match, as of now.
    pub fn all(labels: &'a LabelSelector, fields: &'a FieldSelector) -> ListQuery<'a> {
        ListQuery { labels, fields, limit: 0, continue_token: None, resource_version: None, exact: false }
    }

    /// Items per page read: the `limit`, or 500 when a continued LIST gives none.
    fn page_size(&self) -> i64 {
        if self.limit > 0 {
            self.limit
        } else {
            500
        }
    }

    /// Whether selectors leave objects out (a page then cannot say how many remain).
    fn filtered(&self) -> bool {
        !self.labels.0.is_empty() || !self.fields.0.is_empty()
    }
}

/// Where the page after the object stored at `key` starts: the part of its key after
/// `prefix`, and a NUL, so that page begins strictly after it.
fn start_after(key: &str, prefix: &str) -> String {
    format!("{}\0", &key[prefix.len()..])
}

/// `resourceVersion` and `resourceVersionMatch` of a LIST: (revision, exact). As in
/// Kubernetes, a revision with a `limit` and no match is exact (the legacy rule).
pub fn resource_version(rv: Option<&str>, rv_match: Option<&str>, limit: i64, continued: bool) -> Result<(Option<i64>, bool), ApiError> {
    if continued && rv_match.is_some_and(|m| !m.is_empty()) {
        return Err(ApiError::invalid_options(
            "ListOptions",
            "resourceVersionMatch",
            "resourceVersionMatch is forbidden when continue is provided",
        ));
    }
    let (rv, exact) = parse_resource_version(rv, rv_match)?;
    let legacy_exact = limit > 0 && rv_match.is_none_or(|m| m.is_empty()) && rv.is_some_and(|r| r > 0);
    Ok((rv, exact || legacy_exact))
}

fn parse_resource_version(rv: Option<&str>, rv_match: Option<&str>) -> Result<(Option<i64>, bool), ApiError> {
    let rv = match rv.filter(|r| !r.is_empty()) {
        None => None,
        Some(r) => Some(r.parse::<i64>().ok().filter(|r| (0..i64::MAX).contains(r)).ok_or_else(|| {
            ApiError::invalid_options("ListOptions", "resourceVersion", &format!("{r:?}: must be a non-negative integer"))
        })?),
    };
    match (rv_match.filter(|m| !m.is_empty()), rv) {
        (None, _) => Ok((rv, false)),
        (Some(_), None) => Err(ApiError::invalid_options(
            "ListOptions",
            "resourceVersionMatch",
            "resourceVersionMatch is forbidden unless resourceVersion is provided",
        )),
        (Some("NotOlderThan"), _) => Ok((rv, false)),
        (Some("Exact"), Some(0)) => Err(ApiError::invalid_options(
            "ListOptions",
            "resourceVersionMatch",
            "resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
        )),
        (Some("Exact"), _) => Ok((rv, true)),
        (Some(m), _) => Err(ApiError::invalid_options(
            "ListOptions",
            "resourceVersionMatch",
            &format!("{m:?}: supported values: \"Exact\", \"NotOlderThan\""),
        )),
    }
}

/// The items and the list's `metadata` (`resourceVersion`, `continue`, `remainingItemCount`).
/// Items are shared with the watch cache (and keep their JSON encoding once made).
pub struct ListResult<T> {
    pub items: Vec<Arc<Entry<T>>>,
    pub metadata: Value,
}

/// The token: the revision of the first page, and the key (below the list's prefix) to resume at.
#[derive(serde::Serialize, serde::Deserialize)]
struct Token {
    v: String,
    rv: i64,
    start: String,
}

pub fn encode_continue(rv: i64, start: &str) -> String {
    let t = Token { v: "meta.k8s.io/v1".into(), rv, start: start.to_string() };
    base64::engine::general_purpose::URL_SAFE.encode(serde_json::to_vec(&t).unwrap_or_default())
}

fn decode_continue(token: &str) -> Result<(i64, String), ApiError> {
    let bad = || ApiError::bad_request("continue key is not valid: the token was not issued by this server");
    let raw = base64::engine::general_purpose::URL_SAFE.decode(token).map_err(|_| bad())?;
    let t: Token = serde_json::from_slice(&raw).map_err(|_| bad())?;
    if t.v != "meta.k8s.io/v1" || t.rv <= 0 || t.start.contains("..") || t.start.starts_with('/') {
        return Err(bad());
    }
    Ok((t.rv, t.start))
}

/// List `T` in `ns` (or everywhere), filtered and paginated.
pub async fn list<T: Strategy>(api: &Api, ns: Option<&str>, q: &ListQuery<'_>) -> Result<ListResult<T>, ApiError> {
    if let Some(res) = from_cache(api, ns, q).await? {
        return Ok(res);
    }
    let keep = |o: &T| crate::watch::matches(o, q.labels, q.fields);
    if q.limit <= 0 && q.continue_token.is_none() && !q.exact {
        let (items, rev) = api.list::<T>(ns).await?;
        let items = items.into_iter().filter(keep).map(Entry::new).collect();
        return Ok(ListResult { items, metadata: json!({"resourceVersion": rev.to_string()}) });
    }
    let prefix = Api::prefix::<T>(ns);
    let (mut rev, mut start) = match q.continue_token {
        Some(t) => decode_continue(t)?,
        None if q.exact => (q.resource_version.unwrap_or(0), String::new()),
        None => (0, String::new()),
    };
    let limit = q.page_size();
    let mut items = vec![];
    loop {
        let page = api.store.list_page(&prefix, &format!("{prefix}{start}"), rev, limit).await.map_err(|e| expired(e, q))?;
        rev = page.revision;
        let fetched = page.items.len();
        for (i, (key, value, mod_rev)) in page.items.into_iter().enumerate() {
            start = start_after(&key, &prefix);
            let o: T = storage::decode(&value, mod_rev)?;
            if keep(&o) {
                items.push(Entry::new(o));
            }
            if items.len() as i64 == limit && q.limit > 0 {
                let left = page.remaining + (fetched - i - 1) as i64;
                return Ok(ListResult { items, metadata: page_meta(rev, &start, left, q.filtered()) });
            }
        }
        if page.remaining == 0 {
            return Ok(ListResult { items, metadata: json!({"resourceVersion": rev.to_string()}) });
        }
    }
}

/// The LIST served from the watch cache, when it may be (see the module's top).
async fn from_cache<T: Strategy>(api: &Api, ns: Option<&str>, q: &ListQuery<'_>) -> Result<Option<ListResult<T>>, ApiError> {
    let Some(caches) = &api.caches else { return Ok(None) };
    if q.exact {
        return Ok(None);
    }
    let cache = caches.of::<T>().await?;
    let continued = q.continue_token.map(decode_continue).transpose()?;
    if continued.is_none() {
        match q.resource_version {
            Some(0) => {}
            Some(rv) => caches.reach(rv).await?,
            None if !caches.wait_fresh().await? => {
                tracing::warn!(kind = T::KIND, "watch cache behind etcd: listing from etcd");
                return Ok(None);
            }
            None => {}
        }
    }
    let prefix = Api::prefix::<T>(ns);
    let keep = |o: &T| crate::watch::matches(o, q.labels, q.fields);
    if continued.is_none() && (q.limit <= 0 || q.resource_version == Some(0)) {
        let (entries, rev) = cache.list(&prefix);
        let items = entries.into_iter().filter(|e| keep(&e.obj)).collect();
        return Ok(Some(ListResult { items, metadata: json!({"resourceVersion": rev.to_string()}) }));
    }
    // A page: at the token's revision, or (a first page) at the cache's, which is etcd's now.
    let (rev, start) = continued.unwrap_or_else(|| (cache.revision(), String::new()));
    let Some(page) = cache.page_at(&prefix, &format!("{prefix}{start}"), rev, q.page_size() as usize, keep) else {
        return Ok(None); // the ring no longer reaches back to `rev`: etcd has it (or says 410)
    };
    let metadata = match &page.last {
        Some(last) => page_meta(rev, &start_after(last, &prefix), page.remaining as i64, q.filtered()),
        None => json!({"resourceVersion": rev.to_string()}),
    };
    Ok(Some(ListResult { items: page.items, metadata }))
}

/// `metadata` of a page that has more after it.
fn page_meta(rev: i64, start: &str, left: i64, filtered: bool) -> Value {
    if left == 0 {
        return json!({"resourceVersion": rev.to_string()});
    }
    let mut m = json!({"resourceVersion": rev.to_string(), "continue": encode_continue(rev, start)});
    if !filtered {
        m["remainingItemCount"] = json!(left);
    }
    m
}

/// A compacted continue revision is 410 with the message clients look for.
fn expired(e: ApiError, q: &ListQuery<'_>) -> ApiError {
    if e.code() == 410 && q.continue_token.is_some() {
        return ApiError::gone(
            "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
        );
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_version_and_match_are_read_as_kubernetes_does() {
        let rv = |v, m, limit, cont| resource_version(v, m, limit, cont).map_err(|e| e.code());
        assert_eq!(rv(None, None, 0, false), Ok((None, false)));
        assert_eq!(rv(Some("0"), None, 0, false), Ok((Some(0), false)));
        assert_eq!(rv(Some("7"), Some("NotOlderThan"), 0, false), Ok((Some(7), false)));
        assert_eq!(rv(Some("7"), Some("Exact"), 0, false), Ok((Some(7), true)));
        assert_eq!(rv(Some("7"), None, 50, false), Ok((Some(7), true)), "legacy: a revision with a limit is exact");
        assert_eq!(rv(Some("0"), None, 50, false), Ok((Some(0), false)));
        for bad in [(Some("x"), None), (None, Some("Exact")), (Some("0"), Some("Exact")), (Some("7"), Some("Newest"))] {
            assert_eq!(rv(bad.0, bad.1, 0, false), Err(422), "{bad:?}");
        }
        let top = i64::MAX.to_string();
        assert_eq!(rv(Some(top.as_str()), None, 0, false), Err(422), "no overflow at the top");
        assert_eq!(rv(None, Some("NotOlderThan"), 0, true), Err(422), "a match with continue");
    }

    #[test]
    fn continue_tokens_round_trip_and_reject_forgeries() {
        let t = encode_continue(42, "default/web-1\0");
        assert_eq!(decode_continue(&t).unwrap(), (42, "default/web-1\0".to_string()));
        assert_eq!(decode_continue("not base64!").unwrap_err().code(), 400);
        let forged = base64::engine::general_purpose::URL_SAFE.encode(br#"{"v":"meta.k8s.io/v1","rv":1,"start":"../secrets/"}"#);
        assert_eq!(decode_continue(&forged).unwrap_err().code(), 400);
    }
}
