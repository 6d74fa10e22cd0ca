//! The files and messages the shim and [`crate::container::Runtime`] share.
//!
//! Requests and responses are single JSON lines over the shim's unix socket;
//! one request per connection. `attach` is the one request whose answer goes
//! on: after its response line, every line the container writes follows as
//! a json-file log record (see [`crate::logs`]) until the client hangs up or
//! the container exits (then the shim closes the connection). The ready report the shim writes to its stdout
//! when the container runs (or failed) is a [`Response`] too.
//!
//! What this module must never do: change a field's meaning without a new
//! name: a new agent talks to shims started by an older one.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::container::cgroup_ops::{CgroupFiles, StatsSample};
use crate::container::ContainerState;

/// What the shim needs to run one container; written by the runtime to
/// `<container dir>/shim.json` before the shim starts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ShimConfig {
    pub id: String,
    /// OCI bundle (config.json + rootfs).
    pub bundle: PathBuf,
    /// libcontainer's state root (`<run_dir>/libcontainer`).
    pub libcontainer_root: PathBuf,
    pub socket: PathBuf,
    pub log_path: PathBuf,
    pub status_path: PathBuf,
    /// Files whose `oom_kill N` line says whether the kernel OOM-killed a
    /// process of the container (v1 `memory.oom_control`, v2 `memory.events`).
    pub oom_files: Vec<PathBuf>,
    /// Bring `lo` up in the container's network namespace (set when the
    /// container gets a new one, as Docker's `none` network has lo up).
    #[serde(default)]
    pub loopback_up: bool,
    /// Rotate the log file when it would grow past this many bytes.
    #[serde(default)]
    pub log_max_size: Option<u64>,
    /// How many log files to keep, the current one included (default 1).
    #[serde(default)]
    pub log_max_file: Option<u32>,
    /// The container's cgroup directories, which `stats` reads (empty in
    /// the shim.json of an older runtime: stats then read as zeros).
    #[serde(default)]
    pub cgroups: CgroupFiles,
}

/// What the shim knows about its container; also persisted as `status.json`
/// so it survives the shim.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ShimStatus {
    pub state: ContainerState,
    pub pid: Option<i32>,
    pub shim_pid: Option<i32>,
    pub exit_code: Option<i32>,
    pub oom_killed: bool,
    pub started_at: Option<SystemTime>,
    pub finished_at: Option<SystemTime>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Request {
    State,
    Kill {
        signal: i32,
    },
    /// Answered once the container has exited and its output is in the log.
    Wait,
    /// Kill (if running), reap, delete the libcontainer state and cgroups, then exit.
    Shutdown,
    /// One resource-usage sample of the container's cgroup.
    Stats,
    /// The container's output from now on, as json-file records after the
    /// response line, until the client hangs up or the container exits.
    Attach,
}

/// Every request a shim of this version answers, by its `op`.
pub(crate) const REQUEST_OPS: &[&str] = &["state", "kill", "wait", "shutdown", "stats", "attach"];

impl Request {
    /// Parses a request line; an `op` this shim does not know is named as
    /// such (a newer runtime talking to an older shim must see why).
    pub fn parse(line: &str) -> Result<Request, String> {
        let value: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| format!("bad request {:?}: not JSON: {e}", line.trim_end()))?;
        let op = value
            .get("op")
            .and_then(|op| op.as_str())
            .map(str::to_owned);
        match op.as_deref() {
            Some(op) if !REQUEST_OPS.contains(&op) => Err(format!(
                "unknown request {op:?}: this shim answers {}",
                REQUEST_OPS.join(", ")
            )),
            None => Err(format!(
                "bad request {:?}: no \"op\" naming the request",
                line.trim_end()
            )),
            Some(op) => serde_json::from_value(value)
                .map_err(|e| format!("bad {op:?} request {:?}: {e}", line.trim_end())),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ShimStatus>,
    /// The answer to `stats`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<StatsSample>,
}

impl Response {
    pub fn ok(status: ShimStatus) -> Self {
        Response {
            ok: true,
            error: None,
            status: Some(status),
            stats: None,
        }
    }
    pub fn err(msg: impl Into<String>) -> Self {
        Response {
            ok: false,
            error: Some(msg.into()),
            status: None,
            stats: None,
        }
    }
    pub fn to_line(&self) -> Vec<u8> {
        // A struct of strings, integers and options always serializes.
        let mut v = serde_json::to_vec(self).unwrap_or_default();
        v.push(b'\n');
        v
    }
}

/// Why a call to a shim failed.
#[derive(Debug)]
pub(crate) enum CallError {
    /// Nobody listens on the socket: the shim is gone.
    Unavailable,
    Timeout,
    Io(io::Error),
    BadResponse(String),
}

/// Sends one request and reads its one-line answer. `timeout` bounds the wait
/// for the answer (None: wait as long as it takes).
pub(crate) fn call(
    socket: &Path,
    req: &Request,
    timeout: Option<Duration>,
) -> Result<Response, CallError> {
    let mut reader = send(socket, req, timeout)?;
    read_response(&mut reader)
}

/// Connects and sends one request; the answer is to be read from the
/// returned reader (with `timeout` as its read timeout).
pub(crate) fn send(
    socket: &Path,
    req: &Request,
    timeout: Option<Duration>,
) -> Result<BufReader<UnixStream>, CallError> {
    let mut stream = UnixStream::connect(socket).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => CallError::Unavailable,
        _ => CallError::Io(e),
    })?;
    stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .map_err(CallError::Io)?;
    stream.set_read_timeout(timeout).map_err(CallError::Io)?;
    let mut line = serde_json::to_vec(req).map_err(|e| CallError::BadResponse(e.to_string()))?;
    line.push(b'\n');
    stream.write_all(&line).map_err(CallError::Io)?;
    Ok(BufReader::new(stream))
}

/// Reads one response line.
pub(crate) fn read_response(reader: &mut BufReader<UnixStream>) -> Result<Response, CallError> {
    let mut answer = String::new();
    match reader.read_line(&mut answer) {
        Ok(0) => Err(CallError::BadResponse(
            "the shim closed the connection without answering".into(),
        )),
        Ok(_) => serde_json::from_str(&answer)
            .map_err(|e| CallError::BadResponse(format!("{e}: {answer:?}"))),
        Err(e) if is_timeout(&e) => Err(CallError::Timeout),
        Err(e) => Err(CallError::Io(e)),
    }
}

pub(crate) fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_and_malformed_requests_are_named() {
        let e = Request::parse("{\"op\":\"frobnicate\"}\n").unwrap_err();
        assert!(e.contains("unknown request \"frobnicate\""), "{e}");
        assert!(e.contains("stats, attach"), "{e}");
        let e = Request::parse("{\"op\":\"kill\"}").unwrap_err();
        assert!(e.contains("bad \"kill\" request"), "{e}");
        assert!(e.contains("signal"), "{e}");
        let e = Request::parse("hello").unwrap_err();
        assert!(e.contains("not JSON"), "{e}");
        assert!(matches!(
            Request::parse("{\"op\":\"attach\"}"),
            Ok(Request::Attach)
        ));
    }
}
