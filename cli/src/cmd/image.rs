//! `flotilla image ls|load|import|rm`: the nodes' image stores, through the
//! manager.

use crate::client::{self, Control};
use crate::opts::{Global, ImageCmd};
use crate::render;
use anyhow::{bail, Context, Result};
use flotilla_proto::v1 as pb;
use std::io::Read;

const CHUNK: usize = 1 << 20;

pub async fn run(g: &Global, c: &ImageCmd) -> Result<i32> {
    let mut ctl = client::connect_or_start(g).await?;
    match c {
        ImageCmd::Ls => ls(&mut ctl).await,
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
        ImageCmd::Rm { reference } => {
            let resp = ctl
                .remove_image(pb::RemoveImageRequest {
                    reference: reference.clone(),
                    node_id: String::new(),
                    force: false,
                })
                .await
                .map_err(|s| client::status_err(&format!("removing image {reference}"), s))?
                .into_inner();
            for r in resp.removed {
                println!("Untagged/Deleted: {r}");
            }
            Ok(0)
        }
    }
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
