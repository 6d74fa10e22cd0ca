//! Per-container operations users ask for through the manager: interactive
//! exec, `top`, `stats`, `cp`. Each finds the task's container on this node
//! and calls the runtime.
//!
//! Must never change what should run (no start, stop or restart here).

use crate::node_service::{NodeService, OutStream};
use crate::process::container_id;
use flotilla_proto::v1 as pb;
use flotilla_runtime::container::pty::{set_window_size, ConsoleSocket};
use flotilla_runtime::container::{ContainerError, CopyDirection, ExecError, ExecSpec, Runtime};
use std::os::fd::AsFd;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Status, Streaming};

/// Size of the chunks a copy is streamed in.
const CHUNK: usize = 256 * 1024;

/// The task ids of the request that this node knows.
fn known(svc: &NodeService, ids: &[String]) -> Result<Vec<String>, Status> {
    let tasks = svc
        .tasks
        .lock()
        .map_err(|_| Status::internal("the agent's task table is poisoned"))?;
    let mut out = Vec::new();
    for id in ids {
        if !tasks.contains_key(id) {
            return Err(Status::not_found(format!("task {id} is not on this node")));
        }
        out.push(id.clone());
    }
    Ok(out)
}

fn error_text(e: &ContainerError) -> String {
    e.to_string()
}

/// Runs `f` for each task on a blocking thread (it reads /proc and cgroup
/// files), keeping per-task failures as data: one exited container must not
/// hide the others' answers.
async fn per_task<T: Send + 'static>(
    svc: &NodeService,
    ids: &[String],
    f: fn(&Runtime, &str, &str) -> T,
) -> Result<Vec<T>, Status> {
    let ids = known(svc, ids)?;
    let rt: Arc<Runtime> = svc.runtime.clone();
    tokio::task::spawn_blocking(move || {
        ids.iter()
            .map(|id| f(&rt, id, &container_id(id)))
            .collect::<Vec<T>>()
    })
    .await
    .map_err(|e| Status::internal(format!("container operation worker failed: {e}")))
}

/// What the client sends after the request, for the writer thread.
enum Input {
    Data(Vec<u8>),
    Resize(u16, u16),
    Eof,
}

fn size_of(t: &pb::TerminalSize) -> (u16, u16) {
    (
        u16::try_from(t.rows).unwrap_or(u16::MAX),
        u16::try_from(t.cols).unwrap_or(u16::MAX),
    )
}

/// Interactive exec: the first message carries the request; stdin, resizes
/// and EOF follow. With `tty` the process gets a pty made in the container
/// and its output comes back as stdout only; without, stdout and stderr are
/// pipes. The last message carries the exit code.
pub async fn exec_stream(
    svc: &NodeService,
    mut input: Streaming<pb::ExecInput>,
) -> Result<OutStream<pb::ExecOutput>, Status> {
    let first = match input.next().await {
        Some(Ok(m)) => m,
        Some(Err(e)) => return Err(e),
        None => {
            return Err(Status::invalid_argument(
                "exec stream closed before its request",
            ))
        }
    };
    let Some(req) = first.start else {
        return Err(Status::invalid_argument(
            "the first message of an exec stream must carry the request",
        ));
    };
    known(svc, std::slice::from_ref(&req.task_id))?;
    if req.args.is_empty() {
        return Err(Status::invalid_argument("exec needs a command"));
    }
    let spec = ExecSpec {
        args: req.args.clone(),
        env: req.env.clone(),
        cwd: (!req.workdir.is_empty()).then(|| req.workdir.clone()),
        timeout: None,
        user: (!req.user.is_empty()).then(|| req.user.clone()),
    };
    let cid = container_id(&req.task_id);
    let rt = svc.runtime.clone();
    let task_id = req.task_id.clone();
    let (tx, rx) = mpsc::channel::<Result<pb::ExecOutput, Status>>(32);
    let (in_tx, in_rx) = std::sync::mpsc::channel::<Input>();
    if req.tty {
        let sock = rt.config().run_dir.join(format!(
            "exec-{}-{}.tty",
            std::process::id(),
            EXEC_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let size = req.size.as_ref().map(size_of);
        let (child, master) = tokio::task::spawn_blocking(move || {
            let console = ConsoleSocket::bind(&sock)
                .map_err(|e| Status::internal(format!("console socket {}: {e}", sock.display())))?;
            let mut child = rt
                .exec_spawn_tty(&cid, &spec, console.path())
                .map_err(exec_status)?;
            let got = console.receive_master(Duration::from_secs(30), || {
                child.try_wait().map(|s| s.is_some()).unwrap_or(true)
            });
            match got {
                Ok(m) => Ok((child, m)),
                Err(e) => {
                    let _ = child.kill();
                    let out = child.wait_with_output();
                    let msg = out
                        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string())
                        .unwrap_or_default();
                    Err(Status::failed_precondition(if msg.is_empty() {
                        format!("starting the exec: {e}")
                    } else {
                        msg
                    }))
                }
            }
        })
        .await
        .map_err(|e| Status::internal(format!("exec worker failed: {e}")))??;
        if let Some((rows, cols)) = size {
            let _ = set_window_size(master.as_fd(), rows, cols);
        }
        let writer = std::fs::File::from(
            master
                .try_clone()
                .map_err(|e| Status::internal(format!("duplicating the terminal: {e}")))?,
        );
        spawn_writer(writer, in_rx, true);
        let _ = tx.try_send(Ok(pb::ExecOutput {
            task_id: task_id.clone(),
            ..Default::default()
        }));
        let reader = std::fs::File::from(master);
        std::thread::spawn(move || {
            pump(reader, &tx, false);
            finish_exec(child, &tx, true);
        });
    } else {
        let mut child = tokio::task::spawn_blocking(move || rt.exec_spawn(&cid, &spec))
            .await
            .map_err(|e| Status::internal(format!("exec worker failed: {e}")))?
            .map_err(exec_status)?;
        if let Some(stdin) = child.stdin.take() {
            spawn_writer(stdin, in_rx, false);
        }
        let _ = tx.try_send(Ok(pb::ExecOutput {
            task_id: task_id.clone(),
            ..Default::default()
        }));
        let out = child.stdout.take();
        let err = child.stderr.take();
        let tx_out = tx.clone();
        let tx_err = tx.clone();
        let t_out = out.map(|o| std::thread::spawn(move || pump(o, &tx_out, false)));
        let t_err = err.map(|e| std::thread::spawn(move || pump(e, &tx_err, true)));
        std::thread::spawn(move || {
            for t in [t_out, t_err].into_iter().flatten() {
                let _ = t.join();
            }
            finish_exec(child, &tx, false);
        });
    }
    // Client messages → the writer thread.
    tokio::spawn(async move {
        while let Some(Ok(m)) = input.next().await {
            if !m.stdin.is_empty() && in_tx.send(Input::Data(m.stdin)).is_err() {
                return;
            }
            if let Some(r) = m.resize.as_ref() {
                let (rows, cols) = size_of(r);
                let _ = in_tx.send(Input::Resize(rows, cols));
            }
            if m.stdin_eof {
                let _ = in_tx.send(Input::Eof);
            }
        }
        // The client went away: its stdin is closed.
        let _ = in_tx.send(Input::Eof);
    });
    Ok(ReceiverStream::new(rx))
}

static EXEC_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn exec_status(e: ExecError) -> Status {
    match e {
        ExecError::NotRunning { .. } => Status::failed_precondition(e.to_string()),
        ExecError::NoCommand { .. } => Status::invalid_argument(e.to_string()),
        ExecError::Container(c) => container_status(c),
        e => Status::internal(e.to_string()),
    }
}

/// Writes the client's input to the process (a pipe, or the pty master,
/// which also takes resizes; EOF on a terminal is ^D, as a user would type).
fn spawn_writer<W: std::io::Write + AsFd + Send + 'static>(
    mut w: W,
    rx: std::sync::mpsc::Receiver<Input>,
    tty: bool,
) {
    std::thread::spawn(move || {
        while let Ok(m) = rx.recv() {
            match m {
                Input::Data(d) => {
                    if w.write_all(&d).is_err() {
                        return;
                    }
                }
                Input::Resize(rows, cols) if tty => {
                    let _ = set_window_size(w.as_fd(), rows, cols);
                }
                Input::Resize(..) => {}
                Input::Eof if tty => {
                    let _ = w.write_all(&[4]);
                }
                Input::Eof => return,
            }
        }
    });
}

/// Copies one output of the process to the client until EOF (or EIO: a
/// pty master reads EIO once the last slave fd closed).
fn pump(
    mut r: impl std::io::Read,
    tx: &mpsc::Sender<Result<pb::ExecOutput, Status>>,
    stderr: bool,
) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let mut o = pb::ExecOutput::default();
                if stderr {
                    o.stderr = buf[..n].to_vec();
                } else {
                    o.stdout = buf[..n].to_vec();
                }
                if tx.blocking_send(Ok(o)).is_err() {
                    return;
                }
            }
        }
    }
}

/// Waits for the helper (its exit code is the process's) and sends the
/// last message; on a terminal, the helper's own error lines go to stderr.
fn finish_exec(
    mut child: std::process::Child,
    tx: &mpsc::Sender<Result<pb::ExecOutput, Status>>,
    tty: bool,
) {
    let mut last = pb::ExecOutput::default();
    if tty {
        if let Some(mut e) = child.stderr.take() {
            let mut msg = Vec::new();
            let _ = std::io::Read::read_to_end(&mut e, &mut msg);
            last.stderr = msg;
        }
    }
    match child.wait() {
        Ok(st) => {
            last.exit_code = Some(flotilla_runtime::container::exit_code_of(st));
            let _ = tx.blocking_send(Ok(last));
        }
        Err(e) => {
            let _ = tx.blocking_send(Err(Status::internal(format!("waiting for the exec: {e}"))));
        }
    }
}

pub async fn top(svc: &NodeService, req: pb::TopRequest) -> Result<pb::TopResponse, Status> {
    let tasks = per_task(svc, &req.task_ids, |rt, task_id, cid| {
        let mut tp = pb::TaskProcesses {
            task_id: task_id.into(),
            ..Default::default()
        };
        match rt.top(cid) {
            Ok(procs) => {
                tp.processes = procs
                    .into_iter()
                    .map(|p| pb::ProcessInfo {
                        pid: p.pid,
                        ppid: p.ppid,
                        uid: p.uid,
                        user: p.user,
                        command: p.command,
                        cpu_time_ms: p.cpu_time.as_millis() as u64,
                        rss_bytes: p.rss_bytes,
                        started_at: p.started_at.map(pb::Timestamp::from_system),
                        state: p.state,
                    })
                    .collect()
            }
            Err(e) => tp.error = error_text(&e),
        }
        tp
    })
    .await?;
    Ok(pb::TopResponse { tasks })
}

pub async fn stats(svc: &NodeService, req: pb::StatsRequest) -> Result<pb::StatsResponse, Status> {
    let stats = per_task(svc, &req.task_ids, |rt, task_id, cid| match rt.stats(cid) {
        Ok(s) => pb::ContainerStats {
            task_id: task_id.into(),
            at: Some(pb::Timestamp::from_system(s.at)),
            cpu_usage_ns: s.cgroup.cpu_usage_ns,
            system_cpu_ns: s.system_cpu_ns,
            online_cpus: s.online_cpus,
            memory_usage_bytes: s.cgroup.memory_usage_bytes,
            memory_limit_bytes: s.cgroup.memory_limit_bytes,
            pids: s.cgroup.pids,
            pids_limit: s.cgroup.pids_limit,
            net_rx_bytes: s.net_rx_bytes,
            net_tx_bytes: s.net_tx_bytes,
            block_read_bytes: s.cgroup.block_read_bytes,
            block_write_bytes: s.cgroup.block_write_bytes,
            ..Default::default()
        },
        Err(e) => pb::ContainerStats {
            task_id: task_id.into(),
            error: error_text(&e),
            ..Default::default()
        },
    })
    .await?;
    Ok(pb::StatsResponse { stats })
}

fn container_status(e: ContainerError) -> Status {
    match e {
        ContainerError::NotFound { .. } => Status::not_found(e.to_string()),
        ContainerError::NotRunning { .. } => Status::failed_precondition(e.to_string()),
        ContainerError::Copy { .. } => Status::invalid_argument(e.to_string()),
        e => Status::internal(e.to_string()),
    }
}

/// The copy helper for `req`'s task, as an async process.
fn copy_process(
    svc: &NodeService,
    req: &pb::CopyRequest,
    direction: CopyDirection,
) -> Result<tokio::process::Command, Status> {
    known(svc, std::slice::from_ref(&req.task_id))?;
    let cmd = svc
        .runtime
        .copy_command(&container_id(&req.task_id), direction, &req.path)
        .map_err(container_status)?;
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.stderr(Stdio::piped()).kill_on_drop(true);
    Ok(cmd)
}

/// The helper's error line when it failed.
async fn helper_result(child: tokio::process::Child, what: &str) -> Result<(), Status> {
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| Status::internal(format!("{what}: waiting for the copy helper: {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    let msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
    Err(Status::invalid_argument(format!("{what}: {msg}")))
}

/// A tar of the path, streamed in chunks as the helper writes it.
pub async fn copy_from(
    svc: &NodeService,
    req: pb::CopyRequest,
) -> Result<OutStream<pb::CopyChunk>, Status> {
    let mut child = copy_process(svc, &req, CopyDirection::FromContainer)?
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| Status::internal(format!("starting the copy helper: {e}")))?;
    let Some(mut stdout) = child.stdout.take() else {
        return Err(Status::internal("the copy helper has no stdout"));
    };
    let (tx, rx) = mpsc::channel(8);
    let what = format!("copying {} out of task {}", req.path, req.task_id);
    tokio::spawn(async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match stdout.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => {
                    let chunk = pb::CopyChunk {
                        target: None,
                        data: buf[..n].to_vec(),
                    };
                    if tx.send(Ok(chunk)).await.is_err() {
                        // The reader went away; kill_on_drop ends the helper.
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(Status::internal(format!("{what}: {e}")))).await;
                    return;
                }
            }
        }
        if let Err(e) = helper_result(child, &what).await {
            let _ = tx.send(Err(e)).await;
        }
    });
    Ok(ReceiverStream::new(rx))
}

/// Unpacks the uploaded tar at the first chunk's target path.
pub async fn copy_to(
    svc: &NodeService,
    mut input: Streaming<pb::CopyChunk>,
) -> Result<pb::CopyResponse, Status> {
    let first = match input.next().await {
        Some(Ok(c)) => c,
        Some(Err(e)) => return Err(e),
        None => return Err(Status::invalid_argument("empty copy upload")),
    };
    let Some(req) = first.target.clone() else {
        return Err(Status::invalid_argument(
            "the first copy chunk must name the target",
        ));
    };
    let what = format!("copying into {} of task {}", req.path, req.task_id);
    let mut child = copy_process(svc, &req, CopyDirection::ToContainer)?
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| Status::internal(format!("starting the copy helper: {e}")))?;
    let Some(mut stdin) = child.stdin.take() else {
        return Err(Status::internal("the copy helper has no stdin"));
    };
    let mut chunk = Some(first);
    let mut write_err = None;
    while let Some(c) = chunk.take() {
        if write_err.is_none() {
            if let Err(e) = stdin.write_all(&c.data).await {
                // The helper stopped reading (bad archive, no space): its
                // own message says why; keep draining the upload.
                write_err = Some(e);
            }
        }
        chunk = match input.next().await {
            Some(Ok(c)) => Some(c),
            Some(Err(e)) => {
                return Err(Status::aborted(format!("{what}: reading the upload: {e}")))
            }
            None => None,
        };
    }
    drop(stdin);
    helper_result(child, &what).await?;
    if let Some(e) = write_err {
        return Err(Status::internal(format!("{what}: {e}")));
    }
    Ok(pb::CopyResponse {
        task_id: req.task_id,
    })
}
