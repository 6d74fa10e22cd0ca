//! Standalone networks (`network create|rm|prune`): networks that belong to
//! no stack, which stacks join as `external: true`. Written through Raft;
//! addresses come from IPAM like a stack's networks.
//!
//! Must never remove a network a task is attached to.

use super::ControlApi;
use flotilla_proto::v1 as pb;
use tonic::Status;

impl ControlApi {
    pub(super) async fn create_network_impl(
        &self,
        _req: pb::CreateNetworkRequest,
    ) -> Result<pb::CreateNetworkResponse, Status> {
        Err(Status::unimplemented("network create is not built yet"))
    }

    pub(super) async fn remove_network_impl(
        &self,
        _req: pb::RemoveNetworkRequest,
    ) -> Result<pb::RemoveNetworkResponse, Status> {
        Err(Status::unimplemented("network rm is not built yet"))
    }

    pub(super) async fn prune_networks_impl(
        &self,
        _req: pb::PruneNetworksRequest,
    ) -> Result<pb::PruneNetworksResponse, Status> {
        Err(Status::unimplemented("network prune is not built yet"))
    }
}
