//! The executor: keeps this node's containers equal to its assignments.
//!
//! One loop owns the node's view of its tasks. Every change (a new
//! assignment set, an operation finished, a container exited) re-runs the
//! pure [`controller::step`] for every task; the work a step asks for
//! (start, stop, remove) runs off the loop, one operation per task at a time,
//! and reports back to the loop when done.
//!
//! It never decides what should run or where: that is the manager's.

use crate::controller::{self, Container, Step};
use crate::dns::DnsServer;
use crate::network;
use crate::node_service::{KnownTasks, NodeService};
use crate::process::container_id;
use crate::session::{self, Outbox, SessionConfig};
use crate::signals;
use crate::tasks::{remove_task, start_task, OpContext, StartError};
use flotilla_proto::v1 as pb;
use flotilla_proto::v1::node_agent_server::NodeAgentServer;
use flotilla_runtime::container::{ContainerInfo, ContainerState, Runtime, RuntimeConfig};
use flotilla_runtime::image::ImageStore;
use flotilla_runtime::net::{self, firewall, Netlink};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Label on every container naming the task it runs (how a restarted agent
/// re-adopts containers).
pub const LABEL_TASK: &str = "flotilla.task.id";
/// Label naming the stack (for humans and `ps` on the host).
pub const LABEL_STACK: &str = "com.docker.compose.project";
/// Label naming the service.
pub const LABEL_SERVICE: &str = "com.docker.compose.service";

/// How an agent is set up.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The dispatcher's address (`unix:///run/flotilla/flotilla.sock`).
    pub manager_addr: String,
    /// Persistent state: images, containers, node id.
    pub state_dir: PathBuf,
    /// Volatile state: sockets, network namespaces.
    pub run_dir: PathBuf,
    /// Where this agent serves its NodeAgent service.
    pub listen: PathBuf,
    /// Parent cgroup of every container.
    pub cgroup_parent: String,
    /// The binary re-executed as `<shim_exe> shim ...`.
    pub shim_exe: PathBuf,
    /// The node's hostname as reported to the manager.
    pub hostname: String,
    /// Where the embedded DNS server forwards names it does not know
    /// (empty: answer them SERVFAIL).
    pub dns_upstream: Vec<std::net::SocketAddr>,
}

/// Errors starting the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("opening the image store at {path}: {source}")]
    Images {
        path: PathBuf,
        #[source]
        source: flotilla_runtime::image::ImageError,
    },
    #[error("opening the container runtime at {path}: {source}")]
    Runtime {
        path: PathBuf,
        #[source]
        source: flotilla_runtime::container::ContainerError,
    },
    #[error("serving the node agent API on {path}: {source}")]
    Listen {
        path: PathBuf,
        #[source]
        source: flotilla_proto::transport::TransportError,
    },
    #[error("connecting to netlink: {0}")]
    Netlink(#[source] net::NetError),
}

/// A running agent.
pub struct AgentHandle {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl AgentHandle {
    /// Stops the agent's loops. Containers keep running: their shims own
    /// them, and the next agent re-adopts them.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            t.abort();
            let _ = t.await;
        }
    }
}

/// The agent.
pub struct Agent;

impl Agent {
    /// Opens the node's runtime, serves the NodeAgent API, and starts the
    /// dispatcher session and the executor loop.
    pub async fn start(cfg: AgentConfig) -> Result<AgentHandle, AgentError> {
        let images_dir = cfg.state_dir.join("images");
        let images = ImageStore::open(&images_dir).map_err(|source| AgentError::Images {
            path: images_dir.clone(),
            source,
        })?;
        let containers_dir = cfg.state_dir.join("containers");
        let runtime = Runtime::new(RuntimeConfig {
            state_dir: containers_dir.clone(),
            run_dir: cfg.run_dir.clone(),
            cgroup_parent: cfg.cgroup_parent.clone(),
            shim_exe: cfg.shim_exe.clone(),
        })
        .map_err(|source| AgentError::Runtime {
            path: containers_dir,
            source,
        })?;
        let netlink = Netlink::connect().await.map_err(AgentError::Netlink)?;
        // Routing between bridges and out of the host needs forwarding on;
        // the base table holds Flotilla's own chains.
        tokio::task::spawn_blocking(|| {
            firewall::enable_ip_forward()?;
            firewall::ensure_base()?;
            if firewall::legacy_iptables_tables().iter().any(|t| t == "filter") {
                tracing::warn!("iptables-legacy has a filter table; if its FORWARD policy is DROP, forwarded container traffic is dropped (add ACCEPT rules for flt-* bridges in DOCKER-USER)");
            }
            Ok::<_, net::NetError>(())
        })
        .await
        .map_err(|e| AgentError::Netlink(net::NetError::ThreadPanicked { target: e.to_string() }))?
        .map_err(AgentError::Netlink)?;
        let host_networks = netlink.host_routes().await.unwrap_or_default();
        let images = Arc::new(images);
        let runtime = Arc::new(runtime);
        let known: KnownTasks = Arc::new(Mutex::new(HashMap::new()));
        let node_id_file = cfg.state_dir.join("node-id");
        let node_id = Arc::new(Mutex::new(session::read_node_id(&node_id_file)));

        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();

        let incoming = flotilla_proto::transport::bind_unix(&cfg.listen).map_err(|source| {
            AgentError::Listen {
                path: cfg.listen.clone(),
                source,
            }
        })?;
        let service = NodeService {
            node_id: node_id.clone(),
            hostname: cfg.hostname.clone(),
            images: images.clone(),
            runtime: runtime.clone(),
            tasks: known.clone(),
            tmp_dir: cfg.state_dir.join("tmp"),
            volumes_root: crate::tasks::volumes_root(&cfg.state_dir),
        };
        let mut stop_srv = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            let r = tonic::transport::Server::builder()
                .add_service(NodeAgentServer::new(service).max_decoding_message_size(64 << 20))
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stop_srv.changed().await;
                })
                .await;
            if let Err(e) = r {
                tracing::error!("node agent API stopped: {e}");
            }
        }));

        let outbox = Arc::new(Outbox::default());
        let (assign_tx, assign_rx) = mpsc::channel(16);
        let session_cfg = SessionConfig {
            manager_addr: cfg.manager_addr.clone(),
            agent_addr: format!("unix://{}", cfg.listen.display()),
            node_id_file,
            description: pb::NodeDescription {
                hostname: cfg.hostname.clone(),
                platform: Some(pb::Platform {
                    os: std::env::consts::OS.into(),
                    architecture: std::env::consts::ARCH.into(),
                }),
                nano_cpus: std::thread::available_parallelism()
                    .map(|n| n.get() as i64 * 1_000_000_000)
                    .unwrap_or(0),
                memory_bytes: total_memory(),
                engine_version: env!("CARGO_PKG_VERSION").into(),
                labels: Default::default(),
                host_networks,
            },
        };
        tasks.push(tokio::spawn(session::run(
            session_cfg,
            node_id,
            assign_tx,
            outbox.clone(),
            stop_rx.clone(),
        )));

        let nat = network::NatSync::start(network::owner_tag(&cfg.state_dir));
        let dns = DnsServer::new(cfg.dns_upstream.clone());
        let live_networks_file = cfg.state_dir.join("live-networks");
        let exec = Executor {
            cfg: Arc::new(cfg),
            runtime,
            images,
            netlink: Arc::new(netlink),
            outbox,
            known,
            entries: HashMap::new(),
            networks: HashMap::new(),
            services: Vec::new(),
            live_networks: load_live_networks(&live_networks_file),
            live_networks_file,
            tearing_down: HashSet::new(),
            have_assignments: false,
            peers: Vec::new(),
            nat,
            dns,
        };
        tasks.push(tokio::spawn(exec.run(assign_rx, stop_rx)));
        Ok(AgentHandle {
            stop: stop_tx,
            tasks,
        })
    }
}

/// Reads the `network-id bridge` lines a previous agent left.
fn load_live_networks(path: &std::path::Path) -> HashMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (id, bridge) = l.split_once(' ')?;
            Some((id.to_string(), bridge.to_string()))
        })
        .collect()
}

fn total_memory() -> i64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<i64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// What happened, as seen by the executor loop.
enum Event {
    /// An operation on a task finished.
    Done {
        task_id: String,
        container: Container,
        status: Option<Box<pb::TaskStatus>>,
    },
    /// A container's process exited.
    Exited {
        task_id: String,
        info: ContainerInfo,
    },
    /// A removed task's container and endpoint are gone.
    Removed { task_id: String },
    /// A network's bridge and rules are gone from this node.
    NetworkGone { id: String },
    /// A health check changed the task's health state or failing streak.
    Health(crate::health::HealthUpdate),
    /// A pause or unpause finished (`container` is what the node now sees).
    Frozen {
        task_id: String,
        container: Container,
        status: Option<Box<pb::TaskStatus>>,
    },
}

struct Entry {
    task: pb::Task,
    reported: Option<pb::TaskState>,
    status: pb::TaskStatus,
    container: Container,
    busy: bool,
    /// Still in the latest assignment set.
    assigned: bool,
}

struct Executor {
    cfg: Arc<AgentConfig>,
    runtime: Arc<Runtime>,
    images: Arc<ImageStore>,
    netlink: Arc<Netlink>,
    outbox: Arc<Outbox>,
    known: KnownTasks,
    entries: HashMap<String, Entry>,
    networks: HashMap<String, pb::Network>,
    services: Vec<pb::Service>,
    /// Networks whose bridge and rules this agent set up, with their
    /// bridge names (kept here: the manager may delete the network first).
    live_networks: HashMap<String, String>,
    /// Where `live_networks` is kept, so a daemon killed before it tore a
    /// network down still does so after its restart.
    live_networks_file: PathBuf,
    /// Networks whose teardown runs now (they stay in `live_networks`, and
    /// in its file, until it is done: a daemon stopped meanwhile finishes
    /// the job after its restart).
    tearing_down: HashSet<String>,
    have_assignments: bool,
    /// Every task of this node's stacks (the manager's view), for VIPs.
    peers: Vec<pb::Task>,
    nat: network::NatSync,
    /// Serves every bridge-mode container's 127.0.0.11 from this node's
    /// latest assignment set.
    dns: DnsServer,
}

/// Pauses or resumes a container through the runtime.
fn freeze(rt: &Runtime, cid: &str, pause: bool) -> Result<(), String> {
    let r = if pause { rt.pause(cid) } else { rt.resume(cid) };
    r.map_err(|e| {
        format!(
            "{} container {cid}: {e}",
            if pause { "pausing" } else { "resuming" }
        )
    })
}

/// What the node sees of a container, telling a frozen one from a running
/// one (the runtime's state says only that its process exists).
fn observe(rt: &Runtime, info: &ContainerInfo) -> Container {
    match container_state(info) {
        Container::Running if rt.is_paused(&info.id).unwrap_or(false) => Container::Paused,
        c => c,
    }
}

fn container_state(info: &ContainerInfo) -> Container {
    match info.state {
        ContainerState::Running => Container::Running,
        ContainerState::Paused => Container::Paused,
        ContainerState::Exited => Container::Exited {
            code: info.exit_code.unwrap_or(-1),
            oom: info.oom_killed,
        },
        // Created-but-not-started after a crash mid-create: treat as gone so
        // it is removed and made again.
        ContainerState::Created | ContainerState::Unknown => Container::Exited {
            code: -1,
            oom: false,
        },
    }
}

impl Executor {
    async fn run(
        mut self,
        mut assignments: mpsc::Receiver<pb::AssignmentSet>,
        mut stop: watch::Receiver<bool>,
    ) {
        let (ev_tx, mut ev_rx) = mpsc::channel::<Event>(256);
        // Re-adopt the containers our shims still own, after removing what
        // a create cut short by our death left half-made.
        let adopted = {
            let rt = self.runtime.clone();
            tokio::task::spawn_blocking(move || {
                if let Err(e) = rt.sweep_incomplete() {
                    tracing::warn!("sweeping half-made containers: {e}");
                }
                rt.list()
            })
            .await
            .ok()
            .and_then(|r| r.ok())
            .unwrap_or_default()
        };
        let mut adopted: HashMap<String, ContainerInfo> = adopted
            .into_iter()
            .filter_map(|c| c.labels.get(LABEL_TASK).cloned().map(|t| (t, c)))
            .collect();
        tracing::info!(count = adopted.len(), "re-adopted containers");

        loop {
            tokio::select! {
                set = assignments.recv() => {
                    let Some(set) = set else { return };
                    self.apply_assignments(set, &mut adopted, &ev_tx);
                }
                ev = ev_rx.recv() => {
                    let Some(ev) = ev else { return };
                    self.apply_event(ev, &ev_tx);
                }
                _ = stop.changed() => return,
            }
            self.reconcile(&ev_tx);
        }
    }

    fn apply_assignments(
        &mut self,
        set: pb::AssignmentSet,
        adopted: &mut HashMap<String, ContainerInfo>,
        ev_tx: &mpsc::Sender<Event>,
    ) {
        let first = !self.have_assignments;
        self.have_assignments = true;
        // Names first: a container started from this set must find its
        // peers as soon as it runs.
        self.dns.update(&set);
        self.networks = set
            .networks
            .into_iter()
            .map(|n| (n.id.clone(), n))
            .collect();
        self.services = set.services;
        self.peers = set.peers;
        for e in self.entries.values_mut() {
            e.assigned = false;
        }
        for task in set.tasks {
            match self.entries.get_mut(&task.id) {
                Some(e) => {
                    e.task = task;
                    e.assigned = true;
                }
                None => {
                    let (container, watch) = match adopted.remove(&task.id) {
                        Some(info) => {
                            let c = observe(&self.runtime, &info);
                            (c, matches!(c, Container::Running | Container::Paused))
                        }
                        None => (Container::Absent, false),
                    };
                    if watch {
                        self.watch_exit(&task.id, ev_tx);
                        // Our sockets in its netns died with the last agent.
                        let (ctx, t) = (self.op_context(), task.clone());
                        tokio::spawn(async move { crate::tasks::attach_dns(&ctx, &t).await });
                    }
                    let status = task.status.clone().unwrap_or_default();
                    let task_id = task.id.clone();
                    self.entries.insert(
                        task.id.clone(),
                        Entry {
                            task,
                            reported: None,
                            status: status.clone(),
                            container,
                            busy: false,
                            assigned: true,
                        },
                    );
                    if watch {
                        self.watch_health(&task_id, Some(status), ev_tx);
                    }
                }
            }
        }
        // Containers of tasks the manager no longer knows: remove them.
        for (task_id, info) in adopted.drain() {
            tracing::info!(task = %task_id, container = %info.id, "removing orphaned container");
            self.spawn_remove(task_id, ev_tx);
        }
        if first {
            self.sweep_orphan_netns();
        }
        if let Ok(mut k) = self.known.lock() {
            *k = self
                .entries
                .values()
                .map(|e| (e.task.id.clone(), e.task.clone()))
                .collect();
        }
    }

    fn apply_event(&mut self, ev: Event, ev_tx: &mpsc::Sender<Event>) {
        match ev {
            Event::Done {
                task_id,
                container,
                status,
            } => {
                if let Some(e) = self.entries.get_mut(&task_id) {
                    e.busy = false;
                    e.container = container;
                    if let Some(s) = status.map(|s| *s) {
                        e.reported = Some(s.state());
                        e.status = s.clone();
                        self.outbox.push(&task_id, s);
                    }
                    if container == Container::Running {
                        self.watch_exit(&task_id, ev_tx);
                        self.watch_health(&task_id, None, ev_tx);
                    }
                }
            }
            Event::Health(u) => {
                if let Some(e) = self.entries.get_mut(&u.task_id) {
                    // Only about the container that runs now, and only while
                    // the task is reported running.
                    if e.status.pid == u.pid && e.reported == Some(pb::TaskState::Running) {
                        e.status.set_health(u.state);
                        e.status.failing_streak = u.failing_streak;
                        e.status.health_log = u.log;
                        e.status.timestamp = Some(pb::Timestamp::now());
                        self.outbox.push(&u.task_id, e.status.clone());
                    }
                }
            }
            Event::Exited { task_id, info } => {
                if let Some(e) = self.entries.get_mut(&task_id) {
                    e.container = container_state(&info);
                    e.status.exit_code = info.exit_code;
                    e.status.oom_killed = info.oom_killed;
                    if let Some(t) = info.finished_at {
                        e.status.finished_at = Some(pb::Timestamp::from_system(t));
                    }
                }
            }
            Event::Removed { task_id } => {
                self.entries.remove(&task_id);
                self.outbox.forget(&task_id);
            }
            Event::NetworkGone { id } => {
                self.tearing_down.remove(&id);
                let used = self
                    .entries
                    .values()
                    .any(|e| e.task.networks.iter().any(|n| n.network_id == id));
                if !used && self.live_networks.remove(&id).is_some() {
                    self.save_live_networks();
                }
            }
            Event::Frozen {
                task_id,
                container,
                status,
            } => {
                // Like Done, but the exit and health watchers of the
                // container keep running: it is the same process.
                if let Some(e) = self.entries.get_mut(&task_id) {
                    e.busy = false;
                    e.container = container;
                    if let Some(s) = status.map(|s| *s) {
                        e.reported = Some(s.state());
                        e.status = s.clone();
                        self.outbox.push(&task_id, s);
                    }
                }
            }
        }
    }

    fn reconcile(&mut self, ev_tx: &mpsc::Sender<Event>) {
        let ids: Vec<String> = self.entries.keys().cloned().collect();
        for id in ids {
            let Some(e) = self.entries.get_mut(&id) else {
                continue;
            };
            if e.busy {
                continue;
            }
            if !e.assigned {
                if e.reported == Some(pb::TaskState::Remove) && e.container == Container::Absent {
                    // Already cleaned up; just forget it.
                    self.entries.remove(&id);
                    self.outbox.forget(&id);
                    continue;
                }
                e.busy = true;
                self.spawn_remove(id.clone(), ev_tx);
                continue;
            }
            match controller::step(&e.task, e.reported, e.container) {
                Step::Wait => {}
                Step::Report(state, code) => {
                    let mut s = e.status.clone();
                    s.state = state as i32;
                    s.timestamp = Some(pb::Timestamp::now());
                    if code.is_some() {
                        s.exit_code = code;
                    }
                    if state.is_terminal() {
                        s.pid = 0;
                        if s.finished_at.is_none() {
                            s.finished_at = Some(pb::Timestamp::now());
                        }
                        s.message = match (state, s.exit_code) {
                            (pb::TaskState::Failed, None) => "container disappeared".into(),
                            (_, Some(c)) => format!("exited with code {c}"),
                            _ => "shut down".into(),
                        };
                    }
                    e.reported = Some(state);
                    e.status = s.clone();
                    self.outbox.push(&id, s);
                }
                Step::Start => {
                    e.busy = true;
                    let mut s = e.status.clone();
                    s.state = pb::TaskState::Preparing as i32;
                    s.timestamp = Some(pb::Timestamp::now());
                    s.message = "preparing".into();
                    e.reported = Some(pb::TaskState::Preparing);
                    e.status = s.clone();
                    self.outbox.push(&id, s);
                    self.spawn_start(id.clone(), ev_tx);
                }
                Step::Stop => {
                    e.busy = true;
                    self.spawn_stop(id.clone(), ev_tx);
                }
                step @ (Step::Pause | Step::Resume) => {
                    e.busy = true;
                    self.spawn_freeze(id.clone(), step == Step::Pause, ev_tx);
                }
                Step::Remove => {
                    e.busy = true;
                    let mut s = e.status.clone();
                    s.state = pb::TaskState::Remove as i32;
                    s.pid = 0;
                    s.message = "removed".into();
                    let ctx = self.op_context();
                    let tx = ev_tx.clone();
                    let task_id = id.clone();
                    tokio::spawn(async move {
                        remove_task(&ctx, &task_id).await;
                        s.timestamp = Some(pb::Timestamp::now());
                        let _ = tx
                            .send(Event::Done {
                                task_id,
                                container: Container::Absent,
                                status: Some(Box::new(s)),
                            })
                            .await;
                    });
                }
            }
        }
        self.teardown_unused_networks(ev_tx);
        network::sync_nat(
            &self.nat,
            &self.cfg.run_dir.join("netns"),
            self.entries
                .values()
                .filter(|e| e.assigned)
                .map(|e| &e.task),
            &self.peers,
            &self.services,
        );
    }

    /// Runs the task's health check (if it has one) while its container runs.
    fn watch_health(
        &self,
        task_id: &str,
        resume_from: Option<pb::TaskStatus>,
        ev_tx: &mpsc::Sender<Event>,
    ) {
        let Some(e) = self.entries.get(task_id) else {
            return;
        };
        tokio::spawn(crate::health::run(
            self.runtime.clone(),
            self.images.clone(),
            e.task.clone(),
            container_id(task_id),
            resume_from,
            ev_tx.clone(),
            Event::Health,
        ));
    }

    fn watch_exit(&self, task_id: &str, ev_tx: &mpsc::Sender<Event>) {
        let rt = self.runtime.clone();
        let cid = container_id(task_id);
        let tx = ev_tx.clone();
        let task_id = task_id.to_string();
        tokio::task::spawn_blocking(move || {
            if let Ok(info) = rt.wait(&cid, None) {
                let _ = tx.blocking_send(Event::Exited { task_id, info });
            }
        });
    }

    fn spawn_start(&mut self, task_id: String, ev_tx: &mpsc::Sender<Event>) {
        let Some(e) = self.entries.get(&task_id) else {
            return;
        };
        let task = e.task.clone();
        let mut status = e.status.clone();
        let networks: Vec<pb::Network> = task
            .networks
            .iter()
            .filter_map(|a| self.networks.get(&a.network_id).cloned())
            .collect();
        let mut added = false;
        for n in &networks {
            if let Ok(b) = network::bridge_name(n) {
                added |= self
                    .live_networks
                    .insert(n.id.clone(), b.to_string())
                    .is_none();
            }
        }
        if added {
            // Before the bridge exists: a crash right after must still
            // find it to tear down.
            self.save_live_networks();
        }
        let services = self.services.clone();
        let ctx = self.op_context();
        let tx = ev_tx.clone();
        tokio::spawn(async move {
            let span = tracing::info_span!("start", stack = %task.stack, service = %task.service_name, task = %task.id);
            let _g = span.enter();
            let (container, state, result) =
                match start_task(&ctx, &task, &networks, &services).await {
                    Ok(info) => {
                        status.container_id = info.id.clone();
                        status.pid = info.pid.unwrap_or(0);
                        status.started_at = info.started_at.map(pb::Timestamp::from_system);
                        status.message = "started".into();
                        status.err.clear();
                        (Container::Running, pb::TaskState::Running, Ok(()))
                    }
                    Err(StartError::Rejected(msg)) => {
                        (Container::Absent, pb::TaskState::Rejected, Err(msg))
                    }
                    Err(StartError::Failed(msg)) => {
                        (Container::Absent, pb::TaskState::Failed, Err(msg))
                    }
                };
            if let Err(msg) = result {
                tracing::warn!("task failed to start: {msg}");
                status.err = msg.clone();
                status.message = msg;
            }
            status.state = state as i32;
            status.timestamp = Some(pb::Timestamp::now());
            let _ = tx
                .send(Event::Done {
                    task_id: task.id.clone(),
                    container,
                    status: Some(Box::new(status)),
                })
                .await;
        });
    }

    fn spawn_stop(&self, task_id: String, ev_tx: &mpsc::Sender<Event>) {
        let Some(e) = self.entries.get(&task_id) else {
            return;
        };
        let spec = e.task.spec.clone().unwrap_or_default();
        let signal = signals::stop_signal(&spec.stop_signal);
        let grace = Duration::from_millis(spec.stop_grace_period_ms.unwrap_or(10_000));
        let paused = e.container == Container::Paused;
        let rt = self.runtime.clone();
        let tx = ev_tx.clone();
        tokio::task::spawn_blocking(move || {
            let cid = container_id(&task_id);
            if paused {
                // A frozen process cannot act on its stop signal (nor die of
                // SIGKILL under the v1 freezer): thaw it first.
                if let Err(msg) = freeze(&rt, &cid, false) {
                    tracing::warn!(task = %task_id, "{msg}");
                }
            }
            let container = match rt.stop(&cid, signal, grace) {
                Ok(info) => container_state(&info),
                Err(e) => {
                    tracing::warn!(task = %task_id, "stopping container: {e}");
                    match rt.inspect(&cid) {
                        Ok(info) => container_state(&info),
                        Err(_) => Container::Absent,
                    }
                }
            };
            let _ = tx.blocking_send(Event::Done {
                task_id,
                container,
                status: None,
            });
        });
    }

    /// Freezes (`pause`) or thaws the task's container, then reports the
    /// task Paused or Running; on failure the error is logged, the
    /// container left as the runtime sees it, and the step tried again a
    /// second later.
    fn spawn_freeze(&self, task_id: String, pause: bool, ev_tx: &mpsc::Sender<Event>) {
        let Some(e) = self.entries.get(&task_id) else {
            return;
        };
        let mut status = e.status.clone();
        let rt = self.runtime.clone();
        let tx = ev_tx.clone();
        tokio::task::spawn_blocking(move || {
            let cid = container_id(&task_id);
            let result = freeze(&rt, &cid, pause);
            if result.is_err() {
                // Not in a tight loop: the step asks for the same again.
                std::thread::sleep(Duration::from_secs(1));
            }
            let container = match rt.inspect(&cid) {
                Ok(info) => observe(&rt, &info),
                Err(_) => Container::Absent,
            };
            let report = match (&result, container) {
                (Ok(()), Container::Paused) => Some(pb::TaskState::Paused),
                (Ok(()), Container::Running) => Some(pb::TaskState::Running),
                _ => None,
            };
            if let Err(msg) = &result {
                tracing::warn!(task = %task_id, "{msg}");
            }
            let status = report.map(|state| {
                status.state = state as i32;
                status.timestamp = Some(pb::Timestamp::now());
                status.message = if pause { "paused" } else { "unpaused" }.into();
                Box::new(status)
            });
            let _ = tx.blocking_send(Event::Frozen {
                task_id,
                container,
                status,
            });
        });
    }

    fn spawn_remove(&self, task_id: String, ev_tx: &mpsc::Sender<Event>) {
        let ctx = self.op_context();
        let tx = ev_tx.clone();
        tokio::spawn(async move {
            remove_task(&ctx, &task_id).await;
            let _ = tx.send(Event::Removed { task_id }).await;
        });
    }

    fn op_context(&self) -> OpContext {
        OpContext {
            cfg: self.cfg.clone(),
            runtime: self.runtime.clone(),
            images: self.images.clone(),
            netlink: self.netlink.clone(),
            dns: self.dns.clone(),
        }
    }

    /// Removes the namespaces (and their veths) a previous agent made for
    /// tasks that are gone: killed between removing a container and its
    /// endpoint, it left them behind. Runs once, on the first assignment
    /// set, when every task this node still has is known.
    fn sweep_orphan_netns(&self) {
        let keep: HashSet<String> = self
            .entries
            .keys()
            .map(|id| crate::tasks::short(id))
            .collect();
        let names = match net::netns::list(&self.cfg.run_dir.join("netns")) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!("listing network namespaces: {e}");
                return;
            }
        };
        let orphans: Vec<String> = names.into_iter().filter(|n| !keep.contains(n)).collect();
        if orphans.is_empty() {
            return;
        }
        let ctx = self.op_context();
        tokio::spawn(async move {
            for name in orphans {
                tracing::info!(netns = %name, "removing a leftover network namespace");
                network::teardown_netns(&ctx, &name).await;
            }
        });
    }

    /// Writes `live_networks` down (atomically: a torn file would lose
    /// networks to tear down).
    fn save_live_networks(&self) {
        let text: String = self
            .live_networks
            .iter()
            .map(|(id, b)| format!("{id} {b}\n"))
            .collect();
        let tmp = self.live_networks_file.with_extension("tmp");
        let r = std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &self.live_networks_file));
        if let Err(e) = r {
            tracing::warn!(file = %self.live_networks_file.display(), "saving the networks set up here: {e}");
        }
    }

    /// Removes the bridge and rules of networks no task here uses any more.
    /// Not before the first assignment set: until then the tasks that use
    /// the networks a previous agent set up are not known yet.
    fn teardown_unused_networks(&mut self, ev_tx: &mpsc::Sender<Event>) {
        if !self.have_assignments {
            return;
        }
        let used: HashSet<&str> = self
            .entries
            .values()
            .flat_map(|e| e.task.networks.iter().map(|n| n.network_id.as_str()))
            .collect();
        let unused: Vec<(String, String)> = self
            .live_networks
            .iter()
            .filter(|(n, _)| !used.contains(n.as_str()) && !self.tearing_down.contains(*n))
            .map(|(n, b)| (n.clone(), b.clone()))
            .collect();
        for (id, bridge) in unused {
            self.tearing_down.insert(id.clone());
            let (nl, tx) = (self.netlink.clone(), ev_tx.clone());
            tokio::spawn(async move {
                network::remove_network(&nl, &id, &bridge).await;
                let _ = tx.send(Event::NetworkGone { id }).await;
            });
        }
    }
}
