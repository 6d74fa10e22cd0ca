//! `flotilla daemon status|stop`.

use crate::client;
use crate::opts::{DaemonCmd, Global};
use anyhow::Result;
use flotilla_proto::v1 as pb;
use std::time::{Duration, Instant};

pub async fn run(g: &Global, c: &DaemonCmd) -> Result<i32> {
    match c {
        DaemonCmd::Status => {
            let Ok(mut ctl) = client::connect(g).await else {
                println!("flotilla daemon: not running ({})", g.host);
                return Ok(3);
            };
            let info = ctl
                .info(pb::InfoRequest {})
                .await
                .map_err(|s| client::status_err("asking the daemon", s))?
                .into_inner();
            println!("flotilla daemon: running ({})", g.host);
            println!("  version:     {}", info.version);
            println!("  pid:         {}", info.pid);
            println!("  node id:     {}", info.node_id);
            println!(
                "  raft id:     {:x} (leader: {})",
                info.raft_id, info.is_leader
            );
            println!("  applied:     {} (term {})", info.applied_index, info.term);
            println!("  state dir:   {}", info.state_dir);
            println!("  stacks:      {}  tasks: {}", info.stacks, info.tasks);
            Ok(0)
        }
        DaemonCmd::Stop => {
            let sock = client::require_local(g)?;
            let Ok(mut ctl) = client::connect(g).await else {
                println!("flotilla daemon: not running");
                return Ok(0);
            };
            let pid = ctl
                .info(pb::InfoRequest {})
                .await
                .map(|r| r.into_inner().pid)
                .unwrap_or(0);
            ctl.shutdown(pb::ShutdownRequest {})
                .await
                .map_err(|s| client::status_err("stopping the daemon", s))?;
            // Wait for the process to go, so a following start gets the lock.
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                let alive = pid > 0 && std::path::Path::new(&format!("/proc/{pid}")).exists();
                if !alive && !sock.exists() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            println!("flotilla daemon: stopped (containers keep running)");
            Ok(0)
        }
    }
}
