//! Pure parts of the dispatcher: what a node's assignment set holds, and
//! which status updates from an agent are written.

use crate::orchestrator::StoreView;
use flotilla_proto::v1::{
    store_action, AssignmentSet, Event, StoreAction, Task, TaskState, TaskStatusUpdate,
};
use std::collections::{BTreeMap, BTreeSet};

/// The node's assignment set: every task assigned to it (until deleted,
/// whatever its desired state), the networks those tasks attach to, every
/// task of the stacks it runs (`peers`, for name resolution), the services
/// and volumes of those stacks.
pub fn assignment_set(view: &impl StoreView, node_id: &str) -> AssignmentSet {
    let mut tasks: Vec<Task> = view.tasks_on(node_id).into_iter().cloned().collect();
    tasks.sort_by(|a, b| a.id.cmp(&b.id));
    let stacks: BTreeSet<&str> = tasks.iter().map(|t| t.stack.as_str()).collect();
    let network_ids: BTreeSet<&str> = tasks
        .iter()
        .flat_map(|t| t.networks.iter().map(|n| n.network_id.as_str()))
        .collect();
    let networks = network_ids
        .iter()
        .filter_map(|id| view.get_network(id).cloned())
        .collect();
    let mut peers = Vec::new();
    let mut services = Vec::new();
    for s in &stacks {
        let mut p: Vec<Task> = view.tasks_in_stack(s).into_iter().cloned().collect();
        p.sort_by(|a, b| a.id.cmp(&b.id));
        peers.extend(p);
        let mut sv: Vec<_> = view.services_in_stack(s).into_iter().cloned().collect();
        sv.sort_by(|a, b| a.id.cmp(&b.id));
        services.extend(sv);
    }
    let volumes = view
        .all_volumes()
        .into_iter()
        .filter(|v| stacks.contains(v.stack.as_str()))
        .cloned()
        .collect();
    AssignmentSet {
        tasks,
        networks,
        peers,
        services,
        volumes,
        raft_index: view.last_applied(),
    }
}

/// Equal apart from the Raft index (which moves on every write).
pub fn same_set(a: &AssignmentSet, b: &AssignmentSet) -> bool {
    a.tasks == b.tasks
        && a.networks == b.networks
        && a.peers == b.peers
        && a.services == b.services
        && a.volumes == b.volumes
}

/// Whether an applied event may change the set last sent to `node_id`.
pub fn touches(ev: &Event, node_id: &str, last: Option<&AssignmentSet>) -> bool {
    if ev.kind == "node" {
        return false;
    }
    if ev.task.as_ref().is_some_and(|t| t.node_id == node_id) {
        return true;
    }
    match last {
        None => true,
        Some(l) => {
            l.tasks.iter().any(|t| t.stack == ev.stack) || l.tasks.iter().any(|t| t.id == ev.id)
        }
    }
}

/// The task updates to write for an agent's status report: only tasks that
/// exist and are assigned to `node_id`; a terminal state is never left; an
/// unchanged status is not rewritten. Several updates of one task: the last
/// one wins.
pub fn status_actions(
    view: &impl StoreView,
    node_id: &str,
    updates: &[TaskStatusUpdate],
) -> Vec<StoreAction> {
    let mut latest: BTreeMap<&str, &TaskStatusUpdate> = BTreeMap::new();
    for u in updates {
        latest.insert(u.task_id.as_str(), u);
    }
    let mut out = Vec::new();
    for (id, u) in latest {
        let Some(task) = view.get_task(id) else {
            tracing::debug!(task = %id, node = %node_id, "status for an unknown task ignored");
            continue;
        };
        if task.node_id != node_id {
            tracing::debug!(task = %id, node = %node_id, "status for a task of another node ignored");
            continue;
        }
        let Some(new) = &u.status else { continue };
        let cur = task
            .status
            .as_ref()
            .map(|s| s.state())
            .unwrap_or(TaskState::New);
        // A terminal state never goes back; the one step allowed after it is
        // the agent confirming it removed the container (Remove).
        if cur.is_terminal() && new.state() != cur && new.state() != TaskState::Remove {
            continue;
        }
        if task.status.as_ref() == Some(new) {
            continue;
        }
        let mut t = task.clone();
        t.status = Some(new.clone());
        if let Some(m) = t.meta.as_mut() {
            m.updated_at = new.timestamp;
        }
        out.push(StoreAction {
            kind: store_action::Kind::Put as i32,
            expected_version: task.meta.as_ref().map(|m| m.version).unwrap_or(0),
            object: Some(store_action::Object::Task(t)),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orchestrator::fixtures::*;
    use flotilla_proto::v1::{NetworkAttachment, StoreSnapshot, TaskStatus, Volume};

    #[test]
    fn set_holds_the_node_tasks_their_networks_and_peers() {
        let web = service("s", spec("web"));
        let db = service("s", spec("db"));
        let other = service("o", spec("x"));
        let mut w1 = task(&web, 1, "w1", "n1", TaskState::Running);
        w1.networks.push(NetworkAttachment {
            network_id: "s_default".into(),
            addresses: vec!["10.89.0.3/24".into()],
            ..Default::default()
        });
        let snap = StoreSnapshot {
            services: vec![web.clone(), db.clone(), other.clone()],
            tasks: vec![
                w1,
                task(&db, 1, "d1", "n2", TaskState::Running),
                task(&other, 1, "x1", "n2", TaskState::Running),
            ],
            networks: vec![
                network("s", "default", "10.89.0.0/24"),
                network("o", "default", "10.89.1.0/24"),
            ],
            volumes: vec![Volume {
                id: "s_data".into(),
                stack: "s".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let set = assignment_set(&snap, "n1");
        let ids = |ts: &[Task]| ts.iter().map(|t| t.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&set.tasks), vec!["w1"]);
        assert_eq!(ids(&set.peers), vec!["d1", "w1"]);
        assert_eq!(set.networks.len(), 1);
        assert_eq!(set.networks[0].id, "s_default");
        assert_eq!(set.services.len(), 2);
        assert_eq!(set.volumes.len(), 1);
        assert!(assignment_set(&snap, "n3").tasks.is_empty());
    }

    #[test]
    fn status_updates_table() {
        let web = service("s", spec("web"));
        let snap = StoreSnapshot {
            tasks: vec![
                task(&web, 1, "run", "n1", TaskState::Assigned),
                task(&web, 2, "done", "n1", TaskState::Failed),
                task(&web, 3, "other", "n2", TaskState::Assigned),
            ],
            ..Default::default()
        };
        let upd = |id: &str, s: TaskState| TaskStatusUpdate {
            task_id: id.into(),
            status: Some(TaskStatus {
                state: s as i32,
                ..Default::default()
            }),
        };
        // (updates, task ids written)
        let cases: Vec<(Vec<TaskStatusUpdate>, Vec<&str>)> = vec![
            (vec![upd("run", TaskState::Running)], vec!["run"]),
            (vec![upd("gone", TaskState::Running)], vec![]),
            (vec![upd("other", TaskState::Running)], vec![]),
            (vec![upd("done", TaskState::Running)], vec![]),
            (
                vec![
                    upd("run", TaskState::Starting),
                    upd("run", TaskState::Running),
                ],
                vec!["run"],
            ),
        ];
        for (updates, want) in cases {
            let got = status_actions(&snap, "n1", &updates);
            let ids: Vec<&str> = got
                .iter()
                .filter_map(|a| match &a.object {
                    Some(store_action::Object::Task(t)) => Some(t.id.as_str()),
                    _ => None,
                })
                .collect();
            assert_eq!(ids, want, "{updates:?}");
            for a in &got {
                let Some(store_action::Object::Task(t)) = &a.object else {
                    unreachable!()
                };
                assert_eq!(
                    t.status.as_ref().unwrap().state(),
                    updates.last().unwrap().status.as_ref().unwrap().state()
                );
                assert_eq!(a.expected_version, 2);
            }
        }
    }
}
