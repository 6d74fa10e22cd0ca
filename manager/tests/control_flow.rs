//! A real manager (Raft on a temp dir) served on a unix socket, driven over
//! gRPC: a fake agent registers through the Dispatcher, the Control API
//! deploys a 3-service stack with depends_on, and the agent plays the
//! containers by reporting task states. Protocol-level: no containers run.

use flotilla_manager::{Manager, ManagerConfig};
use flotilla_proto::v1::{
    control_client::ControlClient, dispatcher_client::DispatcherClient, AssignmentSet,
    AssignmentsRequest, Dependency, DependencyCondition, DeployStackRequest, EventsRequest,
    HealthCheck, HealthState, HeartbeatRequest, ListNetworksRequest, ListStacksRequest,
    ListTasksRequest, NodeDescription, RegisterRequest, RemoveStackRequest, RestartCondition,
    RestartPolicy, ServiceSpec, ShutdownRequest, StackSpec, Task, TaskState, TaskStatus,
    TaskStatusUpdate, Timestamp, UpdateTaskStatusRequest,
};
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;
use tonic::transport::Channel;
use tonic::Streaming;

/// Generous bound for one step of the flow; reaching it is a failure, not
/// a timing assertion.
const STEP: Duration = Duration::from_secs(30);

struct FakeAgent {
    client: DispatcherClient<Channel>,
    node_id: String,
    session_id: String,
    stream: Streaming<AssignmentSet>,
    /// Services in the order their first task reached this node.
    first_seen: Vec<String>,
    /// Tasks the agent should report as failed instead of running.
    fail: HashSet<String>,
    reported: BTreeMap<String, TaskState>,
}

fn status(state: TaskState, health: HealthState, exit: Option<i32>) -> TaskStatus {
    TaskStatus {
        state: state as i32,
        timestamp: Some(Timestamp::now()),
        exit_code: exit,
        health: health as i32,
        ..Default::default()
    }
}

fn state_of(t: &Task) -> TaskState {
    t.status
        .as_ref()
        .map(|s| s.state())
        .unwrap_or(TaskState::New)
}

impl FakeAgent {
    async fn next(&mut self) -> AssignmentSet {
        tokio::time::timeout(STEP, self.stream.message())
            .await
            .expect("an assignment set within the step bound")
            .expect("assignment stream ok")
            .expect("assignment stream open")
    }

    async fn report(&mut self, task_id: &str, st: TaskStatus) {
        self.reported.insert(task_id.to_string(), st.state());
        self.client
            .update_task_status(UpdateTaskStatusRequest {
                node_id: self.node_id.clone(),
                session_id: self.session_id.clone(),
                updates: vec![TaskStatusUpdate {
                    task_id: task_id.to_string(),
                    status: Some(st),
                }],
            })
            .await
            .unwrap();
    }

    /// Plays the containers: runs what should run (healthy when it has a
    /// health check), stops what should stop.
    async fn act(&mut self, set: &AssignmentSet) {
        for t in &set.tasks {
            if !self.first_seen.contains(&t.service_name) {
                self.first_seen.push(t.service_name.clone());
                check_dependencies_hold(t, set);
            }
            let cur = state_of(t);
            let want = t.desired_state();
            let already = self.reported.get(&t.id).copied();
            if want == TaskState::Running && !cur.is_terminal() && cur != TaskState::Running {
                if already.is_some() {
                    continue;
                }
                if self.fail.remove(&t.id) {
                    self.report(&t.id, status(TaskState::Failed, HealthState::None, Some(1)))
                        .await;
                    continue;
                }
                let has_check = t.spec.as_ref().is_some_and(|s| s.healthcheck.is_some());
                let health = if has_check {
                    HealthState::Healthy
                } else {
                    HealthState::None
                };
                self.report(&t.id, status(TaskState::Running, health, None))
                    .await;
            } else if want == TaskState::Shutdown && !cur.is_terminal() {
                if already == Some(TaskState::Shutdown) {
                    continue;
                }
                self.report(
                    &t.id,
                    status(TaskState::Shutdown, HealthState::None, Some(0)),
                )
                .await;
            } else if want == TaskState::Remove && cur != TaskState::Remove {
                if already == Some(TaskState::Remove) {
                    continue;
                }
                // The container is stopped (if it ran) and removed.
                self.report(&t.id, status(TaskState::Remove, HealthState::None, Some(0)))
                    .await;
            }
        }
    }

    /// Receives and plays sets until `done` holds for one.
    async fn until(&mut self, what: &str, done: impl Fn(&AssignmentSet) -> bool) -> AssignmentSet {
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for: {what}"
            );
            let set = self.next().await;
            self.act(&set).await;
            if done(&set) {
                return set;
            }
        }
    }
}

/// When a task first reaches the node, its dependencies must already hold
/// (as seen in the same set's peers).
fn check_dependencies_hold(t: &Task, set: &AssignmentSet) {
    let Some(spec) = &t.spec else { return };
    for d in &spec.depends_on {
        let ok = set.peers.iter().any(|p| {
            let st = p.status.clone().unwrap_or_default();
            p.service_name == d.service
                && match d.condition() {
                    DependencyCondition::Started => st.state() == TaskState::Running,
                    DependencyCondition::Healthy => {
                        st.state() == TaskState::Running && st.health() == HealthState::Healthy
                    }
                    DependencyCondition::CompletedSuccessfully => {
                        st.state() == TaskState::Complete && st.exit_code == Some(0)
                    }
                }
        });
        assert!(
            ok,
            "{} reached the node before {} held",
            t.service_name, d.service
        );
    }
}

fn running(set: &AssignmentSet, service: &str) -> Vec<Task> {
    set.tasks
        .iter()
        .filter(|t| {
            t.service_name == service
                && t.desired_state() == TaskState::Running
                && state_of(t) == TaskState::Running
        })
        .cloned()
        .collect()
}

fn service(name: &str, deps: &[(&str, DependencyCondition)]) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        image: "busybox:latest".into(),
        replicas: Some(1),
        depends_on: deps
            .iter()
            .map(|(s, c)| Dependency {
                service: s.to_string(),
                condition: *c as i32,
                restart: false,
                required: true,
            })
            .collect(),
        restart_policy: Some(RestartPolicy {
            condition: RestartCondition::OnFailure as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_run_replace_and_remove_a_stack() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ManagerConfig::new(dir.path().join("state"));
    cfg.heartbeat_period = Duration::from_millis(500);
    let manager = Manager::start(cfg).await.unwrap();

    let sock = dir.path().join("manager.sock");
    let incoming = flotilla_proto::transport::bind_unix(&sock).unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(manager.control_service())
            .add_service(manager.dispatcher_service())
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stop_rx.await;
            }),
    );
    let addr = format!("unix://{}", sock.display());
    let channel = flotilla_proto::transport::connect(&addr).await.unwrap();
    let mut control = ControlClient::new(channel.clone());
    let mut dispatcher = DispatcherClient::new(channel);

    // The fake agent registers; its host already routes 10.89.0.0/24.
    let reg = dispatcher
        .register(RegisterRequest {
            node_id: String::new(),
            description: Some(NodeDescription {
                hostname: "fake-host".into(),
                host_networks: vec!["10.89.0.0/24".into()],
                ..Default::default()
            }),
            agent_addr: "unix:///nonexistent/agent.sock".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!reg.node_id.is_empty());
    let hb = {
        let mut c = dispatcher.clone();
        let (node_id, session_id) = (reg.node_id.clone(), reg.session_id.clone());
        let period = Duration::from_millis(reg.heartbeat_period_ms);
        tokio::spawn(async move {
            loop {
                let _ = c
                    .heartbeat(HeartbeatRequest {
                        node_id: node_id.clone(),
                        session_id: session_id.clone(),
                    })
                    .await;
                tokio::time::sleep(period / 2).await;
            }
        })
    };
    let stream = dispatcher
        .assignments(AssignmentsRequest {
            node_id: reg.node_id.clone(),
            session_id: reg.session_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut agent = FakeAgent {
        client: dispatcher.clone(),
        node_id: reg.node_id.clone(),
        session_id: reg.session_id.clone(),
        stream,
        first_seen: Vec::new(),
        fail: HashSet::new(),
        reported: BTreeMap::new(),
    };

    // db (with a health check) <- api (healthy) <- web (started).
    let mut db = service("db", &[]);
    db.healthcheck = Some(HealthCheck {
        test: vec!["CMD".into(), "true".into()],
        ..Default::default()
    });
    let api = service("api", &[("db", DependencyCondition::Healthy)]);
    let web = service("web", &[("api", DependencyCondition::Started)]);
    let spec = StackSpec {
        name: "flow".into(),
        services: vec![web, api, db],
        ..Default::default()
    };
    let resp = control
        .deploy_stack(DeployStackRequest {
            spec: Some(spec.clone()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.created, vec!["web", "api", "db"]);

    let set = agent
        .until("all three services running", |s| {
            ["db", "api", "web"]
                .iter()
                .all(|n| running(s, n).len() == 1)
        })
        .await;
    assert_eq!(agent.first_seen, vec!["db", "api", "web"]);
    assert_eq!(set.services.len(), 3);
    assert_eq!(set.networks.len(), 1);
    // The host's own network is avoided.
    assert_eq!(set.networks[0].subnet, "10.89.1.0/24");
    assert_eq!(set.networks[0].gateway, "10.89.1.1");
    assert_eq!(set.peers.len(), 3);

    // Deploying the same spec again changes nothing.
    let again = control
        .deploy_stack(DeployStackRequest {
            spec: Some(spec.clone()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.unchanged.len(), 3);

    // api fails; on-failure restarts it on the same address.
    let old_api = running(&set, "api").remove(0);
    let old_addrs = old_api.networks.clone();
    assert_eq!(old_addrs.len(), 1);
    agent
        .report(
            &old_api.id,
            status(TaskState::Failed, HealthState::None, Some(1)),
        )
        .await;
    let set = agent
        .until("api replaced and running", |s| {
            running(s, "api").iter().any(|t| t.id != old_api.id)
        })
        .await;
    let new_api = running(&set, "api").remove(0);
    assert_eq!(new_api.networks, old_addrs);
    assert_eq!(new_api.slot, old_api.slot);
    assert_eq!(new_api.restart_count, 1);
    assert_eq!(new_api.name, "flow-api-1");

    // The event stream starts with a snapshot of the stack's tasks.
    let mut events = control
        .events(EventsRequest {
            stack: "flow".into(),
            services: vec![],
            initial: true,
        })
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(STEP, events.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.action, "snapshot");
    assert_eq!(first.stack, "flow");

    // Remove (waiting) while the agent stops what it is told to stop.
    let remover = {
        let mut c = control.clone();
        tokio::spawn(async move {
            c.remove_stack(RemoveStackRequest {
                name: "flow".into(),
                remove_volumes: false,
                timeout_ms: 20_000,
                wait: true,
            })
            .await
        })
    };
    agent
        .until("every task of the node deleted", |s| s.tasks.is_empty())
        .await;
    let removed = tokio::time::timeout(STEP, remover)
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .into_inner();
    assert!(removed.tasks_removed >= 3);
    assert_eq!(removed.networks_removed, 1);

    let stacks = control
        .list_stacks(ListStacksRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(stacks.stacks.is_empty());
    let tasks = control
        .list_tasks(ListTasksRequest {
            stack: String::new(),
            services: vec![],
            all: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(tasks.tasks.is_empty());
    assert_eq!(tasks.nodes.len(), 1);
    let nets = control
        .list_networks(ListNetworksRequest {
            stack: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(nets.networks.is_empty());

    // Shutdown through the API is noticed by the wiring.
    control.shutdown(ShutdownRequest {}).await.unwrap();
    tokio::time::timeout(STEP, manager.shutdown_requested())
        .await
        .unwrap();
    hb.abort();
    drop(agent);
    drop(events);
    let _ = stop_tx.send(());
    tokio::time::timeout(STEP, server)
        .await
        .expect("the server stops once streams ended")
        .unwrap()
        .unwrap();
    manager.shutdown().await;
    // The state survives: a restarted manager reads it back.
    let again = Manager::start(ManagerConfig::new(dir.path().join("state")))
        .await
        .unwrap();
    let nodes = again.store().read(|s| s.nodes().count());
    assert_eq!(nodes, 1);
    again.shutdown().await;
}
