//! Compose file loader: reads the Compose files it is given (YAML with
//! source positions, anchors, merge keys, `x-` blocks), interpolates
//! variables from the environment map it is handed plus `.env`/`--env-file`,
//! merges several files, applies profiles, validates, and converts the
//! result into the cluster's `StackSpec`; plus the dependency graph.
//!
//! Pure: it reads only the Compose files, env files and `.env` it is pointed
//! at, never the process environment, the network or a daemon. Every error
//! is reported with `FILE:LINE:COLUMN: path: message`, and all of them are
//! collected rather than stopping at the first.

pub mod config;
pub mod convert;
pub mod dotenv;
pub mod graph;
mod include;
pub mod interp;
pub mod merge;
pub mod pin;
pub mod schema;
pub mod yaml;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use flotilla_proto::v1::StackSpec;

pub use config::{to_compose_json, to_compose_yaml};
pub use graph::{start_order, stop_order, DependencyGraph, GraphError};
use include::Reader;
pub use pin::{images_to_pin, pin_images, ImagePin};
use yaml::{Kind, Node, Pos};

/// File names looked for in the working directory when no `-f` is given, in
/// order of preference, each with its override file.
pub const DEFAULT_FILES: [(&str, &str); 4] = [
    ("compose.yaml", "compose.override.yaml"),
    ("compose.yml", "compose.override.yml"),
    ("docker-compose.yaml", "docker-compose.override.yaml"),
    ("docker-compose.yml", "docker-compose.override.yml"),
];

/// What `flotilla up`/`config` were told on the command line.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// `-f` files in order; empty: the default names in `working_dir`
    /// (or `COMPOSE_FILE` from `env`), plus the matching override file.
    pub files: Vec<PathBuf>,
    pub working_dir: PathBuf,
    /// `--project-directory`; default: the first file's directory.
    pub project_dir: Option<PathBuf>,
    /// `-p`.
    pub project_name: Option<String>,
    /// The shell environment (wins over every env file).
    pub env: BTreeMap<String, String>,
    /// `--env-file`, in order (later wins); empty: `.env` in the project dir.
    pub env_files: Vec<PathBuf>,
    /// `--profile` (also `COMPOSE_PROFILES`; `*` enables every profile).
    pub profiles: Vec<String>,
    /// Services named on the command line: their profiles become active.
    pub services: Vec<String>,
    /// `false`: `--no-interpolate`.
    pub interpolate: bool,
}

impl LoadOptions {
    /// Options for a directory with default file discovery and interpolation.
    pub fn new(working_dir: impl Into<PathBuf>) -> Self {
        LoadOptions {
            working_dir: working_dir.into(),
            interpolate: true,
            ..Default::default()
        }
    }
}

/// A loaded project.
#[derive(Debug, Clone)]
pub struct Project {
    pub name: String,
    /// The project directory (relative paths were resolved against it).
    pub working_dir: PathBuf,
    pub files: Vec<PathBuf>,
    pub spec: StackSpec,
    /// The merged, interpolated Compose document with profile-disabled
    /// services removed: the source for `config` output.
    pub model: Node,
    /// The variables interpolation saw (env files overlaid by the shell).
    pub environment: BTreeMap<String, String>,
    /// Services left out because none of their profiles is active.
    pub disabled_services: Vec<String>,
    /// Things Compose warns about (unset variables, obsolete `version`).
    pub warnings: Vec<String>,
}

/// One located problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    /// File as shown to the user (relative to the working dir when inside it);
    /// empty when the problem has no file (e.g. a bad `-p`).
    pub file: String,
    pub line: u32,
    pub column: u32,
    /// Where in the document: `services.web.ports[1]`; may be empty.
    pub path: String,
    pub message: String,
}

impl LoadError {
    pub fn at(pos: &Pos, path: impl Into<String>, message: impl Into<String>) -> Self {
        LoadError {
            file: pos.file.to_string(),
            line: pos.line,
            column: pos.column,
            path: path.into(),
            message: message.into(),
        }
    }

    pub fn general(path: impl Into<String>, message: impl Into<String>) -> Self {
        LoadError {
            file: String::new(),
            line: 0,
            column: 0,
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.file.is_empty() {
            if self.line > 0 {
                write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
            } else {
                write!(f, "{}: ", self.file)?;
            }
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found, one per line when displayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadErrors(pub Vec<LoadError>);

impl fmt::Display for LoadErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadErrors {}

impl From<LoadError> for LoadErrors {
    fn from(e: LoadError) -> Self {
        LoadErrors(vec![e])
    }
}

/// Loads a project for deploying: keys Flotilla cannot run yet are refused.
pub fn load(opts: &LoadOptions) -> Result<Project, LoadErrors> {
    load_with(opts, convert::Mode::Deploy)
}

/// Loads a project for `config`: every valid Compose key is accepted (also
/// `build:` and keys Flotilla cannot run yet); the spec is best effort.
pub fn load_for_config(opts: &LoadOptions) -> Result<Project, LoadErrors> {
    load_with(opts, convert::Mode::Config)
}

fn load_with(opts: &LoadOptions, mode: convert::Mode) -> Result<Project, LoadErrors> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let wd = &opts.working_dir;
    let files = resolve_files(opts)?;
    let project_dir = match &opts.project_dir {
        Some(p) => absolute(wd, p),
        None => files
            .first()
            .and_then(|f| f.parent())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| wd.clone()),
    };

    // Interpolation environment: env files, overlaid by the shell.
    let mut environment: BTreeMap<String, String> = BTreeMap::new();
    let env_files: Vec<(PathBuf, bool)> = if opts.env_files.is_empty() {
        vec![(project_dir.join(".env"), false)]
    } else {
        opts.env_files
            .iter()
            .map(|p| (absolute(wd, p), true))
            .collect()
    };
    for (path, required) in env_files {
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => continue,
            Err(e) => {
                errors.push(LoadError::general(
                    "",
                    format!("reading env file {}: {e}", display_path(&path, wd)),
                ));
                continue;
            }
        };
        let look = |k: &str| {
            opts.env
                .get(k)
                .cloned()
                .or_else(|| environment.get(k).cloned())
        };
        match dotenv::parse(&text, &look) {
            Ok(vars) => environment.extend(vars),
            Err(e) => errors.push(LoadError {
                file: display_path(&path, wd),
                line: u32::try_from(e.line).unwrap_or(u32::MAX),
                column: 1,
                path: String::new(),
                message: e.message,
            }),
        }
    }
    environment.extend(opts.env.iter().map(|(k, v)| (k.clone(), v.clone())));

    // Parse, interpolate and merge every file (with its includes and extends).
    let mut reader = Reader {
        wd,
        env: std::borrow::Cow::Borrowed(&environment),
        interpolate: opts.interpolate,
        errors: &mut errors,
        warnings: &mut warnings,
        stack: Vec::new(),
    };
    let mut merged: Option<Node> = None;
    for path in &files {
        if let Some(doc) = reader.read(path, None) {
            merged = Some(match merged.take() {
                None => merge::strip_node(doc),
                Some(base) => merge::merge(base, doc),
            });
        }
    }
    let Some(model) = merged else {
        return Err(LoadErrors(errors));
    };
    if !errors.is_empty() {
        // Syntax and interpolation errors make the rest unreliable.
        return Err(LoadErrors(errors));
    }

    let name = match project_name(opts, &environment, &model, &project_dir) {
        Ok(n) => n,
        Err(e) => {
            errors.push(e);
            String::new()
        }
    };

    // The schema first; the converter's own checks add what the schema
    // cannot see, without repeating a problem at a place already reported.
    let schema_errors = schema::validate(&model);
    let input = convert::Input {
        mode,
        name,
        project_dir,
        files,
        environment,
        profiles: active_profiles(opts),
        services: opts.services.clone(),
        errors,
        warnings,
    };
    let converted = convert::convert(model, input);
    if schema_errors.is_empty() {
        return converted;
    }
    let mut all = schema_errors;
    if let Err(LoadErrors(more)) = converted {
        for e in more {
            // Same place, or the schema already said something more precise
            // inside the value the converter complains about.
            let seen = all.iter().any(|s| {
                (s.file == e.file && s.line == e.line && s.column == e.column && s.line > 0)
                    || (!e.path.is_empty()
                        && (s.path == e.path
                            || s.path.starts_with(&format!("{}.", e.path))
                            || s.path.starts_with(&format!("{}[", e.path))))
            });
            if !seen {
                all.push(e);
            }
        }
    }
    // In reading order, so the first line is the first problem in the file.
    all.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
    Err(LoadErrors(all))
}

fn active_profiles(opts: &LoadOptions) -> Vec<String> {
    let mut p = opts.profiles.clone();
    if p.is_empty() {
        if let Some(v) = opts.env.get("COMPOSE_PROFILES") {
            p.extend(
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from),
            );
        }
    }
    p
}

fn absolute(wd: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        wd.join(p)
    }
}

/// The path as shown in messages: relative to the working dir when inside it.
pub fn display_path(p: &Path, wd: &Path) -> String {
    p.strip_prefix(wd)
        .ok()
        .filter(|r| !r.as_os_str().is_empty())
        .unwrap_or(p)
        .display()
        .to_string()
}

fn resolve_files(opts: &LoadOptions) -> Result<Vec<PathBuf>, LoadErrors> {
    let wd = &opts.working_dir;
    let mut given: Vec<PathBuf> = opts.files.clone();
    if given.is_empty() {
        if let Some(cf) = opts.env.get("COMPOSE_FILE").filter(|s| !s.is_empty()) {
            let sep = opts
                .env
                .get("COMPOSE_PATH_SEPARATOR")
                .and_then(|s| s.chars().next())
                .unwrap_or(':');
            given = cf.split(sep).map(PathBuf::from).collect();
        }
    }
    if !given.is_empty() {
        let mut out = Vec::new();
        for f in given {
            if f.as_os_str() == "-" {
                return Err(LoadError::general(
                    "",
                    "reading a Compose file from standard input is not supported yet",
                )
                .into());
            }
            out.push(absolute(wd, &f));
        }
        return Ok(out);
    }
    for (main, over) in DEFAULT_FILES {
        let m = wd.join(main);
        if m.is_file() {
            let mut v = vec![m];
            let o = wd.join(over);
            if o.is_file() {
                v.push(o);
            }
            return Ok(v);
        }
    }
    Err(LoadError::general(
        "",
        format!(
            "no Compose file found in {} (looked for {})",
            wd.display(),
            DEFAULT_FILES.map(|(m, _)| m).join(", ")
        ),
    )
    .into())
}

/// Compose's project-name normalisation: lowercase, only `[a-z0-9_-]`,
/// starting with a letter or digit. `None` if nothing is left.
pub fn normalize_project_name(raw: &str) -> Option<String> {
    let s: String = raw
        .to_lowercase()
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-')
        .collect();
    let s = s.trim_start_matches(['_', '-']).to_string();
    (!s.is_empty()).then_some(s)
}

fn valid_project_name(s: &str) -> bool {
    normalize_project_name(s).as_deref() == Some(s)
}

fn project_name(
    opts: &LoadOptions,
    env: &BTreeMap<String, String>,
    model: &Node,
    project_dir: &Path,
) -> Result<String, LoadError> {
    if let Some(p) = &opts.project_name {
        return if valid_project_name(p) {
            Ok(p.clone())
        } else {
            Err(LoadError::general(
                "",
                format!("invalid project name {p:?}: it must contain only lowercase letters, digits, dashes and underscores, and start with a letter or digit"),
            ))
        };
    }
    if let Some(p) = env.get("COMPOSE_PROJECT_NAME").filter(|s| !s.is_empty()) {
        return if valid_project_name(p) {
            Ok(p.clone())
        } else {
            Err(LoadError::general(
                "COMPOSE_PROJECT_NAME",
                format!("invalid project name {p:?}: it must contain only lowercase letters, digits, dashes and underscores, and start with a letter or digit"),
            ))
        };
    }
    if let Some(n) = model.get("name") {
        let text = n.as_scalar().map(|s| s.text.clone()).unwrap_or_default();
        return if valid_project_name(&text) {
            Ok(text)
        } else {
            Err(LoadError::at(
                &n.pos,
                "name",
                format!("invalid project name {text:?}: it must contain only lowercase letters, digits, dashes and underscores, and start with a letter or digit"),
            ))
        };
    }
    let dir = project_dir
        .file_name()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    normalize_project_name(&dir).ok_or_else(|| {
        LoadError::general(
            "",
            format!(
                "cannot derive a project name from the directory {}; set one with -p or `name:`",
                project_dir.display()
            ),
        )
    })
}

pub(crate) fn interpolate_tree(
    n: &mut Node,
    path: &mut String,
    env: &BTreeMap<String, String>,
    unset: &mut Vec<String>,
    errors: &mut Vec<LoadError>,
) {
    match &mut n.kind {
        Kind::Scalar(s) => {
            if s.text.contains('$') {
                let look = |k: &str| env.get(k).cloned();
                match interp::interpolate(&s.text, &look, unset) {
                    Ok(v) => {
                        s.text = v;
                        // The result is a string, except where Compose casts it.
                        s.plain = false;
                        if let Some(c) = schema::cast_for(path) {
                            schema::apply_cast(c, &mut s.text, &mut s.plain);
                        }
                    }
                    Err(m) => errors.push(LoadError::at(&n.pos, path.clone(), m)),
                }
            }
        }
        Kind::Seq(items) => {
            for (i, it) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                interpolate_tree(it, path, env, unset, errors);
                path.truncate(len);
            }
        }
        Kind::Map(entries) => {
            for e in entries.iter_mut() {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(&e.key);
                interpolate_tree(&mut e.value, path, env, unset, errors);
                path.truncate(len);
            }
        }
    }
}
