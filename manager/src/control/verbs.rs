//! `exec` and `kill`: find the tasks a user means in the store and forward
//! the call to the agents of their nodes.
//!
//! Neither changes desired state: `exec` runs a process beside the
//! container's, `kill` only sends a signal (the restart policy then applies,
//! as in Compose). Must never write to the store.

use super::forward::{self, Target};
use crate::orchestrator::StoreView;
use crate::raft::StoreHandle;
use flotilla_proto::v1::{
    node_agent_client::NodeAgentClient, ExecRequest, ExecResponse, KillRequest, KillResponse, Task,
    TaskState,
};
use std::collections::BTreeMap;
use tonic::Status;

fn running(t: &Task) -> bool {
    t.status.as_ref().map(|s| s.state()) == Some(TaskState::Running)
        && t.desired_state() == TaskState::Running
}

pub(super) fn service_exists(
    store: &StoreHandle,
    stack: &str,
    service: &str,
) -> Result<(), Status> {
    store.read(|s| {
        if s.stack(stack).is_none() {
            return Err(Status::not_found(format!("stack {stack} does not exist")));
        }
        let found = s
            .services_in_stack(stack)
            .iter()
            .any(|sv| sv.spec.as_ref().is_some_and(|sp| sp.name == service));
        if !found {
            return Err(Status::not_found(format!(
                "stack {stack} has no service {service}"
            )));
        }
        Ok(())
    })
}

async fn client(t: &Target) -> Result<NodeAgentClient<tonic::transport::Channel>, Status> {
    let ch = flotilla_proto::transport::connect(&t.addr)
        .await
        .map_err(|e| Status::unavailable(format!("node {}: {e}", t.node_id)))?;
    Ok(NodeAgentClient::new(ch))
}

/// The running task of `service` at slot `index` (0: the lowest running
/// slot), or why there is none.
pub(super) fn pick_task(
    store: &StoreHandle,
    stack: &str,
    service: &str,
    index: u32,
) -> Result<Task, Status> {
    service_exists(store, stack, service)?;
    let task = store.read(|s| {
        let mut ts: Vec<Task> = s
            .tasks_in_stack(stack)
            .into_iter()
            .filter(|t| t.service_name == service && running(t))
            .filter(|t| index == 0 || t.slot == index)
            .cloned()
            .collect();
        ts.sort_by_key(|t| t.slot);
        ts.into_iter().next()
    });
    task.ok_or_else(|| {
        let which = if index == 0 {
            String::new()
        } else {
            format!(" with index {index}")
        };
        Status::failed_precondition(format!(
            "service {service} of stack {stack} has no running container{which}"
        ))
    })
}

/// Runs `req.args` in the running task of `req.service` (slot `req.index`,
/// or the lowest running slot).
pub async fn exec(store: &StoreHandle, mut req: ExecRequest) -> Result<ExecResponse, Status> {
    if req.args.is_empty() {
        return Err(Status::invalid_argument("exec needs a command"));
    }
    let task = pick_task(store, &req.stack, &req.service, req.index)?;
    let target = forward::targets(store, &task.node_id)?
        .into_iter()
        .next()
        .ok_or_else(|| Status::unavailable(format!("node {} is not reachable", task.node_id)))?;
    req.task_id = task.id.clone();
    let mut c = client(&target).await?;
    let resp = c.exec(req).await.map_err(|e| {
        Status::new(
            e.code(),
            format!("node {}: {}", target.node_id, e.message()),
        )
    })?;
    Ok(resp.into_inner())
}

/// Sends the signal to every running task of the services (all when none
/// are named).
pub async fn kill(store: &StoreHandle, req: KillRequest) -> Result<KillResponse, Status> {
    for s in &req.services {
        service_exists(store, &req.stack, s)?;
    }
    if req.services.is_empty() {
        store.read(|s| {
            s.stack(&req.stack)
                .map(|_| ())
                .ok_or_else(|| Status::not_found(format!("stack {} does not exist", req.stack)))
        })?;
    }
    let by_node: BTreeMap<String, Vec<String>> = store.read(|s| {
        let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for t in s.tasks_in_stack(&req.stack) {
            let wanted = req.services.is_empty() || req.services.contains(&t.service_name);
            let alive = t
                .status
                .as_ref()
                .is_some_and(|st| st.state() == TaskState::Running);
            if wanted && alive && !t.node_id.is_empty() {
                m.entry(t.node_id.clone()).or_default().push(t.id.clone());
            }
        }
        m
    });
    let mut out = KillResponse::default();
    for (node, task_ids) in by_node {
        for target in forward::targets(store, &node)? {
            let mut c = client(&target).await?;
            let mut r = req.clone();
            r.task_ids = task_ids.clone();
            let resp = c.kill(r).await.map_err(|e| {
                Status::new(
                    e.code(),
                    format!("node {}: {}", target.node_id, e.message()),
                )
            })?;
            out.task_ids.extend(resp.into_inner().task_ids);
        }
    }
    Ok(out)
}
