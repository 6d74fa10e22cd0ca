//! `config` output: the loaded project as one canonical Compose document
//! (merged, interpolated, profiles applied, includes and extends resolved,
//! list forms normalised to mappings, keys sorted), as YAML or JSON, in the
//! shape `docker compose config` prints.
//!
//! Renders only what was loaded; it must never read files.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use flotilla_proto::v1::ServiceSpec;
use serde_json::{Map, Value};

use crate::convert::{clean_path, parse_bytes, parse_duration_ms, parse_mode};
use crate::schema::{apply_cast, cast_for, to_value, Cast};
use crate::yaml::{Kind, Node, Typed};
use crate::Project;

/// The project as canonical Compose YAML.
pub fn to_compose_yaml(p: &Project) -> String {
    let mut out = String::new();
    let Value::Object(top) = canonical(p) else {
        return out;
    };
    // Top-level keys in the order Compose prints them; the rest sorted.
    let order = [
        "name", "services", "networks", "volumes", "secrets", "configs",
    ];
    for k in order {
        if k == "services" {
            if let Some(v) = top.get(k) {
                emit_services(v, &mut out);
            }
            continue;
        }
        if let Some(v) = top.get(k) {
            let mut one = Map::new();
            one.insert(k.to_string(), v.clone());
            emit(&Value::Object(one), 0, &mut out, false);
        }
    }
    for (k, v) in top.iter().filter(|(k, _)| !order.contains(&k.as_str())) {
        let mut one = Map::new();
        one.insert(k.clone(), v.clone());
        emit(&Value::Object(one), 0, &mut out, false);
    }
    out
}

/// The project as canonical Compose JSON (pretty-printed).
pub fn to_compose_json(p: &Project) -> String {
    serde_json::to_string_pretty(&canonical(p)).unwrap_or_default()
}

/// The canonical document as a JSON value.
pub fn canonical(p: &Project) -> Value {
    let mut top = Map::new();
    top.insert("name".into(), Value::String(p.name.clone()));
    let mut services = Map::new();
    if let Some(Kind::Map(entries)) = p.model.get("services").map(|n| &n.kind) {
        for e in entries {
            let spec = p.spec.services.iter().find(|s| s.name == e.key);
            services.insert(e.key.clone(), service(p, &e.key, &e.value, spec));
        }
    }
    // Only the resources some enabled service uses, as Compose prints them.
    let mut used: [BTreeSet<String>; 4] = Default::default();
    for svc in services.values() {
        collect_used(svc, &mut used);
    }
    let sections = ["networks", "volumes", "secrets", "configs"];
    for (i, sec) in sections.iter().enumerate() {
        let mut out = Map::new();
        if let Some(Kind::Map(entries)) = p.model.get(sec).map(|n| &n.kind) {
            for e in entries.iter().filter(|e| used[i].contains(&e.key)) {
                out.insert(e.key.clone(), resource(p, sec, &e.key, &e.value));
            }
        }
        if *sec == "networks" && used[0].contains("default") && !out.contains_key("default") {
            let mut d = Map::new();
            d.insert("name".into(), Value::String(format!("{}_default", p.name)));
            d.insert("ipam".into(), Value::Object(Map::new()));
            out.insert("default".into(), Value::Object(d));
        }
        if !out.is_empty() {
            top.insert((*sec).into(), Value::Object(out));
        }
    }
    if !services.is_empty() {
        top.insert("services".into(), Value::Object(services));
    }
    // Extensions at the top level stay, as Compose keeps them.
    if let Some(entries) = p.model.as_map() {
        for e in entries.iter().filter(|e| e.key.starts_with("x-")) {
            top.insert(e.key.clone(), to_value(&e.value));
        }
    }
    let mut v = Value::Object(top);
    escape_dollars(&mut v);
    v
}

/// Values are interpolated already; `$$` keeps a literal `$` literal when
/// the output is loaded again (Compose prints them the same way).
fn escape_dollars(v: &mut Value) {
    match v {
        Value::String(s) if s.contains('$') => *s = s.replace('$', "$$"),
        Value::Array(a) => a.iter_mut().for_each(escape_dollars),
        Value::Object(m) => m.values_mut().for_each(escape_dollars),
        _ => {}
    }
}

fn collect_used(svc: &Value, used: &mut [BTreeSet<String>; 4]) {
    if let Some(Value::Object(n)) = svc.get("networks") {
        used[0].extend(n.keys().cloned());
    }
    if let Some(Value::Array(vs)) = svc.get("volumes") {
        for v in vs {
            if v.get("type").and_then(Value::as_str) == Some("volume") {
                if let Some(s) = v.get("source").and_then(Value::as_str) {
                    used[1].insert(s.to_string());
                }
            }
        }
    }
    for (i, k) in [(2, "secrets"), (3, "configs")] {
        if let Some(Value::Array(xs)) = svc.get(k) {
            for x in xs {
                if let Some(s) = x.get("source").and_then(Value::as_str) {
                    used[i].insert(s.to_string());
                }
            }
        }
    }
}

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// A top-level network, volume, secret or config.
fn resource(p: &Project, section: &str, key: &str, n: &Node) -> Value {
    let mut m = obj(to_value(n));
    let external = match m.get("external") {
        Some(Value::Bool(b)) => *b,
        Some(Value::Object(_)) => true,
        _ => false,
    };
    if external {
        // Compose shows an external resource by the name it has outside.
        let name = m
            .get("external")
            .and_then(|e| e.get("name"))
            .or_else(|| m.get("name"))
            .and_then(Value::as_str)
            .unwrap_or(key)
            .to_string();
        m.insert("name".into(), Value::String(name));
        m.insert("external".into(), Value::Bool(true));
    } else {
        if !m.contains_key("name") {
            m.insert("name".into(), Value::String(format!("{}_{key}", p.name)));
        }
        if section == "networks" && !m.contains_key("ipam") {
            m.insert("ipam".into(), Value::Object(Map::new()));
        }
    }
    for k in ["labels", "driver_opts"] {
        if let Some(v) = m.get_mut(k) {
            list_to_map(v, &['=']);
            stringify_values(v);
        }
    }
    if matches!(section, "secrets" | "configs") {
        if let Some(Value::String(f)) = m.get("file").cloned() {
            m.insert("file".into(), Value::String(resolve(p, &f)));
        }
    }
    Value::Object(m)
}

fn resolve(p: &Project, path: &str) -> String {
    let expanded = match (path.strip_prefix("~/"), p.environment.get("HOME")) {
        (Some(rest), Some(home)) => format!("{home}/{rest}"),
        _ => path.to_string(),
    };
    let pb = Path::new(&expanded);
    if pb.is_absolute() {
        clean_path(pb)
    } else {
        clean_path(&p.working_dir.join(pb))
    }
}

fn list_to_map(v: &mut Value, sep: &[char]) {
    if let Value::Array(items) = v {
        let mut m = Map::new();
        for it in items.iter() {
            let text = match it {
                Value::String(s) => s.clone(),
                o => o.to_string(),
            };
            match text.find(sep) {
                Some(i) => m.insert(
                    text[..i].to_string(),
                    Value::String(text[i + 1..].to_string()),
                ),
                None => m.insert(text, Value::Null),
            };
        }
        *v = Value::Object(m);
    }
}

/// Mapping values as Compose's string maps hold them (`1` becomes `"1"`).
fn stringify_values(v: &mut Value) {
    if let Value::Object(m) = v {
        for x in m.values_mut() {
            match x {
                Value::Number(n) => *x = Value::String(n.to_string()),
                Value::Bool(b) => *x = Value::String(b.to_string()),
                _ => {}
            }
        }
    }
}

/// Go's `time.Duration` text, as Compose prints durations: `1m30s`, `5s`,
/// `1h0m0s`, `500ms`, `1.5s`.
pub fn format_duration_ms(ms: u64) -> String {
    if ms == 0 {
        return "0s".into();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let h = ms / 3_600_000;
    let m = (ms / 60_000) % 60;
    let sub = ms % 60_000;
    let secs = if sub.is_multiple_of(1000) {
        format!("{}s", sub / 1000)
    } else {
        let t = format!("{}.{:03}", sub / 1000, sub % 1000);
        format!("{}s", t.trim_end_matches('0'))
    };
    if h > 0 {
        format!("{h}h{m}m{secs}")
    } else if m > 0 {
        format!("{m}m{secs}")
    } else {
        secs
    }
}

fn duration_at(m: &mut Map<String, Value>, key: &str) {
    if let Some(v) = m.get_mut(key) {
        let text = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => return,
        };
        if let Some(ms) = parse_duration_ms(&text) {
            *v = Value::String(format_duration_ms(ms));
        }
    }
}

fn bytes_at(m: &mut Map<String, Value>, key: &str) {
    if let Some(v) = m.get_mut(key) {
        let text = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => return,
        };
        if let Some(b) = parse_bytes(&text) {
            // Compose prints byte sizes as strings of bytes (`"268435456"`);
            // -1 (unlimited) stays a number.
            *v = if b < 0 {
                Value::from(b)
            } else {
                Value::String(b.to_string())
            };
        }
    }
}

fn sub<'a>(m: &'a mut Map<String, Value>, key: &str) -> Option<&'a mut Map<String, Value>> {
    match m.get_mut(key) {
        Some(Value::Object(o)) => Some(o),
        _ => None,
    }
}

/// Typed where the schema says number or boolean (`cpus: "0.5"` is 0.5).
fn cast_tree(v: &mut Value, path: &mut String) {
    match v {
        Value::String(s) => {
            if let Some(c) = cast_for(path) {
                let mut text = s.clone();
                let mut plain = false;
                apply_cast(c, &mut text, &mut plain);
                if plain {
                    *v = match c {
                        Cast::Bool => Value::Bool(text == "true"),
                        Cast::Int => text.parse::<i64>().map(Value::from).unwrap_or(Value::Null),
                        Cast::Float => text
                            .parse::<f64>()
                            .ok()
                            .and_then(serde_json::Number::from_f64)
                            .map(Value::Number)
                            .unwrap_or(Value::Null),
                    };
                }
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                cast_tree(x, path);
                path.truncate(len);
            }
        }
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                let len = path.len();
                path.push('.');
                path.push_str(k);
                cast_tree(x, path);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

/// One service the way `docker compose config` shows it.
fn service(p: &Project, name: &str, node: &Node, spec: Option<&ServiceSpec>) -> Value {
    let mut m = obj(to_value(node));
    m.remove("extends");
    let mut v = Value::Object(std::mem::take(&mut m));
    cast_tree(&mut v, &mut format!("services.{name}"));
    let mut m = obj(v);

    // Environment as resolved: env_file merged in, bare names looked up
    // (a name set nowhere stays null).
    if m.contains_key("environment") || m.contains_key("env_file") {
        let mut env: BTreeMap<String, Value> = spec
            .map(|s| {
                s.environment
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect()
            })
            .unwrap_or_default();
        if let Some(e) = node.get("environment") {
            let bare: Vec<String> = match &e.kind {
                Kind::Map(es) => es
                    .iter()
                    .filter(|x| x.value.is_null())
                    .map(|x| x.key.clone())
                    .collect(),
                Kind::Seq(items) => items
                    .iter()
                    .filter_map(|x| x.as_scalar())
                    .filter(|s| !s.text.contains('='))
                    .map(|s| s.text.clone())
                    .collect(),
                Kind::Scalar(_) => Vec::new(),
            };
            for b in bare {
                if !p.environment.contains_key(&b) {
                    env.insert(b, Value::Null);
                }
            }
        }
        m.remove("env_file");
        m.insert(
            "environment".into(),
            Value::Object(env.into_iter().collect()),
        );
    }
    for k in ["labels", "annotations", "sysctls"] {
        if let Some(v) = m.get_mut(k) {
            list_to_map(v, &['=']);
            stringify_values(v);
        }
    }
    if m.get("network_mode").is_none() {
        match m.get_mut("networks") {
            Some(v) => list_to_map(v, &[]),
            None => {
                let mut d = Map::new();
                d.insert("default".into(), Value::Null);
                m.insert("networks".into(), Value::Object(d));
            }
        }
    }
    if let Some(v) = m.get_mut("depends_on") {
        let mut dm = Map::new();
        match v {
            Value::Array(items) => {
                for it in items.iter() {
                    if let Value::String(s) = it {
                        dm.insert(s.clone(), Value::Null);
                    }
                }
            }
            Value::Object(o) => dm = std::mem::take(o),
            _ => {}
        }
        for d in dm.values_mut() {
            let mut c = match std::mem::take(d) {
                Value::Object(c) => c,
                _ => Map::new(),
            };
            c.entry("condition")
                .or_insert_with(|| Value::String("service_started".into()));
            c.entry("required").or_insert(Value::Bool(true));
            if c.get("restart") == Some(&Value::Bool(false)) {
                c.remove("restart");
            }
            *d = Value::Object(c);
        }
        *v = Value::Object(dm);
    }
    for k in ["command", "entrypoint"] {
        let list = spec.and_then(|s| {
            if k == "command" {
                s.command.as_ref()
            } else {
                s.entrypoint.as_ref()
            }
        });
        if let (Some(v), Some(l)) = (m.get_mut(k), list) {
            *v = Value::Array(l.values.iter().cloned().map(Value::String).collect());
        }
    }
    if let Some(spec) = spec.filter(|s| !s.ports.is_empty()) {
        let ports = spec.ports.iter().map(port).collect();
        m.insert("ports".into(), Value::Array(ports));
    }
    if let Some(Value::Array(vols)) = m.get("volumes").cloned() {
        let vols = vols.iter().map(|x| volume(p, x)).collect();
        m.insert("volumes".into(), Value::Array(vols));
    }
    if let Some(Value::String(t)) = m.get("tmpfs").cloned() {
        m.insert("tmpfs".into(), Value::Array(vec![Value::String(t)]));
    }
    if let Some(Value::Array(x)) = m.get_mut("expose") {
        for e in x.iter_mut() {
            if let Value::Number(n) = e {
                *e = Value::String(n.to_string());
            }
        }
    }
    for (k, default_target) in [("secrets", true), ("configs", false)] {
        let modes: Vec<Option<u32>> = node
            .get(k)
            .and_then(Node::as_seq)
            .map(|items| {
                items
                    .iter()
                    .map(|it| it.get("mode").and_then(parse_mode))
                    .collect()
            })
            .unwrap_or_default();
        if let Some(Value::Array(xs)) = m.get_mut(k) {
            for (i, x) in xs.iter_mut().enumerate() {
                if let Value::String(src) = x {
                    let mut o = Map::new();
                    o.insert("source".into(), Value::String(src.clone()));
                    if default_target {
                        o.insert(
                            "target".into(),
                            Value::String(format!("/run/secrets/{src}")),
                        );
                    }
                    *x = Value::Object(o);
                } else if let (Value::Object(o), Some(Some(mode))) = (x, modes.get(i)) {
                    o.insert("mode".into(), Value::String(format!("0{mode:o}")));
                }
            }
        }
    }
    if let Some(v) = m.get_mut("extra_hosts") {
        *v = extra_hosts(v);
    }
    for k in ["dns", "dns_search", "dns_opt"] {
        if let Some(Value::String(x)) = m.get(k).cloned() {
            m.insert(k.into(), Value::Array(vec![Value::String(x)]));
        }
    }
    if let Some(l) = sub(&mut m, "logging") {
        if let Some(o) = l.get_mut("options") {
            stringify_values(o);
        }
    }
    if let Some(Value::Array(ds)) = m.get_mut("devices") {
        for d in ds.iter_mut() {
            if let Value::String(text) = d {
                *d = device(text);
            }
        }
    }
    if let Some(b) = sub(&mut m, "blkio_config") {
        for k in [
            "device_read_bps",
            "device_write_bps",
            "device_read_iops",
            "device_write_iops",
        ] {
            if let Some(Value::Array(xs)) = b.get_mut(k) {
                for x in xs.iter_mut() {
                    if let Value::Object(o) = x {
                        bytes_at(o, "rate");
                    }
                }
            }
        }
    }
    duration_at(&mut m, "stop_grace_period");
    for k in ["mem_limit", "memswap_limit", "mem_reservation", "shm_size"] {
        bytes_at(&mut m, k);
    }
    if let Some(h) = sub(&mut m, "healthcheck") {
        if let Some(Value::String(t)) = h.get("test").cloned() {
            h.insert(
                "test".into(),
                Value::Array(vec![Value::String("CMD-SHELL".into()), Value::String(t)]),
            );
        }
        for k in ["interval", "timeout", "start_period", "start_interval"] {
            duration_at(h, k);
        }
    }
    if let Some(d) = sub(&mut m, "deploy") {
        if let Some(r) = sub(d, "restart_policy") {
            duration_at(r, "delay");
            duration_at(r, "window");
        }
        for k in ["update_config", "rollback_config"] {
            if let Some(u) = sub(d, k) {
                duration_at(u, "delay");
                duration_at(u, "monitor");
            }
        }
        if let Some(l) = d.get_mut("labels") {
            list_to_map(l, &['=']);
            stringify_values(l);
        }
        if let Some(r) = sub(d, "resources") {
            for k in ["limits", "reservations"] {
                if let Some(x) = sub(r, k) {
                    bytes_at(x, "memory");
                }
            }
        }
        // Compose always prints these two, empty or not.
        d.entry("resources")
            .or_insert_with(|| Value::Object(Map::new()));
        d.entry("placement")
            .or_insert_with(|| Value::Object(Map::new()));
    }
    if let Some(b) = m.get("build").cloned() {
        let mut o = match b {
            Value::String(ctx) => {
                let mut o = Map::new();
                o.insert("context".into(), Value::String(ctx));
                o
            }
            Value::Object(o) => o,
            _ => Map::new(),
        };
        if let Some(Value::String(ctx)) = o.get("context").cloned() {
            if !ctx.contains("://") && !ctx.starts_with("git@") {
                o.insert("context".into(), Value::String(resolve(p, &ctx)));
            }
        }
        if !o.contains_key("dockerfile_inline") {
            o.entry("dockerfile")
                .or_insert_with(|| Value::String("Dockerfile".into()));
        }
        if let Some(a) = o.get_mut("args") {
            list_to_map(a, &['=']);
            stringify_values(a);
        }
        m.insert("build".into(), Value::Object(o));
    }
    Value::Object(m)
}

/// `extra_hosts` as Compose prints it: a list of `host=ip`, from the list
/// form (`host:ip` or `host=ip`) or the mapping form (one IP or a list).
fn extra_hosts(v: &Value) -> Value {
    let mut out = Vec::new();
    match v {
        Value::Array(items) => {
            for it in items {
                let Value::String(t) = it else {
                    out.push(it.clone());
                    continue;
                };
                let entry = match t.split_once('=') {
                    Some(_) => t.clone(),
                    None => match t.split_once(':') {
                        Some((h, ip)) => format!("{h}={ip}"),
                        None => t.clone(),
                    },
                };
                out.push(Value::String(entry));
            }
        }
        Value::Object(m) => {
            for (h, ips) in m {
                let ips: Vec<String> = match ips {
                    Value::Array(a) => a.iter().map(text_of).collect(),
                    other => vec![text_of(other)],
                };
                for ip in ips {
                    out.push(Value::String(format!("{h}={ip}")));
                }
            }
        }
        other => return other.clone(),
    }
    Value::Array(out)
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        o => o.to_string(),
    }
}

/// A device in long syntax: `host[:container[:permissions]]`.
fn device(text: &str) -> Value {
    let parts: Vec<&str> = text.splitn(3, ':').collect();
    let (src, tgt, perm) = match parts.as_slice() {
        [s] => (*s, *s, "rwm"),
        [s, t] => (*s, *t, "rwm"),
        [s, t, p, ..] => (*s, *t, *p),
        [] => return Value::String(text.into()),
    };
    let mut o = Map::new();
    o.insert("source".into(), Value::String(src.into()));
    o.insert("target".into(), Value::String(tgt.into()));
    o.insert("permissions".into(), Value::String(perm.into()));
    Value::Object(o)
}

fn port(pc: &flotilla_proto::v1::PortConfig) -> Value {
    let mut o = Map::new();
    o.insert(
        "mode".into(),
        Value::String(if pc.mode == 1 { "host" } else { "ingress" }.into()),
    );
    if !pc.host_ip.is_empty() {
        o.insert("host_ip".into(), Value::String(pc.host_ip.clone()));
    }
    o.insert("target".into(), Value::from(pc.target));
    if pc.published != 0 {
        o.insert("published".into(), Value::String(pc.published.to_string()));
    }
    let proto = match pc.protocol {
        1 => "udp",
        2 => "sctp",
        _ => "tcp",
    };
    o.insert("protocol".into(), Value::String(proto.into()));
    if !pc.name.is_empty() {
        o.insert("name".into(), Value::String(pc.name.clone()));
    }
    if !pc.app_protocol.is_empty() {
        o.insert(
            "app_protocol".into(),
            Value::String(pc.app_protocol.clone()),
        );
    }
    Value::Object(o)
}

/// A service volume in long syntax.
fn volume(p: &Project, v: &Value) -> Value {
    let mut o = match v {
        Value::Object(o) => o.clone(),
        Value::String(text) => {
            let parts: Vec<&str> = text.split(':').collect();
            let (src, tgt, opts) = match parts.as_slice() {
                [t] => ("", *t, ""),
                [s, t] => (*s, *t, ""),
                [s, t, o, ..] => (*s, *t, *o),
                [] => return v.clone(),
            };
            let mut o = Map::new();
            let bind = src.starts_with('/') || src.starts_with('.') || src.starts_with('~');
            o.insert(
                "type".into(),
                Value::String(if bind { "bind" } else { "volume" }.into()),
            );
            if !src.is_empty() {
                o.insert("source".into(), Value::String(src.into()));
            }
            o.insert("target".into(), Value::String(tgt.into()));
            let mut extra = Map::new();
            for opt in opts.split(',') {
                match opt {
                    "ro" => {
                        o.insert("read_only".into(), Value::Bool(true));
                    }
                    "z" | "Z" => {
                        extra.insert("selinux".into(), Value::String(opt.into()));
                    }
                    "nocopy" => {
                        extra.insert("nocopy".into(), Value::Bool(true));
                    }
                    "shared" | "rshared" | "slave" | "rslave" | "private" | "rprivate" => {
                        extra.insert("propagation".into(), Value::String(opt.into()));
                    }
                    _ => {}
                }
            }
            if bind {
                extra.insert("create_host_path".into(), Value::Bool(true));
                o.insert("bind".into(), Value::Object(extra));
            } else {
                o.insert("volume".into(), Value::Object(extra));
            }
            o
        }
        other => return other.clone(),
    };
    if o.get("type").and_then(Value::as_str) == Some("bind") {
        if let Some(Value::String(s)) = o.get("source").cloned() {
            o.insert("source".into(), Value::String(resolve(p, &s)));
        }
    }
    if o.get("type").and_then(Value::as_str) == Some("volume") {
        o.entry("volume")
            .or_insert_with(|| Value::Object(Map::new()));
    }
    if o.get("read_only") == Some(&Value::Bool(false)) {
        o.remove("read_only");
    }
    if let Some(t) = sub(&mut o, "tmpfs") {
        bytes_at(t, "size");
    }
    Value::Object(o)
}

fn plain_ok(s: &str) -> bool {
    if s.is_empty() || s.trim() != s {
        return false;
    }
    let probe = crate::yaml::Scalar {
        text: s.to_string(),
        plain: true,
    };
    if !matches!(probe.typed(), Typed::Str(_)) {
        return false;
    }
    let first = s.as_bytes()[0];
    if b"-?:,[]{}#&*!|>'\"%@`".contains(&first) {
        return false;
    }
    !(s.contains(": ")
        || s.contains(" #")
        || s.ends_with(':')
        || s.contains('\n')
        || s.contains('\t'))
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) if plain_ok(s) => s.clone(),
        Value::String(s) => Value::String(s.clone()).to_string(),
        _ => String::new(),
    }
}

/// A service's keys in the order Compose prints them (its `ServiceConfig`
/// struct order), so the two outputs diff line by line.
const SERVICE_KEYS: &[&str] = &[
    "profiles",
    "annotations",
    "attach",
    "build",
    "develop",
    "blkio_config",
    "cap_add",
    "cap_drop",
    "cgroup_parent",
    "cgroup",
    "cpu_count",
    "cpu_percent",
    "cpu_period",
    "cpu_quota",
    "cpu_rt_period",
    "cpu_rt_runtime",
    "cpus",
    "cpuset",
    "cpu_shares",
    "command",
    "configs",
    "container_name",
    "credential_spec",
    "depends_on",
    "deploy",
    "device_cgroup_rules",
    "devices",
    "dns",
    "dns_opt",
    "dns_search",
    "dockerfile",
    "domainname",
    "entrypoint",
    "provider",
    "environment",
    "env_file",
    "expose",
    "extends",
    "external_links",
    "extra_hosts",
    "group_add",
    "gpus",
    "hostname",
    "healthcheck",
    "image",
    "init",
    "ipc",
    "isolation",
    "labels",
    "label_file",
    "links",
    "logging",
    "log_driver",
    "log_opt",
    "mem_limit",
    "mem_reservation",
    "memswap_limit",
    "mem_swappiness",
    "mac_address",
    "net",
    "network_mode",
    "networks",
    "oom_kill_disable",
    "oom_score_adj",
    "pid",
    "pids_limit",
    "platform",
    "ports",
    "privileged",
    "pull_policy",
    "read_only",
    "restart",
    "runtime",
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
    "use_api_socket",
    "user",
    "userns_mode",
    "uts",
    "volume_driver",
    "volumes",
    "volumes_from",
    "working_dir",
    "post_start",
    "pre_stop",
];

/// A service mapping's entries in Compose's order; keys it does not know
/// (`x-` extensions) after them, sorted.
fn service_entries(m: &Map<String, Value>) -> Vec<(&String, &Value)> {
    let mut v: Vec<(&String, &Value)> = m.iter().collect();
    let rank = |k: &str| {
        SERVICE_KEYS
            .iter()
            .position(|x| *x == k)
            .unwrap_or(SERVICE_KEYS.len())
    };
    v.sort_by(|a, b| (rank(a.0), a.0).cmp(&(rank(b.0), b.0)));
    v
}

/// `services:` with each service's keys in Compose's order.
fn emit_services(services: &Value, out: &mut String) {
    let Value::Object(services) = services else {
        return;
    };
    out.push_str("services:\n");
    for (name, svc) in services {
        out.push_str("  ");
        out.push_str(&scalar(&Value::String(name.clone())));
        out.push(':');
        match svc {
            Value::Object(m) if !m.is_empty() => {
                out.push('\n');
                emit_entries(service_entries(m).into_iter(), 4, out);
            }
            _ => {
                out.push(' ');
                emit(svc, 4, out, true);
            }
        }
    }
}

fn emit_entries<'a>(
    entries: impl Iterator<Item = (&'a String, &'a Value)>,
    indent: usize,
    out: &mut String,
) {
    let pad = " ".repeat(indent);
    for (k, val) in entries {
        out.push_str(&pad);
        out.push_str(&scalar(&Value::String(k.clone())));
        out.push(':');
        match val {
            Value::Object(x) if !x.is_empty() => emit(val, indent + 2, out, true),
            Value::Array(x) if !x.is_empty() => emit(val, indent + 2, out, true),
            _ => {
                out.push(' ');
                emit(val, indent + 2, out, true);
            }
        }
    }
}

/// Block-style YAML; `inline` means the caller already wrote `- ` or `key: `.
fn emit(v: &Value, indent: usize, out: &mut String, inline: bool) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(m) if m.is_empty() => out.push_str("{}\n"),
        Value::Array(a) if a.is_empty() => out.push_str("[]\n"),
        Value::Object(m) => {
            if inline {
                out.push('\n');
            }
            emit_entries(m.iter(), indent, out);
        }
        Value::Array(a) => {
            if inline {
                out.push('\n');
            }
            for it in a {
                out.push_str(&pad);
                out.push_str("- ");
                match it {
                    Value::Object(x) if !x.is_empty() => {
                        // First key on the dash line, the rest aligned under it.
                        let mut sub = String::new();
                        emit(it, indent + 2, &mut sub, false);
                        out.push_str(sub.trim_start());
                    }
                    Value::Array(x) if !x.is_empty() => {
                        let mut sub = String::new();
                        emit(it, indent + 2, &mut sub, false);
                        out.push_str(sub.trim_start());
                    }
                    _ => emit(it, indent + 2, out, true),
                }
            }
        }
        s => {
            out.push_str(&scalar(s));
            out.push('\n');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_like_go() {
        for (ms, want) in [
            (0, "0s"),
            (500, "500ms"),
            (1500, "1.5s"),
            (5000, "5s"),
            (60_000, "1m0s"),
            (90_000, "1m30s"),
            (3_600_000, "1h0m0s"),
            (3_723_250, "1h2m3.25s"),
        ] {
            assert_eq!(format_duration_ms(ms), want);
            assert_eq!(parse_duration_ms(want), Some(ms), "{want}");
        }
    }

    #[test]
    fn dollars_are_escaped_once() {
        let mut v: Value = serde_json::json!({"a": ["x$y", "$${Z}"], "b": 1});
        escape_dollars(&mut v);
        assert_eq!(v, serde_json::json!({"a": ["x$$y", "$$$${Z}"], "b": 1}));
    }
}
