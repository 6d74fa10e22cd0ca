//! YAML documents as a small tree whose every node knows where it came from
//! (file, line, column), with anchors, aliases and merge keys (`<<`) resolved
//! and custom tags (`!reset`, `!override`) kept.
//!
//! This module only parses text it is handed; it must never read files or
//! the environment, and never interpret Compose semantics.

use std::fmt;
use std::sync::Arc;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

/// Where a node starts: 1-based line and column.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pos {
    pub file: Arc<str>,
    pub line: u32,
    pub column: u32,
}

impl Pos {
    pub fn new(file: &Arc<str>, line: usize, column0: usize) -> Self {
        Pos {
            file: file.clone(),
            line: u32::try_from(line).unwrap_or(u32::MAX),
            column: u32::try_from(column0 + 1).unwrap_or(u32::MAX),
        }
    }

    /// A position for values that did not come from any file (defaults).
    pub fn none() -> Self {
        Pos {
            file: Arc::from(""),
            line: 0,
            column: 0,
        }
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

#[derive(Clone, Debug)]
pub struct Node {
    pub kind: Kind,
    pub pos: Pos,
    /// A local tag such as `!reset` or `!override` (core-schema tags are
    /// folded into the scalar's type instead).
    pub tag: Option<String>,
}

#[derive(Clone, Debug)]
pub enum Kind {
    Scalar(Scalar),
    Seq(Vec<Node>),
    Map(Vec<Entry>),
}

#[derive(Clone, Debug)]
pub struct Scalar {
    pub text: String,
    /// Plain (unquoted, untagged) scalars are typed by the YAML 1.2 core
    /// schema (null, bool, int, float); quoted ones are always strings.
    pub plain: bool,
}

#[derive(Clone, Debug)]
pub struct Entry {
    pub key: String,
    pub key_pos: Pos,
    pub value: Node,
}

/// A scalar's type under the YAML 1.2 core schema.
#[derive(Clone, Debug, PartialEq)]
pub enum Typed<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(&'a str),
}

impl Scalar {
    pub fn typed(&self) -> Typed<'_> {
        if !self.plain {
            return Typed::Str(&self.text);
        }
        let t = self.text.as_str();
        match t {
            "" | "~" | "null" | "Null" | "NULL" => return Typed::Null,
            "true" | "True" | "TRUE" => return Typed::Bool(true),
            "false" | "False" | "FALSE" => return Typed::Bool(false),
            ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
                return Typed::Float(f64::INFINITY)
            }
            "-.inf" | "-.Inf" | "-.INF" => return Typed::Float(f64::NEG_INFINITY),
            ".nan" | ".NaN" | ".NAN" => return Typed::Float(f64::NAN),
            _ => {}
        }
        if let Some(i) = parse_int(t) {
            return Typed::Int(i);
        }
        if looks_float(t) {
            if let Ok(f) = t.parse::<f64>() {
                return Typed::Float(f);
            }
        }
        Typed::Str(t)
    }
}

fn parse_int(t: &str) -> Option<i64> {
    let (neg, body) = match t.as_bytes().first()? {
        b'-' => (true, &t[1..]),
        b'+' => (false, &t[1..]),
        _ => (false, t),
    };
    let v = if let Some(h) = body.strip_prefix("0x") {
        i64::from_str_radix(h, 16).ok()?
    } else if let Some(o) = body.strip_prefix("0o") {
        i64::from_str_radix(o, 8).ok()?
    } else {
        if body.is_empty() || !body.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        body.parse::<i64>().ok()?
    };
    Some(if neg { -v } else { v })
}

fn looks_float(t: &str) -> bool {
    let body = t.strip_prefix(['-', '+']).unwrap_or(t);
    !body.is_empty()
        && body.bytes().any(|b| b.is_ascii_digit())
        && body
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'))
        && body
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_digit() || b == b'.')
}

impl Node {
    pub fn scalar(text: impl Into<String>, plain: bool, pos: Pos) -> Node {
        Node {
            kind: Kind::Scalar(Scalar {
                text: text.into(),
                plain,
            }),
            pos,
            tag: None,
        }
    }

    pub fn map(entries: Vec<Entry>, pos: Pos) -> Node {
        Node {
            kind: Kind::Map(entries),
            pos,
            tag: None,
        }
    }

    pub fn seq(items: Vec<Node>, pos: Pos) -> Node {
        Node {
            kind: Kind::Seq(items),
            pos,
            tag: None,
        }
    }

    pub fn as_map(&self) -> Option<&[Entry]> {
        match &self.kind {
            Kind::Map(m) => Some(m),
            _ => None,
        }
    }

    pub fn as_seq(&self) -> Option<&[Node]> {
        match &self.kind {
            Kind::Seq(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_scalar(&self) -> Option<&Scalar> {
        match &self.kind {
            Kind::Scalar(s) => Some(s),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(&self.kind, Kind::Scalar(s) if s.typed() == Typed::Null)
    }

    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?
            .iter()
            .find(|e| e.key == key)
            .map(|e| &e.value)
    }

    pub fn get_entry(&self, key: &str) -> Option<&Entry> {
        self.as_map()?.iter().find(|e| e.key == key)
    }

    /// What kind of node this is, for error messages.
    pub fn kind_name(&self) -> &'static str {
        match &self.kind {
            Kind::Map(_) => "a mapping",
            Kind::Seq(_) => "a sequence",
            Kind::Scalar(s) => match s.typed() {
                Typed::Null => "null",
                Typed::Bool(_) => "a boolean",
                Typed::Int(_) => "an integer",
                Typed::Float(_) => "a number",
                Typed::Str(_) => "a string",
            },
        }
    }
}

/// A YAML syntax or structure error with its position.
#[derive(Clone, Debug)]
pub struct YamlError {
    pub pos: Pos,
    pub message: String,
}

/// Most nodes alias expansion may create, against "billion laughs" inputs.
const ALIAS_NODE_LIMIT: usize = 1_000_000;

enum Frame {
    Seq {
        pos: Pos,
        tag: Option<String>,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        pos: Pos,
        tag: Option<String>,
        anchor: usize,
        entries: Vec<Entry>,
        /// Merge-key sources (`<<`), applied when the mapping ends.
        merges: Vec<Node>,
        key: Option<(String, Pos, bool)>,
    },
}

fn count_nodes(n: &Node) -> usize {
    match &n.kind {
        Kind::Scalar(_) => 1,
        Kind::Seq(s) => 1 + s.iter().map(count_nodes).sum::<usize>(),
        Kind::Map(m) => 1 + m.iter().map(|e| count_nodes(&e.value)).sum::<usize>(),
    }
}

/// Parses every document in `src`. Errors in structure (duplicate keys, bad
/// merge keys) are all collected; a syntax error stops parsing.
pub fn parse(src: &str, file: &Arc<str>) -> Result<Vec<Node>, Vec<YamlError>> {
    Ok(parse_documents(src, file)?
        .into_iter()
        .map(|d| d.root)
        .collect())
}

/// One YAML document: where it starts (its `---` when it has one) and its
/// root node.
#[derive(Clone, Debug)]
pub struct Document {
    pub start: Pos,
    pub root: Node,
}

/// Like [`parse`], keeping where each document starts, so a caller that
/// accepts only one document can point at the second.
pub fn parse_documents(src: &str, file: &Arc<str>) -> Result<Vec<Document>, Vec<YamlError>> {
    let mut parser = Parser::new_from_str(src);
    let mut docs = Vec::new();
    let mut starts: Vec<Pos> = Vec::new();
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchors: std::collections::HashMap<usize, Node> = Default::default();
    let mut errors = Vec::new();
    let mut alias_budget = ALIAS_NODE_LIMIT;

    loop {
        let (ev, span): (Event, Span) = match parser.next_event() {
            None => break,
            Some(Ok(e)) => e,
            Some(Err(e)) => {
                let m = e.marker();
                errors.push(YamlError {
                    pos: Pos::new(file, m.line(), m.col()),
                    message: format!("invalid YAML: {}", e.info()),
                });
                return Err(errors);
            }
        };
        let pos = Pos::new(file, span.start.line(), span.start.col());
        let done: Option<Node> = match ev {
            Event::DocumentStart(_) => {
                starts.push(pos.clone());
                None
            }
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => None,
            Event::Alias(id) => match anchors.get(&id) {
                Some(n) => {
                    let c = count_nodes(n);
                    if c > alias_budget {
                        errors.push(YamlError {
                            pos,
                            message: "too many nodes created by aliases".into(),
                        });
                        return Err(errors);
                    }
                    alias_budget -= c;
                    Some(n.clone())
                }
                None => {
                    errors.push(YamlError {
                        pos,
                        message: "alias to an unknown anchor".into(),
                    });
                    return Err(errors);
                }
            },
            Event::Scalar(text, style, anchor, tag) => {
                let mut plain = style == ScalarStyle::Plain;
                let mut local_tag = None;
                if let Some(t) = tag {
                    if t.is_yaml_core_schema() {
                        // `!!str 123` is a string; other core tags keep plain typing.
                        if t.suffix == "str" {
                            plain = false;
                        }
                    } else {
                        local_tag = Some(format!("{}{}", t.handle, t.suffix));
                    }
                }
                let n = Node {
                    kind: Kind::Scalar(Scalar {
                        text: text.into_owned(),
                        plain,
                    }),
                    pos,
                    tag: local_tag,
                };
                if anchor > 0 {
                    anchors.insert(anchor, n.clone());
                }
                Some(n)
            }
            Event::SequenceStart(anchor, tag) => {
                stack.push(Frame::Seq {
                    pos,
                    tag: tag.and_then(|t| local(&t)),
                    anchor,
                    items: Vec::new(),
                });
                None
            }
            Event::MappingStart(anchor, tag) => {
                stack.push(Frame::Map {
                    pos,
                    tag: tag.and_then(|t| local(&t)),
                    anchor,
                    entries: Vec::new(),
                    merges: Vec::new(),
                    key: None,
                });
                None
            }
            Event::SequenceEnd => match stack.pop() {
                Some(Frame::Seq {
                    pos,
                    tag,
                    anchor,
                    items,
                }) => {
                    let n = Node {
                        kind: Kind::Seq(items),
                        pos,
                        tag,
                    };
                    if anchor > 0 {
                        anchors.insert(anchor, n.clone());
                    }
                    Some(n)
                }
                _ => None,
            },
            Event::MappingEnd => match stack.pop() {
                Some(Frame::Map {
                    pos,
                    tag,
                    anchor,
                    mut entries,
                    merges,
                    ..
                }) => {
                    apply_merges(&mut entries, merges, &mut errors);
                    let n = Node {
                        kind: Kind::Map(entries),
                        pos,
                        tag,
                    };
                    if anchor > 0 {
                        anchors.insert(anchor, n.clone());
                    }
                    Some(n)
                }
                _ => None,
            },
        };
        let Some(node) = done else { continue };
        match stack.last_mut() {
            None => docs.push(Document {
                start: starts.last().cloned().unwrap_or_else(|| node.pos.clone()),
                root: node,
            }),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map {
                entries,
                merges,
                key,
                ..
            }) => match key.take() {
                None => match &node.kind {
                    Kind::Scalar(s) => {
                        *key = Some((s.text.clone(), node.pos.clone(), s.plain));
                    }
                    _ => {
                        errors.push(YamlError {
                            pos: node.pos.clone(),
                            message: "mapping keys must be scalars".into(),
                        });
                        *key = Some((String::new(), node.pos.clone(), false));
                    }
                },
                Some((k, kpos, plain)) => {
                    if k == "<<" && plain {
                        merges.push(node);
                    } else if entries.iter().any(|e| e.key == k) {
                        errors.push(YamlError {
                            pos: kpos,
                            message: format!("duplicate key {k:?}"),
                        });
                    } else {
                        entries.push(Entry {
                            key: k,
                            key_pos: kpos,
                            value: node,
                        });
                    }
                }
            },
        }
    }
    if errors.is_empty() {
        Ok(docs)
    } else {
        Err(errors)
    }
}

fn local(t: &saphyr_parser::Tag) -> Option<String> {
    if t.is_yaml_core_schema() {
        None
    } else {
        Some(format!("{}{}", t.handle, t.suffix))
    }
}

/// YAML merge keys: explicit keys win; among several merged mappings the
/// earlier one wins.
fn apply_merges(entries: &mut Vec<Entry>, merges: Vec<Node>, errors: &mut Vec<YamlError>) {
    for m in merges {
        let sources: Vec<Node> = match m.kind {
            Kind::Map(_) => vec![m],
            Kind::Seq(items) => items,
            Kind::Scalar(_) => {
                errors.push(YamlError {
                    pos: m.pos,
                    message: "merge key (<<) needs a mapping or a list of mappings".into(),
                });
                continue;
            }
        };
        for src in sources {
            match src.kind {
                Kind::Map(es) => {
                    for e in es {
                        if !entries.iter().any(|x| x.key == e.key) {
                            entries.push(e);
                        }
                    }
                }
                _ => errors.push(YamlError {
                    pos: src.pos,
                    message: "merge key (<<) needs a mapping or a list of mappings".into(),
                }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_anchors_and_merge_keys() {
        let f: Arc<str> = Arc::from("t.yaml");
        let src = "x-base: &b\n  a: 1\n  b: two\nsvc:\n  <<: *b\n  b: three\n  c: \"4\"\n";
        let docs = parse(src, &f).unwrap();
        let root = &docs[0];
        let svc = root.get("svc").unwrap();
        assert_eq!(svc.get("b").unwrap().as_scalar().unwrap().text, "three");
        let a = svc.get("a").unwrap();
        assert_eq!(a.as_scalar().unwrap().typed(), Typed::Int(1));
        assert_eq!((a.pos.line, a.pos.column), (2, 6));
        assert_eq!(
            svc.get("c").unwrap().as_scalar().unwrap().typed(),
            Typed::Str("4")
        );
        let e = svc.get_entry("c").unwrap();
        assert_eq!((e.key_pos.line, e.key_pos.column), (7, 3));
    }

    #[test]
    fn duplicate_keys_and_tags() {
        let f: Arc<str> = Arc::from("t.yaml");
        let errs = parse("a: 1\nb: 2\na: 3\n", &f).unwrap_err();
        assert_eq!(errs[0].pos.line, 3);
        let docs = parse("ports: !reset []\n", &f).unwrap();
        assert_eq!(docs[0].get("ports").unwrap().tag.as_deref(), Some("!reset"));
    }

    #[test]
    fn syntax_error_has_position() {
        let f: Arc<str> = Arc::from("t.yaml");
        let errs = parse("a: [1, 2\nb: 3\n", &f).unwrap_err();
        assert!(errs[0].message.starts_with("invalid YAML"));
        assert!(errs[0].pos.line >= 1);
    }
}
