//! Conversion of a merged Compose document into `StackSpec`, with the
//! checks that need the whole project: unknown keys, keys Flotilla refuses
//! (`not supported yet: KEY`), profiles, undefined references and
//! dependency cycles. Every problem is collected with its position.
//!
//! It reads only the env files a service names (`env_file:`); it must never
//! touch the network, a daemon or the process environment, and never drop a
//! key silently.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use flotilla_proto::v1::*;

use crate::yaml::{Entry, Kind, Node, Pos, Typed};
use crate::{LoadError, LoadErrors, Project};

/// What the load is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `up`: keys Flotilla cannot run are errors.
    Deploy,
    /// `config`: any valid Compose key is accepted.
    Config,
}

pub(crate) struct Input {
    pub mode: Mode,
    pub name: String,
    pub project_dir: PathBuf,
    pub files: Vec<PathBuf>,
    pub environment: BTreeMap<String, String>,
    pub profiles: Vec<String>,
    pub services: Vec<String>,
    pub errors: Vec<LoadError>,
    pub warnings: Vec<String>,
}

/// Top-level keys of the Compose spec.
const TOP_KEYS: &[&str] = &[
    "version", "name", "include", "services", "networks", "volumes", "secrets", "configs", "models",
];

/// Service keys of the Compose spec that Flotilla carries into ServiceSpec.
const SERVICE_SUPPORTED: &[&str] = &[
    "annotations",
    "blkio_config",
    "cap_add",
    "cap_drop",
    "cgroup_parent",
    "command",
    "configs",
    "container_name",
    "cpu_shares",
    "cpus",
    "cpuset",
    "depends_on",
    "deploy",
    "devices",
    "dns",
    "dns_opt",
    "dns_search",
    "domainname",
    "entrypoint",
    "env_file",
    "environment",
    "expose",
    "extends",
    "extra_hosts",
    "group_add",
    "healthcheck",
    "hostname",
    "image",
    "init",
    "ipc",
    "labels",
    "logging",
    "mem_limit",
    "mem_reservation",
    "memswap_limit",
    "network_mode",
    "networks",
    "oom_score_adj",
    "pid",
    "pids_limit",
    "platform",
    "ports",
    "privileged",
    "profiles",
    "pull_policy",
    "read_only",
    "restart",
    "scale",
    "secrets",
    "security_opt",
    "shm_size",
    "stdin_open",
    "stop_grace_period",
    "stop_signal",
    "storage_opt",
    "sysctls",
    "tmpfs",
    "tty",
    "ulimits",
    "user",
    "volumes",
    "working_dir",
];

/// Service keys of the Compose spec that Flotilla refuses for now.
const SERVICE_REFUSED: &[&str] = &[
    "attach",
    "build",
    "cgroup",
    "cpu_count",
    "cpu_percent",
    "cpu_period",
    "cpu_quota",
    "cpu_rt_period",
    "cpu_rt_runtime",
    "credential_spec",
    "develop",
    "device_cgroup_rules",
    "external_links",
    "gpus",
    "isolation",
    "label_file",
    "links",
    "mac_address",
    "mem_swappiness",
    "models",
    "oom_kill_disable",
    "post_start",
    "pre_stop",
    "provider",
    "pull_refresh_after",
    "runtime",
    "use_api_socket",
    "userns_mode",
    "uts",
    "volumes_from",
];

struct Cx {
    mode: Mode,
    errors: Vec<LoadError>,
    warnings: Vec<String>,
    project_dir: PathBuf,
    env: BTreeMap<String, String>,
}

fn path_join(base: &str, key: &str) -> String {
    if base.is_empty() {
        key.to_string()
    } else {
        format!("{base}.{key}")
    }
}

impl Cx {
    fn err(&mut self, pos: &Pos, path: &str, msg: impl Into<String>) {
        self.errors.push(LoadError::at(pos, path, msg));
    }

    fn refuse(&mut self, pos: &Pos, path: &str, key: &str) {
        if self.mode == Mode::Deploy {
            self.err(pos, path, format!("not supported yet: {key}"));
        }
    }

    fn check_keys(&mut self, n: &Node, path: &str, allowed: &[&str]) {
        if let Some(m) = n.as_map() {
            for e in m {
                if !allowed.contains(&e.key.as_str()) && !e.key.starts_with("x-") {
                    self.err(
                        &e.key_pos,
                        &path_join(path, &e.key),
                        format!("unknown key {:?}", e.key),
                    );
                }
            }
        }
    }

    fn map<'a>(&mut self, n: &'a Node, path: &str) -> &'a [Entry] {
        match n.as_map() {
            Some(m) => m,
            None => {
                if !n.is_null() {
                    self.err(
                        &n.pos,
                        path,
                        format!("must be a mapping, not {}", n.kind_name()),
                    );
                }
                &[]
            }
        }
    }

    fn string(&mut self, n: &Node, path: &str) -> Option<String> {
        match &n.kind {
            Kind::Scalar(s) if s.typed() != Typed::Null => Some(s.text.clone()),
            _ => {
                self.err(
                    &n.pos,
                    path,
                    format!("must be a string, not {}", n.kind_name()),
                );
                None
            }
        }
    }

    fn bool(&mut self, n: &Node, path: &str) -> Option<bool> {
        if let Some(s) = n.as_scalar() {
            match s.typed() {
                Typed::Bool(b) => return Some(b),
                Typed::Str(t) => match t.to_ascii_lowercase().as_str() {
                    "true" | "1" | "t" => return Some(true),
                    "false" | "0" | "f" => return Some(false),
                    _ => {}
                },
                _ => {}
            }
        }
        self.err(
            &n.pos,
            path,
            format!("must be a boolean, not {}", n.kind_name()),
        );
        None
    }

    fn int(&mut self, n: &Node, path: &str) -> Option<i64> {
        if let Some(s) = n.as_scalar() {
            match s.typed() {
                Typed::Int(i) => return Some(i),
                Typed::Str(t) => {
                    if let Ok(i) = t.trim().parse::<i64>() {
                        return Some(i);
                    }
                }
                _ => {}
            }
        }
        self.err(
            &n.pos,
            path,
            format!("must be an integer, not {}", n.kind_name()),
        );
        None
    }

    fn uint<T: TryFrom<i64>>(&mut self, n: &Node, path: &str) -> Option<T> {
        let i = self.int(n, path)?;
        match T::try_from(i) {
            Ok(v) if i >= 0 => Some(v),
            _ => {
                self.err(&n.pos, path, format!("{i} is out of range"));
                None
            }
        }
    }

    fn float(&mut self, n: &Node, path: &str) -> Option<f64> {
        if let Some(s) = n.as_scalar() {
            match s.typed() {
                Typed::Int(i) => return Some(i as f64),
                Typed::Float(f) => return Some(f),
                Typed::Str(t) => {
                    if let Ok(f) = t.trim().parse::<f64>() {
                        return Some(f);
                    }
                }
                _ => {}
            }
        }
        self.err(
            &n.pos,
            path,
            format!("must be a number, not {}", n.kind_name()),
        );
        None
    }

    fn duration_ms(&mut self, n: &Node, path: &str) -> Option<u64> {
        let text = self.string(n, path)?;
        match parse_duration_ms(&text) {
            Some(v) => Some(v),
            None => {
                self.err(
                    &n.pos,
                    path,
                    format!("invalid duration {text:?} (expected e.g. 10s, 1m30s, 500ms)"),
                );
                None
            }
        }
    }

    fn bytes(&mut self, n: &Node, path: &str) -> Option<i64> {
        let text = self.string(n, path)?;
        match parse_bytes(&text) {
            Some(v) => Some(v),
            None => {
                self.err(
                    &n.pos,
                    path,
                    format!("invalid size {text:?} (expected e.g. 512m, 1g, 1024)"),
                );
                None
            }
        }
    }

    /// A sequence of scalars, or (if `single_ok`) one scalar.
    fn strings(&mut self, n: &Node, path: &str, single_ok: bool) -> Vec<String> {
        match &n.kind {
            Kind::Seq(items) => items
                .iter()
                .enumerate()
                .filter_map(|(i, it)| self.string(it, &format!("{path}[{i}]")))
                .collect(),
            Kind::Scalar(_) if single_ok && !n.is_null() => {
                self.string(n, path).into_iter().collect()
            }
            _ if n.is_null() => Vec::new(),
            _ => {
                self.err(
                    &n.pos,
                    path,
                    format!("must be a list of strings, not {}", n.kind_name()),
                );
                Vec::new()
            }
        }
    }

    /// A list (`K=V` / `K`) or a mapping (`K: V` / `K:`); `None` values are bare names.
    fn list_or_dict(
        &mut self,
        n: &Node,
        path: &str,
        sep: &[char],
    ) -> Vec<(String, Option<String>, Pos)> {
        let mut out = Vec::new();
        match &n.kind {
            Kind::Map(m) => {
                for e in m {
                    let v = match &e.value.kind {
                        Kind::Scalar(s) if s.typed() == Typed::Null => None,
                        Kind::Scalar(s) => Some(s.text.clone()),
                        _ => {
                            self.err(
                                &e.value.pos,
                                &path_join(path, &e.key),
                                "must be a string, number or boolean",
                            );
                            None
                        }
                    };
                    out.push((e.key.clone(), v, e.key_pos.clone()));
                }
            }
            Kind::Seq(items) => {
                for (i, it) in items.iter().enumerate() {
                    let Some(t) = self.string(it, &format!("{path}[{i}]")) else {
                        continue;
                    };
                    match t.find(sep) {
                        Some(p) => out.push((
                            t[..p].to_string(),
                            Some(t[p + 1..].to_string()),
                            it.pos.clone(),
                        )),
                        None => out.push((t, None, it.pos.clone())),
                    }
                }
            }
            _ if n.is_null() => {}
            _ => self.err(
                &n.pos,
                path,
                format!("must be a mapping or a list, not {}", n.kind_name()),
            ),
        }
        out
    }

    fn string_map(&mut self, n: &Node, path: &str) -> std::collections::HashMap<String, String> {
        self.list_or_dict(n, path, &['='])
            .into_iter()
            .map(|(k, v, _)| (k, v.unwrap_or_default()))
            .collect()
    }

    fn command(&mut self, n: &Node, path: &str) -> Option<StringList> {
        match &n.kind {
            Kind::Scalar(s) if s.typed() == Typed::Null => None,
            Kind::Scalar(s) => match shell_words::split(&s.text) {
                Ok(values) => Some(StringList { values }),
                Err(e) => {
                    self.err(
                        &n.pos,
                        path,
                        format!("cannot split {:?} into words: {e}", s.text),
                    );
                    None
                }
            },
            Kind::Seq(_) => Some(StringList {
                values: self.strings(n, path, false),
            }),
            Kind::Map(_) => {
                self.err(
                    &n.pos,
                    path,
                    "must be a string or a list of strings, not a mapping",
                );
                None
            }
        }
    }

    fn resolve_path(&self, p: &str) -> String {
        let expanded = if let Some(rest) = p.strip_prefix("~/") {
            match self.env.get("HOME") {
                Some(h) => format!("{h}/{rest}"),
                None => p.to_string(),
            }
        } else {
            p.to_string()
        };
        let path = Path::new(&expanded);
        let joined = if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.project_dir.join(path)
        };
        clean_path(&joined)
    }
}

/// Lexically removes `.` and `..` (no file-system access).
pub(crate) fn clean_path(p: &Path) -> String {
    let mut out: Vec<std::path::Component> = Vec::new();
    for c in p.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                if matches!(out.last(), Some(std::path::Component::Normal(_))) {
                    out.pop();
                }
            }
            o => out.push(o),
        }
    }
    out.iter().collect::<PathBuf>().display().to_string()
}

/// Go-style durations: `1h2m3s`, `1.5s`, `500ms`, `10us`; a bare number is seconds.
pub fn parse_duration_ms(s: &str) -> Option<u64> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(secs) = s.parse::<f64>() {
        return (secs >= 0.0).then(|| (secs * 1000.0).round() as u64);
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let num: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_len] {
            "h" => 3_600_000.0,
            "m" => 60_000.0,
            "s" => 1000.0,
            "ms" => 1.0,
            "us" | "µs" => 0.001,
            "ns" => 0.000_001,
            _ => return None,
        };
        total += num * factor;
        rest = &rest[unit_len..];
    }
    Some(total.round() as u64)
}

/// Sizes like Docker's `RAMInBytes`: `1024`, `100k`, `512m`, `1.5g`, `1gb`, `2GiB`.
pub fn parse_bytes(s: &str) -> Option<i64> {
    let t = s.trim().to_ascii_lowercase();
    let num_len = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let num: f64 = t[..num_len].parse().ok()?;
    let unit = t[num_len..].trim();
    let unit = unit
        .strip_suffix("ib")
        .or_else(|| unit.strip_suffix('b'))
        .unwrap_or(unit);
    let mult: f64 = match unit {
        "" => 1.0,
        "k" => 1024.0,
        "m" => 1024.0 * 1024.0,
        "g" => 1024.0 * 1024.0 * 1024.0,
        "t" => 1024f64.powi(4),
        "p" => 1024f64.powi(5),
        _ => return None,
    };
    Some((num * mult) as i64)
}

/// File modes: YAML plain `0440` is octal, as in Compose (Go's base-0 parse).
pub(crate) fn parse_mode(n: &Node) -> Option<u32> {
    let s = n.as_scalar()?;
    let t = s.text.trim();
    if let Some(o) = t.strip_prefix("0o") {
        return u32::from_str_radix(o, 8).ok();
    }
    if t.len() > 1 && t.starts_with('0') {
        return u32::from_str_radix(&t[1..], 8).ok();
    }
    t.parse().ok()
}

pub(crate) fn convert(mut model: Node, input: Input) -> Result<Project, LoadErrors> {
    let mut cx = Cx {
        mode: input.mode,
        errors: input.errors,
        warnings: input.warnings,
        project_dir: input.project_dir.clone(),
        env: input.environment.clone(),
    };
    cx.check_keys(&model, "", TOP_KEYS);
    if let Some(e) = model.get_entry("version") {
        let _ = e;
        cx.warnings
            .push("the top-level `version` key is obsolete and ignored".into());
    }
    if let Some(e) = model.get_entry("models") {
        let pos = e.key_pos.clone();
        cx.refuse(&pos, "models", "models");
    }

    // Profiles: which services are enabled.
    let mut active: BTreeSet<String> = input.profiles.iter().cloned().collect();
    let empty = Node::map(Vec::new(), model.pos.clone());
    let services_node = model.get("services").cloned().unwrap_or(empty);
    let svc_entries: Vec<Entry> = cx.map(&services_node, "services").to_vec();
    for wanted in &input.services {
        match svc_entries.iter().find(|e| &e.key == wanted) {
            Some(e) => {
                if let Some(p) = e.value.get("profiles") {
                    for prof in p.as_seq().unwrap_or(&[]) {
                        if let Some(s) = prof.as_scalar() {
                            active.insert(s.text.clone());
                        }
                    }
                }
            }
            None => cx.errors.push(LoadError::general(
                "",
                format!("no such service: {wanted:?}"),
            )),
        }
    }
    let all = active.contains("*");
    let mut enabled = Vec::new();
    let mut disabled = Vec::new();
    for e in &svc_entries {
        let profiles: Vec<String> = e
            .value
            .get("profiles")
            .and_then(Node::as_seq)
            .map(|s| {
                s.iter()
                    .filter_map(|p| p.as_scalar().map(|x| x.text.clone()))
                    .collect()
            })
            .unwrap_or_default();
        if profiles.is_empty() || all || profiles.iter().any(|p| active.contains(p)) {
            enabled.push(e.clone());
        } else {
            disabled.push(e.key.clone());
        }
    }
    // The model for `config` keeps only enabled services.
    if let Kind::Map(top) = &mut model.kind {
        if let Some(s) = top.iter_mut().find(|e| e.key == "services") {
            if let Kind::Map(m) = &mut s.value.kind {
                m.retain(|e| !disabled.contains(&e.key));
            }
        }
    }

    let mut spec = StackSpec {
        name: input.name.clone(),
        project_dir: input.project_dir.display().to_string(),
        compose_files: input
            .files
            .iter()
            .map(|f| f.display().to_string())
            .collect(),
        ..Default::default()
    };

    let networks = top_networks(&mut cx, model.get("networks"));
    let volumes = top_volumes(&mut cx, model.get("volumes"));
    let secrets: Vec<SecretSpec> = top_secrets(&mut cx, model.get("secrets"), "secrets");
    let configs: Vec<ConfigSpec> = top_secrets(&mut cx, model.get("configs"), "configs");
    let net_names: BTreeSet<String> = networks.iter().map(|n| n.name.clone()).collect();
    let vol_names: BTreeSet<String> = volumes.iter().map(|n| n.name.clone()).collect();
    let secret_names: BTreeSet<String> = secrets.iter().map(|n| n.name.clone()).collect();
    let config_names: BTreeSet<String> = configs.iter().map(|n| n.name.clone()).collect();
    let all_services: BTreeSet<String> = svc_entries.iter().map(|e| e.key.clone()).collect();
    let enabled_names: BTreeSet<String> = enabled.iter().map(|e| e.key.clone()).collect();

    let mut uses_default = false;
    // Positions of each service's depends_on entries, for cycle messages.
    let mut dep_pos: BTreeMap<String, Pos> = BTreeMap::new();
    for e in &enabled {
        let path = format!("services.{}", e.key);
        let refs = Refs {
            networks: &net_names,
            volumes: &vol_names,
            secrets: &secret_names,
            configs: &config_names,
            services: &all_services,
            enabled: &enabled_names,
        };
        if let Some(d) = e.value.get_entry("depends_on") {
            dep_pos.insert(e.key.clone(), d.key_pos.clone());
        }
        let svc = service(&mut cx, e, &path, &refs);
        if svc.network_mode.is_empty() && svc.networks.iter().any(|n| n.network == "default") {
            uses_default = true;
        }
        spec.services.push(svc);
    }

    spec.networks = networks;
    if uses_default && !spec.networks.iter().any(|n| n.name == "default") {
        spec.networks.push(NetworkSpec {
            name: "default".into(),
            ..Default::default()
        });
    }
    spec.volumes = volumes;
    spec.secrets = secrets;
    spec.configs = configs;

    if let Some(cycle) = crate::graph::cycle_ignoring_unknown(&spec) {
        let pos = dep_pos.get(&cycle[0]).cloned().unwrap_or_else(Pos::none);
        cx.err(
            &pos,
            &format!("services.{}.depends_on", cycle[0]),
            format!("dependency cycle: {}", cycle.join(" -> ")),
        );
    }

    if !cx.errors.is_empty() {
        return Err(LoadErrors(cx.errors));
    }
    Ok(Project {
        name: input.name,
        working_dir: input.project_dir,
        files: input.files,
        spec,
        model,
        environment: input.environment,
        disabled_services: disabled,
        warnings: cx.warnings,
    })
}

struct Refs<'a> {
    networks: &'a BTreeSet<String>,
    volumes: &'a BTreeSet<String>,
    secrets: &'a BTreeSet<String>,
    configs: &'a BTreeSet<String>,
    services: &'a BTreeSet<String>,
    enabled: &'a BTreeSet<String>,
}

fn service(cx: &mut Cx, entry: &Entry, path: &str, refs: &Refs) -> ServiceSpec {
    let mut s = ServiceSpec {
        name: entry.key.clone(),
        source: Some(SourceRef {
            file: entry.key_pos.file.to_string(),
            line: entry.key_pos.line,
            column: entry.key_pos.column,
        }),
        restart_policy: Some(RestartPolicy::default()),
        resources: Some(Resources::default()),
        ..Default::default()
    };
    let n = &entry.value;
    let fields = cx.map(n, path).to_vec();
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    let mut environment_node = None;
    let mut has_image = false;
    let mut build_pos = None;
    let mut networks_node = None;
    let mut deploy_restart = false;
    let mut restart_set = false;
    let mut scale = None;
    for f in &fields {
        let key = f.key.as_str();
        let p = path_join(path, key);
        let v = &f.value;
        if key.starts_with("x-") {
            continue;
        }
        if SERVICE_REFUSED.contains(&key) {
            if key == "build" {
                build_pos = Some(f.key_pos.clone());
            } else {
                cx.refuse(&f.key_pos, &p, key);
            }
            continue;
        }
        if !SERVICE_SUPPORTED.contains(&key) {
            cx.err(&f.key_pos, &p, format!("unknown key {key:?}"));
            continue;
        }
        match key {
            "image" => {
                if let Some(i) = cx.string(v, &p) {
                    s.image = i;
                    has_image = true;
                }
            }
            "command" => s.command = cx.command(v, &p),
            "entrypoint" => s.entrypoint = cx.command(v, &p),
            "environment" => environment_node = Some((v.clone(), p)),
            "env_file" => env_files(cx, v, &p, &mut env),
            "working_dir" => s.working_dir = cx.string(v, &p).unwrap_or_default(),
            "user" => s.user = cx.string(v, &p).unwrap_or_default(),
            "hostname" => s.hostname = cx.string(v, &p).unwrap_or_default(),
            "domainname" => s.domainname = cx.string(v, &p).unwrap_or_default(),
            "container_name" => s.container_name = cx.string(v, &p).unwrap_or_default(),
            "stop_signal" => s.stop_signal = cx.string(v, &p).unwrap_or_default(),
            "stop_grace_period" => s.stop_grace_period_ms = cx.duration_ms(v, &p),
            "pull_policy" => {
                if let Some(pp) = cx.string(v, &p) {
                    const OK: &[&str] = &[
                        "always",
                        "never",
                        "missing",
                        "if_not_present",
                        "build",
                        "daily",
                        "weekly",
                    ];
                    if OK.contains(&pp.as_str()) || pp.starts_with("every_") {
                        s.pull_policy = pp;
                    } else {
                        cx.err(&v.pos, &p, format!("invalid pull_policy {pp:?}"));
                    }
                }
            }
            "platform" => s.platform = cx.string(v, &p).unwrap_or_default(),
            "ipc" => s.ipc = cx.string(v, &p).unwrap_or_default(),
            "pid" => s.pid = cx.string(v, &p).unwrap_or_default(),
            "cgroup_parent" => s.cgroup_parent = cx.string(v, &p).unwrap_or_default(),
            "network_mode" => s.network_mode = cx.string(v, &p).unwrap_or_default(),
            "init" => s.init = cx.bool(v, &p).unwrap_or_default(),
            "read_only" => s.read_only = cx.bool(v, &p).unwrap_or_default(),
            "privileged" => s.privileged = cx.bool(v, &p).unwrap_or_default(),
            "tty" => s.tty = cx.bool(v, &p).unwrap_or_default(),
            "stdin_open" => s.stdin_open = cx.bool(v, &p).unwrap_or_default(),
            "cap_add" => s.cap_add = cx.strings(v, &p, false),
            "cap_drop" => s.cap_drop = cx.strings(v, &p, false),
            "security_opt" => s.security_opt = cx.strings(v, &p, false),
            "dns" => s.dns = cx.strings(v, &p, true),
            "dns_search" => s.dns_search = cx.strings(v, &p, true),
            "dns_opt" => s.dns_opt = cx.strings(v, &p, false),
            "group_add" => s.group_add = cx.strings(v, &p, false),
            "profiles" => s.profiles = cx.strings(v, &p, false),
            "devices" => {
                for (i, d) in cx.map_or_seq(v, &p).iter().enumerate() {
                    let ip = format!("{p}[{i}]");
                    if d.as_map().is_some() {
                        // Long form, kept as Docker's SOURCE:TARGET[:PERMISSIONS].
                        cx.check_keys(d, &ip, &["source", "target", "permissions"]);
                        let part = |cx: &mut Cx, k: &str| {
                            d.get(k).and_then(|x| cx.string(x, &path_join(&ip, k)))
                        };
                        let Some(src) = part(cx, "source") else {
                            cx.err(&d.pos, &ip, "missing key \"source\"");
                            continue;
                        };
                        let tgt = part(cx, "target").unwrap_or_else(|| src.clone());
                        let mut dev = format!("{src}:{tgt}");
                        if let Some(perm) = part(cx, "permissions") {
                            dev = format!("{dev}:{perm}");
                        }
                        s.devices.push(dev);
                    } else if let Some(t) = cx.string(d, &ip) {
                        s.devices.push(t);
                    }
                }
            }
            "expose" => {
                for (i, d) in cx.map_or_seq(v, &p).iter().enumerate() {
                    if let Some(t) = cx.string(d, &format!("{p}[{i}]")) {
                        s.expose.push(t);
                    }
                }
            }
            "labels" => s.labels = cx.string_map(v, &p),
            "annotations" => s.annotations = cx.string_map(v, &p),
            "sysctls" => s.sysctls = cx.string_map(v, &p),
            "storage_opt" => s.storage_opt = cx.string_map(v, &p),
            "extra_hosts" => {
                for (k, val, pos) in cx.list_or_dict(v, &p, &['=', ':']) {
                    match val {
                        Some(ip) => s.extra_hosts.push(format!("{k}:{ip}")),
                        None => cx.err(
                            &pos,
                            &p,
                            format!("extra host {k:?} needs an address (HOST:IP)"),
                        ),
                    }
                }
            }
            "ulimits" => s.ulimits = ulimits(cx, v, &p),
            "healthcheck" => s.healthcheck = healthcheck(cx, v, &p),
            "restart" => {
                restart_set = true;
                if let Some(r) = cx.string(v, &p) {
                    match parse_restart(&r) {
                        Some(rp) => s.restart_policy = Some(rp),
                        None => cx.err(&v.pos, &p, format!("invalid restart policy {r:?} (expected no, always, on-failure[:N] or unless-stopped)")),
                    }
                }
            }
            "depends_on" => s.depends_on = depends_on(cx, v, &p, refs),
            "ports" => {
                for (i, it) in cx.map_or_seq(v, &p).iter().enumerate() {
                    ports(cx, it, &format!("{p}[{i}]"), &mut s.ports);
                }
            }
            "volumes" => {
                for (i, it) in cx.map_or_seq(v, &p).iter().enumerate() {
                    if let Some(m) = volume_mount(cx, it, &format!("{p}[{i}]"), refs) {
                        s.mounts.push(m);
                    }
                }
            }
            "tmpfs" => {
                for (i, t) in cx.strings(v, &p, true).into_iter().enumerate() {
                    let ip = format!("{p}[{i}]");
                    match tmpfs_mount(&t) {
                        Ok(m) => s.mounts.push(m),
                        Err(msg) => cx.err(&v.pos, &ip, msg),
                    }
                }
            }
            "networks" => networks_node = Some((v.clone(), p, f.key_pos.clone())),
            "secrets" => {
                s.secrets = secret_refs(cx, v, &p, refs.secrets, "secret", "/run/secrets/")
            }
            "configs" => s.configs = secret_refs(cx, v, &p, refs.configs, "config", "/"),
            "logging" => {
                cx.check_keys(v, &p, &["driver", "options"]);
                let mut l = LoggingConfig::default();
                if let Some(d) = v.get("driver") {
                    l.driver = cx.string(d, &path_join(&p, "driver")).unwrap_or_default();
                }
                if let Some(o) = v.get("options") {
                    l.options = cx.string_map(o, &path_join(&p, "options"));
                }
                s.logging = Some(l);
            }
            "deploy" => {
                deploy_restart = v.get("restart_policy").is_some();
                deploy(cx, v, &p, &mut s);
            }
            "scale" => scale = cx.uint::<u32>(v, &p).map(|x| (x, v.pos.clone())),
            "mem_limit" => limits(&mut s).memory_bytes = cx.bytes(v, &p),
            "cpus" => limits(&mut s).nano_cpus = cx.float(v, &p),
            "pids_limit" => limits(&mut s).pids = cx.int(v, &p),
            "cpu_shares" => {
                s.resources.get_or_insert_with(Default::default).cpu_shares = cx.uint(v, &p)
            }
            "cpuset" => {
                s.resources.get_or_insert_with(Default::default).cpuset =
                    cx.string(v, &p).unwrap_or_default()
            }
            "mem_reservation" => {
                s.resources
                    .get_or_insert_with(Default::default)
                    .mem_reservation = cx.bytes(v, &p)
            }
            "memswap_limit" => {
                s.resources
                    .get_or_insert_with(Default::default)
                    .memswap_limit = cx.bytes(v, &p)
            }
            "shm_size" => {
                s.resources.get_or_insert_with(Default::default).shm_size = cx.bytes(v, &p)
            }
            "oom_score_adj" => {
                s.resources
                    .get_or_insert_with(Default::default)
                    .oom_score_adj = cx.int(v, &p).and_then(|x| i32::try_from(x).ok())
            }
            "blkio_config" => {
                cx.check_keys(
                    v,
                    &p,
                    &[
                        "weight",
                        "weight_device",
                        "device_read_bps",
                        "device_write_bps",
                        "device_read_iops",
                        "device_write_iops",
                    ],
                );
                for e in cx.map(v, &p).to_vec() {
                    let bp = path_join(&p, &e.key);
                    if e.key == "weight" {
                        s.resources
                            .get_or_insert_with(Default::default)
                            .blkio_weight = cx.uint(&e.value, &bp);
                    } else if !e.key.starts_with("x-") {
                        cx.refuse(&e.key_pos, &bp, &format!("blkio_config.{}", e.key));
                    }
                }
            }
            _ => cx.refuse(&f.key_pos, &p, key),
        }
    }

    if let Some(bp) = build_pos {
        if cx.mode == Mode::Deploy {
            cx.err(
                &bp,
                &path_join(path, "build"),
                if has_image {
                    "building images is not supported yet (remove `build:` to run the image as given)"
                } else {
                    "building images is not supported yet"
                },
            );
        }
    } else if !has_image && cx.mode == Mode::Deploy {
        cx.err(
            &entry.key_pos,
            path,
            "has neither an image nor a build section",
        );
    }

    if let Some((v, p)) = environment_node {
        for (k, val, _) in cx.list_or_dict(&v, &p, &['=']) {
            match val {
                Some(x) => {
                    env.insert(k, x);
                }
                None => {
                    // A bare name takes its value from the environment, or is left out.
                    match cx.env.get(&k) {
                        Some(x) => {
                            env.insert(k, x.clone());
                        }
                        None => {
                            env.remove(&k);
                        }
                    }
                }
            }
        }
    }
    s.environment = env.into_iter().collect();

    if restart_set && deploy_restart {
        cx.warnings.push(format!(
            "{path}: both `restart` and `deploy.restart_policy` are set; using deploy.restart_policy"
        ));
    }
    if let Some((n, pos)) = scale {
        match s.replicas {
            Some(r) if r != n => cx.err(
                &pos,
                &path_join(path, "scale"),
                format!("scale ({n}) and deploy.replicas ({r}) disagree"),
            ),
            _ => s.replicas = Some(n),
        }
    }

    match networks_node {
        Some((v, p, kpos)) => {
            if !s.network_mode.is_empty() {
                cx.err(&kpos, &p, "network_mode and networks cannot be combined");
            }
            s.networks = service_networks(cx, &v, &p, refs.networks);
        }
        None => {
            if s.network_mode.is_empty() {
                s.networks.push(NetworkAttachmentSpec {
                    network: "default".into(),
                    ..Default::default()
                });
            }
        }
    }
    if let Some(target) = s.network_mode.strip_prefix("service:") {
        if !refs.services.contains(target) {
            cx.err(
                &entry.key_pos,
                &path_join(path, "network_mode"),
                format!("unknown service {target:?}"),
            );
        } else if !s.depends_on.iter().any(|d| d.service == target) {
            // Compose: sharing a service's network namespace implies
            // depending on it (started, and restarted along with it).
            s.depends_on.push(Dependency {
                service: target.to_string(),
                condition: DependencyCondition::Started as i32,
                restart: true,
                required: true,
            });
        }
    }
    s
}

impl Cx {
    /// A sequence's items; a mapping or scalar is reported.
    fn map_or_seq(&mut self, n: &Node, path: &str) -> Vec<Node> {
        match &n.kind {
            Kind::Seq(s) => s.clone(),
            _ if n.is_null() => Vec::new(),
            _ => {
                self.err(
                    &n.pos,
                    path,
                    format!("must be a list, not {}", n.kind_name()),
                );
                Vec::new()
            }
        }
    }
}

fn limits(s: &mut ServiceSpec) -> &mut ResourceSet {
    s.resources
        .get_or_insert_with(Default::default)
        .limits
        .get_or_insert_with(Default::default)
}

fn parse_restart(r: &str) -> Option<RestartPolicy> {
    let mut p = RestartPolicy::default();
    match r {
        "no" | "" => p.condition = RestartCondition::None as i32,
        "always" => p.condition = RestartCondition::Any as i32,
        "unless-stopped" => p.condition = RestartCondition::UnlessStopped as i32,
        "on-failure" => p.condition = RestartCondition::OnFailure as i32,
        _ => {
            let n = r.strip_prefix("on-failure:")?;
            p.condition = RestartCondition::OnFailure as i32;
            p.max_attempts = Some(n.parse().ok()?);
        }
    }
    Some(p)
}

fn env_files(cx: &mut Cx, v: &Node, p: &str, env: &mut BTreeMap<String, String>) {
    let items: Vec<Node> = match &v.kind {
        Kind::Seq(s) => s.clone(),
        Kind::Scalar(_) => vec![v.clone()],
        _ => {
            cx.err(&v.pos, p, "must be a string or a list");
            return;
        }
    };
    for (i, it) in items.iter().enumerate() {
        let ip = format!("{p}[{i}]");
        let (file, required, pos) = match &it.kind {
            Kind::Map(_) => {
                cx.check_keys(it, &ip, &["path", "required", "format"]);
                let Some(pn) = it.get("path") else {
                    cx.err(&it.pos, &ip, "missing key \"path\"");
                    continue;
                };
                let req = match it.get("required") {
                    Some(r) => cx.bool(r, &path_join(&ip, "required")).unwrap_or(true),
                    None => true,
                };
                if let Some(f) = it.get("format") {
                    if f.as_scalar().map(|s| s.text.as_str()) != Some("raw") && !f.is_null() {
                        cx.refuse(&f.pos, &path_join(&ip, "format"), "env_file.format");
                    }
                }
                (cx.string(pn, &path_join(&ip, "path")), req, pn.pos.clone())
            }
            _ => (cx.string(it, &ip), true, it.pos.clone()),
        };
        let Some(file) = file else { continue };
        let full = cx.resolve_path(&file);
        let text = match std::fs::read_to_string(&full) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => continue,
            Err(e) => {
                cx.err(&pos, &ip, format!("reading env file {full}: {e}"));
                continue;
            }
        };
        let env_map = cx.env.clone();
        let look = |k: &str| env_map.get(k).cloned();
        match crate::dotenv::parse(&text, &look) {
            Ok(vars) => env.extend(vars),
            Err(e) => cx.err(&pos, &ip, format!("{full}:{}: {}", e.line, e.message)),
        }
    }
}

fn ulimits(cx: &mut Cx, v: &Node, p: &str) -> Vec<Ulimit> {
    let mut out = Vec::new();
    for e in cx.map(v, p).to_vec() {
        let up = path_join(p, &e.key);
        match &e.value.kind {
            Kind::Map(_) => {
                cx.check_keys(&e.value, &up, &["soft", "hard"]);
                let soft = e
                    .value
                    .get("soft")
                    .and_then(|n| cx.int(n, &path_join(&up, "soft")));
                let hard = e
                    .value
                    .get("hard")
                    .and_then(|n| cx.int(n, &path_join(&up, "hard")));
                match (soft, hard) {
                    (Some(soft), Some(hard)) => out.push(Ulimit {
                        name: e.key.clone(),
                        soft,
                        hard,
                    }),
                    _ => cx.err(&e.value.pos, &up, "needs both soft and hard"),
                }
            }
            _ => {
                if let Some(x) = cx.int(&e.value, &up) {
                    out.push(Ulimit {
                        name: e.key.clone(),
                        soft: x,
                        hard: x,
                    });
                }
            }
        }
    }
    out
}

fn healthcheck(cx: &mut Cx, v: &Node, p: &str) -> Option<HealthCheck> {
    cx.check_keys(
        v,
        p,
        &[
            "test",
            "interval",
            "timeout",
            "retries",
            "start_period",
            "start_interval",
            "disable",
        ],
    );
    let mut h = HealthCheck::default();
    for e in cx.map(v, p).to_vec() {
        let hp = path_join(p, &e.key);
        let n = &e.value;
        match e.key.as_str() {
            "test" => match &n.kind {
                Kind::Scalar(_) => {
                    if let Some(t) = cx.string(n, &hp) {
                        h.test = vec!["CMD-SHELL".into(), t];
                    }
                }
                _ => {
                    let t = cx.strings(n, &hp, false);
                    match t.first().map(String::as_str) {
                        Some("CMD" | "CMD-SHELL" | "NONE") => h.test = t,
                        _ => cx.err(
                            &n.pos,
                            &hp,
                            "a test list must start with \"CMD\", \"CMD-SHELL\" or \"NONE\"",
                        ),
                    }
                }
            },
            "interval" => h.interval_ms = cx.duration_ms(n, &hp),
            "timeout" => h.timeout_ms = cx.duration_ms(n, &hp),
            "start_period" => h.start_period_ms = cx.duration_ms(n, &hp),
            "start_interval" => h.start_interval_ms = cx.duration_ms(n, &hp),
            "retries" => h.retries = cx.uint(n, &hp),
            "disable" => h.disable = cx.bool(n, &hp).unwrap_or_default(),
            _ => {}
        }
    }
    if h.disable {
        h.test = vec!["NONE".into()];
    }
    if h.test.first().map(String::as_str) == Some("NONE") {
        h.disable = true;
    }
    Some(h)
}

fn depends_on(cx: &mut Cx, v: &Node, p: &str, refs: &Refs) -> Vec<Dependency> {
    let mut out = Vec::new();
    let check = |cx: &mut Cx, name: &str, pos: &Pos, required: bool| -> bool {
        if !refs.services.contains(name) {
            // Compose only warns about an optional dependency that is not there.
            if required {
                cx.err(pos, p, format!("unknown service {name:?}"));
            } else {
                cx.warnings.push(format!(
                    "{p}: optional dependency on unknown service {name:?} ignored"
                ));
            }
            return false;
        }
        if !refs.enabled.contains(name) {
            if required {
                cx.err(
                    pos,
                    p,
                    format!("service {name:?} is not enabled by the active profiles"),
                );
            }
            return false;
        }
        true
    };
    match &v.kind {
        Kind::Seq(items) => {
            for (i, it) in items.iter().enumerate() {
                let Some(name) = cx.string(it, &format!("{p}[{i}]")) else {
                    continue;
                };
                if check(cx, &name, &it.pos, true) {
                    out.push(Dependency {
                        service: name,
                        condition: DependencyCondition::Started as i32,
                        restart: false,
                        required: true,
                    });
                }
            }
        }
        Kind::Map(m) => {
            for e in m {
                let dp = path_join(p, &e.key);
                let mut d = Dependency {
                    service: e.key.clone(),
                    condition: DependencyCondition::Started as i32,
                    restart: false,
                    required: true,
                };
                if !e.value.is_null() {
                    cx.check_keys(&e.value, &dp, &["condition", "restart", "required"]);
                    for f in cx.map(&e.value, &dp).to_vec() {
                        let fp = path_join(&dp, &f.key);
                        match f.key.as_str() {
                            "condition" => match cx.string(&f.value, &fp).as_deref() {
                                Some("service_started") => d.condition = DependencyCondition::Started as i32,
                                Some("service_healthy") => d.condition = DependencyCondition::Healthy as i32,
                                Some("service_completed_successfully") => {
                                    d.condition = DependencyCondition::CompletedSuccessfully as i32
                                }
                                Some(o) => cx.err(&f.value.pos, &fp, format!("invalid condition {o:?} (expected service_started, service_healthy or service_completed_successfully)")),
                                None => {}
                            },
                            "restart" => d.restart = cx.bool(&f.value, &fp).unwrap_or_default(),
                            "required" => d.required = cx.bool(&f.value, &fp).unwrap_or(true),
                            _ => {}
                        }
                    }
                }
                if check(cx, &e.key, &e.key_pos, d.required) {
                    out.push(d);
                }
            }
        }
        _ if v.is_null() => {}
        _ => cx.err(
            &v.pos,
            p,
            format!("must be a list or a mapping, not {}", v.kind_name()),
        ),
    }
    out
}

fn protocol(cx: &mut Cx, s: &str, pos: &Pos, p: &str) -> i32 {
    match s.to_ascii_lowercase().as_str() {
        "" | "tcp" => Protocol::Tcp as i32,
        "udp" => Protocol::Udp as i32,
        "sctp" => Protocol::Sctp as i32,
        o => {
            cx.err(
                pos,
                p,
                format!("unknown protocol {o:?} (expected tcp, udp or sctp)"),
            );
            Protocol::Tcp as i32
        }
    }
}

fn port_range(s: &str) -> Option<(u32, u32)> {
    let (a, b) = match s.split_once('-') {
        Some((a, b)) => (a.parse().ok()?, b.parse().ok()?),
        None => {
            let x = s.parse().ok()?;
            (x, x)
        }
    };
    (a <= b && b <= 65535 && a > 0).then_some((a, b))
}

fn ports(cx: &mut Cx, it: &Node, p: &str, out: &mut Vec<PortConfig>) {
    match &it.kind {
        Kind::Map(_) => {
            cx.check_keys(
                it,
                p,
                &[
                    "name",
                    "mode",
                    "host_ip",
                    "target",
                    "published",
                    "protocol",
                    "app_protocol",
                ],
            );
            let mut pc = PortConfig::default();
            let mut published: Option<(u32, u32)> = None;
            for e in cx.map(it, p).to_vec() {
                let fp = path_join(p, &e.key);
                match e.key.as_str() {
                    "target" => pc.target = cx.uint(&e.value, &fp).unwrap_or_default(),
                    "published" => {
                        if let Some(t) = cx.string(&e.value, &fp) {
                            match port_range(&t) {
                                Some(r) => published = Some(r),
                                None => cx.err(
                                    &e.value.pos,
                                    &fp,
                                    format!("invalid published port {t:?}"),
                                ),
                            }
                        }
                    }
                    "host_ip" => pc.host_ip = cx.string(&e.value, &fp).unwrap_or_default(),
                    "protocol" => {
                        let t = cx.string(&e.value, &fp).unwrap_or_default();
                        pc.protocol = protocol(cx, &t, &e.value.pos, &fp);
                    }
                    "mode" => match cx.string(&e.value, &fp).as_deref() {
                        Some("host") => pc.mode = PublishMode::Host as i32,
                        Some("ingress") => pc.mode = PublishMode::Ingress as i32,
                        Some(o) => cx.err(
                            &e.value.pos,
                            &fp,
                            format!("invalid mode {o:?} (expected host or ingress)"),
                        ),
                        None => {}
                    },
                    "name" => pc.name = cx.string(&e.value, &fp).unwrap_or_default(),
                    "app_protocol" => {
                        pc.app_protocol = cx.string(&e.value, &fp).unwrap_or_default()
                    }
                    _ => {}
                }
            }
            if pc.target == 0 {
                // An unreadable target was reported where it is.
                if it.get("target").is_none() {
                    cx.err(&it.pos, p, "missing target port");
                }
                return;
            }
            match published {
                Some((a, b)) if a == b => pc.published = a,
                Some(_) => {
                    cx.refuse(&it.pos, p, "a published port range for one target port");
                    return;
                }
                None => pc.publish_random = true,
            }
            out.push(pc);
        }
        Kind::Scalar(_) => {
            let Some(text) = cx.string(it, p) else { return };
            match parse_short_port(&text) {
                Ok(v) => out.extend(v),
                Err(ShortPortError::Invalid(m)) => {
                    cx.err(&it.pos, p, format!("invalid port {text:?}: {m}"))
                }
                Err(ShortPortError::Unsupported(k)) => cx.refuse(&it.pos, p, &k),
            }
        }
        _ => cx.err(&it.pos, p, "must be a string, a number or a mapping"),
    }
}

enum ShortPortError {
    Invalid(String),
    Unsupported(String),
}

/// `[[IP:]PUBLISHED[-END]:]TARGET[-END][/PROTO]`; IPv6 host IPs in brackets.
fn parse_short_port(text: &str) -> Result<Vec<PortConfig>, ShortPortError> {
    let (body, proto) = match text.rsplit_once('/') {
        Some((b, pr)) => (b, pr),
        None => (text, "tcp"),
    };
    let protocol = match proto.to_ascii_lowercase().as_str() {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        "sctp" => Protocol::Sctp,
        o => return Err(ShortPortError::Invalid(format!("unknown protocol {o:?}"))),
    } as i32;
    let (host_ip, rest) = if let Some(r) = body.strip_prefix('[') {
        let (ip, after) = r
            .split_once(']')
            .ok_or_else(|| ShortPortError::Invalid("unclosed \"[\"".into()))?;
        let after = after.strip_prefix(':').ok_or_else(|| {
            ShortPortError::Invalid("expected \":\" after the IPv6 address".into())
        })?;
        (ip.to_string(), after)
    } else {
        let parts: Vec<&str> = body.split(':').collect();
        match parts.len() {
            1 | 2 => (String::new(), body),
            3 => (parts[0].to_string(), &body[parts[0].len() + 1..]),
            _ => return Err(ShortPortError::Invalid("too many \":\"".into())),
        }
    };
    let (published, target) = match rest.rsplit_once(':') {
        Some((pb, t)) => (Some(pb), t),
        None => (None, rest),
    };
    let (t0, t1) = port_range(target)
        .ok_or_else(|| ShortPortError::Invalid(format!("bad container port {target:?}")))?;
    let pubr = match published {
        Some("") | None => None,
        Some(pb) => Some(
            port_range(pb)
                .ok_or_else(|| ShortPortError::Invalid(format!("bad host port {pb:?}")))?,
        ),
    };
    let count = t1 - t0 + 1;
    let mut out = Vec::new();
    for i in 0..count {
        let mut pc = PortConfig {
            target: t0 + i,
            protocol,
            host_ip: host_ip.clone(),
            ..Default::default()
        };
        match pubr {
            None => pc.publish_random = true,
            Some((a, b)) if b - a + 1 == count => pc.published = a + i,
            Some((a, b)) if a == b => {
                return Err(ShortPortError::Invalid(format!(
                    "host port {a} cannot publish the container range {t0}-{t1}"
                )))
            }
            Some(_) if count == 1 => {
                return Err(ShortPortError::Unsupported(
                    "a published port range for one target port".into(),
                ))
            }
            Some(_) => {
                return Err(ShortPortError::Invalid(
                    "host and container port ranges differ in length".into(),
                ))
            }
        }
        out.push(pc);
    }
    Ok(out)
}

fn volume_mount(cx: &mut Cx, it: &Node, p: &str, refs: &Refs) -> Option<Mount> {
    match &it.kind {
        Kind::Scalar(_) => {
            let text = cx.string(it, p)?;
            let parts: Vec<&str> = text.split(':').collect();
            let mut m = Mount::default();
            let (src, tgt, opts) = match parts.as_slice() {
                [t] => ("", *t, ""),
                [s, t] => (*s, *t, ""),
                [s, t, o] => (*s, *t, *o),
                _ => {
                    cx.err(&it.pos, p, format!("invalid volume {text:?}"));
                    return None;
                }
            };
            if !tgt.starts_with('/') {
                cx.err(
                    &it.pos,
                    p,
                    format!("invalid volume {text:?}: the container path must be absolute"),
                );
                return None;
            }
            m.target = tgt.to_string();
            if src.is_empty() {
                m.r#type = MountType::Volume as i32;
            } else if src.starts_with('/') || src.starts_with('.') || src.starts_with('~') {
                m.r#type = MountType::Bind as i32;
                m.source = cx.resolve_path(src);
                m.create_host_path = true;
            } else {
                m.r#type = MountType::Volume as i32;
                if !refs.volumes.contains(src) {
                    cx.err(
                        &it.pos,
                        p,
                        format!(
                            "undefined volume {src:?} (declare it under the top-level volumes:)"
                        ),
                    );
                }
                m.source = src.to_string();
            }
            for o in opts.split(',').filter(|o| !o.is_empty()) {
                match o {
                    "ro" => m.read_only = true,
                    "rw" => m.read_only = false,
                    "z" | "Z" => m.selinux = o.to_string(),
                    "nocopy" => m.nocopy = true,
                    "shared" | "rshared" | "slave" | "rslave" | "private" | "rprivate" => {
                        m.propagation = o.to_string()
                    }
                    "cached" | "delegated" | "consistent" => {}
                    _ => cx.err(&it.pos, p, format!("unknown volume option {o:?}")),
                }
            }
            Some(m)
        }
        Kind::Map(_) => {
            cx.check_keys(
                it,
                p,
                &[
                    "type",
                    "source",
                    "target",
                    "read_only",
                    "consistency",
                    "bind",
                    "volume",
                    "tmpfs",
                    "image",
                ],
            );
            let mut m = Mount::default();
            let ty = it
                .get("type")
                .and_then(|t| cx.string(t, &path_join(p, "type")));
            match ty.as_deref() {
                Some("bind") => m.r#type = MountType::Bind as i32,
                Some("volume") => m.r#type = MountType::Volume as i32,
                Some("tmpfs") => m.r#type = MountType::Tmpfs as i32,
                Some(o @ ("npipe" | "cluster" | "image")) => {
                    cx.refuse(&it.pos, &path_join(p, "type"), &format!("volume type {o}"));
                    return None;
                }
                Some(o) => {
                    cx.err(
                        &it.pos,
                        &path_join(p, "type"),
                        format!("unknown volume type {o:?}"),
                    );
                    return None;
                }
                None => {
                    cx.err(&it.pos, p, "missing key \"type\"");
                    return None;
                }
            }
            match it.get("target") {
                Some(t) => m.target = cx.string(t, &path_join(p, "target")).unwrap_or_default(),
                None => cx.err(&it.pos, p, "missing key \"target\""),
            }
            if let Some(sn) = it.get("source") {
                let src = cx.string(sn, &path_join(p, "source")).unwrap_or_default();
                if m.r#type == MountType::Bind as i32 {
                    m.source = cx.resolve_path(&src);
                } else if m.r#type == MountType::Volume as i32 {
                    if !refs.volumes.contains(&src) {
                        cx.err(&sn.pos, &path_join(p, "source"), format!("undefined volume {src:?} (declare it under the top-level volumes:)"));
                    }
                    m.source = src;
                }
            } else if m.r#type == MountType::Bind as i32 {
                cx.err(&it.pos, p, "a bind mount needs a source");
            }
            if let Some(r) = it.get("read_only") {
                m.read_only = cx.bool(r, &path_join(p, "read_only")).unwrap_or_default();
            }
            if let Some(b) = it.get("bind") {
                let bp = path_join(p, "bind");
                cx.check_keys(
                    b,
                    &bp,
                    &["propagation", "create_host_path", "selinux", "recursive"],
                );
                if let Some(x) = b.get("propagation") {
                    m.propagation = cx
                        .string(x, &path_join(&bp, "propagation"))
                        .unwrap_or_default();
                }
                if let Some(x) = b.get("create_host_path") {
                    m.create_host_path = cx
                        .bool(x, &path_join(&bp, "create_host_path"))
                        .unwrap_or_default();
                }
                if let Some(x) = b.get("selinux") {
                    m.selinux = cx.string(x, &path_join(&bp, "selinux")).unwrap_or_default();
                }
                if let Some(e) = b.get_entry("recursive") {
                    cx.refuse(&e.key_pos, &path_join(&bp, "recursive"), "bind.recursive");
                }
            }
            if let Some(b) = it.get("volume") {
                let vp = path_join(p, "volume");
                cx.check_keys(b, &vp, &["nocopy", "subpath", "labels"]);
                if let Some(x) = b.get("nocopy") {
                    m.nocopy = cx.bool(x, &path_join(&vp, "nocopy")).unwrap_or_default();
                }
                if let Some(x) = b.get("subpath") {
                    m.subpath = cx.string(x, &path_join(&vp, "subpath")).unwrap_or_default();
                }
                if let Some(e) = b.get_entry("labels") {
                    cx.refuse(&e.key_pos, &path_join(&vp, "labels"), "volume.labels");
                }
            }
            if let Some(b) = it.get("tmpfs") {
                let tp = path_join(p, "tmpfs");
                cx.check_keys(b, &tp, &["size", "mode"]);
                if let Some(x) = b.get("size") {
                    m.tmpfs_size = cx
                        .bytes(x, &path_join(&tp, "size"))
                        .and_then(|v| u64::try_from(v).ok());
                }
                if let Some(x) = b.get("mode") {
                    m.tmpfs_mode = parse_mode(x);
                    if m.tmpfs_mode.is_none() {
                        cx.err(&x.pos, &path_join(&tp, "mode"), "invalid file mode");
                    }
                }
            }
            if let Some(e) = it.get_entry("image") {
                cx.refuse(&e.key_pos, &path_join(p, "image"), "volume type image");
            }
            Some(m)
        }
        _ => {
            cx.err(&it.pos, p, "must be a string or a mapping");
            None
        }
    }
}

fn tmpfs_mount(t: &str) -> Result<Mount, String> {
    let (target, opts) = t.split_once(':').unwrap_or((t, ""));
    if !target.starts_with('/') {
        return Err(format!("invalid tmpfs {t:?}: the path must be absolute"));
    }
    let mut m = Mount {
        r#type: MountType::Tmpfs as i32,
        target: target.to_string(),
        ..Default::default()
    };
    for o in opts.split(',').filter(|o| !o.is_empty()) {
        if let Some(sz) = o.strip_prefix("size=") {
            m.tmpfs_size = Some(
                parse_bytes(sz)
                    .and_then(|v| u64::try_from(v).ok())
                    .ok_or(format!("invalid tmpfs size {sz:?}"))?,
            );
        } else if let Some(md) = o.strip_prefix("mode=") {
            m.tmpfs_mode =
                Some(u32::from_str_radix(md, 8).map_err(|_| format!("invalid tmpfs mode {md:?}"))?);
        } else if o == "ro" {
            m.read_only = true;
        } else if o == "rw" {
        } else {
            return Err(format!("not supported yet: tmpfs option {o:?}"));
        }
    }
    Ok(m)
}

fn service_networks(
    cx: &mut Cx,
    v: &Node,
    p: &str,
    defined: &BTreeSet<String>,
) -> Vec<NetworkAttachmentSpec> {
    let mut out = Vec::new();
    let add = |cx: &mut Cx, name: &str, pos: &Pos| -> bool {
        if name != "default" && !defined.contains(name) {
            cx.err(
                pos,
                p,
                format!("undefined network {name:?} (declare it under the top-level networks:)"),
            );
            return false;
        }
        true
    };
    match &v.kind {
        Kind::Seq(items) => {
            for (i, it) in items.iter().enumerate() {
                if let Some(name) = cx.string(it, &format!("{p}[{i}]")) {
                    if add(cx, &name, &it.pos) {
                        out.push(NetworkAttachmentSpec {
                            network: name,
                            ..Default::default()
                        });
                    }
                }
            }
        }
        Kind::Map(m) => {
            for e in m {
                let np = path_join(p, &e.key);
                let mut a = NetworkAttachmentSpec {
                    network: e.key.clone(),
                    ..Default::default()
                };
                if !e.value.is_null() {
                    cx.check_keys(
                        &e.value,
                        &np,
                        &[
                            "aliases",
                            "ipv4_address",
                            "ipv6_address",
                            "link_local_ips",
                            "mac_address",
                            "driver_opts",
                            "priority",
                            "gw_priority",
                            "interface_name",
                        ],
                    );
                    for f in cx.map(&e.value, &np).to_vec() {
                        let fp = path_join(&np, &f.key);
                        match f.key.as_str() {
                            "aliases" => a.aliases = cx.strings(&f.value, &fp, false),
                            "ipv4_address" => {
                                a.ipv4_address = cx.string(&f.value, &fp).unwrap_or_default()
                            }
                            "ipv6_address" => {
                                a.ipv6_address = cx.string(&f.value, &fp).unwrap_or_default()
                            }
                            "mac_address" => {
                                a.mac_address = cx.string(&f.value, &fp).unwrap_or_default()
                            }
                            "priority" => {
                                a.priority = cx
                                    .int(&f.value, &fp)
                                    .and_then(|x| i32::try_from(x).ok())
                                    .unwrap_or_default()
                            }
                            k if k.starts_with("x-") => {}
                            k => cx.refuse(&f.key_pos, &fp, &format!("networks.{k}")),
                        }
                    }
                }
                if add(cx, &e.key, &e.key_pos) {
                    out.push(a);
                }
            }
        }
        _ if v.is_null() => {}
        _ => cx.err(
            &v.pos,
            p,
            format!("must be a list or a mapping, not {}", v.kind_name()),
        ),
    }
    out
}

fn secret_refs(
    cx: &mut Cx,
    v: &Node,
    p: &str,
    defined: &BTreeSet<String>,
    what: &str,
    prefix: &str,
) -> Vec<ServiceSecretRef> {
    let mut out = Vec::new();
    for (i, it) in cx.map_or_seq(v, p).iter().enumerate() {
        let ip = format!("{p}[{i}]");
        let mut r = ServiceSecretRef::default();
        let src_pos;
        match &it.kind {
            Kind::Map(_) => {
                cx.check_keys(it, &ip, &["source", "target", "uid", "gid", "mode"]);
                let Some(sn) = it.get("source") else {
                    cx.err(&it.pos, &ip, "missing key \"source\"");
                    continue;
                };
                src_pos = sn.pos.clone();
                r.source = cx.string(sn, &path_join(&ip, "source")).unwrap_or_default();
                if let Some(t) = it.get("target") {
                    r.target = cx.string(t, &path_join(&ip, "target")).unwrap_or_default();
                }
                if let Some(t) = it.get("uid") {
                    r.uid = cx.string(t, &path_join(&ip, "uid")).unwrap_or_default();
                }
                if let Some(t) = it.get("gid") {
                    r.gid = cx.string(t, &path_join(&ip, "gid")).unwrap_or_default();
                }
                if let Some(t) = it.get("mode") {
                    r.mode = parse_mode(t);
                    if r.mode.is_none() {
                        cx.err(&t.pos, &path_join(&ip, "mode"), "invalid file mode");
                    }
                }
            }
            _ => {
                src_pos = it.pos.clone();
                r.source = cx.string(it, &ip).unwrap_or_default();
            }
        }
        if !defined.contains(&r.source) {
            cx.err(
                &src_pos,
                &ip,
                format!(
                    "undefined {what} {:?} (declare it under the top-level {what}s:)",
                    r.source
                ),
            );
            continue;
        }
        if r.target.is_empty() {
            r.target = format!("{prefix}{}", r.source);
        } else if !r.target.starts_with('/') && what == "secret" {
            r.target = format!("{prefix}{}", r.target);
        }
        out.push(r);
    }
    out
}

fn deploy(cx: &mut Cx, v: &Node, p: &str, s: &mut ServiceSpec) {
    for e in cx.map(v, p).to_vec() {
        let dp = path_join(p, &e.key);
        let n = &e.value;
        match e.key.as_str() {
            "mode" => match cx.string(n, &dp).as_deref() {
                Some("replicated") => s.mode = ServiceMode::Replicated as i32,
                Some("global") => s.mode = ServiceMode::Global as i32,
                Some("replicated-job") => s.mode = ServiceMode::Job as i32,
                Some("global-job") => cx.refuse(&n.pos, &dp, "deploy.mode global-job"),
                Some(o) => cx.err(&n.pos, &dp, format!("invalid mode {o:?}")),
                None => {}
            },
            "replicas" => s.replicas = cx.uint(n, &dp),
            "endpoint_mode" => s.endpoint_mode = cx.string(n, &dp).unwrap_or_default(),
            "resources" => {
                cx.check_keys(n, &dp, &["limits", "reservations"]);
                let r = s.resources.get_or_insert_with(Default::default);
                let mut res = r.clone();
                if let Some(l) = n.get("limits") {
                    let lp = path_join(&dp, "limits");
                    let mut set = res.limits.take().unwrap_or_default();
                    resource_set(cx, l, &lp, &mut set);
                    res.limits = Some(set);
                }
                if let Some(l) = n.get("reservations") {
                    let lp = path_join(&dp, "reservations");
                    let mut set = res.reservations.take().unwrap_or_default();
                    resource_set(cx, l, &lp, &mut set);
                    res.reservations = Some(set);
                }
                *s.resources.get_or_insert_with(Default::default) = res;
            }
            "restart_policy" => {
                cx.check_keys(n, &dp, &["condition", "delay", "max_attempts", "window"]);
                let mut rp = RestartPolicy {
                    condition: RestartCondition::Any as i32,
                    ..Default::default()
                };
                for f in cx.map(n, &dp).to_vec() {
                    let fp = path_join(&dp, &f.key);
                    match f.key.as_str() {
                        "condition" => match cx.string(&f.value, &fp).as_deref() {
                            Some("none") => rp.condition = RestartCondition::None as i32,
                            Some("on-failure") => rp.condition = RestartCondition::OnFailure as i32,
                            Some("any") => rp.condition = RestartCondition::Any as i32,
                            Some(o) => cx.err(
                                &f.value.pos,
                                &fp,
                                format!(
                                    "invalid condition {o:?} (expected none, on-failure or any)"
                                ),
                            ),
                            None => {}
                        },
                        "delay" => rp.delay_ms = cx.duration_ms(&f.value, &fp),
                        "window" => rp.window_ms = cx.duration_ms(&f.value, &fp),
                        "max_attempts" => rp.max_attempts = cx.uint(&f.value, &fp),
                        _ => {}
                    }
                }
                s.restart_policy = Some(rp);
            }
            "placement" => {
                cx.check_keys(
                    n,
                    &dp,
                    &["constraints", "preferences", "max_replicas_per_node"],
                );
                let mut pl = Placement::default();
                if let Some(c) = n.get("constraints") {
                    pl.constraints = cx.strings(c, &path_join(&dp, "constraints"), false);
                }
                if let Some(c) = n.get("preferences") {
                    let pp = path_join(&dp, "preferences");
                    for (i, it) in cx.map_or_seq(c, &pp).iter().enumerate() {
                        let ip = format!("{pp}[{i}]");
                        cx.check_keys(it, &ip, &["spread"]);
                        if let Some(sp) = it
                            .get("spread")
                            .and_then(|x| cx.string(x, &path_join(&ip, "spread")))
                        {
                            pl.preferences.push(format!("spread={sp}"));
                        }
                    }
                }
                if let Some(c) = n.get("max_replicas_per_node") {
                    pl.max_replicas_per_node = cx.uint(c, &path_join(&dp, "max_replicas_per_node"));
                }
                // `placement: {}` (as `config` prints it) places nothing.
                if pl != Placement::default() {
                    s.placement = Some(pl);
                }
            }
            "update_config" => s.update_config = Some(update_config(cx, n, &dp)),
            "rollback_config" => s.rollback_config = Some(update_config(cx, n, &dp)),
            "labels" => cx.refuse(&e.key_pos, &dp, "deploy.labels"),
            k if k.starts_with("x-") => {}
            k => cx.err(&e.key_pos, &dp, format!("unknown key {k:?}")),
        }
    }
}

fn resource_set(cx: &mut Cx, n: &Node, p: &str, set: &mut ResourceSet) {
    for f in cx.map(n, p).to_vec() {
        let fp = path_join(p, &f.key);
        match f.key.as_str() {
            "cpus" => set.nano_cpus = cx.float(&f.value, &fp),
            "memory" => set.memory_bytes = cx.bytes(&f.value, &fp),
            "pids" => set.pids = cx.int(&f.value, &fp),
            "generic_resources" => {
                for (i, g) in cx.map_or_seq(&f.value, &fp).iter().enumerate() {
                    let gp = format!("{fp}[{i}]");
                    if let Some(d) = g.get("discrete_resource_spec") {
                        let kind = d.get("kind").and_then(|k| {
                            cx.string(k, &path_join(&gp, "discrete_resource_spec.kind"))
                        });
                        let value = d.get("value").and_then(|k| {
                            cx.int(k, &path_join(&gp, "discrete_resource_spec.value"))
                        });
                        if let (Some(kind), Some(value)) = (kind, value) {
                            set.generic.push(GenericResource { kind, value });
                        }
                    } else {
                        cx.refuse(
                            &g.pos,
                            &gp,
                            "generic_resources other than discrete_resource_spec",
                        );
                    }
                }
            }
            "devices" => cx.refuse(&f.key_pos, &fp, "deploy.resources.*.devices"),
            k if k.starts_with("x-") => {}
            k => cx.err(&f.key_pos, &fp, format!("unknown key {k:?}")),
        }
    }
}

fn update_config(cx: &mut Cx, n: &Node, p: &str) -> UpdateConfig {
    cx.check_keys(
        n,
        p,
        &[
            "parallelism",
            "delay",
            "failure_action",
            "monitor",
            "max_failure_ratio",
            "order",
        ],
    );
    let mut u = UpdateConfig::default();
    for f in cx.map(n, p).to_vec() {
        let fp = path_join(p, &f.key);
        match f.key.as_str() {
            "parallelism" => u.parallelism = cx.uint(&f.value, &fp).unwrap_or_default(),
            "delay" => u.delay_ms = cx.duration_ms(&f.value, &fp).unwrap_or_default(),
            "monitor" => u.monitor_ms = cx.duration_ms(&f.value, &fp).unwrap_or_default(),
            "failure_action" => u.failure_action = cx.string(&f.value, &fp).unwrap_or_default(),
            "max_failure_ratio" => {
                u.max_failure_ratio = cx.float(&f.value, &fp).unwrap_or_default()
            }
            "order" => match cx.string(&f.value, &fp).as_deref() {
                Some(o @ ("stop-first" | "start-first")) => u.order = o.to_string(),
                Some(o) => cx.err(
                    &f.value.pos,
                    &fp,
                    format!("invalid order {o:?} (expected stop-first or start-first)"),
                ),
                None => {}
            },
            _ => {}
        }
    }
    u
}

/// `external: true` or the legacy `external: {name: X}`; returns (external, name).
fn external(cx: &mut Cx, n: &Node, p: &str) -> (bool, Option<String>) {
    match &n.kind {
        Kind::Map(_) => {
            cx.warnings
                .push(format!("{p}: `external.name` is deprecated; use `name:`"));
            let name = n
                .get("name")
                .and_then(|x| cx.string(x, &path_join(p, "name")));
            (true, name)
        }
        _ => (cx.bool(n, p).unwrap_or_default(), None),
    }
}

fn top_networks(cx: &mut Cx, n: Option<&Node>) -> Vec<NetworkSpec> {
    let Some(n) = n else { return Vec::new() };
    let mut out = Vec::new();
    for e in cx.map(n, "networks").to_vec() {
        let p = format!("networks.{}", e.key);
        let mut ns = NetworkSpec {
            name: e.key.clone(),
            ..Default::default()
        };
        if !e.value.is_null() {
            cx.check_keys(
                &e.value,
                &p,
                &[
                    "attachable",
                    "driver",
                    "driver_opts",
                    "enable_ipv4",
                    "enable_ipv6",
                    "external",
                    "internal",
                    "ipam",
                    "labels",
                    "name",
                ],
            );
            for f in cx.map(&e.value, &p).to_vec() {
                let fp = path_join(&p, &f.key);
                let v = &f.value;
                match f.key.as_str() {
                    "driver" => ns.driver = cx.string(v, &fp).unwrap_or_default(),
                    "driver_opts" => ns.driver_opts = cx.string_map(v, &fp),
                    "attachable" => ns.attachable = cx.bool(v, &fp).unwrap_or_default(),
                    "internal" => ns.internal = cx.bool(v, &fp).unwrap_or_default(),
                    "enable_ipv6" => ns.enable_ipv6 = cx.bool(v, &fp).unwrap_or_default(),
                    "enable_ipv4" if cx.bool(v, &fp) == Some(false) => {
                        cx.refuse(&f.key_pos, &fp, "enable_ipv4: false");
                    }
                    "labels" => ns.labels = cx.string_map(v, &fp),
                    "name" => ns.external_name = cx.string(v, &fp).unwrap_or_default(),
                    "external" => {
                        let (ext, name) = external(cx, v, &fp);
                        ns.external = ext;
                        if let Some(nm) = name {
                            ns.external_name = nm;
                        }
                    }
                    "ipam" => {
                        cx.check_keys(v, &fp, &["driver", "config", "options"]);
                        if let Some(d) = v.get_entry("driver") {
                            if d.value.as_scalar().map(|s| s.text.as_str()) != Some("default") {
                                cx.refuse(&d.key_pos, &path_join(&fp, "driver"), "ipam.driver");
                            }
                        }
                        if let Some(d) = v.get_entry("options") {
                            cx.refuse(&d.key_pos, &path_join(&fp, "options"), "ipam.options");
                        }
                        if let Some(c) = v.get("config") {
                            let cp = path_join(&fp, "config");
                            for (i, it) in cx.map_or_seq(c, &cp).iter().enumerate() {
                                let ip = format!("{cp}[{i}]");
                                cx.check_keys(
                                    it,
                                    &ip,
                                    &["subnet", "ip_range", "gateway", "aux_addresses"],
                                );
                                let mut pool = IpamPool::default();
                                for g in cx.map(it, &ip).to_vec() {
                                    let gp = path_join(&ip, &g.key);
                                    match g.key.as_str() {
                                        "subnet" => {
                                            pool.subnet =
                                                cx.string(&g.value, &gp).unwrap_or_default()
                                        }
                                        "ip_range" => {
                                            pool.ip_range =
                                                cx.string(&g.value, &gp).unwrap_or_default()
                                        }
                                        "gateway" => {
                                            pool.gateway =
                                                cx.string(&g.value, &gp).unwrap_or_default()
                                        }
                                        "aux_addresses" => {
                                            pool.aux_addresses = cx.string_map(&g.value, &gp)
                                        }
                                        _ => {}
                                    }
                                }
                                ns.ipam.push(pool);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        if ns.external && ns.external_name.is_empty() {
            ns.external_name = e.key.clone();
        }
        out.push(ns);
    }
    out
}

fn top_volumes(cx: &mut Cx, n: Option<&Node>) -> Vec<VolumeSpec> {
    let Some(n) = n else { return Vec::new() };
    let mut out = Vec::new();
    for e in cx.map(n, "volumes").to_vec() {
        let p = format!("volumes.{}", e.key);
        let mut vs = VolumeSpec {
            name: e.key.clone(),
            ..Default::default()
        };
        if !e.value.is_null() {
            cx.check_keys(
                &e.value,
                &p,
                &["driver", "driver_opts", "external", "labels", "name"],
            );
            for f in cx.map(&e.value, &p).to_vec() {
                let fp = path_join(&p, &f.key);
                let v = &f.value;
                match f.key.as_str() {
                    "driver" => vs.driver = cx.string(v, &fp).unwrap_or_default(),
                    "driver_opts" => vs.driver_opts = cx.string_map(v, &fp),
                    "labels" => vs.labels = cx.string_map(v, &fp),
                    "name" => vs.external_name = cx.string(v, &fp).unwrap_or_default(),
                    "external" => {
                        let (ext, name) = external(cx, v, &fp);
                        vs.external = ext;
                        if let Some(nm) = name {
                            vs.external_name = nm;
                        }
                    }
                    _ => {}
                }
            }
        }
        if vs.external && vs.external_name.is_empty() {
            vs.external_name = e.key.clone();
        }
        out.push(vs);
    }
    out
}

/// Top-level secrets or configs (both become SecretSpec-like entries; configs
/// are converted to ConfigSpec by the caller through `top_configs`).
fn top_secrets<T: SecretLike>(cx: &mut Cx, n: Option<&Node>, section: &str) -> Vec<T> {
    let Some(n) = n else { return Vec::new() };
    let mut out = Vec::new();
    for e in cx.map(n, section).to_vec() {
        let p = format!("{section}.{}", e.key);
        let mut file = String::new();
        let mut envv = String::new();
        let mut content: Option<String> = None;
        let mut ext = false;
        let mut ext_name = String::new();
        let allowed: &[&str] = if section == "configs" {
            &[
                "content",
                "environment",
                "external",
                "file",
                "labels",
                "name",
                "template_driver",
            ]
        } else {
            &[
                "driver",
                "driver_opts",
                "environment",
                "external",
                "file",
                "labels",
                "name",
                "template_driver",
            ]
        };
        cx.check_keys(&e.value, &p, allowed);
        for f in cx.map(&e.value, &p).to_vec() {
            let fp = path_join(&p, &f.key);
            let v = &f.value;
            match f.key.as_str() {
                "file" => {
                    file = cx
                        .string(v, &fp)
                        .map(|s| cx.resolve_path(&s))
                        .unwrap_or_default()
                }
                "environment" => {
                    envv = cx.string(v, &fp).unwrap_or_default();
                    match cx.env.get(&envv) {
                        Some(val) => content = Some(val.clone()),
                        None if cx.mode == Mode::Deploy => cx.err(
                            &v.pos,
                            &fp,
                            format!("environment variable {envv:?} is not set"),
                        ),
                        None => cx
                            .warnings
                            .push(format!("{fp}: environment variable {envv:?} is not set")),
                    }
                }
                "content" => content = cx.string(v, &fp),
                "name" => ext_name = cx.string(v, &fp).unwrap_or_default(),
                "external" => {
                    let (x, name) = external(cx, v, &fp);
                    ext = x;
                    if let Some(nm) = name {
                        ext_name = nm;
                    }
                }
                k => cx.refuse(&f.key_pos, &fp, &format!("{section}.{k}")),
            }
        }
        let sources = [
            !file.is_empty(),
            !envv.is_empty(),
            content.is_some() && envv.is_empty(),
            ext,
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if sources != 1 {
            cx.err(
                &e.key_pos,
                &p,
                "needs exactly one of file, environment, content (configs only) or external",
            );
        }
        if ext && ext_name.is_empty() {
            ext_name = e.key.clone();
        }
        out.push(T::make(e.key.clone(), file, envv, content, ext, ext_name));
    }
    out
}

trait SecretLike {
    fn make(
        name: String,
        file: String,
        env: String,
        content: Option<String>,
        external: bool,
        external_name: String,
    ) -> Self;
}

impl SecretLike for SecretSpec {
    fn make(
        name: String,
        file: String,
        environment: String,
        content: Option<String>,
        external: bool,
        external_name: String,
    ) -> Self {
        SecretSpec {
            name,
            file,
            environment,
            external,
            external_name,
            content: content.map(String::into_bytes).unwrap_or_default(),
        }
    }
}

impl SecretLike for ConfigSpec {
    fn make(
        name: String,
        file: String,
        environment: String,
        content: Option<String>,
        external: bool,
        external_name: String,
    ) -> Self {
        ConfigSpec {
            name,
            file,
            environment,
            content: content.unwrap_or_default(),
            external,
            external_name,
            data: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration_ms("1m30s"), Some(90_000));
        assert_eq!(parse_duration_ms("1.5s"), Some(1500));
        assert_eq!(parse_duration_ms("500ms"), Some(500));
        assert_eq!(parse_duration_ms("1h"), Some(3_600_000));
        assert_eq!(parse_duration_ms("10"), Some(10_000));
        assert_eq!(parse_duration_ms("10x"), None);
        assert_eq!(parse_bytes("512m"), Some(512 * 1024 * 1024));
        assert_eq!(parse_bytes("1gb"), Some(1024 * 1024 * 1024));
        assert_eq!(parse_bytes("1024"), Some(1024));
        assert_eq!(parse_bytes("1.5k"), Some(1536));
        assert_eq!(parse_bytes("12q"), None);
    }

    #[test]
    fn short_ports() {
        let p = parse_short_port("127.0.0.1:8080:80/udp").ok().unwrap();
        assert_eq!(
            (
                p[0].host_ip.as_str(),
                p[0].published,
                p[0].target,
                p[0].protocol
            ),
            ("127.0.0.1", 8080, 80, Protocol::Udp as i32)
        );
        let p = parse_short_port("8000-8002:9000-9002").ok().unwrap();
        assert_eq!(
            p.iter()
                .map(|x| (x.published, x.target))
                .collect::<Vec<_>>(),
            vec![(8000, 9000), (8001, 9001), (8002, 9002)]
        );
        let p = parse_short_port("80").ok().unwrap();
        assert!(p[0].publish_random && p[0].published == 0);
        let p = parse_short_port("[::1]:53:53/udp").ok().unwrap();
        assert_eq!(p[0].host_ip, "::1");
        assert!(parse_short_port("a:b").is_err());
        assert!(parse_short_port("8000-8001:80-82").is_err());
    }

    #[test]
    fn restart_policies() {
        assert_eq!(parse_restart("on-failure:3").unwrap().max_attempts, Some(3));
        assert_eq!(
            parse_restart("unless-stopped").unwrap().condition,
            RestartCondition::UnlessStopped as i32
        );
        assert!(parse_restart("sometimes").is_none());
    }
}
