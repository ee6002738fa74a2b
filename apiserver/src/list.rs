//! LIST with `limit` and `continue`: a large collection is read in pages, every page from
//! the same etcd revision as the first, so the client sees one consistent snapshot even
//! while objects change. The `continue` token carries that revision and the key to resume
//! from; once etcd has compacted the revision away the token is `410 Expired` and the
//! client starts over.
//!
//! Upstream: k8s.io/apiserver/pkg/storage/etcd3/store.go (GetList), storage/continue.go

use crate::error::ApiError;
use crate::objects::Api;
use crate::registry::Strategy;
use crate::storage;
use base64::Engine;
use pkg::selector::{FieldSelector, LabelSelector};
use serde_json::{json, Value};

/// What a LIST request asks for.
pub struct ListQuery<'a> {
    pub labels: &'a LabelSelector,
    pub fields: &'a FieldSelector,
    /// At most this many items (0: all).
    pub limit: i64,
    pub continue_token: Option<&'a str>,
}

/// The items and the list's `metadata` (`resourceVersion`, `continue`, `remainingItemCount`).
pub struct ListResult<T> {
    pub items: Vec<T>,
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
    let keep = |o: &T| crate::watch::matches(o, q.labels, q.fields);
    if q.limit <= 0 && q.continue_token.is_none() {
        let (items, rev) = api.list::<T>(ns).await?;
        let items = items.into_iter().filter(keep).collect();
        return Ok(ListResult { items, metadata: json!({"resourceVersion": rev.to_string()}) });
    }
    let prefix = Api::prefix::<T>(ns);
    let (mut rev, mut start) = match q.continue_token {
        Some(t) => decode_continue(t)?,
        None => (0, String::new()),
    };
    let limit = if q.limit > 0 { q.limit } else { 500 };
    let filtered = !q.labels.0.is_empty() || !q.fields.0.is_empty();
    let mut items = vec![];
    loop {
        let page = api.store.list_page(&prefix, &format!("{prefix}{start}"), rev, limit).await.map_err(|e| expired(e, q))?;
        rev = page.revision;
        let fetched = page.items.len();
        for (i, (key, value, mod_rev)) in page.items.into_iter().enumerate() {
            start = format!("{}\0", &key[prefix.len()..]);
            let o: T = storage::decode(&value, mod_rev)?;
            if keep(&o) {
                items.push(o);
            }
            if items.len() as i64 == limit && q.limit > 0 {
                let left = page.remaining + (fetched - i - 1) as i64;
                return Ok(ListResult { items, metadata: page_meta(rev, &start, left, filtered) });
            }
        }
        if page.remaining == 0 {
            return Ok(ListResult { items, metadata: json!({"resourceVersion": rev.to_string()}) });
        }
    }
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
    fn continue_tokens_round_trip_and_reject_forgeries() {
        let t = encode_continue(42, "default/web-1\0");
        assert_eq!(decode_continue(&t).unwrap(), (42, "default/web-1\0".to_string()));
        assert_eq!(decode_continue("not base64!").unwrap_err().code(), 400);
        let forged = base64::engine::general_purpose::URL_SAFE.encode(br#"{"v":"meta.k8s.io/v1","rv":1,"start":"../secrets/"}"#);
        assert_eq!(decode_continue(&forged).unwrap_err().code(), 400);
    }
}
