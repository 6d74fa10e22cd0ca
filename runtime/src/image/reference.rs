//! Image references (`busybox`, `registry:5000/team/app:1`, `app@sha256:...`)
//! parsed and normalised the way Docker does it, so that `busybox`,
//! `busybox:latest` and `docker.io/library/busybox:latest` name the same tag.
//!
//! Pure string handling: it must never touch the store, the disk or the
//! network, and never guess an image id (ids are resolved by the store).

use std::fmt;

use super::ImageError;

/// The registry Docker assumes when a reference names none.
pub const DEFAULT_DOMAIN: &str = "docker.io";
/// The namespace Docker assumes for single-component names on Docker Hub.
pub const OFFICIAL_NAMESPACE: &str = "library";
/// The tag assumed when a reference has neither tag nor digest.
pub const DEFAULT_TAG: &str = "latest";

/// A fully normalised image reference.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Registry host (and port), e.g. `docker.io`, `localhost:5000`.
    pub domain: String,
    /// Repository path inside the registry, e.g. `library/busybox`.
    pub path: String,
    /// Tag; `latest` is filled in when neither tag nor digest was given.
    pub tag: Option<String>,
    /// `sha256:<64 hex>` when the reference was pinned by digest.
    pub digest: Option<String>,
}

impl Reference {
    /// `domain/path`, e.g. `docker.io/library/busybox`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// `domain/path:tag` — the key the store keeps tags under. `None` for a
    /// digest-only reference.
    pub fn tagged_name(&self) -> Option<String> {
        self.tag.as_ref().map(|t| format!("{}:{}", self.name(), t))
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// Parses `r` and fills in Docker's defaults (domain `docker.io`, namespace
/// `library/` for single-component Hub names, tag `latest` when there is no
/// tag and no digest).
pub fn normalize(r: &str) -> Result<Reference, ImageError> {
    let bad = |why: &str| ImageError::InvalidReference {
        reference: r.to_string(),
        reason: why.to_string(),
    };
    if r.is_empty() {
        return Err(bad("empty reference"));
    }
    if r.len() > 1024 {
        return Err(bad("longer than 1024 characters"));
    }
    let (rest, digest) = match r.split_once('@') {
        Some((rest, d)) => {
            parse_sha256(d).ok_or_else(|| bad("digest must be sha256:<64 lowercase hex>"))?;
            (rest, Some(d.to_string()))
        }
        None => (r, None),
    };
    // A ':' after the last '/' starts the tag; one before it is a port.
    let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => {
            let i = last_slash + i;
            (&rest[..i], Some(rest[i + 1..].to_string()))
        }
        None => (rest, None),
    };
    if let Some(t) = &tag {
        if !valid_tag(t) {
            return Err(bad("tag must match [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"));
        }
    }
    if name.is_empty() {
        return Err(bad("empty repository name"));
    }
    let (domain, path) = match name.split_once('/') {
        Some((first, remainder))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first.to_string(), remainder.to_string())
        }
        _ => (DEFAULT_DOMAIN.to_string(), name.to_string()),
    };
    let domain = if domain == "index.docker.io" {
        DEFAULT_DOMAIN.to_string()
    } else {
        domain
    };
    if !valid_domain(&domain) {
        return Err(bad("invalid registry host"));
    }
    let path = if domain == DEFAULT_DOMAIN && !path.contains('/') {
        format!("{OFFICIAL_NAMESPACE}/{path}")
    } else {
        path
    };
    if path.split('/').any(|c| !valid_path_component(c)) {
        return Err(bad(
            "repository name components must be lowercase letters, digits and separators (. _ __ -)",
        ));
    }
    if domain == DEFAULT_DOMAIN && path.starts_with("library/") && is_hex64(&path[8..]) {
        return Err(bad(
            "a 64-character hexadecimal string is an image id, not a repository name",
        ));
    }
    let tag = match (tag, &digest) {
        (None, None) => Some(DEFAULT_TAG.to_string()),
        (t, _) => t,
    };
    Ok(Reference {
        domain,
        path,
        tag,
        digest,
    })
}

/// The short form Docker shows: `busybox:latest` for
/// `docker.io/library/busybox:latest`, `me/app:1` for `docker.io/me/app:1`,
/// anything on another registry unchanged.
pub fn familiar(r: &Reference) -> String {
    let mut s = familiar_name(r);
    if let Some(t) = &r.tag {
        s.push(':');
        s.push_str(t);
    }
    if let Some(d) = &r.digest {
        s.push('@');
        s.push_str(d);
    }
    s
}

/// The familiar repository name without tag or digest (`busybox`).
pub fn familiar_name(r: &Reference) -> String {
    if r.domain == DEFAULT_DOMAIN {
        match r.path.strip_prefix("library/") {
            Some(p) if !p.contains('/') => p.to_string(),
            _ => r.path.clone(),
        }
    } else {
        format!("{}/{}", r.domain, r.path)
    }
}

/// The hex part of a `sha256:<64 lowercase hex>` digest, or `None`.
pub fn parse_sha256(d: &str) -> Option<&str> {
    d.strip_prefix("sha256:").filter(|h| is_hex64(h))
}

pub(crate) fn is_hex64(s: &str) -> bool {
    s.len() == 64 && is_lower_hex(s)
}

pub(crate) fn is_lower_hex(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

fn valid_domain(d: &str) -> bool {
    let (host, port) = match d.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    if let Some(p) = port {
        if p.is_empty() || !p.bytes().all(|c| c.is_ascii_digit()) {
            return false;
        }
    }
    // IPv6 literals in brackets are accepted as Docker does.
    if host.starts_with('[') && host.ends_with(']') {
        return host.len() > 2;
    }
    !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-')
        })
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum_lower(b[0]) || !is_alnum_lower(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum_lower(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !is_alnum_lower(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn is_alnum_lower(c: u8) -> bool {
    c.is_ascii_digit() || c.is_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(r: &str) -> String {
        normalize(r).unwrap().to_string()
    }

    #[test]
    fn docker_hub_defaults() {
        assert_eq!(full("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(full("busybox:latest"), "docker.io/library/busybox:latest");
        assert_eq!(
            full("docker.io/library/busybox:latest"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            full("index.docker.io/library/busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            full("library/busybox:1.36"),
            "docker.io/library/busybox:1.36"
        );
        assert_eq!(full("me/app"), "docker.io/me/app:latest");
    }

    #[test]
    fn registries_and_ports() {
        assert_eq!(full("registry:5000/x:1"), "registry:5000/x:1");
        assert_eq!(full("localhost/app"), "localhost/app:latest");
        assert_eq!(full("localhost:5000/a/b/c"), "localhost:5000/a/b/c:latest");
        assert_eq!(full("quay.io/org/img:v1.2"), "quay.io/org/img:v1.2");
        // Without a dot, colon or "localhost" the first component is a namespace.
        assert_eq!(full("registry/x"), "docker.io/registry/x:latest");
    }

    #[test]
    fn digests() {
        let d = format!("sha256:{}", "ab".repeat(32));
        let r = normalize(&format!("busybox@{d}")).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.digest.as_deref(), Some(d.as_str()));
        assert_eq!(familiar(&r), format!("busybox@{d}"));
        let r = normalize(&format!("r:5000/x:1@{d}")).unwrap();
        assert_eq!(r.tag.as_deref(), Some("1"));
        assert_eq!(r.domain, "r:5000");
        assert!(normalize("busybox@sha256:abc").is_err());
        assert!(normalize("busybox@md5:0123").is_err());
    }

    #[test]
    fn familiar_forms() {
        let f = |r: &str| familiar(&normalize(r).unwrap());
        assert_eq!(f("docker.io/library/busybox"), "busybox:latest");
        assert_eq!(f("docker.io/me/app:2"), "me/app:2");
        assert_eq!(f("registry:5000/x:1"), "registry:5000/x:1");
        assert_eq!(f("docker.io/library/a/b"), "library/a/b:latest");
    }

    #[test]
    fn rejects_invalid() {
        for bad in [
            "",
            "Busybox",
            "busybox:",
            "busybox:-x",
            "a//b",
            "a/",
            "/a",
            "a..b",
            "a-",
            "a:b:c",
            "host:port/x",
            &"a".repeat(1100),
            &"ab".repeat(32),
        ] {
            assert!(normalize(bad).is_err(), "{bad:?} should be rejected");
        }
        let e = normalize("Busybox").unwrap_err().to_string();
        assert!(e.contains("Busybox"), "{e}");
    }

    #[test]
    fn separators() {
        assert!(normalize("a_b").is_ok());
        assert!(normalize("a__b").is_ok());
        assert!(normalize("a---b").is_ok());
        assert!(normalize("a.b").is_ok());
        assert!(normalize("a___b").is_err());
        assert!(normalize("a._b").is_err());
    }
}
