//! `flotilla cluster init|join|join-token|leave` and `flotilla node ls`.
//!
//! All but `join` ask the local daemon's `Cluster` service. `join` runs
//! before the daemon: it creates the node's Raft identity in the state
//! directory (without a configuration of its own), performs the pinned
//! TLS join handshake with the given manager, and stores the certificate
//! and the members; the daemon started afterwards joins the cluster as a
//! learner and is promoted once caught up.

use crate::opts::Global;
use anyhow::{bail, Context, Result};
use flotilla_manager::cluster::{join, members_to_peers, save_joined};
use flotilla_manager::raft::RedbStorage;
use flotilla_proto::transport;
use flotilla_proto::v1::cluster_client::ClusterClient;
use flotilla_proto::v1::{
    ClusterInitRequest, JoinRole, JoinTokenRequest, LeaveRequest, ListMembersRequest,
};
use tonic::transport::Channel;

/// `flotilla cluster ...`
#[derive(clap::Subcommand, Debug)]
pub enum ClusterCmd {
    /// Turn the local daemon into the first manager of a new cluster.
    Init {
        /// IP:PORT other nodes reach this manager at (it listens there,
        /// mutual TLS).
        #[arg(long)]
        advertise_addr: String,
    },
    /// Join the cluster of the manager at ADDR (run before the local daemon
    /// starts).
    Join {
        #[arg(long)]
        token: String,
        /// IP:PORT this node is reached at (default: the local address
        /// routed towards ADDR, with ADDR's port).
        #[arg(long)]
        advertise_addr: Option<String>,
        /// The manager's IP:PORT.
        addr: String,
    },
    /// Show (or rotate) the token for joining as a worker or a manager.
    JoinToken {
        /// worker or manager
        role: String,
        #[arg(long)]
        rotate: bool,
        /// Print only the token.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Leave the cluster (a manager is removed from Raft).
    Leave {
        #[arg(long)]
        force: bool,
    },
}

/// `flotilla node ...`
#[derive(clap::Subcommand, Debug)]
pub enum NodeCmd {
    /// List the managers and their Raft status.
    Ls,
}

async fn client(g: &Global) -> Result<ClusterClient<Channel>> {
    let ch = transport::connect(&g.host)
        .await
        .with_context(|| format!("no Flotilla daemon answers at {}", g.host))?;
    Ok(ClusterClient::new(ch))
}

fn status_err(what: &str) -> impl FnOnce(tonic::Status) -> anyhow::Error + '_ {
    move |s| anyhow::anyhow!("{what}: {}", s.message())
}

pub async fn run(g: &Global, cmd: &ClusterCmd) -> Result<i32> {
    match cmd {
        ClusterCmd::Init { advertise_addr } => {
            let r = client(g)
                .await?
                .init(ClusterInitRequest {
                    advertise_addr: advertise_addr.clone(),
                })
                .await
                .map_err(status_err("cluster init"))?
                .into_inner();
            println!("Cluster initialized: {}", r.cluster_id);
            println!();
            println!("To add a worker to this cluster, run the following command:");
            println!(
                "    flotilla cluster join --token {} {advertise_addr}",
                r.worker_token
            );
            println!();
            println!("To add a manager to this cluster, run the following command:");
            println!(
                "    flotilla cluster join --token {} {advertise_addr}",
                r.manager_token
            );
            Ok(0)
        }
        ClusterCmd::JoinToken {
            role,
            rotate,
            quiet,
        } => {
            let role = match role.as_str() {
                "worker" => JoinRole::Worker,
                "manager" => JoinRole::Manager,
                other => bail!("join-token: expected worker or manager, got {other:?}"),
            };
            let r = client(g)
                .await?
                .join_token(JoinTokenRequest {
                    role: role as i32,
                    rotate: *rotate,
                })
                .await
                .map_err(status_err("cluster join-token"))?
                .into_inner();
            if *quiet {
                println!("{}", r.token);
            } else {
                println!(
                    "flotilla cluster join --token {} <manager address>",
                    r.token
                );
            }
            Ok(0)
        }
        ClusterCmd::Join {
            token,
            advertise_addr,
            addr,
        } => join_cmd(g, token, advertise_addr.as_deref(), addr).await,
        ClusterCmd::Leave { force } => {
            client(g)
                .await?
                .leave(LeaveRequest {
                    raft_id: 0,
                    force: *force,
                })
                .await
                .map_err(status_err("cluster leave"))?;
            println!("Node left the cluster.");
            Ok(0)
        }
    }
}

async fn join_cmd(
    g: &Global,
    token: &str,
    advertise_addr: Option<&str>,
    manager: &str,
) -> Result<i32> {
    if transport::connect(&g.host).await.is_ok() {
        bail!(
            "a local daemon is running at {}; stop it (flotilla daemon stop) before joining, \
             then start it again",
            g.host
        );
    }
    let manager_dir = g.state_dir.join("manager");
    let advertise = match advertise_addr {
        Some(a) => a.to_string(),
        None => default_advertise(manager)?,
    };
    let raft_id = {
        let storage = RedbStorage::open(&manager_dir, false)
            .with_context(|| format!("opening the Raft state in {}", manager_dir.display()))?;
        if !storage.conf_state().voters.is_empty() || storage.last_log_index() > 0 {
            bail!(
                "{} already holds a cluster of its own; joining needs a fresh state directory",
                manager_dir.display()
            );
        }
        storage.raft_id()
    };
    let hostname = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default();
    let joined = join::join_via_leader(manager, token, raft_id, &advertise, &hostname)
        .await
        .with_context(|| format!("joining the cluster of {manager}"))?;
    let dir = crate::cluster_daemon::cluster_dir(&manager_dir);
    save_joined(&dir, &joined, &advertise)
        .with_context(|| format!("saving the cluster identity in {}", dir.display()))?;
    {
        let mut storage = RedbStorage::open(&manager_dir, false)
            .with_context(|| format!("opening the Raft state in {}", manager_dir.display()))?;
        storage
            .set_peers(&members_to_peers(&joined.response.members))
            .with_context(|| "saving the managers' addresses")?;
    }
    match joined.role() {
        JoinRole::Manager => println!("This node joined a cluster as a manager."),
        JoinRole::Worker => println!("This node joined a cluster as a worker."),
    }
    Ok(0)
}

/// `<local address towards the manager>:<the manager's port>`.
fn default_advertise(manager: &str) -> Result<String> {
    let target: std::net::SocketAddr = manager
        .parse()
        .with_context(|| format!("manager address {manager:?}: expected IP:PORT"))?;
    let sock = std::net::UdpSocket::bind(("0.0.0.0", 0)).context("finding a local address")?;
    // No packet is sent: connecting a UDP socket only picks the route.
    sock.connect(target)
        .with_context(|| format!("finding a route to {manager}"))?;
    let local = sock.local_addr().context("finding a local address")?;
    Ok(format!("{}:{}", local.ip(), target.port()))
}

pub async fn node(g: &Global, cmd: &NodeCmd) -> Result<i32> {
    match cmd {
        NodeCmd::Ls => {
            let r = client(g)
                .await?
                .list_members(ListMembersRequest {})
                .await
                .map_err(status_err("node ls"))?
                .into_inner();
            println!(
                "{:<22} {:<24} {:<10} MANAGER STATUS",
                "RAFT ID", "ADDRESS", "ROLE"
            );
            for m in r.members {
                let status = if m.leader {
                    "Leader"
                } else if m.voter {
                    "Voter"
                } else {
                    "Learner (catching up)"
                };
                println!(
                    "{:<22} {:<24} {:<10} {status}",
                    m.raft_id, m.addr, "manager"
                );
            }
            Ok(0)
        }
    }
}
