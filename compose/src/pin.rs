//! Pinning services' images to what a daemon resolved them to
//! (`config --resolve-image-digests`): `nginx:1.27` becomes
//! `nginx@sha256:<manifest digest>`, or the image id when the image has no
//! manifest digest (an image imported from a root filesystem).
//!
//! Pure: the caller asks the daemon and hands the answers in; this module
//! must never talk to a daemon, a registry or the network.

use std::collections::BTreeMap;

use crate::yaml::{Kind, Node};
use crate::{LoadError, LoadErrors, Project};

/// What one image reference resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImagePin {
    /// A manifest digest (`sha256:...`): the image becomes `name@digest`.
    Digest(String),
    /// An image id (`sha256:...` of its config), used as the image itself
    /// when the image has no manifest digest.
    Id(String),
}

/// The references `pin_images` needs answers for: every service's image
/// that is not pinned already, each once, sorted.
pub fn images_to_pin(p: &Project) -> Vec<String> {
    let mut refs: Vec<String> = p
        .spec
        .services
        .iter()
        .map(|s| s.image.clone())
        .filter(|i| !i.is_empty() && !is_pinned(i))
        .collect();
    refs.sort();
    refs.dedup();
    refs
}

/// An image reference that already names a digest or is an image id.
fn is_pinned(image: &str) -> bool {
    image.contains('@') || image.starts_with("sha256:")
}

/// The repository part of a reference: `registry:5000/app:1.2` ->
/// `registry:5000/app` (a `:` before the last `/` is a registry port).
pub fn repository_of(image: &str) -> &str {
    let image = image.split('@').next().unwrap_or(image);
    let name_start = image.rfind('/').map_or(0, |i| i + 1);
    match image[name_start..].find(':') {
        Some(i) => &image[..name_start + i],
        None => image,
    }
}

/// The pinned form of `image` given what it resolved to.
pub fn pinned(image: &str, pin: &ImagePin) -> String {
    match pin {
        ImagePin::Digest(d) => format!("{}@{d}", repository_of(image)),
        ImagePin::Id(id) => id.clone(),
    }
}

/// Rewrites every service's image (in the model `config` prints and in the
/// spec) to its pinned form. Images already pinned are left alone; an image
/// missing from `pins` is an error located at the service's `image:`, and
/// every missing one is reported.
pub fn pin_images(p: &mut Project, pins: &BTreeMap<String, ImagePin>) -> Result<(), LoadErrors> {
    let mut errors = Vec::new();
    let mut done: BTreeMap<String, String> = BTreeMap::new();
    for s in &mut p.spec.services {
        if s.image.is_empty() || is_pinned(&s.image) {
            continue;
        }
        match pins.get(&s.image) {
            Some(pin) => {
                let new = pinned(&s.image, pin);
                done.insert(s.name.clone(), new.clone());
                s.image = new;
            }
            None => {
                let at = p
                    .model
                    .get("services")
                    .and_then(|x| x.get(&s.name))
                    .and_then(|x| x.get("image"));
                let path = format!("services.{}.image", s.name);
                let msg = format!("image {} was not found on any node", s.image);
                errors.push(match at {
                    Some(n) => LoadError::at(&n.pos, path, msg),
                    None => LoadError::general(path, msg),
                });
            }
        }
    }
    if !errors.is_empty() {
        return Err(LoadErrors(errors));
    }
    let Kind::Map(top) = &mut p.model.kind else {
        return Ok(());
    };
    let Some(Kind::Map(services)) = top
        .iter_mut()
        .find(|e| e.key == "services")
        .map(|e| &mut e.value.kind)
    else {
        return Ok(());
    };
    for svc in services.iter_mut() {
        let Some(new) = done.get(&svc.key) else {
            continue;
        };
        if let Kind::Map(keys) = &mut svc.value.kind {
            match keys.iter_mut().find(|e| e.key == "image") {
                Some(e) => {
                    e.value = Node::scalar(new.clone(), false, e.value.pos.clone());
                }
                None => {
                    // The spec had an image the model did not spell out
                    // (cannot happen for loaded files, but stay consistent).
                    keys.push(crate::yaml::Entry {
                        key: "image".into(),
                        key_pos: svc.value.pos.clone(),
                        value: Node::scalar(new.clone(), false, svc.value.pos.clone()),
                    });
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_keeps_registry_ports_and_drops_tags() {
        assert_eq!(repository_of("nginx:1.27"), "nginx");
        assert_eq!(repository_of("nginx"), "nginx");
        assert_eq!(
            repository_of("registry:5000/team/app:1.2"),
            "registry:5000/team/app"
        );
        assert_eq!(repository_of("registry:5000/app"), "registry:5000/app");
        assert_eq!(
            pinned("redis:7", &ImagePin::Digest("sha256:ab".into())),
            "redis@sha256:ab"
        );
        assert_eq!(
            pinned("redis:7", &ImagePin::Id("sha256:cd".into())),
            "sha256:cd"
        );
    }
}
