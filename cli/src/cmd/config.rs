//! `flotilla config`: the resolved model of the Compose files, in the shape
//! `docker compose config` prints, or one of its lists (`--services`,
//! `--volumes`, `--profiles`, `--images`). Never needs build contexts or
//! bind-mount sources to exist, and never talks to the daemon except for
//! `--resolve-image-digests`.

use std::collections::BTreeSet;

use crate::opts::{ConfigArgs, Global};
use anyhow::Result;
use flotilla_compose::Project;

pub fn run(g: &Global, a: &ConfigArgs) -> Result<i32> {
    let mut opts = super::load_options(g, &[])?;
    opts.interpolate = !a.no_interpolate;
    if a.profiles {
        // Every profile any service names, enabled or not.
        opts.profiles = vec!["*".into()];
    }
    let project = flotilla_compose::load_for_config(&opts).map_err(|e| anyhow::anyhow!("{e}"))?;
    for w in &project.warnings {
        eprintln!("warning: {w}");
    }
    if a.resolve_image_digests {
        anyhow::bail!("--resolve-image-digests is not supported yet");
    }
    if a.quiet {
        return Ok(0);
    }
    let lists: [(bool, fn(&Project) -> Vec<String>); 4] = [
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
