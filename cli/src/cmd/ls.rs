//! `flotilla ls`: the stacks the manager knows.

use crate::client;
use crate::opts::Global;
use crate::render;
use anyhow::Result;
use flotilla_proto::v1 as pb;

pub async fn run(g: &Global) -> Result<i32> {
    let mut ctl = client::connect(g).await?;
    let resp = ctl
        .list_stacks(pb::ListStacksRequest {})
        .await
        .map_err(|s| client::status_err("listing stacks", s))?
        .into_inner();
    let rows: Vec<Vec<String>> = resp
        .stacks
        .iter()
        .map(|s| {
            let stack = s.stack.clone().unwrap_or_default();
            let spec = stack.spec.unwrap_or_default();
            vec![
                stack.id,
                format!("running({})", s.tasks_running),
                spec.compose_files.join(","),
            ]
        })
        .collect();
    render::table(&["NAME", "STATUS", "CONFIG FILES"], &rows);
    Ok(0)
}
