//! Getting images onto the nodes from registries: `flotilla pull` and
//! `flotilla push` for a Compose project's images, the pull and push the
//! `image` verbs share, registry credentials from a docker-style
//! `config.json`, and the per-service `pull_policy` that `up` applies
//! before it deploys (`ensure_images`).
//!
//! Must never send a registry's credentials to another registry, print
//! them, or start anything: it only pulls, pushes and pins images.

use crate::client::{self, Control};
use crate::opts::{FileArgs, Global};
use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use clap::Args;
use flotilla_proto::v1 as pb;
use flotilla_runtime::image::reference;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use tokio_stream::StreamExt;

#[derive(Args, Debug)]
pub struct PullArgs {
    #[command(flatten)]
    pub file: FileArgs,
    /// Carry on when an image cannot be pulled.
    #[arg(long)]
    pub ignore_pull_failures: bool,
    /// Print no progress.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Services whose images to pull (default: all).
    pub services: Vec<String>,
}

#[derive(Args, Debug)]
pub struct PushArgs {
    #[command(flatten)]
    pub file: FileArgs,
    /// Carry on when an image cannot be pushed.
    #[arg(long)]
    pub ignore_push_failures: bool,
    /// Print no progress.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Services whose images to push (default: all).
    pub services: Vec<String>,
}

// ---------------------------------------------------------------------------
// Registry credentials

#[derive(Deserialize, Default)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

/// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
fn docker_config_path() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(d).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
}

/// `https://index.docker.io/v1/`, `docker.io`, `http://host:5000/` → one
/// comparable registry key.
fn registry_key(k: &str) -> String {
    let k = k
        .strip_prefix("https://")
        .or_else(|| k.strip_prefix("http://"))
        .unwrap_or(k);
    let host = k.split('/').next().unwrap_or(k);
    match host {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            reference::DEFAULT_DOMAIN.to_string()
        }
        h => h.to_string(),
    }
}

/// The registry (`host[:port]`, `docker.io`) an image reference lives in.
fn registry_of(image: &str) -> Result<String> {
    reference::normalize(image)
        .map(|r| r.domain)
        .map_err(|e| anyhow!("{e}"))
}

/// Credentials for the registries of `images`, from the docker-style
/// config file; registries it has nothing for are left out (anonymous).
pub(crate) fn registry_auth(images: &[String]) -> Result<Vec<pb::RegistryAuth>> {
    let Some(path) = docker_config_path() else {
        return Ok(Vec::new());
    };
    let raw = match std::fs::read(&path) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let cfg: DockerConfig = serde_json::from_slice(&raw)
        .with_context(|| format!("parsing registry credentials in {}", path.display()))?;
    auth_from_config(&cfg, images, &path.display().to_string())
}

fn auth_from_config(
    cfg: &DockerConfig,
    images: &[String],
    shown: &str,
) -> Result<Vec<pb::RegistryAuth>> {
    let mut wanted = BTreeSet::new();
    for i in images {
        wanted.insert(registry_of(i)?);
    }
    let mut out = Vec::new();
    for reg in wanted {
        let entry = cfg.auths.iter().find(|(k, _)| registry_key(k) == reg);
        let helper = cfg
            .cred_helpers
            .iter()
            .find(|(k, _)| registry_key(k) == reg)
            .map(|(_, v)| v)
            .or(cfg.creds_store.as_ref());
        let Some((key, e)) = entry else {
            if let Some(h) = helper {
                eprintln!("WARN[0000] credential helper docker-credential-{h} (in {shown}) is not supported; using no credentials for {reg}");
            }
            continue;
        };
        let mut a = pb::RegistryAuth {
            registry: reg.clone(),
            ..Default::default()
        };
        if let Some(enc) = e.auth.as_deref().filter(|s| !s.is_empty()) {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(enc.trim())
                .map_err(|err| anyhow!("{shown}: auths.{key}.auth is not valid base64: {err}"))?;
            let s = String::from_utf8(bytes)
                .map_err(|_| anyhow!("{shown}: auths.{key}.auth is not UTF-8"))?;
            let (u, p) = s
                .split_once(':')
                .ok_or_else(|| anyhow!("{shown}: auths.{key}.auth is not user:password"))?;
            a.username = u.to_string();
            a.password = p.to_string();
        } else if let (Some(u), Some(p)) = (&e.username, &e.password) {
            a.username = u.clone();
            a.password = p.clone();
        }
        if let Some(t) = e.identitytoken.as_deref().filter(|t| !t.is_empty()) {
            a.identity_token = t.to_string();
        }
        if a.username.is_empty() && a.password.is_empty() && a.identity_token.is_empty() {
            if let Some(h) = helper {
                eprintln!("WARN[0000] credential helper docker-credential-{h} (in {shown}) is not supported; using no credentials for {reg}");
            }
            continue;
        }
        out.push(a);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Pull and push with progress

fn short(d: &str) -> String {
    d.trim_start_matches("sha256:").chars().take(12).collect()
}

/// Pulls `image` onto `node_id` (every ready node when empty), printing
/// Docker-like progress unless `quiet`. Fails with every node's error.
pub(crate) async fn pull_image(
    ctl: &mut Control,
    image: &str,
    platform: &str,
    node_id: &str,
    quiet: bool,
) -> Result<Vec<pb::ImageSummary>> {
    let auth = registry_auth(&[image.to_string()])?;
    let mut s = ctl
        .pull_image(pb::PullImageRequest {
            reference: image.to_string(),
            node_id: node_id.to_string(),
            platform: platform.to_string(),
            auth,
        })
        .await
        .map_err(|e| client::status_err(&format!("pulling {image}"), e))?
        .into_inner();
    let mut errors = Vec::new();
    let mut got = Vec::new();
    while let Some(m) = s.next().await {
        let m = m.map_err(|e| client::status_err(&format!("pulling {image}"), e))?;
        if !m.error.is_empty() {
            errors.push(if m.node_id.is_empty() {
                m.error.clone()
            } else {
                format!("node {}: {}", m.node_id, m.error)
            });
            continue;
        }
        if let Some(img) = m.image {
            if !quiet {
                println!("Digest: {}", img.manifest_digest);
                println!("Status: Downloaded image for {image}");
            }
            got.push(img);
            continue;
        }
        if !quiet {
            if m.layer.is_empty() {
                println!("{}", m.status);
            } else {
                println!("{}: {}", short(&m.layer), m.status);
            }
        }
    }
    if !errors.is_empty() {
        bail!("pulling {image}: {}", errors.join("; "));
    }
    if got.is_empty() {
        bail!("pulling {image}: no node reported a result");
    }
    Ok(got)
}

/// Pushes `image` from one node to its registry, printing progress.
pub(crate) async fn push_image(ctl: &mut Control, image: &str, quiet: bool) -> Result<()> {
    let auth = registry_auth(&[image.to_string()])?;
    let mut s = ctl
        .push_image(pb::PushImageRequest {
            reference: image.to_string(),
            node_id: String::new(),
            auth,
        })
        .await
        .map_err(|e| client::status_err(&format!("pushing {image}"), e))?
        .into_inner();
    let mut errors = Vec::new();
    while let Some(m) = s.next().await {
        let m = m.map_err(|e| client::status_err(&format!("pushing {image}"), e))?;
        if !m.error.is_empty() {
            errors.push(m.error);
            continue;
        }
        if !quiet {
            if m.layer.is_empty() {
                println!("{}", m.status);
            } else {
                println!("{}: {}", short(&m.layer), m.status);
            }
        }
    }
    if !errors.is_empty() {
        bail!("pushing {image}: {}", errors.join("; "));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// flotilla pull / push (the stack's images)

/// Image of each selected service, in file order, once per image.
fn stack_images(spec: &pb::StackSpec, services: &[String]) -> Result<Vec<(String, String)>> {
    for s in services {
        if !spec.services.iter().any(|x| &x.name == s) {
            bail!("no such service: {s}");
        }
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for s in &spec.services {
        if !services.is_empty() && !services.contains(&s.name) {
            continue;
        }
        if s.image.is_empty() || !seen.insert((s.image.clone(), s.platform.clone())) {
            continue;
        }
        out.push((s.image.clone(), s.platform.clone()));
    }
    Ok(out)
}

/// `flotilla pull [SERVICE...]`.
pub async fn pull(g: &Global, a: &PullArgs) -> Result<i32> {
    let project = super::load_project(g, &a.services)?;
    let images = stack_images(&project.spec, &a.services)?;
    let mut ctl = client::connect_or_start(g).await?;
    for (image, platform) in images {
        if let Err(e) = pull_image(&mut ctl, &image, &platform, "", a.quiet).await {
            if !a.ignore_pull_failures {
                return Err(e);
            }
            eprintln!("WARN[0000] {e:#}");
        }
    }
    Ok(0)
}

/// `flotilla push [SERVICE...]`.
pub async fn push(g: &Global, a: &PushArgs) -> Result<i32> {
    let project = super::load_project(g, &a.services)?;
    let images = stack_images(&project.spec, &a.services)?;
    let mut ctl = client::connect_or_start(g).await?;
    let mut done = BTreeSet::new();
    for (image, _) in images {
        if !done.insert(image.clone()) {
            continue;
        }
        if let Err(e) = push_image(&mut ctl, &image, a.quiet).await {
            if !a.ignore_push_failures {
                return Err(e);
            }
            eprintln!("WARN[0000] {e:#}");
        }
    }
    Ok(0)
}

// ---------------------------------------------------------------------------
// pull_policy

/// What to do about a service's image before deploying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Policy {
    Always,
    Missing,
    Never,
}

/// The policy of `svc`, `up --pull` winning over the file.
fn policy_of(svc: &pb::ServiceSpec, over: Option<&str>) -> Result<Policy> {
    let p = over.unwrap_or(svc.pull_policy.as_str());
    match p {
        "" | "missing" | "if_not_present" => Ok(Policy::Missing),
        "always" => Ok(Policy::Always),
        "never" => Ok(Policy::Never),
        "build" => bail!(
            "service {}: pull_policy build: building images is not supported yet (use always, missing or never)",
            svc.name
        ),
        p if p == "daily" || p == "weekly" || p.starts_with("every_") => bail!(
            "service {}: pull_policy {p} is not supported yet (use always, missing or never)",
            svc.name
        ),
        p => bail!(
            "service {}: invalid pull policy {p:?} (use always, missing, never or build)",
            svc.name
        ),
    }
}

/// Applies every service's `pull_policy` (or `over`, from `up --pull`):
/// pulls what `always` asks for and what `missing` lacks on some node,
/// refuses a `never` image that no node has, then pins every service to the
/// image id the nodes hold (as `up` always did). Nothing is deployed here.
pub(crate) async fn ensure_images(
    ctl: &mut Control,
    spec: &mut pb::StackSpec,
    over: Option<&str>,
) -> Result<()> {
    let mut policy: BTreeMap<String, Policy> = BTreeMap::new();
    for s in &spec.services {
        policy.insert(s.name.clone(), policy_of(s, over)?);
    }
    let refs: BTreeSet<String> = spec.services.iter().map(|s| s.image.clone()).collect();
    let resolved = ctl
        .resolve_images(pb::ResolveImagesRequest {
            references: refs.iter().cloned().collect(),
            node_id: String::new(),
        })
        .await
        .map_err(|s| client::status_err("looking up images", s))?
        .into_inner();
    // Nodes that have each reference, and every node that answered.
    let mut have: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut nodes: BTreeSet<&str> = BTreeSet::new();
    for r in &resolved.images {
        nodes.insert(r.node_id.as_str());
        if r.found {
            have.entry(r.reference.as_str())
                .or_default()
                .insert(r.node_id.as_str());
        }
    }
    // (image, platform) → nodes to pull to ("" = all).
    let mut pulls: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for s in &spec.services {
        let on = have.get(s.image.as_str());
        match policy[&s.name] {
            Policy::Always => {
                pulls
                    .entry((s.image.clone(), s.platform.clone()))
                    .or_default()
                    .insert(String::new());
            }
            Policy::Missing => {
                for n in &nodes {
                    if !on.is_some_and(|h| h.contains(n)) {
                        pulls
                            .entry((s.image.clone(), s.platform.clone()))
                            .or_default()
                            .insert(n.to_string());
                    }
                }
            }
            Policy::Never => {
                if on.is_none_or(|h| h.is_empty()) {
                    bail!(
                        "service {}: image {} is not on any node and its pull policy is never (load it with `flotilla image load`, or pull it with `flotilla image pull {}`)",
                        s.name,
                        s.image,
                        s.image
                    );
                }
            }
        }
    }
    for ((image, platform), targets) in pulls {
        let users: Vec<&str> = spec
            .services
            .iter()
            .filter(|s| s.image == image)
            .map(|s| s.name.as_str())
            .collect();
        let all = targets.contains("");
        let targets: Vec<String> = if all {
            vec![String::new()]
        } else {
            targets.into_iter().collect()
        };
        for node in targets {
            println!(" Pulling {image} (service {})", users.join(", "));
            pull_image(ctl, &image, &platform, &node, true)
                .await
                .with_context(|| format!("service {}", users.join(", ")))?;
        }
    }
    super::up::pin_images(ctl, spec).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, pp: &str) -> pb::ServiceSpec {
        pb::ServiceSpec {
            name: name.into(),
            image: "x".into(),
            pull_policy: pp.into(),
            ..Default::default()
        }
    }

    #[test]
    fn policies() {
        assert_eq!(policy_of(&svc("a", ""), None).unwrap(), Policy::Missing);
        assert_eq!(
            policy_of(&svc("a", "if_not_present"), None).unwrap(),
            Policy::Missing
        );
        assert_eq!(
            policy_of(&svc("a", "never"), Some("always")).unwrap(),
            Policy::Always
        );
        let e = policy_of(&svc("web", "daily"), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("web") && e.contains("daily"), "{e}");
        let e = policy_of(&svc("web", "build"), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("building images is not supported yet"), "{e}");
    }

    #[test]
    fn credentials_for_the_images_registries_only() {
        let enc = base64::engine::general_purpose::STANDARD.encode("alice:pw:1");
        let cfg: DockerConfig = serde_json::from_str(&format!(
            r#"{{"auths":{{"127.0.0.1:5000":{{"auth":"{enc}"}},
                "https://index.docker.io/v1/":{{"identitytoken":"tok"}},
                "other.io":{{"auth":"{enc}"}}}},
               "credsStore":"desktop"}}"#
        ))
        .unwrap();
        let got = auth_from_config(
            &cfg,
            &[
                "127.0.0.1:5000/app:1".into(),
                "busybox".into(),
                "q.io/x".into(),
            ],
            "config.json",
        )
        .unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].registry, "127.0.0.1:5000");
        assert_eq!(
            (got[0].username.as_str(), got[0].password.as_str()),
            ("alice", "pw:1")
        );
        assert_eq!(got[1].registry, "docker.io");
        assert_eq!(got[1].identity_token, "tok");
        let bad: DockerConfig =
            serde_json::from_str(r#"{"auths":{"x.io":{"auth":"%%"}}}"#).unwrap();
        let e = auth_from_config(&bad, &["x.io/a".into()], "c.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("x.io") && e.contains("base64"), "{e}");
    }
}
