//! Builders of store objects for the decision functions' table tests.

use flotilla_proto::v1::{
    store_action, Dependency, HealthCheck, HealthState, Meta, Network, Node, NodeAvailability,
    NodeDescription, NodeState, NodeStatus, RestartCondition, RestartPolicy, Service, ServiceSpec,
    Stack, StackSpec, StoreAction, Task, TaskState, TaskStatus, Timestamp,
};

pub fn ts(secs: i64) -> Timestamp {
    Timestamp {
        unix_nanos: secs * 1_000_000_000,
    }
}

pub fn meta(version: u64) -> Option<Meta> {
    Some(Meta {
        version,
        ..Default::default()
    })
}

pub fn node(id: &str, state: NodeState, availability: NodeAvailability) -> Node {
    Node {
        id: id.into(),
        meta: meta(1),
        availability: availability as i32,
        description: Some(NodeDescription {
            hostname: format!("host-{id}"),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            state: state as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn ready(id: &str) -> Node {
    node(id, NodeState::Ready, NodeAvailability::Active)
}

pub fn spec(name: &str) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        image: "busybox".into(),
        replicas: Some(1),
        ..Default::default()
    }
}

pub fn with_restart(mut s: ServiceSpec, c: RestartCondition, max: Option<u32>) -> ServiceSpec {
    s.restart_policy = Some(RestartPolicy {
        condition: c as i32,
        max_attempts: max,
        ..Default::default()
    });
    s
}

pub fn dep(
    mut s: ServiceSpec,
    on: &str,
    cond: flotilla_proto::v1::DependencyCondition,
) -> ServiceSpec {
    s.depends_on.push(Dependency {
        service: on.into(),
        condition: cond as i32,
        restart: false,
        required: true,
    });
    s
}

pub fn with_health(mut s: ServiceSpec) -> ServiceSpec {
    s.healthcheck = Some(HealthCheck {
        test: vec!["CMD".into(), "true".into()],
        ..Default::default()
    });
    s
}

pub fn stack(name: &str) -> Stack {
    Stack {
        id: name.into(),
        meta: meta(1),
        spec: Some(StackSpec {
            name: name.into(),
            ..Default::default()
        }),
        spec_version: 1,
    }
}

pub fn service(stack: &str, spec: ServiceSpec) -> Service {
    let hash = crate::orchestrator::spec_hash(&spec);
    Service {
        id: format!("{stack}_{}", spec.name),
        meta: meta(1),
        stack: stack.into(),
        spec_hash: hash,
        spec: Some(spec),
        spec_version: 1,
        ..Default::default()
    }
}

pub fn network(stack: &str, name: &str, subnet: &str) -> Network {
    Network {
        id: format!("{stack}_{name}"),
        meta: meta(1),
        stack: stack.into(),
        subnet: subnet.into(),
        gateway: subnet.replace(".0/24", ".1"),
        ..Default::default()
    }
}

/// A task of `svc`'s slot in `state`, on `node` ("" = unassigned).
pub fn task(svc: &Service, slot: u32, id: &str, node: &str, state: TaskState) -> Task {
    Task {
        id: id.into(),
        meta: meta(2),
        stack: svc.stack.clone(),
        service_id: svc.id.clone(),
        service_name: svc
            .spec
            .as_ref()
            .map(|s| s.name.clone())
            .unwrap_or_default(),
        slot,
        node_id: node.into(),
        spec: svc.spec.clone(),
        spec_hash: svc.spec_hash.clone(),
        spec_version: 1,
        desired_state: TaskState::Running as i32,
        status: Some(TaskStatus {
            state: state as i32,
            timestamp: Some(ts(100)),
            ..Default::default()
        }),
        name: format!(
            "{}-{}-{slot}",
            svc.stack,
            svc.spec.as_ref().map(|s| s.name.as_str()).unwrap_or("")
        ),
        ..Default::default()
    }
}

pub fn exited(mut t: Task, state: TaskState, code: i32, at: i64) -> Task {
    let st = t.status.get_or_insert_with(Default::default);
    st.state = state as i32;
    st.exit_code = Some(code);
    st.finished_at = Some(ts(at));
    t
}

pub fn healthy(mut t: Task, h: HealthState) -> Task {
    t.status.get_or_insert_with(Default::default).health = h as i32;
    t
}

pub fn desired(mut t: Task, d: TaskState) -> Task {
    t.desired_state = d as i32;
    t
}

/// Short, comparable descriptions of a batch: "put task web#1 new node= desired=running", ...
pub fn describe(actions: &[StoreAction]) -> Vec<String> {
    actions
        .iter()
        .map(|a| {
            let kind = match a.kind() {
                store_action::Kind::Put => "put",
                store_action::Kind::Delete => "delete",
            };
            match &a.object {
                Some(store_action::Object::Task(t)) => format!(
                    "{kind} task {}#{} {} desired={} state={} node={}",
                    t.service_name,
                    t.slot,
                    if t.meta.as_ref().map(|m| m.version).unwrap_or(0) == 0 {
                        "new"
                    } else {
                        t.id.as_str()
                    },
                    t.desired_state().short_name(),
                    t.status
                        .as_ref()
                        .map(|s| s.state().short_name())
                        .unwrap_or(""),
                    t.node_id
                ),
                Some(store_action::Object::Service(s)) => format!("{kind} service {}", s.id),
                Some(store_action::Object::Stack(s)) => format!("{kind} stack {}", s.id),
                Some(store_action::Object::Network(n)) => format!("{kind} network {}", n.id),
                Some(store_action::Object::Volume(v)) => format!("{kind} volume {}", v.id),
                Some(store_action::Object::Node(n)) => format!("{kind} node {}", n.id),
                Some(store_action::Object::Cluster(_)) => format!("{kind} cluster"),
                None => format!("{kind} nothing"),
            }
        })
        .collect()
}
