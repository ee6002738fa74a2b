//! Pod networking, what a CNI plugin (bridge + host-local IPAM) does for the kubelet, done
//! with rtnetlink (netlink messages, no `ip` commands):
//!
//! - a bridge `cni0` holding the first address of the node's pod CIDR (the pods' gateway);
//! - per pod, a network namespace (`/var/run/netns/<name>`, like `ip netns add`), a veth
//!   pair with one end on the bridge (hairpin on) and the other made inside the pod as
//!   `eth0`, with the next free address and a default route via the bridge;
//! - addresses recorded as files under the state dir (`ipam/<ip>` holding the pod's uid),
//!   so a restarted agent hands out no address twice;
//! - a route to every other node's pod CIDR via that node's IP.

use futures::TryStreamExt;
use pkg::alloc::Cidr;
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::{Handle, LinkBridge, LinkBridgePort, LinkUnspec, LinkVeth, RouteMessageBuilder};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

pub const BRIDGE: &str = "cni0";
pub const NETNS_DIR: &str = "/var/run/netns";

/// A netlink connection in this process's (the node's) network namespace.
pub fn connect() -> anyhow::Result<Handle> {
    let (conn, handle, _) = rtnetlink::new_connection()?;
    tokio::spawn(conn);
    Ok(handle)
}

/// A netlink connection whose socket lives in the named network namespace: opened from a
/// thread that joined it, then used from anywhere.
pub async fn connect_in(netns: &Path) -> anyhow::Result<Handle> {
    let path = netns.to_path_buf();
    let rt = tokio::runtime::Handle::current();
    let (conn, handle) = on_own_thread(move || -> anyhow::Result<_> {
        let f = std::fs::File::open(&path)?;
        // SAFETY: changes only this short-lived thread's network namespace.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            anyhow::bail!("setns {}: {}", path.display(), std::io::Error::last_os_error());
        }
        let _guard = rt.enter();
        let (conn, handle, _) = rtnetlink::new_connection()?;
        Ok((conn, handle))
    })
    .await
    .map_err(|_| anyhow::anyhow!("netns thread panicked"))??;
    tokio::spawn(conn);
    Ok(handle)
}

/// Run `f` on a thread of its own (one that may change its namespace and then ends) and
/// await its result without holding up a tokio worker: a pod's sandbox waits on the
/// kernel (a new network namespace takes milliseconds, longer while others are made), and
/// a worker blocked on `join()` held up every other pod's start and status write (in a
/// burst of 10 pods on a node, sandboxes took 360 ms each where one alone takes 20 ms).
/// An `Err` says the thread panicked.
async fn on_own_thread<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> Result<R, tokio::sync::oneshot::error::RecvError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.await
}

/// Create a named network namespace (as `ip netns add` does: a new namespace made by a
/// thread, kept alive by a bind mount). Returns its path; an existing one is reused.
pub async fn create_netns(name: &str) -> anyhow::Result<PathBuf> {
    let path = Path::new(NETNS_DIR).join(name);
    if is_netns(&path) {
        return Ok(path);
    }
    std::fs::create_dir_all(NETNS_DIR)?;
    std::fs::File::create(&path)?;
    let target = path.clone();
    on_own_thread(move || -> anyhow::Result<()> {
        // SAFETY: unshare affects only this thread, which ends right after.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            anyhow::bail!("unshare: {}", std::io::Error::last_os_error());
        }
        let src = std::ffi::CString::new(format!("/proc/self/task/{}/ns/net", unsafe { libc::gettid() }))?;
        let dst = std::ffi::CString::new(target.to_string_lossy().as_bytes())?;
        // SAFETY: valid C strings; a bind mount of our own namespace file.
        if unsafe { libc::mount(src.as_ptr(), dst.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null()) } != 0 {
            anyhow::bail!("bind mount netns: {}", std::io::Error::last_os_error());
        }
        Ok(())
    })
    .await
    .map_err(|_| anyhow::anyhow!("netns thread panicked"))??;
    Ok(path)
}

/// Whether `path` is a mounted network namespace.
pub fn is_netns(path: &Path) -> bool {
    // A bind-mounted nsfs file has a different device than the directory holding it.
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(path), std::fs::metadata(NETNS_DIR)) {
        (Ok(a), Ok(b)) => a.dev() != b.dev(),
        _ => false,
    }
}

/// Unmount and remove a named network namespace (missing is fine).
pub fn delete_netns(name: &str) {
    let path = Path::new(NETNS_DIR).join(name);
    if let Ok(c) = std::ffi::CString::new(path.to_string_lossy().as_bytes()) {
        // SAFETY: valid C string; detaching a mount we made.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
    let _ = std::fs::remove_file(&path);
}

async fn link_index(h: &Handle, name: &str) -> anyhow::Result<Option<u32>> {
    match h.link().get().match_name(name.to_string()).execute().try_next().await {
        Ok(Some(l)) => Ok(Some(l.header.index)),
        Ok(None) => Ok(None),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(e.into()),
    }
}

async fn ensure_addr(h: &Handle, index: u32, ip: Ipv4Addr, prefix: u8) -> anyhow::Result<()> {
    h.address().add(index, ip.into(), prefix).replace().execute().await?;
    Ok(())
}

/// The node side: bridge `cni0` with the gateway address, up.
pub async fn ensure_bridge(h: &Handle, pod_cidr: Cidr) -> anyhow::Result<u32> {
    let idx = match link_index(h, BRIDGE).await? {
        Some(i) => i,
        None => {
            h.link().add(LinkBridge::new(BRIDGE).build()).execute().await?;
            link_index(h, BRIDGE).await?.ok_or_else(|| anyhow::anyhow!("bridge vanished"))?
        }
    };
    ensure_addr(h, idx, gateway(pod_cidr), pod_cidr.prefix).await?;
    h.link().set(LinkUnspec::new_with_index(idx).up().build()).execute().await?;
    Ok(idx)
}

pub fn gateway(pod_cidr: Cidr) -> Ipv4Addr {
    pod_cidr.nth(1).expect("a pod CIDR has room for a gateway")
}

/// The host end of a pod's veth: `veth` + 8 hex characters of the pod's name hash.
pub fn host_veth(netns_name: &str) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(netns_name.as_bytes());
    format!("veth{:02x}{:02x}{:02x}{:02x}", d[0], d[1], d[2], d[3])
}

/// Wire a pod: veth pair, host end on the bridge, `eth0` in the pod with `ip`, loopback
/// up, default route via the bridge. Safe to call again for a pod already wired.
pub async fn attach_pod(h: &Handle, netns_name: &str, netns: &Path, pod_cidr: Cidr, ip: Ipv4Addr) -> anyhow::Result<()> {
    let host = host_veth(netns_name);
    let bridge = ensure_bridge(h, pod_cidr).await?;
    let pod = connect_in(netns).await?;
    if link_index(&pod, "eth0").await?.is_none() {
        if let Some(stale) = link_index(h, &host).await? {
            h.link().del(stale).execute().await?;
        }
        let f = std::fs::File::open(netns)?;
        h.link().add(veth_into(&host, "eth0", f.as_raw_fd())).execute().await?;
    }
    let host_idx = link_index(h, &host).await?.ok_or_else(|| anyhow::anyhow!("host veth missing"))?;
    h.link().set(LinkUnspec::new_with_index(host_idx).controller(bridge).up().build()).execute().await?;
    // Hairpin: let a pod reach itself through a service (its packet leaves and comes back
    // on the same port). By netlink, not /sys/class/net/*/brport/hairpin_mode: /sys is
    // read-only in a container (the lab's nodes), and that write failed there unseen.
    h.link().set_port(LinkBridgePort::new(host_idx).hairpin(true).build()).execute().await?;
    let eth0 = link_index(&pod, "eth0").await?.ok_or_else(|| anyhow::anyhow!("eth0 missing"))?;
    ensure_addr(&pod, eth0, ip, pod_cidr.prefix).await?;
    pod.link().set(LinkUnspec::new_with_index(eth0).up().build()).execute().await?;
    if let Some(lo) = link_index(&pod, "lo").await? {
        pod.link().set(LinkUnspec::new_with_index(lo).up().build()).execute().await?;
    }
    let route = RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(Ipv4Addr::UNSPECIFIED, 0).gateway(gateway(pod_cidr)).build();
    pod.route().add(route).replace().execute().await?;
    Ok(())
}

/// A veth pair whose peer is made right inside the namespace `netns_fd`, under its final
/// name (`ip link add A type veth peer name eth0 netns N`). Making it on the node and then
/// moving it costs a kernel RCU grace period per move under the one global netlink lock:
/// measured, 10 pods wired at once on a node took 340-360 ms each that way.
fn veth_into(host: &str, peer: &str, netns_fd: std::os::fd::RawFd) -> rtnetlink::packet_route::link::LinkMessage {
    use rtnetlink::packet_route::link::{InfoData, InfoVeth, LinkInfo};
    let mut m = LinkVeth::new(host, peer).build();
    for a in &mut m.attributes {
        if let LinkAttribute::LinkInfo(infos) = a {
            for i in infos {
                if let LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))) = i {
                    p.attributes.push(LinkAttribute::NetNsFd(netns_fd));
                }
            }
        }
    }
    m
}

/// Remove a pod's veth (its peer goes with it) and its namespace.
pub async fn detach_pod(h: &Handle, netns_name: &str) -> anyhow::Result<()> {
    if let Some(idx) = link_index(h, &host_veth(netns_name)).await? {
        h.link().del(idx).execute().await?;
    }
    delete_netns(netns_name);
    Ok(())
}

/// Host veths on the bridge (for sweeping those of pods that are gone).
pub async fn pod_veths(h: &Handle) -> anyhow::Result<Vec<String>> {
    let mut out = vec![];
    let mut links = h.link().get().execute();
    while let Some(l) = links.try_next().await? {
        for a in &l.attributes {
            if let LinkAttribute::IfName(n) = a {
                if n.starts_with("veth") && n.len() == 12 {
                    out.push(n.clone());
                }
            }
        }
    }
    Ok(out)
}

/// Make `dest` (another node's pod CIDR) reachable via `via` (that node's IP).
pub async fn ensure_route(h: &Handle, dest: Cidr, via: Ipv4Addr) -> anyhow::Result<()> {
    let route = RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(dest.addr, dest.prefix).gateway(via).build();
    h.route().add(route).replace().execute().await?;
    Ok(())
}

pub async fn delete_route(h: &Handle, dest: Cidr, via: Ipv4Addr) -> anyhow::Result<()> {
    let route = RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(dest.addr, dest.prefix).gateway(via).build();
    match h.route().del(route).execute().await {
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ESRCH => Ok(()),
        r => Ok(r?),
    }
}

/// host-local IPAM: one file per address handed out, named by the address, holding the
/// owner. Creating the file with `create_new` is the atomic claim. Addresses are handed
/// out round-robin from the last one reserved (`last_reserved_ip.0`, as the CNI plugin
/// names it): an address just freed is not given out again at once, because the node's
/// neighbour table still maps it to the old pod's MAC for a while — measured here: a new
/// pod on a reused address got no probe through for 20-30 s.
///
/// The files are the truth (they outlive the agent); `held` is what this process read
/// from them and wrote since, so a pod's every sync (each 10 s) does not read the whole
/// directory again: at 15,000 hollow pods that was 45,000 file reads a second.
pub struct Ipam {
    dir: PathBuf,
    cidr: Cidr,
    /// Owner → address, as on disk.
    held: std::sync::Mutex<std::collections::HashMap<String, Ipv4Addr>>,
}

impl Ipam {
    pub fn new(state_dir: &Path, cidr: Cidr) -> anyhow::Result<Ipam> {
        let dir = state_dir.join("ipam").join(cidr.to_string().replace('/', "-"));
        std::fs::create_dir_all(&dir)?;
        let mut ipam = Ipam { dir, cidr, held: Default::default() };
        ipam.held = std::sync::Mutex::new(ipam.on_disk().into_iter().map(|(ip, owner)| (owner, ip)).collect());
        Ok(ipam)
    }

    /// The address `owner` holds already, if any.
    pub fn lookup(&self, owner: &str) -> Option<Ipv4Addr> {
        self.held.lock().unwrap().get(owner).copied()
    }

    /// The owner's address, or the next free one (after the gateway) claimed for it.
    pub fn allocate(&self, owner: &str) -> anyhow::Result<Ipv4Addr> {
        // Held across the claim: two calls for one owner must not claim two addresses.
        let mut held = self.held.lock().unwrap();
        if let Some(ip) = held.get(owner) {
            return Ok(*ip);
        }
        let ip = self.claim(owner)?;
        held.insert(owner.to_string(), ip);
        Ok(ip)
    }

    /// Claim the next free address on disk for `owner`.
    fn claim(&self, owner: &str) -> anyhow::Result<Ipv4Addr> {
        let usable = self.cidr.usable();
        let last_file = self.dir.join("last_reserved_ip.0");
        let last = std::fs::read_to_string(&last_file).ok().and_then(|s| s.trim().parse::<Ipv4Addr>().ok());
        let last_n = last.and_then(|ip| self.cidr.offset(ip)).filter(|n| usable.contains(n)).unwrap_or(usable.start);
        // After the last one reserved, wrapping around (the gateway, `start`, never).
        let order = (last_n + 1..usable.end).chain(usable.start + 1..=last_n.min(usable.end - 1));
        for n in order {
            let ip = self.cidr.nth(n).unwrap();
            match std::fs::OpenOptions::new().write(true).create_new(true).open(self.dir.join(ip.to_string())) {
                Ok(mut f) => {
                    use std::io::Write;
                    f.write_all(owner.as_bytes())?;
                    std::fs::write(&last_file, ip.to_string())?;
                    return Ok(ip);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e.into()),
            }
        }
        anyhow::bail!("no free address left in {}", self.cidr)
    }

    pub fn release(&self, owner: &str) {
        let mut held = self.held.lock().unwrap();
        if let Some(ip) = held.remove(owner) {
            let _ = std::fs::remove_file(self.dir.join(ip.to_string()));
            return;
        }
        for (ip, o) in self.on_disk() {
            if o == owner {
                let _ = std::fs::remove_file(self.dir.join(ip.to_string()));
            }
        }
    }

    /// Every (address, owner) handed out.
    pub fn all(&self) -> Vec<(Ipv4Addr, String)> {
        self.held.lock().unwrap().iter().map(|(owner, ip)| (*ip, owner.clone())).collect()
    }

    /// Every (address, owner) the directory holds.
    fn on_disk(&self) -> Vec<(Ipv4Addr, String)> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else { return vec![] };
        rd.flatten()
            .filter_map(|e| {
                let ip = e.file_name().to_str()?.parse().ok()?;
                Some((ip, std::fs::read_to_string(e.path()).ok()?))
            })
            .collect()
    }
}

/// A TCP connection to `addr` made from inside a network namespace (`None`: this
/// process's own): a thread of its own joins the namespace, makes the socket (which stays
/// in that namespace) and ends. Port-forward reaches `localhost` of a pod this way, and
/// probes reach pods from a node that lives in a namespace of its own (in tests).
pub async fn connect_in_netns(
    netns: Option<PathBuf>,
    addr: std::net::SocketAddr,
    timeout: std::time::Duration,
) -> std::io::Result<tokio::net::TcpStream> {
    let Some(netns) = netns else {
        return tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "i/o timeout"))?;
    };
    let connect = move || -> std::io::Result<std::net::TcpStream> {
        let f = std::fs::File::open(&netns)?;
        // SAFETY: a valid namespace fd; this thread is never used for anything else.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
        s.set_nonblocking(true)?;
        Ok(s)
    };
    let s = on_own_thread(connect).await.map_err(std::io::Error::other)??;
    tokio::net::TcpStream::from_std(s)
}

/// The real pod network ([`crate::cri::PodNetwork`]): netlink in the node's namespace (or
/// the namespace a test made for a whole node), and its `iptables`/`sysctl` runner.
pub struct Netlink {
    pub handle: Handle,
    pub runner: crate::proxy::iptables::Runner,
    /// The node's namespace when it is not this process's own.
    pub netns: Option<PathBuf>,
}

impl Netlink {
    /// The node's own namespace, or the named one (`Config::netns`).
    pub async fn connect(netns: Option<&str>) -> anyhow::Result<Netlink> {
        use crate::proxy::iptables::Runner;
        Ok(match netns {
            Some(name) => {
                let path = Path::new(NETNS_DIR).join(name);
                Netlink { handle: connect_in(&path).await?, runner: Runner::in_netns(name), netns: Some(path) }
            }
            None => Netlink { handle: connect()?, runner: Runner::default(), netns: None },
        })
    }
}

#[async_trait::async_trait]
impl crate::cri::PodNetwork for Netlink {
    async fn prepare_node(&self, pod_cidr: Cidr, cluster_cidr: &str) -> anyhow::Result<()> {
        ensure_bridge(&self.handle, pod_cidr).await?;
        crate::kubelet::node::prepare_host(&self.runner, cluster_cidr, pod_cidr).await;
        Ok(())
    }
    async fn attach(&self, netns_name: &str, pod_cidr: Cidr, ip: Ipv4Addr) -> anyhow::Result<PathBuf> {
        let netns = create_netns(netns_name).await?;
        attach_pod(&self.handle, netns_name, &netns, pod_cidr, ip).await?;
        Ok(netns)
    }
    async fn detach(&self, netns_name: &str) -> anyhow::Result<()> {
        detach_pod(&self.handle, netns_name).await
    }
    fn namespaces(&self) -> Vec<String> {
        let Ok(rd) = std::fs::read_dir(NETNS_DIR) else { return vec![] };
        rd.flatten().filter_map(|e| e.file_name().to_str().map(String::from)).collect()
    }
    async fn ensure_route(&self, dest: Cidr, via: Ipv4Addr) -> anyhow::Result<()> {
        ensure_route(&self.handle, dest, via).await
    }
    async fn connect(&self, addr: std::net::SocketAddr, timeout: std::time::Duration) -> std::io::Result<tokio::net::TcpStream> {
        connect_in_netns(self.netns.clone(), addr, timeout).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipam_hands_out_each_address_once_and_remembers() {
        let dir = std::env::temp_dir().join(format!("ipam-test-{}", std::process::id()));
        let cidr: Cidr = "10.244.3.0/29".parse().unwrap();
        let ipam = Ipam::new(&dir, cidr).unwrap();
        let a = ipam.allocate("pod-a").unwrap();
        let b = ipam.allocate("pod-b").unwrap();
        assert_eq!((a.to_string().as_str(), b.to_string().as_str()), ("10.244.3.2", "10.244.3.3"));
        assert_eq!(ipam.allocate("pod-a").unwrap(), a, "same owner, same address");
        // A new Ipam over the same directory (an agent restart) knows both.
        let again = Ipam::new(&dir, cidr).unwrap();
        assert_eq!(again.lookup("pod-b"), Some(b));
        again.release("pod-a");
        let c = again.allocate("pod-c").unwrap();
        assert_eq!(c.to_string(), "10.244.3.4", "round-robin: the freed .2 is not handed out at once");
        let more: Vec<String> = ["d", "e", "f"].iter().map(|p| again.allocate(p).unwrap().to_string()).collect();
        assert_eq!(more, ["10.244.3.5", "10.244.3.6", "10.244.3.2"], "wrapping around to the freed one last");
        assert!(again.allocate("g").is_err(), "/29 has 5 pod addresses");
        let _ = std::fs::remove_dir_all(dir);
    }
}
