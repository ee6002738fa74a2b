//! Test harness: a containerd (Debian's package, with runc) with its own root, state dir
//! and socket, and a locally made busybox image written straight into its content store.
#![allow(dead_code)]

use agent::runtime::Runtime;
use containerd_client::types::Descriptor;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Containerd {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    child: Child,
}

impl Containerd {
    pub fn start() -> Containerd {
        // Under /var/lib (not /tmp): overlayfs needs a filesystem that supports it.
        std::fs::create_dir_all("/var/lib/ownkube-test").unwrap();
        let dir = tempfile::tempdir_in("/var/lib/ownkube-test").unwrap();
        let socket = dir.path().join("containerd.sock");
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{1}\"\n[ttrpc]\n  address = \"{1}.ttrpc\"\n",
                dir.path().display(),
                socket.display()
            ),
        )
        .unwrap();
        let child = spawn(dir.path(), &socket);
        Containerd { dir, socket, child }
    }

    /// Stop containerd; its shims and their containers go on.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }

    /// Start it again (after [`Containerd::stop`]) on the same root and socket.
    pub fn start_again(&mut self) {
        self.child = spawn(self.dir.path(), &self.socket);
    }

    /// A client. The socket file appears a moment before containerd accepts on it (CI
    /// once saw ECONNREFUSED right after it existed), so connecting is retried for 10 s.
    pub async fn runtime(&self) -> Runtime {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match Runtime::connect(&self.socket).await {
                Ok(rt) => return rt,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("containerd not accepting yet ({e}); retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("connect to containerd: {e:?}"),
            }
        }
    }
}

/// containerd with the config in `dir`, once its socket exists.
fn spawn(dir: &std::path::Path, socket: &std::path::Path) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("containerd.log")).unwrap();
    let child = Command::new("containerd")
        .arg("--config")
        .arg(dir.join("config.toml"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("containerd must be installed (Debian: apt-get install containerd runc)");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "containerd did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Stop every task's shim, then containerd, then unmount what is left.
        let _ = Command::new("pkill")
            .args(["-f", &format!("containerd-shim-runc-v2 -namespace k8s.io -address {}", self.socket.display())])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        // runc keeps its state outside containerd's dirs; remove what this test left there.
        let runc_root = "/run/containerd/runc/k8s.io";
        if let Ok(out) = Command::new("runc").args(["--root", runc_root, "list", "-f", "json"]).output() {
            let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
            for c in list.iter().filter(|c| c["bundle"].as_str().is_some_and(|b| b.starts_with(self.dir.path().to_string_lossy().as_ref())))
            {
                let _ = Command::new("runc").args(["--root", runc_root, "delete", "-f", c["id"].as_str().unwrap_or("")]).status();
            }
        }
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!("grep -o ' {}[^ ]*' /proc/mounts | sort -r | xargs -r -n1 umount -l", self.dir.path().display()))
            .status();
    }
}

fn sha(data: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(data))
}

/// A one-layer image: static busybox with its applets, and `cmd` as the default command.
pub fn busybox_layer() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let busybox = std::fs::read("/bin/busybox").or_else(|_| std::fs::read("/usr/bin/busybox")).expect("busybox-static installed");
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o755);
    h.set_size(busybox.len() as u64);
    b.append_data(&mut h, "bin/busybox", busybox.as_slice()).unwrap();
    // Every applet busybox has (sh, httpd, tar for `kubectl cp`, ...).
    let list = std::process::Command::new("busybox")
        .arg("--list")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for applet in list.lines().filter(|a| !a.is_empty() && *a != "busybox") {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        b.append_link(&mut h, format!("bin/{applet}"), "busybox").unwrap();
    }
    for d in ["tmp", "www", "etc", "proc", "sys", "dev"] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        b.append_data(&mut h, format!("{d}/"), std::io::empty()).unwrap();
    }
    b.into_inner().unwrap()
}

/// The image's blobs: (media type, bytes) for the layer, the config and the manifest.
pub fn busybox_image(cmd: &[&str]) -> Vec<(String, Vec<u8>)> {
    let layer = busybox_layer();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin", "FROM_IMAGE=yes"], "Cmd": cmd, "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [sha(&layer)]}
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha(&layer), "size": layer.len()}]
    }))
    .unwrap();
    vec![
        ("application/vnd.oci.image.layer.v1.tar".into(), layer),
        ("application/vnd.oci.image.config.v1+json".into(), config),
        ("application/vnd.oci.image.manifest.v1+json".into(), manifest),
    ]
}

/// Put an image into containerd as a local build would (`ctr images import`): the
/// manifest (last) carries the labels that tell containerd's garbage collector it holds
/// the config and the layers, which nothing else refers to.
pub async fn import(rt: &Runtime, name: &str, blobs: Vec<(String, Vec<u8>)>) {
    let mut target = None;
    let mut refs = HashMap::new();
    let last = blobs.len() - 1;
    for (i, (media, data)) in blobs.into_iter().enumerate() {
        let digest = sha(&data);
        let size = data.len() as i64;
        let labels = if i == last { std::mem::take(&mut refs) } else { HashMap::new() };
        rt.write_blob(&digest, data, labels).await.unwrap();
        if media.contains("config") {
            refs.insert("containerd.io/gc.ref.content.config".to_string(), digest.clone());
        } else if media.contains("layer") {
            refs.insert(format!("containerd.io/gc.ref.content.l.{}", refs.len()), digest.clone());
        }
        target = Some(Descriptor { media_type: media, digest, size, annotations: HashMap::new() });
    }
    rt.create_image(name, target.unwrap()).await.unwrap();
}
