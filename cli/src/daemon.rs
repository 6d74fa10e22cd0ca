//! The embedded single-host daemon: a manager and an agent in one process,
//! the agent talking to the manager over the same gRPC API a remote agent
//! would use. Not a shortcut: a one-node cluster.

use crate::opts::{Global, ServerArgs};
use anyhow::{Context, Result};
use flotilla_agent::{Agent, AgentConfig};
use flotilla_manager::{Manager, ManagerConfig};
use flotilla_proto::transport::{self, Addr};
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};

/// The embedded DNS server's upstream resolvers: `--dns-upstream`, or
/// the host's non-loopback nameservers.
fn dns_upstream(arg: Option<&str>) -> Result<Vec<std::net::SocketAddr>> {
    match arg.map(str::trim) {
        None | Some("") => {
            let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
            Ok(flotilla_agent::dns::host_upstreams(&host))
        }
        Some("none") => Ok(Vec::new()),
        Some(list) => list
            .split(',')
            .map(|s| {
                flotilla_agent::dns::parse_upstream(s)
                    .with_context(|| format!("--dns-upstream / FLOTILLA_DNS_UPSTREAM: {s:?}"))
            })
            .collect(),
    }
}

/// Runs the daemon until SIGTERM/SIGINT or `flotilla daemon stop`.
pub async fn serve(g: &Global, args: &ServerArgs) -> Result<i32> {
    let Addr::Unix(sock) = Addr::parse(&g.host)? else {
        anyhow::bail!(
            "the embedded daemon listens on a unix socket; got --host {}",
            g.host
        );
    };
    std::fs::create_dir_all(&g.state_dir)
        .with_context(|| format!("creating state dir {}", g.state_dir.display()))?;
    std::fs::create_dir_all(&g.run_dir)
        .with_context(|| format!("creating run dir {}", g.run_dir.display()))?;
    let _lock = lock_state_dir(&g.state_dir)?;

    let manager = Manager::start(ManagerConfig {
        state_dir: g.state_dir.join("manager"),
        snapshot_every: args.snapshot_every,
        heartbeat_period: Duration::from_secs(1),
        address_pool: args.address_pool.clone(),
    })
    .await
    .context("starting the manager")?;

    let incoming = transport::bind_unix(&sock)?;
    let control = manager.control_service();
    let dispatcher = manager.dispatcher_service();
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(control)
            .add_service(dispatcher)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stop_rx.changed().await;
            })
            .await
    });

    let hostname = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into());
    let agent = Agent::start(AgentConfig {
        manager_addr: format!("unix://{}", sock.display()),
        state_dir: g.state_dir.join("agent"),
        run_dir: g.run_dir.clone(),
        listen: g.run_dir.join("agent.sock"),
        cgroup_parent: args.cgroup_parent.clone(),
        shim_exe: std::env::current_exe().context("finding the flotilla binary")?,
        hostname,
        dns_upstream: dns_upstream(args.dns_upstream.as_deref())?,
    })
    .await
    .context("starting the node agent")?;
    tracing::info!(socket = %sock.display(), state = %g.state_dir.display(), "flotilla daemon ready");

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        _ = manager.shutdown_requested() => tracing::info!("shutdown requested"),
    }
    // Containers keep running: their shims own them.
    agent.shutdown().await;
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    manager.shutdown().await;
    let _ = std::fs::remove_file(&sock);
    Ok(0)
}

/// One daemon per state directory: a second one would corrupt the store.
fn lock_state_dir(dir: &std::path::Path) -> Result<nix::fcntl::Flock<std::fs::File>> {
    let path = dir.join("daemon.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
        anyhow::anyhow!(
            "another flotilla daemon already uses {} (lock {}): {e}",
            dir.display(),
            path.display()
        )
    })
}
