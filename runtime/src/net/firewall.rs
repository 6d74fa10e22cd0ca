//! nftables rules for Flotilla's bridge networks, through the `nft` binary:
//! scripts on stdin (each call is one atomic transaction) and `nft -j` to
//! read back what is there.
//!
//! Layout, all in `table inet flotilla`:
//! - `forward` (filter hook, policy accept) jumps to `fwd-in`, then `fwd-out`.
//! - `fwd-in` holds, per bridge, what may enter it from elsewhere: replies
//!   (established/related), DNAT-ed traffic (published ports), and a drop
//!   for everything else. It runs first, so one network's outbound accept
//!   can never let traffic into another network.
//! - `fwd-out` holds, per bridge, same-bridge traffic (seen here when
//!   br_netfilter is on) and traffic leaving the bridge (accepted, or
//!   dropped for internal networks).
//! - `postrouting` (nat hook) masquerades each non-internal subnet leaving
//!   by another interface.
//!
//! Every rule carries the comment `flotilla:<bridge>`; that tag is how
//! [`remove_network`] finds exactly its rules and [`list_networks`] finds
//! leftovers.
//!
//! Docker: a packet is dropped if ANY base chain on its hook drops it, so
//! when Docker (iptables-nft) has `ip filter FORWARD` with policy drop, our
//! accept is not enough. If `table ip filter` (or `ip6 filter`) has a
//! `FORWARD` chain, [`add_network`] inserts two tagged accept rules for the
//! bridge at the top of its `DOCKER-USER` chain (Docker's documented place
//! for user rules) or, without one, of `FORWARD`. They are written in the
//! shape iptables-nft itself produces (`iifname`, `counter`, `accept`,
//! comment) so Docker's iptables keeps understanding the table. Our own
//! table still decides what is allowed; Docker's chain only must not veto.
//!
//! What it must never do: change or remove a rule, chain or table it did
//! not create (everything outside `inet flotilla` is touched only by handle
//! of a rule carrying our tag), or flush anything but its own `forward`
//! base chain.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};

use super::{check_ifname, network_v4, NetError};

/// Family and name of Flotilla's own table.
pub const TABLE: &str = "flotilla";
/// Prefix of the comment on every rule Flotilla adds, followed by the bridge.
pub const TAG_PREFIX: &str = "flotilla:";

const BASE: &str = "\
add table inet flotilla
add chain inet flotilla forward { type filter hook forward priority filter; policy accept; }
add chain inet flotilla fwd-in
add chain inet flotilla fwd-out
add chain inet flotilla postrouting { type nat hook postrouting priority srcnat; policy accept; }
flush chain inet flotilla forward
add rule inet flotilla forward jump fwd-in
add rule inet flotilla forward jump fwd-out
";

/// Serialises this process's read-modify-write cycles on the ruleset, so
/// two calls never try to delete the same rule handle.
static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn tag(bridge: &str) -> String {
    format!("{TAG_PREFIX}{bridge}")
}

/// Creates (or repairs) `table inet flotilla` and its chains. Idempotent;
/// [`add_network`] does it too.
pub fn ensure_base() -> Result<(), NetError> {
    nft_script("creating table inet flotilla", BASE)
}

/// Installs the rules for one bridge network, replacing any it already has
/// (idempotent; call again to pick up a Docker that started later).
/// `subnet` is the network's IPv4 CIDR; `internal` networks get no NAT and
/// no traffic to or from other interfaces.
pub fn add_network(bridge: &str, subnet: &str, internal: bool) -> Result<(), NetError> {
    add_network_dual(bridge, subnet, None, internal)
}

/// [`add_network`] for a network that also has the IPv6 subnet
/// `subnet_v6`: the filter rules (inet family, by interface) cover both,
/// and a non-internal network's IPv6 traffic is masqueraded too.
pub fn add_network_dual(
    bridge: &str,
    subnet: &str,
    subnet_v6: Option<&str>,
    internal: bool,
) -> Result<(), NetError> {
    check_ifname(bridge)?;
    let (net, len) = network_v4(subnet)?;
    let net6 = match subnet_v6 {
        Some(s) => {
            let (a, l) = super::parse_cidr_v6(s)?;
            let mask = if l == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(l))
            };
            Some((std::net::Ipv6Addr::from(u128::from(a) & mask), l))
        }
        None => None,
    };
    let _guard = lock();
    let ruleset = Ruleset::read()?;
    let t = tag(bridge);
    let mut script = String::from(BASE);
    for rule in ruleset.tagged(&t) {
        script.push_str(&rule.delete_cmd());
    }
    let c = format!("comment \"{t}\"");
    let b = bridge;
    let add = |script: &mut String, chain: &str, body: String| {
        script.push_str(&format!("add rule inet flotilla {chain} {body} {c}\n"));
    };
    if !internal {
        add(
            &mut script,
            "fwd-in",
            format!("oifname \"{b}\" iifname != \"{b}\" ct state established,related accept"),
        );
        add(
            &mut script,
            "fwd-in",
            format!("oifname \"{b}\" iifname != \"{b}\" ct status dnat accept"),
        );
    }
    add(
        &mut script,
        "fwd-in",
        format!("oifname \"{b}\" iifname != \"{b}\" drop"),
    );
    add(
        &mut script,
        "fwd-out",
        format!("iifname \"{b}\" oifname \"{b}\" accept"),
    );
    add(
        &mut script,
        "fwd-out",
        format!(
            "iifname \"{b}\" {}",
            if internal { "drop" } else { "accept" }
        ),
    );
    if !internal {
        add(
            &mut script,
            "postrouting",
            format!("ip saddr {net}/{len} oifname != \"{b}\" masquerade"),
        );
        if let Some((net6, len6)) = net6 {
            add(
                &mut script,
                "postrouting",
                format!("ip6 saddr {net6}/{len6} oifname != \"{b}\" masquerade"),
            );
        }
    }
    for (family, chain) in ruleset.docker_targets() {
        // `insert` puts them first, ahead of Docker's own drops; iifname
        // covers same-bridge traffic too (br_netfilter shows it as in = out = bridge).
        script.push_str(&format!(
            "insert rule {family} filter {chain} oifname \"{b}\" counter accept {c}\n"
        ));
        script.push_str(&format!(
            "insert rule {family} filter {chain} iifname \"{b}\" counter accept {c}\n"
        ));
    }
    nft_script(
        &format!("adding rules for network on bridge {bridge} ({subnet})"),
        &script,
    )
}

/// Removes exactly the rules tagged for `bridge`, in our table and in
/// Docker's chains. Succeeds if there are none.
pub fn remove_network(bridge: &str) -> Result<(), NetError> {
    check_ifname(bridge)?;
    let _guard = lock();
    let ruleset = Ruleset::read()?;
    let script: String = ruleset
        .tagged(&tag(bridge))
        .map(|r| r.delete_cmd())
        .collect();
    if script.is_empty() {
        return Ok(());
    }
    nft_script(&format!("removing rules for bridge {bridge}"), &script)
}

/// Bridges that have Flotilla rules anywhere (sorted), so the agent can
/// remove those of networks it no longer has.
pub fn list_networks() -> Result<Vec<String>, NetError> {
    let ruleset = Ruleset::read()?;
    let names: BTreeSet<String> = ruleset
        .rules
        .iter()
        .filter(|r| r.is_ours())
        .filter_map(|r| {
            r.comment
                .as_deref()
                .and_then(|c| c.strip_prefix(TAG_PREFIX))
                .map(str::to_string)
        })
        .collect();
    Ok(names.into_iter().collect())
}

/// Removes everything Flotilla added: `table inet flotilla` and every
/// tagged rule in Docker's chains. For uninstalling a node.
pub fn teardown() -> Result<(), NetError> {
    let _guard = lock();
    let ruleset = Ruleset::read()?;
    let mut script = String::new();
    // Rules in our own table go with the table.
    for rule in ruleset
        .rules
        .iter()
        .filter(|r| r.is_ours() && r.table != TABLE)
    {
        script.push_str(&rule.delete_cmd());
    }
    if ruleset.has_our_table {
        script.push_str("delete table inet flotilla\n");
    }
    if script.is_empty() {
        return Ok(());
    }
    nft_script("removing all Flotilla rules", &script)
}

/// Turns on IPv4 forwarding (needed for containers to reach other
/// networks; same-bridge traffic does not need it). Host-wide, like Docker.
pub fn enable_ip_forward() -> Result<(), NetError> {
    let path = "/proc/sys/net/ipv4/ip_forward";
    std::fs::write(path, "1\n").map_err(|e| NetError::io("enabling IPv4 forwarding in", path, e))
}

/// Turns on IPv6 forwarding for networks with `enable_ipv6`. Forwarding
/// makes the kernel ignore router advertisements on interfaces with
/// `accept_ra = 1`, which would cost a host that configures itself by RA
/// its IPv6 default route: those interfaces are set to 2 (accept even when
/// forwarding) first.
pub fn enable_ipv6_forward() -> Result<(), NetError> {
    let all = "/proc/sys/net/ipv6/conf/all/forwarding";
    if std::fs::read_to_string(all).is_ok_and(|v| v.trim() == "1") {
        return Ok(());
    }
    if let Ok(dir) = std::fs::read_dir("/proc/sys/net/ipv6/conf") {
        for entry in dir.flatten() {
            let ra = entry.path().join("accept_ra");
            if std::fs::read_to_string(&ra).is_ok_and(|v| v.trim() == "1") {
                let _ = std::fs::write(&ra, "2\n");
            }
        }
    }
    std::fs::write(all, "1\n").map_err(|e| NetError::io("enabling IPv6 forwarding in", all, e))
}

/// Whether the host has IPv6 (the stack is compiled in and not disabled).
pub fn ipv6_available() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/disable_ipv6")
        .is_ok_and(|v| v.trim() == "0")
}

/// Whether bridged IPv4 traffic passes through the ip/inet forward hooks
/// (br_netfilter loaded with `bridge-nf-call-iptables=1`). When it does,
/// same-bridge container traffic is subject to every forward chain, which
/// [`add_network`] accounts for.
pub fn br_netfilter_enabled() -> bool {
    std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables")
        .map(|s| s.trim() == "1")
        .unwrap_or(false)
}

/// Tables of legacy (non-nft) iptables loaded in this namespace, from
/// /proc/net/ip_tables_names. Rules there are invisible to nft, so if
/// Docker runs on iptables-legacy with a FORWARD drop policy, Flotilla's
/// forwarded traffic is dropped and nothing here can see why: the agent
/// should warn when this lists `filter`.
pub fn legacy_iptables_tables() -> Vec<String> {
    std::fs::read_to_string("/proc/net/ip_tables_names")
        .map(|s| {
            s.lines()
                .map(str::to_string)
                .filter(|l| !l.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// `delete rule` commands for every rule in `table inet flotilla` whose
/// comment is exactly `comment` (for [`super::nat`]'s per-agent rules).
pub(crate) fn delete_commented(comment: &str) -> Result<String, NetError> {
    let ruleset = Ruleset::read()?;
    Ok(ruleset
        .rules
        .iter()
        .filter(|r| r.family == "inet" && r.table == TABLE && r.comment.as_deref() == Some(comment))
        .map(|r| r.delete_cmd())
        .collect())
}

/// Serialises a read-then-delete cycle of this process (see [`LOCK`]).
pub(crate) fn ruleset_lock() -> std::sync::MutexGuard<'static, ()> {
    lock()
}

/// Runs `nft -f -` with `script` on stdin: one atomic transaction.
pub(crate) fn nft_script(op: &str, script: &str) -> Result<(), NetError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| NetError::Nft {
            op: op.to_string(),
            detail: format!("starting nft: {e}"),
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| NetError::Nft {
                op: op.to_string(),
                detail: format!("writing script to nft: {e}"),
            })?;
    }
    let out = child.wait_with_output().map_err(|e| NetError::Nft {
        op: op.to_string(),
        detail: format!("waiting for nft: {e}"),
    })?;
    if !out.status.success() {
        return Err(NetError::Nft {
            op: op.to_string(),
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(())
}

struct Chain {
    family: String,
    table: String,
    name: String,
}

struct Rule {
    family: String,
    table: String,
    chain: String,
    handle: u64,
    comment: Option<String>,
}

impl Rule {
    /// Tagged by Flotilla, in a table Flotilla writes to.
    fn is_ours(&self) -> bool {
        let tagged = self
            .comment
            .as_deref()
            .is_some_and(|c| c.starts_with(TAG_PREFIX));
        let table_ok = (self.family == "inet" && self.table == TABLE)
            || ((self.family == "ip" || self.family == "ip6") && self.table == "filter");
        tagged && table_ok
    }

    fn delete_cmd(&self) -> String {
        format!(
            "delete rule {} {} {} handle {}\n",
            self.family,
            self.table,
            quote_chain(&self.chain),
            self.handle
        )
    }
}

/// Chain names from the ruleset (Docker's are upper case with '-'); quote
/// anything unusual so nft does not read it as a keyword.
fn quote_chain(name: &str) -> String {
    if name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', ""))
    }
}

struct Ruleset {
    chains: Vec<Chain>,
    rules: Vec<Rule>,
    has_our_table: bool,
}

impl Ruleset {
    fn read() -> Result<Self, NetError> {
        let op = "reading ruleset (nft -j list ruleset)";
        let out = Command::new("nft")
            .args(["-j", "list", "ruleset"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| NetError::Nft {
                op: op.to_string(),
                detail: format!("starting nft: {e}"),
            })?;
        if !out.status.success() {
            return Err(NetError::Nft {
                op: op.to_string(),
                detail: format!(
                    "{}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        Self::parse(&out.stdout).map_err(|detail| NetError::Nft {
            op: op.to_string(),
            detail,
        })
    }

    fn parse(json: &[u8]) -> Result<Self, String> {
        let v: serde_json::Value =
            serde_json::from_slice(json).map_err(|e| format!("parsing nft JSON: {e}"))?;
        let items = v
            .get("nftables")
            .and_then(|n| n.as_array())
            .ok_or("nft JSON has no \"nftables\" array")?;
        let s = |o: &serde_json::Value, k: &str| {
            o.get(k)
                .and_then(|x| x.as_str())
                .unwrap_or_default()
                .to_string()
        };
        let mut rs = Ruleset {
            chains: Vec::new(),
            rules: Vec::new(),
            has_our_table: false,
        };
        for item in items {
            if let Some(t) = item.get("table") {
                if s(t, "family") == "inet" && s(t, "name") == TABLE {
                    rs.has_our_table = true;
                }
            } else if let Some(c) = item.get("chain") {
                rs.chains.push(Chain {
                    family: s(c, "family"),
                    table: s(c, "table"),
                    name: s(c, "name"),
                });
            } else if let Some(r) = item.get("rule") {
                let Some(handle) = r.get("handle").and_then(|h| h.as_u64()) else {
                    continue;
                };
                rs.rules.push(Rule {
                    family: s(r, "family"),
                    table: s(r, "table"),
                    chain: s(r, "chain"),
                    handle,
                    comment: r
                        .get("comment")
                        .and_then(|c| c.as_str())
                        .map(str::to_string),
                });
            }
        }
        Ok(rs)
    }

    fn has_chain(&self, family: &str, table: &str, name: &str) -> bool {
        self.chains
            .iter()
            .any(|c| c.family == family && c.table == table && c.name == name)
    }

    fn tagged<'a>(&'a self, tag: &'a str) -> impl Iterator<Item = &'a Rule> + 'a {
        self.rules
            .iter()
            .filter(move |r| r.is_ours() && r.comment.as_deref() == Some(tag))
    }

    /// Docker-style chains that must also accept our traffic: per family
    /// with a `filter FORWARD` chain, its `DOCKER-USER` if present, else
    /// `FORWARD` itself.
    fn docker_targets(&self) -> Vec<(&'static str, &'static str)> {
        let mut out = Vec::new();
        for family in ["ip", "ip6"] {
            if self.has_chain(family, "filter", "FORWARD") {
                let chain = if self.has_chain(family, "filter", "DOCKER-USER") {
                    "DOCKER-USER"
                } else {
                    "FORWARD"
                };
                out.push((family, chain));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nft_json_and_finds_docker_chains() {
        let json = br#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "ip", "name": "filter", "handle": 1}},
            {"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "handle": 1, "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}},
            {"chain": {"family": "ip", "table": "filter", "name": "DOCKER-USER", "handle": 2}},
            {"chain": {"family": "ip6", "table": "filter", "name": "FORWARD", "handle": 1}},
            {"rule": {"family": "ip", "table": "filter", "chain": "DOCKER-USER", "handle": 7, "comment": "flotilla:br1", "expr": []}},
            {"rule": {"family": "ip", "table": "filter", "chain": "DOCKER-USER", "handle": 8, "comment": "someone else", "expr": []}},
            {"rule": {"family": "ip", "table": "nat", "chain": "X", "handle": 9, "comment": "flotilla:fake", "expr": []}},
            {"table": {"family": "inet", "name": "flotilla", "handle": 3}},
            {"rule": {"family": "inet", "table": "flotilla", "chain": "fwd-in", "handle": 4, "comment": "flotilla:br2", "expr": []}}
        ]}"#;
        let rs = Ruleset::parse(json).unwrap();
        assert!(rs.has_our_table);
        assert_eq!(
            rs.docker_targets(),
            vec![("ip", "DOCKER-USER"), ("ip6", "FORWARD")]
        );
        let br1: Vec<_> = rs.tagged("flotilla:br1").map(|r| r.delete_cmd()).collect();
        assert_eq!(br1, vec!["delete rule ip filter DOCKER-USER handle 7\n"]);
        // A tag outside the tables we write to is not ours.
        assert_eq!(rs.tagged("flotilla:fake").count(), 0);
        assert_eq!(rs.tagged("flotilla:br2").count(), 1);
    }
}
