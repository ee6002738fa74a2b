//! Pulling images over the OCI distribution protocol (what containerd's resolver and
//! fetcher do): resolve the manifest, fetch the config and layers, and write them into
//! containerd's content store, then name the image. Unpacking is the runtime's job.
//!
//! `--registry-mirror localhost:5000=http://registry:5000` says where a registry name is
//! really fetched from (kind's local-registry pattern); `--insecure-registry HOST` allows
//! plain HTTP for HOST.

use crate::runtime::{is_index, pick_manifest, Runtime};
use containerd_client::types::Descriptor;
use sha2::{Digest, Sha256};
use std::collections::HashMap;

const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// An image reference split the way registries see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    pub registry: String,
    pub repository: String,
    /// A tag or a `sha256:` digest.
    pub reference: String,
}

impl Reference {
    pub fn parse(image: &str) -> Reference {
        let (name, reference) = match image.split_once('@') {
            Some((n, d)) => (n, d.to_string()),
            None => match image.rsplit_once(':') {
                Some((n, t)) if !t.contains('/') => (n, t.to_string()),
                _ => (image, "latest".to_string()),
            },
        };
        let (registry, repository) = match name.split_once('/') {
            Some((host, rest)) if host.contains('.') || host.contains(':') || host == "localhost" => (host.to_string(), rest.to_string()),
            _ if name.contains('/') => ("docker.io".to_string(), name.to_string()),
            _ => ("docker.io".to_string(), format!("library/{name}")),
        };
        Reference { registry, repository, reference }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Registries {
    pub insecure: Vec<String>,
    /// registry name -> base URL it is fetched from.
    pub mirrors: HashMap<String, String>,
}

impl Registries {
    /// The base URL a registry is reached at.
    pub fn endpoint(&self, registry: &str) -> String {
        if let Some(m) = self.mirrors.get(registry) {
            return m.trim_end_matches('/').to_string();
        }
        let host = if registry == "docker.io" { "registry-1.docker.io" } else { registry };
        if self.insecure.iter().any(|r| r == registry) {
            format!("http://{host}")
        } else {
            format!("https://{host}")
        }
    }
}

/// Parse `Bearer realm="…",service="…",scope="…"` into the token URL to ask.
pub fn token_url(challenge: &str) -> Option<String> {
    let rest = challenge.strip_prefix("Bearer ")?;
    let mut realm = None;
    let mut query = vec![];
    for part in rest.split(',') {
        let (k, v) = part.trim().split_once('=')?;
        let v = v.trim_matches('"');
        match k {
            "realm" => realm = Some(v.to_string()),
            "service" | "scope" => query.push(format!("{k}={}", v.replace(':', "%3A").replace('/', "%2F"))),
            _ => {}
        }
    }
    let realm = realm?;
    Some(if query.is_empty() { realm } else { format!("{realm}?{}", query.join("&")) })
}

/// The anonymous token flow of the distribution spec.
async fn fetch_token(http: &reqwest::Client, challenge: &str) -> Result<String, String> {
    let url =
        token_url(challenge).ok_or_else(|| format!("registry asks for credentials ({challenge}); only anonymous pulls are supported"))?;
    let v: serde_json::Value = http
        .get(&url)
        .send()
        .await
        .map_err(|e| format!("cannot reach the token service: {e}"))?
        .json()
        .await
        .map_err(|e| format!("bad token answer: {e}"))?;
    v["token"].as_str().or(v["access_token"].as_str()).map(String::from).ok_or_else(|| "the token service gave no token".to_string())
}

fn sha(data: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(data))
}

/// Pull `image` into containerd, under a lease until the image record holds it all. The
/// error is the message a pod shows under ErrImagePull.
pub async fn pull(rt: &Runtime, http: &reqwest::Client, regs: &Registries, image: &str) -> Result<(), String> {
    let lease = rt.lease().await.map_err(|e| e.to_string())?;
    let r = pull_leased(rt, http, regs, image, &lease).await;
    rt.end_lease(&lease).await;
    r
}

async fn pull_leased(rt: &Runtime, http: &reqwest::Client, regs: &Registries, image: &str, lease: &str) -> Result<(), String> {
    let r = Reference::parse(image);
    let base = format!("{}/v2/{}", regs.endpoint(&r.registry), r.repository);
    // Registries such as Docker Hub answer 401 with where to get an (anonymous) pull token.
    let token: std::sync::Mutex<Option<String>> = Default::default();
    let fetch = |url: String, accept: bool| {
        let token = &token;
        async move {
            let send = |bearer: Option<String>| {
                let mut rq = http.get(&url);
                if accept {
                    rq = rq.header("Accept", ACCEPT);
                }
                if let Some(t) = bearer {
                    rq = rq.bearer_auth(t);
                }
                rq.send()
            };
            let current = token.lock().unwrap().clone();
            let mut resp = send(current).await.map_err(|e| format!("cannot reach the registry: {e}"))?;
            if resp.status() == reqwest::StatusCode::UNAUTHORIZED {
                let challenge = resp.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                let t = fetch_token(http, &challenge).await?;
                *token.lock().unwrap() = Some(t.clone());
                resp = send(Some(t)).await.map_err(|e| format!("cannot reach the registry: {e}"))?;
            }
            let status = resp.status();
            let ct = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            let body = resp.bytes().await.map_err(|e| format!("reading from the registry: {e}"))?.to_vec();
            if status == reqwest::StatusCode::NOT_FOUND {
                return Err(format!("{image}: not found"));
            }
            if !status.is_success() {
                return Err(format!("{image}: registry answered {status}"));
            }
            Ok((ct, body))
        }
    };
    let (mut media, mut manifest) = fetch(format!("{base}/manifests/{}", r.reference), true).await?;
    let mut top =
        Descriptor { media_type: media.clone(), digest: sha(&manifest), size: manifest.len() as i64, annotations: HashMap::new() };
    let parsed = |b: &[u8]| serde_json::from_slice::<serde_json::Value>(b).map_err(|e| format!("{image}: bad manifest: {e}"));
    let mut doc = parsed(&manifest)?;
    if is_index(&media) || doc.get("manifests").is_some() {
        rt.write_blob_leased(Some(lease), &top.digest, manifest.clone(), HashMap::new()).await.map_err(|e| e.to_string())?;
        let m = pick_manifest(&doc).ok_or_else(|| format!("{image}: no manifest for this platform"))?;
        let digest = m["digest"].as_str().unwrap_or_default().to_string();
        (media, manifest) = fetch(format!("{base}/manifests/{digest}"), true).await?;
        doc = parsed(&manifest)?;
        if sha(&manifest) != digest {
            return Err(format!("{image}: manifest digest mismatch"));
        }
        if top.media_type.is_empty() {
            top.media_type = "application/vnd.oci.image.index.v1+json".into();
        }
    } else if top.media_type.is_empty() {
        top.media_type = doc["mediaType"].as_str().unwrap_or("application/vnd.oci.image.manifest.v1+json").into();
    }
    let _ = media;
    // Blobs first (config, then layers), each checked against its digest, then the
    // manifest, whose labels keep them from containerd's garbage collector.
    let mut labels = HashMap::new();
    let config = doc["config"]["digest"].as_str().unwrap_or_default().to_string();
    let layers: Vec<String> =
        doc["layers"].as_array().into_iter().flatten().filter_map(|l| l["digest"].as_str().map(String::from)).collect();
    for (i, digest) in std::iter::once(&config).chain(&layers).enumerate() {
        let (_, blob) = fetch(format!("{base}/blobs/{digest}"), false).await?;
        if &sha(&blob) != digest {
            return Err(format!("{image}: blob {digest} does not match its digest"));
        }
        rt.write_blob_leased(Some(lease), digest, blob, HashMap::new()).await.map_err(|e| e.to_string())?;
        let key =
            if i == 0 { "containerd.io/gc.ref.content.config".to_string() } else { format!("containerd.io/gc.ref.content.l.{}", i - 1) };
        labels.insert(key, digest.clone());
    }
    rt.write_blob_leased(Some(lease), &sha(&manifest), manifest, labels).await.map_err(|e| e.to_string())?;
    rt.create_image(image, top).await.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        let p = Reference::parse;
        assert_eq!(p("nginx"), Reference { registry: "docker.io".into(), repository: "library/nginx".into(), reference: "latest".into() });
        assert_eq!(p("localhost:5000/whoami:v1").registry, "localhost:5000");
        assert_eq!(p("localhost:5000/whoami:v1").reference, "v1");
        assert_eq!(p("localhost/app").repository, "app");
        assert_eq!(p("me/app:2").repository, "me/app");
        assert_eq!(p("r.io/a/b@sha256:abc").reference, "sha256:abc");
        let regs = Registries {
            insecure: vec!["r.local:5000".into()],
            mirrors: HashMap::from([("localhost:5000".into(), "http://registry:5000".into())]),
        };
        assert_eq!(regs.endpoint("localhost:5000"), "http://registry:5000");
        assert_eq!(regs.endpoint("r.local:5000"), "http://r.local:5000");
        assert_eq!(regs.endpoint("docker.io"), "https://registry-1.docker.io");
    }

    #[test]
    fn token_challenges() {
        let c = r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#;
        assert_eq!(
            token_url(c).unwrap(),
            "https://auth.docker.io/token?service=registry.docker.io&scope=repository%3Alibrary%2Fnginx%3Apull"
        );
        assert_eq!(token_url("Basic realm=\"x\""), None);
    }
}
