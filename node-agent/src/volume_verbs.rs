//! `RemoveVolumes`: the node-local volumes of a stack whose containers are
//! gone (`rm -v`, `run --rm`, `down -v`). The manager decides which (it
//! relays the request once the containers' tasks are removed); the names
//! follow the same rules `tasks::resolve_mounts` creates them by, so they
//! are computed here, next to those rules.
//!
//! Never removes a volume a container on this node still mounts.

use crate::executor::LABEL_STACK;
use crate::node_service::NodeService;
use crate::tasks::volume_name;
use flotilla_proto::v1 as pb;
use flotilla_runtime::volume::{self, VolumeStore};
use std::collections::BTreeSet;
use tonic::Status;

/// The label `resolve_mounts` puts on anonymous volumes.
pub const LABEL_ANONYMOUS: &str = "com.docker.volume.anonymous";

/// The name of a slot's anonymous volume for `target` (the seed
/// `tasks::resolve_mounts` uses).
pub fn anonymous_volume_name(stack: &str, service: &str, slot: u32, target: &str) -> String {
    volume::anonymous_name(&format!("{stack}/{service}/{slot}/{target}"))
}

pub async fn remove(
    svc: &NodeService,
    req: pb::RemoveVolumesRequest,
) -> Result<pb::RemoveVolumesResponse, Status> {
    if req.stack.is_empty() {
        return Err(Status::invalid_argument(
            "RemoveVolumesRequest.stack is empty",
        ));
    }
    let root = svc.volumes_root.clone();
    let rt = svc.runtime.clone();
    tokio::task::spawn_blocking(move || {
        let store = VolumeStore::open(&root)
            .map_err(|e| Status::internal(format!("opening the volume store: {e}")))?;
        let mut names: BTreeSet<String> = BTreeSet::new();
        for n in &req.named {
            names.insert(volume_name(&req.stack, n));
        }
        for a in &req.anonymous {
            names.insert(anonymous_volume_name(
                &req.stack, &a.service, a.slot, &a.target,
            ));
        }
        if req.all_anonymous {
            let all = store
                .list()
                .map_err(|e| Status::internal(format!("listing volumes: {e}")))?;
            for v in all {
                let ours = v.labels.get(LABEL_STACK) == Some(&req.stack);
                if ours && (v.anonymous || v.labels.contains_key(LABEL_ANONYMOUS)) {
                    names.insert(v.name);
                }
            }
        }
        let mut out = pb::RemoveVolumesResponse::default();
        for name in names {
            let vol = match store.get(&name) {
                Ok(Some(v)) => v,
                Ok(None) => continue,
                Err(e) => {
                    out.errors.push(format!("{name}: {e}"));
                    continue;
                }
            };
            match rt.volume_users(&vol.path) {
                Ok(users) if !users.is_empty() => {
                    out.errors.push(format!(
                        "{name}: in use by container(s) {}",
                        users.join(", ")
                    ));
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    out.errors.push(format!("{name}: {e}"));
                    continue;
                }
            }
            match store.remove(&name) {
                Ok(()) | Err(volume::VolumeError::NotFound { .. }) => out.removed.push(name),
                Err(e) => out.errors.push(format!("{name}: {e}")),
            }
        }
        Ok(out)
    })
    .await
    .map_err(|e| Status::internal(format!("volume worker failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymous_names_match_the_mount_rule() {
        assert_eq!(
            anonymous_volume_name("s", "svc", 1, "/data"),
            volume::anonymous_name("s/svc/1//data")
        );
    }
}
