//! The pod network, as the bridge CNI plugin with host-local IPAM makes it:
//! a bridge (`orca0`) holding the first address of the node's pod CIDR, a
//! veth pair per pod whose inner end is the pod's `eth0`, `lo` up, a
//! default route via the bridge, and addresses from the pod CIDR whose
//! allocations are files on disk (one per address, holding the pod's uid),
//! so a restart neither loses nor leaks one. All of it through netlink
//! (`rtnetlink`), in the node's network namespace: the process's own or the
//! one given with `--netns`.

use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use nix::sched::CloneFlags;
use orca_core::store::Cidr;
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};

/// The node's pod network.
pub struct Network {
    node: Handle,
    bridge: String,
    cidr: Cidr,
    gateway: Ipv4Addr,
    allocations: PathBuf,
}

/// A pod's place on the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The pod's address.
    pub ip: Ipv4Addr,
    /// The host end of its veth pair.
    pub veth: String,
}

fn netlink_error(what: &str, e: rtnetlink::Error) -> io::Error {
    io::Error::other(format!("{what}: {e}"))
}

/// A netlink connection in the network namespace at `netns` (the calling
/// thread's when `None`). The socket is made in a thread that joined the
/// namespace, so it belongs to that namespace for good.
pub fn connect(netns: Option<&Path>) -> io::Result<Handle> {
    let netns = netns.map(Path::to_path_buf);
    let runtime = tokio::runtime::Handle::current();
    let (connection, handle, _) = std::thread::spawn(move || {
        // The socket registers with the caller's runtime from this thread.
        let _runtime = runtime.enter();
        if let Some(path) = netns {
            let ns = fs::File::open(&path).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("network namespace {}: {e}", path.display()),
                )
            })?;
            nix::sched::setns(ns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        }
        rtnetlink::new_connection()
    })
    .join()
    .map_err(|_| io::Error::other("netlink connection thread panicked"))??;
    tokio::spawn(connection);
    Ok(handle)
}

/// Runs `f` on a thread of its own and waits for it without holding up the
/// runtime. Namespace changes need a thread that is nobody else's, and the
/// kernel may take seconds over them (making a network namespace waits
/// while others are torn down), which must not stall the other tasks of a
/// single-threaded runtime.
pub async fn on_own_thread<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = done.send(f());
    });
    result
        .await
        .map_err(|_| io::Error::other("namespace thread panicked"))
}

/// Makes a new network namespace and pins it at `path` (a bind mount of
/// the namespace file, as `ip netns add` makes).
pub fn create_netns(path: &Path) -> io::Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::File::create(path)?;
    let target = path.to_path_buf();
    std::thread::spawn(move || -> io::Result<()> {
        // Only this short-lived thread moves into the new namespace.
        nix::sched::unshare(CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        nix::mount::mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(io::Error::from)
    })
    .join()
    .map_err(|_| io::Error::other("network namespace thread panicked"))?
    .map_err(|e| io::Error::new(e.kind(), format!("pinning {}: {e}", path.display())))
}

/// Unpins and removes the network namespace at `path`; the kernel frees it
/// (and the veth end inside) once nothing uses it. Gone already is fine.
pub fn remove_netns(path: &Path) -> io::Result<()> {
    match nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => {}
        Err(e) => {
            return Err(io::Error::new(
                io::Error::from(e).kind(),
                format!("unmounting {}: {e}", path.display()),
            ));
        }
    }
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The index of link `name` in the namespace of `handle`, if it exists.
pub async fn link_index(handle: &Handle, name: &str) -> io::Result<Option<u32>> {
    match handle
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
    {
        Ok(link) => Ok(link.map(|l| l.header.index)),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(netlink_error(&format!("looking up link {name}"), e)),
    }
}

/// The bridge `name` in the namespace of `handle`, made if missing, with a
/// hardware address of its own derived from `gateway`, the address it will
/// hold (02:6f and its four bytes: locally administered, unique per
/// gateway). A bridge left to itself takes the lowest address among its
/// ports, so one port going (a pod deleted, a node's veth removed) can
/// change it: every neighbour's ARP entry for the gateway then points
/// nowhere until it expires, seconds without a route. Its index.
pub async fn ensure_bridge(handle: &Handle, name: &str, gateway: Ipv4Addr) -> io::Result<u32> {
    if let Some(index) = link_index(handle, name).await? {
        return Ok(index);
    }
    let [a, b, c, d] = gateway.octets();
    handle
        .link()
        .add(
            LinkBridge::new(name)
                .address(vec![0x02, 0x6f, a, b, c, d])
                .build(),
        )
        .execute()
        .await
        .map_err(|e| netlink_error(&format!("creating bridge {name}"), e))?;
    link_index(handle, name)
        .await?
        .ok_or_else(|| io::Error::other(format!("bridge {name} vanished")))
}

/// Adds `ip/prefix` to link `index` unless it is there already.
pub async fn ensure_address(
    handle: &Handle,
    index: u32,
    ip: Ipv4Addr,
    prefix: u8,
) -> io::Result<()> {
    let present = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .set_address_filter(IpAddr::V4(ip))
        .execute()
        .try_next()
        .await
        .map_err(|e| netlink_error("listing addresses", e))?
        .is_some();
    if !present {
        handle
            .address()
            .add(index, IpAddr::V4(ip), prefix)
            .execute()
            .await
            .map_err(|e| netlink_error(&format!("adding address {ip}/{prefix}"), e))?;
    }
    Ok(())
}

impl Network {
    /// Opens the node's network in `netns` and makes sure its bridge exists,
    /// is up and holds the pod CIDR's first address.
    pub async fn open(
        netns: Option<&Path>,
        bridge: &str,
        cidr: Cidr,
        allocations: PathBuf,
    ) -> io::Result<Self> {
        let IpAddr::V4(_) = cidr.addr else {
            return Err(io::Error::other(format!(
                "pod CIDR {cidr}: only IPv4 pod networks are supported"
            )));
        };
        let IpAddr::V4(gateway) = cidr.nth(1) else {
            unreachable!("an IPv4 range has IPv4 addresses")
        };
        fs::create_dir_all(&allocations)?;
        let node = connect(netns)?;
        let index = ensure_bridge(&node, bridge, gateway).await?;
        ensure_address(&node, index, gateway, cidr.bits).await?;
        node.link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| netlink_error(&format!("setting {bridge} up"), e))?;
        Ok(Self {
            node,
            bridge: bridge.to_string(),
            cidr,
            gateway,
            allocations,
        })
    }

    /// The bridge's address, every pod's gateway.
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    /// The host end of `uid`'s veth pair (at most 15 characters, as link
    /// names must be).
    pub fn veth_name(uid: &str) -> String {
        let short: String = uid
            .chars()
            .filter(char::is_ascii_hexdigit)
            .take(11)
            .collect();
        format!("veth{short}")
    }

    /// Reserves an address for `uid`: the one it holds already, or the
    /// first free one after the gateway.
    pub fn allocate(&self, uid: &str) -> io::Result<Ipv4Addr> {
        if let Some(ip) = self.allocated(uid)?.into_iter().next() {
            return Ok(ip);
        }
        for offset in 2..self.cidr.size() {
            let IpAddr::V4(ip) = self.cidr.nth(offset) else {
                continue;
            };
            if !self.cidr.holds(IpAddr::V4(ip)) {
                continue;
            }
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(self.allocations.join(ip.to_string()))
            {
                Ok(mut file) => {
                    io::Write::write_all(&mut file, uid.as_bytes())?;
                    return Ok(ip);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other(format!(
            "pod CIDR {} has no free address",
            self.cidr
        )))
    }

    /// Every address allocated to `uid`.
    fn allocated(&self, uid: &str) -> io::Result<Vec<Ipv4Addr>> {
        Ok(self
            .allocations()?
            .into_iter()
            .filter(|(_, owner)| owner == uid)
            .map(|(ip, _)| ip)
            .collect())
    }

    /// Every allocation: address and owning pod uid.
    pub fn allocations(&self) -> io::Result<Vec<(Ipv4Addr, String)>> {
        let mut all = Vec::new();
        for entry in fs::read_dir(&self.allocations)? {
            let entry = entry?;
            let Some(ip) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            let owner = fs::read_to_string(entry.path()).unwrap_or_default();
            all.push((ip, owner.trim().to_string()));
        }
        Ok(all)
    }

    /// Connects the pod network namespace at `netns` to the bridge: a veth
    /// pair, the pod's end renamed `eth0` with the pod's address, `lo` up,
    /// a default route via the bridge. Idempotent: a pod attached already
    /// keeps its address and link.
    pub async fn attach(&self, uid: &str, netns: &Path) -> io::Result<Attachment> {
        let ip = self.allocate(uid)?;
        let veth = Self::veth_name(uid);
        if link_index(&self.node, &veth).await?.is_some() {
            return Ok(Attachment { ip, veth });
        }
        let peer = format!("tmp{}", &veth[4..]);
        self.node
            .link()
            .add(LinkVeth::new(&veth, &peer).build())
            .execute()
            .await
            .map_err(|e| netlink_error(&format!("creating veth {veth}"), e))?;
        let ns = fs::File::open(netns)?;
        self.node
            .link()
            .set(
                LinkUnspec::new_with_name(&peer)
                    .setns_by_fd(ns.as_raw_fd())
                    .build(),
            )
            .execute()
            .await
            .map_err(|e| netlink_error(&format!("moving {peer} into the pod"), e))?;
        let bridge = link_index(&self.node, &self.bridge)
            .await?
            .ok_or_else(|| io::Error::other(format!("bridge {} is gone", self.bridge)))?;
        let host = link_index(&self.node, &veth)
            .await?
            .ok_or_else(|| io::Error::other(format!("veth {veth} is gone")))?;
        self.node
            .link()
            .set(
                LinkUnspec::new_with_index(host)
                    .controller(bridge)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(|e| netlink_error(&format!("joining {veth} to {}", self.bridge), e))?;

        let pod = connect(Some(netns))?;
        let inner = link_index(&pod, &peer)
            .await?
            .ok_or_else(|| io::Error::other(format!("{peer} is not in the pod")))?;
        pod.link()
            .set(LinkUnspec::new_with_index(inner).name("eth0").build())
            .execute()
            .await
            .map_err(|e| netlink_error("renaming the pod's link to eth0", e))?;
        ensure_address(&pod, inner, ip, self.cidr.bits).await?;
        pod.link()
            .set(LinkUnspec::new_with_index(inner).up().build())
            .execute()
            .await
            .map_err(|e| netlink_error("setting eth0 up", e))?;
        if let Some(lo) = link_index(&pod, "lo").await? {
            pod.link()
                .set(LinkUnspec::new_with_index(lo).up().build())
                .execute()
                .await
                .map_err(|e| netlink_error("setting lo up", e))?;
        }
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(self.gateway)
            .output_interface(inner)
            .build();
        pod.route()
            .add(route)
            .execute()
            .await
            .map_err(|e| netlink_error("adding the pod's default route", e))?;
        Ok(Attachment { ip, veth })
    }

    /// Removes `uid`'s veth pair and frees its address. Gone already is fine.
    pub async fn detach(&self, uid: &str) -> io::Result<()> {
        remove_link(&self.node, &Self::veth_name(uid)).await?;
        for ip in self.allocated(uid)? {
            match fs::remove_file(self.allocations.join(ip.to_string())) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    /// The veth links on the node that belong to pods (by name), for the
    /// start-up reconciliation.
    pub async fn pod_links(&self) -> io::Result<Vec<String>> {
        let mut links = self.node.link().get().execute();
        let mut names = Vec::new();
        while let Some(link) = links
            .try_next()
            .await
            .map_err(|e| netlink_error("listing links", e))?
        {
            for attribute in &link.attributes {
                if let rtnetlink::packet_route::link::LinkAttribute::IfName(name) = attribute
                    && name.starts_with("veth")
                {
                    names.push(name.clone());
                }
            }
        }
        Ok(names)
    }

    /// Removes a link by name (a veth left by a pod that is gone).
    pub async fn remove_link(&self, name: &str) -> io::Result<()> {
        remove_link(&self.node, name).await
    }
}

/// Removes the link `name` in the namespace of `handle`; gone already is
/// fine.
pub async fn remove_link(handle: &Handle, name: &str) -> io::Result<()> {
    if let Some(index) = link_index(handle, name).await? {
        match handle.link().del(index).execute().await {
            Ok(()) => {}
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => {}
            Err(e) => return Err(netlink_error(&format!("deleting {name}"), e)),
        }
    }
    Ok(())
}
