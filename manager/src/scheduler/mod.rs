//! Task placement: which node runs each task that has none yet.
//!
//! A pure function over a view of the store (plus the actions a decision
//! pass already made, so tasks created in the same batch are placed too).
//! It never talks to a node and never changes anything but a pending task's
//! `node_id`, status and `pending_reason`.
//!
//! Policy: a task is placed on a node that is Ready and Active and satisfies
//! the service's placement constraints (`node.id`, `node.hostname`,
//! `node.role`, `node.platform.os`, `node.platform.arch`, `node.labels.K`,
//! `engine.labels.K`, with `==` or `!=`) and `max_replicas_per_node`; among
//! those, the one running the fewest tasks of the same service, then the
//! fewest tasks overall, then the smallest id. A task no node can take stays
//! Pending with a `pending_reason`.

use crate::orchestrator::StoreView;
use flotilla_proto::v1::{
    store_action, Node, NodeAvailability, NodeRole, NodeState, StoreAction, Task, TaskState,
    TaskStatus, Timestamp,
};
use std::collections::{HashMap, HashSet};

/// `pending_reason` when no node is Ready and Active.
pub const NO_READY_NODE: &str = "no ready node";

/// True for a task the scheduler should place.
pub fn needs_placement(t: &Task) -> bool {
    let desired_runs = matches!(
        t.desired_state(),
        TaskState::Running | TaskState::Created | TaskState::Paused
    );
    let state = t
        .status
        .as_ref()
        .map(|s| s.state())
        .unwrap_or(TaskState::New);
    t.node_id.is_empty() && desired_runs && matches!(state, TaskState::New | TaskState::Pending)
}

/// True for a task that occupies its node (counts for spreading).
fn occupies(t: &Task) -> bool {
    let state = t
        .status
        .as_ref()
        .map(|s| s.state())
        .unwrap_or(TaskState::New);
    !t.node_id.is_empty() && !state.is_terminal() && t.desired_state() != TaskState::Shutdown
}

/// Places every pending task of the store; returns the task updates.
pub fn schedule(view: &impl StoreView, now: Timestamp) -> Vec<StoreAction> {
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
pub fn schedule_into(view: &impl StoreView, actions: &mut Vec<StoreAction>, now: Timestamp) {
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

    // Counts indexed like `nodes` (tasks on other nodes never matter):
    // service -> tasks of it per node, and tasks per node. Indices, not
    // node-id strings, so placing a task allocates nothing per node.
    let index: HashMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.id.as_str(), i))
        .collect();
    let mut per_service: HashMap<String, Vec<u32>> = HashMap::new();
    let mut total: Vec<u32> = vec![0; nodes.len()];
    let mut count = |t: &Task| {
        if !occupies(t) {
            return;
        }
        let Some(&i) = index.get(t.node_id.as_str()) else {
            return;
        };
        bump(&mut per_service, &t.service_id, nodes.len(), i);
        total[i] += 1;
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
        let counts = per_service.get(&t.service_id);
        let of_service = |i: usize| counts.map_or(0, |c| c[i]);
        let chosen = (0..nodes.len())
            .filter(|&i| constraints.iter().all(|c| constraint_holds(nodes[i], c)))
            .filter(|&i| max_per_node.is_none_or(|m| of_service(i) < m))
            // `nodes` is sorted by id: the index breaks ties as the id would.
            .min_by_key(|&i| (of_service(i), total[i], i));
        let status = t.status.get_or_insert_with(TaskStatus::default);
        match chosen {
            Some(i) => {
                bump(&mut per_service, &t.service_id, nodes.len(), i);
                total[i] += 1;
                let node = nodes[i].id.clone();
                status.set_state(TaskState::Assigned);
                status.timestamp = Some(now);
                status.message = format!("assigned to node {node}");
                t.pending_reason.clear();
                tracing::debug!(task = %t.id, service = %t.service_id, node = %node, "task assigned");
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

/// Adds one task of `service` on node index `i`.
fn bump(per_service: &mut HashMap<String, Vec<u32>>, service: &str, nodes: usize, i: usize) {
    match per_service.get_mut(service) {
        Some(c) => c[i] += 1,
        None => {
            let mut c = vec![0; nodes];
            c[i] = 1;
            per_service.insert(service.to_string(), c);
        }
    }
}

/// Evaluates one Swarm-style placement constraint against a node. An
/// unknown attribute never holds (the task stays pending with the reason).
pub fn constraint_holds(node: &Node, constraint: &str) -> bool {
    let (key, want, negate) = if let Some((k, v)) = constraint.split_once("!=") {
        (k.trim(), v.trim(), true)
    } else if let Some((k, v)) = constraint.split_once("==") {
        (k.trim(), v.trim(), false)
    } else {
        return false;
    };
    let desc = node.description.as_ref();
    let value: Option<String> = match key {
        "node.id" => Some(node.id.clone()),
        "node.hostname" => desc.map(|d| d.hostname.clone()),
        "node.role" => Some(
            match node.role() {
                NodeRole::Manager => "manager",
                NodeRole::Worker => "worker",
            }
            .to_string(),
        ),
        "node.platform.os" => desc.and_then(|d| d.platform.as_ref()).map(|p| p.os.clone()),
        "node.platform.arch" => desc
            .and_then(|d| d.platform.as_ref())
            .map(|p| p.architecture.clone()),
        k => {
            if let Some(label) = k.strip_prefix("node.labels.") {
                node.labels.get(label).cloned()
            } else if let Some(label) = k.strip_prefix("engine.labels.") {
                desc.and_then(|d| d.labels.get(label).cloned())
            } else {
                return false;
            }
        }
    };
    let eq = value.as_deref() == Some(want);
    eq != negate
}

#[cfg(test)]
mod tests;
