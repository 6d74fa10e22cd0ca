//! Links, addresses and routes over rtnetlink: the per-network bridge and
//! the per-container veth pair whose inner end becomes the container's
//! `eth0`.
//!
//! What it must never do: pick an address or MAC itself, or touch a link it
//! was not named. Work inside a container's namespace runs on a dedicated
//! thread with its own netlink socket opened there (see [`super::netns`]).

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteType};
use rtnetlink::{LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};

use super::{check_ifname, netns, parse_cidr_v4, parse_cidr_v6, parse_mac, NetError};

/// Name the container side of every veth gets inside its namespace.
pub const CONTAINER_IFNAME: &str = "eth0";

const RT_TABLE_LOCAL: u32 = 255;

/// A netlink (rtnetlink) connection in the namespace it was opened in.
#[derive(Clone)]
pub struct Netlink {
    handle: rtnetlink::Handle,
}

impl std::fmt::Debug for Netlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Netlink")
    }
}

/// The negative errno of a netlink error reply, if it is one.
fn errno_of(err: &rtnetlink::Error) -> Option<i32> {
    match err {
        rtnetlink::Error::NetlinkError(msg) => Some(-msg.raw_code()),
        _ => None,
    }
}

impl Netlink {
    /// Opens a connection in the calling thread's network namespace and
    /// drives it on the current tokio runtime.
    pub async fn connect() -> Result<Self, NetError> {
        let (conn, handle, _) = rtnetlink::new_connection()
            .map_err(|e| NetError::io("opening netlink socket", "NETLINK_ROUTE", e))?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    async fn link_by_name(&self, name: &str) -> Result<Option<LinkMessage>, NetError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match links.try_next().await {
            Ok(link) => Ok(link),
            Err(e) if errno_of(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(NetError::netlink("looking up link", name, e)),
        }
    }

    async fn index_of(&self, name: &str) -> Result<u32, NetError> {
        match self.link_by_name(name).await? {
            Some(link) => Ok(link.header.index),
            None => Err(NetError::NotFound {
                what: "link",
                name: name.to_string(),
            }),
        }
    }

    /// Whether a link of that name exists in this connection's namespace.
    pub async fn link_exists(&self, name: &str) -> Result<bool, NetError> {
        check_ifname(name)?;
        Ok(self.link_by_name(name).await?.is_some())
    }

    /// Sets a link administratively up.
    pub async fn set_up(&self, name: &str) -> Result<(), NetError> {
        let index = self.index_of(name).await?;
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| NetError::netlink("setting link up", name, e))
    }

    /// Deletes a link; succeeds if it does not exist. Deleting either end of
    /// a veth pair deletes both, so this also detaches a container.
    pub async fn delete_link(&self, name: &str) -> Result<(), NetError> {
        check_ifname(name)?;
        let Some(link) = self.link_by_name(name).await? else {
            return Ok(());
        };
        match self.handle.link().del(link.header.index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno_of(&e) == Some(libc::ENODEV) => Ok(()),
            Err(e) => Err(NetError::netlink("deleting link", name, e)),
        }
    }

    /// Makes sure bridge `name` exists, is up, has `mtu` (when given) and
    /// has exactly `gateway_cidr` (e.g. `"10.89.3.1/24"`) as its IPv4
    /// address. Idempotent. A new bridge gets a fixed random MAC (as Docker
    /// does), so its address does not follow its ports as they come and go
    /// (which would leave containers with a stale gateway entry), and
    /// bridges of one overlay on different hosts do not share a MAC.
    pub async fn ensure_bridge(
        &self,
        name: &str,
        gateway_cidr: &str,
        mtu: Option<u32>,
    ) -> Result<(), NetError> {
        check_ifname(name)?;
        let (gateway, prefix) = parse_cidr_v4(gateway_cidr)?;
        let link = match self.link_by_name(name).await? {
            Some(link) => link,
            None => {
                let mac = random_mac(name)?;
                let mut builder = LinkBridge::new(name).address(mac.to_vec());
                if let Some(mtu) = mtu {
                    builder = builder.mtu(mtu);
                }
                match self.handle.link().add(builder.build()).execute().await {
                    Ok(()) => {}
                    // Someone created it between our lookup and add; checked below.
                    Err(e) if errno_of(&e) == Some(libc::EEXIST) => {}
                    Err(e) => return Err(NetError::netlink("creating bridge", name, e)),
                }
                self.link_by_name(name)
                    .await?
                    .ok_or_else(|| NetError::NotFound {
                        what: "bridge just created",
                        name: name.to_string(),
                    })?
            }
        };
        let kind = link_kind(&link);
        if kind.as_deref() != Some("bridge") {
            return Err(NetError::NotABridge {
                name: name.to_string(),
                kind: kind.unwrap_or_else(|| "plain link".into()),
            });
        }
        let index = link.header.index;
        let mut set = LinkUnspec::new_with_index(index).up();
        if let Some(mtu) = mtu {
            set = set.mtu(mtu);
        }
        self.handle
            .link()
            .set(set.build())
            .execute()
            .await
            .map_err(|e| NetError::netlink("setting bridge up", name, e))?;

        // A dump is interrupted (EBUSY) when any address on the host changes
        // meanwhile, e.g. another network being set up or dozens of
        // containers' veths appearing at once: read it again, for as long
        // as a busy host plausibly keeps changing (10 tries were not enough
        // for 50 containers starting together).
        let mut attempt: u64 = 0;
        let busy_until = std::time::Instant::now() + std::time::Duration::from_secs(15);
        let addresses: Vec<_> = loop {
            let r: Result<Vec<_>, _> = self
                .handle
                .address()
                .get()
                .set_link_index_filter(index)
                .execute()
                .try_collect()
                .await;
            match r {
                Ok(a) => break a,
                Err(e)
                    if errno_of(&e) == Some(libc::EBUSY)
                        && std::time::Instant::now() < busy_until =>
                {
                    attempt += 1;
                    let ms = (5 * attempt).min(100);
                    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                }
                Err(e) => return Err(NetError::netlink("listing addresses of bridge", name, e)),
            }
        };
        let mut have = false;
        for msg in addresses {
            let v4 = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            });
            let Some(ip) = v4 else { continue };
            if ip == gateway && msg.header.prefix_len == prefix {
                have = true;
            } else {
                // The bridge is ours; a stale gateway from an earlier
                // configuration would route the wrong subnet here.
                self.handle
                    .address()
                    .del(msg)
                    .execute()
                    .await
                    .map_err(|e| {
                        NetError::netlink("removing stale address from bridge", name, e)
                    })?;
            }
        }
        if !have {
            self.handle
                .address()
                .add(index, IpAddr::V4(gateway), prefix)
                .replace()
                .execute()
                .await
                .map_err(|e| {
                    NetError::netlink(
                        "adding gateway address to bridge",
                        format!("{name} {gateway_cidr}"),
                        e,
                    )
                })?;
        }
        Ok(())
    }

    /// Connects a container namespace to a bridge: creates a veth pair whose
    /// host end `host_if` is enslaved to `bridge` and up, and whose other end
    /// is created directly inside the namespace at `netns_path` as `eth0`
    /// with MAC `mac`, the bridge's MTU, address `addr_cidr`
    /// (`"10.89.3.2/24"`), up, and a default route via `gateway`. A stale
    /// `host_if` of an earlier attempt is deleted first. On failure nothing
    /// is left behind.
    pub async fn attach(
        &self,
        bridge: &str,
        host_if: &str,
        netns_path: &Path,
        addr_cidr: &str,
        gateway: &str,
        mac: &str,
    ) -> Result<(), NetError> {
        self.attach_as(
            bridge,
            host_if,
            netns_path,
            CONTAINER_IFNAME,
            addr_cidr,
            gateway,
            mac,
        )
        .await
    }

    /// As [`Netlink::attach`], naming the container's end `ifname` (a
    /// container's n-th network is `eth<n>`, as Docker names them); an
    /// empty `gateway` adds no default route (only the first network of a
    /// container carries it).
    #[allow(clippy::too_many_arguments)]
    pub async fn attach_as(
        &self,
        bridge: &str,
        host_if: &str,
        netns_path: &Path,
        ifname: &str,
        addr_cidr: &str,
        gateway: &str,
        mac: &str,
    ) -> Result<(), NetError> {
        check_ifname(bridge)?;
        check_ifname(host_if)?;
        check_ifname(ifname)?;
        let (addr, prefix) = parse_cidr_v4(addr_cidr)?;
        let gateway: Option<Ipv4Addr> = match gateway {
            "" => None,
            g => Some(g.parse().map_err(|_| NetError::Invalid {
                what: "gateway address",
                value: g.to_string(),
                reason: "not an IPv4 address".to_string(),
            })?),
        };
        let mac = parse_mac(mac)?;
        let bridge_link = self
            .link_by_name(bridge)
            .await?
            .ok_or_else(|| NetError::NotFound {
                what: "bridge",
                name: bridge.to_string(),
            })?;
        let mtu = bridge_link.attributes.iter().find_map(|a| match a {
            LinkAttribute::Mtu(m) => Some(*m),
            _ => None,
        });
        let ns = std::fs::File::open(netns_path)
            .map_err(|e| NetError::io("opening network namespace", netns_path.display(), e))?;
        if !netns::is_netns_mount(netns_path) {
            return Err(NetError::NotFound {
                what: "network namespace",
                name: netns_path.display().to_string(),
            });
        }

        self.delete_link(host_if).await?;
        let mut peer = LinkUnspec::new_with_name(ifname)
            .address(mac.to_vec())
            .setns_by_fd(ns.as_raw_fd());
        let mut veth = LinkVeth::new(host_if, ifname);
        if let Some(mtu) = mtu {
            peer = peer.mtu(mtu);
            veth = veth.mtu(mtu);
        }
        let msg = veth
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())))
            .build();
        self.handle.link().add(msg).execute().await.map_err(|e| {
            NetError::netlink(
                "creating veth pair",
                format!("{host_if} <-> {ifname} in {}", netns_path.display()),
                e,
            )
        })?;
        drop(ns);

        let result = self
            .finish_attach(
                bridge_link.header.index,
                bridge,
                host_if,
                netns_path,
                ifname,
                addr,
                prefix,
                gateway,
            )
            .await;
        if result.is_err() {
            let _ = self.delete_link(host_if).await;
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn finish_attach(
        &self,
        bridge_index: u32,
        bridge: &str,
        host_if: &str,
        netns_path: &Path,
        ifname: &str,
        addr: Ipv4Addr,
        prefix: u8,
        gateway: Option<Ipv4Addr>,
    ) -> Result<(), NetError> {
        let host_index = self.index_of(host_if).await?;
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(host_index)
                    .controller(bridge_index)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(|e| {
                NetError::netlink(
                    "enslaving veth to bridge",
                    format!("{host_if} -> {bridge}"),
                    e,
                )
            })?;

        let path: PathBuf = netns_path.to_path_buf();
        let ifname = ifname.to_string();
        let inner = tokio::task::spawn_blocking(move || {
            netns::run_in(&path, || {
                blocking_in_current_netns(&path, |nl| async move {
                    nl.configure_container_if(&ifname, addr, prefix, gateway)
                        .await
                })
            })
        })
        .await
        .map_err(|_| NetError::ThreadPanicked {
            target: netns_path.display().to_string(),
        })?;
        inner?
    }

    async fn configure_container_if(
        &self,
        ifname: &str,
        addr: Ipv4Addr,
        prefix: u8,
        gateway: Option<Ipv4Addr>,
    ) -> Result<(), NetError> {
        let index = self.index_of(ifname).await?;
        let target = format!("{ifname} {addr}/{prefix}");
        self.handle
            .address()
            .add(index, IpAddr::V4(addr), prefix)
            .replace()
            .execute()
            .await
            .map_err(|e| NetError::netlink("adding address in container namespace", &target, e))?;
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| NetError::netlink("setting container interface up", &target, e))?;
        match gateway {
            Some(g) => self.add_default_route(index, IpAddr::V4(g)).await,
            None => Ok(()),
        }
    }

    /// Adds (or replaces) the default route of this handle's namespace via
    /// `gateway` out of the interface with index `index`.
    async fn add_default_route(&self, index: u32, gateway: IpAddr) -> Result<(), NetError> {
        let route = match gateway {
            IpAddr::V4(g) => RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(g)
                .output_interface(index)
                .build(),
            IpAddr::V6(g) => RouteMessageBuilder::<Ipv6Addr>::new()
                .gateway(g)
                .output_interface(index)
                .build(),
        };
        self.handle
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(|e| {
                NetError::netlink(
                    "adding default route in container namespace",
                    format!("via {gateway}"),
                    e,
                )
            })
    }

    /// Adds the IPv6 address `cidr` (`"fd12::1/64"`) to `ifname` in this
    /// handle's namespace, without duplicate address detection: addresses
    /// come from the manager and are unique, and DAD would leave them
    /// unusable ("tentative") for the first second of a container's life.
    pub async fn add_address_v6(&self, ifname: &str, cidr: &str) -> Result<(), NetError> {
        check_ifname(ifname)?;
        let (addr, prefix) = parse_cidr_v6(cidr)?;
        let index = self.index_of(ifname).await?;
        let mut req = self
            .handle
            .address()
            .add(index, IpAddr::V6(addr), prefix)
            .replace();
        let msg = req.message_mut();
        msg.header.flags |= AddressHeaderFlags::Nodad;
        msg.attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
        req.execute()
            .await
            .map_err(|e| NetError::netlink("adding IPv6 address", format!("{ifname} {cidr}"), e))
    }

    /// Gives the container's `ifname` (made by [`Netlink::attach_as`]) in
    /// the namespace at `netns_path` the IPv6 address `cidr` and, when
    /// `gateway` is not empty, the default IPv6 route through it.
    pub async fn attach_v6(
        &self,
        netns_path: &Path,
        ifname: &str,
        cidr: &str,
        gateway: &str,
    ) -> Result<(), NetError> {
        check_ifname(ifname)?;
        parse_cidr_v6(cidr)?;
        let gateway: Option<Ipv6Addr> = match gateway {
            "" => None,
            g => Some(g.parse().map_err(|_| NetError::Invalid {
                what: "IPv6 gateway address",
                value: g.to_string(),
                reason: "not an IPv6 address".to_string(),
            })?),
        };
        let path: PathBuf = netns_path.to_path_buf();
        let (ifname, cidr) = (ifname.to_string(), cidr.to_string());
        let inner = tokio::task::spawn_blocking(move || {
            netns::run_in(&path, || {
                // A namespace may start with IPv6 off when the host's
                // defaults say so; this one asked for it.
                let _ = std::fs::write(
                    format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6"),
                    "0\n",
                );
                blocking_in_current_netns(&path, |nl| async move {
                    nl.add_address_v6(&ifname, &cidr).await?;
                    let Some(gateway) = gateway else {
                        return Ok(());
                    };
                    let index = nl.index_of(&ifname).await?;
                    nl.add_default_route(index, IpAddr::V6(gateway)).await
                })
            })
        })
        .await
        .map_err(|_| NetError::ThreadPanicked {
            target: netns_path.display().to_string(),
        })?;
        inner?
    }

    /// Destinations routed on this host (IPv4 and IPv6, every table but
    /// `local`, unicast routes only, default routes left out) as CIDRs, for
    /// IPAM to avoid. Includes the routes of Flotilla's own bridges.
    pub async fn host_routes(&self) -> Result<Vec<String>, NetError> {
        let mut out = Vec::new();
        let v4 = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let v6 = RouteMessageBuilder::<Ipv6Addr>::new().build();
        for (family, query) in [("IPv4", v4), ("IPv6", v6)] {
            let routes: Vec<_> = self
                .handle
                .route()
                .get(query)
                .execute()
                .try_collect()
                .await
                .map_err(|e| NetError::netlink("listing routes", family, e))?;
            for route in routes {
                let table = route
                    .attributes
                    .iter()
                    .find_map(|a| match a {
                        RouteAttribute::Table(t) => Some(*t),
                        _ => None,
                    })
                    .unwrap_or(u32::from(route.header.table));
                let len = route.header.destination_prefix_length;
                if table == RT_TABLE_LOCAL || route.header.kind != RouteType::Unicast || len == 0 {
                    continue;
                }
                let dest = route.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(IpAddr::V4(*ip)),
                    RouteAttribute::Destination(RouteAddress::Inet6(ip)) => Some(IpAddr::V6(*ip)),
                    _ => None,
                });
                if let Some(dest) = dest {
                    out.push(format!("{dest}/{len}"));
                }
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }
}

/// A random locally administered unicast MAC.
fn random_mac(for_link: &str) -> Result<[u8; 6], NetError> {
    use std::io::Read;
    let mut mac = [0u8; 6];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut mac))
        .map_err(|e| NetError::io("reading /dev/urandom for a MAC address of", for_link, e))?;
    mac[0] = (mac[0] & 0xfe) | 0x02;
    Ok(mac)
}

fn link_kind(link: &LinkMessage) -> Option<String> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(InfoKind::Bridge) => Some("bridge".to_string()),
            LinkInfo::Kind(k) => Some(format!("{k:?}").to_lowercase()),
            _ => None,
        }),
        _ => None,
    })
}

/// Runs `f` with a netlink connection opened in the calling thread's
/// current namespace, on a private single-threaded runtime. Only for
/// dedicated threads that have switched namespace (never a runtime worker).
pub(crate) fn blocking_in_current_netns<T, F, Fut>(target: &Path, f: F) -> Result<T, NetError>
where
    F: FnOnce(Netlink) -> Fut,
    Fut: Future<Output = Result<T, NetError>>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            NetError::io(
                "starting netlink runtime for namespace",
                target.display(),
                e,
            )
        })?;
    rt.block_on(async move {
        let nl = Netlink::connect().await?;
        f(nl).await
    })
}
