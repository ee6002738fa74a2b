//! Volumes: directories on the node, bind-mounted into containers at their `mountPath`.
//!
//! - `emptyDir`: an empty directory, as long-lived as the pod;
//! - `configMap`, `secret`, `downwardAPI`: files written from the object (or the pod's own
//!   fields) and rewritten when it changes, atomically: a new `..<time>` directory, then one
//!   `rename` of the `..data` link to it (the visible files are links through `..data`),
//!   so a program never reads a half-written update;
//! - `hostPath`: a path of the node, checked against its `type` (`DirectoryOrCreate`, ...).
//!
//! Upstream: pkg/volume/emptydir, pkg/volume/configmap, pkg/volume/util/atomic_writer.go, pkg/volume/hostpath

use pkg::api::{Container, Pod};
use pkg::kubelet::env::Node;
use pkg::kubelet::volumes::{self as payloads, Payload};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A bind mount for the OCI spec.
#[derive(Clone, Debug)]
pub struct Mount {
    pub source: PathBuf,
    pub destination: String,
    pub read_only: bool,
}

/// Write `payload` into `dir` atomically; `false` if nothing changed.
pub fn atomic_write(dir: &Path, payload: &Payload) -> std::io::Result<bool> {
    std::fs::create_dir_all(dir)?;
    let data = dir.join("..data");
    let old = std::fs::read_link(&data).ok().map(|t| dir.join(t));
    if let Some(old) = &old {
        let same = payload.iter().all(|(p, (bytes, mode))| {
            let f = old.join(p);
            std::fs::read(&f).is_ok_and(|b| &b == bytes) && std::fs::metadata(&f).is_ok_and(|m| m.permissions().mode() & 0o777 == *mode)
        });
        let count = walk_files(old).len();
        if same && count == payload.len() {
            return Ok(false);
        }
    }
    let ts = dir.join(format!("..{}.{:09}", jiff::Timestamp::now().strftime("%Y_%m_%d_%H_%M_%S"), rand::random::<u32>() % 1_000_000_000));
    std::fs::create_dir_all(&ts)?;
    std::fs::set_permissions(&ts, std::fs::Permissions::from_mode(0o755))?;
    for (p, (bytes, mode)) in payload {
        let f = ts.join(p);
        if let Some(parent) = f.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&f, bytes)?;
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(*mode))?;
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(ts.file_name().expect("named"), &tmp)?;
    std::fs::rename(&tmp, &data)?;
    // The visible names: one link per top-level entry, through ..data.
    let tops: std::collections::BTreeSet<String> = payload.keys().map(|p| p.split('/').next().unwrap_or(p).to_string()).collect();
    for t in &tops {
        let link = dir.join(t);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(t), &link)?;
        }
    }
    for e in std::fs::read_dir(dir)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("..") && !tops.contains(&name) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    if let Some(old) = old {
        let _ = std::fs::remove_dir_all(old);
    }
    Ok(true)
}

fn walk_files(d: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk_files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// `hostPath` with its `type` checked (or made, for the `...OrCreate` types).
fn host_path(path: &str, ty: Option<&str>) -> Result<PathBuf, String> {
    let p = PathBuf::from(path);
    let fail = |what: &str| Err(format!("hostPath type check failed: {path} is not a {what}"));
    match ty.unwrap_or("") {
        "" => {}
        "DirectoryOrCreate" => std::fs::create_dir_all(&p).map_err(|e| e.to_string())?,
        "Directory" if !p.is_dir() => return fail("directory"),
        "FileOrCreate" if !p.exists() => drop(std::fs::File::create(&p).map_err(|e| e.to_string())?),
        "File" if !p.is_file() => return fail("file"),
        "Directory" | "FileOrCreate" | "File" => {}
        other => return Err(format!("hostPath type {other:?} is not supported")),
    }
    Ok(p)
}

/// Make every volume of the pod ready under `pod_dir/volumes`; name → directory on the node.
pub fn prepare(pod: &Pod, pod_dir: &Path, src: &dyn pkg::kubelet::env::Sources, node: &Node) -> Result<BTreeMap<String, PathBuf>, String> {
    let mut out = BTreeMap::new();
    for v in pod.spec.as_ref().and_then(|s| s.volumes.as_ref()).into_iter().flatten() {
        let dir = pod_dir.join("volumes").join(&v.name);
        let failed = |e: String| format!("MountVolume.SetUp failed for volume \"{}\" : {e}", v.name);
        let written = if v.empty_dir.is_some() {
            std::fs::create_dir_all(&dir)
                .and_then(|_| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)))
                .map_err(|e| failed(e.to_string()))?;
            dir.clone()
        } else if let Some(c) = &v.config_map {
            let p = payloads::config_map(src.config_map(&c.name).as_ref(), c).map_err(failed)?;
            atomic_write(&dir, &p).map_err(|e| failed(e.to_string()))?;
            dir.clone()
        } else if let Some(s) = &v.secret {
            let name = s.secret_name.clone().unwrap_or_default();
            let p = payloads::secret(src.secret(&name).as_ref(), s).map_err(failed)?;
            atomic_write(&dir, &p).map_err(|e| failed(e.to_string()))?;
            dir.clone()
        } else if let Some(d) = &v.downward_api {
            let p = payloads::downward_api(pod, d, node).map_err(failed)?;
            atomic_write(&dir, &p).map_err(|e| failed(e.to_string()))?;
            dir.clone()
        } else if let Some(h) = &v.host_path {
            host_path(&h.path, h.type_.as_deref()).map_err(failed)?
        } else {
            return Err(failed(
                "this volume type is not supported by ownkube (emptyDir, configMap, secret, downwardAPI, hostPath are)".into(),
            ));
        };
        out.insert(v.name.clone(), written);
    }
    Ok(out)
}

/// A container's `volumeMounts` as bind mounts (configMap and secret volumes read-only).
pub fn mounts(pod: &Pod, c: &Container, vols: &BTreeMap<String, PathBuf>) -> Result<Vec<Mount>, String> {
    let mut out = vec![];
    let specs = pod.spec.as_ref().and_then(|s| s.volumes.clone()).unwrap_or_default();
    for m in c.volume_mounts.iter().flatten() {
        let src = vols.get(&m.name).ok_or_else(|| format!("volume \"{}\" of mount {} is not defined", m.name, m.mount_path))?;
        let ro_kind = specs
            .iter()
            .find(|v| v.name == m.name)
            .is_some_and(|v| v.config_map.is_some() || v.secret.is_some() || v.downward_api.is_some());
        let source = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            Some(sub) => {
                payloads::valid_path(sub).map_err(|_| format!("error SubPath `{sub}` must not be an absolute path or contain '..'"))?;
                let p = src.join(sub);
                if !p.exists() {
                    std::fs::create_dir_all(&p).map_err(|e| e.to_string())?;
                }
                p
            }
            None => src.clone(),
        };
        out.push(Mount { source, destination: m.mount_path.clone(), read_only: m.read_only == Some(true) || ro_kind });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_updates_swap_the_data_link() {
        let d = tempfile::tempdir().unwrap();
        let p1: Payload = [("a.conf".to_string(), (b"one".to_vec(), 0o644)), ("dir/b".to_string(), (b"two".to_vec(), 0o600))].into();
        assert!(atomic_write(d.path(), &p1).unwrap());
        assert_eq!(std::fs::read(d.path().join("a.conf")).unwrap(), b"one");
        assert_eq!(std::fs::read(d.path().join("dir/b")).unwrap(), b"two");
        assert!(!atomic_write(d.path(), &p1).unwrap(), "unchanged: nothing written");
        let first = std::fs::read_link(d.path().join("..data")).unwrap();
        let p2: Payload = [("a.conf".to_string(), (b"changed".to_vec(), 0o644))].into();
        assert!(atomic_write(d.path(), &p2).unwrap());
        assert_eq!(std::fs::read(d.path().join("a.conf")).unwrap(), b"changed");
        assert!(!d.path().join("dir").exists(), "a removed key goes");
        assert!(!d.path().join(first).exists(), "the old data goes");
        assert!(std::fs::symlink_metadata(d.path().join("a.conf")).unwrap().file_type().is_symlink());
    }
}
