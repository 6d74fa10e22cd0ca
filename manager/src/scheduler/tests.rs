use super::*;
use crate::orchestrator::fixtures::*;
use flotilla_proto::v1::{Placement, StoreSnapshot};

struct Case {
    name: &'static str,
    nodes: Vec<Node>,
    /// (service, slot, id, node, state)
    tasks: Vec<(&'static str, u32, &'static str, &'static str, TaskState)>,
    /// Expected (task id, node or "" when pending, pending_reason).
    want: Vec<(&'static str, &'static str, &'static str)>,
}

fn run(case: Case) {
    let web = service("s", spec("web"));
    let db = service("s", spec("db"));
    let svc = |n: &str| if n == "web" { &web } else { &db };
    let snap = StoreSnapshot {
        nodes: case.nodes,
        services: vec![web.clone(), db.clone()],
        tasks: case
            .tasks
            .iter()
            .map(|(s, slot, id, node, state)| {
                let mut t = task(svc(s), *slot, id, node, *state);
                if *state == TaskState::Pending {
                    t.pending_reason = NO_READY_NODE.into();
                }
                t
            })
            .collect(),
        ..Default::default()
    };
    let actions = schedule(&snap, ts(200));
    let mut got: Vec<(String, String, String)> = actions
        .iter()
        .filter_map(|a| {
            task_of(a).map(|t| (t.id.clone(), t.node_id.clone(), t.pending_reason.clone()))
        })
        .collect();
    got.sort();
    let mut want: Vec<(String, String, String)> = case
        .want
        .iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect();
    want.sort();
    assert_eq!(got, want, "case {}", case.name);
    for a in &actions {
        let t = task_of(a).unwrap();
        let state = t.status.as_ref().unwrap().state();
        if t.node_id.is_empty() {
            assert_eq!(state, TaskState::Pending, "case {}", case.name);
        } else {
            assert_eq!(state, TaskState::Assigned, "case {}", case.name);
        }
        assert_eq!(a.expected_version, 2, "case {}: versioned write", case.name);
    }
}

#[test]
fn placement_table() {
    use TaskState::*;
    let cases = vec![
        Case {
            name: "no nodes: pending with reason",
            nodes: vec![],
            tasks: vec![("web", 1, "t1", "", New)],
            want: vec![("t1", "", NO_READY_NODE)],
        },
        Case {
            name: "already pending with the same reason: no write",
            nodes: vec![],
            tasks: vec![("web", 1, "t1", "", Pending)],
            want: vec![],
        },
        Case {
            name: "down, drained and paused nodes are skipped",
            nodes: vec![
                node("a", NodeState::Down, NodeAvailability::Active),
                node("b", NodeState::Ready, NodeAvailability::Drain),
                node("c", NodeState::Ready, NodeAvailability::Pause),
                ready("d"),
            ],
            tasks: vec![("web", 1, "t1", "", New)],
            want: vec![("t1", "d", "")],
        },
        Case {
            name: "spread by tasks of the service first",
            nodes: vec![ready("a"), ready("b")],
            tasks: vec![
                ("web", 1, "w1", "a", Running),
                ("db", 1, "d1", "b", Running),
                ("db", 2, "d2", "b", Running),
                ("web", 2, "w2", "", New),
            ],
            want: vec![("w2", "b", "")],
        },
        Case {
            name: "then by total tasks",
            nodes: vec![ready("a"), ready("b")],
            tasks: vec![("db", 1, "d1", "a", Running), ("web", 1, "w1", "", New)],
            want: vec![("w1", "b", "")],
        },
        Case {
            name: "terminal tasks do not count",
            nodes: vec![ready("a"), ready("b")],
            tasks: vec![
                ("web", 1, "old", "a", Failed),
                ("db", 1, "d1", "b", Running),
                ("web", 2, "w2", "", New),
            ],
            want: vec![("w2", "a", "")],
        },
        Case {
            name: "several pending tasks spread over nodes in one pass",
            nodes: vec![ready("a"), ready("b"), ready("c")],
            tasks: vec![
                ("web", 1, "w1", "", New),
                ("web", 2, "w2", "", New),
                ("web", 3, "w3", "", Pending),
            ],
            want: vec![("w1", "a", ""), ("w2", "b", ""), ("w3", "c", "")],
        },
        Case {
            name: "assigned tasks are left alone",
            nodes: vec![ready("a")],
            tasks: vec![("web", 1, "w1", "a", Assigned)],
            want: vec![],
        },
    ];
    for c in cases {
        run(c);
    }
}

#[test]
fn constraints_and_max_per_node() {
    let mut a = ready("a");
    a.labels.insert("zone".into(), "east".into());
    let b = ready("b");
    let mut s = spec("web");
    s.placement = Some(Placement {
        constraints: vec!["node.labels.zone==east".into()],
        max_replicas_per_node: Some(1),
        ..Default::default()
    });
    let web = service("s", s);
    let snap = StoreSnapshot {
        nodes: vec![a, b],
        tasks: vec![
            task(&web, 1, "w1", "", TaskState::New),
            task(&web, 2, "w2", "", TaskState::New),
        ],
        ..Default::default()
    };
    let actions = schedule(&snap, ts(1));
    let placed: Vec<(String, String)> = actions
        .iter()
        .map(|x| {
            let t = task_of(x).unwrap();
            (t.node_id.clone(), t.pending_reason.clone())
        })
        .collect();
    assert_eq!(placed[0], ("a".to_string(), String::new()));
    assert_eq!(placed[1].0, "");
    assert!(
        placed[1].1.contains("node.labels.zone==east"),
        "{}",
        placed[1].1
    );

    let n = ready("x");
    assert!(constraint_holds(&n, "node.role==worker"));
    assert!(constraint_holds(&n, "node.hostname!=other"));
    assert!(constraint_holds(&n, "node.hostname==host-x"));
    assert!(!constraint_holds(&n, "node.bogus==1"));
    assert!(!constraint_holds(&n, "garbage"));
}

#[test]
fn tasks_created_in_the_same_pass_are_placed_in_place() {
    let web = service("s", spec("web"));
    let snap = StoreSnapshot {
        nodes: vec![ready("a"), ready("b")],
        tasks: vec![task(&web, 1, "w1", "a", TaskState::Running)],
        ..Default::default()
    };
    let mut new_task = task(&web, 2, "w2", "", TaskState::New);
    new_task.meta = None;
    let mut actions = vec![StoreAction {
        kind: store_action::Kind::Put as i32,
        expected_version: 0,
        object: Some(store_action::Object::Task(new_task)),
    }];
    schedule_into(&snap, &mut actions, ts(1));
    assert_eq!(actions.len(), 1);
    assert_eq!(task_of(&actions[0]).unwrap().node_id, "b");
}
