//! `tests/kubectl/conformance.sh` (create, apply twice, diff, dry runs, the three patch
//! types, events, describe, auth can-i) run with every kubectl this machine has:
//! `/usr/lib/google-cloud-sdk/bin/kubectl.1.*`, `$KUBECTL`, or `kubectl` on the PATH.
//! Finding none is a failure, not a skip: set OWNKUBE_NO_KUBECTL=1 to run without.

mod common;
use common::*;
use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kubectl_version_works() {
    let bins = kubectls();
    if bins.is_empty() {
        assert!(std::env::var("OWNKUBE_NO_KUBECTL").is_ok(), "no kubectl found: install one, set KUBECTL, or OWNKUBE_NO_KUBECTL=1");
        return;
    }
    let c = Cluster::start().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/kubectl/conformance.sh");
    let mut failures = vec![];
    for bin in bins {
        let ns = format!("kc-{}", bin.rsplit('.').next().unwrap_or("x"));
        let (server, etcd, b) = (c.base.clone(), c.etcd.url.clone(), bin.clone());
        let out = tokio::task::spawn_blocking(move || {
            Command::new("bash").arg(script).env("KUBECTL", &b).env("SERVER", server).env("ETCD", etcd).env("NS", ns).output().unwrap()
        })
        .await
        .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        println!("== {bin}\n{text}{}", String::from_utf8_lossy(&out.stderr));
        if !out.status.success() {
            failures.push(bin);
        }
    }
    assert!(failures.is_empty(), "kubectl checks failed with: {failures:?}");
}
