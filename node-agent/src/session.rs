//! The agent's session with a manager's dispatcher: register (keeping the
//! node id it is given across restarts), heartbeat, receive assignment sets,
//! and send task status updates — over the same gRPC API a remote agent
//! uses, even when manager and agent share a process.
//!
//! It never interprets assignments: it hands them to the executor.

use flotilla_proto::v1 as pb;
use flotilla_proto::v1::dispatcher_client::DispatcherClient;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch, Notify};
use tokio_stream::StreamExt;

/// Status updates waiting to be sent, newest per task; survives reconnects.
#[derive(Default)]
pub struct Outbox {
    pending: Mutex<BTreeMap<String, pb::TaskStatus>>,
    /// The last status of every task still known, re-sent after reconnecting
    /// so a manager that missed updates catches up.
    last: Mutex<BTreeMap<String, pb::TaskStatus>>,
    notify: Notify,
}

impl Outbox {
    /// Queues a status for sending.
    pub fn push(&self, task_id: &str, status: pb::TaskStatus) {
        if let Ok(mut last) = self.last.lock() {
            last.insert(task_id.to_string(), status.clone());
        }
        if let Ok(mut p) = self.pending.lock() {
            p.insert(task_id.to_string(), status);
        }
        self.notify.notify_one();
    }

    /// Forgets a task that no longer exists.
    pub fn forget(&self, task_id: &str) {
        if let Ok(mut last) = self.last.lock() {
            last.remove(task_id);
        }
    }

    fn take(&self) -> Vec<pb::TaskStatusUpdate> {
        let Ok(mut p) = self.pending.lock() else {
            return Vec::new();
        };
        std::mem::take(&mut *p)
            .into_iter()
            .map(|(task_id, status)| pb::TaskStatusUpdate {
                task_id,
                status: Some(status),
            })
            .collect()
    }

    fn requeue(&self, updates: Vec<pb::TaskStatusUpdate>) {
        if let Ok(mut p) = self.pending.lock() {
            for u in updates {
                if let Some(s) = u.status {
                    p.entry(u.task_id).or_insert(s);
                }
            }
        }
    }

    fn resend_all(&self) {
        let last = self.last.lock().map(|g| g.clone()).unwrap_or_default();
        if let Ok(mut p) = self.pending.lock() {
            for (k, v) in last {
                p.entry(k).or_insert(v);
            }
        }
        self.notify.notify_one();
    }
}

/// What the session needs to know.
pub struct SessionConfig {
    pub manager_addr: String,
    pub agent_addr: String,
    pub node_id_file: PathBuf,
    pub description: pb::NodeDescription,
}

/// Runs sessions until `stop` turns true, reconnecting with back-off.
pub async fn run(
    cfg: SessionConfig,
    node_id: Arc<Mutex<String>>,
    assignments: mpsc::Sender<pb::AssignmentSet>,
    outbox: Arc<Outbox>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if *stop.borrow() {
            return;
        }
        tokio::select! {
            r = session_once(&cfg, &node_id, &assignments, &outbox) => {
                match r {
                    Ok(()) => tracing::info!("dispatcher session ended; reconnecting"),
                    Err(e) => tracing::warn!("dispatcher session: {e}"),
                }
            }
            _ = stop.changed() => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

async fn session_once(
    cfg: &SessionConfig,
    node_id: &Arc<Mutex<String>>,
    assignments: &mpsc::Sender<pb::AssignmentSet>,
    outbox: &Arc<Outbox>,
) -> Result<(), String> {
    let channel = flotilla_proto::transport::connect(&cfg.manager_addr)
        .await
        .map_err(|e| e.to_string())?;
    let mut client = DispatcherClient::new(channel);
    let known = node_id.lock().map(|g| g.clone()).unwrap_or_default();
    let reg = client
        .register(pb::RegisterRequest {
            node_id: known.clone(),
            description: Some(cfg.description.clone()),
            agent_addr: cfg.agent_addr.clone(),
        })
        .await
        .map_err(|e| format!("registering with {}: {}", cfg.manager_addr, e.message()))?
        .into_inner();
    if reg.node_id != known {
        if let Err(e) = write_node_id(&cfg.node_id_file, &reg.node_id) {
            return Err(format!(
                "saving node id to {}: {e}",
                cfg.node_id_file.display()
            ));
        }
        if let Ok(mut g) = node_id.lock() {
            *g = reg.node_id.clone();
        }
    }
    let span = tracing::info_span!("session", node = %reg.node_id);
    let _enter = span.enter();
    tracing::info!("registered with dispatcher at {}", cfg.manager_addr);

    let period = Duration::from_millis(reg.heartbeat_period_ms.max(100));
    let mut stream = client
        .assignments(pb::AssignmentsRequest {
            node_id: reg.node_id.clone(),
            session_id: reg.session_id.clone(),
        })
        .await
        .map_err(|e| format!("opening assignments stream: {}", e.message()))?
        .into_inner();
    outbox.resend_all();

    let mut hb = tokio::time::interval(period);
    loop {
        tokio::select! {
            msg = stream.next() => {
                match msg {
                    Some(Ok(set)) => {
                        if assignments.send(set).await.is_err() {
                            return Ok(());
                        }
                    }
                    Some(Err(e)) => return Err(format!("assignments stream: {}", e.message())),
                    None => return Ok(()),
                }
            }
            _ = hb.tick() => {
                let r = client.heartbeat(pb::HeartbeatRequest {
                    node_id: reg.node_id.clone(),
                    session_id: reg.session_id.clone(),
                }).await;
                if let Err(e) = r {
                    return Err(format!("heartbeat: {}", e.message()));
                }
            }
            _ = outbox.notify.notified() => {
                let updates = outbox.take();
                if updates.is_empty() {
                    continue;
                }
                let req = pb::UpdateTaskStatusRequest {
                    node_id: reg.node_id.clone(),
                    session_id: reg.session_id.clone(),
                    updates: updates.clone(),
                };
                if let Err(e) = client.update_task_status(req).await {
                    outbox.requeue(updates);
                    return Err(format!("reporting task status: {}", e.message()));
                }
            }
        }
    }
}

/// Reads the node id this host was given, or "" on first start.
pub fn read_node_id(path: &std::path::Path) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn write_node_id(path: &std::path::Path, id: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, id)?;
    std::fs::rename(tmp, path)
}
