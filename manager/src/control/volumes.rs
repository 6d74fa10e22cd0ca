//! Volume removal that follows container removal (`rm -v`, `run --rm`,
//! `down -v`): once the tasks are gone from the store (their nodes removed
//! the containers), the manager asks each node to remove the volumes. The
//! node computes the volume names by its own rules and keeps any volume a
//! container there still mounts.
//!
//! Decides only *which* volumes (from the stack and the tasks it removed);
//! never touches a node's files itself.

use super::forward;
use crate::raft::StoreHandle;
use flotilla_proto::v1::{self as pb, node_agent_client::NodeAgentClient, MountType};
use std::collections::BTreeMap;
use tonic::Status;

/// The anonymous volumes of a task: its `volumes:` entries without a source.
pub(super) fn anonymous_of(t: &pb::Task) -> Vec<pb::AnonymousVolume> {
    t.spec
        .iter()
        .flat_map(|s| s.mounts.iter())
        .filter(|m| m.r#type == MountType::Volume as i32 && m.source.is_empty())
        .map(|m| pb::AnonymousVolume {
            service: t.service_name.clone(),
            slot: t.slot,
            target: m.target.clone(),
        })
        .collect()
}

/// Sends each node its request (node id → request; empty id: every Ready
/// node); errors name the node and the volumes that were kept.
pub(super) async fn remove_on_nodes(
    store: &StoreHandle,
    by_node: BTreeMap<String, pb::RemoveVolumesRequest>,
) -> Result<Vec<String>, Status> {
    let mut removed = Vec::new();
    let mut errors = Vec::new();
    for (node, req) in by_node {
        if req.named.is_empty() && req.anonymous.is_empty() && !req.all_anonymous {
            continue;
        }
        for target in forward::targets(store, &node)? {
            let ch = match flotilla_proto::transport::connect(&target.addr).await {
                Ok(ch) => ch,
                Err(e) => {
                    errors.push(format!("node {}: {e}", target.node_id));
                    continue;
                }
            };
            match NodeAgentClient::new(ch).remove_volumes(req.clone()).await {
                Ok(r) => {
                    let r = r.into_inner();
                    removed.extend(r.removed);
                    errors.extend(
                        r.errors
                            .into_iter()
                            .map(|e| format!("node {}: volume {e}", target.node_id)),
                    );
                }
                Err(e) => errors.push(format!("node {}: {}", target.node_id, e.message())),
            }
        }
    }
    if errors.is_empty() {
        Ok(removed)
    } else {
        Err(Status::failed_precondition(format!(
            "some volumes were not removed: {}",
            errors.join("; ")
        )))
    }
}
