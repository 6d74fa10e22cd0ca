//! Table-driven tests of `Store::apply`: each case is a list of batches at
//! Raft indexes, with what each must return, and the whole store expected
//! afterwards.

use super::*;
use flotilla_proto::v1::{store_action::Kind, store_action::Object, ServiceSpec, StoreAction};
use flotilla_proto::v1::{TaskState, TaskStatus};

fn ts(n: i64) -> Option<Timestamp> {
    Some(Timestamp { unix_nanos: n })
}

fn meta_at(updated: i64) -> Option<Meta> {
    Some(Meta {
        updated_at: ts(updated),
        ..Meta::default()
    })
}

fn stack(id: &str) -> Object {
    Object::Stack(Stack {
        id: id.into(),
        meta: meta_at(100),
        ..Default::default()
    })
}

fn service(id: &str, stack: &str) -> Object {
    Object::Service(Service {
        id: id.into(),
        stack: stack.into(),
        meta: meta_at(100),
        spec: Some(ServiceSpec {
            name: id.rsplit('_').next().unwrap_or(id).into(),
            ..Default::default()
        }),
        ..Default::default()
    })
}

fn task(id: &str, service: &str, node: &str, state: TaskState, at: i64) -> Object {
    Object::Task(Task {
        id: id.into(),
        stack: "web".into(),
        service_id: service.into(),
        service_name: service.rsplit('_').next().unwrap_or(service).into(),
        node_id: node.into(),
        meta: meta_at(at),
        status: Some(TaskStatus {
            state: state as i32,
            ..Default::default()
        }),
        ..Default::default()
    })
}

fn node(id: &str) -> Object {
    Object::Node(Node {
        id: id.into(),
        meta: meta_at(100),
        ..Default::default()
    })
}

fn cluster(name: &str) -> Object {
    Object::Cluster(ClusterInfo {
        id: "c1".into(),
        name: name.into(),
        meta: meta_at(100),
        store_format: STORE_FORMAT,
        ..Default::default()
    })
}

fn put(o: Object) -> StoreAction {
    StoreAction {
        kind: Kind::Put as i32,
        object: Some(o),
        expected_version: 0,
    }
}

fn put_at(o: Object, expected: u64) -> StoreAction {
    StoreAction {
        expected_version: expected,
        ..put(o)
    }
}

fn del(o: Object) -> StoreAction {
    StoreAction {
        kind: Kind::Delete as i32,
        ..put(o)
    }
}

fn batch(actions: Vec<StoreAction>) -> StoreBatch {
    StoreBatch {
        actions,
        proposal_id: String::new(),
    }
}

/// What a step must return: the events as (kind, action, id), or an error.
enum Want {
    Events(Vec<(&'static str, &'static str, &'static str)>),
    Err(ApplyError),
}

struct Case {
    name: &'static str,
    steps: Vec<(u64, StoreBatch, Want)>,
    /// Every object after the last step as (kind, id, version), in the
    /// order kind then id.
    store: Vec<(&'static str, &'static str, u64)>,
    applied: u64,
}

fn listing(s: &Store) -> Vec<(&'static str, String, u64)> {
    let v = |m: &Option<Meta>| m.as_ref().map_or(0, |m| m.version);
    let mut out = Vec::new();
    out.extend(s.cluster().map(|c| ("cluster", c.id.clone(), v(&c.meta))));
    out.extend(s.stacks().map(|o| ("stack", o.id.clone(), v(&o.meta))));
    out.extend(s.services().map(|o| ("service", o.id.clone(), v(&o.meta))));
    out.extend(s.tasks().map(|o| ("task", o.id.clone(), v(&o.meta))));
    out.extend(s.nodes().map(|o| ("node", o.id.clone(), v(&o.meta))));
    out.extend(s.networks().map(|o| ("network", o.id.clone(), v(&o.meta))));
    out.extend(s.volumes().map(|o| ("volume", o.id.clone(), v(&o.meta))));
    out
}

fn cases() -> Vec<Case> {
    use TaskState::*;
    vec![
        Case {
            name: "one batch creates several kinds, all at the entry's index",
            steps: vec![(
                5,
                batch(vec![
                    put(stack("web")),
                    put(service("web_api", "web")),
                    put(task("t1", "web_api", "n1", New, 100)),
                    put(node("n1")),
                    put(cluster("prod")),
                ]),
                Want::Events(vec![
                    ("stack", "create", "web"),
                    ("service", "create", "web_api"),
                    ("task", "create", "t1"),
                    ("node", "create", "n1"),
                    ("cluster", "create", "c1"),
                ]),
            )],
            store: vec![
                ("cluster", "c1", 5),
                ("stack", "web", 5),
                ("service", "web_api", 5),
                ("task", "t1", 5),
                ("node", "n1", 5),
            ],
            applied: 5,
        },
        Case {
            name: "update with the right expected version",
            steps: vec![
                (
                    1,
                    batch(vec![put(stack("web"))]),
                    Want::Events(vec![("stack", "create", "web")]),
                ),
                (
                    2,
                    batch(vec![put_at(stack("web"), 1)]),
                    Want::Events(vec![("stack", "update", "web")]),
                ),
            ],
            store: vec![("stack", "web", 2)],
            applied: 2,
        },
        Case {
            name: "a stale expected version refuses the whole batch",
            steps: vec![
                (
                    1,
                    batch(vec![put(stack("web"))]),
                    Want::Events(vec![("stack", "create", "web")]),
                ),
                (
                    2,
                    batch(vec![put(stack("web"))]),
                    Want::Events(vec![("stack", "update", "web")]),
                ),
                (
                    3,
                    batch(vec![put(stack("db")), put_at(stack("web"), 1)]),
                    Want::Err(ApplyError::VersionConflict {
                        kind: "stack",
                        id: "web".into(),
                        expected: 1,
                        actual: 2,
                    }),
                ),
            ],
            store: vec![("stack", "web", 2)],
            applied: 3,
        },
        Case {
            name: "expecting a version of an absent object conflicts",
            steps: vec![(
                4,
                batch(vec![put_at(node("n9"), 3)]),
                Want::Err(ApplyError::VersionConflict {
                    kind: "node",
                    id: "n9".into(),
                    expected: 3,
                    actual: 0,
                }),
            )],
            store: vec![],
            applied: 4,
        },
        Case {
            name: "later actions see earlier ones of the same batch",
            steps: vec![
                (
                    1,
                    batch(vec![put(stack("web"))]),
                    Want::Events(vec![("stack", "create", "web")]),
                ),
                (
                    2,
                    batch(vec![put_at(stack("web"), 1), put_at(stack("web"), 1)]),
                    Want::Err(ApplyError::VersionConflict {
                        kind: "stack",
                        id: "web".into(),
                        expected: 1,
                        actual: 2,
                    }),
                ),
                (
                    3,
                    batch(vec![del(stack("web")), put(stack("web"))]),
                    Want::Events(vec![("stack", "remove", "web"), ("stack", "create", "web")]),
                ),
            ],
            store: vec![("stack", "web", 3)],
            applied: 3,
        },
        Case {
            name: "delete removes, deleting an absent object is a silent no-op",
            steps: vec![
                (
                    1,
                    batch(vec![
                        put(task("t1", "web_api", "n1", Running, 1)),
                        put(node("n1")),
                    ]),
                    Want::Events(vec![("task", "create", "t1"), ("node", "create", "n1")]),
                ),
                (
                    2,
                    batch(vec![del(task("t1", "", "", New, 2)), del(node("n2"))]),
                    Want::Events(vec![("task", "remove", "t1")]),
                ),
            ],
            store: vec![("node", "n1", 1)],
            applied: 2,
        },
        Case {
            name: "a changed observed task state is a state event",
            steps: vec![
                (
                    1,
                    batch(vec![put(task("t1", "web_api", "n1", Assigned, 1))]),
                    Want::Events(vec![("task", "create", "t1")]),
                ),
                (
                    2,
                    batch(vec![put(task("t1", "web_api", "n1", Running, 2))]),
                    Want::Events(vec![("task", "state", "t1")]),
                ),
                (
                    3,
                    batch(vec![put(task("t1", "web_api", "n1", Running, 3))]),
                    Want::Events(vec![("task", "update", "t1")]),
                ),
            ],
            store: vec![("task", "t1", 3)],
            applied: 3,
        },
        Case {
            name: "malformed actions refuse the batch",
            steps: vec![
                (
                    1,
                    batch(vec![
                        put(stack("ok")),
                        StoreAction {
                            kind: 0,
                            object: None,
                            expected_version: 0,
                        },
                    ]),
                    Want::Err(ApplyError::MissingObject { position: 1 }),
                ),
                (
                    2,
                    batch(vec![StoreAction {
                        kind: 7,
                        ..put(stack("ok"))
                    }]),
                    Want::Err(ApplyError::UnknownKind {
                        position: 0,
                        value: 7,
                    }),
                ),
                (
                    3,
                    batch(vec![put(node(""))]),
                    Want::Err(ApplyError::EmptyId {
                        position: 0,
                        kind: "node",
                    }),
                ),
            ],
            store: vec![],
            applied: 3,
        },
        Case {
            name: "an index at or below the applied one is refused",
            steps: vec![
                (
                    7,
                    batch(vec![put(stack("a"))]),
                    Want::Events(vec![("stack", "create", "a")]),
                ),
                (
                    7,
                    batch(vec![put(stack("b"))]),
                    Want::Err(ApplyError::OutOfOrder {
                        index: 7,
                        applied: 7,
                    }),
                ),
            ],
            store: vec![("stack", "a", 7)],
            applied: 7,
        },
    ]
}

#[test]
fn apply_table() {
    for case in cases() {
        let mut s = Store::new();
        for (i, (index, b, want)) in case.steps.iter().enumerate() {
            let before = listing(&s);
            let got = s.apply(*index, b);
            match (want, got) {
                (Want::Events(w), Ok(events)) => {
                    let got: Vec<_> = events
                        .iter()
                        .map(|e| (e.kind.as_str(), e.action.as_str(), e.id.as_str()))
                        .collect();
                    assert_eq!(&got, w, "{}: step {i}: events", case.name);
                    assert!(
                        events.iter().all(|e| e.raft_index == *index),
                        "{}: step {i}: raft_index",
                        case.name
                    );
                }
                (Want::Err(w), Err(e)) => {
                    assert_eq!(&e, w, "{}: step {i}: error", case.name);
                    assert_eq!(
                        listing(&s),
                        before,
                        "{}: step {i}: refused batch changed the store",
                        case.name
                    );
                }
                (Want::Events(_), Err(e)) => {
                    panic!("{}: step {i}: unexpected error {e}", case.name)
                }
                (Want::Err(w), Ok(ev)) => {
                    panic!("{}: step {i}: wanted {w}, got events {ev:?}", case.name)
                }
            }
        }
        let want: Vec<_> = case
            .store
            .iter()
            .map(|(k, id, v)| (*k, id.to_string(), *v))
            .collect();
        assert_eq!(listing(&s), want, "{}: final store", case.name);
        assert_eq!(s.applied_index(), case.applied, "{}: applied", case.name);
    }
}

#[test]
fn timestamps_come_from_the_batch() {
    let mut s = Store::new();
    s.apply(
        1,
        &batch(vec![put(task("t1", "web_api", "n1", TaskState::New, 111))]),
    )
    .unwrap();
    let events = s
        .apply(
            2,
            &batch(vec![put(task(
                "t1",
                "web_api",
                "n1",
                TaskState::Running,
                222,
            ))]),
        )
        .unwrap();
    let m = s.task("t1").unwrap().meta.clone().unwrap();
    assert_eq!(
        m.created_at,
        ts(111),
        "created_at kept from the first write"
    );
    assert_eq!(m.updated_at, ts(222));
    assert_eq!(m.version, 2);
    assert_eq!(events[0].time, ts(222));
    let t = events[0].task.as_ref().expect("task events carry the task");
    assert_eq!(t.meta.as_ref().unwrap().version, 2);
    assert_eq!(events[0].service, "api");
    assert_eq!(events[0].stack, "web");
}

#[test]
fn secondary_indexes_follow_writes() {
    use TaskState::*;
    let mut s = Store::new();
    s.apply(
        1,
        &batch(vec![
            put(service("web_api", "web")),
            put(service("web_db", "web")),
            put(service("blog_api", "blog")),
            put(task("t1", "web_api", "n1", Running, 1)),
            put(task("t2", "web_api", "n2", Running, 1)),
            put(task("t3", "web_db", "n1", Running, 1)),
        ]),
    )
    .unwrap();
    let ids = |it: Vec<&str>| it.into_iter().map(String::from).collect::<Vec<_>>();
    let tasks = |s: &Store, svc: &str| {
        s.tasks_of_service(svc)
            .map(|t| t.id.clone())
            .collect::<Vec<_>>()
    };
    let on = |s: &Store, n: &str| s.tasks_on_node(n).map(|t| t.id.clone()).collect::<Vec<_>>();
    assert_eq!(tasks(&s, "web_api"), ids(vec!["t1", "t2"]));
    assert_eq!(on(&s, "n1"), ids(vec!["t1", "t3"]));
    let svcs: Vec<_> = s.services_of_stack("web").map(|x| x.id.clone()).collect();
    assert_eq!(svcs, ids(vec!["web_api", "web_db"]));
    // Move t1 to n2, delete t3 and a service.
    s.apply(
        2,
        &batch(vec![
            put(task("t1", "web_api", "n2", Running, 2)),
            del(task("t3", "", "", New, 2)),
            del(service("web_db", "")),
        ]),
    )
    .unwrap();
    assert_eq!(on(&s, "n1"), Vec::<String>::new());
    assert_eq!(on(&s, "n2"), ids(vec!["t1", "t2"]));
    assert_eq!(tasks(&s, "web_db"), Vec::<String>::new());
    let svcs: Vec<_> = s.services_of_stack("web").map(|x| x.id.clone()).collect();
    assert_eq!(svcs, ids(vec!["web_api"]));
    // A stack whose name is a prefix of another's does not leak in.
    assert_eq!(s.services_of_stack("we").count(), 0);
    // The restored store has the same indexes.
    let r = Store::restore_at(s.snapshot(), 2).unwrap();
    assert_eq!(r, s);
}

#[test]
fn restore_refuses_newer_formats_and_migrates_older() {
    let mut s = Store::new();
    s.apply(1, &batch(vec![put(stack("web")), put(node("n1"))]))
        .unwrap();
    let snap = s.snapshot();
    assert_eq!(snap.format, STORE_FORMAT);

    let mut newer = snap.clone();
    newer.format = STORE_FORMAT + 1;
    let err = Store::restore(newer).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "state written by a newer Flotilla (format {}), this binary reads up to {}",
            STORE_FORMAT + 1,
            STORE_FORMAT
        )
    );

    let mut older = snap.clone();
    older.format = 0;
    let r = Store::restore(older).unwrap();
    assert_eq!(r.snapshot(), snap);

    let mut dup = snap;
    dup.nodes.push(dup.nodes[0].clone());
    assert_eq!(
        Store::restore(dup).unwrap_err(),
        StoreError::Duplicate {
            kind: "node",
            id: "n1".into()
        }
    );
}
