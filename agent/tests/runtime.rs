//! The runtime and network halves of the kubelet against the real containerd + runc and
//! real network namespaces: a pod made from a locally made image gets a veth and an
//! address, and answers on it from the node.

mod containerd;
mod netns;

use agent::exec::ExecRequest;
use agent::network::{self, Ipam};
use agent::runtime::{self, PodFiles, TaskState};
use containerd::*;
use netns::{exec, Netns};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

fn http_get(node: &Netns, addr: String) -> String {
    node.run(move || {
        let mut s = std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(3)).expect("connect to the pod");
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    })
    .join()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_runs_with_its_own_address_and_is_removed_cleanly() {
    let ctd = Containerd::start();
    let rt = ctd.runtime().await;
    let serve = "mkdir -p /www && echo HOSTNAME:$(hostname) FROM_IMAGE:$FROM_IMAGE POD_ENV:$POD_ENV > /www/index.html && exec httpd -f -p 8080 -h /www";
    import(&rt, "localhost:5000/busybox:test", busybox_image(&["sh", "-c", serve])).await;
    let img = rt.prepare_image("localhost:5000/busybox:test").await.unwrap().expect("image present");
    assert_eq!(img.cmd[0], "sh");
    assert!(rt.prepare_image("localhost:5000/nope:latest").await.unwrap().is_none());

    // The node: its own network namespace, with the bridge and the pods' veths.
    let node = Netns::new("knode");
    let h = network::connect_in(std::path::Path::new(&format!("/var/run/netns/{}", node.name))).await.unwrap();
    let cidr: pkg::alloc::Cidr = "10.244.7.0/24".parse().unwrap();
    let state = tempfile::tempdir().unwrap();
    let ipam = Ipam::new(state.path(), cidr).unwrap();

    let mut pods = vec![];
    for name in ["web-a", "web-b"] {
        let ns_name = format!("okpod-{name}-{}", std::process::id());
        let ns = network::create_netns(&ns_name).await.unwrap();
        let ip = ipam.allocate(&format!("uid-{name}")).unwrap();
        network::attach_pod(&h, &ns_name, &ns, cidr, ip).await.unwrap();
        network::attach_pod(&h, &ns_name, &ns, cidr, ip).await.expect("wiring again is harmless");
        let dir = state.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let files = PodFiles { hosts: dir.join("hosts"), hostname: dir.join("hostname"), resolv: dir.join("resolv.conf") };
        std::fs::write(&files.hosts, format!("127.0.0.1 localhost\n{ip} {name}\n")).unwrap();
        std::fs::write(&files.hostname, format!("{name}\n")).unwrap();
        std::fs::write(&files.resolv, "").unwrap();
        let args = runtime::process_args(&img, &[], &[]);
        let env = runtime::process_env(&img, &[("POD_ENV".into(), name.into())]);
        let spec = runtime::oci_spec(&args, &env, &img.working_dir, name, &ns, &files);
        let id = format!("{name}-app-{}", std::process::id());
        let labels = HashMap::from([(runtime::LABEL_POD_UID.to_string(), format!("uid-{name}"))]);
        rt.create_container(&id, "localhost:5000/busybox:test", &img.chain_id, &spec, labels.clone()).await.unwrap();
        let again = rt.create_container(&id, "localhost:5000/busybox:test", &img.chain_id, &spec, labels).await;
        assert!(again.as_ref().is_err_and(|e| e.is_already_exists()), "a second create is refused: {again:?}");
        let log = dir.join("app.log");
        let out = format!("file://{}", log.display());
        let io = agent::runtime::Stdio { stdout: out.clone(), stderr: out, ..Default::default() };
        rt.start_task(&id, &io).await.unwrap();
        pods.push((name, ns_name, ip, id, log));
    }
    // Each pod's bridge port has hairpin on, set by netlink (a pod reaching itself
    // through a Service: its packet goes back out of the port it came in by).
    for (_, ns_name, ..) in &pods {
        let (ok, out) = exec(&node.name, &["ip", "-d", "-j", "link", "show", &network::host_veth(ns_name)]);
        let link: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        assert!(ok && link[0]["linkinfo"]["info_slave_data"]["hairpin"] == true, "hairpin off: {out}");
    }
    // Each pod answers on its own address, from the node and from the other pod's network.
    for (name, _, ip, id, _) in &pods {
        assert!(matches!(rt.task_state(id).await.unwrap(), TaskState::Running { .. }));
        let deadline = Instant::now() + Duration::from_secs(10);
        let body = loop {
            let out = std::panic::catch_unwind(|| http_get(&node, format!("{ip}:8080")));
            match out {
                Ok(b) if b.contains("HOSTNAME") => break b,
                _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
                other => panic!("pod {name} never answered: {other:?}"),
            }
        };
        assert!(body.contains(&format!("HOSTNAME:{name} FROM_IMAGE:yes POD_ENV:{name}")), "{body}");
    }
    let (_, ns_a, _, _, _) = &pods[0];
    let a = Netns { name: ns_a.clone() };
    let body = http_get(&a, format!("{}:8080", pods[1].2));
    assert!(body.contains("HOSTNAME:web-b"), "pod to pod: {body}");
    std::mem::forget(a); // owned by the network module, deleted below

    // Stop and remove everything of pod a: task, container, snapshot, veth, netns, address.
    let (_, ns_name, _, id, log) = &pods[0];
    // SIGTERM, a grace period, then SIGKILL: httpd as PID 1 of its pid namespace has no
    // handler for SIGTERM, so here it is the SIGKILL that ends it, as it would in Kubernetes.
    rt.kill(id, 15).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut killed = false;
    while !matches!(rt.task_state(id).await.unwrap(), TaskState::Exited { .. }) {
        assert!(Instant::now() < deadline, "task did not stop");
        if !killed && Instant::now() + Duration::from_secs(9) > deadline {
            rt.kill(id, 9).await.unwrap();
            killed = true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // An exec into the stopped container fails and leaves no thread waiting on its pipes:
    // the tokio runtime it ran on still shuts down (a blocked FIFO open once hung CI).
    let (done, finished) = std::sync::mpsc::channel();
    let (rt2, id2, dir) = (rt.clone(), id.clone(), state.path().join("exec"));
    std::thread::spawn(move || {
        let r = tokio::runtime::Runtime::new().unwrap();
        let cmd = ExecRequest { command: vec!["true".into()], stdin: true, stdout: true, stderr: true, tty: false };
        let failed = r.block_on(rt2.exec(&id2, &cmd, &dir)).is_err();
        drop(r);
        let _ = done.send(failed);
    });
    assert_eq!(finished.recv_timeout(Duration::from_secs(20)), Ok(true), "exec into a stopped task fails, and its runtime shuts down");
    rt.delete_task(id).await.unwrap();
    rt.delete_container(id).await.unwrap();
    network::detach_pod(&h, ns_name).await.unwrap();
    ipam.release("uid-web-a");
    assert_eq!(rt.task_state(id).await.unwrap(), TaskState::Missing);
    assert!(!rt.list().await.unwrap().iter().any(|(c, _)| c == id));
    assert!(!rt.snapshot_keys().await.unwrap().contains(id));
    assert!(!network::pod_veths(&h).await.unwrap().contains(&network::host_veth(ns_name)));
    assert!(!std::path::Path::new(&format!("/var/run/netns/{ns_name}")).exists());
    assert_eq!(ipam.lookup("uid-web-a"), None);
    assert!(std::fs::metadata(log).is_ok(), "the log file stays for `kubectl logs --previous`-style reading");

    // Clean up pod b too.
    let (_, ns_b, _, id_b, _) = &pods[1];
    rt.kill(id_b, 9).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    rt.delete_task(id_b).await.unwrap();
    rt.delete_container(id_b).await.unwrap();
    network::detach_pod(&h, ns_b).await.unwrap();
}
