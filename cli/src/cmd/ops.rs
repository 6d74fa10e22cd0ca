//! `top` and `stats`: per-container views read on the nodes (processes from
//! /proc, counters from cgroups), relayed by the manager.
//!
//! Read-only: never changes what runs.

use crate::client::{self, Control};
use crate::opts::Global;
use crate::render;
use anyhow::Result;
use clap::Args;
use flotilla_proto::v1 as pb;
use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct TopArgs {
    /// Services (default: all).
    pub services: Vec<String>,
}

#[derive(Args, Debug)]
pub struct StatsArgs {
    /// Print one sample and exit.
    #[arg(long)]
    pub no_stream: bool,
    /// Output format: table (default) or json (one object per line).
    #[arg(long, default_value = "table")]
    pub format: String,
    /// Services (default: all).
    pub services: Vec<String>,
}

/// Container names of the stack's tasks, by task id.
async fn names(ctl: &mut Control, stack: &str) -> Result<BTreeMap<String, String>> {
    let resp = ctl
        .list_tasks(pb::ListTasksRequest {
            stack: stack.into(),
            all: true,
            ..Default::default()
        })
        .await
        .map_err(|s| client::status_err(&format!("listing the tasks of {stack}"), s))?
        .into_inner();
    Ok(resp.tasks.into_iter().map(|t| (t.id, t.name)).collect())
}

fn clock(ms: u64) -> String {
    let s = ms / 1000;
    format!("{:02}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}

fn stime(t: Option<&pb::Timestamp>) -> String {
    t.map(|t| {
        let secs = t.to_system().duration_since(std::time::UNIX_EPOCH);
        let secs = secs.map(|d| d.as_secs()).unwrap_or(0);
        let day = secs % 86_400;
        format!("{:02}:{:02}", day / 3600, (day / 60) % 60)
    })
    .unwrap_or_default()
}

/// `flotilla top`: a table of processes per container, as `docker compose top`.
pub async fn top(g: &Global, a: &TopArgs) -> Result<i32> {
    let stack = super::project_name(g)?;
    let mut ctl = client::connect(g).await?;
    let names = names(&mut ctl, &stack).await?;
    let resp = ctl
        .top(pb::TopRequest {
            stack: stack.clone(),
            services: a.services.clone(),
            ..Default::default()
        })
        .await
        .map_err(|s| client::status_err(&format!("top in stack {stack}"), s))?
        .into_inner();
    let mut tasks = resp.tasks;
    tasks.sort_by(|x, y| names.get(&x.task_id).cmp(&names.get(&y.task_id)));
    let mut code = 0;
    for (i, t) in tasks.iter().enumerate() {
        let name = names.get(&t.task_id).cloned().unwrap_or(t.task_id.clone());
        if i > 0 {
            println!();
        }
        println!("{name}");
        if !t.error.is_empty() {
            eprintln!("error: {name}: {}", t.error);
            code = 1;
            continue;
        }
        let rows: Vec<Vec<String>> = t
            .processes
            .iter()
            .map(|p| {
                vec![
                    if p.user.is_empty() {
                        p.uid.to_string()
                    } else {
                        p.user.clone()
                    },
                    p.pid.to_string(),
                    p.ppid.to_string(),
                    p.state.clone(),
                    stime(p.started_at.as_ref()),
                    clock(p.cpu_time_ms),
                    p.command.clone(),
                ]
            })
            .collect();
        render::table(&["UID", "PID", "PPID", "S", "STIME", "TIME", "CMD"], &rows);
    }
    Ok(code)
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n}B")
    } else {
        format!("{v:.2}{}", UNITS[u])
    }
}

/// CPU % between two samples, as `docker stats` computes it: the
/// container's share of all CPUs' time, times the number of CPUs.
pub fn cpu_percent(prev: Option<&pb::ContainerStats>, cur: &pb::ContainerStats) -> f64 {
    let Some(prev) = prev else { return 0.0 };
    let cpu = cur.cpu_usage_ns.saturating_sub(prev.cpu_usage_ns) as f64;
    let sys = cur.system_cpu_ns.saturating_sub(prev.system_cpu_ns) as f64;
    if sys <= 0.0 {
        return 0.0;
    }
    cpu / sys * f64::from(cur.online_cpus.max(1)) * 100.0
}

async fn sample(
    ctl: &mut Control,
    stack: &str,
    services: &[String],
) -> Result<Vec<pb::ContainerStats>> {
    Ok(ctl
        .stats(pb::StatsRequest {
            stack: stack.into(),
            services: services.to_vec(),
            ..Default::default()
        })
        .await
        .map_err(|s| client::status_err(&format!("stats of stack {stack}"), s))?
        .into_inner()
        .stats)
}

/// `flotilla stats`: resource usage per container, refreshed every second
/// (or once with `--no-stream`, which still takes two samples for CPU %).
pub async fn stats(g: &Global, a: &StatsArgs) -> Result<i32> {
    let json = match a.format.as_str() {
        "table" => false,
        "json" => true,
        f => anyhow::bail!("unknown --format {f:?}: use table or json"),
    };
    let stack = super::project_name(g)?;
    let mut ctl = client::connect(g).await?;
    let names = names(&mut ctl, &stack).await?;
    let mut prev: BTreeMap<String, pb::ContainerStats> = sample(&mut ctl, &stack, &a.services)
        .await?
        .into_iter()
        .map(|s| (s.task_id.clone(), s))
        .collect();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let cur = sample(&mut ctl, &stack, &a.services).await?;
        let mut rows = Vec::new();
        let mut lines = Vec::new();
        for s in &cur {
            let name = names.get(&s.task_id).cloned().unwrap_or(s.task_id.clone());
            if !s.error.is_empty() {
                eprintln!("error: {name}: {}", s.error);
                continue;
            }
            let cpu = cpu_percent(prev.get(&s.task_id), s);
            let mem_pct = if s.memory_limit_bytes > 0 {
                s.memory_usage_bytes as f64 / s.memory_limit_bytes as f64 * 100.0
            } else {
                0.0
            };
            let limit = if s.memory_limit_bytes > 0 {
                bytes(s.memory_limit_bytes)
            } else {
                "unlimited".to_string()
            };
            if json {
                lines.push(serde_json::json!({
                    "Name": name, "ID": s.task_id,
                    "CPUPerc": format!("{cpu:.2}%"),
                    "MemUsage": format!("{} / {limit}", bytes(s.memory_usage_bytes)),
                    "MemPerc": format!("{mem_pct:.2}%"),
                    "NetIO": format!("{} / {}", bytes(s.net_rx_bytes), bytes(s.net_tx_bytes)),
                    "BlockIO": format!("{} / {}", bytes(s.block_read_bytes), bytes(s.block_write_bytes)),
                    "PIDs": s.pids.to_string(),
                }));
            } else {
                rows.push(vec![
                    name,
                    format!("{cpu:.2}%"),
                    format!("{} / {limit}", bytes(s.memory_usage_bytes)),
                    format!("{mem_pct:.2}%"),
                    format!("{} / {}", bytes(s.net_rx_bytes), bytes(s.net_tx_bytes)),
                    format!(
                        "{} / {}",
                        bytes(s.block_read_bytes),
                        bytes(s.block_write_bytes)
                    ),
                    s.pids.to_string(),
                ]);
            }
        }
        rows.sort();
        if !a.no_stream && !json {
            // Redraw in place, as docker stats does on a terminal.
            print!("\x1b[2J\x1b[H");
        }
        if json {
            for l in lines {
                println!("{l}");
            }
        } else {
            render::table(
                &[
                    "NAME",
                    "CPU %",
                    "MEM USAGE / LIMIT",
                    "MEM %",
                    "NET I/O",
                    "BLOCK I/O",
                    "PIDS",
                ],
                &rows,
            );
        }
        let _ = std::io::stdout().flush();
        if a.no_stream {
            return Ok(0);
        }
        prev = cur.into_iter().map(|s| (s.task_id.clone(), s)).collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_percent_is_share_of_all_cpus_times_cpus() {
        let a = pb::ContainerStats {
            cpu_usage_ns: 1_000,
            system_cpu_ns: 10_000,
            online_cpus: 2,
            ..Default::default()
        };
        let b = pb::ContainerStats {
            cpu_usage_ns: 2_000,
            system_cpu_ns: 20_000,
            online_cpus: 2,
            ..Default::default()
        };
        assert!((cpu_percent(Some(&a), &b) - 20.0).abs() < 1e-9);
        assert_eq!(cpu_percent(None, &b), 0.0);
    }

    #[test]
    fn byte_units_like_docker() {
        assert_eq!(bytes(512), "512B");
        assert_eq!(bytes(64 << 20), "64.00MiB");
        assert_eq!(bytes(1536), "1.50KiB");
    }
}

#[derive(Args, Debug)]
pub struct CpArgs {
    /// Replica of the service, when it has several (default: the first running).
    #[arg(long, default_value_t = 0)]
    pub index: u32,
    /// SERVICE:SRC_PATH or a local path ("-": a tar stream on stdin).
    pub src: String,
    /// SERVICE:DEST_PATH or a local path ("-": a tar stream on stdout).
    pub dest: String,
}

/// `SERVICE:PATH` → (service, path); a local path (one with a '/' before
/// any ':', or no ':') → None, as docker decides.
fn container_side(arg: &str) -> Option<(&str, &str)> {
    let (svc, path) = arg.split_once(':')?;
    if svc.is_empty() || svc.contains('/') {
        return None;
    }
    Some((svc, path))
}

/// `flotilla cp`: copies files between a service's container and the local
/// machine, as `docker compose cp`.
pub async fn cp(g: &Global, a: &CpArgs) -> Result<i32> {
    let stack = super::project_name(g)?;
    match (container_side(&a.src), container_side(&a.dest)) {
        (Some((svc, path)), None) => cp_from(g, &stack, a.index, svc, path, &a.dest).await,
        (None, Some((svc, path))) => cp_to(g, &stack, a.index, &a.src, svc, path).await,
        (Some(_), Some(_)) => anyhow::bail!(
            "copying between containers is not supported: one side must be a local path"
        ),
        (None, None) => anyhow::bail!("one of {} and {} must be SERVICE:PATH", a.src, a.dest),
    }
}

fn abs(path: &str) -> String {
    if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    }
}

async fn cp_from(
    g: &Global,
    stack: &str,
    index: u32,
    svc: &str,
    path: &str,
    dest: &str,
) -> Result<i32> {
    use anyhow::Context;
    use futures::StreamExt;
    let mut ctl = client::connect(g).await?;
    let mut stream = ctl
        .copy_from_container(pb::CopyRequest {
            stack: stack.into(),
            service: svc.into(),
            index,
            path: abs(path),
            task_id: String::new(),
        })
        .await
        .map_err(|s| client::status_err(&format!("copying {svc}:{path}"), s))?
        .into_inner();
    let mut tar_bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|s| client::status_err(&format!("copying {svc}:{path}"), s))?;
        if dest == "-" {
            std::io::stdout()
                .write_all(&chunk.data)
                .context("writing to stdout")?;
        } else {
            tar_bytes.extend_from_slice(&chunk.data);
        }
    }
    if dest == "-" {
        std::io::stdout().flush().context("writing to stdout")?;
        return Ok(0);
    }
    let dest = std::path::Path::new(dest);
    if dest.is_dir() {
        tar::Archive::new(&tar_bytes[..])
            .unpack(dest)
            .with_context(|| format!("unpacking into {}", dest.display()))?;
        return Ok(0);
    }
    // A new name: unpack beside it, then give the top entry that name.
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    anyhow::ensure!(
        parent.is_dir(),
        "the destination directory {} does not exist",
        parent.display()
    );
    let tmp = tempfile::Builder::new()
        .prefix(".flotilla-cp-")
        .tempdir_in(&parent)
        .with_context(|| format!("making a temporary directory in {}", parent.display()))?;
    tar::Archive::new(&tar_bytes[..])
        .unpack(tmp.path())
        .with_context(|| format!("unpacking into {}", tmp.path().display()))?;
    let top = std::path::Path::new(path)
        .file_name()
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| ".".into());
    std::fs::rename(tmp.path().join(&top), dest)
        .with_context(|| format!("moving the copy to {}", dest.display()))?;
    Ok(0)
}

async fn cp_to(
    g: &Global,
    stack: &str,
    index: u32,
    src: &str,
    svc: &str,
    path: &str,
) -> Result<i32> {
    use anyhow::Context;
    let data: Vec<u8> = if src == "-" {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut v)
            .context("reading a tar stream from stdin")?;
        v
    } else {
        let p = std::path::Path::new(src);
        let meta = std::fs::symlink_metadata(p).with_context(|| format!("reading {src}"))?;
        let name = p
            .file_name()
            .map(std::path::PathBuf::from)
            .with_context(|| format!("{src} has no file name to copy as"))?;
        let mut b = tar::Builder::new(Vec::new());
        b.follow_symlinks(false);
        if meta.is_dir() {
            b.append_dir_all(&name, p)
        } else {
            b.append_path_with_name(p, &name)
        }
        .with_context(|| format!("archiving {src}"))?;
        b.into_inner().with_context(|| format!("archiving {src}"))?
    };
    let target = pb::CopyRequest {
        stack: stack.into(),
        service: svc.into(),
        index,
        path: abs(path),
        task_id: String::new(),
    };
    let mut chunks = vec![pb::CopyChunk {
        target: Some(target),
        data: Vec::new(),
    }];
    chunks.extend(data.chunks(256 * 1024).map(|c| pb::CopyChunk {
        target: None,
        data: c.to_vec(),
    }));
    let mut ctl = client::connect(g).await?;
    ctl.copy_to_container(tokio_stream::iter(chunks))
        .await
        .map_err(|s| client::status_err(&format!("copying into {svc}:{path}"), s))?;
    Ok(0)
}

/// Puts the local terminal in raw mode until dropped.
struct RawMode {
    saved: nix::sys::termios::Termios,
}

impl RawMode {
    fn enter() -> Option<RawMode> {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&stdin, SetArg::TCSANOW, &raw).ok()?;
        Some(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(
            std::io::stdin(),
            nix::sys::termios::SetArg::TCSANOW,
            &self.saved,
        );
    }
}

fn terminal_size() -> Option<pb::TerminalSize> {
    use std::os::fd::AsFd;
    flotilla_runtime::container::pty::window_size(std::io::stdout().as_fd())
        .or_else(|| flotilla_runtime::container::pty::window_size(std::io::stdin().as_fd()))
        .map(|(rows, cols)| pb::TerminalSize {
            rows: rows.into(),
            cols: cols.into(),
        })
}

/// `flotilla exec`: runs a command in a service's container with stdin,
/// stdout and stderr attached; with a terminal (the default when stdin is
/// one, as in Compose) the local terminal is raw and resizes follow.
/// Exits with the command's exit code.
pub async fn exec(g: &Global, a: &crate::cmd::lifecycle::ExecArgs) -> Result<i32> {
    use futures::StreamExt;
    use std::io::IsTerminal;
    let stack = super::project_name(g)?;
    let tty = a.tty || (!a.no_tty && std::io::stdin().is_terminal());
    let mut ctl = client::connect(g).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::ExecInput>(16);
    let _ = tx
        .send(pb::ExecInput {
            start: Some(pb::ExecRequest {
                stack: stack.clone(),
                service: a.service.clone(),
                index: a.index,
                args: a.command.clone(),
                env: a.env.clone(),
                workdir: a.workdir.clone().unwrap_or_default(),
                user: a.user.clone().unwrap_or_default(),
                tty,
                interactive: true,
                size: if tty { terminal_size() } else { None },
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    let mut out = ctl
        .exec_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|s| client::status_err(&format!("exec in service {}", a.service), s))?
        .into_inner();
    // Stdin on a plain thread: a blocked read must not keep the runtime
    // from shutting down when the command exits.
    let stdin_tx = tx.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        let mut stdin = std::io::stdin().lock();
        loop {
            match std::io::Read::read(&mut stdin, &mut buf) {
                Ok(0) | Err(_) => {
                    let _ = stdin_tx.blocking_send(pb::ExecInput {
                        stdin_eof: true,
                        ..Default::default()
                    });
                    return;
                }
                Ok(n) => {
                    let m = pb::ExecInput {
                        stdin: buf[..n].to_vec(),
                        ..Default::default()
                    };
                    if stdin_tx.blocking_send(m).is_err() {
                        return;
                    }
                }
            }
        }
    });
    let _raw = if tty { RawMode::enter() } else { None };
    if tty {
        let resize_tx = tx.clone();
        tokio::spawn(async move {
            let Ok(mut winch) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
            else {
                return;
            };
            while winch.recv().await.is_some() {
                let m = pb::ExecInput {
                    resize: terminal_size(),
                    ..Default::default()
                };
                if resize_tx.send(m).await.is_err() {
                    return;
                }
            }
        });
    }
    drop(tx);
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    while let Some(m) = out.next().await {
        let m = m.map_err(|s| client::status_err(&format!("exec in service {}", a.service), s))?;
        if !m.stdout.is_empty() {
            let _ = stdout.write_all(&m.stdout);
            let _ = stdout.flush();
        }
        if !m.stderr.is_empty() {
            let _ = stderr.write_all(&m.stderr);
            let _ = stderr.flush();
        }
        if let Some(code) = m.exit_code {
            return Ok(code);
        }
    }
    anyhow::bail!(
        "exec in service {}: the stream ended without an exit code",
        a.service
    )
}
