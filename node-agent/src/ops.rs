//! Per-container operations users ask for through the manager: interactive
//! exec, `top`, `stats`, `cp`. Each finds the task's container on this node
//! and calls the runtime.
//!
//! Must never change what should run (no start, stop or restart here).

use crate::node_service::{NodeService, OutStream};
use flotilla_proto::v1 as pb;
use tonic::{Status, Streaming};

pub async fn exec_stream(
    _svc: &NodeService,
    _input: Streaming<pb::ExecInput>,
) -> Result<OutStream<pb::ExecOutput>, Status> {
    Err(Status::unimplemented("interactive exec is not built yet"))
}

pub async fn top(_svc: &NodeService, _req: pb::TopRequest) -> Result<pb::TopResponse, Status> {
    Err(Status::unimplemented("top is not built yet"))
}

pub async fn stats(
    _svc: &NodeService,
    _req: pb::StatsRequest,
) -> Result<pb::StatsResponse, Status> {
    Err(Status::unimplemented("stats is not built yet"))
}

pub async fn copy_from(
    _svc: &NodeService,
    _req: pb::CopyRequest,
) -> Result<OutStream<pb::CopyChunk>, Status> {
    Err(Status::unimplemented("cp is not built yet"))
}

pub async fn copy_to(
    _svc: &NodeService,
    _input: Streaming<pb::CopyChunk>,
) -> Result<pb::CopyResponse, Status> {
    Err(Status::unimplemented("cp is not built yet"))
}
