//! Table tests of the reconcile function: store states → expected actions.

use super::fixtures::*;
use super::*;
use flotilla_proto::v1::{
    store_action, DependencyCondition as Dc, HealthState, Node, RestartCondition as Rc, Service,
    ServiceDesired, SlotAddress, StoreSnapshot, Task, TaskState as S,
};

fn snapshot(services: Vec<Service>, tasks: Vec<Task>, nodes: Vec<Node>) -> StoreSnapshot {
    StoreSnapshot {
        stacks: vec![stack("s")],
        networks: vec![network("s", "default", "10.89.0.0/24")],
        services,
        tasks,
        nodes,
        ..Default::default()
    }
}

/// The actions of one pass except service updates (addresses), sorted.
fn decide(snap: &StoreSnapshot, now: i64) -> Vec<String> {
    let actions = reconcile(snap, ts(now));
    let mut d: Vec<String> = describe(&actions)
        .into_iter()
        .filter(|s| !s.starts_with("put service"))
        .collect();
    d.sort();
    d
}

fn new_task(svc: &str, slot: u32) -> String {
    format!("put task {svc}#{slot} new desired=running state=new node=")
}

fn put(svc: &str, slot: u32, id: &str, desired: &str, state: &str, node: &str) -> String {
    format!("put task {svc}#{slot} {id} desired={desired} state={state} node={node}")
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

struct Case {
    name: &'static str,
    snap: StoreSnapshot,
    now: i64,
    want: Vec<String>,
}

#[test]
fn reconcile_table() {
    let web2 = {
        let mut s = spec("web");
        s.replicas = Some(2);
        service("s", s)
    };
    let db = service("s", with_health(spec("db")));
    let db_plain = service("s", spec("db"));
    let migrate = service("s", spec("migrate"));
    let app_started = service("s", dep(spec("app"), "db", Dc::Started));
    let app_healthy = service("s", dep(spec("app"), "db", Dc::Healthy));
    let app_done = service("s", dep(spec("app"), "migrate", Dc::CompletedSuccessfully));
    let no_restart = service("s", spec("job"));
    let on_failure = service("s", with_restart(spec("job"), Rc::OnFailure, Some(2)));
    let any = service("s", with_restart(spec("job"), Rc::Any, None));
    let web1 = service("s", spec("web"));

    let cases = vec![
        Case {
            name: "new service: one task per slot",
            snap: snapshot(vec![web2.clone()], vec![], vec![ready("n1")]),
            now: 100,
            want: sorted(vec![new_task("web", 1), new_task("web", 2)]),
        },
        Case {
            name: "a running slot is left alone",
            snap: snapshot(
                vec![web1.clone()],
                vec![task(&web1, 1, "w1", "n1", S::Running)],
                vec![ready("n1")],
            ),
            now: 100,
            want: vec![],
        },
        Case {
            name: "started gate closed while the dependency is pending",
            snap: snapshot(
                vec![db_plain.clone(), app_started.clone()],
                vec![task(&db_plain, 1, "d1", "n1", S::Starting)],
                vec![ready("n1")],
            ),
            now: 100,
            want: vec![],
        },
        Case {
            name: "started gate opens when the dependency runs",
            snap: snapshot(
                vec![db_plain.clone(), app_started.clone()],
                vec![task(&db_plain, 1, "d1", "n1", S::Running)],
                vec![ready("n1")],
            ),
            now: 100,
            want: vec![new_task("app", 1)],
        },
        Case {
            name: "healthy gate closed while health is starting",
            snap: snapshot(
                vec![db.clone(), app_healthy.clone()],
                vec![healthy(
                    task(&db, 1, "d1", "n1", S::Running),
                    HealthState::Starting,
                )],
                vec![ready("n1")],
            ),
            now: 100,
            want: vec![],
        },
        Case {
            name: "healthy gate opens when healthy",
            snap: snapshot(
                vec![db.clone(), app_healthy.clone()],
                vec![healthy(
                    task(&db, 1, "d1", "n1", S::Running),
                    HealthState::Healthy,
                )],
                vec![ready("n1")],
            ),
            now: 100,
            want: vec![new_task("app", 1)],
        },
        Case {
            name: "completed_successfully gate stays closed on exit 1",
            snap: snapshot(
                vec![migrate.clone(), app_done.clone()],
                vec![exited(
                    task(&migrate, 1, "m1", "n1", S::Running),
                    S::Failed,
                    1,
                    90,
                )],
                vec![ready("n1")],
            ),
            now: 100,
            want: vec![],
        },
        Case {
            name: "completed_successfully gate opens on exit 0",
            snap: snapshot(
                vec![migrate.clone(), app_done.clone()],
                vec![exited(
                    task(&migrate, 1, "m1", "n1", S::Running),
                    S::Complete,
                    0,
                    90,
                )],
                vec![ready("n1")],
            ),
            now: 100,
            want: vec![new_task("app", 1)],
        },
        Case {
            name: "restart none: a failed task stays",
            snap: snapshot(
                vec![no_restart.clone()],
                vec![exited(
                    task(&no_restart, 1, "j1", "n1", S::Running),
                    S::Failed,
                    1,
                    90,
                )],
                vec![ready("n1")],
            ),
            now: 100,
            want: vec![],
        },
        Case {
            name: "on-failure: exit 1 is restarted",
            snap: snapshot(
                vec![on_failure.clone()],
                vec![exited(
                    task(&on_failure, 1, "j1", "n1", S::Running),
                    S::Failed,
                    1,
                    90,
                )],
                vec![ready("n1")],
            ),
            now: 100,
            want: sorted(vec![
                put("job", 1, "j1", "shutdown", "failed", "n1"),
                new_task("job", 1),
            ]),
        },
        Case {
            name: "on-failure: exit 0 is not restarted",
            snap: snapshot(
                vec![on_failure.clone()],
                vec![exited(
                    task(&on_failure, 1, "j1", "n1", S::Running),
                    S::Complete,
                    0,
                    90,
                )],
                vec![ready("n1")],
            ),
            now: 100,
            want: vec![],
        },
        Case {
            name: "on-failure: max_attempts reached",
            snap: snapshot(
                vec![on_failure.clone()],
                {
                    let mut t = exited(
                        task(&on_failure, 1, "j1", "n1", S::Running),
                        S::Failed,
                        1,
                        90,
                    );
                    t.restart_count = 2;
                    vec![t]
                },
                vec![ready("n1")],
            ),
            now: 100,
            want: vec![],
        },
        Case {
            name: "any: a completed task is restarted",
            snap: snapshot(
                vec![any.clone()],
                vec![exited(
                    task(&any, 1, "j1", "n1", S::Running),
                    S::Complete,
                    0,
                    90,
                )],
                vec![ready("n1")],
            ),
            now: 100,
            want: sorted(vec![
                put("job", 1, "j1", "shutdown", "complete", "n1"),
                new_task("job", 1),
            ]),
        },
        Case {
            name: "any: a task on a down node is orphaned and replaced",
            snap: snapshot(
                vec![any.clone()],
                vec![task(&any, 1, "j1", "n1", S::Running)],
                vec![node(
                    "n1",
                    flotilla_proto::v1::NodeState::Down,
                    flotilla_proto::v1::NodeAvailability::Active,
                )],
            ),
            now: 100,
            want: sorted(vec![
                put("job", 1, "j1", "shutdown", "orphaned", "n1"),
                new_task("job", 1),
            ]),
        },
        Case {
            name: "scale down: the extra slot is shut down",
            snap: snapshot(
                vec![web1.clone()],
                vec![
                    task(&web1, 1, "w1", "n1", S::Running),
                    task(&web1, 2, "w2", "n1", S::Running),
                ],
                vec![ready("n1")],
            ),
            now: 100,
            want: vec![put("web", 2, "w2", "shutdown", "running", "n1")],
        },
        Case {
            name: "scale down: the extra slot's ended task goes to its node for removal",
            snap: snapshot(
                vec![web1.clone()],
                vec![
                    task(&web1, 1, "w1", "n1", S::Running),
                    desired(task(&web1, 2, "w2", "n1", S::Shutdown), S::Shutdown),
                ],
                vec![ready("n1")],
            ),
            now: 100,
            want: vec![put("web", 2, "w2", "remove", "shutdown", "n1")],
        },
        Case {
            name: "scale down: deleted once its node removed the container",
            snap: snapshot(
                vec![web1.clone()],
                vec![
                    task(&web1, 1, "w1", "n1", S::Running),
                    desired(task(&web1, 2, "w2", "n1", S::Remove), S::Remove),
                ],
                vec![ready("n1")],
            ),
            now: 100,
            want: vec!["delete task web#2 w2 desired=remove state=remove node=n1".into()],
        },
        Case {
            name: "spec change: the old task is shut down first",
            snap: snapshot(
                vec![web1.clone()],
                {
                    let mut t = task(&web1, 1, "w1", "n1", S::Running);
                    t.spec_hash = "old".into();
                    vec![t]
                },
                vec![ready("n1")],
            ),
            now: 100,
            want: vec![put("web", 1, "w1", "shutdown", "running", "n1")],
        },
        Case {
            name: "spec change: the new task comes once the old one stopped",
            snap: snapshot(
                vec![web1.clone()],
                {
                    let mut t = desired(task(&web1, 1, "w1", "n1", S::Shutdown), S::Shutdown);
                    t.spec_hash = "old".into();
                    vec![t]
                },
                vec![ready("n1")],
            ),
            now: 100,
            want: vec![new_task("web", 1)],
        },
        Case {
            name: "service stopped: tasks desired shutdown",
            snap: snapshot(
                vec![{
                    let mut s = web1.clone();
                    s.desired = ServiceDesired::Stopped as i32;
                    s
                }],
                vec![task(&web1, 1, "w1", "n1", S::Running)],
                vec![ready("n1")],
            ),
            now: 100,
            want: vec![put("web", 1, "w1", "shutdown", "running", "n1")],
        },
        Case {
            name: "stack removal: running tasks are shut down, nothing deleted yet",
            snap: {
                let mut s = snapshot(
                    vec![web1.clone()],
                    vec![task(&web1, 1, "w1", "n1", S::Running)],
                    vec![ready("n1")],
                );
                s.stacks[0]
                    .meta
                    .as_mut()
                    .unwrap()
                    .labels
                    .insert(LABEL_REMOVING.into(), "true".into());
                s
            },
            now: 100,
            want: vec![put("web", 1, "w1", "shutdown", "running", "n1")],
        },
        Case {
            name: "stack removal: ended tasks go to their node for removal",
            snap: {
                let mut s = snapshot(
                    vec![web1.clone()],
                    vec![desired(
                        task(&web1, 1, "w1", "n1", S::Shutdown),
                        S::Shutdown,
                    )],
                    vec![ready("n1")],
                );
                s.stacks[0]
                    .meta
                    .as_mut()
                    .unwrap()
                    .labels
                    .insert(LABEL_REMOVING.into(), "true".into());
                s
            },
            now: 100,
            want: vec![put("web", 1, "w1", "remove", "shutdown", "n1")],
        },
        Case {
            name: "stack removal: everything deleted once tasks are removed",
            snap: {
                let mut s = snapshot(
                    vec![web1.clone()],
                    vec![desired(task(&web1, 1, "w1", "n1", S::Remove), S::Remove)],
                    vec![ready("n1")],
                );
                s.stacks[0]
                    .meta
                    .as_mut()
                    .unwrap()
                    .labels
                    .insert(LABEL_REMOVING.into(), "true".into());
                s
            },
            now: 100,
            want: sorted(vec![
                "delete task web#1 w1 desired=remove state=remove node=n1".into(),
                "delete service s_web".into(),
                "delete network s_default".into(),
                "delete stack s".into(),
            ]),
        },
    ];
    for c in cases {
        assert_eq!(decide(&c.snap, c.now), c.want, "case: {}", c.name);
    }
}

#[test]
fn restart_back_off_is_recorded_then_honoured() {
    let svc = service("s", with_restart(spec("job"), Rc::Any, None));
    let mut t = exited(task(&svc, 1, "j1", "n1", S::Running), S::Failed, 1, 100);
    t.restart_count = 3; // fourth restart: 100ms << 2 = 400ms
    let snap = snapshot(vec![svc.clone()], vec![t.clone()], vec![ready("n1")]);
    let actions: Vec<_> = reconcile(&snap, ts(100))
        .into_iter()
        .filter(|a| matches!(a.object, Some(store_action::Object::Task(_))))
        .collect();
    assert_eq!(actions.len(), 1, "{:?}", describe(&actions));
    let Some(store_action::Object::Task(updated)) = &actions[0].object else {
        panic!("expected a task update");
    };
    assert_eq!(
        updated.restart_not_before.unwrap().unix_nanos,
        ts(100).unix_nanos + 400_000_000
    );
    // Once the deadline passed, the replacement comes with restart_count + 1.
    let snap = snapshot(vec![svc], vec![updated.clone()], vec![ready("n1")]);
    let actions = reconcile(&snap, ts(101));
    let created: Vec<&Task> = actions
        .iter()
        .filter_map(|a| match &a.object {
            Some(store_action::Object::Task(t)) if t.id != "j1" => Some(t),
            _ => None,
        })
        .collect();
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].restart_count, 4);
    assert_eq!(created[0].generation, 1);

    assert_eq!(restart_delay_ms(None, 0), 0);
    assert_eq!(restart_delay_ms(None, 1), 100);
    assert_eq!(restart_delay_ms(None, 30), MAX_BACKOFF_MS);
    assert_eq!(restart_delay_ms(Some(5), 7), 5);
}

#[test]
fn replacement_keeps_the_slot_address() {
    let svc = service("s", with_restart(spec("web"), Rc::Any, None));
    // First pass: the slot gets an address and a task.
    let snap = snapshot(vec![svc.clone()], vec![], vec![ready("n1")]);
    let actions = reconcile(&snap, ts(100));
    let mut stored_svc = None;
    let mut first = None;
    for a in &actions {
        match &a.object {
            Some(store_action::Object::Service(s)) => stored_svc = Some(s.clone()),
            Some(store_action::Object::Task(t)) => first = Some(t.clone()),
            _ => {}
        }
    }
    let stored_svc = stored_svc.unwrap();
    let first = first.unwrap();
    assert_eq!(stored_svc.vips[0].address, "10.89.0.2/24");
    assert_eq!(
        stored_svc.slot_addresses,
        vec![SlotAddress {
            slot: 1,
            network_id: "s_default".into(),
            address: "10.89.0.3/24".into(),
            mac_address: "02:42:0a:59:00:03".into(),
        }]
    );
    assert_eq!(first.networks[0].addresses, vec!["10.89.0.3/24"]);
    assert_eq!(first.name, "s-web-1");

    // The task fails; its replacement runs on the same address.
    let mut failed = exited(first.clone(), S::Failed, 137, 100);
    failed.meta = meta(5);
    failed.node_id = "n1".into();
    let snap = snapshot(vec![stored_svc.clone()], vec![failed], vec![ready("n1")]);
    let actions = reconcile(&snap, ts(100));
    let replacement = actions
        .iter()
        .find_map(|a| match &a.object {
            Some(store_action::Object::Task(t)) if t.id != first.id => Some(t.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(replacement.networks, first.networks);
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a.object, Some(store_action::Object::Service(_)))),
        "addresses unchanged"
    );
}

#[test]
fn history_is_pruned() {
    let svc = service("s", spec("web"));
    let mut tasks: Vec<Task> = (0..4)
        .map(|g| {
            let mut t = desired(
                exited(
                    task(&svc, 1, &format!("old{g}"), "n1", S::Running),
                    S::Failed,
                    1,
                    50,
                ),
                S::Shutdown,
            );
            t.generation = g;
            t
        })
        .collect();
    let mut cur = task(&svc, 1, "cur", "n1", S::Running);
    cur.generation = 4;
    tasks.push(cur);
    let snap = snapshot(vec![svc], tasks, vec![ready("n1")]);
    assert_eq!(
        decide(&snap, 100),
        vec![
            "delete task web#1 old0 desired=shutdown state=failed node=n1".to_string(),
            "delete task web#1 old1 desired=shutdown state=failed node=n1".to_string(),
        ]
    );
}

#[test]
fn plan_is_a_fixed_point_once_applied() {
    // Applying a pass's output and running again decides nothing new.
    let svc = service("s", spec("web"));
    let mut snap = snapshot(vec![svc], vec![], vec![ready("n1")]);
    for _ in 0..2 {
        let actions = plan(&snap, ts(100));
        for a in actions {
            match a.object {
                Some(store_action::Object::Service(s)) => {
                    snap.services.retain(|x| x.id != s.id);
                    snap.services.push(s);
                }
                Some(store_action::Object::Task(mut t)) => {
                    t.meta.get_or_insert_with(Default::default).version = 9;
                    snap.tasks.retain(|x| x.id != t.id);
                    snap.tasks.push(t);
                }
                _ => {}
            }
        }
    }
    assert_eq!(snap.tasks.len(), 1);
    assert_eq!(snap.tasks[0].node_id, "n1");
    assert!(plan(&snap, ts(100)).is_empty());
}

#[test]
fn spec_hash_ignores_scale_and_map_order() {
    let mut a = spec("web");
    a.environment.insert("A".into(), "1".into());
    a.environment.insert("B".into(), "2".into());
    let mut b = a.clone();
    b.replicas = Some(5);
    assert_eq!(spec_hash(&a), spec_hash(&b));
    b.environment.insert("B".into(), "3".into());
    assert_ne!(spec_hash(&a), spec_hash(&b));
}

#[test]
fn window_resets_the_attempt_count_after_a_long_run() {
    let mut sp = with_restart(spec("w"), Rc::OnFailure, Some(2));
    sp.restart_policy.as_mut().unwrap().window_ms = Some(10_000);
    let svc = service("s", sp);
    let failed = |started: i64, finished: i64| {
        let mut t = exited(
            task(&svc, 1, "w1", "n1", S::Running),
            S::Failed,
            1,
            finished,
        );
        t.status.as_mut().unwrap().started_at = Some(ts(started));
        t.restart_count = 2;
        t
    };
    // Two quick failures already: max_attempts reached, no restart.
    let quick = failed(100, 101);
    let snap = snapshot(vec![svc.clone()], vec![quick], vec![ready("n1")]);
    assert!(decide(&snap, 200).is_empty(), "{:?}", decide(&snap, 200));
    // It ran longer than the window: a fresh count, restarted at once.
    let long = failed(100, 150);
    let snap = snapshot(vec![svc.clone()], vec![long], vec![ready("n1")]);
    let actions = reconcile(&snap, ts(150));
    let created: Vec<&Task> = actions
        .iter()
        .filter_map(|a| match &a.object {
            Some(store_action::Object::Task(t)) if t.id != "w1" => Some(t),
            _ => None,
        })
        .collect();
    assert_eq!(created.len(), 1, "{:?}", describe(&actions));
    assert_eq!(created[0].restart_count, 1);
}

#[test]
fn restart_true_restarts_dependents_of_a_restarted_dependency() {
    let db = service("s", spec("db"));
    let mut app_spec = dep(spec("app"), "db", Dc::Started);
    app_spec.depends_on[0].restart = true;
    let app = service("s", app_spec.clone());
    let mut app_t = task(&app, 1, "a1", "n1", S::Running);
    app_t.meta.as_mut().unwrap().created_at = Some(ts(100));
    let mut db_t = task(&db, 1, "d1", "n1", S::Running);
    db_t.meta.as_mut().unwrap().created_at = Some(ts(90));
    // The dependency's first task, older: nothing happens.
    let snap = snapshot(
        vec![db.clone(), app.clone()],
        vec![db_t.clone(), app_t.clone()],
        vec![ready("n1")],
    );
    assert!(decide(&snap, 200).is_empty(), "{:?}", decide(&snap, 200));
    // db was restarted (a newer generation) after app started: app is replaced.
    db_t.generation = 1;
    db_t.meta.as_mut().unwrap().created_at = Some(ts(150));
    let snap = snapshot(
        vec![db.clone(), app.clone()],
        vec![db_t.clone(), app_t.clone()],
        vec![ready("n1")],
    );
    assert_eq!(
        decide(&snap, 200),
        vec![put("app", 1, "a1", "shutdown", "running", "n1")]
    );
    // Without `restart: true` it is left alone.
    let plain = service("s", dep(spec("app"), "db", Dc::Started));
    let mut t = task(&plain, 1, "a1", "n1", S::Running);
    t.meta.as_mut().unwrap().created_at = Some(ts(100));
    let snap = snapshot(vec![db, plain], vec![db_t, t], vec![ready("n1")]);
    assert!(decide(&snap, 200).is_empty());
}

fn stopped(mut s: Service) -> Service {
    s.desired = ServiceDesired::Stopped as i32;
    s
}

fn label(mut t: Task, key: &str) -> Task {
    t.meta
        .get_or_insert_with(Default::default)
        .labels
        .insert(key.to_string(), "true".to_string());
    t
}

#[test]
fn stop_and_down_go_in_reverse_dependency_order() {
    let db = service("s", spec("db"));
    let app = service("s", dep(spec("app"), "db", Dc::Started));
    let running = |a: &Service, d: &Service| {
        vec![
            task(d, 1, "d1", "n1", S::Running),
            task(a, 1, "a1", "n1", S::Running),
        ]
    };
    // stop: only the dependent is told first.
    let snap = snapshot(
        vec![stopped(db.clone()), stopped(app.clone())],
        running(&app, &db),
        vec![ready("n1")],
    );
    assert_eq!(
        decide(&snap, 100),
        vec![put("app", 1, "a1", "shutdown", "running", "n1")]
    );
    // The dependent is still stopping (desired shutdown, running): still wait.
    let mut tasks = running(&app, &db);
    tasks[1] = desired(tasks[1].clone(), S::Shutdown);
    let snap = snapshot(
        vec![stopped(db.clone()), stopped(app.clone())],
        tasks.clone(),
        vec![ready("n1")],
    );
    assert_eq!(decide(&snap, 100), Vec::<String>::new());
    // Once it exited, the dependency goes.
    tasks[1] = exited(tasks[1].clone(), S::Shutdown, 0, 99);
    let snap = snapshot(
        vec![stopped(db.clone()), stopped(app.clone())],
        tasks,
        vec![ready("n1")],
    );
    assert_eq!(
        decide(&snap, 100),
        vec![put("db", 1, "d1", "shutdown", "running", "n1")]
    );
    // Stopping only the dependency does not wait for a dependent that stays.
    let snap = snapshot(
        vec![stopped(db.clone()), app.clone()],
        running(&app, &db),
        vec![ready("n1")],
    );
    assert_eq!(
        decide(&snap, 100),
        vec![put("db", 1, "d1", "shutdown", "running", "n1")]
    );
    // down (the stack is being removed): same order.
    let mut snap = snapshot(
        vec![db.clone(), app.clone()],
        running(&app, &db),
        vec![ready("n1")],
    );
    snap.stacks[0]
        .meta
        .get_or_insert_with(Default::default)
        .labels
        .insert(LABEL_REMOVING.to_string(), "true".to_string());
    assert_eq!(
        decide(&snap, 100),
        vec![put("app", 1, "a1", "shutdown", "running", "n1")]
    );
}

#[test]
fn removed_tasks_are_deleted_and_not_replaced() {
    let web = stopped(service("s", spec("web")));
    let t = desired(
        exited(task(&web, 1, "w1", "n1", S::Running), S::Shutdown, 0, 90),
        S::Remove,
    );
    // Waiting for the node to remove the container.
    let snap = snapshot(vec![web.clone()], vec![t.clone()], vec![ready("n1")]);
    assert_eq!(decide(&snap, 100), Vec::<String>::new());
    // Removed on the node: deleted.
    let mut gone = t.clone();
    gone.status.as_mut().unwrap().state = S::Remove as i32;
    let snap = snapshot(vec![web.clone()], vec![gone.clone()], vec![ready("n1")]);
    assert_eq!(
        decide(&snap, 100),
        vec!["delete task web#1 w1 desired=remove state=remove node=n1".to_string()]
    );
    // A service started again after rm gets a fresh task in the slot.
    let mut running = web.clone();
    running.desired = ServiceDesired::Running as i32;
    let snap = snapshot(vec![running], vec![], vec![ready("n1")]);
    assert_eq!(decide(&snap, 100), vec![new_task("web", 1)]);
}

#[test]
fn oneoff_tasks_wait_for_dependencies_and_are_never_slots() {
    let db = service("s", spec("db"));
    let app = service("s", dep(spec("app"), "db", Dc::Started));
    let run = |id: &str| {
        let mut t = label(
            desired(
                task(&app, ONEOFF_SLOT_BASE, id, "n1", S::Created),
                S::Created,
            ),
            LABEL_ONEOFF,
        );
        t.spec_hash = "whatever".into();
        t
    };
    // The service itself is scaled to 0: the one-off task is not drained.
    let mut app0 = app.clone();
    app0.spec.as_mut().unwrap().replicas = Some(0);
    let snap = snapshot(
        vec![db.clone(), app0.clone()],
        vec![run("r1"), task(&db, 1, "d1", "n1", S::Starting)],
        vec![ready("n1")],
    );
    assert_eq!(decide(&snap, 100), Vec::<String>::new());
    // The dependency runs: the one-off task is started.
    let snap = snapshot(
        vec![db.clone(), app0.clone()],
        vec![run("r1"), task(&db, 1, "d1", "n1", S::Running)],
        vec![ready("n1")],
    );
    assert_eq!(
        decide(&snap, 100),
        vec![put(
            "app",
            ONEOFF_SLOT_BASE,
            "r1",
            "running",
            "created",
            "n1"
        )]
    );
    // --no-deps: started at once.
    let snap = snapshot(
        vec![db.clone(), app0.clone()],
        vec![label(run("r1"), LABEL_NO_DEPS)],
        vec![ready("n1")],
    );
    assert_eq!(
        decide(&snap, 100),
        sorted(vec![
            new_task("db", 1),
            put("app", ONEOFF_SLOT_BASE, "r1", "running", "created", "n1")
        ])
    );
    // A failed one-off task is not restarted; with --rm it is removed later.
    let mut done = exited(desired(run("r1"), S::Running), S::Failed, 3, 90);
    done.auto_remove = true;
    let snap = snapshot(vec![app0.clone()], vec![done.clone()], vec![ready("n1")]);
    assert_eq!(decide(&snap, 100), Vec::<String>::new());
    let later = 90 + (AUTO_REMOVE_AFTER_MS / 1000) as i64;
    assert_eq!(
        decide(&snap, later),
        vec![put("app", ONEOFF_SLOT_BASE, "r1", "remove", "failed", "n1")]
    );
}

#[test]
fn created_tasks_are_made_at_once_and_started_in_dependency_order() {
    let mut db = service("s", spec("db"));
    let mut app = service("s", dep(spec("app"), "db", Dc::Started));
    db.desired = ServiceDesired::Created as i32;
    app.desired = ServiceDesired::Created as i32;
    let snap = snapshot(vec![db.clone(), app.clone()], vec![], vec![ready("n1")]);
    let made: Vec<String> = decide(&snap, 100);
    assert_eq!(
        made,
        sorted(vec![
            "put task app#1 new desired=created state=new node=".to_string(),
            "put task db#1 new desired=created state=new node=".to_string(),
        ])
    );
    // start: db first; app stays created until db runs.
    db.desired = ServiceDesired::Running as i32;
    app.desired = ServiceDesired::Running as i32;
    let created = |svc: &Service, id: &str| desired(task(svc, 1, id, "n1", S::Created), S::Created);
    let snap = snapshot(
        vec![db.clone(), app.clone()],
        vec![created(&db, "d1"), created(&app, "a1")],
        vec![ready("n1")],
    );
    assert_eq!(
        decide(&snap, 100),
        vec![put("db", 1, "d1", "running", "created", "n1")]
    );
    let snap = snapshot(
        vec![db.clone(), app.clone()],
        vec![task(&db, 1, "d1", "n1", S::Running), created(&app, "a1")],
        vec![ready("n1")],
    );
    assert_eq!(
        decide(&snap, 100),
        vec![put("app", 1, "a1", "running", "created", "n1")]
    );
}
