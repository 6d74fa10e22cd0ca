//! Reaching the daemon: connect to `--host`, and for the default local
//! socket start the embedded daemon first when none runs (`flotilla up` on a
//! machine with nothing set up).

use crate::opts::Global;
use anyhow::{bail, Context, Result};
use flotilla_proto::transport::{self, Addr};
use flotilla_proto::v1::control_client::ControlClient;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// A Control API client.
pub type Control = ControlClient<Channel>;

fn client(ch: Channel) -> Control {
    ControlClient::new(ch)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

/// Connects to a running daemon; fails if none answers.
pub async fn connect(g: &Global) -> Result<Control> {
    let ch = transport::connect(&g.host)
        .await
        .with_context(|| format!("no Flotilla daemon answers at {} (start one with `flotilla server`, or run `flotilla up`)", g.host))?;
    Ok(client(ch))
}

/// Connects to the daemon, starting the local one if it is not running.
pub async fn connect_or_start(g: &Global) -> Result<Control> {
    if let Ok(ch) = transport::connect(&g.host).await {
        return Ok(client(ch));
    }
    let Addr::Unix(sock) = Addr::parse(&g.host)? else {
        return connect(g).await;
    };
    start_daemon(g, &sock)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match transport::connect(&g.host).await {
            Ok(ch) => return Ok(client(ch)),
            Err(e) if Instant::now() > deadline => {
                return Err(e).with_context(|| {
                    format!(
                        "the local daemon did not come up; see {}",
                        g.state_dir.join("daemon.log").display()
                    )
                })
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

fn start_daemon(g: &Global, sock: &std::path::Path) -> Result<()> {
    use std::os::unix::process::CommandExt;
    std::fs::create_dir_all(&g.state_dir)
        .with_context(|| format!("creating {}", g.state_dir.display()))?;
    let log_path = g.state_dir.join("daemon.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let exe = std::env::current_exe().context("finding the flotilla binary")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("server")
        .arg("--host")
        .arg(format!("unix://{}", sock.display()))
        .arg("--state-dir")
        .arg(&g.state_dir)
        .arg("--run-dir")
        .arg(&g.run_dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("duplicating log handle")?)
        .stderr(log);
    // Its own session: the daemon must outlive this command and its terminal.
    cmd.process_group(0);
    let child = cmd.spawn().context("starting the local daemon")?;
    if g.debug {
        eprintln!("started local daemon (pid {})", child.id());
    }
    Ok(())
}

/// Fails with the daemon's message for a gRPC status.
pub fn status_err(what: &str, s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{what}: {}", s.message())
}

/// Fails if `host` is not a local unix socket (for commands that only make
/// sense on the daemon's own host).
pub fn require_local(g: &Global) -> Result<std::path::PathBuf> {
    match Addr::parse(&g.host)? {
        Addr::Unix(p) => Ok(p),
        Addr::Tcp(_) => bail!(
            "this command manages the local daemon; --host {} is remote",
            g.host
        ),
    }
}
