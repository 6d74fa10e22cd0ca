//! `flotilla config`: the resolved model of the Compose files, in the shape
//! `docker compose config` prints, or one of its lists (`--services`,
//! `--volumes`, `--profiles`, `--images`). Never needs build contexts or
//! bind-mount sources to exist, and never talks to the daemon except for
//! `--resolve-image-digests`.

use std::collections::{BTreeMap, BTreeSet};

use crate::opts::{ConfigArgs, Global};
use anyhow::Result;
use flotilla_compose::{ImagePin, Project};
use flotilla_proto::v1 as pb;

/// One of the list flags' printers.
type Lister = fn(&Project) -> Vec<String>;

pub fn run(g: &Global, a: &ConfigArgs) -> Result<i32> {
    let mut opts = super::load_options(g, &[])?;
    opts.interpolate = !a.no_interpolate;
    if a.profiles {
        // Every profile any service names, enabled or not.
        opts.profiles = vec!["*".into()];
    }
    let mut project =
        flotilla_compose::load_for_config(&opts).map_err(|e| anyhow::anyhow!("{e}"))?;
    for w in &project.warnings {
        eprintln!("warning: {w}");
    }
    if a.resolve_image_digests {
        let refs = flotilla_compose::images_to_pin(&project);
        // `run` is synchronous but called on the multi-threaded runtime.
        let pins = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(resolve(g, refs))
        })?;
        flotilla_compose::pin_images(&mut project, &pins).map_err(|e| {
            anyhow::anyhow!(
                "{e}\n(load it with `flotilla image load`, `flotilla image import` or `flotilla image pull`)"
            )
        })?;
    }
    if a.quiet {
        return Ok(0);
    }
    let lists: [(bool, Lister); 4] = [
        (a.services, service_names),
        (a.volumes, volume_names),
        (a.profiles, profile_names),
        (a.images, image_names),
    ];
    if let Some((_, list)) = lists.iter().find(|(on, _)| *on) {
        for line in list(&project) {
            println!("{line}");
        }
        return Ok(0);
    }
    let out = if a.format == "json" {
        flotilla_compose::to_compose_json(&project)
    } else {
        flotilla_compose::to_compose_yaml(&project)
    };
    print!("{out}");
    if !out.ends_with('\n') {
        println!();
    }
    Ok(0)
}

/// Asks the daemon what each reference resolves to on its nodes: the
/// manifest digest where the image has one, else the image id.
async fn resolve(g: &Global, references: Vec<String>) -> Result<BTreeMap<String, ImagePin>> {
    let mut pins = BTreeMap::new();
    if references.is_empty() {
        return Ok(pins);
    }
    let mut ctl = crate::client::connect(g).await?;
    let resp = ctl
        .resolve_images(pb::ResolveImagesRequest {
            references,
            node_id: String::new(),
        })
        .await
        .map_err(|s| crate::client::status_err("resolving image digests", s))?
        .into_inner();
    for r in resp.images {
        let (true, Some(img)) = (r.found, r.image) else {
            continue;
        };
        let pin = if img.manifest_digest.is_empty() {
            ImagePin::Id(img.id)
        } else {
            ImagePin::Digest(img.manifest_digest)
        };
        pins.entry(r.reference).or_insert(pin);
    }
    Ok(pins)
}

fn service_names(p: &Project) -> Vec<String> {
    p.spec.services.iter().map(|s| s.name.clone()).collect()
}

fn volume_names(p: &Project) -> Vec<String> {
    p.model
        .get("volumes")
        .and_then(|v| v.as_map())
        .map(|m| m.iter().map(|e| e.key.clone()).collect())
        .unwrap_or_default()
}

fn profile_names(p: &Project) -> Vec<String> {
    let mut out = BTreeSet::new();
    if let Some(services) = p.model.get("services").and_then(|s| s.as_map()) {
        for e in services {
            for prof in e
                .value
                .get("profiles")
                .and_then(|x| x.as_seq())
                .unwrap_or(&[])
            {
                if let Some(s) = prof.as_scalar() {
                    out.insert(s.text.clone());
                }
            }
        }
    }
    out.into_iter().collect()
}

/// The image each service runs; a service that only builds gets the name
/// Compose gives built images, `<project>-<service>`.
fn image_names(p: &Project) -> Vec<String> {
    p.spec
        .services
        .iter()
        .map(|s| {
            if s.image.is_empty() {
                format!("{}-{}", p.name, s.name)
            } else {
                s.image.clone()
            }
        })
        .collect()
}
