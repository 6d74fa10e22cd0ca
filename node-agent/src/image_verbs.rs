//! Registry and image-store verbs on this node: pull, push, save, tag,
//! inspect, prune. Thin: the work is the runtime's image store.
//!
//! Must never remove an image a container on this node uses.

use crate::node_service::{NodeService, OutStream};
use flotilla_proto::v1 as pb;
use tonic::Status;

pub async fn pull(
    _svc: &NodeService,
    _req: pb::PullImageRequest,
) -> Result<OutStream<pb::ImageProgress>, Status> {
    Err(Status::unimplemented("pull is not built yet"))
}

pub async fn push(
    _svc: &NodeService,
    _req: pb::PushImageRequest,
) -> Result<OutStream<pb::ImageProgress>, Status> {
    Err(Status::unimplemented("push is not built yet"))
}

pub async fn save(
    _svc: &NodeService,
    _req: pb::SaveImageRequest,
) -> Result<OutStream<pb::ImageArchiveChunk>, Status> {
    Err(Status::unimplemented("save is not built yet"))
}

pub async fn tag(
    _svc: &NodeService,
    _req: pb::TagImageRequest,
) -> Result<pb::TagImageResponse, Status> {
    Err(Status::unimplemented("tag is not built yet"))
}

pub async fn inspect(
    _svc: &NodeService,
    _req: pb::InspectImageRequest,
) -> Result<pb::InspectImageResponse, Status> {
    Err(Status::unimplemented("inspect is not built yet"))
}

pub async fn prune(
    _svc: &NodeService,
    _req: pb::PruneImagesRequest,
) -> Result<pb::PruneImagesResponse, Status> {
    Err(Status::unimplemented("prune is not built yet"))
}
