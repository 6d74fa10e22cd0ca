//! Host-name resolution without glibc's NSS.
//!
//! The demo is linked statically, and a static glibc cannot load the NSS
//! modules `getaddrinfo` needs, so names are resolved here by hand: an IP
//! literal, then the container's `/etc/hosts` (where Flotilla lists the stack's
//! services), then `localhost`, then a plain DNS A query over UDP to the
//! nameservers in `/etc/resolv.conf`. It must never call the libc resolver
//! (no `ToSocketAddrs` on names) and never send anything but one small query
//! per nameserver and attempt.

use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::error::Error;

/// DNS record type A (an IPv4 address).
const TYPE_A: u16 = 1;
/// DNS class IN (Internet).
const CLASS_IN: u16 = 1;
/// DNS response code for "no such name".
const RCODE_NXDOMAIN: u16 = 3;
/// Size of the fixed DNS message header.
const HEADER_LEN: usize = 12;

/// Finds `name` in the text of an `/etc/hosts` file: the address of the first
/// line that lists it (case-insensitively) as its canonical name or an alias.
pub fn lookup_hosts(contents: &str, name: &str) -> Option<IpAddr> {
    let name = name.trim_end_matches('.');
    contents.lines().find_map(|line| {
        let line = line.split('#').next().unwrap_or("");
        let mut fields = line.split_whitespace();
        let addr: IpAddr = fields.next()?.parse().ok()?;
        fields
            .any(|n| n.trim_end_matches('.').eq_ignore_ascii_case(name))
            .then_some(addr)
    })
}

/// The parts of `/etc/resolv.conf` the demo uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvConf {
    /// Nameserver addresses, in file order; unparseable ones are skipped.
    pub nameservers: Vec<IpAddr>,
    /// Search domains from the last `search` or `domain` line.
    pub search: Vec<String>,
}

/// Parses the text of an `/etc/resolv.conf` file.
pub fn parse_resolv_conf(contents: &str) -> ResolvConf {
    let mut conf = ResolvConf::default();
    for line in contents.lines() {
        let line = line.split(['#', ';']).next().unwrap_or("");
        let mut fields = line.split_whitespace();
        match fields.next() {
            Some("nameserver") => {
                if let Some(addr) = fields.next().and_then(|a| a.parse().ok()) {
                    conf.nameservers.push(addr);
                }
            }
            Some("search") | Some("domain") => {
                conf.search = fields
                    .map(|d| d.trim_end_matches('.').to_string())
                    .collect();
            }
            _ => {}
        }
    }
    conf
}

/// Encodes a recursive DNS query for the A records of `name`.
pub fn encode_query(id: u16, name: &str) -> Result<Vec<u8>, Error> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > 253 {
        return Err(Error::Dns(format!(
            "cannot encode name {name:?}: length must be 1 to 253"
        )));
    }
    let mut msg = Vec::with_capacity(HEADER_LEN + name.len() + 6);
    msg.extend_from_slice(&id.to_be_bytes());
    // Flags: a standard query with "recursion desired" set.
    msg.extend_from_slice(&0x0100u16.to_be_bytes());
    // One question, no answer, authority or additional records.
    msg.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(Error::Dns(format!(
                "cannot encode name {name:?}: label {label:?} must be 1 to 63 bytes"
            )));
        }
        // The length check above makes this cast lossless.
        msg.push(label.len() as u8);
        msg.extend_from_slice(label.as_bytes());
    }
    msg.push(0);
    msg.extend_from_slice(&TYPE_A.to_be_bytes());
    msg.extend_from_slice(&CLASS_IN.to_be_bytes());
    Ok(msg)
}

/// A bounds-checked reader over a DNS message.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], Error> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.buf.len())
            .ok_or_else(|| Error::Dns(format!("reply truncated at byte {}", self.pos)))?;
        let bytes = &self.buf[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn u16(&mut self) -> Result<u16, Error> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// Skips an encoded name. Compression pointers end a name, so they are
    /// not followed: the demo only needs the record data, not owner names.
    fn skip_name(&mut self) -> Result<(), Error> {
        loop {
            let len = self.take(1)?[0];
            match len & 0xC0 {
                0x00 if len == 0 => return Ok(()),
                0x00 => {
                    self.take(usize::from(len))?;
                }
                0xC0 => {
                    self.take(1)?;
                    return Ok(());
                }
                _ => {
                    return Err(Error::Dns(format!(
                        "unsupported label type {len:#04x} at byte {}",
                        self.pos - 1
                    )))
                }
            }
        }
    }
}

/// Decodes a reply to the query with `id`, returning its A-record addresses.
///
/// "No such name" and "no A records" both decode to an empty list: either
/// way the name has no IPv4 address at this server.
pub fn decode_response(id: u16, reply: &[u8]) -> Result<Vec<Ipv4Addr>, Error> {
    let mut cur = Cursor { buf: reply, pos: 0 };
    let reply_id = cur.u16()?;
    if reply_id != id {
        return Err(Error::Dns(format!(
            "reply id {reply_id} does not match query id {id}"
        )));
    }
    let flags = cur.u16()?;
    if flags & 0x8000 == 0 {
        return Err(Error::Dns("message is a query, not a reply".to_string()));
    }
    match flags & 0x000F {
        0 => {}
        RCODE_NXDOMAIN => return Ok(Vec::new()),
        rcode => return Err(Error::Dns(format!("server answered with rcode {rcode}"))),
    }
    let questions = cur.u16()?;
    let answers = cur.u16()?;
    cur.take(4)?; // authority and additional counts: not needed
    for _ in 0..questions {
        cur.skip_name()?;
        cur.take(4)?; // type and class
    }
    let mut addrs = Vec::new();
    for _ in 0..answers {
        cur.skip_name()?;
        let rtype = cur.u16()?;
        let class = cur.u16()?;
        cur.take(4)?; // TTL: the demo does not cache
        let len = usize::from(cur.u16()?);
        let data = cur.take(len)?;
        if rtype == TYPE_A && class == CLASS_IN && len == 4 {
            addrs.push(Ipv4Addr::new(data[0], data[1], data[2], data[3]));
        }
    }
    Ok(addrs)
}

/// A query id that differs between processes and calls; not a security
/// measure (the demo trusts its network), only a guard against stray replies.
fn query_id() -> u16 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    // Truncation is intended: any 16 bits of these will do.
    (nanos ^ (nanos >> 16) ^ std::process::id()) as u16
}

/// Sends one A query for `name` to `server` over UDP and waits up to
/// `timeout` for the matching reply.
pub fn query_a(server: SocketAddr, name: &str, timeout: Duration) -> Result<Vec<Ipv4Addr>, Error> {
    let id = query_id();
    let query = encode_query(id, name)?;
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let io_err =
        |what: &str, e| Error::io(format!("{what} for DNS query of {name:?} to {server}"), e);
    let sock = UdpSocket::bind(local).map_err(|e| io_err("binding a UDP socket", e))?;
    sock.connect(server)
        .map_err(|e| io_err("connecting the UDP socket", e))?;
    sock.send(&query).map_err(|e| io_err("sending", e))?;
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 1500];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::Dns(format!(
                "no reply from {server} for {name:?} within {timeout:?}"
            )));
        }
        sock.set_read_timeout(Some(left))
            .map_err(|e| io_err("setting the read timeout", e))?;
        let n = match sock.recv(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => return Err(io_err("receiving", e)),
        };
        // A reply to an earlier, timed-out query is skipped, not an error.
        if n >= 2 && u16::from_be_bytes([buf[0], buf[1]]) != id {
            continue;
        }
        return decode_response(id, &buf[..n]);
    }
}

/// Resolves host names the way the demo's containers need (see module docs).
#[derive(Debug, Clone)]
pub struct Resolver {
    /// The hosts file to read; a missing file counts as empty.
    pub hosts_path: PathBuf,
    /// The resolver configuration to read; a missing file means no DNS.
    pub resolv_conf_path: PathBuf,
    /// The UDP port nameservers listen on (53 except in tests).
    pub dns_port: u16,
    /// How long to wait for each DNS reply.
    pub timeout: Duration,
}

impl Default for Resolver {
    fn default() -> Self {
        Resolver {
            hosts_path: PathBuf::from("/etc/hosts"),
            resolv_conf_path: PathBuf::from("/etc/resolv.conf"),
            dns_port: 53,
            timeout: Duration::from_secs(2),
        }
    }
}

impl Resolver {
    /// Resolves `host` to one address.
    pub fn resolve(&self, host: &str) -> Result<IpAddr, Error> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(ip);
        }
        let hosts = read_optional(&self.hosts_path)?;
        if let Some(ip) = lookup_hosts(&hosts, host) {
            return Ok(ip);
        }
        if host.eq_ignore_ascii_case("localhost") {
            return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST));
        }
        let conf = parse_resolv_conf(&read_optional(&self.resolv_conf_path)?);
        let not_found = |reason: String| Error::Resolve {
            host: host.to_string(),
            reason,
        };
        if conf.nameservers.is_empty() {
            return Err(not_found(format!(
                "not in {} and no nameserver in {}",
                self.hosts_path.display(),
                self.resolv_conf_path.display()
            )));
        }
        let mut candidates = vec![host.to_string()];
        if !host.ends_with('.') {
            candidates.extend(conf.search.iter().map(|d| format!("{host}.{d}")));
        }
        let mut last_error = None;
        for name in &candidates {
            'servers: for ns in &conf.nameservers {
                let server = SocketAddr::new(*ns, self.dns_port);
                for _attempt in 0..2 {
                    match query_a(server, name, self.timeout) {
                        Ok(addrs) => match addrs.first() {
                            Some(a) => return Ok(IpAddr::V4(*a)),
                            // This server knows the name has no address:
                            // asking its peers would not change that.
                            None => break 'servers,
                        },
                        Err(e) => last_error = Some(e),
                    }
                }
            }
        }
        Err(not_found(match last_error {
            Some(e) => format!("not in {}; last DNS error: {e}", self.hosts_path.display()),
            None => format!(
                "not in {} and no A record in DNS",
                self.hosts_path.display()
            ),
        }))
    }
}

/// Reads a configuration file, treating a missing one as empty: a minimal
/// container root filesystem may have neither `/etc/hosts` nor
/// `/etc/resolv.conf`.
fn read_optional(path: &std::path::Path) -> Result<String, Error> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
    }
}

/// Resolves `host` with the system files (`/etc/hosts`, `/etc/resolv.conf`).
pub fn resolve_host(host: &str) -> Result<IpAddr, Error> {
    Resolver::default().resolve(host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    const HOSTS: &str = "\
127.0.0.1\tlocalhost
# 10.0.0.9 commented
::1 localhost ip6-localhost
10.0.0.2 store store.hello  # the store
10.0.0.3  API
bogus line here
10.0.0.4 store
";

    #[test]
    fn hosts_lookup_finds_names_and_aliases() {
        assert_eq!(
            lookup_hosts(HOSTS, "store"),
            Some("10.0.0.2".parse().unwrap())
        );
        assert_eq!(
            lookup_hosts(HOSTS, "store.hello"),
            Some("10.0.0.2".parse().unwrap())
        );
        assert_eq!(
            lookup_hosts(HOSTS, "api"),
            Some("10.0.0.3".parse().unwrap())
        );
        assert_eq!(
            lookup_hosts(HOSTS, "store."),
            Some("10.0.0.2".parse().unwrap())
        );
        assert_eq!(
            lookup_hosts(HOSTS, "ip6-localhost"),
            Some("::1".parse().unwrap())
        );
    }

    #[test]
    fn hosts_lookup_ignores_comments_and_garbage() {
        assert_eq!(lookup_hosts(HOSTS, "commented"), None);
        assert_eq!(lookup_hosts(HOSTS, "here"), None);
        assert_eq!(lookup_hosts(HOSTS, "web"), None);
        assert_eq!(lookup_hosts("", "store"), None);
    }

    #[test]
    fn resolv_conf_parsing() {
        let conf = parse_resolv_conf(
            "# generated\nnameserver 127.0.0.11\nnameserver fe80::1%eth0\nnameserver ::1 ; v6\n\
             options ndots:0\ndomain old.example\nsearch hello.flotilla. example.com\n",
        );
        assert_eq!(
            conf.nameservers,
            vec![
                "127.0.0.11".parse::<IpAddr>().unwrap(),
                "::1".parse().unwrap()
            ]
        );
        assert_eq!(conf.search, vec!["hello.flotilla", "example.com"]);
    }

    #[test]
    fn query_encoding_matches_rfc1035_layout() {
        let q = encode_query(0xBEEF, "api.hello.").unwrap();
        let expected: Vec<u8> = [
            &[0xBE, 0xEF, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0][..],
            &[3, b'a', b'p', b'i', 5, b'h', b'e', b'l', b'l', b'o', 0],
            &[0, 1, 0, 1],
        ]
        .concat();
        assert_eq!(q, expected);
    }

    #[test]
    fn query_encoding_rejects_bad_names() {
        assert!(encode_query(1, "").is_err());
        assert!(encode_query(1, "a..b").is_err());
        assert!(encode_query(1, &"x".repeat(64)).is_err());
        assert!(encode_query(1, &["abc"; 70].join(".")).is_err());
    }

    /// Builds a reply to `query` with a CNAME record and then the given A
    /// records, the way recursive servers answer aliased names.
    fn reply_to(query: &[u8], rcode: u8, addrs: &[Ipv4Addr]) -> Vec<u8> {
        let question_end = query.len();
        let mut r = query[..question_end].to_vec();
        r[2] = 0x81; // QR, RD
        r[3] = 0x80 | rcode; // RA, rcode
        let answers = if rcode == 0 {
            addrs.len() as u16 + 1
        } else {
            0
        };
        r[6..8].copy_from_slice(&answers.to_be_bytes());
        if rcode == 0 {
            // CNAME: owner is the question name (pointer to offset 12).
            r.extend_from_slice(&[0xC0, 12, 0, 5, 0, 1, 0, 0, 0, 60]);
            let target = [5, b'a', b'l', b'i', b'a', b's', 0xC0, 12];
            r.extend_from_slice(&(target.len() as u16).to_be_bytes());
            r.extend_from_slice(&target);
            for a in addrs {
                r.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
                r.extend_from_slice(&a.octets());
            }
        }
        r
    }

    #[test]
    fn reply_decoding_collects_a_records_and_skips_others() {
        let q = encode_query(7, "store").unwrap();
        let addrs = [Ipv4Addr::new(10, 1, 2, 3), Ipv4Addr::new(10, 1, 2, 4)];
        let r = reply_to(&q, 0, &addrs);
        assert_eq!(decode_response(7, &r).unwrap(), addrs.to_vec());
    }

    #[test]
    fn reply_decoding_handles_errors() {
        let q = encode_query(7, "store").unwrap();
        assert_eq!(
            decode_response(7, &reply_to(&q, 3, &[])).unwrap(),
            Vec::<Ipv4Addr>::new()
        );
        assert!(decode_response(7, &reply_to(&q, 2, &[])).is_err());
        assert!(decode_response(8, &reply_to(&q, 0, &[])).is_err());
        assert!(decode_response(7, &q).is_err(), "a query is not a reply");
        let full = reply_to(&q, 0, &[Ipv4Addr::new(1, 2, 3, 4)]);
        for cut in 0..full.len() {
            assert!(decode_response(7, &full[..cut]).is_err(), "cut at {cut}");
        }
    }

    /// A one-shot DNS server on loopback that answers `name` with `addr`
    /// and every other name with NXDOMAIN; returns its port.
    fn fake_dns(
        answers: Vec<(&'static str, Ipv4Addr)>,
        queries: usize,
    ) -> (u16, thread::JoinHandle<Vec<String>>) {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = sock.local_addr().unwrap().port();
        let handle = thread::spawn(move || {
            let mut asked = Vec::new();
            let mut buf = [0u8; 512];
            for _ in 0..queries {
                let (n, peer) = sock.recv_from(&mut buf).unwrap();
                let q = &buf[..n];
                let mut labels = Vec::new();
                let mut pos = HEADER_LEN;
                while q[pos] != 0 {
                    let len = usize::from(q[pos]);
                    labels.push(String::from_utf8_lossy(&q[pos + 1..pos + 1 + len]).into_owned());
                    pos += 1 + len;
                }
                let name = labels.join(".");
                let reply = match answers.iter().find(|(n, _)| *n == name) {
                    Some((_, a)) => reply_to(q, 0, &[*a]),
                    None => reply_to(q, 3, &[]),
                };
                sock.send_to(&reply, peer).unwrap();
                asked.push(name);
            }
            asked
        });
        (port, handle)
    }

    #[test]
    fn query_a_round_trip_over_loopback_udp() {
        let addr = Ipv4Addr::new(10, 9, 8, 7);
        let (port, server) = fake_dns(vec![("api", addr)], 1);
        let got = query_a(
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            "api",
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(got, vec![addr]);
        assert_eq!(server.join().unwrap(), vec!["api"]);
    }

    #[test]
    fn resolver_order_literal_hosts_localhost_then_dns_with_search() {
        let dir = tempfile::tempdir().unwrap();
        let hosts_path = dir.path().join("hosts");
        let resolv_conf_path = dir.path().join("resolv.conf");
        fs::write(&hosts_path, "10.0.0.2 store\n").unwrap();
        fs::write(
            &resolv_conf_path,
            "nameserver 127.0.0.1\nsearch hello.flotilla\n",
        )
        .unwrap();
        let addr = Ipv4Addr::new(10, 0, 0, 3);
        // "api" is NXDOMAIN, then "api.hello.flotilla" answers.
        let (port, server) = fake_dns(vec![("api.hello.flotilla", addr)], 2);
        let r = Resolver {
            hosts_path,
            resolv_conf_path,
            dns_port: port,
            timeout: Duration::from_secs(5),
        };
        assert_eq!(
            r.resolve("192.0.2.1").unwrap(),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            r.resolve("store").unwrap(),
            "10.0.0.2".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            r.resolve("localhost").unwrap(),
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        );
        assert_eq!(r.resolve("api").unwrap(), IpAddr::V4(addr));
        assert_eq!(server.join().unwrap(), vec!["api", "api.hello.flotilla"]);
    }

    #[test]
    fn resolver_without_files_knows_only_literals_and_localhost() {
        let dir = tempfile::tempdir().unwrap();
        let r = Resolver {
            hosts_path: dir.path().join("missing-hosts"),
            resolv_conf_path: dir.path().join("missing-resolv.conf"),
            ..Resolver::default()
        };
        assert_eq!(
            r.resolve("localhost").unwrap(),
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        );
        assert_eq!(r.resolve("::1").unwrap(), "::1".parse::<IpAddr>().unwrap());
        let err = r.resolve("store").unwrap_err();
        assert!(matches!(err, Error::Resolve { .. }), "{err}");
    }
}
