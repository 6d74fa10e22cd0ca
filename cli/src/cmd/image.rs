//! `flotilla image pull|push|ls|rm|prune|inspect|load|save|import|tag`: the
//! nodes' image stores, through the manager. Docker's flags and output.

use crate::client::{self, Control};
use crate::opts::{Global, ImageCmd};
use crate::render;
use anyhow::{bail, Context, Result};
use clap::Args;
use flotilla_proto::v1 as pb;
use std::io::{IsTerminal as _, Read, Write as _};
use std::path::PathBuf;
use tokio_stream::StreamExt as _;

#[derive(Args, Debug)]
pub struct ImagePullArgs {
    /// Platform (os/arch[/variant]) to pick from a multi-platform image.
    #[arg(long)]
    pub platform: Option<String>,
    /// Print only the image reference.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    pub reference: String,
}

#[derive(Args, Debug)]
pub struct ImagePushArgs {
    /// Print no progress.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    pub reference: String,
}

#[derive(Args, Debug)]
pub struct ImageSaveArgs {
    /// Write to this file instead of standard output.
    #[arg(short = 'o', long)]
    pub output: Option<PathBuf>,
    /// Archive format: docker (`docker save`'s) or oci (an OCI image layout).
    #[arg(long, default_value = "docker", value_parser = ["docker", "oci"])]
    pub format: String,
    #[arg(required = true)]
    pub references: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ImageTagArgs {
    pub source: String,
    pub target: String,
}

#[derive(Args, Debug)]
pub struct ImageInspectArgs {
    #[arg(required = true)]
    pub references: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ImagePruneArgs {
    /// Remove every image no container uses, not only untagged ones.
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Do not ask for confirmation.
    #[arg(short = 'f', long)]
    pub force: bool,
}

const CHUNK: usize = 1 << 20;

pub async fn run(g: &Global, c: &ImageCmd) -> Result<i32> {
    let mut ctl = client::connect_or_start(g).await?;
    match c {
        ImageCmd::Ls => ls(&mut ctl).await,
        ImageCmd::Pull(a) => {
            let got = super::pull::pull_image(
                &mut ctl,
                &a.reference,
                a.platform.as_deref().unwrap_or(""),
                "",
                a.quiet,
            )
            .await?;
            if a.quiet {
                println!("{}", a.reference);
            } else if let Some(i) = got.first() {
                println!("{}", i.id);
            }
            Ok(0)
        }
        ImageCmd::Push(a) => {
            super::pull::push_image(&mut ctl, &a.reference, a.quiet).await?;
            Ok(0)
        }
        ImageCmd::Save(a) => save(&mut ctl, a).await,
        ImageCmd::Tag(a) => {
            ctl.tag_image(pb::TagImageRequest {
                source: a.source.clone(),
                target: a.target.clone(),
                node_id: String::new(),
            })
            .await
            .map_err(|s| client::status_err(&format!("tagging {} as {}", a.source, a.target), s))?;
            Ok(0)
        }
        ImageCmd::Inspect(a) => inspect(&mut ctl, a).await,
        ImageCmd::Prune(a) => prune(&mut ctl, a).await,
        ImageCmd::Load { input } => {
            let reader: Box<dyn Read + Send> = match input {
                Some(p) => Box::new(
                    std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?,
                ),
                None => Box::new(std::io::stdin()),
            };
            let head = pb::ImageArchiveChunk {
                kind: pb::ArchiveKind::Image as i32,
                ..Default::default()
            };
            let resp = send(&mut ctl, reader, head).await?;
            for i in resp.images {
                for r in &i.references {
                    println!("Loaded image: {r}");
                }
                if i.references.is_empty() {
                    println!("Loaded image ID: {}", i.id);
                }
            }
            Ok(0)
        }
        ImageCmd::Import {
            changes,
            file,
            reference,
        } => {
            let mut config = pb::ImageConfig::default();
            for ch in changes {
                apply_change(&mut config, ch)?;
            }
            let reader: Box<dyn Read + Send> = if file.as_os_str() == "-" {
                Box::new(std::io::stdin())
            } else {
                Box::new(
                    std::fs::File::open(file)
                        .with_context(|| format!("opening {}", file.display()))?,
                )
            };
            let head = pb::ImageArchiveChunk {
                kind: pb::ArchiveKind::Rootfs as i32,
                reference: reference.clone(),
                config: Some(config),
                ..Default::default()
            };
            let resp = send(&mut ctl, reader, head).await?;
            for i in resp.images {
                println!("{}", i.id);
            }
            Ok(0)
        }
        ImageCmd::Rm { reference, force } => {
            let resp = ctl
                .remove_image(pb::RemoveImageRequest {
                    reference: reference.clone(),
                    node_id: String::new(),
                    force: *force,
                })
                .await
                .map_err(|s| client::status_err(&format!("removing image {reference}"), s))?
                .into_inner();
            for r in resp.removed {
                println!("{r}");
            }
            Ok(0)
        }
    }
}

async fn save(ctl: &mut Control, a: &ImageSaveArgs) -> Result<i32> {
    let mut out: Box<dyn std::io::Write + Send> = match &a.output {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => {
            if std::io::stdout().is_terminal() {
                bail!("cowardly refusing to save to a terminal; use the -o flag or redirect");
            }
            Box::new(std::io::BufWriter::with_capacity(
                1 << 20,
                std::io::stdout(),
            ))
        }
    };
    let format = if a.format == "oci" {
        pb::SaveFormat::Oci
    } else {
        pb::SaveFormat::Docker
    };
    let what = format!("saving {}", a.references.join(", "));
    let result: Result<()> = async {
        let mut s = ctl
            .save_image(pb::SaveImageRequest {
                references: a.references.clone(),
                node_id: String::new(),
                format: format as i32,
            })
            .await
            .map_err(|e| client::status_err(&what, e))?
            .into_inner();
        while let Some(c) = s.next().await {
            let c = c.map_err(|e| client::status_err(&what, e))?;
            out.write_all(&c.data).context("writing the archive")?;
        }
        out.flush().context("writing the archive")?;
        Ok(())
    }
    .await;
    if result.is_err() {
        if let Some(p) = &a.output {
            // A partial archive is worse than none.
            let _ = std::fs::remove_file(p);
        }
    }
    result.map(|_| 0)
}

/// Docker's `image inspect` shape, from the stored config and manifest.
fn inspect_json(d: &pb::ImageDetails) -> serde_json::Value {
    let cfg: serde_json::Value = serde_json::from_str(&d.config_json).unwrap_or_default();
    let manifest: serde_json::Value = serde_json::from_str(&d.manifest_json).unwrap_or_default();
    let s = d.summary.clone().unwrap_or_default();
    let repo_digests: Vec<String> = s
        .references
        .iter()
        .map(|r| format!("{}@{}", split_ref(r).0, s.manifest_digest))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    serde_json::json!({
        "Id": s.id,
        "RepoTags": s.references,
        "RepoDigests": repo_digests,
        "Created": cfg.get("created").cloned().unwrap_or_default(),
        "Author": cfg.get("author").cloned().unwrap_or_default(),
        "Config": cfg.get("config").cloned().unwrap_or_default(),
        "Architecture": cfg.get("architecture").cloned().unwrap_or_default(),
        "Variant": cfg.get("variant").cloned(),
        "Os": cfg.get("os").cloned().unwrap_or_default(),
        "Size": s.size,
        "RootFS": {"Type": "layers", "Layers": d.layers},
        "Manifest": manifest,
        "Node": d.node_id,
    })
}

async fn inspect(ctl: &mut Control, a: &ImageInspectArgs) -> Result<i32> {
    let mut all = Vec::new();
    let mut code = 0;
    for r in &a.references {
        match ctl
            .inspect_image(pb::InspectImageRequest {
                reference: r.clone(),
                node_id: String::new(),
            })
            .await
        {
            Ok(resp) => all.extend(resp.into_inner().images.iter().map(inspect_json)),
            Err(e) => {
                eprintln!("Error: {}", e.message());
                code = 1;
            }
        }
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&all).context("rendering the images as JSON")?
    );
    Ok(code)
}

async fn prune(ctl: &mut Control, a: &ImagePruneArgs) -> Result<i32> {
    if !a.force {
        let what = if a.all {
            "all images without at least one container associated to them"
        } else {
            "all dangling images"
        };
        eprint!("WARNING! This will remove {what}.\nAre you sure you want to continue? [y/N] ");
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .context("reading the answer")?;
        if !matches!(line.trim(), "y" | "Y" | "yes") {
            return Ok(0);
        }
    }
    let resp = ctl
        .prune_images(pb::PruneImagesRequest {
            all: a.all,
            node_id: String::new(),
        })
        .await
        .map_err(|s| client::status_err("pruning images", s))?
        .into_inner();
    if !resp.deleted.is_empty() {
        println!("Deleted Images:");
        for d in &resp.deleted {
            match d.split_once(": ") {
                Some((k, v)) => println!("{}: {v}", k.to_lowercase()),
                None => println!("{d}"),
            }
        }
        println!();
    }
    println!(
        "Total reclaimed space: {}",
        human_size(resp.reclaimed_bytes)
    );
    Ok(0)
}

async fn ls(ctl: &mut Control) -> Result<i32> {
    let resp = ctl
        .list_images(pb::ListImagesRequest::default())
        .await
        .map_err(|s| client::status_err("listing images", s))?
        .into_inner();
    let mut rows = Vec::new();
    for node in &resp.nodes {
        for img in &node.images {
            let short = img
                .id
                .trim_start_matches("sha256:")
                .chars()
                .take(12)
                .collect::<String>();
            let refs = if img.references.is_empty() {
                vec!["<none>:<none>".to_string()]
            } else {
                img.references.clone()
            };
            for r in refs {
                let (repo, tag) = split_ref(&r);
                rows.push(vec![
                    repo,
                    tag,
                    short.clone(),
                    human_size(img.size),
                    node.hostname.clone(),
                ]);
            }
        }
    }
    render::table(&["REPOSITORY", "TAG", "IMAGE ID", "SIZE", "NODE"], &rows);
    Ok(0)
}

fn split_ref(r: &str) -> (String, String) {
    if let Some((name, digest)) = r.split_once('@') {
        return (name.to_string(), digest.to_string());
    }
    // The tag is after the last ':' that follows the last '/'.
    let slash = r.rfind('/').map(|i| i + 1).unwrap_or(0);
    match r[slash..].rfind(':') {
        Some(i) => (r[..slash + i].to_string(), r[slash + i + 1..].to_string()),
        None => (r.to_string(), "latest".to_string()),
    }
}

fn human_size(b: u64) -> String {
    let b = b as f64;
    if b >= 1e9 {
        format!("{:.2}GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1}MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1}kB", b / 1e3)
    } else {
        format!("{b}B")
    }
}

/// Streams `reader` as chunks after `head`.
async fn send(
    ctl: &mut Control,
    mut reader: Box<dyn Read + Send>,
    head: pb::ImageArchiveChunk,
) -> Result<pb::LoadImageResponse> {
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::ImageArchiveChunk>(4);
    let reading = tokio::task::spawn_blocking(move || -> Result<()> {
        let mut first = Some(head);
        loop {
            let mut buf = vec![0u8; CHUNK];
            let n = reader.read(&mut buf).context("reading the archive")?;
            if n == 0 {
                // Empty input still sends the head, so the node says why.
                if let Some(h) = first.take() {
                    let _ = tx.blocking_send(h);
                }
                return Ok(());
            }
            buf.truncate(n);
            let mut chunk = first.take().unwrap_or_default();
            chunk.data = buf;
            if tx.blocking_send(chunk).is_err() {
                return Ok(());
            }
        }
    });
    let resp = ctl
        .load_image(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|s| client::status_err("loading the image", s));
    reading.await.context("archive reader")??;
    Ok(resp?.into_inner())
}

/// Applies one Dockerfile instruction (`docker import --change`).
fn apply_change(c: &mut pb::ImageConfig, change: &str) -> Result<()> {
    let (instr, rest) = change
        .trim()
        .split_once(char::is_whitespace)
        .map(|(a, b)| (a.to_ascii_uppercase(), b.trim().to_string()))
        .unwrap_or_else(|| (change.trim().to_ascii_uppercase(), String::new()));
    let words = |s: &str| -> Result<Vec<String>> {
        if s.starts_with('[') {
            serde_json::from_str::<Vec<String>>(s)
                .with_context(|| format!("--change {instr}: invalid JSON array {s}"))
        } else {
            Ok(vec!["/bin/sh".into(), "-c".into(), s.to_string()])
        }
    };
    match instr.as_str() {
        "CMD" => c.cmd = Some(pb::StringList { values: words(&rest)? }),
        "ENTRYPOINT" => c.entrypoint = Some(pb::StringList { values: words(&rest)? }),
        "ENV" => {
            let kv = match rest.split_once('=') {
                Some((k, v)) => format!("{}={}", k.trim(), v.trim()),
                None => match rest.split_once(char::is_whitespace) {
                    Some((k, v)) => format!("{k}={}", v.trim()),
                    None => bail!("--change ENV needs KEY=VALUE"),
                },
            };
            c.env.push(kv);
        }
        "WORKDIR" => c.working_dir = rest,
        "USER" => c.user = rest,
        "STOPSIGNAL" => c.stop_signal = rest,
        "EXPOSE" => c.exposed_ports.extend(rest.split_whitespace().map(|p| {
            if p.contains('/') { p.to_string() } else { format!("{p}/tcp") }
        })),
        "LABEL" => {
            let Some((k, v)) = rest.split_once('=') else {
                bail!("--change LABEL needs KEY=VALUE");
            };
            c.labels.insert(k.trim().into(), v.trim().trim_matches('"').into());
        }
        other => bail!("--change {other}: not supported (use CMD, ENTRYPOINT, ENV, WORKDIR, USER, STOPSIGNAL, EXPOSE, LABEL)"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_references() {
        assert_eq!(split_ref("busybox:1.36"), ("busybox".into(), "1.36".into()));
        assert_eq!(
            split_ref("localhost:5000/x"),
            ("localhost:5000/x".into(), "latest".into())
        );
        assert_eq!(
            split_ref("localhost:5000/x:2"),
            ("localhost:5000/x".into(), "2".into())
        );
    }

    #[test]
    fn applies_dockerfile_changes() {
        let mut c = pb::ImageConfig::default();
        apply_change(&mut c, r#"CMD ["/demo", "web"]"#).unwrap();
        apply_change(&mut c, "ENV A=1").unwrap();
        apply_change(&mut c, "WORKDIR /app").unwrap();
        assert_eq!(c.cmd.unwrap().values, vec!["/demo", "web"]);
        assert_eq!(c.env, vec!["A=1"]);
        assert_eq!(c.working_dir, "/app");
        assert!(apply_change(&mut pb::ImageConfig::default(), "RUN x").is_err());
    }
}
