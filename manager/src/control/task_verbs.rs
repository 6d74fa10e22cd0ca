//! `rm` and `run`: changes to a stack's tasks that are not a service's
//! desired state — removing stopped task containers, and one-off tasks with
//! a service's configuration. Written through Raft like every change to what
//! should run.
//!
//! `rm` marks ended tasks desired Remove (the agent removes the container,
//! the orchestrator then deletes the task) and leaves their services desired
//! Stopped, so nothing brings them back until `up`/`start`. When other
//! replicas of the service still run, the removed slots are recorded in the
//! service's `removed_slots` instead: they stay empty until the next deploy. `run` writes one
//! one-off task (see the orchestrator's one-off rules): it never starts
//! anything itself.
//!
//! Must never touch another stack's tasks, and never a container.

use super::{put, ControlApi};
use crate::ipam::{self, AddressBook};
use crate::orchestrator::{is_oneoff, StoreView, LABEL_NO_DEPS, LABEL_ONEOFF, ONEOFF_SLOT_BASE};
use crate::store::Store;
use flotilla_proto::v1 as pb;
use flotilla_proto::v1::{store_action, ServiceDesired, TaskState};
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;
use tokio::sync::broadcast;
use tonic::Status;

/// How long `rm -s` waits for running tasks to stop when no timeout is given.
const DEFAULT_STOP_WAIT: Duration = Duration::from_secs(60);
/// Extra time beyond the stop wait for the nodes to remove the containers.
const REMOVE_SLACK: Duration = Duration::from_secs(30);

fn observed(t: &pb::Task) -> TaskState {
    t.status
        .as_ref()
        .map(|s| s.state())
        .unwrap_or(TaskState::New)
}

/// A task whose container no longer runs (or never ran): `rm` may remove it.
fn removable(t: &pb::Task) -> bool {
    let st = observed(t);
    st.is_terminal()
        || t.node_id.is_empty()
        || matches!(st, TaskState::Created)
        || (t.desired_state() == TaskState::Created
            && matches!(
                st,
                TaskState::New | TaskState::Pending | TaskState::Assigned
            ))
}

fn service_name(sv: &pb::Service) -> &str {
    sv.spec.as_ref().map(|s| s.name.as_str()).unwrap_or("")
}

/// The services of `stack` that `names` selects (all when empty); unknown
/// names are an error.
fn selected<'a>(
    s: &'a Store,
    stack: &str,
    names: &[String],
) -> Result<Vec<&'a pb::Service>, Status> {
    if s.get_stack(stack).is_none() {
        return Err(Status::not_found(format!("stack {stack} does not exist")));
    }
    let services = s.services_in_stack(stack);
    for n in names {
        if !services.iter().any(|sv| service_name(sv) == n) {
            return Err(Status::not_found(format!(
                "stack {stack} has no service {n}"
            )));
        }
    }
    Ok(services
        .into_iter()
        .filter(|sv| names.is_empty() || names.iter().any(|n| n == service_name(sv)))
        .collect())
}

/// The tasks an `rm` request is about.
fn rm_tasks<'a>(
    s: &'a Store,
    req: &pb::RemoveServiceTasksRequest,
) -> Result<Vec<&'a pb::Task>, Status> {
    let services = selected(s, &req.stack, &req.services)?;
    let ids: HashSet<&str> = services.iter().map(|sv| sv.id.as_str()).collect();
    Ok(s.tasks_in_stack(&req.stack)
        .into_iter()
        .filter(|t| ids.contains(t.service_id.as_str()))
        .filter(|t| req.task_ids.is_empty() || req.task_ids.contains(&t.id))
        .collect())
}

/// The replica slots of `sv` that an `rm` of `removing` leaves without any
/// container: every task of the slot is among the removed ones.
fn removed_slots(s: &Store, sv: &pb::Service, removing: &[&pb::Task]) -> Vec<u32> {
    let gone: HashSet<&str> = removing
        .iter()
        .filter(|t| removable(t))
        .map(|t| t.id.as_str())
        .collect();
    let mut slots: Vec<u32> = removing
        .iter()
        .filter(|t| t.service_id == sv.id && !is_oneoff(t) && gone.contains(t.id.as_str()))
        .map(|t| t.slot)
        .collect();
    slots.sort_unstable();
    slots.dedup();
    let tasks = s.tasks_in_service(&sv.id);
    slots.retain(|slot| {
        tasks
            .iter()
            .filter(|t| t.slot == *slot && !is_oneoff(t))
            .all(|t| gone.contains(t.id.as_str()) || t.desired_state() == TaskState::Remove)
    });
    slots
}

impl ControlApi {
    /// Waits until `done` holds over the store, or `limit`.
    async fn wait_store(
        &self,
        limit: Duration,
        what: &str,
        done: impl Fn(&Store) -> bool,
    ) -> Result<(), Status> {
        let mut events = self.inner.store.subscribe();
        let wait = async {
            loop {
                if self.inner.store.read(&done) {
                    return true;
                }
                match events.recv().await {
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return false,
                }
            }
        };
        match tokio::time::timeout(limit, wait).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(Status::unavailable("the store stopped")),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "timed out after {}s waiting for {what}",
                limit.as_secs()
            ))),
        }
    }

    pub(super) async fn remove_service_tasks_impl(
        &self,
        req: pb::RemoveServiceTasksRequest,
    ) -> Result<pb::RemoveServiceTasksResponse, Status> {
        let stop_wait = if req.timeout_ms > 0 {
            Duration::from_millis(req.timeout_ms)
        } else {
            DEFAULT_STOP_WAIT
        };
        if req.stop {
            // Stop first, through desired state, in dependency order (the
            // orchestrator's rule), then wait until nothing of it runs.
            let r = req.clone();
            self.write("rm-stop", |s| {
                let mut actions = Vec::new();
                if r.task_ids.is_empty() {
                    for sv in selected(s, &r.stack, &r.services)? {
                        if sv.desired() != ServiceDesired::Stopped {
                            let mut n = sv.clone();
                            n.set_desired(ServiceDesired::Stopped);
                            actions.push(put(
                                store_action::Object::Service(n),
                                sv.meta.as_ref().map_or(0, |m| m.version),
                            ));
                        }
                    }
                }
                for t in rm_tasks(s, &r)? {
                    let oneoff_live = is_oneoff(t) && !removable(t);
                    let stopping =
                        matches!(t.desired_state(), TaskState::Shutdown | TaskState::Remove);
                    if (oneoff_live || !r.task_ids.is_empty()) && !stopping {
                        let mut n = t.clone();
                        n.set_desired_state(TaskState::Shutdown);
                        actions.push(put(
                            store_action::Object::Task(n),
                            t.meta.as_ref().map_or(0, |m| m.version),
                        ));
                    }
                }
                Ok((actions, ()))
            })
            .await?;
            let r = req.clone();
            self.wait_store(stop_wait, "the containers to stop", move |s| {
                rm_tasks(s, &r).is_ok_and(|ts| ts.iter().all(|t| removable(t)))
            })
            .await?;
        }
        let r = req.clone();
        let removed: Vec<pb::Task> = self
            .write("rm", |s| {
                let tasks = rm_tasks(s, &r)?;
                let mut actions = Vec::new();
                let mut ids = Vec::new();
                for t in &tasks {
                    if !removable(t) {
                        continue;
                    }
                    ids.push((*t).clone());
                    if t.desired_state() != TaskState::Remove {
                        let mut n = (*t).clone();
                        n.set_desired_state(TaskState::Remove);
                        actions.push(put(
                            store_action::Object::Task(n),
                            t.meta.as_ref().map_or(0, |m| m.version),
                        ));
                    }
                }
                // A service none of whose slot tasks runs stays stopped, so
                // the removed ones are not made again until `up`/`start`.
                if r.task_ids.is_empty() {
                    for sv in selected(s, &r.stack, &r.services)? {
                        let slots_idle = tasks
                            .iter()
                            .filter(|t| t.service_id == sv.id && !is_oneoff(t))
                            .all(|t| removable(t));
                        let removed_some =
                            tasks.iter().any(|t| t.service_id == sv.id && removable(t));
                        if removed_some && slots_idle && sv.desired() != ServiceDesired::Stopped {
                            let mut n = sv.clone();
                            n.set_desired(ServiceDesired::Stopped);
                            actions.push(put(
                                store_action::Object::Service(n),
                                sv.meta.as_ref().map_or(0, |m| m.version),
                            ));
                            continue;
                        }
                        // Other replicas run: the removed ones' slots stay
                        // empty until the next deploy (Compose's `rm`).
                        let slots = removed_slots(s, sv, &tasks);
                        if !slots.is_empty() {
                            let mut n = sv.clone();
                            for slot in slots {
                                if !n.removed_slots.contains(&slot) {
                                    n.removed_slots.push(slot);
                                }
                            }
                            n.removed_slots.sort_unstable();
                            if n.removed_slots != sv.removed_slots {
                                actions.push(put(
                                    store_action::Object::Service(n),
                                    sv.meta.as_ref().map_or(0, |m| m.version),
                                ));
                            }
                        }
                    }
                }
                Ok((actions, ids))
            })
            .await?;
        let ids: Vec<String> = removed.iter().map(|t| t.id.clone()).collect();
        tracing::info!(stack = %req.stack, tasks = ids.len(), "task removal requested");
        let gone: HashSet<String> = ids.iter().cloned().collect();
        self.wait_store(REMOVE_SLACK, "the containers to be removed", move |s| {
            gone.iter().all(|id| s.get_task(id).is_none())
        })
        .await?;
        if req.remove_volumes {
            // A slot's anonymous volume outlives one container (the next
            // task of the slot mounts it again): only a slot with no task
            // left loses it.
            let by_node = self.inner.store.read(|s| {
                let mut m: BTreeMap<String, pb::RemoveVolumesRequest> = BTreeMap::new();
                for t in &removed {
                    if t.node_id.is_empty() {
                        continue;
                    }
                    let slot_used = s
                        .tasks_in_service(&t.service_id)
                        .iter()
                        .any(|x| x.slot == t.slot);
                    if slot_used {
                        continue;
                    }
                    let r =
                        m.entry(t.node_id.clone())
                            .or_insert_with(|| pb::RemoveVolumesRequest {
                                stack: req.stack.clone(),
                                ..Default::default()
                            });
                    r.anonymous.extend(super::volumes::anonymous_of(t));
                }
                m
            });
            let vols = super::volumes::remove_on_nodes(&self.inner.store, by_node).await?;
            tracing::info!(stack = %req.stack, volumes = vols.len(), "anonymous volumes removed");
        }
        Ok(pb::RemoveServiceTasksResponse { task_ids: ids })
    }

    pub(super) async fn run_task_impl(
        &self,
        req: pb::RunTaskRequest,
    ) -> Result<pb::RunTaskResponse, Status> {
        let now = pb::Timestamp::now();
        let task_id = self
            .write("run", |s| {
                let stack = s.get_stack(&req.stack).ok_or_else(|| {
                    Status::not_found(format!("stack {} does not exist", req.stack))
                })?;
                let svc_id = format!("{}_{}", req.stack, req.service);
                let svc = s.get_service(&svc_id).ok_or_else(|| {
                    Status::not_found(format!(
                        "service {} of stack {} is not deployed (run `flotilla up` or `flotilla create` first)",
                        req.service, req.stack
                    ))
                })?;
                if crate::orchestrator::service_removing(svc)
                    || crate::orchestrator::stack_removing(stack)
                {
                    return Err(Status::failed_precondition(format!(
                        "service {} of stack {} is being removed",
                        req.service, req.stack
                    )));
                }
                let mut spec = svc.spec.clone().unwrap_or_default();
                if !req.command.is_empty() {
                    spec.command = Some(pb::StringList {
                        values: req.command.clone(),
                    });
                }
                if let Some(ep) = &req.entrypoint {
                    spec.entrypoint = Some(ep.clone());
                }
                for kv in &req.env {
                    let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
                    if k.is_empty() {
                        return Err(Status::invalid_argument(format!(
                            "invalid environment entry {kv:?}: expected KEY=VALUE"
                        )));
                    }
                    spec.environment.insert(k.to_string(), v.to_string());
                }
                if !req.user.is_empty() {
                    spec.user = req.user.clone();
                }
                if !req.workdir.is_empty() {
                    spec.working_dir = req.workdir.clone();
                }
                if !req.service_ports {
                    spec.ports.clear();
                }
                spec.container_name.clear();
                spec.restart_policy = None;
                spec.replicas = Some(1);

                let used: HashSet<u32> = s
                    .tasks_in_service(&svc.id)
                    .into_iter()
                    .map(|t| t.slot)
                    .collect();
                let slot = (ONEOFF_SLOT_BASE..u32::MAX)
                    .find(|n| !used.contains(n))
                    .ok_or_else(|| Status::resource_exhausted("no free one-off slot"))?;
                let mut book = AddressBook::from_view(s);
                let mut svc_new = svc.clone();
                let atts = ipam::service_attachments(&stack.id, stack.spec.as_ref(), &spec);
                ipam::ensure_slot_addresses(&mut book, &mut svc_new, slot, &atts).map_err(
                    |e| {
                        Status::resource_exhausted(format!(
                            "allocating an address for a one-off task of {}: {e}",
                            req.service
                        ))
                    },
                )?;
                let id = uuid::Uuid::new_v4().to_string();
                let name = if req.name.is_empty() {
                    format!("{}-{}-run-{}", req.stack, req.service, &id[..12])
                } else {
                    req.name.clone()
                };
                if s.tasks_in_stack(&req.stack)
                    .iter()
                    .any(|t| t.name == name && t.desired_state() != TaskState::Remove)
                {
                    return Err(Status::already_exists(format!(
                        "a container named {name} already exists in stack {}",
                        req.stack
                    )));
                }
                let mut labels = std::collections::HashMap::new();
                labels.insert(LABEL_ONEOFF.to_string(), "true".to_string());
                if req.no_deps {
                    labels.insert(LABEL_NO_DEPS.to_string(), "true".to_string());
                }
                let task = pb::Task {
                    id: id.clone(),
                    meta: Some(pb::Meta {
                        version: 0,
                        created_at: Some(now),
                        updated_at: Some(now),
                        labels,
                    }),
                    stack: req.stack.clone(),
                    service_id: svc.id.clone(),
                    service_name: req.service.clone(),
                    slot,
                    node_id: String::new(),
                    spec_hash: crate::orchestrator::spec_hash(&spec),
                    spec: Some(spec),
                    spec_version: svc.spec_version,
                    desired_state: TaskState::Created as i32,
                    status: Some(pb::TaskStatus {
                        state: TaskState::New as i32,
                        timestamp: Some(now),
                        message: "created".to_string(),
                        ..Default::default()
                    }),
                    networks: ipam::with_v6(ipam::slot_attachments(&svc_new, slot, &atts), s),
                    restart_count: 0,
                    restart_not_before: None,
                    pending_reason: String::new(),
                    name,
                    generation: 0,
                    auto_remove: req.remove,
                };
                let mut actions = Vec::new();
                if svc_new != *svc {
                    actions.push(put(
                        store_action::Object::Service(svc_new),
                        svc.meta.as_ref().map_or(0, |m| m.version),
                    ));
                }
                actions.push(put(store_action::Object::Task(task), 0));
                Ok((actions, id))
            })
            .await?;
        tracing::info!(stack = %req.stack, service = %req.service, task = %task_id, "one-off task created");
        Ok(pb::RunTaskResponse { task_id })
    }
}
