//! Merging Compose documents (several `-f` files, override files, extends)
//! per the Compose spec's merge rules: mappings merge key by key, most
//! sequences append (unique resources deduplicated by their key), command,
//! entrypoint and healthcheck.test are replaced, list-or-mapping fields are
//! merged as mappings; `!reset` removes a value and `!override` replaces it.
//!
//! Works on trees only; it must never read files or interpret values beyond
//! what a merge rule needs.

use crate::yaml::{Entry, Kind, Node};

/// Merges `over` onto `base` (the later file wins).
pub fn merge(base: Node, over: Node) -> Node {
    merge_at(base, over, &mut Vec::new())
}

fn merge_at(base: Node, over: Node, path: &mut Vec<String>) -> Node {
    if over.tag.as_deref() == Some("!override") {
        return over;
    }
    let rule = rule_for(path);
    match rule {
        Rule::Replace => return over,
        Rule::AsMapping => {
            let b = to_mapping(base, path);
            let o = to_mapping(over, path);
            return merge_maps(b, o, path);
        }
        Rule::Default => {}
    }
    match (base.kind, over.kind) {
        (Kind::Map(b), Kind::Map(o)) => merge_maps(
            Node {
                kind: Kind::Map(b),
                pos: base.pos,
                tag: base.tag,
            },
            Node {
                kind: Kind::Map(o),
                pos: over.pos,
                tag: over.tag,
            },
            path,
        ),
        (Kind::Seq(mut b), Kind::Seq(o)) => {
            for item in o {
                let k = unique_key(path, &item);
                if let Some(k) = k {
                    if let Some(i) = b
                        .iter()
                        .position(|x| unique_key(path, x).as_ref() == Some(&k))
                    {
                        b[i] = item;
                        continue;
                    }
                }
                b.push(item);
            }
            Node {
                kind: Kind::Seq(b),
                pos: base.pos,
                tag: None,
            }
        }
        (_, ok) => Node {
            kind: ok,
            pos: over.pos,
            tag: over.tag,
        },
    }
}

fn merge_maps(base: Node, over: Node, path: &mut Vec<String>) -> Node {
    let (mut b, o) = match (base.kind, over.kind) {
        (Kind::Map(b), Kind::Map(o)) => (b, o),
        // A list form that could not be turned into a mapping: the later value wins
        // and the converter reports its shape.
        (_, ok) => {
            return Node {
                kind: ok,
                pos: over.pos,
                tag: over.tag,
            }
        }
    };
    for e in o {
        if e.value.tag.as_deref() == Some("!reset") {
            b.retain(|x| x.key != e.key);
            continue;
        }
        match b.iter().position(|x| x.key == e.key) {
            Some(i) => {
                let old =
                    std::mem::replace(&mut b[i].value, Node::seq(Vec::new(), e.key_pos.clone()));
                path.push(e.key.clone());
                // A null override (`key:` with nothing) keeps the base value for mappings.
                let merged = if e.value.is_null() && old.as_map().is_some() {
                    old
                } else {
                    merge_at(old, e.value, path)
                };
                path.pop();
                b[i].value = merged;
            }
            None => b.push(strip_resets(e)),
        }
    }
    Node {
        kind: Kind::Map(b),
        pos: base.pos,
        tag: None,
    }
}

/// Removes `!reset` entries (resetting something that was never set).
pub fn strip_resets(mut e: Entry) -> Entry {
    e.value = strip_node(e.value);
    e
}

pub fn strip_node(mut n: Node) -> Node {
    n.kind = match n.kind {
        Kind::Map(m) => Kind::Map(
            m.into_iter()
                .filter(|e| e.value.tag.as_deref() != Some("!reset"))
                .map(strip_resets)
                .collect(),
        ),
        Kind::Seq(s) => Kind::Seq(
            s.into_iter()
                .filter(|x| x.tag.as_deref() != Some("!reset"))
                .map(strip_node)
                .collect(),
        ),
        k => k,
    };
    if matches!(n.tag.as_deref(), Some("!override")) {
        n.tag = None;
    }
    n
}

enum Rule {
    Default,
    Replace,
    AsMapping,
}

fn rule_for(path: &[String]) -> Rule {
    let p: Vec<&str> = path.iter().map(String::as_str).collect();
    match p.as_slice() {
        ["services", _, "command" | "entrypoint"] => Rule::Replace,
        ["services", _, "healthcheck", "test"] => Rule::Replace,
        ["services", _, "environment" | "labels" | "annotations" | "sysctls" | "extra_hosts" | "depends_on"
        | "networks" | "ulimits"] => Rule::AsMapping,
        ["services", _, "deploy", "labels"] => Rule::AsMapping,
        ["services", _, "build", "args" | "labels"] => Rule::AsMapping,
        _ => Rule::Default,
    }
}

/// Turns a list form into the mapping form for merging.
pub fn to_mapping(n: Node, path: &[String]) -> Node {
    let field = path.last().map(String::as_str).unwrap_or("");
    let pos = n.pos.clone();
    match n.kind {
        Kind::Seq(items) => {
            let mut entries: Vec<Entry> = Vec::new();
            for it in items {
                let Some(s) = it.as_scalar() else {
                    // Left as is: the converter reports the wrong shape.
                    return Node {
                        kind: Kind::Seq(vec![it]),
                        pos,
                        tag: None,
                    };
                };
                let text = s.text.clone();
                let (k, v) = match field {
                    "depends_on" => (text.clone(), None),
                    "networks" => (text.clone(), None),
                    "extra_hosts" => match text.find('=').or_else(|| text.find(':')) {
                        Some(i) => (text[..i].to_string(), Some(text[i + 1..].to_string())),
                        None => (text.clone(), None),
                    },
                    _ => match text.find('=') {
                        Some(i) => (text[..i].to_string(), Some(text[i + 1..].to_string())),
                        None => (text.clone(), None),
                    },
                };
                let value = match (field, v) {
                    ("depends_on", _) => Node::map(
                        vec![Entry {
                            key: "condition".into(),
                            key_pos: it.pos.clone(),
                            value: Node::scalar("service_started", false, it.pos.clone()),
                        }],
                        it.pos.clone(),
                    ),
                    (_, Some(v)) => Node::scalar(v, false, it.pos.clone()),
                    (_, None) => Node::scalar("", true, it.pos.clone()),
                };
                entries.retain(|e| e.key != k);
                entries.push(Entry {
                    key: k,
                    key_pos: it.pos.clone(),
                    value,
                });
            }
            Node::map(entries, pos)
        }
        k => Node {
            kind: k,
            pos,
            tag: n.tag,
        },
    }
}

/// The identity of an item in a sequence whose items are unique resources.
fn unique_key(path: &[String], item: &Node) -> Option<String> {
    let p: Vec<&str> = path.iter().map(String::as_str).collect();
    let field = match p.as_slice() {
        ["services", _, f] => *f,
        _ => return None,
    };
    match field {
        "volumes" => match &item.kind {
            Kind::Scalar(s) => {
                let parts: Vec<&str> = s.text.split(':').collect();
                Some(if parts.len() >= 2 { parts[1] } else { parts[0] }.to_string())
            }
            Kind::Map(_) => item
                .get("target")
                .and_then(|t| t.as_scalar())
                .map(|s| s.text.clone()),
            _ => None,
        },
        "secrets" | "configs" => match &item.kind {
            Kind::Scalar(s) => Some(s.text.clone()),
            Kind::Map(_) => item
                .get("target")
                .or_else(|| item.get("source"))
                .and_then(|t| t.as_scalar())
                .map(|s| s.text.clone()),
            _ => None,
        },
        "ports" | "expose" | "dns" | "dns_search" | "dns_opt" | "cap_add" | "cap_drop"
        | "devices" | "tmpfs" | "security_opt" | "env_file" | "profiles" | "group_add" => {
            match &item.kind {
                Kind::Scalar(s) => Some(s.text.clone()),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Merges a service definition onto the service it `extends`, with the same
/// per-field rules as file merging.
pub fn merge_service(base: Node, over: Node) -> Node {
    merge_at(
        base,
        over,
        &mut vec!["services".to_string(), "_".to_string()],
    )
}
