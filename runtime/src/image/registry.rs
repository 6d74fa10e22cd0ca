//! Pulling images from and pushing them to OCI distribution registries
//! (Docker Hub, `registry:2`, Harbor, ...), on top of `oci-client`: manifest
//! lists and OCI indexes with platform selection, Docker v2 schema 2 and OCI
//! manifests, anonymous, basic and bearer-token auth (credentials from a
//! docker-style `config.json` or handed over directly; `identitytoken`s are
//! traded for access tokens with the OAuth2 refresh-token grant), plain
//! http for loopback and listed insecure registries, parallel layer
//! downloads with retries, and per-blob progress callbacks.
//!
//! A pull stages every blob in a private temp dir while hashing it, checks
//! each against the digest that names it, and only then hands the whole image
//! to the store's commit (the same one `load_archive` uses), so a pulled
//! image looks exactly like a loaded one.
//!
//! What it must never do: store a blob whose digest does not match, send
//! credentials to a registry other than the one they are for, or run its
//! async client on the caller's tokio runtime (it builds its own
//! current-thread runtime on a scoped thread, so it is safe to call from
//! `spawn_blocking`).

use std::collections::BTreeMap;
use std::fs;
use std::future::Future;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use futures::{StreamExt as _, TryStreamExt as _};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, RegistryOperation};
use oci_spec::image::{ImageIndex, ImageManifest};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt as _;

use super::archive::{self, BlobSource, PlannedImage, PlannedLayer, StagedFile};
use super::reference::{self, Reference};
use super::{config, Image, ImageError, ImageStore, TmpDir};

const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const MT_DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
const MT_DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// Layer media types the store can unpack.
const LAYER_TYPES: &[&str] = &[
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
];

/// Largest manifest or config accepted from a registry.
const MAX_JSON: usize = 16 << 20;

/// Options of [`ImageStore::pull`].
#[derive(Clone, Debug, Default)]
pub struct PullOptions {
    /// `os/arch[/variant]`, e.g. `linux/arm64` or `linux/arm/v7`, chosen
    /// from a manifest list / index. `None`: `linux/<this machine's arch>`.
    pub platform: Option<String>,
    /// A docker-style `config.json` (`{"auths":{"<registry>":{"auth":
    /// "<base64 user:pass>"}}}`). `None`: anonymous (plus whatever bearer
    /// token the registry hands out anonymously).
    pub auth_file: Option<PathBuf>,
    /// Registries (`host:port`) spoken to over plain http. Loopback
    /// registries (`localhost`, `127.0.0.1`, `[::1]`) always are.
    pub insecure_registries: Vec<String>,
    /// Credentials handed over directly (e.g. read by a CLI from its own
    /// config.json); the one for the image's registry wins over
    /// `auth_file`.
    pub credentials: Vec<Credential>,
    /// Told about each blob as it is checked, downloaded or found present.
    pub progress: Option<Progress>,
    /// Layers downloaded at once; 0 means 3.
    pub max_concurrent_downloads: usize,
    /// Extra attempts for a blob whose download fails or does not match
    /// its digest; `None` means 3.
    pub retries: Option<u32>,
}

/// Options of [`ImageStore::push`].
#[derive(Clone, Debug, Default)]
pub struct PushOptions {
    /// As [`PullOptions::auth_file`].
    pub auth_file: Option<PathBuf>,
    /// As [`PullOptions::insecure_registries`].
    pub insecure_registries: Vec<String>,
    /// As [`PullOptions::credentials`].
    pub credentials: Vec<Credential>,
    /// As [`PullOptions::progress`].
    pub progress: Option<Progress>,
}

/// Credentials for one registry, as a docker-style `config.json` holds them.
#[derive(Clone, Default)]
pub struct Credential {
    /// `host[:port]`, `docker.io`, or `https://index.docker.io/v1/`.
    pub registry: String,
    pub username: String,
    pub password: String,
    /// An OAuth refresh token (`identitytoken`) from `docker login`.
    pub identity_token: String,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("registry", &self.registry)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// One step of a pull or push: `status` is Docker's wording ("Pulling fs
/// layer", "Download complete", "Already exists", "Pushed", "Layer already
/// exists"), `blob` the digest it is about.
#[derive(Clone, Debug, PartialEq)]
pub struct ProgressEvent {
    pub status: String,
    pub blob: String,
    pub current: u64,
    pub total: u64,
}

/// A callback told about each [`ProgressEvent`]; called from the registry
/// worker thread, so it must not block for long.
#[derive(Clone)]
pub struct Progress(pub std::sync::Arc<dyn Fn(ProgressEvent) + Send + Sync>);

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Progress(..)")
    }
}

fn report(p: Option<&Progress>, status: &str, blob: &str, current: u64, total: u64) {
    if let Some(p) = p {
        (p.0)(ProgressEvent {
            status: status.to_string(),
            blob: blob.to_string(),
            current,
            total,
        });
    }
}

/// Credentials as chosen for one registry, before any token exchange.
enum Auth {
    Plain(RegistryAuth),
    /// An OAuth2 refresh token, exchanged for an access token per
    /// repository and operation.
    Identity(String),
}

impl Auth {
    /// What oci-client is handed for `oref` and `op`.
    async fn resolve(
        &self,
        oref: &oci_client::Reference,
        op: RegistryOperation,
        insecure: &[String],
    ) -> Result<RegistryAuth, ImageError> {
        match self {
            Auth::Plain(a) => Ok(a.clone()),
            Auth::Identity(t) => exchange_identity_token(oref, op, t, insecure)
                .await
                .map(RegistryAuth::Bearer),
        }
    }
}

/// The credentials for `registry`: a matching entry of `given` first, then
/// the auth file, else anonymous.
fn pick_credentials(
    given: &[Credential],
    auth_file: Option<&Path>,
    registry: &str,
) -> Result<Auth, ImageError> {
    let want = auth_key(registry);
    if let Some(c) = given.iter().find(|c| auth_key(&c.registry) == want) {
        if !c.identity_token.is_empty() {
            return Ok(Auth::Identity(c.identity_token.clone()));
        }
        if !c.password.is_empty() || !c.username.is_empty() {
            return Ok(Auth::Plain(RegistryAuth::Basic(
                c.username.clone(),
                c.password.clone(),
            )));
        }
    }
    credentials(auth_file, registry).map(Auth::Plain)
}

/// `key="value"` pairs of a `WWW-Authenticate: Bearer ...` challenge.
fn bearer_challenge(h: &str) -> Option<BTreeMap<String, String>> {
    let rest = h.trim();
    let rest = rest
        .get(..7)
        .filter(|p| p.eq_ignore_ascii_case("bearer "))
        .map(|_| &rest[7..])?;
    let mut out = BTreeMap::new();
    let mut s = rest.trim();
    while !s.is_empty() {
        let (k, after) = s.split_once('=')?;
        let after = after.trim_start();
        let (v, next) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"')?;
            (&q[..end], &q[end + 1..])
        } else {
            match after.find(',') {
                Some(i) => (&after[..i], &after[i..]),
                None => (after, ""),
            }
        };
        out.insert(k.trim().to_ascii_lowercase(), v.to_string());
        s = next.trim_start().trim_start_matches(',').trim_start();
    }
    Some(out)
}

/// Trades a docker `identitytoken` (an OAuth2 refresh token) for an access
/// token at the realm the registry's challenge names, as `docker` does
/// (`POST realm` with `grant_type=refresh_token`).
async fn exchange_identity_token(
    oref: &oci_client::Reference,
    op: RegistryOperation,
    token: &str,
    insecure: &[String],
) -> Result<String, ImageError> {
    let registry = oref.resolve_registry().to_string();
    let scheme = if is_loopback(&registry) || insecure.contains(&registry) {
        "http"
    } else {
        "https"
    };
    let err = |action: &str, reason: String, transient: bool| ImageError::Registry {
        registry: registry.clone(),
        action: action.to_string(),
        reason,
        transient,
    };
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(30))
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| err("building the token client", e.to_string(), false))?;
    let probe = http
        .get(format!("{scheme}://{registry}/v2/"))
        .send()
        .await
        .map_err(|e| err("asking for its auth challenge", e.to_string(), true))?;
    let challenge = probe
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|h| h.to_str().ok())
        .and_then(bearer_challenge)
        .ok_or_else(|| {
            ImageError::Unsupported(format!(
                "registry {registry}: an identity token needs bearer-token auth, and the registry asks for none"
            ))
        })?;
    let realm = challenge.get("realm").cloned().ok_or_else(|| {
        err(
            "reading its auth challenge",
            "the Bearer challenge has no realm".to_string(),
            false,
        )
    })?;
    let actions = match op {
        RegistryOperation::Pull => "pull",
        RegistryOperation::Push => "pull,push",
    };
    let scope = format!("repository:{}:{actions}", oref.repository());
    let mut form = vec![
        ("grant_type", "refresh_token".to_string()),
        ("refresh_token", token.to_string()),
        ("client_id", "flotilla".to_string()),
        ("scope", scope),
    ];
    if let Some(s) = challenge.get("service") {
        form.push(("service", s.clone()));
    }
    let resp = http
        .post(&realm)
        .form(&form)
        .send()
        .await
        .map_err(|e| err("exchanging the identity token", e.to_string(), true))?;
    let status = resp.status();
    if status.as_u16() == 401 || status.as_u16() == 403 || status.as_u16() == 400 {
        return Err(ImageError::Unauthorized {
            registry: registry.clone(),
            action: "exchanging the identity token".to_string(),
            reason: format!("the token server at {realm} answered {status}"),
        });
    }
    if !status.is_success() {
        return Err(err(
            "exchanging the identity token",
            format!("the token server at {realm} answered {status}"),
            status.is_server_error(),
        ));
    }
    #[derive(Deserialize)]
    struct TokenResponse {
        #[serde(default)]
        access_token: Option<String>,
        #[serde(default)]
        token: Option<String>,
    }
    let t: TokenResponse = resp
        .json()
        .await
        .map_err(|e| err("reading the token server's answer", e.to_string(), false))?;
    t.access_token
        .or(t.token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            err(
                "reading the token server's answer",
                "it holds no access_token".to_string(),
                false,
            )
        })
}

/// A platform wanted from a manifest list.
#[derive(Clone, Debug, PartialEq)]
struct Platform {
    os: String,
    arch: String,
    variant: Option<String>,
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

fn parse_platform(p: Option<&str>) -> Result<Platform, ImageError> {
    let Some(p) = p else {
        return Ok(Platform {
            os: "linux".to_string(),
            arch: config::host_architecture().to_string(),
            variant: None,
        });
    };
    let parts: Vec<&str> = p.split('/').collect();
    let bad = || ImageError::Unsupported(format!("platform {p:?}: expected os/arch[/variant]"));
    if parts.iter().any(|s| s.is_empty()) {
        return Err(bad());
    }
    match parts[..] {
        [os, arch] => Ok(Platform {
            os: os.to_string(),
            arch: arch.to_string(),
            variant: None,
        }),
        [os, arch, variant] => Ok(Platform {
            os: os.to_string(),
            arch: arch.to_string(),
            variant: Some(variant.to_string()),
        }),
        _ => Err(bad()),
    }
}

/// Registry credentials read from a docker-style config file.
fn credentials(auth_file: Option<&Path>, registry: &str) -> Result<RegistryAuth, ImageError> {
    let Some(path) = auth_file else {
        return Ok(RegistryAuth::Anonymous);
    };
    #[derive(Deserialize)]
    struct File {
        #[serde(default)]
        auths: BTreeMap<String, Entry>,
    }
    #[derive(Deserialize)]
    struct Entry {
        #[serde(default)]
        auth: Option<String>,
        #[serde(default)]
        username: Option<String>,
        #[serde(default)]
        password: Option<String>,
    }
    let raw = fs::read(path).map_err(|source| ImageError::Io {
        action: format!("reading registry auth file {}", path.display()),
        source,
    })?;
    let file: File = serde_json::from_slice(&raw).map_err(|e| ImageError::Malformed {
        what: format!("registry auth file {}", path.display()),
        reason: e.to_string(),
    })?;
    let want = auth_key(registry);
    let Some(entry) = file.auths.iter().find(|(k, _)| auth_key(k) == want) else {
        return Ok(RegistryAuth::Anonymous);
    };
    let malformed = |reason: String| ImageError::Malformed {
        what: format!(
            "entry {:?} of registry auth file {}",
            entry.0,
            path.display()
        ),
        reason,
    };
    let e = entry.1;
    if let Some(a) = e.auth.as_deref().filter(|a| !a.is_empty()) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(a.trim())
            .map_err(|err| malformed(format!("auth is not base64: {err}")))?;
        let s =
            String::from_utf8(decoded).map_err(|_| malformed("auth is not UTF-8".to_string()))?;
        let (user, pass) = s
            .split_once(':')
            .ok_or_else(|| malformed("auth is not user:password".to_string()))?;
        return Ok(RegistryAuth::Basic(user.to_string(), pass.to_string()));
    }
    match (&e.username, &e.password) {
        (Some(u), Some(p)) => Ok(RegistryAuth::Basic(u.clone(), p.clone())),
        _ => Err(malformed(
            "it has neither auth nor username and password".to_string(),
        )),
    }
}

/// `https://index.docker.io/v1/`, `docker.io`, `http://host:5000/` → one
/// comparable key.
fn auth_key(k: &str) -> String {
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

fn is_loopback(registry: &str) -> bool {
    let host = if let Some(end) = registry.find(']') {
        &registry[..=end]
    } else {
        registry.split(':').next().unwrap_or(registry)
    };
    host == "localhost"
        || host == "[::1]"
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|a| a.is_loopback())
}

/// The oci-client reference for one of ours. Docker Hub is spelled the way
/// oci-client expects it (`docker.io`, resolved to `index.docker.io`).
fn oci_ref(r: &Reference) -> oci_client::Reference {
    match (&r.tag, &r.digest) {
        (Some(t), Some(d)) => oci_client::Reference::with_tag_and_digest(
            r.domain.clone(),
            r.path.clone(),
            t.clone(),
            d.clone(),
        ),
        (None, Some(d)) => {
            oci_client::Reference::with_digest(r.domain.clone(), r.path.clone(), d.clone())
        }
        (t, None) => oci_client::Reference::with_tag(
            r.domain.clone(),
            r.path.clone(),
            t.clone()
                .unwrap_or_else(|| reference::DEFAULT_TAG.to_string()),
        ),
    }
}

/// Installs rustls' ring provider as the process default once; reqwest is
/// built without a provider of its own (no aws-lc C build).
fn ensure_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Another part of the process may have installed one already: fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

fn make_client(registry: &str, insecure: &[String]) -> Client {
    ensure_crypto_provider();
    let mut http: Vec<String> = insecure.to_vec();
    if is_loopback(registry) {
        http.push(registry.to_string());
    }
    Client::new(ClientConfig {
        protocol: ClientProtocol::HttpsExcept(http),
        // We pick the platform ourselves from the raw index.
        platform_resolver: None,
        connect_timeout: Some(Duration::from_secs(30)),
        read_timeout: Some(Duration::from_secs(300)),
        ..Default::default()
    })
}

/// Runs `f` to completion on a current-thread runtime of its own, on a
/// scoped thread: never on (or nested in) a runtime of the caller's.
fn run_async<T, F, Fut>(what: &str, f: F) -> Result<T, ImageError>
where
    T: Send,
    F: FnOnce() -> Fut + Send,
    Fut: Future<Output = Result<T, ImageError>>,
{
    std::thread::scope(|s| {
        let h = s.spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|source| ImageError::Io {
                    action: format!("starting the async runtime for {what}"),
                    source,
                })?;
            rt.block_on(f())
        });
        match h.join() {
            Ok(r) => r,
            Err(_) => Err(ImageError::Io {
                action: what.to_string(),
                source: std::io::Error::other("the registry worker thread panicked"),
            }),
        }
    })
}

/// Whether a failed attempt is worth repeating.
fn retryable(e: &ImageError) -> bool {
    matches!(
        e,
        ImageError::DigestMismatch { .. }
            | ImageError::Registry {
                transient: true,
                ..
            }
    )
}

fn registry_err(registry: &str, action: String, e: OciDistributionError) -> ImageError {
    let denied_code = |c: &OciErrorCode| {
        matches!(
            c,
            OciErrorCode::Unauthorized | OciErrorCode::Denied | OciErrorCode::NameUnknown
        )
    };
    let unauthorized = match &e {
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_) => true,
        OciDistributionError::ServerError { code, .. } => *code == 401 || *code == 403,
        OciDistributionError::RequestError(re) => re
            .status()
            .is_some_and(|s| s.as_u16() == 401 || s.as_u16() == 403),
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|x| matches!(x.code, OciErrorCode::Unauthorized | OciErrorCode::Denied)),
        _ => false,
    };
    if unauthorized {
        return ImageError::Unauthorized {
            registry: registry.to_string(),
            action,
            reason: e.to_string(),
        };
    }
    let transient = match &e {
        OciDistributionError::RequestError(re) => re
            .status()
            .is_none_or(|s| s.is_server_error() || s.as_u16() == 429),
        OciDistributionError::IoError(_) => true,
        OciDistributionError::ServerError { code, .. } => *code >= 500 || *code == 429,
        OciDistributionError::RegistryError { envelope, .. } => {
            !envelope.errors.iter().any(|x| denied_code(&x.code))
        }
        OciDistributionError::DigestError(_) => true,
        _ => false,
    };
    // reqwest's Display leaves out the cause ("error sending request"):
    // walk the chain so "connection refused" reaches the user.
    let mut reason = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        let m = s.to_string();
        if !reason.contains(&m) {
            reason.push_str(": ");
            reason.push_str(&m);
        }
        src = s.source();
    }
    ImageError::Registry {
        registry: registry.to_string(),
        action,
        reason,
        transient,
    }
}

/// The media type a stored manifest is served with (OCI when it says none).
pub(crate) fn manifest_media_type(raw: &[u8]) -> String {
    media_type_of(raw).unwrap_or_else(|| MT_OCI_MANIFEST.to_string())
}

fn media_type_of(raw: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        #[serde(default)]
        media_type: Option<String>,
        #[serde(default)]
        manifests: Option<serde_json::Value>,
        #[serde(default)]
        schema_version: Option<u32>,
    }
    let p: Probe = serde_json::from_slice(raw).ok()?;
    match (p.media_type, p.manifests, p.schema_version) {
        (Some(m), _, _) => Some(m),
        (None, Some(_), _) => Some(MT_OCI_INDEX.to_string()),
        (None, None, Some(1)) => Some(MT_DOCKER_SCHEMA1.to_string()),
        (None, None, _) => Some(MT_OCI_MANIFEST.to_string()),
    }
}

/// The index entry for `want`: exact variant if asked for one; otherwise an
/// entry without a variant wins over one with (arm64 images say `v8`).
fn choose_platform<'a>(
    index: &'a ImageIndex,
    want: &Platform,
) -> Option<&'a oci_spec::image::Descriptor> {
    let candidates: Vec<_> = index
        .manifests()
        .iter()
        .filter(|d| {
            d.platform().as_ref().is_some_and(|p| {
                p.os().to_string() == want.os && p.architecture().to_string() == want.arch
            })
        })
        .collect();
    let variant = |d: &oci_spec::image::Descriptor| {
        d.platform()
            .as_ref()
            .and_then(|p| p.variant().clone())
            .filter(|v| !v.is_empty())
    };
    match &want.variant {
        Some(v) => candidates
            .into_iter()
            .find(|d| variant(d).as_deref() == Some(v)),
        None => candidates
            .iter()
            .find(|d| variant(d).is_none())
            .or_else(|| candidates.first())
            .copied(),
    }
}

impl ImageStore {
    /// Pulls `reference` (`busybox`, `127.0.0.1:5000/app:1`,
    /// `host/app@sha256:...`) from its registry into the store, tags it (when
    /// the reference has a tag) and returns it. Every blob is verified
    /// against its digest; layers already in the store are not downloaded.
    /// Blocking; safe to call from `tokio::task::spawn_blocking`.
    pub fn pull(&self, reference: &str, opts: &PullOptions) -> Result<Image, ImageError> {
        let r = reference::normalize(reference)?;
        let platform = parse_platform(opts.platform.as_deref())?;
        let auth = pick_credentials(&opts.credentials, opts.auth_file.as_deref(), &r.domain)?;
        let tmp = self.tmp_dir("pull")?;
        let plan = run_async(&format!("pulling {reference}"), || async {
            let auth = auth
                .resolve(
                    &oci_ref(&r),
                    RegistryOperation::Pull,
                    &opts.insecure_registries,
                )
                .await?;
            self.fetch_image(&r, &platform, &auth, opts, &tmp).await
        })?;
        let _lock = self.write_lock()?;
        let id = self.commit_image(&plan)?;
        let refs = self.read_refs()?;
        self.image_from(&refs, &id)
    }

    /// Pushes the image `reference` names in the store to the registry as
    /// `target` (`127.0.0.1:5000/team/app:1`); returns the manifest digest
    /// the registry now serves it under (the image's stored manifest, byte
    /// for byte, so the same as [`Image::manifest_digest`]).
    pub fn push(
        &self,
        reference: &str,
        target: &str,
        opts: &PushOptions,
    ) -> Result<String, ImageError> {
        let refs = self.read_refs()?;
        let (id, _) = Self::find(&refs, reference)?.ok_or_else(|| ImageError::NotFound {
            reference: reference.to_string(),
        })?;
        let record = refs
            .images
            .get(&id)
            .ok_or_else(|| ImageError::NotFound {
                reference: reference.to_string(),
            })?
            .clone();
        let t = reference::normalize(target)?;
        if t.digest.is_some() {
            return Err(ImageError::InvalidReference {
                reference: target.to_string(),
                reason: "a push target names a tag, not a digest".to_string(),
            });
        }
        let manifest_path = self.blob_path(&record.manifest_digest)?;
        let manifest = fs::read(&manifest_path).map_err(|source| ImageError::Io {
            action: format!("reading manifest {} of {reference}", record.manifest_digest),
            source,
        })?;
        let media_type = manifest_media_type(&manifest);
        let mut blobs = vec![(
            record.config_digest.clone(),
            self.blob_path(&record.config_digest)?,
        )];
        for l in &record.layers {
            blobs.push((l.digest.clone(), self.blob_path(&l.digest)?));
        }
        let auth = pick_credentials(&opts.credentials, opts.auth_file.as_deref(), &t.domain)?;
        let progress = opts.progress.clone();
        let registry = t.domain.clone();
        let oref = oci_ref(&t);
        run_async(&format!("pushing {reference} to {target}"), || async {
            let client = make_client(&registry, &opts.insecure_registries);
            let auth = auth
                .resolve(&oref, RegistryOperation::Push, &opts.insecure_registries)
                .await?;
            client
                .auth(&oref, &auth, RegistryOperation::Push)
                .await
                .map_err(|e| {
                    registry_err(&registry, format!("authenticating to push {target}"), e)
                })?;
            for (digest, path) in &blobs {
                let exists = client.blob_exists(&oref, digest).await.map_err(|e| {
                    registry_err(&registry, format!("checking for blob {digest}"), e)
                })?;
                if exists {
                    report(progress.as_ref(), "Layer already exists", digest, 0, 0);
                    continue;
                }
                let size = fs::metadata(path)
                    .map_err(|source| ImageError::Io {
                        action: format!("reading blob {digest} to push"),
                        source,
                    })?
                    .len();
                let file = fs::File::open(path).map_err(|source| ImageError::Io {
                    action: format!("opening blob {digest} to push"),
                    source,
                })?;
                let stream = futures::stream::unfold(file, |mut f| async move {
                    let mut buf = vec![0u8; 1 << 20];
                    match f.read(&mut buf) {
                        Ok(0) => None,
                        Ok(n) => {
                            buf.truncate(n);
                            Some((Ok(buf.into()), f))
                        }
                        Err(e) => Some((Err(OciDistributionError::IoError(e)), f)),
                    }
                });
                client
                    .push_blob_stream(&oref, stream, digest, Some(size))
                    .await
                    .map_err(|e| {
                        registry_err(
                            &registry,
                            format!("uploading blob {digest} for {target}"),
                            e,
                        )
                    })?;
                report(progress.as_ref(), "Pushed", digest, size, size);
            }
            let ct = media_type.parse().map_err(|_| ImageError::Malformed {
                what: format!("manifest {}", record.manifest_digest),
                reason: format!("media type {media_type:?} is not a valid header value"),
            })?;
            client
                .push_manifest_raw(&oref, manifest.clone(), ct)
                .await
                .map_err(|e| {
                    registry_err(&registry, format!("uploading the manifest of {target}"), e)
                })?;
            Ok(())
        })?;
        Ok(archive::sha256_hex(&manifest))
    }

    /// Downloads and verifies everything of one image into `tmp`; nothing
    /// touches the store except reading which blobs it already has.
    async fn fetch_image(
        &self,
        r: &Reference,
        platform: &Platform,
        auth: &RegistryAuth,
        opts: &PullOptions,
        tmp: &TmpDir,
    ) -> Result<PlannedImage, ImageError> {
        let registry = r.domain.clone();
        let shown = reference::familiar(r);
        let client = make_client(&registry, &opts.insecure_registries);
        let oref = oci_ref(r);
        client
            .auth(&oref, auth, RegistryOperation::Pull)
            .await
            .map_err(|e| registry_err(&registry, format!("authenticating to pull {shown}"), e))?;
        let accept = [
            MT_OCI_MANIFEST,
            MT_OCI_INDEX,
            MT_DOCKER_MANIFEST,
            MT_DOCKER_LIST,
        ];
        let (mut raw, mut digest) = fetch_manifest(
            &client,
            &oref,
            auth,
            r.digest.as_deref(),
            &accept,
            &registry,
            &shown,
        )
        .await?;
        let mut mt = media_type_of(&raw).unwrap_or_default();
        if mt == MT_OCI_INDEX || mt == MT_DOCKER_LIST {
            let index = ImageIndex::from_reader(&raw[..]).map_err(|e| ImageError::Malformed {
                what: format!("image index {digest} of {shown}"),
                reason: e.to_string(),
            })?;
            let d = choose_platform(&index, platform).ok_or_else(|| {
                let have: Vec<String> = index
                    .manifests()
                    .iter()
                    .filter_map(|d| d.platform().as_ref())
                    .map(|p| {
                        let mut s = format!("{}/{}", p.os(), p.architecture());
                        if let Some(v) = p.variant() {
                            s.push('/');
                            s.push_str(v);
                        }
                        s
                    })
                    .collect();
                ImageError::Unsupported(format!(
                    "{shown} has no image for platform {platform} (it has: {})",
                    have.join(", ")
                ))
            })?;
            let child = d.digest().to_string();
            let child_ref = oref.clone_with_digest(child.clone());
            (raw, digest) = fetch_manifest(
                &client,
                &child_ref,
                auth,
                Some(&child),
                &[MT_OCI_MANIFEST, MT_DOCKER_MANIFEST],
                &registry,
                &shown,
            )
            .await?;
            mt = media_type_of(&raw).unwrap_or_default();
        }
        if mt == MT_DOCKER_SCHEMA1 || mt == MT_DOCKER_SCHEMA1_SIGNED {
            return Err(ImageError::Unsupported(format!(
                "{shown} is a Docker schema 1 image; push it again with a current client"
            )));
        }
        if mt != MT_OCI_MANIFEST && mt != MT_DOCKER_MANIFEST {
            return Err(ImageError::Unsupported(format!(
                "{shown}: manifest {digest} has media type {mt:?}, not an image manifest"
            )));
        }
        let manifest = ImageManifest::from_reader(&raw[..]).map_err(|e| ImageError::Malformed {
            what: format!("image manifest {digest} of {shown}"),
            reason: e.to_string(),
        })?;
        for l in manifest.layers() {
            let lt = l.media_type().to_string();
            if !LAYER_TYPES.contains(&lt.as_str()) {
                return Err(ImageError::Unsupported(format!(
                    "{shown}: layer {} has media type {lt}, which the store cannot unpack",
                    l.digest()
                )));
            }
        }
        let manifest_path = tmp.0.join("manifest");
        fs::write(&manifest_path, &raw).map_err(|source| ImageError::Io {
            action: format!("staging manifest {digest} of {shown}"),
            source,
        })?;
        let manifest_file = StagedFile {
            path: manifest_path,
            digest: digest.clone(),
            size: raw.len() as u64,
        };
        let retries = opts.retries.unwrap_or(3);
        let cdesc = manifest.config();
        let cdigest = cdesc.digest().to_string();
        check_sha256(&cdigest, &shown)?;
        if cdesc.size() > MAX_JSON as u64 {
            return Err(ImageError::Malformed {
                what: format!("config {cdigest} of {shown}"),
                reason: format!(
                    "{} bytes is larger than the {MAX_JSON} allowed",
                    cdesc.size()
                ),
            });
        }
        let config_file = fetch_blob(
            &client,
            &oref,
            &cdigest,
            cdesc.size(),
            &tmp.0.join("config"),
            retries,
            &registry,
        )
        .await?;
        let cfg_bytes = fs::read(&config_file.path).map_err(|source| ImageError::Io {
            action: format!("reading staged config {cdigest}"),
            source,
        })?;
        let parsed = config::parse(&cfg_bytes, &format!("image config {cdigest} of {shown}"))?;
        let diff_ids = parsed.rootfs.diff_ids.clone();
        if diff_ids.len() != manifest.layers().len() {
            return Err(ImageError::Malformed {
                what: format!("image manifest {digest} of {shown}"),
                reason: format!(
                    "it lists {} layers but its config has {} diff ids",
                    manifest.layers().len(),
                    diff_ids.len()
                ),
            });
        }
        let parallel = if opts.max_concurrent_downloads == 0 {
            3
        } else {
            opts.max_concurrent_downloads
        };
        let mut jobs = Vec::new();
        for (i, l) in manifest.layers().iter().enumerate() {
            let ld = l.digest().to_string();
            check_sha256(&ld, &shown)?;
            let have = self.blob_path(&ld)?.exists();
            let (client, oref, registry) = (&client, &oref, &registry);
            let dst = tmp.0.join(format!("layer{i}"));
            let size = l.size();
            let progress = opts.progress.as_ref();
            jobs.push(async move {
                if have {
                    report(progress, "Already exists", &ld, size, size);
                    return Ok((i, BlobSource::Stored { digest: ld, size }));
                }
                report(progress, "Pulling fs layer", &ld, 0, size);
                let f = fetch_blob(client, oref, &ld, size, &dst, retries, registry).await?;
                report(progress, "Download complete", &ld, size, size);
                Ok::<_, ImageError>((i, BlobSource::Staged(f)))
            });
        }
        let mut got: Vec<(usize, BlobSource)> = futures::stream::iter(jobs)
            .buffer_unordered(parallel)
            .try_collect()
            .await?;
        got.sort_by_key(|(i, _)| *i);
        let layers = got
            .into_iter()
            .zip(manifest.layers())
            .zip(&diff_ids)
            .map(|(((_, blob), l), diff_id)| PlannedLayer {
                blob,
                media_type: l.media_type().to_string(),
                diff_id: diff_id.clone(),
            })
            .collect();
        let tags = if r.tag.is_some() {
            vec![Reference {
                digest: None,
                ..r.clone()
            }]
        } else {
            Vec::new()
        };
        Ok(PlannedImage {
            manifest: BlobSource::Staged(manifest_file),
            config: BlobSource::Staged(config_file),
            config_file: parsed,
            layers,
            tags,
        })
    }
}

fn check_sha256(digest: &str, shown: &str) -> Result<(), ImageError> {
    if reference::parse_sha256(digest).is_none() {
        return Err(ImageError::Unsupported(format!(
            "{shown}: digest {digest}: only sha256 digests are supported"
        )));
    }
    Ok(())
}

/// GETs a manifest and checks its bytes against `expected` (the digest the
/// reference or index pinned) — oci-client trusts the registry's header.
async fn fetch_manifest(
    client: &Client,
    oref: &oci_client::Reference,
    auth: &RegistryAuth,
    expected: Option<&str>,
    accept: &[&str],
    registry: &str,
    shown: &str,
) -> Result<(Vec<u8>, String), ImageError> {
    let (raw, _) = client
        .pull_manifest_raw(oref, auth, accept)
        .await
        .map_err(|e| registry_err(registry, format!("fetching the manifest of {shown}"), e))?;
    if raw.len() > MAX_JSON {
        return Err(ImageError::Malformed {
            what: format!("manifest of {shown}"),
            reason: format!("{} bytes is larger than the {MAX_JSON} allowed", raw.len()),
        });
    }
    let actual = archive::sha256_hex(&raw);
    if let Some(e) = expected {
        if e != actual {
            return Err(ImageError::DigestMismatch {
                what: format!("manifest of {shown} from {registry}"),
                expected: e.to_string(),
                actual,
            });
        }
    }
    Ok((raw.to_vec(), actual))
}

/// Downloads blob `digest` into `dst`, retrying on network errors and
/// digest mismatches.
async fn fetch_blob(
    client: &Client,
    oref: &oci_client::Reference,
    digest: &str,
    size: u64,
    dst: &Path,
    retries: u32,
    registry: &str,
) -> Result<StagedFile, ImageError> {
    let mut attempt = 0;
    loop {
        match fetch_blob_once(client, oref, digest, size, dst, registry).await {
            Ok(f) => return Ok(f),
            Err(e) if attempt < retries && retryable(&e) => {
                attempt += 1;
                tracing::warn!(blob = digest, attempt, error = %e, "blob download failed; retrying");
                tokio::time::sleep(Duration::from_millis(250 << attempt.min(5))).await;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn fetch_blob_once(
    client: &Client,
    oref: &oci_client::Reference,
    digest: &str,
    size: u64,
    dst: &Path,
    registry: &str,
) -> Result<StagedFile, ImageError> {
    let desc = OciDescriptor {
        digest: digest.to_string(),
        size: i64::try_from(size).unwrap_or(i64::MAX),
        ..Default::default()
    };
    let action = || format!("downloading blob {digest} of {}", oref.repository());
    let mut stream = client
        .pull_blob_stream(oref, &desc)
        .await
        .map_err(|e| registry_err(registry, action(), e))?;
    let io = |source| ImageError::Io {
        action: format!("writing blob {digest} to {}", dst.display()),
        source,
    };
    let mut file = tokio::fs::File::create(dst).await.map_err(io)?;
    let mut hasher = Sha256::new();
    let mut got = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            // oci-client reports a digest mismatch at the end of the stream
            // as an io error: keep it a mismatch (it is retried as one).
            if let Some(oci_client::errors::DigestError::VerificationError { expected, actual }) =
                e.get_ref().and_then(|i| i.downcast_ref())
            {
                return ImageError::DigestMismatch {
                    what: format!("blob from {registry}"),
                    expected: expected.clone(),
                    actual: actual.clone(),
                };
            }
            registry_err(registry, action(), e.into())
        })?;
        got += chunk.len() as u64;
        if got > size {
            return Err(ImageError::DigestMismatch {
                what: format!(
                    "blob from {registry} (longer than the {size} bytes its descriptor says)"
                ),
                expected: digest.to_string(),
                actual: "(too long)".to_string(),
            });
        }
        hasher.update(&chunk);
        file.write_all(&chunk).await.map_err(io)?;
    }
    file.sync_all().await.map_err(io)?;
    let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
    if actual != digest {
        return Err(ImageError::DigestMismatch {
            what: format!("blob from {registry}"),
            expected: digest.to_string(),
            actual,
        });
    }
    if got != size {
        return Err(ImageError::Malformed {
            what: format!("blob {digest} from {registry}"),
            reason: format!("its descriptor says {size} bytes, the registry sent {got}"),
        });
    }
    Ok(StagedFile {
        path: dst.to_path_buf(),
        digest: digest.to_string(),
        size: got,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms() {
        assert_eq!(
            parse_platform(Some("linux/arm64")).unwrap(),
            Platform {
                os: "linux".into(),
                arch: "arm64".into(),
                variant: None
            }
        );
        assert_eq!(
            parse_platform(Some("linux/arm/v7"))
                .unwrap()
                .variant
                .as_deref(),
            Some("v7")
        );
        assert!(parse_platform(Some("linux")).is_err());
        assert!(parse_platform(Some("linux//x")).is_err());
        assert_eq!(parse_platform(None).unwrap().os, "linux");
    }

    #[test]
    fn bearer_challenges() {
        let c = bearer_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(c["realm"], "https://auth.example/token");
        assert_eq!(c["service"], "registry.example");
        assert_eq!(c["scope"], "repository:a/b:pull,push");
        assert!(bearer_challenge(r#"Basic realm="x""#).is_none());
    }

    #[test]
    fn auth_keys_and_loopback() {
        assert_eq!(auth_key("https://index.docker.io/v1/"), "docker.io");
        assert_eq!(auth_key("http://127.0.0.1:5000/"), "127.0.0.1:5000");
        assert_eq!(auth_key("quay.io"), "quay.io");
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("localhost"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("registry:5000"));
        assert!(!is_loopback("127.example.com:5000"));
    }

    #[test]
    fn credentials_from_config_json() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cret:x");
        fs::write(
            &p,
            format!(r#"{{"auths":{{"http://127.0.0.1:5000":{{"auth":"{auth}"}},"https://index.docker.io/v1/":{{"username":"bob","password":"pw"}}}}}}"#),
        )
        .unwrap();
        match credentials(Some(&p), "127.0.0.1:5000").unwrap() {
            RegistryAuth::Basic(u, pw) => {
                assert_eq!((u.as_str(), pw.as_str()), ("alice", "s3cret:x"))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            credentials(Some(&p), "docker.io").unwrap(),
            RegistryAuth::Basic(u, _) if u == "bob"
        ));
        assert!(matches!(
            credentials(Some(&p), "other:1").unwrap(),
            RegistryAuth::Anonymous
        ));
        fs::write(&p, r#"{"auths":{"x.io":{"auth":"%%%"}}}"#).unwrap();
        let e = credentials(Some(&p), "x.io").unwrap_err().to_string();
        assert!(e.contains("x.io") && e.contains("base64"), "{e}");
    }
}
