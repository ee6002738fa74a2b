//! The generic create / get / list / update / delete of any kind (kube-apiserver's
//! `registry/generic/registry.Store`), used by the HTTP routes and the controllers alike.
//!
//! Each write is one etcd transaction holding the object *and* every allocator claim it
//! makes or gives up, guarded by preconditions: so a service and its ClusterIP are written
//! together or not at all, and two concurrent creates can never take the same number.

use crate::error::ApiError;
use crate::registry::{ApiErrorKind, Claim, Strategy};
use crate::storage::{self, Committed, Expect, Op, Store};
use crate::Config;
use pkg::api::{CauseExt, Namespace, Object, StatusCause};
use pkg::deletion::{self, Outcome, Propagation};
use pkg::managedfields::{self, Manager, Operation};
use std::collections::HashSet;
use std::sync::Arc;

/// How a request writes: for real or as a dry run (`?dryRun=All`), and who is writing,
/// for `metadata.managedFields`.
#[derive(Clone, Debug)]
pub struct Write {
    pub dry_run: bool,
    pub fields: Fields,
}

/// Whose write it is.
#[derive(Clone, Debug)]
pub enum Fields {
    /// An ordinary write by this field manager: it takes the fields it changes.
    Manager(String),
    /// A server-side apply, whose `managedFields` are already worked out.
    Applied,
}

/// The manager name of the in-process controllers' writes.
pub const CONTROLLERS: &str = "ownkube-controller-manager";

impl Write {
    pub fn by(manager: &str) -> Write {
        Write { dry_run: false, fields: Fields::Manager(manager.to_string()) }
    }
    pub fn dry(mut self, dry_run: bool) -> Write {
        self.dry_run = dry_run;
        self
    }
}

/// Record in `new.metadata.managedFields` who changed what since `old`.
fn track<T: Object>(old: Option<&T>, new: &mut T, w: &Write, subresource: Option<&str>) -> Result<(), ApiError> {
    let Fields::Manager(name) = &w.fields else { return Ok(()) };
    let mgr = Manager::new(name, Operation::Update, T::API_VERSION, subresource);
    let old_v = old.map(serde_json::to_value).transpose().map_err(|e| ApiError::internal(e.to_string()))?;
    let mut new_v = serde_json::to_value(&*new).map_err(|e| ApiError::internal(e.to_string()))?;
    managedfields::update(T::KIND, old_v.as_ref(), &mut new_v, &mgr, &pkg::api::now_rfc3339());
    *new = serde_json::from_value(new_v).map_err(|e| ApiError::internal(format!("managedFields: {e}")))?;
    Ok(())
}

/// How many times a write is retried when it lost a race it can recover from (an
/// automatically chosen number was taken meanwhile, or an unconditional update raced).
const RETRIES: usize = 32;

#[derive(Clone)]
pub struct Api {
    pub store: Store,
    pub cfg: Arc<Config>,
    /// The watch cache (`None` with `--watch-cache=false`).
    pub caches: Option<crate::cacher::Caches>,
}

fn owner<T: Object>(o: &T) -> String {
    match o.namespace() {
        Some(ns) if T::NAMESPACED => format!("{} {ns}/{}", T::KIND, o.name()),
        _ => format!("{} {}", T::KIND, o.name()),
    }
}

impl Api {
    pub async fn get<T: Strategy>(&self, ns: Option<&str>, name: &str) -> Result<T, ApiError> {
        self.store.get(&storage::key::<T>(ns, name)).await?.ok_or_else(|| ApiError::not_found(T::KIND, name))
    }

    pub async fn try_get<T: Strategy>(&self, ns: Option<&str>, name: &str) -> Result<Option<T>, ApiError> {
        self.store.get(&storage::key::<T>(ns, name)).await
    }

    /// All objects of a kind, in one namespace (`Some`) or everywhere (`None`).
    pub async fn list<T: Strategy>(&self, ns: Option<&str>) -> Result<(Vec<T>, i64), ApiError> {
        self.store.list(&Self::prefix::<T>(ns)).await
    }

    /// The etcd prefix of a kind's objects in one namespace (`Some`) or everywhere (`None`).
    pub fn prefix<T: Strategy>(ns: Option<&str>) -> String {
        match ns {
            Some(ns) if T::NAMESPACED => format!("{}{ns}/", storage::prefix::<T>()),
            _ => storage::prefix::<T>().to_string(),
        }
    }

    /// Read the claims every allocator of `T` has handed out (keys only).
    async fn load_taken(&self, prefixes: &[&str], taken: &mut HashSet<String>) -> Result<(), ApiError> {
        for p in prefixes {
            let (keys, _) = self.store.list_raw(p, true).await?;
            taken.extend(keys.into_iter().map(|(k, _, _)| k));
        }
        Ok(())
    }

    /// Turn a lost claim into the user's error (they asked for a taken number) or learn
    /// that the number is taken and return `Ok` to try another.
    async fn claim_lost(&self, kind: &str, name: &str, claim: &Claim, taken: &mut HashSet<String>) -> Result<(), ApiError> {
        if claim.requested {
            let holder = self.store.get_raw(&claim.key).await?.map(|v| String::from_utf8_lossy(&v).into_owned()).unwrap_or_default();
            let what = if claim.field.to_lowercase().contains("nodeport") {
                "port"
            } else if claim.field.contains("podCIDR") {
                "CIDR"
            } else {
                "IP"
            };
            return Err(ApiError::invalid(
                kind,
                name,
                vec![StatusCause::invalid(&claim.field, &claim.value, &format!("provided {what} is already allocated to {holder}"))],
            ));
        }
        taken.insert(claim.key.clone());
        Ok(())
    }

    fn claims_for<T: Strategy>(&self, obj: &mut T, old: Option<&T>, taken: &HashSet<String>) -> Result<Vec<Claim>, ApiError> {
        obj.claims(old, &self.cfg, taken, rand::random()).map_err(|e| match e {
            ApiErrorKind::Invalid(c) => ApiError::invalid(T::KIND, obj.name(), c),
            ApiErrorKind::RangeFull(m) => ApiError::internal(m),
        })
    }

    /// The claim keys a stored object holds (its numbers are all set, so nothing is chosen).
    fn held<T: Strategy>(&self, stored: &T) -> Result<Vec<String>, ApiError> {
        let mut o = stored.clone();
        Ok(self.claims_for(&mut o, Some(stored), &HashSet::new())?.into_iter().map(|c| c.key).collect())
    }

    /// Create an object: fill in the server's metadata, validate, claim, write — once.
    pub async fn create<T: Strategy>(&self, ns: Option<&str>, obj: T) -> Result<T, ApiError> {
        self.create_opts(ns, obj, &Write::by(CONTROLLERS)).await
    }

    /// Refuse at once an object etcd would refuse (`--max-object-bytes`), before the work
    /// that grows with its fields.
    fn fits<T: Strategy>(&self, o: &T) -> Result<(), ApiError> {
        let n = storage::encoded_len(o);
        if n > self.cfg.max_object_bytes {
            let why =
                format!("Request entity too large: the object is {n} bytes, more than etcd stores ({} bytes)", self.cfg.max_object_bytes);
            return Err(ApiError::new(413, "RequestEntityTooLarge", why));
        }
        Ok(())
    }

    /// The object's value write: with the kind's TTL (events) it expires with an etcd lease.
    async fn put_op<T: Strategy>(&self, key: &str, o: &T) -> Result<Op, ApiError> {
        Ok(match T::TTL_SECONDS {
            Some(ttl) => Op::PutWithLease(key.to_string(), storage::encode(o), self.store.ttl_lease(ttl).await?),
            None => Op::Put(key.to_string(), storage::encode(o)),
        })
    }

    /// [`Api::create`], or with `dry_run` everything but the write (`?dryRun=All`): the
    /// same checks in one etcd transaction whose preconditions are evaluated and whose
    /// write list is empty, so a name or number that is taken fails exactly as it would.
    pub async fn create_opts<T: Strategy>(&self, ns: Option<&str>, mut obj: T, w: &Write) -> Result<T, ApiError> {
        let dry_run = w.dry_run;
        let meta = obj.meta_mut();
        if T::NAMESPACED {
            let ns = ns.unwrap_or("default");
            match meta.namespace.as_deref() {
                Some(given) if !given.is_empty() && given != ns => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ))
                }
                _ => meta.namespace = Some(ns.to_string()),
            }
        } else {
            meta.namespace = None;
        }
        if meta.name.as_deref().unwrap_or("").is_empty() {
            meta.name = meta.generate_name.as_deref().filter(|g| !g.is_empty()).map(|g| {
                // The base is cut to 58 characters, so the name fits in 63 (names/generate.go).
                let base: String = g.chars().take(58).collect();
                let suffix: String = (0..5).map(|_| b"bcdfghjklmnpqrstvwxz2456789"[rand::random_range(0..27)] as char).collect();
                format!("{base}{suffix}")
            });
        }
        meta.uid = Some(uuid());
        meta.resource_version = None;
        meta.creation_timestamp = Some(pkg::api::now());
        meta.deletion_timestamp = None;
        meta.deletion_grace_period_seconds = None;
        obj.prepare_create();
        let name = obj.name().to_string();
        // Validated before its managedFields are worked out: that costs in proportion to
        // the object's fields, and what will be refused need not cost it.
        let causes = obj.validate(&self.cfg);
        if !causes.is_empty() {
            return Err(ApiError::invalid(T::KIND, &name, causes));
        }
        self.fits::<T>(&obj)?;
        track(None, &mut obj, w, None)?;
        let ns = obj.meta().namespace.clone();
        let key = storage::key::<T>(ns.as_deref(), &name);
        // The namespace must exist and not be Terminating, and still be at this revision
        // when the object is written (so nothing slips in behind a namespace's deletion).
        let mut ns_rev = match &ns {
            Some(n) => crate::controllers::namespace::admit(self, n).await?,
            None => 0,
        };
        let mut taken = HashSet::new();
        self.load_taken(T::PRELOAD, &mut taken).await?;
        for attempt in 0..RETRIES {
            if attempt == 3 {
                self.load_taken(T::ALLOCATORS, &mut taken).await?;
            }
            let mut o = obj.clone();
            let claims = self.claims_for(&mut o, None, &taken)?;
            let mut expects = vec![(key.clone(), Expect::Absent)];
            if let Some(ns) = &ns {
                expects.push((storage::key::<Namespace>(None, ns), Expect::Revision(ns_rev)));
            }
            let first_claim = expects.len();
            expects.extend(claims.iter().map(|c| (c.key.clone(), Expect::Absent)));
            let mut ops = vec![self.put_op(&key, &o).await?];
            ops.extend(claims.iter().map(|c| Op::Put(c.key.clone(), owner(&o).into_bytes())));
            if dry_run {
                ops.clear();
            }
            match self.store.commit(&expects, ops).await? {
                Committed::Ok(rev) => {
                    o.meta_mut().resource_version = (!dry_run).then(|| rev.to_string());
                    return Ok(o);
                }
                Committed::Failed(failed) => {
                    if failed.contains(&0) {
                        return Err(ApiError::already_exists(T::KIND, &name));
                    }
                    if let (Some(ns), true) = (&ns, failed.contains(&1)) {
                        // Changed meanwhile: gone (404), Terminating (403), or just updated.
                        ns_rev = crate::controllers::namespace::admit(self, ns).await?;
                        continue;
                    }
                    for i in failed.into_iter().filter(|&i| i >= first_claim) {
                        self.claim_lost(T::KIND, &name, &claims[i - first_claim], &mut taken).await?;
                    }
                }
            }
        }
        Err(ApiError::unavailable(format!("could not allocate for {} {name}: too much contention", T::KIND)))
    }

    /// Replace an object (`PUT`), or only its status (`PUT …/status`). With a
    /// `resourceVersion` the write happens only if the object is still at it (else 409).
    pub async fn update<T: Strategy>(&self, ns: Option<&str>, name: &str, new: T, status_only: bool) -> Result<T, ApiError> {
        self.update_opts(ns, name, new, status_only, &Write::by(CONTROLLERS)).await
    }

    /// [`Api::update`], optionally as a dry run (nothing written; the would-be object returned).
    pub async fn update_opts<T: Strategy>(
        &self,
        ns: Option<&str>,
        name: &str,
        new: T,
        status_only: bool,
        w: &Write,
    ) -> Result<T, ApiError> {
        let dry_run = w.dry_run;
        if !new.name().is_empty() && new.name() != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                new.name()
            )));
        }
        if let (true, Some(ns), Some(given)) = (T::NAMESPACED, ns, new.meta().namespace.as_deref()) {
            if !given.is_empty() && given != ns {
                return Err(ApiError::bad_request("the namespace of the provided object does not match the namespace sent on the request"));
            }
        }
        let wanted_rv = new.meta().resource_version.clone().filter(|rv| !rv.is_empty());
        let key = storage::key::<T>(ns, name);
        let mut taken = HashSet::new();
        for attempt in 0..RETRIES {
            if attempt == 3 {
                self.load_taken(T::ALLOCATORS, &mut taken).await?;
            }
            let old: T = self.get(ns, name).await?;
            let old_rv = old.meta().resource_version.clone().unwrap_or_default();
            if wanted_rv.as_ref().is_some_and(|rv| *rv != old_rv) {
                return Err(ApiError::conflict(T::KIND, name));
            }
            // A uid in the new object is a precondition (kube-apiserver's
            // defaultUpdatedObjectInfo): a write meant for an object deleted and made again
            // under the same name fails instead of landing on the new one.
            if let Some(uid) = new.uid().filter(|u| !u.is_empty() && Some(*u) != old.uid()) {
                let why = format!("UID in precondition: {uid}, UID in object meta: {}", old.uid().unwrap_or_default());
                return Err(ApiError::storage_precondition(T::KIND, name, &key, &why));
            }
            let mut o = new.clone();
            {
                let (m, om) = (o.meta_mut(), old.meta());
                m.name = Some(name.to_string());
                m.namespace = om.namespace.clone();
                m.uid = om.uid.clone();
                m.creation_timestamp = om.creation_timestamp.clone();
                m.generate_name = om.generate_name.clone();
                m.deletion_timestamp = om.deletion_timestamp.clone();
                m.deletion_grace_period_seconds = om.deletion_grace_period_seconds;
            }
            let mut causes = if status_only {
                if !o.prepare_status_update(&old) {
                    return Err(ApiError::new(404, "NotFound", format!("{} has no status subresource", T::RESOURCE)));
                }
                vec![]
            } else {
                o.prepare_update(&old)
            };
            causes.extend(o.validate(&self.cfg));
            let added = deletion::added_finalizers(old.meta(), o.meta());
            if !added.is_empty() {
                causes.push(StatusCause::cause(
                    "FieldValueForbidden",
                    format!("Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers {added:?}"),
                    "metadata.finalizers",
                ));
            }
            if !causes.is_empty() {
                return Err(ApiError::invalid(T::KIND, name, causes));
            }
            self.fits::<T>(&o)?;
            track(Some(&old), &mut o, w, status_only.then_some("status"))?;
            let held: HashSet<String> = self.held(&old)?.into_iter().collect();
            let claims = self.claims_for(&mut o, Some(&old), &taken)?;
            o.meta_mut().resource_version = Some(old_rv.clone());
            if storage::encode(&o) == storage::encode(&old) {
                return Ok(old); // nothing changes: no write, no new resourceVersion
            }
            let rev: i64 = old_rv.parse().unwrap_or(0);
            let mut expects = vec![(key.clone(), Expect::Revision(rev))];
            let new_claims: Vec<&Claim> = claims.iter().filter(|c| !held.contains(&c.key)).collect();
            expects.extend(new_claims.iter().map(|c| (c.key.clone(), Expect::Absent)));
            let mut ops = vec![self.put_op(&key, &o).await?];
            ops.extend(new_claims.iter().map(|c| Op::Put(c.key.clone(), owner(&o).into_bytes())));
            let keep: HashSet<&String> = claims.iter().map(|c| &c.key).collect();
            ops.extend(held.iter().filter(|k| !keep.contains(k)).map(|k| Op::Delete(k.clone())));
            if deletion::finalized(o.meta()) {
                // The last finalizer of a marked object is gone: the update removes it.
                ops = self.remove_ops(&key, &old)?;
            }
            if dry_run {
                ops.clear();
            }
            match self.store.commit(&expects, ops).await? {
                Committed::Ok(rev) => {
                    if !dry_run {
                        o.meta_mut().resource_version = Some(rev.to_string());
                    }
                    return Ok(o);
                }
                Committed::Failed(failed) => {
                    if failed.contains(&0) && wanted_rv.is_some() {
                        return Err(ApiError::conflict(T::KIND, name));
                    }
                    for i in failed.into_iter().filter(|&i| i >= 1) {
                        self.claim_lost(T::KIND, name, new_claims[i - 1], &mut taken).await?;
                    }
                }
            }
        }
        Err(ApiError::conflict(T::KIND, name))
    }

    /// Write what no ordinary update may change (a binding's `spec.nodeName` together with
    /// the pod's `PodScheduled` condition): `change` edits the stored object, which is then
    /// tracked, validated and written if it is still at the revision read, else read again.
    pub async fn rewrite<T: Strategy>(
        &self,
        ns: Option<&str>,
        name: &str,
        w: &Write,
        subresource: &str,
        mut change: impl FnMut(&mut T) -> Result<(), ApiError>,
    ) -> Result<T, ApiError> {
        let key = storage::key::<T>(ns, name);
        for _ in 0..RETRIES {
            let old: T = self.get(ns, name).await?;
            let mut o = old.clone();
            change(&mut o)?;
            track(Some(&old), &mut o, w, Some(subresource))?;
            let causes = o.validate(&self.cfg);
            if !causes.is_empty() {
                return Err(ApiError::invalid(T::KIND, name, causes));
            }
            if w.dry_run {
                return Ok(o);
            }
            let rv: i64 = old.meta().resource_version.as_deref().unwrap_or("0").parse().unwrap_or(0);
            if let Committed::Ok(rev) =
                self.store.commit(&[(key.clone(), Expect::Revision(rv))], vec![self.put_op(&key, &o).await?]).await?
            {
                o.meta_mut().resource_version = Some(rev.to_string());
                return Ok(o);
            }
        }
        Err(ApiError::conflict(T::KIND, name))
    }

    /// Read-modify-write for controllers: apply `change` to the current object and write
    /// it back if it changed, retrying on conflicts. `Ok(None)`: the object is gone.
    pub async fn modify<T: Strategy>(
        &self,
        ns: Option<&str>,
        name: &str,
        status_only: bool,
        mut change: impl FnMut(&mut T) -> bool,
    ) -> Result<Option<T>, ApiError> {
        for _ in 0..RETRIES {
            let Some(mut obj) = self.try_get::<T>(ns, name).await? else { return Ok(None) };
            if !change(&mut obj) {
                return Ok(Some(obj));
            }
            match self.update(ns, name, obj, status_only).await {
                Err(e) if e.code() == 409 => continue,
                Err(e) if e.code() == 404 => return Ok(None),
                r => return r.map(Some),
            }
        }
        Err(ApiError::conflict(T::KIND, name))
    }

    /// Delete an object and free its claims, or for a pod on a node begin a graceful
    /// delete. Returns the object as it was last (or is now, while terminating).
    pub async fn delete<T: Strategy>(
        &self,
        ns: Option<&str>,
        name: &str,
        grace: Option<i64>,
        precondition_rv: Option<&str>,
    ) -> Result<T, ApiError> {
        let opts = DeleteOpts { grace, precondition_rv: precondition_rv.map(String::from), ..Default::default() };
        self.delete_opts(ns, name, &opts).await
    }

    /// [`Api::delete`] with every option of a DELETE: a dry run checks and returns the
    /// object as the delete would leave it; a propagation policy adds the garbage
    /// collector's finalizers ([`pkg::deletion`]); an object with finalizers is marked,
    /// not removed.
    pub async fn delete_opts<T: Strategy>(&self, ns: Option<&str>, name: &str, opts: &DeleteOpts) -> Result<T, ApiError> {
        let key = storage::key::<T>(ns, name);
        for _ in 0..RETRIES {
            let old: T = self.get(ns, name).await?;
            let rv = old.meta().resource_version.clone().unwrap_or_default();
            if let Some(why) = opts.failed_precondition(&old) {
                return Err(ApiError::conflict_because(&pkg::api::group_kind::<T>(), name, &why));
            }
            let mut marked = old.clone();
            let outcome = if marked.begin_graceful_delete(opts.grace) {
                // A pod its kubelet must stop first: marked, with the policy's finalizers.
                let f = deletion::finalizers_after(old.meta().finalizers.as_deref().unwrap_or(&[]), opts.propagation);
                marked.meta_mut().finalizers = Some(f).filter(|f| !f.is_empty());
                if marked.meta() == old.meta() {
                    Outcome::Unchanged
                } else {
                    Outcome::Mark(Box::new(marked.meta().clone()))
                }
            } else {
                deletion::delete(old.meta(), opts.propagation, &pkg::api::now())
            };
            let expects = [(key.clone(), Expect::Revision(rv.parse().unwrap_or(0)))];
            match outcome {
                Outcome::Unchanged => return Ok(old),
                Outcome::Mark(meta) => {
                    *marked.meta_mut() = *meta;
                    if opts.dry_run {
                        return Ok(marked);
                    }
                    // Written directly: a client's update may not set deletionTimestamp, this may.
                    if let Committed::Ok(rev) = self.store.commit(&expects, vec![Op::Put(key.clone(), storage::encode(&marked))]).await? {
                        marked.meta_mut().resource_version = Some(rev.to_string());
                        return Ok(marked);
                    }
                }
                Outcome::Remove => {
                    if opts.dry_run {
                        return Ok(old);
                    }
                    if let Committed::Ok(_) = self.store.commit(&expects, self.remove_ops(&key, &old)?).await? {
                        return Ok(old);
                    }
                }
            }
        }
        Err(ApiError::conflict(T::KIND, name))
    }

    /// The writes that remove a stored object: the object and every claim it holds.
    fn remove_ops<T: Strategy>(&self, key: &str, stored: &T) -> Result<Vec<Op>, ApiError> {
        let mut ops = vec![Op::Delete(key.to_string())];
        ops.extend(self.held(stored)?.into_iter().map(Op::Delete));
        Ok(ops)
    }
}

/// The options of a DELETE (from its query string or `DeleteOptions` body).
#[derive(Clone, Debug, Default)]
pub struct DeleteOpts {
    pub grace: Option<i64>,
    pub precondition_rv: Option<String>,
    pub precondition_uid: Option<String>,
    pub dry_run: bool,
    pub propagation: Option<Propagation>,
}

impl DeleteOpts {
    /// Why the stored object fails this delete's preconditions, as kube-apiserver's
    /// `rest.BeforeDelete` words it; `None`: it passes.
    fn failed_precondition<T: Object>(&self, stored: &T) -> Option<String> {
        let (uid, rv) = (stored.uid().unwrap_or_default(), stored.meta().resource_version.as_deref().unwrap_or_default());
        match (&self.precondition_uid, &self.precondition_rv) {
            (Some(p), _) if p != uid => Some(format!(
                "the UID in the precondition ({p}) does not match the UID in record ({uid}). The object might have been deleted and then recreated"
            )),
            (_, Some(p)) if p != rv => Some(format!(
                "the ResourceVersion in the precondition ({p}) does not match the ResourceVersion in record ({rv}). The object might have been modified"
            )),
            _ => None,
        }
    }
}

/// A random (version 4) UUID for `metadata.uid`.
pub fn uuid() -> String {
    let b: [u8; 16] = rand::random();
    let h = |r: std::ops::Range<usize>| b[r].iter().map(|x| format!("{x:02x}")).collect::<String>();
    format!("{}-{}-4{}-{:x}{}-{}", h(0..4), h(4..6), &h(6..8)[1..], 8 | (b[8] & 3), &h(8..10)[1..], h(10..16))
}
