//! How a task's process is derived from its service spec and its image's
//! config, by Docker's rules (entrypoint, cmd, env, working dir, user,
//! hostname, /etc/hosts).
//!
//! Pure functions only: no I/O, so the rules are tested exactly.

use flotilla_proto::v1::{ImageConfig, Service, ServiceSpec, Task};
use std::collections::BTreeMap;

/// The default PATH Docker gives a container whose image sets none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A resolved process: what the runtime is asked to execute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub user: String,
}

/// Why a process could not be derived.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProcessError {
    #[error("service {service}: no command specified (the image has no ENTRYPOINT or CMD and the service sets no command)")]
    NoCommand { service: String },
}

/// Combines the service spec with the image config the way `docker run`
/// does: an entrypoint set by the service discards the image's CMD; a
/// command set by the service replaces the image's CMD; env from the image
/// is overridden key by key by the service's environment.
pub fn resolve(
    spec: &ServiceSpec,
    image: &ImageConfig,
    hostname: &str,
) -> Result<Process, ProcessError> {
    let entrypoint: Vec<String> = match &spec.entrypoint {
        Some(list) => list.values.clone(),
        None => image
            .entrypoint
            .as_ref()
            .map(|l| l.values.clone())
            .unwrap_or_default(),
    };
    let cmd: Vec<String> = match (&spec.command, &spec.entrypoint) {
        (Some(list), _) => list.values.clone(),
        (None, Some(_)) => Vec::new(),
        (None, None) => image
            .cmd
            .as_ref()
            .map(|l| l.values.clone())
            .unwrap_or_default(),
    };
    let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if args.is_empty() {
        return Err(ProcessError::NoCommand {
            service: spec.name.clone(),
        });
    }

    // Keep the image's order, then the service's additions in key order, so
    // the result is deterministic.
    let mut order: Vec<String> = Vec::new();
    let mut values: BTreeMap<String, String> = BTreeMap::new();
    let mut set = |k: &str, v: &str| {
        if !values.contains_key(k) {
            order.push(k.to_string());
        }
        values.insert(k.to_string(), v.to_string());
    };
    if !image.env.iter().any(|e| e.starts_with("PATH=")) {
        set("PATH", DEFAULT_PATH);
    }
    for kv in &image.env {
        let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
        set(k, v);
    }
    set("HOSTNAME", hostname);
    for (k, v) in &spec.environment {
        set(k, v);
    }
    let env = order
        .iter()
        .map(|k| format!("{k}={}", values.get(k).map(String::as_str).unwrap_or("")))
        .collect();

    let cwd = if !spec.working_dir.is_empty() {
        spec.working_dir.clone()
    } else if !image.working_dir.is_empty() {
        image.working_dir.clone()
    } else {
        "/".to_string()
    };
    let user = if !spec.user.is_empty() {
        spec.user.clone()
    } else {
        image.user.clone()
    };
    Ok(Process {
        args,
        env,
        cwd,
        user,
    })
}

/// The container id for a task: 64 hex characters like Docker's, derived
/// from the task id so a restarted agent finds the same container.
pub fn container_id(task_id: &str) -> String {
    let hex: String = task_id.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    let mut id = hex.to_ascii_lowercase();
    while id.len() < 64 {
        // Repeat the task's own digits: deterministic and still unique per task.
        let more = id.clone();
        id.push_str(&more);
        if more.is_empty() {
            id.push('0');
        }
    }
    id.truncate(64);
    id
}

/// The container's hostname: the service's `hostname`, else the short
/// container id (Docker's default).
pub fn hostname(task: &Task) -> String {
    match task.spec.as_ref() {
        Some(spec) if !spec.hostname.is_empty() => spec.hostname.clone(),
        _ => container_id(&task.id)[..12].to_string(),
    }
}

/// The content of a task's /etc/hosts: localhost, the container itself, and
/// every slot of every service of its stack on a network it shares (by
/// service name, container name and aliases), plus `extra_hosts`.
/// Slots from here up belong to one-off tasks (the manager's numbering).
pub const ONEOFF_SLOT_BASE: u32 = 100_000;

pub fn hosts_file(task: &Task, services: &[Service]) -> String {
    let mut out = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    let own_networks: Vec<&str> = task
        .networks
        .iter()
        .map(|n| n.network_id.as_str())
        .collect();
    if let Some(first) = task.networks.first().and_then(|n| n.addresses.first()) {
        let ip = strip_prefix_len(first);
        out.push_str(&format!("{ip}\t{}\t{}\n", hostname(task), task.name));
    }
    let mut seen: Vec<(String, String)> = Vec::new();
    for svc in services.iter().filter(|s| s.stack == task.stack) {
        let Some(spec) = svc.spec.as_ref() else {
            continue;
        };
        let mut slots: Vec<_> = svc
            .slot_addresses
            .iter()
            .filter(|a| own_networks.contains(&a.network_id.as_str()))
            // One-off tasks (`run`) have addresses but never answer for
            // the service's name.
            .filter(|a| a.slot < ONEOFF_SLOT_BASE)
            .collect();
        slots.sort_by_key(|a| a.slot);
        for a in slots {
            let ip = strip_prefix_len(&a.address).to_string();
            let mut names = vec![
                spec.name.clone(),
                format!("{}-{}-{}", svc.stack, spec.name, a.slot),
            ];
            if !spec.container_name.is_empty() && a.slot == 1 {
                names.push(spec.container_name.clone());
            }
            for net in &spec.networks {
                names.extend(net.aliases.iter().cloned());
            }
            names.retain(|n| {
                let key = (n.clone(), ip.clone());
                if seen.contains(&key) {
                    false
                } else {
                    seen.push(key);
                    true
                }
            });
            if !names.is_empty() {
                out.push_str(&format!("{ip}\t{}\n", names.join(" ")));
            }
        }
    }
    if let Some(spec) = task.spec.as_ref() {
        for extra in &spec.extra_hosts {
            let (name, ip) = match extra.split_once('=') {
                Some(p) => p,
                None => match extra.split_once(':') {
                    Some(p) => p,
                    None => continue,
                },
            };
            out.push_str(&format!("{}\t{}\n", ip.trim(), name.trim()));
        }
    }
    out
}

/// The address part of a CIDR ("10.0.0.2/24" → "10.0.0.2").
pub fn strip_prefix_len(cidr: &str) -> &str {
    cidr.split('/').next().unwrap_or(cidr)
}

/// resolv.conf for a container that does not use the embedded DNS server
/// (`host`, `none`): the host's, minus loopback name servers a container
/// cannot reach (Docker's rule), with the service's `dns`, `dns_search`
/// and `dns_opt` replacing the host's lines of the same kind.
pub fn resolv_conf(host: &str, dns: &[String], search: &[String], opts: &[String]) -> String {
    let mut out = String::new();
    if !search.is_empty() {
        out.push_str(&format!("search {}\n", search.join(" ")));
    }
    for d in dns {
        out.push_str(&format!("nameserver {d}\n"));
    }
    for line in host.lines() {
        let t = line.trim();
        if let Some(ns) = t.strip_prefix("nameserver") {
            let ns = ns.trim();
            if !dns.is_empty() || ns.starts_with("127.") || ns == "::1" {
                continue;
            }
            out.push_str(&format!("nameserver {ns}\n"));
        } else if (t.starts_with("search") && !search.is_empty())
            || (t.starts_with("options") && !opts.is_empty())
            || t.starts_with('#')
        {
            continue;
        } else if !t.is_empty() {
            out.push_str(t);
            out.push('\n');
        }
    }
    if !opts.is_empty() {
        out.push_str(&format!("options {}\n", opts.join(" ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_proto::v1::{NetworkAttachment, SlotAddress, StringList};

    fn list(v: &[&str]) -> Option<StringList> {
        Some(StringList {
            values: v.iter().map(|s| s.to_string()).collect(),
        })
    }

    #[test]
    fn docker_entrypoint_and_cmd_rules() {
        let image = ImageConfig {
            entrypoint: list(&["/entry"]),
            cmd: list(&["serve"]),
            env: vec!["PATH=/bin".into(), "A=1".into()],
            working_dir: "/app".into(),
            user: "nobody".into(),
            ..Default::default()
        };
        // (service entrypoint, service command) → argv
        let cases: Vec<(Option<StringList>, Option<StringList>, Vec<&str>)> = vec![
            (None, None, vec!["/entry", "serve"]),
            (None, list(&["run", "x"]), vec!["/entry", "run", "x"]),
            (list(&["/other"]), None, vec!["/other"]),
            (list(&["/other"]), list(&["a"]), vec!["/other", "a"]),
            (list(&[]), list(&["/bin/sh"]), vec!["/bin/sh"]),
        ];
        for (entrypoint, command, want) in cases {
            let spec = ServiceSpec {
                name: "web".into(),
                entrypoint: entrypoint.clone(),
                command: command.clone(),
                ..Default::default()
            };
            let p = resolve(&spec, &image, "h").unwrap();
            assert_eq!(
                p.args, want,
                "entrypoint {entrypoint:?} command {command:?}"
            );
            assert_eq!(p.cwd, "/app");
            assert_eq!(p.user, "nobody");
        }
    }

    #[test]
    fn empty_command_is_an_error() {
        let spec = ServiceSpec {
            name: "web".into(),
            ..Default::default()
        };
        assert_eq!(
            resolve(&spec, &ImageConfig::default(), "h"),
            Err(ProcessError::NoCommand {
                service: "web".into()
            })
        );
    }

    #[test]
    fn env_overrides_by_key_and_default_path() {
        let image = ImageConfig {
            cmd: list(&["x"]),
            env: vec!["A=1".into(), "B=2".into()],
            ..Default::default()
        };
        let mut spec = ServiceSpec::default();
        spec.environment.insert("B".into(), "3".into());
        spec.environment.insert("C".into(), "4".into());
        let p = resolve(&spec, &image, "host1").unwrap();
        assert_eq!(
            p.env,
            vec![
                format!("PATH={DEFAULT_PATH}"),
                "A=1".into(),
                "B=3".into(),
                "HOSTNAME=host1".into(),
                "C=4".into()
            ]
        );
        assert_eq!(p.cwd, "/");
    }

    #[test]
    fn container_ids_are_stable_and_docker_shaped() {
        let a = container_id("0f8fad5b-d9cb-469f-a165-70867728950e");
        assert_eq!(a.len(), 64);
        assert_eq!(a, container_id("0f8fad5b-d9cb-469f-a165-70867728950e"));
        assert_ne!(a, container_id("1f8fad5b-d9cb-469f-a165-70867728950e"));
        assert!(a.starts_with("0f8fad5bd9cb"));
    }

    #[test]
    fn hosts_lists_peers_on_shared_networks_only() {
        let task = Task {
            id: "0f8fad5b-d9cb-469f-a165-70867728950e".into(),
            stack: "s".into(),
            name: "s-web-1".into(),
            networks: vec![NetworkAttachment {
                network_id: "s_default".into(),
                addresses: vec!["10.89.0.2/24".into()],
                ..Default::default()
            }],
            spec: Some(ServiceSpec {
                name: "web".into(),
                extra_hosts: vec!["gw=10.0.0.1".into()],
                ..Default::default()
            }),
            ..Default::default()
        };
        let svc = |name: &str, net: &str, ip: &str| Service {
            id: format!("s_{name}"),
            stack: "s".into(),
            spec: Some(ServiceSpec {
                name: name.into(),
                ..Default::default()
            }),
            slot_addresses: vec![SlotAddress {
                slot: 1,
                network_id: net.into(),
                address: ip.into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut api = svc("api", "s_default", "10.89.0.3/24");
        // A one-off `run` task of api has an address but not api's name.
        api.slot_addresses.push(SlotAddress {
            slot: ONEOFF_SLOT_BASE,
            network_id: "s_default".into(),
            address: "10.89.0.9/24".into(),
            ..Default::default()
        });
        let services = vec![api, svc("hidden", "s_other", "10.90.0.3/24")];
        let hosts = hosts_file(&task, &services);
        assert!(!hosts.contains("10.89.0.9"), "{hosts}");
        assert!(
            hosts.contains("10.89.0.2\t0f8fad5bd9cb\ts-web-1\n"),
            "{hosts}"
        );
        assert!(hosts.contains("10.89.0.3\tapi s-api-1\n"), "{hosts}");
        assert!(!hosts.contains("hidden"), "{hosts}");
        assert!(hosts.contains("10.0.0.1\tgw\n"), "{hosts}");
    }

    #[test]
    fn resolv_conf_drops_loopback_servers() {
        let host = "# comment\nnameserver 127.0.0.53\nnameserver 192.0.2.1\noptions edns0\n";
        assert_eq!(
            resolv_conf(host, &[], &[], &[]),
            "nameserver 192.0.2.1\noptions edns0\n"
        );
        assert_eq!(
            resolv_conf(host, &["198.51.100.1".into()], &["example".into()], &[]),
            "search example\nnameserver 198.51.100.1\noptions edns0\n"
        );
        // dns_opt replaces the host's options.
        assert_eq!(
            resolv_conf(host, &[], &[], &["ndots:2".into(), "timeout:1".into()]),
            "nameserver 192.0.2.1\noptions ndots:2 timeout:1\n"
        );
    }
}
