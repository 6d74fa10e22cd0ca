//! `config` output: the loaded project as one canonical Compose document
//! (merged, interpolated, profiles applied, includes and extends resolved,
//! list forms normalised to mappings, keys sorted), as YAML or JSON, in the
//! shape `docker compose config` prints.
//!
//! Renders only what was loaded; it must never read files.

use serde_json::{Map, Value};

use crate::yaml::{Kind, Node, Typed};
use crate::Project;

/// The project as canonical Compose YAML.
pub fn to_compose_yaml(p: &Project) -> String {
    let mut out = String::new();
    emit(&canonical(p), 0, &mut out, false);
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
    for sec in ["services", "networks", "volumes", "secrets", "configs"] {
        let Some(n) = p.model.get(sec) else { continue };
        let mut v = to_json(n);
        if sec == "services" {
            if let Value::Object(services) = &mut v {
                for (name, svc) in services.iter_mut() {
                    if let Some(spec) = p.spec.services.iter().find(|s| &s.name == name) {
                        normalise_service(svc, spec);
                    }
                }
            }
        }
        top.insert(sec.into(), v);
    }
    // The implicit default network, as Compose shows it.
    if p.spec.networks.iter().any(|n| n.name == "default") {
        let nets = top
            .entry("networks")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(m) = nets {
            let d = m
                .entry("default")
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(dm) = d {
                dm.entry("name")
                    .or_insert_with(|| Value::String(format!("{}_default", p.name)));
            }
        }
    }
    Value::Object(top)
}

fn to_json(n: &Node) -> Value {
    match &n.kind {
        Kind::Scalar(s) => match s.typed() {
            Typed::Null => Value::Null,
            Typed::Bool(b) => Value::Bool(b),
            Typed::Int(i) => Value::from(i),
            Typed::Float(f) => serde_json::Number::from_f64(f)
                .map(Value::Number)
                .unwrap_or_else(|| Value::String(s.text.clone())),
            Typed::Str(t) => Value::String(t.to_string()),
        },
        Kind::Seq(items) => Value::Array(items.iter().map(to_json).collect()),
        Kind::Map(entries) => Value::Object(
            entries
                .iter()
                .filter(|e| !e.key.starts_with("x-"))
                .map(|e| (e.key.clone(), to_json(&e.value)))
                .collect(),
        ),
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

/// Normalises a service the way `docker compose config` shows it.
fn normalise_service(svc: &mut Value, spec: &flotilla_proto::v1::ServiceSpec) {
    let Value::Object(m) = svc else { return };
    // Environment as resolved (env_file merged in, bare names looked up).
    if m.contains_key("environment") || m.contains_key("env_file") {
        let env: Map<String, Value> = spec
            .environment
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect::<std::collections::BTreeMap<_, _>>()
            .into_iter()
            .collect();
        m.insert("environment".into(), Value::Object(env));
    }
    for k in ["labels", "annotations", "sysctls"] {
        if let Some(v) = m.get_mut(k) {
            list_to_map(v, &['=']);
        }
    }
    if let Some(v) = m.get_mut("networks") {
        list_to_map(v, &[]);
    }
    if let Some(v) = m.get_mut("depends_on") {
        if let Value::Array(items) = v {
            let mut dm = Map::new();
            for it in items.iter() {
                if let Value::String(s) = it {
                    let mut c = Map::new();
                    c.insert("condition".into(), Value::String("service_started".into()));
                    c.insert("required".into(), Value::Bool(true));
                    dm.insert(s.clone(), Value::Object(c));
                }
            }
            *v = Value::Object(dm);
        }
    }
    for k in ["command", "entrypoint"] {
        let list = if k == "command" {
            &spec.command
        } else {
            &spec.entrypoint
        };
        if let (Some(v), Some(l)) = (m.get_mut(k), list) {
            *v = Value::Array(l.values.iter().cloned().map(Value::String).collect());
        }
    }
    if !spec.ports.is_empty() {
        let ports = spec
            .ports
            .iter()
            .map(|p| {
                let mut o = Map::new();
                o.insert(
                    "mode".into(),
                    Value::String(if p.mode == 1 { "host" } else { "ingress" }.into()),
                );
                if !p.host_ip.is_empty() {
                    o.insert("host_ip".into(), Value::String(p.host_ip.clone()));
                }
                o.insert("target".into(), Value::from(p.target));
                if p.published != 0 {
                    o.insert("published".into(), Value::String(p.published.to_string()));
                }
                let proto = match p.protocol {
                    1 => "udp",
                    2 => "sctp",
                    _ => "tcp",
                };
                o.insert("protocol".into(), Value::String(proto.into()));
                if !p.name.is_empty() {
                    o.insert("name".into(), Value::String(p.name.clone()));
                }
                if !p.app_protocol.is_empty() {
                    o.insert("app_protocol".into(), Value::String(p.app_protocol.clone()));
                }
                Value::Object(o)
            })
            .collect();
        m.insert("ports".into(), Value::Array(ports));
    }
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
            for (k, val) in m {
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
