//! A small client for the apiserver (client-go's REST client and informers, reduced):
//! typed get/list/create/update, and an informer that lists, watches from the list's
//! resourceVersion and lists again whenever the watch breaks (including `410 Gone`).

use futures::StreamExt;
use pkg::api::{Object, Status, StatusExt};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("apiserver: {} ({}): {}", .0.code(), .0.reason(), .0.message())]
    Api(Box<Status>),
    #[error("apiserver unreachable: {0}")]
    Transport(#[from] reqwest::Error),
    #[error("unexpected response: {0}")]
    Decode(String),
}

impl ClientError {
    pub fn code(&self) -> u16 {
        match self {
            ClientError::Api(s) => s.code(),
            _ => 0,
        }
    }
}

#[derive(Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct List<T> {
    items: Vec<T>,
    metadata: ListMeta,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListMeta {
    resource_version: String,
}

/// Only the type of a watch event (of a line whose object is not the informer's kind).
#[derive(Deserialize)]
struct WatchEvent {
    #[serde(rename = "type")]
    type_: String,
}

/// A watch event whose object is the informer's kind, decoded in one go (through a
/// `serde_json::Value` first, every object was decoded twice: the larger part of a
/// proxy's CPU when 500 of them watch EndpointSlices).
#[derive(Deserialize)]
struct TypedEvent<T> {
    #[serde(rename = "type")]
    type_: String,
    object: T,
}

/// One line of a watch: a change, or `None` to list again (an `ERROR` such as 410 Gone;
/// `BOOKMARK`s and lines that do not decode are skipped as `Some(None)`).
fn parse_event<T: DeserializeOwned>(line: &[u8]) -> Option<Option<Change<T>>> {
    if let Ok(ev) = serde_json::from_slice::<TypedEvent<T>>(line) {
        return match ev.type_.as_str() {
            "ADDED" | "MODIFIED" => Some(Some(Change::Upsert(ev.object))),
            "DELETED" => Some(Some(Change::Deleted(ev.object))),
            "BOOKMARK" => Some(None),
            _ => None,
        };
    }
    match serde_json::from_slice::<WatchEvent>(line) {
        Ok(ev) if ev.type_ == "ERROR" => None,
        _ => Some(None),
    }
}

/// What an informer reports.
pub enum Change<T> {
    /// A fresh full list: replace the cache.
    Synced(Vec<T>),
    Upsert(T),
    Deleted(T),
}

impl<T> Change<T> {
    /// Apply this change to a cache keyed by `key(object)`.
    pub fn apply_to(self, cache: &mut std::collections::HashMap<String, T>, key: impl Fn(&T) -> String) {
        match self {
            Change::Synced(items) => *cache = items.into_iter().map(|o| (key(&o), o)).collect(),
            Change::Upsert(o) => drop(cache.insert(key(&o), o)),
            Change::Deleted(o) => drop(cache.remove(&key(&o))),
        }
    }
}

/// `namespace/name` of an object.
pub fn ns_name<T: Object>(o: &T) -> String {
    format!("{}/{}", o.namespace().unwrap_or(""), o.name())
}

/// The collection URL of a kind: `/api/v1/pods` (all namespaces) or `/api/v1/nodes`.
pub fn collection<T: Object>(ns: Option<&str>) -> String {
    match ns {
        Some(ns) if T::NAMESPACED => format!("/api/v1/namespaces/{ns}/{}", T::RESOURCE),
        _ => format!("/api/v1/{}", T::RESOURCE),
    }
}

impl Client {
    pub fn new(base: &str) -> Client {
        let http = reqwest::Client::builder().connect_timeout(Duration::from_secs(5)).build().expect("http client");
        Client { base: base.trim_end_matches('/').to_string(), http }
    }

    async fn decode<R: DeserializeOwned>(resp: reqwest::Response) -> Result<R, ClientError> {
        let code = resp.status();
        let body = resp.bytes().await?;
        if !code.is_success() {
            return Err(match serde_json::from_slice::<Status>(&body) {
                Ok(s) => ClientError::Api(Box::new(s)),
                Err(_) => ClientError::Decode(format!("{code}: {}", String::from_utf8_lossy(&body))),
            });
        }
        serde_json::from_slice(&body).map_err(|e| ClientError::Decode(e.to_string()))
    }

    pub async fn list<T: Object>(&self, path: &str) -> Result<(Vec<T>, String), ClientError> {
        let l: List<T> = Self::decode(self.http.get(format!("{}{path}", self.base)).send().await?).await?;
        Ok((l.items, l.metadata.resource_version))
    }

    pub async fn get<T: Object>(&self, path: &str) -> Result<T, ClientError> {
        Self::decode(self.http.get(format!("{}{path}", self.base)).send().await?).await
    }

    pub async fn create<T: Object>(&self, path: &str, obj: &T) -> Result<T, ClientError> {
        Self::decode(self.http.post(format!("{}{path}", self.base)).json(obj).send().await?).await
    }

    pub async fn update<T: Object>(&self, path: &str, obj: &T) -> Result<T, ClientError> {
        Self::decode(self.http.put(format!("{}{path}", self.base)).json(obj).send().await?).await
    }

    pub async fn delete(&self, path: &str) -> Result<serde_json::Value, ClientError> {
        Self::decode(self.http.delete(format!("{}{path}", self.base)).send().await?).await
    }

    /// List `path` (with an optional selector query), then watch it, sending every change
    /// to `tx` until the receiver is dropped. Never returns an error: it lists again.
    pub fn spawn_informer<T: Object, M: Send + 'static>(&self, path: String, tx: UnboundedSender<M>, wrap: fn(Change<T>) -> M) {
        let client = self.clone();
        tokio::spawn(async move {
            let sep = if path.contains('?') { '&' } else { '?' };
            loop {
                match client.list::<T>(&path).await {
                    Ok((items, rv)) => {
                        if tx.send(wrap(Change::Synced(items))).is_err() {
                            return;
                        }
                        let url = format!("{}{path}{sep}watch=true&resourceVersion={rv}&timeoutSeconds=600", client.base);
                        match client.http.get(url).send().await {
                            Ok(resp) if resp.status().is_success() => {
                                let mut stream = resp.bytes_stream();
                                let mut buf: Vec<u8> = Vec::new();
                                'read: while let Some(Ok(chunk)) = stream.next().await {
                                    buf.extend_from_slice(&chunk);
                                    while let Some(i) = buf.iter().position(|&b| b == b'\n') {
                                        let line: Vec<u8> = buf.drain(..=i).collect();
                                        let Some(change) = parse_event::<T>(&line) else {
                                            break 'read; // ERROR (e.g. 410 Gone): list again
                                        };
                                        if let Some(c) = change {
                                            if tx.send(wrap(c)).is_err() {
                                                return;
                                            }
                                        }
                                    }
                                }
                            }
                            Ok(resp) => tracing::warn!(kind = T::KIND, status = %resp.status(), "watch refused"),
                            Err(e) => tracing::warn!(kind = T::KIND, error = %e, "watch failed"),
                        }
                    }
                    Err(e) => tracing::warn!(kind = T::KIND, error = %e, "list failed"),
                }
                if tx.is_closed() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_event, Change};
    use pkg::api::Service;

    #[test]
    fn watch_lines_decode_once_and_errors_mean_list_again() {
        let added = br#"{"type":"ADDED","object":{"metadata":{"name":"web","namespace":"default"}}}"#;
        assert!(matches!(parse_event::<Service>(added), Some(Some(Change::Upsert(s))) if s.metadata.name.as_deref() == Some("web")));
        let gone = br#"{"type":"ERROR","object":{"kind":"Status","code":410,"reason":"Expired"}}"#;
        assert!(parse_event::<Service>(gone).is_none());
        assert!(matches!(parse_event::<Service>(b"not json"), Some(None)));
        let bookmark = br#"{"type":"BOOKMARK","object":{"metadata":{"resourceVersion":"12"}}}"#;
        assert!(matches!(parse_event::<Service>(bookmark), Some(None)));
    }
}
