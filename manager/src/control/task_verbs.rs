//! `rm` and `run`: changes to a stack's tasks that are not a service's
//! desired state — removing stopped task containers, and one-off tasks with
//! a service's configuration. Written through Raft like every change to what
//! should run.
//!
//! Must never touch another stack's tasks.

use super::ControlApi;
use flotilla_proto::v1 as pb;
use tonic::Status;

impl ControlApi {
    pub(super) async fn remove_service_tasks_impl(
        &self,
        _req: pb::RemoveServiceTasksRequest,
    ) -> Result<pb::RemoveServiceTasksResponse, Status> {
        Err(Status::unimplemented("rm is not built yet"))
    }

    pub(super) async fn run_task_impl(
        &self,
        _req: pb::RunTaskRequest,
    ) -> Result<pb::RunTaskResponse, Status> {
        Err(Status::unimplemented("run is not built yet"))
    }
}
