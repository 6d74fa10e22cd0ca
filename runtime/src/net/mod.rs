//! Network primitives the agent composes into per-stack networks: network
//! namespaces ([`netns`]), bridges and veth pairs over rtnetlink
//! ([`Netlink`]), and nftables rules for forwarding and outbound NAT
//! ([`firewall`]), and DNAT for published ports and service VIPs ([`nat`]).
//!
//! What it must never do: choose addresses (the manager allocates every
//! subnet, gateway, address and MAC and hands them in), know about stacks,
//! services or tasks, or change anything on the host it did not create
//! itself (other tables' rules, other links, the caller's own namespace).
//! The one exception is [`firewall`], which inserts tagged accept rules into
//! Docker's `DOCKER-USER`/`FORWARD` chain when that chain would otherwise
//! drop Flotilla's traffic; it removes exactly those rules again.

pub mod firewall;
mod link;
pub mod nat;
pub mod netns;

use std::net::Ipv4Addr;

pub use link::{Netlink, CONTAINER_IFNAME};

/// Longest Linux interface name (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;

/// Errors of the network primitives. Each says what was being done to what.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{op} {target}: {source}")]
    Io {
        op: &'static str,
        target: String,
        #[source]
        source: std::io::Error,
    },
    #[error("netlink: {op} {target}: {source}")]
    Netlink {
        op: &'static str,
        target: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("invalid {what} {value:?}: {reason}")]
    Invalid {
        what: &'static str,
        value: String,
        reason: String,
    },
    #[error("{what} {name:?} not found")]
    NotFound { what: &'static str, name: String },
    #[error("{what} {name:?} already exists")]
    Exists { what: &'static str, name: String },
    #[error("link {name:?} exists but is a {kind}, not a bridge")]
    NotABridge { name: String, kind: String },
    #[error("nft: {op}: {detail}")]
    Nft { op: String, detail: String },
    #[error("network namespace worker thread for {target} panicked")]
    ThreadPanicked { target: String },
}

impl NetError {
    pub(crate) fn io(
        op: &'static str,
        target: impl std::fmt::Display,
        source: std::io::Error,
    ) -> Self {
        NetError::Io {
            op,
            target: target.to_string(),
            source,
        }
    }

    pub(crate) fn errno(
        op: &'static str,
        target: impl std::fmt::Display,
        errno: nix::errno::Errno,
    ) -> Self {
        NetError::Io {
            op,
            target: target.to_string(),
            source: std::io::Error::from(errno),
        }
    }

    pub(crate) fn netlink(
        op: &'static str,
        target: impl std::fmt::Display,
        source: rtnetlink::Error,
    ) -> Self {
        NetError::Netlink {
            op,
            target: target.to_string(),
            source,
        }
    }
}

/// Deterministic MAC for a container address, Docker's scheme:
/// `02:42:` followed by the four IPv4 bytes (locally administered, unicast).
pub fn mac_for(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

/// Parses `"aa:bb:cc:dd:ee:ff"` into six bytes.
pub fn parse_mac(mac: &str) -> Result<[u8; 6], NetError> {
    let bad = |reason: &str| NetError::Invalid {
        what: "MAC address",
        value: mac.to_string(),
        reason: reason.to_string(),
    };
    let mut out = [0u8; 6];
    let mut parts = mac.split(':');
    for byte in out.iter_mut() {
        let part = parts
            .next()
            .ok_or_else(|| bad("expected six colon-separated hex bytes"))?;
        if part.len() != 2 {
            return Err(bad("each byte must be two hex digits"));
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad("not hexadecimal"))?;
    }
    if parts.next().is_some() {
        return Err(bad("expected six colon-separated hex bytes"));
    }
    if out[0] & 1 == 1 {
        return Err(bad("multicast bit set; a link address must be unicast"));
    }
    Ok(out)
}

/// Parses `"10.89.3.1/24"` into the address and prefix length. The address
/// part may have host bits set (it is an interface address, not a network).
pub fn parse_cidr_v4(cidr: &str) -> Result<(Ipv4Addr, u8), NetError> {
    let bad = |reason: &str| NetError::Invalid {
        what: "IPv4 CIDR",
        value: cidr.to_string(),
        reason: reason.to_string(),
    };
    let (addr, len) = cidr
        .split_once('/')
        .ok_or_else(|| bad("expected ADDRESS/PREFIX"))?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| bad("address is not IPv4"))?;
    let len: u8 = len
        .parse()
        .map_err(|_| bad("prefix length is not a number"))?;
    if len > 32 {
        return Err(bad("prefix length above 32"));
    }
    Ok((addr, len))
}

/// Parses `"fd00:1::2/64"` into the address and prefix length (host bits
/// may be set).
pub fn parse_cidr_v6(cidr: &str) -> Result<(std::net::Ipv6Addr, u8), NetError> {
    let bad = |reason: &str| NetError::Invalid {
        what: "IPv6 CIDR",
        value: cidr.to_string(),
        reason: reason.to_string(),
    };
    let (addr, len) = cidr
        .split_once('/')
        .ok_or_else(|| bad("expected ADDRESS/PREFIX"))?;
    let addr: std::net::Ipv6Addr = addr.parse().map_err(|_| bad("address is not IPv6"))?;
    let len: u8 = len
        .parse()
        .map_err(|_| bad("prefix length is not a number"))?;
    if len > 128 {
        return Err(bad("prefix length above 128"));
    }
    Ok((addr, len))
}

/// The network of an IPv4 CIDR with host bits cleared: `10.89.3.7/24` →
/// `10.89.3.0/24`.
pub fn network_v4(cidr: &str) -> Result<(Ipv4Addr, u8), NetError> {
    let (addr, len) = parse_cidr_v4(cidr)?;
    let mask = if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    };
    Ok((Ipv4Addr::from(u32::from(addr) & mask), len))
}

/// Checks an interface name the kernel will accept and that is safe to put
/// between quotes in an nft script.
pub fn check_ifname(name: &str) -> Result<(), NetError> {
    let bad = |reason: &str| NetError::Invalid {
        what: "interface name",
        value: name.to_string(),
        reason: reason.to_string(),
    };
    if name.is_empty() || name.len() > IFNAME_MAX {
        return Err(bad("must be 1 to 15 bytes"));
    }
    if name == "." || name == ".." {
        return Err(bad("reserved name"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(bad(
            "only ASCII letters, digits, '-', '_' and '.' are allowed",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_follows_docker_scheme() {
        assert_eq!(mac_for(Ipv4Addr::new(10, 89, 3, 2)), "02:42:0a:59:03:02");
        assert_eq!(
            parse_mac("02:42:0a:59:03:02").unwrap(),
            [2, 0x42, 10, 0x59, 3, 2]
        );
        assert!(parse_mac("01:00:5e:00:00:01").is_err());
        assert!(parse_mac("02:42:0a:59:03").is_err());
        assert!(parse_mac("02:42:0a:59:03:02:01").is_err());
    }

    #[test]
    fn cidr_parsing() {
        assert_eq!(
            parse_cidr_v4("10.89.3.1/24").unwrap(),
            (Ipv4Addr::new(10, 89, 3, 1), 24)
        );
        assert_eq!(
            network_v4("10.89.3.7/24").unwrap(),
            (Ipv4Addr::new(10, 89, 3, 0), 24)
        );
        assert_eq!(network_v4("0.0.0.0/0").unwrap(), (Ipv4Addr::UNSPECIFIED, 0));
        assert!(parse_cidr_v4("10.89.3.1").is_err());
        assert!(parse_cidr_v4("10.89.3.1/33").is_err());
        assert!(parse_cidr_v4("fd00::1/64").is_err());
    }

    #[test]
    fn ifname_rules() {
        assert!(check_ifname("flt-br0").is_ok());
        assert!(check_ifname("a-very-long-name0").is_err());
        assert!(check_ifname("br\"0").is_err());
        assert!(check_ifname("").is_err());
    }
}
