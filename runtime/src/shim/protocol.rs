//! The files and messages the shim and [`crate::container::Runtime`] share.
//!
//! Requests and responses are single JSON lines over the shim's unix socket;
//! one request per connection. The ready report the shim writes to its stdout
//! when the container runs (or failed) is a [`Response`] too.
//!
//! What this module must never do: change a field's meaning without a new
//! name: a new agent talks to shims started by an older one.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

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
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ShimStatus>,
}

impl Response {
    pub fn ok(status: ShimStatus) -> Self {
        Response {
            ok: true,
            error: None,
            status: Some(status),
        }
    }
    pub fn err(msg: impl Into<String>) -> Self {
        Response {
            ok: false,
            error: Some(msg.into()),
            status: None,
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
    let mut reader = BufReader::new(stream);
    let mut answer = String::new();
    match reader.read_line(&mut answer) {
        Ok(0) => Err(CallError::BadResponse(
            "the shim closed the connection without answering".into(),
        )),
        Ok(_) => serde_json::from_str(&answer)
            .map_err(|e| CallError::BadResponse(format!("{e}: {answer:?}"))),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Err(CallError::Timeout)
        }
        Err(e) => Err(CallError::Io(e)),
    }
}
