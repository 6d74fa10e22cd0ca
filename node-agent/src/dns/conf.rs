//! resolv.conf for the embedded DNS: the daemon's default upstream servers
//! (the host's, without loopback ones) and the file each container sees.
//!
//! Pure text in, text out: reading /etc/resolv.conf is the caller's job.
//! Never hands a loopback upstream to a container's resolver: 127.0.0.53
//! on the host is not reachable from a container's netns.

use std::net::{IpAddr, SocketAddr};

use super::EMBEDDED_DNS_ADDR;

/// An upstream server given by a user (`--dns-upstream`, `dns:`) that is not
/// `IP` or `IP:PORT`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("parsing DNS upstream server {input:?}: expected IP or IP:PORT")]
pub struct UpstreamParseError {
    pub input: String,
}

/// Parses `IP`, `IP:PORT`, `[IPv6]:PORT` or a bare IPv6 address; the port
/// defaults to 53.
pub fn parse_upstream(input: &str) -> Result<SocketAddr, UpstreamParseError> {
    let s = input.trim();
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Ok(sa);
    }
    s.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| UpstreamParseError {
            input: input.to_string(),
        })
}

/// The host's nameservers from the text of its resolv.conf, skipping
/// loopback ones (a systemd-resolved stub on the host is useless as the
/// default for containers, and Docker skips them for the same reason).
pub fn host_upstreams(host_resolv_conf: &str) -> Vec<SocketAddr> {
    host_resolv_conf
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next()? == "nameserver").then_some(())?;
            // A scoped IPv6 address (fe80::1%eth0) cannot be parsed as an
            // IpAddr and is not reachable from the agent's forwarder anyway.
            let ip: IpAddr = words.next()?.parse().ok()?;
            (!ip.is_loopback()).then(|| SocketAddr::new(ip, 53))
        })
        .collect()
}

/// The resolv.conf a container sees: the embedded server, then its
/// `dns_search` (or the host's search line) and its `dns_opt` (or the
/// host's options). `dns:` servers are not listed here: the embedded
/// server forwards to them for this container instead.
pub fn container_resolv_conf(host_resolv_conf: &str, search: &[String], opts: &[String]) -> String {
    let mut out = format!("nameserver {EMBEDDED_DNS_ADDR}\n");
    let host_line = |key: &str| -> Vec<String> {
        host_resolv_conf
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                (w.next()? == key).then(|| w.map(str::to_string).collect::<Vec<_>>())
            })
            .flatten()
            .collect()
    };
    let search: Vec<String> = if search.is_empty() {
        host_line("search")
    } else {
        search.to_vec()
    };
    let opts: Vec<String> = if opts.is_empty() {
        host_line("options")
    } else {
        opts.to_vec()
    };
    if !search.is_empty() {
        out.push_str(&format!("search {}\n", search.join(" ")));
    }
    if !opts.is_empty() {
        out.push_str(&format!("options {}\n", opts.join(" ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "# generated\nnameserver 127.0.0.53\nnameserver 192.0.2.1\nnameserver ::1\nnameserver 2001:db8::1\nnameserver fe80::1%eth0\nsearch corp.example\noptions edns0 trust-ad\n";

    #[test]
    fn host_upstreams_skip_loopback_and_scoped() {
        assert_eq!(
            host_upstreams(HOST),
            vec![
                "192.0.2.1:53".parse::<SocketAddr>().unwrap(),
                "[2001:db8::1]:53".parse().unwrap()
            ]
        );
        assert!(host_upstreams("nameserver 127.0.0.1\n").is_empty());
    }

    #[test]
    fn parse_upstream_forms() {
        for (input, want) in [
            ("192.0.2.1", Some("192.0.2.1:53")),
            ("127.0.0.1:5353", Some("127.0.0.1:5353")),
            ("2001:db8::1", Some("[2001:db8::1]:53")),
            ("[2001:db8::1]:54", Some("[2001:db8::1]:54")),
            ("dns.example", None),
            ("1.2.3.4:x", None),
        ] {
            let got = parse_upstream(input).ok();
            assert_eq!(got, want.map(|w| w.parse().unwrap()), "{input}");
        }
    }

    #[test]
    fn container_resolv_conf_cases() {
        let cases: [(&[&str], &[&str], &str); 3] = [
            (
                &[],
                &[],
                "nameserver 127.0.0.11\nsearch corp.example\noptions edns0 trust-ad\n",
            ),
            (
                &["a.example", "b.example"],
                &["ndots:2"],
                "nameserver 127.0.0.11\nsearch a.example b.example\noptions ndots:2\n",
            ),
            (
                &["s"],
                &[],
                "nameserver 127.0.0.11\nsearch s\noptions edns0 trust-ad\n",
            ),
        ];
        for (search, opts, want) in cases {
            let s: Vec<String> = search.iter().map(|x| x.to_string()).collect();
            let o: Vec<String> = opts.iter().map(|x| x.to_string()).collect();
            assert_eq!(container_resolv_conf(HOST, &s, &o), want);
        }
        assert_eq!(
            container_resolv_conf("", &[], &[]),
            "nameserver 127.0.0.11\n"
        );
    }
}
