//! Standalone networks (`network create|rm|prune`): networks that belong to
//! no stack, which stacks join as `external: true`. Written through Raft;
//! addresses come from IPAM like a stack's networks.
//!
//! Must never remove a network a task or a service is attached to, nor a
//! network that belongs to a stack (`down` removes those).

use super::ControlApi;
use crate::ipam::{self, IpamError};
use crate::orchestrator::StoreView;
use flotilla_proto::v1 as pb;
use flotilla_proto::v1::store_action;
use ipnet::Ipv4Net;
use std::collections::BTreeSet;
use thiserror::Error;
use tonic::Status;

/// Why a standalone network could not be created or removed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum NetworkError {
    #[error("network create: a network needs a name")]
    MissingName,
    #[error("network create: name {0:?} is invalid: use letters, digits, '_', '.' and '-', starting with a letter or digit")]
    BadName(String),
    #[error(
        "network create: driver {driver:?} of network {network} is not supported (only bridge)"
    )]
    BadDriver { network: String, driver: String },
    #[error("network with name {0} already exists")]
    Exists(String),
    #[error("network {0} not found")]
    NotFound(String),
    #[error("network {network} belongs to stack {stack}; it is removed by `down` of that stack")]
    OwnedByStack { network: String, stack: String },
    #[error("network {network} is in use by {user}")]
    InUse { network: String, user: String },
    #[error("network {network}: ip_range {range:?} is not an IPv4 CIDR inside subnet {subnet}")]
    BadRange {
        network: String,
        range: String,
        subnet: String,
    },
    #[error(transparent)]
    Ipam(#[from] IpamError),
}

impl From<NetworkError> for Status {
    fn from(e: NetworkError) -> Status {
        match e {
            NetworkError::NotFound(_) => Status::not_found(e.to_string()),
            NetworkError::Exists(_) => Status::already_exists(e.to_string()),
            NetworkError::InUse { .. } | NetworkError::OwnedByStack { .. } => {
                Status::failed_precondition(e.to_string())
            }
            _ => Status::invalid_argument(e.to_string()),
        }
    }
}

fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn put(object: store_action::Object) -> pb::StoreAction {
    pb::StoreAction {
        kind: store_action::Kind::Put as i32,
        object: Some(object),
        expected_version: 0,
    }
}

fn delete(n: &pb::Network) -> pb::StoreAction {
    pb::StoreAction {
        kind: store_action::Kind::Delete as i32,
        object: Some(store_action::Object::Network(n.clone())),
        expected_version: 0,
    }
}

/// Plans `network create`: the new network, with its subnet and gateway
/// (the spec's `ipam` or the next free /24 of `pool`).
pub fn plan_create(
    view: &impl StoreView,
    spec: &pb::NetworkSpec,
    pool: Ipv4Net,
    now: pb::Timestamp,
) -> Result<pb::Network, NetworkError> {
    let name = spec.name.clone();
    if name.is_empty() {
        return Err(NetworkError::MissingName);
    }
    if !valid_name(&name) {
        return Err(NetworkError::BadName(name));
    }
    if !spec.driver.is_empty() && spec.driver != "bridge" {
        return Err(NetworkError::BadDriver {
            network: name,
            driver: spec.driver.clone(),
        });
    }
    if view.get_network(&name).is_some() {
        return Err(NetworkError::Exists(name));
    }
    let mut spec = spec.clone();
    spec.external = false;
    spec.external_name.clear();
    if spec.driver.is_empty() {
        spec.driver = "bridge".to_string();
    }
    let used = ipam::used_subnets(view);
    let (subnet, gateway) = ipam::allocate_subnet(pool, &name, Some(&spec), &used)?;
    for p in spec
        .ipam
        .iter()
        .filter(|p| !p.ip_range.is_empty() && !p.ip_range.contains(':'))
    {
        let ok = p
            .ip_range
            .parse::<Ipv4Net>()
            .is_ok_and(|r| subnet.contains(&r.network()) && subnet.contains(&r.broadcast()));
        if !ok {
            return Err(NetworkError::BadRange {
                network: name,
                range: p.ip_range.clone(),
                subnet: subnet.to_string(),
            });
        }
    }
    let (subnet_v6, gateway_v6) = if spec.enable_ipv6 {
        let (s6, g6) = ipam::allocate_subnet_v6(&name, Some(&spec))?;
        (s6.to_string(), g6.to_string())
    } else {
        (String::new(), String::new())
    };
    Ok(pb::Network {
        id: name.clone(),
        meta: Some(pb::Meta {
            version: 0,
            created_at: Some(now),
            updated_at: Some(now),
            labels: Default::default(),
        }),
        stack: String::new(),
        spec: Some(spec),
        subnet: subnet.to_string(),
        gateway: gateway.to_string(),
        vni: 0,
        bridge: ipam::bridge_name(&name),
        subnet_v6,
        gateway_v6,
    })
}

/// Who uses network `id`: services attached to it (through their stack's
/// file) and tasks still attached to it, as "service S of stack T".
pub fn users(view: &impl StoreView, id: &str) -> Vec<String> {
    let mut out = BTreeSet::new();
    for s in view.all_services() {
        let Some(spec) = s.spec.as_ref() else {
            continue;
        };
        let stack_spec = view.get_stack(&s.stack).and_then(|st| st.spec.as_ref());
        if ipam::service_attachments(&s.stack, stack_spec, spec)
            .iter()
            .any(|a| a.network_id == id)
        {
            out.insert(format!("service {} of stack {}", spec.name, s.stack));
        }
    }
    for t in view.all_tasks() {
        if t.networks.iter().any(|a| a.network_id == id) {
            out.insert(format!("service {} of stack {}", t.service_name, t.stack));
        }
    }
    out.into_iter().collect()
}

/// Plans `network rm NAME...`: refused as a whole when any of them is
/// missing, belongs to a stack or is in use.
pub fn plan_remove(
    view: &impl StoreView,
    names: &[String],
) -> Result<(Vec<pb::StoreAction>, Vec<String>), NetworkError> {
    let mut actions = Vec::new();
    let mut removed = Vec::new();
    for name in names {
        let n = view
            .get_network(name)
            .ok_or_else(|| NetworkError::NotFound(name.clone()))?;
        if !n.stack.is_empty() {
            return Err(NetworkError::OwnedByStack {
                network: name.clone(),
                stack: n.stack.clone(),
            });
        }
        let u = users(view, name);
        if !u.is_empty() {
            return Err(NetworkError::InUse {
                network: name.clone(),
                user: u.join(", "),
            });
        }
        if !removed.contains(name) {
            actions.push(delete(n));
            removed.push(name.clone());
        }
    }
    Ok((actions, removed))
}

/// Plans `network prune`: every standalone network nothing uses.
pub fn plan_prune(view: &impl StoreView) -> (Vec<pb::StoreAction>, Vec<String>) {
    let mut actions = Vec::new();
    let mut removed = Vec::new();
    for n in view.all_networks() {
        if n.stack.is_empty() && users(view, &n.id).is_empty() {
            actions.push(delete(n));
            removed.push(n.id.clone());
        }
    }
    removed.sort();
    (actions, removed)
}

impl ControlApi {
    pub(super) async fn create_network_impl(
        &self,
        req: pb::CreateNetworkRequest,
    ) -> Result<pb::CreateNetworkResponse, Status> {
        let spec = req.spec.unwrap_or_default();
        let pool = self.inner.pool;
        let network = self
            .write("network-create", |s| {
                let n = plan_create(s, &spec, pool, pb::Timestamp::now())?;
                Ok((vec![put(store_action::Object::Network(n.clone()))], n))
            })
            .await?;
        tracing::info!(network = %network.id, subnet = %network.subnet, "standalone network created");
        Ok(pb::CreateNetworkResponse {
            network: Some(network),
        })
    }

    pub(super) async fn remove_network_impl(
        &self,
        req: pb::RemoveNetworkRequest,
    ) -> Result<pb::RemoveNetworkResponse, Status> {
        let removed = self
            .write("network-rm", |s| Ok(plan_remove(s, &req.names)?))
            .await?;
        tracing::info!(?removed, "standalone networks removed");
        Ok(pb::RemoveNetworkResponse { removed })
    }

    pub(super) async fn prune_networks_impl(
        &self,
        _req: pb::PruneNetworksRequest,
    ) -> Result<pb::PruneNetworksResponse, Status> {
        let removed = self.write("network-prune", |s| Ok(plan_prune(s))).await?;
        tracing::info!(?removed, "unused standalone networks pruned");
        Ok(pb::PruneNetworksResponse { removed })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::deploy::plan_deploy;
    use flotilla_proto::v1::{DeployStackRequest, StoreSnapshot};

    fn pool() -> Ipv4Net {
        ipam::parse_pool(ipam::DEFAULT_POOL).unwrap()
    }

    fn ts() -> pb::Timestamp {
        pb::Timestamp { unix_nanos: 1 }
    }

    fn apply(snap: &mut StoreSnapshot, actions: Vec<pb::StoreAction>) {
        for a in actions {
            let del = a.kind == store_action::Kind::Delete as i32;
            match a.object.unwrap() {
                store_action::Object::Network(n) => {
                    snap.networks.retain(|o| o.id != n.id);
                    if !del {
                        snap.networks.push(n);
                    }
                }
                store_action::Object::Service(s) => {
                    snap.services.retain(|o| o.id != s.id);
                    if !del {
                        snap.services.push(s);
                    }
                }
                store_action::Object::Stack(s) => {
                    snap.stacks.retain(|o| o.id != s.id);
                    if !del {
                        snap.stacks.push(s);
                    }
                }
                _ => {}
            }
        }
    }

    fn net_spec(name: &str) -> pb::NetworkSpec {
        pb::NetworkSpec {
            name: name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn create_allocates_and_refuses_duplicates_and_bad_input() {
        let mut snap = StoreSnapshot::default();
        let n = plan_create(&snap, &net_spec("shared"), pool(), ts()).unwrap();
        assert_eq!(n.stack, "");
        assert_eq!(n.subnet, "10.89.0.0/24");
        assert_eq!(n.gateway, "10.89.0.1");
        assert_eq!(n.bridge, ipam::bridge_name("shared"));
        snap.networks.push(n);
        let err = plan_create(&snap, &net_spec("shared"), pool(), ts()).unwrap_err();
        assert_eq!(err.to_string(), "network with name shared already exists");
        // The next one takes the next /24.
        assert_eq!(
            plan_create(&snap, &net_spec("other"), pool(), ts())
                .unwrap()
                .subnet,
            "10.89.1.0/24"
        );
        let mut s = net_spec("pinned");
        s.ipam.push(pb::IpamPool {
            subnet: "172.30.5.0/24".into(),
            gateway: "172.30.5.254".into(),
            ip_range: "172.30.5.128/25".into(),
            ..Default::default()
        });
        let n = plan_create(&snap, &s, pool(), ts()).unwrap();
        assert_eq!(
            (n.subnet.as_str(), n.gateway.as_str()),
            ("172.30.5.0/24", "172.30.5.254")
        );
        s.ipam[0].ip_range = "172.31.0.0/25".into();
        assert!(matches!(
            plan_create(&snap, &s, pool(), ts()),
            Err(NetworkError::BadRange { .. })
        ));
        assert!(matches!(
            plan_create(&snap, &net_spec("-x"), pool(), ts()),
            Err(NetworkError::BadName(_))
        ));
        let mut o = net_spec("ov");
        o.driver = "overlay".into();
        assert!(matches!(
            plan_create(&snap, &o, pool(), ts()),
            Err(NetworkError::BadDriver { .. })
        ));
    }

    #[test]
    fn rm_refuses_a_used_network_and_prune_keeps_it() {
        let mut snap = StoreSnapshot::default();
        snap.networks
            .push(plan_create(&snap, &net_spec("shared"), pool(), ts()).unwrap());
        snap.networks
            .push(plan_create(&snap, &net_spec("idle"), pool(), ts()).unwrap());
        // A stack joins "shared" as an external network.
        let stack = pb::StackSpec {
            name: "app".into(),
            services: vec![pb::ServiceSpec {
                name: "web".into(),
                image: "x".into(),
                networks: vec![pb::NetworkAttachmentSpec {
                    network: "front".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            networks: vec![pb::NetworkSpec {
                name: "front".into(),
                external: true,
                external_name: "shared".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let req = DeployStackRequest {
            spec: Some(stack),
            ..Default::default()
        };
        let (actions, _) = plan_deploy(&snap, &req, pool(), ts()).unwrap();
        // No network of its own is made for an external one.
        assert!(!actions
            .iter()
            .any(|a| matches!(&a.object, Some(store_action::Object::Network(_)))));
        apply(&mut snap, actions);
        let web = snap.services.iter().find(|s| s.id == "app_web").unwrap();
        assert_eq!(web.vips[0].network_id, "shared");

        let err = plan_remove(&snap, &["shared".to_string()]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "network shared is in use by service web of stack app"
        );
        assert!(matches!(
            plan_remove(&snap, &["nope".to_string()]),
            Err(NetworkError::NotFound(_))
        ));
        let (actions, removed) = plan_prune(&snap);
        assert_eq!(removed, vec!["idle"]);
        apply(&mut snap, actions);
        assert_eq!(snap.networks.len(), 1);

        // A stack's own network is not for `network rm`.
        snap.networks.push(pb::Network {
            id: "app_default".into(),
            stack: "app".into(),
            ..Default::default()
        });
        assert!(matches!(
            plan_remove(&snap, &["app_default".to_string()]),
            Err(NetworkError::OwnedByStack { .. })
        ));
        snap.services.clear();
        let (_, removed) = plan_remove(&snap, &["shared".to_string()]).unwrap();
        assert_eq!(removed, vec!["shared"]);
    }

    #[test]
    fn deploy_names_the_missing_external_network() {
        let stack = pb::StackSpec {
            name: "app".into(),
            services: vec![pb::ServiceSpec {
                name: "web".into(),
                image: "x".into(),
                networks: vec![pb::NetworkAttachmentSpec {
                    network: "front".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            networks: vec![pb::NetworkSpec {
                name: "front".into(),
                external: true,
                external_name: "shared".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let req = DeployStackRequest {
            spec: Some(stack),
            ..Default::default()
        };
        let err = plan_deploy(&StoreSnapshot::default(), &req, pool(), ts())
            .unwrap_err()
            .to_string();
        assert!(err.contains("network front"), "{err}");
        assert!(err.contains("shared"), "{err}");
        assert!(err.contains("does not exist"), "{err}");
    }
}
