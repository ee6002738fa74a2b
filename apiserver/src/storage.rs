//! Storage: every object lives in etcd, as in kube-apiserver's `storage/etcd3`.
//!
//! Keys follow Kubernetes' own layout, so `etcdctl get --prefix /registry/` shows what a
//! real cluster would: `/registry/pods/{ns}/{name}`, `/registry/services/specs/{ns}/{name}`,
//! `/registry/services/endpoints/{ns}/{name}`, `/registry/minions/{name}` (nodes),
//! `/registry/namespaces/{name}`. Values are JSON (Kubernetes stores protobuf) so that a
//! learner can read them. The allocators' claims live under `/registry/ranges/`.
//!
//! `metadata.resourceVersion` is not stored: it is the key's etcd `mod_revision`, filled in
//! on every read. Writes are etcd transactions whose preconditions ("this key does not exist
//! yet", "this key is still at revision N") make optimistic concurrency exact: two writers
//! racing for the same name, ClusterIP or nodePort cannot both win.

use crate::error::ApiError;
use crate::members::{fail_over, Kind, Members};
use etcd_client::{Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Txn, TxnOp, WatchOptions};
use pkg::api::Object;
use std::time::Duration;

/// A precondition on one key of a transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// The key must not exist (create, claim).
    Absent,
    /// The key must exist (e.g. the namespace a new object goes into).
    Present,
    /// The key must still be at this `mod_revision` (optimistic update or delete).
    Revision(i64),
}

/// One operation of a transaction.
#[derive(Clone, Debug)]
pub enum Op {
    Put(String, Vec<u8>),
    /// A put that expires with an etcd lease (events: one hour).
    PutWithLease(String, Vec<u8>, i64),
    Delete(String),
    Check(String),
}

/// The outcome of [`Store::commit`].
pub enum Committed {
    /// All preconditions held; the writes happened at this etcd revision.
    Ok(i64),
    /// These preconditions (indices into the list given) did not hold; nothing was written.
    Failed(Vec<usize>),
}

/// An event of an etcd watch, already decoded into "what changed".
pub struct RawEvent {
    pub key: String,
    /// The value after the change (`None` for deletes).
    pub value: Option<(Vec<u8>, i64)>,
    /// The value before the change, if any.
    pub prev: Option<(Vec<u8>, i64)>,
    pub revision: i64,
}

const MAX_RESPONSE: usize = 512 * 1024 * 1024;

#[derive(Clone)]
pub struct Store {
    /// One client per etcd member; requests go to the pinned one ([`crate::members`]).
    members: Members,
    timeout: Duration,
    /// The etcd lease objects with a TTL are written with, and when it was granted: one
    /// lease serves every such write for a minute (kube-apiserver's LeaseManager), so a
    /// burst of events does not grant a lease each.
    ttl_lease: std::sync::Arc<tokio::sync::Mutex<Option<(i64, i64, std::time::Instant)>>>,
}

/// How long one TTL lease is reused for.
const LEASE_REUSE: Duration = Duration::from_secs(60);

/// One page of a LIST read from etcd at a fixed revision.
pub struct Page {
    pub items: Vec<(String, Vec<u8>, i64)>,
    /// The revision the whole list is read at (the first page's).
    pub revision: i64,
    /// Keys left after this page (etcd's `count` less what was returned), if any.
    pub remaining: i64,
}

impl Store {
    /// Connect lazily: the channel (re)connects on its own, so the apiserver starts while
    /// etcd is down and recovers when it returns, answering 503 meanwhile.
    pub async fn connect(endpoints: &[String], timeout: Duration) -> anyhow::Result<Store> {
        let opts = ConnectOptions::new().with_connect_timeout(timeout).with_keep_alive(Duration::from_secs(10), timeout);
        let members = Members::connect(endpoints, opts).await?;
        Ok(Store { members, timeout, ttl_lease: Default::default() })
    }

    /// Run one etcd request, `op(client)`, within the timeout: on the pinned member, and
    /// on the next ones while a member fails in a way [`fail_over`] allows for this kind.
    /// A read that runs out of time is 503; a write 504, since it may still commit
    /// (kube-apiserver says the same).
    async fn run<T, F, Fut>(&self, kind: Kind, mut op: F) -> Result<T, ApiError>
    where
        F: FnMut(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = tokio::time::Instant::now() + self.timeout;
        for attempt in 1..=self.members.count() {
            let (i, client) = self.members.pinned();
            match tokio::time::timeout_at(deadline, op(client)).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) if attempt < self.members.count() && fail_over(&e, kind) => self.members.failed(i, &e),
                Ok(Err(e)) => {
                    if fail_over(&e, Kind::Read) {
                        self.members.failed(i, &e); // the next request starts elsewhere
                    }
                    return Err(ApiError::from(e));
                }
                Err(_) if kind == Kind::Write => {
                    return Err(ApiError::new(
                        504,
                        "Timeout",
                        "the server was unable to return a response in the time allotted, but may still be processing the request",
                    ))
                }
                Err(_) => return Err(ApiError::unavailable("etcd did not answer in time")),
            }
        }
        unreachable!("the last attempt returns")
    }

    /// A KV client that accepts large responses (a list of 10,000 pods is ~10 MiB; gRPC's
    /// default limit is 4 MiB).
    fn kv(c: &Client) -> etcd_client::KvClient {
        c.kv_client().max_decoding_message_size(MAX_RESPONSE)
    }

    /// `get(key, opts)` on the KV API, as a read.
    async fn read(&self, key: &str, opts: Option<GetOptions>) -> Result<etcd_client::GetResponse, ApiError> {
        self.run(Kind::Read, |c| {
            let opts = opts.clone();
            async move { Self::kv(&c).get(key, opts).await }
        })
        .await
    }

    /// Read one object, with `resourceVersion` filled in.
    pub async fn get<T: Object>(&self, key: &str) -> Result<Option<T>, ApiError> {
        let resp = self.read(key, None).await?;
        match resp.kvs().first() {
            None => Ok(None),
            Some(kv) => Ok(Some(decode(kv.value(), kv.mod_revision())?)),
        }
    }

    /// Read every object under a prefix, and the revision the list was read at.
    pub async fn list<T: Object>(&self, prefix: &str) -> Result<(Vec<T>, i64), ApiError> {
        let (raw, rev) = self.list_raw(prefix, false).await?;
        let items = raw.iter().map(|(_, v, r)| decode(v, *r)).collect::<Result<_, _>>()?;
        Ok((items, rev))
    }

    /// Keys (and optionally values) under a prefix.
    pub async fn list_raw(&self, prefix: &str, keys_only: bool) -> Result<(Vec<(String, Vec<u8>, i64)>, i64), ApiError> {
        let mut opts = GetOptions::new().with_prefix();
        if keys_only {
            opts = opts.with_keys_only();
        }
        let resp = self.read(prefix, Some(opts)).await?;
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        let items =
            resp.kvs().iter().map(|kv| (String::from_utf8_lossy(kv.key()).into_owned(), kv.value().to_vec(), kv.mod_revision())).collect();
        Ok((items, rev))
    }

    /// Up to `limit` keys from `start` (inclusive) to the end of `prefix`, read at
    /// `revision` (0: now). A compacted revision is 410 Gone.
    pub async fn list_page(&self, prefix: &str, start: &str, revision: i64, limit: i64) -> Result<Page, ApiError> {
        let end = prefix_end(prefix);
        let mut opts = GetOptions::new().with_range(end).with_limit(limit);
        if revision > 0 {
            opts = opts.with_revision(revision);
        }
        let resp = self.read(start, Some(opts)).await?;
        let rev = if revision > 0 { revision } else { resp.header().map(|h| h.revision()).unwrap_or(0) };
        let items: Vec<(String, Vec<u8>, i64)> =
            resp.kvs().iter().map(|kv| (String::from_utf8_lossy(kv.key()).into_owned(), kv.value().to_vec(), kv.mod_revision())).collect();
        let remaining = (resp.count() - items.len() as i64).max(0);
        Ok(Page { items, revision: rev, remaining })
    }

    /// An etcd lease that lives at least `ttl` seconds from now, shared for a minute.
    pub async fn ttl_lease(&self, ttl: i64) -> Result<i64, ApiError> {
        let mut cached = self.ttl_lease.lock().await;
        if let Some((id, t, at)) = *cached {
            if t == ttl && at.elapsed() < LEASE_REUSE {
                return Ok(id);
            }
        }
        // An extra lease, should a grant that timed out have happened, expires harmlessly.
        let resp = self.run(Kind::Read, |c| async move { c.lease_client().grant(ttl + LEASE_REUSE.as_secs() as i64, None).await }).await?;
        *cached = Some((resp.id(), ttl, std::time::Instant::now()));
        Ok(resp.id())
    }

    /// etcd's current revision.
    pub async fn current_revision(&self) -> Result<i64, ApiError> {
        let opts = GetOptions::new().with_keys_only().with_limit(1);
        let resp = self.read("/registry/", Some(opts)).await?;
        Ok(resp.header().map(|h| h.revision()).unwrap_or(0))
    }

    /// Fails with 410 Gone when `revision` has been compacted away, so a watch from it
    /// would miss events.
    pub async fn check_revision(&self, revision: i64) -> Result<(), ApiError> {
        let opts = GetOptions::new().with_revision(revision).with_keys_only().with_limit(1);
        self.read("/registry/", Some(opts)).await.map(|_| ())
    }

    /// Run the operations if every precondition holds, all or nothing.
    pub async fn commit(&self, expects: &[(String, Expect)], ops: Vec<Op>) -> Result<Committed, ApiError> {
        let compares: Vec<Compare> = expects
            .iter()
            .map(|(k, e)| match e {
                Expect::Absent => Compare::create_revision(k.as_str(), CompareOp::Equal, 0),
                Expect::Present => Compare::create_revision(k.as_str(), CompareOp::Greater, 0),
                Expect::Revision(r) => Compare::mod_revision(k.as_str(), CompareOp::Equal, *r),
            })
            .collect();
        let then: Vec<TxnOp> = ops
            .into_iter()
            .map(|op| match op {
                Op::Put(k, v) => TxnOp::put(k, v, None),
                Op::PutWithLease(k, v, lease) => TxnOp::put(k, v, Some(etcd_client::PutOptions::new().with_lease(lease))),
                Op::Delete(k) => TxnOp::delete(k, None),
                Op::Check(k) => TxnOp::get(k, None),
            })
            .collect();
        // On failure, read the keys back to learn which precondition failed.
        let otherwise: Vec<TxnOp> = expects.iter().map(|(k, _)| TxnOp::get(k.as_str(), None)).collect();
        let txn = Txn::new().when(compares).and_then(then).or_else(otherwise);
        let resp = self
            .run(Kind::Write, |c| {
                let txn = txn.clone();
                async move { Self::kv(&c).txn(txn).await }
            })
            .await?;
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        if resp.succeeded() {
            return Ok(Committed::Ok(rev));
        }
        let mut failed = vec![];
        for (i, (op, (_, e))) in resp.op_responses().into_iter().zip(expects).enumerate() {
            let found = match op {
                etcd_client::TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.mod_revision()),
                _ => None,
            };
            let holds = match e {
                Expect::Absent => found.is_none(),
                Expect::Present => found.is_some(),
                Expect::Revision(r) => found == Some(*r),
            };
            if !holds {
                failed.push(i);
            }
        }
        Ok(Committed::Failed(failed))
    }

    /// The raw value of a key (used to name who holds a claim).
    pub async fn get_raw(&self, key: &str) -> Result<Option<Vec<u8>>, ApiError> {
        let resp = self.read(key, None).await?;
        Ok(resp.kvs().first().map(|kv| kv.value().to_vec()))
    }

    /// Watch a prefix from `start_revision` (inclusive). Events arrive in revision order;
    /// the stream ends with an error when etcd compacts past it or goes away.
    pub async fn watch(
        &self,
        prefix: &str,
        start_revision: i64,
    ) -> Result<impl futures::Stream<Item = Result<Vec<RawEvent>, ApiError>> + Send + 'static, ApiError> {
        self.watch_with(prefix, WatchOptions::new().with_prefix().with_prev_key().with_start_revision(start_revision)).await
    }

    /// Watch every key from `start_revision` (inclusive), without the previous values:
    /// the watch cache's one watch.
    pub async fn watch_all(
        &self,
        start_revision: i64,
    ) -> Result<impl futures::Stream<Item = Result<Vec<RawEvent>, ApiError>> + Send + 'static, ApiError> {
        self.watch_with("\0", WatchOptions::new().with_all_keys().with_start_revision(start_revision)).await
    }

    async fn watch_with(
        &self,
        key: &str,
        opts: WatchOptions,
    ) -> Result<impl futures::Stream<Item = Result<Vec<RawEvent>, ApiError>> + Send + 'static, ApiError> {
        let (watcher, stream) = self
            .run(Kind::Read, |c| {
                let opts = opts.clone();
                async move { c.watch_client().max_decoding_message_size(MAX_RESPONSE).watch(key, Some(opts)).await }
            })
            .await?;
        Ok(futures::stream::unfold((watcher, stream, false), |(watcher, mut stream, done)| async move {
            if done {
                return None;
            }
            let item = match stream.message().await {
                Ok(Some(resp)) if resp.compact_revision() > 0 => Err(ApiError::gone(format!(
                    "too old resource version: watch fell behind etcd's compaction at {}",
                    resp.compact_revision()
                ))),
                Ok(Some(resp)) if resp.canceled() => {
                    Err(ApiError::unavailable(format!("etcd cancelled the watch: {}", resp.cancel_reason())))
                }
                Ok(Some(resp)) => Ok(resp
                    .events()
                    .iter()
                    .filter_map(|ev| {
                        let kv = ev.kv()?;
                        let prev = ev.prev_kv().map(|p| (p.value().to_vec(), p.mod_revision()));
                        Some(RawEvent {
                            key: String::from_utf8_lossy(kv.key()).into_owned(),
                            value: (ev.event_type() == EventType::Put).then(|| (kv.value().to_vec(), kv.mod_revision())),
                            prev,
                            revision: kv.mod_revision(),
                        })
                    })
                    .collect()),
                Ok(None) => Err(ApiError::unavailable("etcd closed the watch")),
                Err(e) => Err(ApiError::from(e)),
            };
            let done = item.is_err();
            Some((item, (watcher, stream, done)))
        }))
    }
}

/// The first key after every key that starts with `prefix` (etcd's range end for a prefix).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Decode a stored object and stamp it with the revision it was read at.
pub fn decode<T: Object>(value: &[u8], revision: i64) -> Result<T, ApiError> {
    let mut obj: T = serde_json::from_slice(value).map_err(|e| ApiError::internal(format!("stored {} does not decode: {e}", T::KIND)))?;
    obj.meta_mut().resource_version = Some(revision.to_string());
    Ok(obj)
}

/// Encode an object for storage: without `resourceVersion`, which is etcd's to say.
pub fn encode<T: Object>(obj: &T) -> Vec<u8> {
    let mut o = obj.clone();
    o.meta_mut().resource_version = None;
    serde_json::to_vec(&o).expect("API objects always serialize")
}

/// How many bytes [`encode`] makes of `obj`, counted without making them.
pub fn encoded_len<T: Object>(obj: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    serde_json::to_writer(&mut c, obj).expect("API objects always serialize");
    c.0
}

/// Where objects of kind `T` live in etcd.
pub fn prefix<T: Object>() -> &'static str {
    match T::RESOURCE {
        "pods" => "/registry/pods/",
        "services" => "/registry/services/specs/",
        "endpoints" => "/registry/services/endpoints/",
        "nodes" => "/registry/minions/",
        "namespaces" => "/registry/namespaces/",
        "configmaps" => "/registry/configmaps/",
        "secrets" => "/registry/secrets/",
        "serviceaccounts" => "/registry/serviceaccounts/",
        "events" => "/registry/events/",
        "leases" => "/registry/leases/",
        "deployments" => "/registry/deployments/",
        "replicasets" => "/registry/replicasets/",
        "endpointslices" => "/registry/endpointslices/",
        other => unreachable!("no storage prefix for {other}"),
    }
}

/// The key of one object, or the prefix of a namespace's objects when `name` is empty.
pub fn key<T: Object>(ns: Option<&str>, name: &str) -> String {
    match (T::NAMESPACED, ns) {
        (true, Some(ns)) => format!("{}{ns}/{name}", prefix::<T>()),
        _ => format!("{}{name}", prefix::<T>()),
    }
}
