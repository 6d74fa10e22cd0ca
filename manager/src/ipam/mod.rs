//! IP address management: subnets for stack networks, one VIP per service
//! per network, and a stable address per service slot per network.
//!
//! Everything here is a pure function over the store's contents: the caller
//! (deploy, orchestrator) writes the results through Raft, which is what makes
//! an address stable. This module must never touch the host or remember
//! anything between calls: an address exists only once it is stored.
//!
//! Rules:
//! - a network gets a /24 from the pool (default [`DEFAULT_POOL`]) that
//!   overlaps no other network and no `host_networks` any node reported;
//!   `ipam.subnet` in the spec overrides the pool (it must not overlap either);
//! - the gateway is the subnet's first host (`.1`), unless the spec says;
//! - slot N of a service keeps its address in `Service.slot_addresses` until
//!   the slot or the service is removed, so a replaced task comes back on it;
//! - `ipv4_address` in the spec pins slot 1's address (it must be inside the
//!   subnet and free); the MAC is derived from the IPv4 address
//!   (`02:42:a:b:c:d`) unless the spec sets one.

pub mod ports;

use crate::orchestrator::StoreView;
use flotilla_proto::v1::{
    EndpointAddress, Network, NetworkAttachment, NetworkSpec, Service, ServiceSpec, SlotAddress,
    StackSpec,
};
use ipnet::{Ipv4Net, Ipv6Net};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use thiserror::Error;

/// The pool stack networks get their subnets from when the spec names none.
pub const DEFAULT_POOL: &str = "10.89.0.0/16";

/// Prefix length of the subnets carved from the pool.
pub const SUBNET_PREFIX: u8 = 24;

/// Why an address or subnet could not be allocated.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum IpamError {
    #[error("parsing address pool {pool:?}: expected an IPv4 CIDR such as 10.89.0.0/16")]
    BadPool { pool: String },
    #[error("network {network}: subnet {subnet:?} is not an IPv4 CIDR")]
    BadSubnet { network: String, subnet: String },
    #[error("network {network}: gateway {gateway:?} is not an address inside {subnet}")]
    BadGateway {
        network: String,
        gateway: String,
        subnet: String,
    },
    #[error("network {network}: subnet {subnet} overlaps {other}")]
    Overlap {
        network: String,
        subnet: String,
        other: String,
    },
    #[error("network {network}: no free /{prefix} left in address pool {pool}")]
    PoolExhausted {
        network: String,
        pool: String,
        prefix: u8,
    },
    #[error("network {network}: subnet {subnet} has no free address left")]
    SubnetFull { network: String, subnet: String },
    #[error("network {network} is not allocated")]
    UnknownNetwork { network: String },
    #[error(
        "service {service}: ipv4_address {address:?} on network {network} is not an IPv4 address"
    )]
    BadAddress {
        service: String,
        network: String,
        address: String,
    },
    #[error(
        "service {service}: ipv4_address {address} is outside network {network}'s subnet {subnet}"
    )]
    PinOutsideSubnet {
        service: String,
        network: String,
        address: String,
        subnet: String,
    },
    #[error(
        "service {service}: ipv4_address {address} on network {network} is already used by {owner}"
    )]
    PinTaken {
        service: String,
        network: String,
        address: String,
        owner: String,
    },
}

/// Parses the address pool (`10.89.0.0/16`).
pub fn parse_pool(pool: &str) -> Result<Ipv4Net, IpamError> {
    pool.parse::<Ipv4Net>()
        .map(|n| n.trunc())
        .map_err(|_| IpamError::BadPool {
            pool: pool.to_string(),
        })
}

/// The host-side bridge name of a network: `flt-` and 11 hex digits of the
/// SHA-256 of its id, 15 characters (Linux interface names hold at most 15).
pub fn bridge_name(network_id: &str) -> String {
    let digest = Sha256::digest(network_id.as_bytes());
    let hex = hex::encode(digest);
    format!("flt-{}", &hex[..11])
}

/// A network's id as `network ls` shows it: 64 hex digits of the SHA-256
/// of its stored id (which is its name), stable across restarts and nodes.
pub fn network_hex_id(network_id: &str) -> String {
    hex::encode(Sha256::digest(network_id.as_bytes()))
}

/// The MAC address derived from an IPv4 address, as Docker does.
pub fn mac_for(ip: Ipv4Addr) -> String {
    let [a, b, c, d] = ip.octets();
    format!("02:42:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

/// The stored id of a network of a stack: `<stack>_<name>`, or the real name
/// of an external network.
pub fn network_id(stack: &str, name: &str, spec: Option<&NetworkSpec>) -> String {
    match spec {
        Some(s) if s.external => {
            if s.external_name.is_empty() {
                name.to_string()
            } else {
                s.external_name.clone()
            }
        }
        _ => format!("{stack}_{name}"),
    }
}

/// One network a service is attached to, resolved to its stored id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAttachment {
    pub network_id: String,
    /// The network's name inside the stack.
    pub name: String,
    pub aliases: Vec<String>,
    /// `ipv4_address` from the spec (empty: allocate).
    pub ipv4_address: String,
    pub mac_address: String,
}

/// The networks a service attaches to. A service that lists none and has no
/// special `network_mode` is on the stack's `default` network, as in Compose.
pub fn service_attachments(
    stack: &str,
    stack_spec: Option<&StackSpec>,
    spec: &ServiceSpec,
) -> Vec<ServiceAttachment> {
    if !spec.network_mode.is_empty() && spec.network_mode != "bridge" {
        return Vec::new();
    }
    let find = |name: &str| stack_spec.and_then(|s| s.networks.iter().find(|n| n.name == name));
    if spec.networks.is_empty() {
        return vec![ServiceAttachment {
            network_id: network_id(stack, "default", find("default")),
            name: "default".to_string(),
            aliases: Vec::new(),
            ipv4_address: String::new(),
            mac_address: String::new(),
        }];
    }
    let mut out: Vec<(i32, ServiceAttachment)> = spec
        .networks
        .iter()
        .map(|a| {
            (
                a.priority,
                ServiceAttachment {
                    network_id: network_id(stack, &a.network, find(&a.network)),
                    name: a.network.clone(),
                    aliases: a.aliases.clone(),
                    ipv4_address: a.ipv4_address.clone(),
                    mac_address: a.mac_address.clone(),
                },
            )
        })
        .collect();
    // Compose connects higher priorities first; the first is the main one.
    out.sort_by_key(|a| std::cmp::Reverse(a.0));
    out.into_iter().map(|(_, a)| a).collect()
}

fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Subnets already taken: every stored network's subnet and every IPv4
/// network a node reported on its host, each with a description of its owner.
pub fn used_subnets(view: &impl StoreView) -> Vec<(String, Ipv4Net)> {
    let mut out = Vec::new();
    for n in view.all_networks() {
        if let Ok(net) = n.subnet.parse::<Ipv4Net>() {
            out.push((format!("network {}", n.id), net.trunc()));
        }
    }
    for node in view.all_nodes() {
        let Some(desc) = &node.description else {
            continue;
        };
        for h in &desc.host_networks {
            if let Ok(net) = h.parse::<Ipv4Net>() {
                out.push((format!("host network {h} of node {}", node.id), net.trunc()));
            }
        }
    }
    out
}

/// Chooses the subnet and gateway of a new network: the spec's `ipam`
/// subnet if it has one, else the first free /24 of `pool`.
pub fn allocate_subnet(
    pool: Ipv4Net,
    network_id: &str,
    spec: Option<&NetworkSpec>,
    used: &[(String, Ipv4Net)],
) -> Result<(Ipv4Net, Ipv4Addr), IpamError> {
    // An IPv6 pool of the same `ipam` list is allocate_subnet_v6's.
    let requested = spec.and_then(|s| {
        s.ipam
            .iter()
            .find(|p| !p.subnet.is_empty() && !p.subnet.contains(':'))
    });
    if let Some(p) = requested {
        let subnet = p
            .subnet
            .parse::<Ipv4Net>()
            .map_err(|_| IpamError::BadSubnet {
                network: network_id.to_string(),
                subnet: p.subnet.clone(),
            })?
            .trunc();
        if let Some((owner, _)) = used.iter().find(|(_, u)| overlaps(u, &subnet)) {
            return Err(IpamError::Overlap {
                network: network_id.to_string(),
                subnet: subnet.to_string(),
                other: owner.clone(),
            });
        }
        let gateway = if p.gateway.is_empty() {
            first_host(&subnet)
        } else {
            match p.gateway.parse::<Ipv4Addr>() {
                Ok(g) if subnet.contains(&g) => g,
                _ => {
                    return Err(IpamError::BadGateway {
                        network: network_id.to_string(),
                        gateway: p.gateway.clone(),
                        subnet: subnet.to_string(),
                    })
                }
            }
        };
        return Ok((subnet, gateway));
    }
    let exhausted = || IpamError::PoolExhausted {
        network: network_id.to_string(),
        pool: pool.to_string(),
        prefix: SUBNET_PREFIX,
    };
    let candidates = pool
        .subnets(SUBNET_PREFIX.max(pool.prefix_len()))
        .map_err(|_| exhausted())?;
    for c in candidates {
        if !used.iter().any(|(_, u)| overlaps(u, &c)) {
            return Ok((c, first_host(&c)));
        }
    }
    Err(exhausted())
}

fn first_host(net: &Ipv4Net) -> Ipv4Addr {
    net.hosts().next().unwrap_or(net.network())
}

fn parse_cidr_addr(s: &str) -> Option<Ipv4Addr> {
    let a = s.split('/').next()?;
    a.parse().ok()
}

/// The owner tag of a slot's address, used to tell "taken by someone else"
/// from "already mine".
fn slot_owner(service_id: &str, slot: u32) -> String {
    format!("slot {slot} of service {service_id}")
}

fn vip_owner(service_id: &str) -> String {
    format!("VIP of service {service_id}")
}

#[derive(Debug, Clone)]
struct NetAddrs {
    subnet: Ipv4Net,
    /// `ipam.ip_range`: where dynamic addresses come from (pins may be
    /// anywhere in the subnet, as in Docker).
    range: Option<Ipv4Net>,
    used: BTreeMap<Ipv4Addr, String>,
}

/// Which addresses of each network are in use, built from the store and
/// updated as a decision pass allocates (so two allocations of one pass never
/// collide).
#[derive(Debug, Clone, Default)]
pub struct AddressBook {
    nets: BTreeMap<String, NetAddrs>,
}

impl AddressBook {
    /// Every stored network with its gateway, every VIP, every slot address
    /// and every `ipv4_address` pin of a stored service (reserved for slot 1
    /// of its service even before that slot has an address).
    pub fn from_view(view: &impl StoreView) -> Self {
        let mut book = AddressBook::default();
        for n in view.all_networks() {
            book.add_network(n);
        }
        for s in view.all_services() {
            book.add_service(view, s);
        }
        book
    }

    /// Adds a network (e.g. one created in the same batch).
    pub fn add_network(&mut self, n: &Network) {
        let Ok(subnet) = n.subnet.parse::<Ipv4Net>() else {
            return;
        };
        let subnet = subnet.trunc();
        let mut used = BTreeMap::new();
        used.insert(subnet.network(), "network address".to_string());
        used.insert(subnet.broadcast(), "broadcast address".to_string());
        if let Ok(g) = n.gateway.parse::<Ipv4Addr>() {
            used.insert(g, format!("gateway of {}", n.id));
        }
        let mut range = None;
        for p in n.spec.iter().flat_map(|s| s.ipam.iter()) {
            if let Ok(r) = p.ip_range.parse::<Ipv4Net>() {
                range = Some(r.trunc()).filter(|r| subnet.contains(&r.network()));
            }
            for (name, a) in &p.aux_addresses {
                if let Ok(a) = a.parse::<Ipv4Addr>() {
                    used.insert(a, format!("aux address {name} of {}", n.id));
                }
            }
        }
        self.nets.insert(
            n.id.clone(),
            NetAddrs {
                subnet,
                range,
                used,
            },
        );
    }

    /// Marks a service's addresses (VIPs, slots, pins) as used.
    pub fn add_service(&mut self, view: &impl StoreView, s: &Service) {
        for v in &s.vips {
            if let (Some(a), Some(net)) = (
                parse_cidr_addr(&v.address),
                self.nets.get_mut(&v.network_id),
            ) {
                net.used.insert(a, vip_owner(&s.id));
            }
        }
        for sa in &s.slot_addresses {
            if let (Some(a), Some(net)) = (
                parse_cidr_addr(&sa.address),
                self.nets.get_mut(&sa.network_id),
            ) {
                net.used.insert(a, slot_owner(&s.id, sa.slot));
            }
        }
        if let Some(spec) = &s.spec {
            let stack_spec = view.get_stack(&s.stack).and_then(|st| st.spec.as_ref());
            for att in service_attachments(&s.stack, stack_spec, spec) {
                if let (Ok(a), Some(net)) = (
                    att.ipv4_address.parse::<Ipv4Addr>(),
                    self.nets.get_mut(&att.network_id),
                ) {
                    net.used.entry(a).or_insert_with(|| slot_owner(&s.id, 1));
                }
            }
        }
    }

    /// The subnet of a network known to the book.
    pub fn subnet(&self, network_id: &str) -> Option<Ipv4Net> {
        self.nets.get(network_id).map(|n| n.subnet)
    }

    fn allocate(&mut self, network_id: &str, owner: String) -> Result<Ipv4Addr, IpamError> {
        let net = self
            .nets
            .get_mut(network_id)
            .ok_or_else(|| IpamError::UnknownNetwork {
                network: network_id.to_string(),
            })?;
        let pool = net.range.unwrap_or(net.subnet);
        let free = pool
            .hosts()
            .chain([pool.network(), pool.broadcast()])
            .find(|a| net.subnet.contains(a) && !net.used.contains_key(a));
        match free {
            Some(a) => {
                net.used.insert(a, owner);
                Ok(a)
            }
            None => Err(IpamError::SubnetFull {
                network: network_id.to_string(),
                subnet: net.subnet.to_string(),
            }),
        }
    }

    /// Reserves a pinned address for slot `slot` of `service_id`.
    pub fn reserve_pin(
        &mut self,
        network_id: &str,
        service_id: &str,
        slot: u32,
        address: &str,
    ) -> Result<Ipv4Addr, IpamError> {
        let owner = slot_owner(service_id, slot);
        let net = self
            .nets
            .get_mut(network_id)
            .ok_or_else(|| IpamError::UnknownNetwork {
                network: network_id.to_string(),
            })?;
        let a: Ipv4Addr = address.parse().map_err(|_| IpamError::BadAddress {
            service: service_id.to_string(),
            network: network_id.to_string(),
            address: address.to_string(),
        })?;
        if !net.subnet.contains(&a) || a == net.subnet.network() || a == net.subnet.broadcast() {
            return Err(IpamError::PinOutsideSubnet {
                service: service_id.to_string(),
                network: network_id.to_string(),
                address: address.to_string(),
                subnet: net.subnet.to_string(),
            });
        }
        match net.used.get(&a) {
            Some(o) if *o != owner => Err(IpamError::PinTaken {
                service: service_id.to_string(),
                network: network_id.to_string(),
                address: address.to_string(),
                owner: o.clone(),
            }),
            _ => {
                net.used.insert(a, owner);
                Ok(a)
            }
        }
    }

    fn release(&mut self, network_id: &str, address: &str) {
        if let (Some(net), Some(a)) = (self.nets.get_mut(network_id), parse_cidr_addr(address)) {
            net.used.remove(&a);
        }
    }

    fn cidr(&self, network_id: &str, a: Ipv4Addr) -> String {
        let prefix = self
            .nets
            .get(network_id)
            .map(|n| n.subnet.prefix_len())
            .unwrap_or(32);
        format!("{a}/{prefix}")
    }
}

/// Gives `service` a VIP on every network in `attachments` that it lacks one
/// on, and drops VIPs of networks it left. Returns whether it changed.
pub fn ensure_vips(
    book: &mut AddressBook,
    service: &mut Service,
    attachments: &[ServiceAttachment],
) -> Result<bool, IpamError> {
    let mut changed = false;
    let keep: Vec<&str> = attachments.iter().map(|a| a.network_id.as_str()).collect();
    let before = service.vips.len();
    let mut dropped = Vec::new();
    service.vips.retain(|v| {
        let k = keep.contains(&v.network_id.as_str());
        if !k {
            dropped.push((v.network_id.clone(), v.address.clone()));
        }
        k
    });
    for (n, a) in dropped {
        book.release(&n, &a);
    }
    changed |= service.vips.len() != before;
    for att in attachments {
        if service.vips.iter().any(|v| v.network_id == att.network_id) {
            continue;
        }
        let a = book.allocate(&att.network_id, vip_owner(&service.id))?;
        service.vips.push(EndpointAddress {
            network_id: att.network_id.clone(),
            address: book.cidr(&att.network_id, a),
        });
        changed = true;
    }
    Ok(changed)
}

/// Makes sure slot `slot` of `service` has an address on every attached
/// network (pinned ones for slot 1 when the spec pins). Returns whether the
/// service changed.
pub fn ensure_slot_addresses(
    book: &mut AddressBook,
    service: &mut Service,
    slot: u32,
    attachments: &[ServiceAttachment],
) -> Result<bool, IpamError> {
    let mut changed = false;
    for att in attachments {
        let pinned = slot == 1 && !att.ipv4_address.is_empty();
        let existing = service
            .slot_addresses
            .iter()
            .position(|s| s.slot == slot && s.network_id == att.network_id);
        if let Some(i) = existing {
            // A pin that changed in the spec moves the slot to the new address.
            let cur = parse_cidr_addr(&service.slot_addresses[i].address);
            let pin = att.ipv4_address.parse::<Ipv4Addr>().ok();
            if !pinned || cur == pin {
                continue;
            }
            let old = service.slot_addresses.remove(i);
            book.release(&old.network_id, &old.address);
        }
        let a = if pinned {
            book.reserve_pin(&att.network_id, &service.id, slot, &att.ipv4_address)?
        } else {
            book.allocate(&att.network_id, slot_owner(&service.id, slot))?
        };
        let mac = if slot == 1 && !att.mac_address.is_empty() {
            att.mac_address.clone()
        } else {
            mac_for(a)
        };
        service.slot_addresses.push(SlotAddress {
            slot,
            network_id: att.network_id.clone(),
            address: book.cidr(&att.network_id, a),
            mac_address: mac,
        });
        changed = true;
    }
    Ok(changed)
}

/// Forgets every address of slot `slot` (the slot no longer exists). Returns
/// whether the service changed.
pub fn release_slot(book: &mut AddressBook, service: &mut Service, slot: u32) -> bool {
    let before = service.slot_addresses.len();
    let mut gone = Vec::new();
    service.slot_addresses.retain(|s| {
        let keep = s.slot != slot;
        if !keep {
            gone.push((s.network_id.clone(), s.address.clone()));
        }
        keep
    });
    for (n, a) in gone {
        book.release(&n, &a);
    }
    service.slot_addresses.len() != before
}

/// The network attachments a task of slot `slot` runs with: the slot's
/// stored addresses, in the order of `attachments`.
pub fn slot_attachments(
    service: &Service,
    slot: u32,
    attachments: &[ServiceAttachment],
) -> Vec<NetworkAttachment> {
    attachments
        .iter()
        .filter_map(|att| {
            let sa = service
                .slot_addresses
                .iter()
                .find(|s| s.slot == slot && s.network_id == att.network_id)?;
            Some(NetworkAttachment {
                network_id: att.network_id.clone(),
                addresses: vec![sa.address.clone()],
                mac_address: sa.mac_address.clone(),
                aliases: att.aliases.clone(),
            })
        })
        .collect()
}

/// Chooses the IPv6 subnet and gateway of a network with `enable_ipv6`:
/// the spec's IPv6 `ipam` subnet (at most a /96, so that every IPv4 host
/// number fits in its host part), else a unique-local /64 derived from the
/// SHA-256 of the network id (RFC 4193's fd00::/8 with a hashed global and
/// subnet id), so every node and every restart computes the same one.
pub fn allocate_subnet_v6(
    network_id: &str,
    spec: Option<&NetworkSpec>,
) -> Result<(Ipv6Net, Ipv6Addr), IpamError> {
    let requested = spec.and_then(|s| s.ipam.iter().find(|p| p.subnet.contains(':')));
    let subnet = match requested {
        Some(p) => {
            let net = p
                .subnet
                .parse::<Ipv6Net>()
                .map_err(|_| IpamError::BadSubnet {
                    network: network_id.to_string(),
                    subnet: p.subnet.clone(),
                })?
                .trunc();
            if net.prefix_len() > 96 {
                return Err(IpamError::BadSubnet {
                    network: network_id.to_string(),
                    subnet: format!("{} (an IPv6 subnet must be a /96 or larger)", p.subnet),
                });
            }
            net
        }
        None => {
            let digest = Sha256::digest(format!("ipv6:{network_id}").as_bytes());
            let mut octets = [0u8; 16];
            octets[0] = 0xfd;
            octets[1..8].copy_from_slice(&digest[..7]);
            Ipv6Net::new(Ipv6Addr::from(octets), 64)
                .map_err(|_| IpamError::BadSubnet {
                    network: network_id.to_string(),
                    subnet: "derived /64".to_string(),
                })?
                .trunc()
        }
    };
    let gateway = Ipv6Addr::from(u128::from(subnet.network()) | 1);
    Ok((subnet, gateway))
}

/// The IPv6 address a holder of IPv4 address `v4` has on a network with
/// IPv6 subnet `subnet_v6`: the subnet's prefix with the IPv4 address as
/// its last 32 bits. Stable because the IPv4 address is, and unique
/// because it is (the gateway, `.1`, maps to `::<a.b.c.1>`, not `::1`).
pub fn v6_address(subnet_v6: &str, v4_cidr: &str) -> Option<String> {
    let net: Ipv6Net = subnet_v6.parse().ok()?;
    let v4 = parse_cidr_addr(v4_cidr)?;
    let a = Ipv6Addr::from(u128::from(net.network()) | u128::from(u32::from(v4)));
    Some(format!("{a}/{}", net.prefix_len()))
}

/// Adds each attachment's IPv6 address (after its IPv4 one) on networks
/// that have an IPv6 subnet.
pub fn with_v6(
    mut attachments: Vec<NetworkAttachment>,
    view: &impl StoreView,
) -> Vec<NetworkAttachment> {
    for att in &mut attachments {
        let Some(net) = view.get_network(&att.network_id) else {
            continue;
        };
        if net.subnet_v6.is_empty() {
            continue;
        }
        let v6 = att
            .addresses
            .first()
            .and_then(|v4| v6_address(&net.subnet_v6, v4));
        if let Some(v6) = v6 {
            if !att.addresses.contains(&v6) {
                att.addresses.push(v6);
            }
        }
    }
    attachments
}

#[cfg(test)]
mod tests;
