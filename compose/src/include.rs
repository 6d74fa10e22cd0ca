//! Reading one Compose file into a single tree: its one YAML document
//! (several are refused), interpolated, with `include:` files pulled in and `extends:`
//! services resolved, and include/extends cycles reported by name.
//!
//! Reads only the Compose files named by the user or by those files
//! (`include`, `extends.file`); never the process environment.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::yaml::{Entry, Kind, Node, Pos};
use crate::{display_path, interpolate_tree, merge, yaml, LoadError};

pub(crate) struct Reader<'a> {
    pub wd: &'a Path,
    /// Interpolation variables; an included file sees its own `.env` too.
    pub env: std::borrow::Cow<'a, BTreeMap<String, String>>,
    pub interpolate: bool,
    pub errors: &'a mut Vec<LoadError>,
    pub warnings: &'a mut Vec<String>,
    /// Files being read, outermost first (for cycle detection).
    pub stack: Vec<PathBuf>,
}

const SECTIONS: [&str; 5] = ["services", "networks", "volumes", "secrets", "configs"];

fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

impl Reader<'_> {
    /// Reads `path`; `from` is the include/extends entry that named it.
    pub fn read(&mut self, path: &Path, from: Option<(&Pos, &str)>) -> Option<Node> {
        self.read_in(path, from, None)
    }

    /// Reads `path` with its relative paths resolved against `project_dir`
    /// (an include's `project_directory`), or else against its own directory.
    fn read_in(
        &mut self,
        path: &Path,
        from: Option<(&Pos, &str)>,
        project_dir: Option<&Path>,
    ) -> Option<Node> {
        let canon = canonical(path);
        if let Some(i) = self.stack.iter().position(|p| *p == canon) {
            let mut names: Vec<String> = self.stack[i..]
                .iter()
                .map(|p| display_path(p, self.wd))
                .collect();
            names.push(display_path(&canon, self.wd));
            let msg = format!("include cycle: {}", names.join(" -> "));
            match from {
                Some((pos, p)) => self.errors.push(LoadError::at(pos, p, msg)),
                None => self.errors.push(LoadError::general("", msg)),
            }
            return None;
        }
        let mut doc = self.parse_file(path, from)?;
        self.stack.push(canon);
        let dir = match project_dir {
            Some(d) => d.to_path_buf(),
            None => path.parent().map(Path::to_path_buf).unwrap_or_default(),
        };
        if from.is_some() {
            // Included and extended files resolve their relative paths
            // against their own directory, not the project's.
            rebase(&mut doc, &dir);
        }
        let doc = self.resolve_includes(doc, &dir);
        let doc = self.resolve_extends(doc, &dir);
        self.stack.pop();
        Some(doc)
    }

    fn parse_file(&mut self, path: &Path, from: Option<(&Pos, &str)>) -> Option<Node> {
        let shown: Arc<str> = Arc::from(display_path(path, self.wd));
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                let msg = format!("reading Compose file {shown}: {e}");
                match from {
                    Some((pos, p)) => self.errors.push(LoadError::at(pos, p, msg)),
                    None => self.errors.push(LoadError::general("", msg)),
                }
                return None;
            }
        };
        let docs = match yaml::parse_documents(&text, &shown) {
            Ok(d) => d,
            Err(es) => {
                self.errors
                    .extend(es.into_iter().map(|e| LoadError::at(&e.pos, "", e.message)));
                return None;
            }
        };
        // Several documents in one file are refused rather than merged: which
        // one wins is not obvious to a reader, and Compose's own rule differs
        // between versions.
        if let Some(second) = docs.get(1) {
            self.errors.push(LoadError::at(
                &second.start,
                "",
                "multiple YAML documents are not supported",
            ));
            return None;
        }
        let Some(mut doc) = docs
            .into_iter()
            .next()
            .map(|d| d.root)
            .filter(|d| !d.is_null())
        else {
            self.errors.push(LoadError::general(
                "",
                format!("{shown}: empty Compose file"),
            ));
            return None;
        };
        if doc.as_map().is_none() {
            self.errors.push(LoadError::at(
                &doc.pos,
                "",
                format!("a Compose file must be a mapping, not {}", doc.kind_name()),
            ));
            return None;
        }
        if self.interpolate {
            let mut unset = Vec::new();
            interpolate_tree(
                &mut doc,
                &mut String::new(),
                &self.env,
                &mut unset,
                self.errors,
            );
            for u in unset {
                let w = format!("the {u:?} variable is not set; defaulting to a blank string");
                if !self.warnings.contains(&w) {
                    self.warnings.push(w);
                }
            }
        }
        Some(doc)
    }

    fn resolve_includes(&mut self, mut doc: Node, dir: &Path) -> Node {
        let Kind::Map(top) = &mut doc.kind else {
            return doc;
        };
        let Some(i) = top.iter().position(|e| e.key == "include") else {
            return doc;
        };
        let inc = top.remove(i);
        let items: Vec<Node> = match inc.value.kind {
            Kind::Seq(s) => s,
            _ => {
                self.errors
                    .push(LoadError::at(&inc.value.pos, "include", "must be a list"));
                return doc;
            }
        };
        for (n, it) in items.iter().enumerate() {
            let p = format!("include[{n}]");
            let paths: Vec<(String, Pos)> = match &it.kind {
                Kind::Scalar(s) => vec![(s.text.clone(), it.pos.clone())],
                Kind::Map(m) => {
                    for e in m {
                        match e.key.as_str() {
                            "path" => {}
                            k if k.starts_with("x-") => {}
                            "env_file" | "project_directory" => {}
                            k => self.errors.push(LoadError::at(
                                &e.key_pos,
                                format!("{p}.{k}"),
                                format!("unknown key {k:?}"),
                            )),
                        }
                    }
                    match it.get("path").map(|x| &x.kind) {
                        Some(Kind::Scalar(s)) => vec![(s.text.clone(), it.pos.clone())],
                        Some(Kind::Seq(v)) => v
                            .iter()
                            .filter_map(|x| x.as_scalar().map(|s| (s.text.clone(), x.pos.clone())))
                            .collect(),
                        _ => {
                            self.errors.push(LoadError::at(
                                &it.pos,
                                p.clone(),
                                "missing key \"path\"",
                            ));
                            continue;
                        }
                    }
                }
                Kind::Seq(_) => {
                    self.errors.push(LoadError::at(
                        &it.pos,
                        p.clone(),
                        "must be a string or a mapping",
                    ));
                    continue;
                }
            };
            // The included project's directory: `project_directory` (relative
            // to the including file), else the first included file's folder.
            let first_dir = match it.get("project_directory") {
                Some(d) => match d.as_scalar() {
                    Some(s) if !d.is_null() => {
                        crate::convert::clean_path(&dir.join(&s.text)).into()
                    }
                    _ => {
                        self.errors.push(LoadError::at(
                            &d.pos,
                            format!("{p}.project_directory"),
                            format!("must be a string, not {}", d.kind_name()),
                        ));
                        continue;
                    }
                },
                None => paths
                    .first()
                    .and_then(|(f, _)| dir.join(f).parent().map(Path::to_path_buf))
                    .unwrap_or_else(|| dir.to_path_buf()),
            };
            // The included project's env files fill in variables the
            // including side does not set (Compose's order).
            let env_files: Vec<(PathBuf, bool)> = match it.get("env_file").map(|x| &x.kind) {
                Some(Kind::Scalar(s)) => vec![(dir.join(&s.text), true)],
                Some(Kind::Seq(v)) => v
                    .iter()
                    .filter_map(|x| x.as_scalar().map(|s| (dir.join(&s.text), true)))
                    .collect(),
                _ => vec![(first_dir.join(".env"), false)],
            };
            let mut env = self.env.clone().into_owned();
            for (f, required) in env_files {
                let text = match std::fs::read_to_string(&f) {
                    Ok(t) => t,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => continue,
                    Err(e) => {
                        self.errors.push(LoadError::at(
                            &it.pos,
                            format!("{p}.env_file"),
                            format!("reading env file {}: {e}", display_path(&f, self.wd)),
                        ));
                        continue;
                    }
                };
                let look = |k: &str| env.get(k).cloned();
                match crate::dotenv::parse(&text, &look) {
                    Ok(vars) => {
                        for (k, v) in vars {
                            env.entry(k).or_insert(v);
                        }
                    }
                    Err(e) => self.errors.push(LoadError::at(
                        &it.pos,
                        format!("{p}.env_file"),
                        format!("{}:{}: {}", display_path(&f, self.wd), e.line, e.message),
                    )),
                }
            }
            let saved = std::mem::replace(&mut self.env, std::borrow::Cow::Owned(env));
            let mut included: Option<Node> = None;
            for (file, pos) in paths {
                let full = dir.join(&file);
                if let Some(d) = self.read_in(&full, Some((&pos, &p)), Some(&first_dir)) {
                    included = Some(match included.take() {
                        None => d,
                        Some(b) => merge::merge(b, d),
                    });
                }
            }
            self.env = saved;
            let Some(included) = included else { continue };
            self.add_included(top, included, &it.pos, &p);
        }
        doc
    }

    /// Adds an included model's resources; a name defined on both sides is a conflict.
    fn add_included(&mut self, top: &mut Vec<Entry>, included: Node, pos: &Pos, p: &str) {
        let Kind::Map(inc_top) = included.kind else {
            return;
        };
        for sec in inc_top {
            if !SECTIONS.contains(&sec.key.as_str()) {
                continue;
            }
            let Kind::Map(items) = sec.value.kind else {
                continue;
            };
            let target = match top.iter().position(|e| e.key == sec.key) {
                Some(i) => i,
                None => {
                    top.push(Entry {
                        key: sec.key.clone(),
                        key_pos: sec.key_pos.clone(),
                        value: Node::map(Vec::new(), sec.key_pos.clone()),
                    });
                    top.len() - 1
                }
            };
            let Kind::Map(existing) = &mut top[target].value.kind else {
                continue;
            };
            for item in items {
                if existing.iter().any(|e| e.key == item.key) {
                    self.errors.push(LoadError::at(
                        pos,
                        p,
                        format!(
                            "{}.{} is defined both in the including file and in {}",
                            sec.key, item.key, item.key_pos.file
                        ),
                    ));
                } else {
                    existing.push(item);
                }
            }
        }
    }

    fn resolve_extends(&mut self, mut doc: Node, dir: &Path) -> Node {
        let names: Vec<String> = doc
            .get("services")
            .and_then(Node::as_map)
            .map(|m| m.iter().map(|e| e.key.clone()).collect())
            .unwrap_or_default();
        let mut done: BTreeMap<String, Node> = BTreeMap::new();
        for name in &names {
            let mut visiting = Vec::new();
            self.resolve_service(&doc, name, dir, &mut done, &mut visiting);
        }
        if let Some(Kind::Map(services)) = services_mut(&mut doc) {
            for e in services.iter_mut() {
                if let Some(n) = done.remove(&e.key) {
                    e.value = n;
                }
            }
        }
        doc
    }

    /// The service `name` of `doc` with its `extends` chain merged in.
    fn resolve_service(
        &mut self,
        doc: &Node,
        name: &str,
        dir: &Path,
        done: &mut BTreeMap<String, Node>,
        visiting: &mut Vec<String>,
    ) -> Option<Node> {
        if let Some(n) = done.get(name) {
            return Some(n.clone());
        }
        let entry = doc.get("services")?.get_entry(name)?.clone();
        let mut own = entry.value.clone();
        let Some(ext) = take_key(&mut own, "extends") else {
            done.insert(name.to_string(), own.clone());
            return Some(own);
        };
        let p = format!("services.{name}.extends");
        if visiting.iter().any(|v| v == name) {
            let mut chain = visiting.clone();
            chain.push(name.to_string());
            self.errors.push(LoadError::at(
                &ext.key_pos,
                p,
                format!("extends cycle: {}", chain.join(" -> ")),
            ));
            return None;
        }
        let (base_name, file) = match &ext.value.kind {
            Kind::Scalar(s) => (s.text.clone(), None),
            Kind::Map(_) => {
                for e in ext.value.as_map().unwrap_or(&[]) {
                    if !matches!(e.key.as_str(), "service" | "file") {
                        self.errors.push(LoadError::at(
                            &e.key_pos,
                            format!("{p}.{}", e.key),
                            format!("unknown key {:?}", e.key),
                        ));
                    }
                }
                let Some(svc) = ext.value.get("service").and_then(Node::as_scalar) else {
                    self.errors
                        .push(LoadError::at(&ext.value.pos, p, "missing key \"service\""));
                    return None;
                };
                let file = ext
                    .value
                    .get("file")
                    .and_then(Node::as_scalar)
                    .map(|s| (s.text.clone(), ext.value.pos.clone()));
                (svc.text.clone(), file)
            }
            Kind::Seq(_) => {
                self.errors.push(LoadError::at(
                    &ext.value.pos,
                    p,
                    "must be a string or a mapping",
                ));
                return None;
            }
        };
        let base = match file {
            None => {
                if doc
                    .get("services")
                    .and_then(|s| s.get(&base_name))
                    .is_none()
                {
                    self.errors.push(LoadError::at(
                        &ext.value.pos,
                        p,
                        format!("unknown service {base_name:?}"),
                    ));
                    return None;
                }
                visiting.push(name.to_string());
                let b = self.resolve_service(doc, &base_name, dir, done, visiting);
                visiting.pop();
                b?
            }
            Some((f, pos)) => {
                let full = dir.join(&f);
                let other = self.read(&full, Some((&pos, &p)))?;
                match other.get("services").and_then(|s| s.get(&base_name)) {
                    Some(b) => b.clone(),
                    None => {
                        self.errors.push(LoadError::at(
                            &pos,
                            p,
                            format!("unknown service {base_name:?} in {f}"),
                        ));
                        return None;
                    }
                }
            }
        };
        let merged = merge::merge_service(base, own);
        done.insert(name.to_string(), merged.clone());
        Some(merged)
    }
}

fn services_mut(doc: &mut Node) -> Option<&mut Kind> {
    let Kind::Map(top) = &mut doc.kind else {
        return None;
    };
    top.iter_mut()
        .find(|e| e.key == "services")
        .map(|e| &mut e.value.kind)
}

fn take_key(n: &mut Node, key: &str) -> Option<Entry> {
    let Kind::Map(m) = &mut n.kind else {
        return None;
    };
    let i = m.iter().position(|e| e.key == key)?;
    Some(m.remove(i))
}

fn rebased(dir: &Path, p: &str) -> Option<String> {
    let rel = p.starts_with("./") || p.starts_with("../") || p == "." || p == "..";
    let plain_rel = !p.starts_with('/') && !p.starts_with('~') && !p.contains("://");
    (rel || plain_rel).then(|| dir.join(p).display().to_string())
}

fn set_text(n: &mut Node, f: impl Fn(&str) -> Option<String>) {
    if let Kind::Scalar(s) = &mut n.kind {
        if let Some(v) = f(&s.text) {
            s.text = v;
            s.plain = false;
        }
    }
}

fn value_mut<'a>(n: &'a mut Node, key: &str) -> Option<&'a mut Node> {
    let Kind::Map(m) = &mut n.kind else {
        return None;
    };
    m.iter_mut().find(|e| e.key == key).map(|e| &mut e.value)
}

/// Makes the relative host paths of a file absolute against `dir`.
fn rebase(doc: &mut Node, dir: &Path) {
    if let Some(Kind::Map(services)) = value_mut(doc, "services").map(|n| &mut n.kind) {
        for svc in services.iter_mut() {
            let svc = &mut svc.value;
            if let Some(ef) = value_mut(svc, "env_file") {
                match &mut ef.kind {
                    Kind::Seq(items) => {
                        for it in items {
                            if let Some(p) = value_mut(it, "path") {
                                set_text(p, |t| rebased(dir, t));
                            } else {
                                set_text(it, |t| rebased(dir, t));
                            }
                        }
                    }
                    _ => set_text(ef, |t| rebased(dir, t)),
                }
            }
            if let Some(b) = value_mut(svc, "build") {
                if let Some(c) = value_mut(b, "context") {
                    set_text(c, |t| rebased(dir, t));
                } else {
                    set_text(b, |t| rebased(dir, t));
                }
            }
            if let Some(Kind::Seq(vols)) = value_mut(svc, "volumes").map(|n| &mut n.kind) {
                for v in vols {
                    if v.as_map().is_some() {
                        let bind = v
                            .get("type")
                            .and_then(Node::as_scalar)
                            .map(|s| s.text.as_str())
                            == Some("bind");
                        if bind {
                            if let Some(src) = value_mut(v, "source") {
                                set_text(src, |t| rebased(dir, t));
                            }
                        }
                    } else {
                        set_text(v, |t| {
                            let (src, rest) = t.split_once(':')?;
                            if src.starts_with('.') {
                                Some(format!("{}:{rest}", dir.join(src).display()))
                            } else {
                                None
                            }
                        });
                    }
                }
            }
        }
    }
    for sec in ["secrets", "configs"] {
        if let Some(Kind::Map(items)) = value_mut(doc, sec).map(|n| &mut n.kind) {
            for it in items {
                if let Some(f) = value_mut(&mut it.value, "file") {
                    set_text(f, |t| rebased(dir, t));
                }
            }
        }
    }
}
