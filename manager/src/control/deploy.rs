//! Deploy planning: validates a `DeployStackRequest` and turns it into the
//! one batch that writes the stack, its services and its networks (with
//! their subnets and VIPs allocated).
//!
//! Pure over a [`StoreView`] (but for the host's socket table, read when a
//! service publishes a fixed port); tasks are never written here (the
//! orchestrator makes them from the services). Services whose spec hash,
//! replicas and desired state are unchanged are left alone, so re-running a
//! deploy changes nothing.

use crate::ipam::{self, AddressBook, IpamError};
use crate::orchestrator::{spec_hash, stack_removing, StoreView, LABEL_REMOVING};
use flotilla_proto::v1::{
    store_action, DependencyCondition, DeployStackRequest, DeployStackResponse, Meta, Network,
    NetworkSpec, Service, ServiceDesired, ServiceSpec, Stack, StackSpec, StoreAction, Timestamp,
};
use ipnet::Ipv4Net;
use std::collections::{BTreeMap, BTreeSet};
use thiserror::Error;

/// Why a deploy was refused. Nothing is written when it is.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DeployError {
    #[error("deploy request carries no stack spec")]
    MissingSpec,
    #[error("stack name {0:?} is invalid: use lower-case letters, digits, '-' and '_', starting with a letter or digit")]
    BadStackName(String),
    #[error("stack {stack}: a service has an empty name")]
    EmptyServiceName { stack: String },
    #[error("stack {stack}: service {service} is defined twice")]
    DuplicateService { stack: String, service: String },
    #[error("stack {stack}: service {service} depends on {dependency}, which is not a service of the stack")]
    UnknownDependency {
        stack: String,
        service: String,
        dependency: String,
    },
    #[error("stack {stack}: service {service} waits for {dependency} to be healthy, but {dependency} has no healthcheck")]
    DependencyWithoutHealthcheck {
        stack: String,
        service: String,
        dependency: String,
    },
    #[error("stack {stack}: dependency cycle: {cycle}")]
    DependencyCycle { stack: String, cycle: String },
    #[error("stack {stack}: service {service} is attached to network {network}, which the stack does not define")]
    UnknownNetwork {
        stack: String,
        service: String,
        network: String,
    },
    #[error("stack {stack}: service {service} pins ipv4_address {address} but has {replicas} replicas; a fixed address needs exactly one")]
    PinWithReplicas {
        stack: String,
        service: String,
        address: String,
        replicas: u32,
    },
    #[error("stack {stack}: --services names {service}, which is not a service of the stack")]
    UnknownSelected { stack: String, service: String },
    #[error("stack {stack}: network {name} is declared external, but network {network} does not exist (create it with `flotilla network create {network}`)")]
    MissingExternalNetwork {
        stack: String,
        name: String,
        network: String,
    },
    #[error("stack {stack} is being removed; wait for the removal to finish")]
    BeingRemoved { stack: String },
    #[error("stack {stack} was changed by another deploy while this one was prepared (now at version {current}, this one was based on {base}): another `up` for the same project is running; run this one again when it is done")]
    ConcurrentDeploy {
        stack: String,
        base: u64,
        current: u64,
    },
    #[error("stack {stack}: {source}")]
    Port {
        stack: String,
        #[source]
        source: ipam::ports::PortConflict,
    },
    #[error("stack {stack}: {source}")]
    Ipam {
        stack: String,
        #[source]
        source: Box<IpamError>,
    },
}

fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// True when a health check would actually run.
pub fn has_healthcheck(spec: &ServiceSpec) -> bool {
    spec.healthcheck
        .as_ref()
        .is_some_and(|h| !h.disable && !h.test.is_empty() && h.test[0] != "NONE")
}

/// Checks the stack spec on its own (names, dependencies, networks, pins).
pub fn validate(spec: &StackSpec) -> Result<(), DeployError> {
    let stack = spec.name.clone();
    if !valid_name(&stack) {
        return Err(DeployError::BadStackName(stack));
    }
    let mut by_name: BTreeMap<&str, &ServiceSpec> = BTreeMap::new();
    for s in &spec.services {
        if s.name.is_empty() {
            return Err(DeployError::EmptyServiceName { stack });
        }
        if by_name.insert(&s.name, s).is_some() {
            return Err(DeployError::DuplicateService {
                stack,
                service: s.name.clone(),
            });
        }
    }
    let networks: BTreeSet<&str> = spec.networks.iter().map(|n| n.name.as_str()).collect();
    for s in &spec.services {
        for d in &s.depends_on {
            let Some(dep) = by_name.get(d.service.as_str()) else {
                return Err(DeployError::UnknownDependency {
                    stack,
                    service: s.name.clone(),
                    dependency: d.service.clone(),
                });
            };
            if d.condition() == DependencyCondition::Healthy && !has_healthcheck(dep) {
                return Err(DeployError::DependencyWithoutHealthcheck {
                    stack,
                    service: s.name.clone(),
                    dependency: d.service.clone(),
                });
            }
        }
        for a in &s.networks {
            if a.network != "default" && !networks.contains(a.network.as_str()) {
                return Err(DeployError::UnknownNetwork {
                    stack,
                    service: s.name.clone(),
                    network: a.network.clone(),
                });
            }
            let replicas = s.replicas.unwrap_or(1);
            if !a.ipv4_address.is_empty() && replicas > 1 {
                return Err(DeployError::PinWithReplicas {
                    stack,
                    service: s.name.clone(),
                    address: a.ipv4_address.clone(),
                    replicas,
                });
            }
        }
    }
    // Cycles: depth-first search with colours.
    fn visit<'a>(
        n: &'a str,
        by_name: &BTreeMap<&'a str, &'a ServiceSpec>,
        state: &mut BTreeMap<&'a str, u8>,
        path: &mut Vec<&'a str>,
    ) -> Option<String> {
        match state.get(n) {
            Some(2) => return None,
            Some(1) => {
                let start = path.iter().position(|p| *p == n).unwrap_or(0);
                let mut cycle: Vec<&str> = path[start..].to_vec();
                cycle.push(n);
                return Some(cycle.join(" -> "));
            }
            _ => {}
        }
        state.insert(n, 1);
        path.push(n);
        if let Some(s) = by_name.get(n) {
            for d in &s.depends_on {
                if let Some(c) = visit(d.service.as_str(), by_name, state, path) {
                    return Some(c);
                }
            }
        }
        path.pop();
        state.insert(n, 2);
        None
    }
    let mut state = BTreeMap::new();
    for name in by_name.keys() {
        if let Some(cycle) = visit(name, &by_name, &mut state, &mut Vec::new()) {
            return Err(DeployError::DependencyCycle { stack, cycle });
        }
    }
    Ok(())
}

/// The services a deploy touches: `selected` and, unless `no_deps`, what
/// they depend on (transitively); all services when `selected` is empty.
pub fn selected_services(
    spec: &StackSpec,
    selected: &[String],
    no_deps: bool,
) -> Result<BTreeSet<String>, DeployError> {
    if selected.is_empty() {
        return Ok(spec.services.iter().map(|s| s.name.clone()).collect());
    }
    let mut out = BTreeSet::new();
    let mut todo: Vec<String> = selected.to_vec();
    while let Some(n) = todo.pop() {
        let Some(s) = spec.services.iter().find(|s| s.name == n) else {
            return Err(DeployError::UnknownSelected {
                stack: spec.name.clone(),
                service: n,
            });
        };
        if !out.insert(n) {
            continue;
        }
        if !no_deps {
            todo.extend(s.depends_on.iter().map(|d| d.service.clone()));
        }
    }
    Ok(out)
}

fn put(object: store_action::Object, expected_version: u64) -> StoreAction {
    StoreAction {
        kind: store_action::Kind::Put as i32,
        object: Some(object),
        expected_version,
    }
}

fn version(meta: &Option<Meta>) -> u64 {
    meta.as_ref().map_or(0, |m| m.version)
}

fn new_meta(now: Timestamp) -> Option<Meta> {
    Some(Meta {
        version: 0,
        created_at: Some(now),
        updated_at: Some(now),
        labels: Default::default(),
    })
}

/// Plans a deploy: the batch to propose and the answer to give.
pub fn plan_deploy(
    view: &impl StoreView,
    req: &DeployStackRequest,
    pool: Ipv4Net,
    now: Timestamp,
) -> Result<(Vec<StoreAction>, DeployStackResponse), DeployError> {
    let spec = req.spec.as_ref().ok_or(DeployError::MissingSpec)?;
    validate(spec)?;
    let stack_id = spec.name.clone();
    let ipam_err = |source| DeployError::Ipam {
        stack: stack_id.clone(),
        source: Box::new(source),
    };
    let old_stack = view.get_stack(&stack_id);
    if old_stack.is_some_and(stack_removing) {
        return Err(DeployError::BeingRemoved { stack: stack_id });
    }
    if let Some(base) = req.base_spec_version {
        let current = old_stack.map_or(0, |s| s.spec_version);
        if current != base {
            return Err(DeployError::ConcurrentDeploy {
                stack: stack_id,
                base,
                current,
            });
        }
    }
    let selected = selected_services(spec, &req.services, req.no_deps)?;
    // Published ports that cannot be had stop the deploy before anything
    // starts. The host's sockets are read only when a port is published.
    let host_ports = if ipam::ports::publishes_any(spec, &selected) {
        ipam::ports::host_sockets()
    } else {
        Vec::new()
    };
    ipam::ports::check(view, spec, &selected, &host_ports).map_err(|source| DeployError::Port {
        stack: stack_id.clone(),
        source,
    })?;
    let spec_version = old_stack.map_or(0, |s| s.spec_version) + 1;
    let mut actions = Vec::new();
    let mut resp = DeployStackResponse {
        spec_version,
        ..Default::default()
    };

    let mut stack = old_stack.cloned().unwrap_or_else(|| Stack {
        id: stack_id.clone(),
        meta: new_meta(now),
        ..Default::default()
    });
    stack.spec = Some(spec.clone());
    stack.spec_version = spec_version;
    if let Some(m) = stack.meta.as_mut() {
        m.updated_at = Some(now);
    }
    actions.push(put(
        store_action::Object::Stack(stack.clone()),
        version(&stack.meta),
    ));

    // Networks: declared ones plus `default` when a service uses it.
    let mut wanted: BTreeMap<String, NetworkSpec> = spec
        .networks
        .iter()
        .map(|n| (n.name.clone(), n.clone()))
        .collect();
    for s in spec.services.iter().filter(|s| selected.contains(&s.name)) {
        for a in ipam::service_attachments(&stack_id, Some(spec), s) {
            wanted.entry(a.name.clone()).or_insert_with(|| NetworkSpec {
                name: a.name.clone(),
                driver: "bridge".to_string(),
                ..Default::default()
            });
        }
    }
    let mut used = ipam::used_subnets(view);
    let mut book = AddressBook::from_view(view);
    for (name, nspec) in &wanted {
        let id = ipam::network_id(&stack_id, name, Some(nspec));
        if view.get_network(&id).is_some() {
            continue;
        }
        if nspec.external {
            return Err(DeployError::MissingExternalNetwork {
                stack: stack_id.clone(),
                name: name.clone(),
                network: id,
            });
        }
        let (subnet, gateway) =
            ipam::allocate_subnet(pool, &id, Some(nspec), &used).map_err(ipam_err)?;
        used.push((format!("network {id}"), subnet));
        let (subnet_v6, gateway_v6) = if nspec.enable_ipv6 {
            let (s6, g6) = ipam::allocate_subnet_v6(&id, Some(nspec)).map_err(ipam_err)?;
            (s6.to_string(), g6.to_string())
        } else {
            (String::new(), String::new())
        };
        let net = Network {
            id: id.clone(),
            meta: new_meta(now),
            stack: stack_id.clone(),
            spec: Some(nspec.clone()),
            subnet: subnet.to_string(),
            gateway: gateway.to_string(),
            vni: 0,
            bridge: ipam::bridge_name(&id),
            subnet_v6,
            gateway_v6,
        };
        tracing::info!(network = %id, subnet = %net.subnet, subnet_v6 = %net.subnet_v6, "network allocated");
        book.add_network(&net);
        actions.push(put(store_action::Object::Network(net), 0));
    }

    // Pins of every selected service are reserved before any VIP is handed
    // out, so a VIP never takes a pinned address.
    for s in spec.services.iter().filter(|s| selected.contains(&s.name)) {
        let id = format!("{stack_id}_{}", s.name);
        for a in ipam::service_attachments(&stack_id, Some(spec), s) {
            if !a.ipv4_address.is_empty() {
                book.reserve_pin(&a.network_id, &id, 1, &a.ipv4_address)
                    .map_err(ipam_err)?;
            }
        }
    }

    let desired = if req.no_start {
        ServiceDesired::Created
    } else {
        ServiceDesired::Running
    };
    for s in &spec.services {
        if !selected.contains(&s.name) {
            continue;
        }
        let id = format!("{stack_id}_{}", s.name);
        let mut sspec = s.clone();
        if let Some(n) = req.scale.get(&s.name) {
            sspec.replicas = Some(*n);
        }
        let mut hash = spec_hash(&sspec);
        if req.force_recreate {
            hash = format!("{hash}-v{spec_version}");
        }
        let atts = ipam::service_attachments(&stack_id, Some(spec), &sspec);
        match view.get_service(&id) {
            None => {
                let mut svc = Service {
                    id: id.clone(),
                    meta: new_meta(now),
                    stack: stack_id.clone(),
                    spec: Some(sspec),
                    spec_hash: hash,
                    vips: Vec::new(),
                    spec_version,
                    desired: desired as i32,
                    slot_addresses: Vec::new(),
                    removed_slots: Vec::new(),
                };
                ipam::ensure_vips(&mut book, &mut svc, &atts).map_err(ipam_err)?;
                actions.push(put(store_action::Object::Service(svc), 0));
                resp.created.push(s.name.clone());
            }
            Some(old) => {
                let mut svc = old.clone();
                if req.no_recreate {
                    hash = old.spec_hash.clone();
                }
                // `up --no-start` creates what is missing; like Compose it
                // does not stop a service that already runs.
                let desired = if req.no_start && old.desired() == ServiceDesired::Running {
                    ServiceDesired::Running
                } else {
                    desired
                };
                let changed = old.spec_hash != hash
                    || old.spec.as_ref() != Some(&sspec)
                    || old.desired() != desired
                    || !old.removed_slots.is_empty()
                    || crate::orchestrator::service_removing(old);
                if !changed {
                    resp.unchanged.push(s.name.clone());
                    continue;
                }
                svc.spec = Some(sspec);
                svc.spec_hash = hash;
                svc.spec_version = spec_version;
                svc.desired = desired as i32;
                // Containers `rm` removed come back with the next deploy.
                svc.removed_slots.clear();
                if let Some(m) = svc.meta.as_mut() {
                    m.labels.remove(LABEL_REMOVING);
                    m.updated_at = Some(now);
                }
                ipam::ensure_vips(&mut book, &mut svc, &atts).map_err(ipam_err)?;
                actions.push(put(store_action::Object::Service(svc), version(&old.meta)));
                resp.updated.push(s.name.clone());
            }
        }
    }

    if req.remove_orphans {
        let names: BTreeSet<&str> = spec.services.iter().map(|s| s.name.as_str()).collect();
        for old in view.services_in_stack(&stack_id) {
            let name = old
                .spec
                .as_ref()
                .map(|s| s.name.clone())
                .unwrap_or_default();
            if names.contains(name.as_str()) || crate::orchestrator::service_removing(old) {
                continue;
            }
            let mut svc = old.clone();
            let m = svc.meta.get_or_insert_with(Meta::default);
            m.labels
                .insert(LABEL_REMOVING.to_string(), "true".to_string());
            m.updated_at = Some(now);
            actions.push(put(store_action::Object::Service(svc), version(&old.meta)));
            resp.removed.push(name);
        }
    }
    Ok((actions, resp))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orchestrator::fixtures::*;
    use flotilla_proto::v1::{DependencyCondition as Dc, NetworkAttachmentSpec, StoreSnapshot};

    fn stack_spec(services: Vec<ServiceSpec>) -> StackSpec {
        StackSpec {
            name: "s".into(),
            services,
            ..Default::default()
        }
    }

    fn req(spec: StackSpec) -> DeployStackRequest {
        DeployStackRequest {
            spec: Some(spec),
            ..Default::default()
        }
    }

    fn pool() -> Ipv4Net {
        ipam::parse_pool(ipam::DEFAULT_POOL).unwrap()
    }

    #[test]
    fn validation_table() {
        let pinned = |n: &str, r: u32| {
            let mut s = spec(n);
            s.replicas = Some(r);
            s.networks.push(NetworkAttachmentSpec {
                network: "default".into(),
                ipv4_address: "10.89.0.9".into(),
                ..Default::default()
            });
            s
        };
        let cases: Vec<(StackSpec, &str)> = vec![
            (
                stack_spec(vec![dep(spec("a"), "b", Dc::Started)]),
                "not a service of the stack",
            ),
            (
                stack_spec(vec![spec("b"), dep(spec("a"), "b", Dc::Healthy)]),
                "has no healthcheck",
            ),
            (
                stack_spec(vec![
                    dep(spec("a"), "b", Dc::Started),
                    dep(spec("b"), "a", Dc::Started),
                ]),
                "cycle",
            ),
            (stack_spec(vec![spec("a"), spec("a")]), "defined twice"),
            (stack_spec(vec![pinned("a", 2)]), "needs exactly one"),
            (
                StackSpec {
                    name: "Bad Name".into(),
                    ..Default::default()
                },
                "invalid",
            ),
            (
                stack_spec(vec![{
                    let mut s = spec("a");
                    s.networks.push(NetworkAttachmentSpec {
                        network: "nope".into(),
                        ..Default::default()
                    });
                    s
                }]),
                "does not define",
            ),
        ];
        for (spec, want) in cases {
            let err = validate(&spec).unwrap_err().to_string();
            assert!(err.contains(want), "{err} should contain {want}");
        }
        validate(&stack_spec(vec![
            with_health(spec("b")),
            dep(spec("a"), "b", Dc::Healthy),
        ]))
        .unwrap();
        validate(&stack_spec(vec![pinned("a", 1)])).unwrap();
    }

    #[test]
    fn a_deploy_based_on_an_older_version_is_refused() {
        let spec1 = stack_spec(vec![spec("db")]);
        let mut snap = StoreSnapshot::default();
        let mut r = req(spec1.clone());
        r.base_spec_version = Some(0);
        let (actions, _) = plan_deploy(&snap, &r, pool(), ts(1)).unwrap();
        for a in actions {
            if let Some(store_action::Object::Stack(o)) = a.object {
                snap.stacks.push(o);
            }
        }
        // A second deploy planned against version 0 lost the race.
        let err = plan_deploy(&snap, &r, pool(), ts(2)).unwrap_err();
        assert!(matches!(
            err,
            DeployError::ConcurrentDeploy {
                base: 0,
                current: 1,
                ..
            }
        ));
        assert!(err
            .to_string()
            .contains("another `up` for the same project"));
        r.base_spec_version = Some(1);
        assert!(plan_deploy(&snap, &r, pool(), ts(3)).is_ok());
        r.base_spec_version = None;
        assert!(plan_deploy(&snap, &r, pool(), ts(3)).is_ok());
    }

    #[test]
    fn up_no_start_leaves_a_running_service_running() {
        let spec1 = stack_spec(vec![spec("db")]);
        let mut snap = StoreSnapshot::default();
        let (actions, _) = plan_deploy(&snap, &req(spec1.clone()), pool(), ts(1)).unwrap();
        for a in actions {
            match a.object {
                Some(store_action::Object::Stack(o)) => snap.stacks.push(o),
                Some(store_action::Object::Service(o)) => snap.services.push(o),
                Some(store_action::Object::Network(o)) => snap.networks.push(o),
                _ => {}
            }
        }
        let mut r = req(spec1);
        r.no_start = true;
        let (actions, resp) = plan_deploy(&snap, &r, pool(), ts(2)).unwrap();
        assert_eq!(resp.unchanged, vec!["db"], "{actions:?}");
        assert!(actions
            .iter()
            .all(|a| !matches!(a.object, Some(store_action::Object::Service(_)))));
    }

    #[test]
    fn deploy_creates_then_leaves_unchanged_then_updates() {
        let spec1 = stack_spec(vec![spec("db"), dep(spec("web"), "db", Dc::Started)]);
        let mut snap = StoreSnapshot::default();
        let (actions, resp) = plan_deploy(&snap, &req(spec1.clone()), pool(), ts(1)).unwrap();
        assert_eq!(resp.created, vec!["db", "web"]);
        assert_eq!(
            describe(&actions),
            vec![
                "put stack s",
                "put network s_default",
                "put service s_db",
                "put service s_web"
            ]
        );
        for a in actions {
            match a.object.unwrap() {
                store_action::Object::Stack(mut o) => {
                    o.meta.as_mut().unwrap().version = 1;
                    snap.stacks.push(o)
                }
                store_action::Object::Network(o) => {
                    assert_eq!(o.subnet, "10.89.0.0/24");
                    assert_eq!(o.gateway, "10.89.0.1");
                    assert_eq!(o.bridge.len(), 15);
                    snap.networks.push(o)
                }
                store_action::Object::Service(mut o) => {
                    assert_eq!(o.vips.len(), 1);
                    o.meta.as_mut().unwrap().version = 1;
                    snap.services.push(o)
                }
                _ => unreachable!(),
            }
        }
        let (actions, resp) = plan_deploy(&snap, &req(spec1.clone()), pool(), ts(2)).unwrap();
        assert_eq!(resp.unchanged, vec!["db", "web"]);
        assert_eq!(resp.spec_version, 2);
        assert_eq!(describe(&actions), vec!["put stack s"]);

        // Scale one service, drop the other with remove_orphans.
        let mut r = req(stack_spec(vec![
            dep(spec("web"), "db", Dc::Started),
            spec("db"),
        ]));
        r.spec.as_mut().unwrap().services.remove(0);
        r.scale.insert("db".into(), 3);
        r.remove_orphans = true;
        let (actions, resp) = plan_deploy(&snap, &r, pool(), ts(3)).unwrap();
        assert_eq!(resp.updated, vec!["db"]);
        assert_eq!(resp.removed, vec!["web"]);
        let web = actions
            .iter()
            .find_map(|a| match &a.object {
                Some(store_action::Object::Service(s)) if s.id == "s_web" => Some(s),
                _ => None,
            })
            .unwrap();
        assert!(crate::orchestrator::service_removing(web));
        assert!(actions.iter().all(|a| a.expected_version <= 1));
    }

    #[test]
    fn selection_follows_dependencies() {
        let s = stack_spec(vec![
            spec("db"),
            dep(spec("api"), "db", Dc::Started),
            dep(spec("web"), "api", Dc::Started),
            spec("other"),
        ]);
        let sel = selected_services(&s, &["web".to_string()], false).unwrap();
        assert_eq!(
            sel.into_iter().collect::<Vec<_>>(),
            vec!["api", "db", "web"]
        );
        let sel = selected_services(&s, &["web".to_string()], true).unwrap();
        assert_eq!(sel.into_iter().collect::<Vec<_>>(), vec!["web"]);
        assert!(selected_services(&s, &["nope".to_string()], false).is_err());
    }

    #[test]
    fn pin_outside_the_subnet_is_refused() {
        let mut s = spec("a");
        s.networks.push(NetworkAttachmentSpec {
            network: "default".into(),
            ipv4_address: "192.168.77.5".into(),
            ..Default::default()
        });
        let err = plan_deploy(
            &StoreSnapshot::default(),
            &req(stack_spec(vec![s])),
            pool(),
            ts(1),
        )
        .unwrap_err();
        assert!(err.to_string().contains("outside"), "{err}");
    }
}
