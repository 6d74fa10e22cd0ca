//! The scheduler as it was before its counts were keyed by node index
//! (commit 2604044: a `BTreeMap<(String, String), u32>` looked up with two
//! fresh `String`s per node per task), kept as the baseline the benches
//! measure the current one against in the same run. Not used elsewhere.

use std::collections::{BTreeMap, HashSet};

use flotilla_manager::orchestrator::StoreView;
use flotilla_manager::scheduler::{constraint_holds, needs_placement, NO_READY_NODE};
use flotilla_proto::v1::{
    store_action, Node, NodeAvailability, NodeState, StoreAction, Task, TaskState, TaskStatus,
    Timestamp,
};

/// True for a task that occupies its node (counts for spreading).
fn occupies(t: &Task) -> bool {
    let state = t
        .status
        .as_ref()
        .map(|s| s.state())
        .unwrap_or(TaskState::New);
    !t.node_id.is_empty() && !state.is_terminal() && t.desired_state() != TaskState::Shutdown
}

/// Places every pending task of the store, as the scheduler did before.
pub fn schedule_before(view: &impl StoreView, now: Timestamp) -> Vec<StoreAction> {
    let mut actions = Vec::new();
    schedule_into(view, &mut actions, now);
    actions
}

fn task_of(a: &StoreAction) -> Option<&Task> {
    match &a.object {
        Some(store_action::Object::Task(t)) => Some(t),
        _ => None,
    }
}

/// Places the pending tasks of `view` as changed by `actions` (a decision
/// pass's output): task PUTs in `actions` are placed in place, pending tasks
/// of the store not mentioned in `actions` get new PUTs appended.
fn schedule_into(view: &impl StoreView, actions: &mut Vec<StoreAction>, now: Timestamp) {
    let touched: HashSet<String> = actions
        .iter()
        .filter_map(|a| task_of(a).map(|t| t.id.clone()))
        .collect();

    let mut nodes: Vec<&Node> = view
        .all_nodes()
        .into_iter()
        .filter(|n| {
            n.availability() == NodeAvailability::Active
                && n.status.as_ref().map(|s| s.state()) == Some(NodeState::Ready)
        })
        .collect();
    nodes.sort_by(|a, b| a.id.cmp(&b.id));

    // (node, service) -> count, node -> total.
    let mut per_service: BTreeMap<(String, String), u32> = BTreeMap::new();
    let mut total: BTreeMap<String, u32> = BTreeMap::new();
    let mut count = |t: &Task| {
        if occupies(t) {
            *per_service
                .entry((t.node_id.clone(), t.service_id.clone()))
                .or_default() += 1;
            *total.entry(t.node_id.clone()).or_default() += 1;
        }
    };
    for t in view.all_tasks() {
        if !touched.contains(&t.id) {
            count(t);
        }
    }
    for a in actions.iter() {
        if a.kind() == store_action::Kind::Put {
            if let Some(t) = task_of(a) {
                count(t);
            }
        }
    }

    // Candidates: indices into `actions` (existing PUTs and appended ones).
    let mut candidates: Vec<usize> = actions
        .iter()
        .enumerate()
        .filter(|(_, a)| {
            a.kind() == store_action::Kind::Put && task_of(a).is_some_and(needs_placement)
        })
        .map(|(i, _)| i)
        .collect();
    let mut pending_in_view: Vec<&Task> = view
        .all_tasks()
        .into_iter()
        .filter(|t| !touched.contains(&t.id) && needs_placement(t))
        .collect();
    pending_in_view
        .sort_by(|a, b| (&a.service_id, a.slot, &a.id).cmp(&(&b.service_id, b.slot, &b.id)));
    // Existing tasks are appended only if they change; place them on copies.
    let mut appended: Vec<(Task, Task)> = pending_in_view
        .into_iter()
        .map(|t| (t.clone(), t.clone()))
        .collect();
    candidates.sort_by(|&x, &y| {
        let (a, b) = (task_of(&actions[x]), task_of(&actions[y]));
        let key = |t: Option<&Task>| t.map(|t| (t.service_id.clone(), t.slot, t.id.clone()));
        key(a).cmp(&key(b))
    });

    let mut place = |t: &mut Task| {
        let spec = t.spec.as_ref();
        let constraints: Vec<&str> = spec
            .and_then(|s| s.placement.as_ref())
            .map(|p| p.constraints.iter().map(String::as_str).collect())
            .unwrap_or_default();
        let max_per_node = spec
            .and_then(|s| s.placement.as_ref())
            .and_then(|p| p.max_replicas_per_node)
            .filter(|m| *m > 0);
        let chosen = nodes
            .iter()
            .filter(|n| constraints.iter().all(|c| constraint_holds(n, c)))
            .filter(|n| {
                max_per_node.is_none_or(|m| {
                    per_service
                        .get(&(n.id.clone(), t.service_id.clone()))
                        .copied()
                        .unwrap_or(0)
                        < m
                })
            })
            .min_by_key(|n| {
                (
                    per_service
                        .get(&(n.id.clone(), t.service_id.clone()))
                        .copied()
                        .unwrap_or(0),
                    total.get(&n.id).copied().unwrap_or(0),
                    n.id.clone(),
                )
            })
            .map(|n| n.id.clone());
        let status = t.status.get_or_insert_with(TaskStatus::default);
        match chosen {
            Some(node) => {
                *per_service
                    .entry((node.clone(), t.service_id.clone()))
                    .or_default() += 1;
                *total.entry(node.clone()).or_default() += 1;
                status.set_state(TaskState::Assigned);
                status.timestamp = Some(now);
                status.message = format!("assigned to node {node}");
                t.pending_reason.clear();
                t.node_id = node;
            }
            None => {
                let reason =
                    if nodes.is_empty() || (constraints.is_empty() && max_per_node.is_none()) {
                        NO_READY_NODE.to_string()
                    } else {
                        format!(
                            "no ready node satisfies the placement constraints [{}]{}",
                            constraints.join(", "),
                            max_per_node
                                .map(|m| format!(" with max {m} replicas per node"))
                                .unwrap_or_default()
                        )
                    };
                if status.state() != TaskState::Pending || t.pending_reason != reason {
                    status.set_state(TaskState::Pending);
                    status.timestamp = Some(now);
                    status.message = reason.clone();
                    t.pending_reason = reason;
                }
            }
        }
    };

    for i in candidates {
        if let Some(store_action::Object::Task(t)) = &mut actions[i].object {
            place(t);
        }
    }
    for (orig, mut t) in appended.drain(..) {
        place(&mut t);
        if t != orig {
            actions.push(StoreAction {
                kind: store_action::Kind::Put as i32,
                expected_version: orig.meta.as_ref().map(|m| m.version).unwrap_or(0),
                object: Some(store_action::Object::Task(t)),
            });
        }
    }
}
