//! Validation of the merged, interpolated Compose document against the
//! Compose Specification's JSON schema (`schema/compose-spec.json`, a copy
//! of compose-spec's `schema/compose-spec.json`, Apache-2.0), with every
//! schema error mapped back to the file, line and column it came from.
//!
//! Also the type casts Compose applies to interpolated values before
//! validating (`replicas: ${N}` is an integer, not a string).
//!
//! Pure: it reads no files (the schema is embedded at build time) and never
//! reaches the network (remote `$ref`s are not resolved).

use std::sync::OnceLock;

use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::paths::LocationSegment;
use jsonschema::{ValidationError, Validator};
use serde_json::{Map, Value};

use crate::yaml::{Kind, Node, Pos, Typed};
use crate::LoadError;

/// The Compose Specification's JSON schema.
pub const COMPOSE_SPEC_SCHEMA: &str = include_str!("../schema/compose-spec.json");

fn validator() -> Result<&'static Validator, &'static str> {
    static V: OnceLock<Result<Validator, String>> = OnceLock::new();
    V.get_or_init(|| {
        let schema: Value = serde_json::from_str(COMPOSE_SPEC_SCHEMA)
            .map_err(|e| format!("the embedded Compose schema is not JSON: {e}"))?;
        jsonschema::draft7::options()
            .should_validate_formats(false)
            .build(&schema)
            .map_err(|e| format!("the embedded Compose schema does not compile: {e}"))
    })
    .as_ref()
    .map_err(String::as_str)
}

/// The document as JSON for validation: scalars typed by the YAML core
/// schema, `x-` extensions kept.
pub fn to_value(n: &Node) -> Value {
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
        Kind::Seq(items) => Value::Array(items.iter().map(to_value).collect()),
        Kind::Map(entries) => Value::Object(
            entries
                .iter()
                .map(|e| (e.key.clone(), to_value(&e.value)))
                .collect::<Map<_, _>>(),
        ),
    }
}

/// Every schema violation of `model`, located.
pub fn validate(model: &Node) -> Vec<LoadError> {
    let v = match validator() {
        Ok(v) => v,
        Err(m) => return vec![LoadError::general("", m)],
    };
    let instance = to_value(model);
    let mut out = Vec::new();
    for e in v.iter_errors(&instance) {
        report(model, &e, &mut out);
    }
    out.dedup();
    out
}

/// Where an error points: the node and the dotted path (`services.web.ports[1]`).
fn locate<'a>(root: &'a Node, e: &ValidationError<'_>) -> (&'a Node, Pos, String) {
    let mut node = root;
    let mut pos = root.pos.clone();
    let mut path = String::new();
    for seg in e.instance_path().iter() {
        match seg {
            LocationSegment::Property(k) => {
                let Some(entry) = node.get_entry(&k) else {
                    break;
                };
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(&k);
                pos = entry.value.pos.clone();
                // An empty value has no position of its own worth showing.
                if entry.value.is_null() {
                    pos = entry.key_pos.clone();
                }
                node = &entry.value;
            }
            LocationSegment::Index(i) => {
                let Some(item) = node.as_seq().and_then(|s| s.get(i)) else {
                    break;
                };
                path.push_str(&format!("[{i}]"));
                pos = item.pos.clone();
                node = item;
            }
        }
    }
    (node, pos, path)
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn type_names(k: &TypeKind) -> String {
    let word = |t: String| -> String {
        match t.as_str() {
            "object" => "a mapping".into(),
            "array" => "a list".into(),
            "string" => "a string".into(),
            "number" => "a number".into(),
            "integer" => "an integer".into(),
            "boolean" => "a boolean".into(),
            _ => t,
        }
    };
    let names: Vec<String> = match k {
        TypeKind::Single(t) => vec![word(t.to_string())],
        TypeKind::Multiple(set) => set.iter().map(|t| word(t.to_string())).collect(),
    };
    match names.as_slice() {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

fn report(root: &Node, e: &ValidationError<'_>, out: &mut Vec<LoadError>) {
    let (node, pos, path) = locate(root, e);
    match e.kind() {
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            for k in unexpected {
                let kp = node
                    .get_entry(k)
                    .map(|en| en.key_pos.clone())
                    .unwrap_or_else(|| pos.clone());
                out.push(LoadError::at(
                    &kp,
                    join(&path, k),
                    format!("unknown key {k:?}"),
                ));
            }
        }
        ValidationErrorKind::Type { kind } => out.push(LoadError::at(
            &pos,
            path,
            format!("must be {}, not {}", type_names(kind), node.kind_name()),
        )),
        ValidationErrorKind::Required { property } => {
            let p = property.as_str().map(String::from).unwrap_or_default();
            out.push(LoadError::at(&pos, path, format!("missing key {p:?}")));
        }
        ValidationErrorKind::OneOfNotValid { context } | ValidationErrorKind::AnyOf { context } => {
            // The branch whose type fits says what is wrong inside it; when no
            // branch's type fits, list the shapes the field accepts.
            let here = e.instance_path().as_str().to_string();
            let fits: Vec<&Vec<ValidationError<'static>>> = context
                .iter()
                .filter(|branch| {
                    !branch.iter().any(|be| {
                        be.instance_path().as_str() == here
                            && matches!(be.kind(), ValidationErrorKind::Type { .. })
                    })
                })
                .collect();
            if fits.len() == 1 && !fits[0].is_empty() {
                for be in fits[0] {
                    report(root, be, out);
                }
            } else {
                let mut shapes: Vec<String> = Vec::new();
                for branch in context {
                    for be in branch {
                        if let ValidationErrorKind::Type { kind } = be.kind() {
                            if be.instance_path().as_str() == here {
                                let t = type_names(kind);
                                if !shapes.contains(&t) {
                                    shapes.push(t);
                                }
                            }
                        }
                    }
                }
                let msg = if shapes.len() == context.len() && !shapes.is_empty() {
                    format!("must be {}, not {}", shapes.join(" or "), node.kind_name())
                } else {
                    format!(
                        "does not match any allowed form of this field ({})",
                        e.masked()
                    )
                };
                out.push(LoadError::at(&pos, path, msg));
            }
        }
        ValidationErrorKind::Enum { options } => out.push(LoadError::at(
            &pos,
            path,
            format!("must be one of {options}"),
        )),
        ValidationErrorKind::Pattern { pattern } => {
            let text = node.as_scalar().map(|s| s.text.as_str()).unwrap_or("");
            out.push(LoadError::at(
                &pos,
                path,
                format!("{text:?} does not match the pattern {pattern}"),
            ))
        }
        ValidationErrorKind::UniqueItems => out.push(LoadError::at(
            &pos,
            path,
            "has duplicate items (each must be unique)",
        )),
        _ => out.push(LoadError::at(&pos, path, e.masked().to_string())),
    }
}

/// The type Compose gives an interpolated value at a given place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cast {
    Int,
    Float,
    Bool,
}

/// Compose's casts for interpolated values (compose-go's
/// `interpolateTypeCastMapping`), by path; `*` is any key, `[]` any index.
pub(crate) fn cast_for(path: &str) -> Option<Cast> {
    let mut segs: Vec<&str> = Vec::new();
    for part in path.split('.') {
        match part.find('[') {
            Some(i) => {
                if i > 0 {
                    segs.push(&part[..i]);
                }
                segs.extend(std::iter::repeat_n("[]", part[i..].matches('[').count()));
            }
            None => segs.push(part),
        }
    }
    use Cast::*;
    match segs.as_slice() {
        ["services", _, rest @ ..] => match rest {
            ["cpu_count" | "cpu_period" | "cpu_quota" | "cpu_rt_period" | "cpu_rt_runtime"
            | "cpu_shares" | "oom_score_adj" | "pids_limit" | "scale" | "mem_swappiness"] => {
                Some(Int)
            }
            ["cpu_percent" | "cpus"] => Some(Float),
            ["init" | "oom_kill_disable" | "privileged" | "read_only" | "stdin_open" | "tty"] => {
                Some(Bool)
            }
            ["deploy", "replicas"] => Some(Int),
            ["deploy", "update_config" | "rollback_config", "parallelism"] => Some(Int),
            ["deploy", "update_config" | "rollback_config", "max_failure_ratio"] => Some(Float),
            ["deploy", "restart_policy", "max_attempts"] => Some(Int),
            ["deploy", "placement", "max_replicas_per_node"] => Some(Int),
            ["deploy", "resources", "limits" | "reservations", "cpus"] => Some(Float),
            ["deploy", "resources", "limits" | "reservations", "pids"] => Some(Int),
            ["healthcheck", "retries"] => Some(Int),
            ["healthcheck", "disable"] => Some(Bool),
            ["ports", "[]", "target"] => Some(Int),
            ["secrets" | "configs", "[]", "mode"] => Some(Int),
            ["ulimits", _] | ["ulimits", _, "hard" | "soft"] => Some(Int),
            ["volumes", "[]", "read_only"] => Some(Bool),
            ["volumes", "[]", "volume", "nocopy"] => Some(Bool),
            ["volumes", "[]", "bind", "create_host_path"] => Some(Bool),
            ["depends_on", _, "required" | "restart"] => Some(Bool),
            ["networks", _, "priority"] => Some(Int),
            ["blkio_config", "weight"] => Some(Int),
            _ => None,
        },
        ["networks", _, "external" | "internal" | "attachable" | "enable_ipv6"] => Some(Bool),
        ["volumes" | "secrets" | "configs", _, "external"] => Some(Bool),
        _ => None,
    }
}

/// Applies `cast` to an interpolated result: the text becomes a plain
/// (typed) scalar when it reads as that type; otherwise it stays a string
/// and the schema reports it.
pub(crate) fn apply_cast(cast: Cast, text: &mut String, plain: &mut bool) {
    let t = text.trim().to_string();
    let ok = match cast {
        Cast::Int => t.parse::<i64>().is_ok(),
        Cast::Float => t.parse::<f64>().is_ok_and(f64::is_finite),
        Cast::Bool => match t.to_ascii_lowercase().as_str() {
            "true" | "yes" | "y" | "on" => {
                *text = "true".into();
                true
            }
            "false" | "no" | "n" | "off" => {
                *text = "false".into();
                true
            }
            _ => false,
        },
    };
    if ok {
        if cast != Cast::Bool {
            *text = t;
        }
        *plain = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cast_paths() {
        assert_eq!(cast_for("services.web.deploy.replicas"), Some(Cast::Int));
        assert_eq!(cast_for("services.web.ports[2].target"), Some(Cast::Int));
        assert_eq!(cast_for("services.web.ports[2]"), None);
        assert_eq!(cast_for("networks.front.external"), Some(Cast::Bool));
        assert_eq!(cast_for("services.web.cpus"), Some(Cast::Float));
        let (mut t, mut p) = ("3".to_string(), false);
        apply_cast(Cast::Int, &mut t, &mut p);
        assert!(p);
        let (mut t, mut p) = ("Yes".to_string(), false);
        apply_cast(Cast::Bool, &mut t, &mut p);
        assert!(p);
        assert_eq!(t, "true");
        let (mut t, mut p) = ("three".to_string(), false);
        apply_cast(Cast::Int, &mut t, &mut p);
        assert!(!p);
    }

    #[test]
    fn embedded_schema_compiles() {
        assert!(validator().is_ok());
    }
}
