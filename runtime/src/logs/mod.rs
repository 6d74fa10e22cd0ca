//! Container log files in Docker's `json-file` format.
//!
//! One JSON object per line: `{"log":"hello\n","stream":"stdout","time":"2026-01-02T03:04:05.123456789Z"}`.
//! The shim writes them ([`LogWriter`]); the agent reads them back ([`read`])
//! and follows them while a container runs ([`LogFollower`]).
//!
//! What this module must never do: interpret the bytes a container wrote
//! (they are stored as lossy UTF-8, as Docker does) or block forever: every
//! wait takes a timeout.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

/// Which of the container's output streams a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogStream {
    Stdout,
    Stderr,
}

impl LogStream {
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        }
    }
}

/// One line of a container's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub time: SystemTime,
    pub stream: LogStream,
    /// The bytes as stored: a complete line ends with `\n`; a line the
    /// container never finished (or one longer than [`MAX_LINE`]) does not.
    pub line: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("opening log file {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("reading log file {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("writing log file {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

/// Lines longer than this are split into several entries, as Docker does
/// (its buffer is 16 KiB), so one runaway line cannot grow the shim's memory.
pub const MAX_LINE: usize = 16 * 1024;

#[derive(Serialize, Deserialize)]
struct JsonLine<'a> {
    log: std::borrow::Cow<'a, str>,
    stream: std::borrow::Cow<'a, str>,
    time: std::borrow::Cow<'a, str>,
}

/// Formats a time the way Docker's json-file driver does (RFC 3339, nanoseconds, `Z`).
pub fn format_time(t: SystemTime) -> String {
    DateTime::<Utc>::from(t).to_rfc3339_opts(SecondsFormat::Nanos, true)
}

/// Parses an RFC 3339 time as written by [`format_time`] or by Docker.
pub fn parse_time(s: &str) -> Option<SystemTime> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| SystemTime::from(t.with_timezone(&Utc)))
}

/// Appends entries to a json-file log. Each entry is one `write` of a whole
/// line, so a concurrent reader sees either all of it or a torn tail it skips.
///
/// With a size limit the writer rotates like Docker's json-file driver:
/// when an entry would take the file past `max_size`, `log` becomes
/// `log.1` (`log.1` becomes `log.2`, ...), at most `max_file` files in all
/// are kept, and writing goes on in a fresh `log`. With `max_file` 1 the
/// file is simply started over.
#[derive(Debug)]
pub struct LogWriter {
    file: File,
    path: PathBuf,
    size: u64,
    max_size: Option<u64>,
    max_file: u32,
}

impl LogWriter {
    pub fn open(path: &Path) -> Result<Self, LogError> {
        Self::with_rotation(path, None, None)
    }

    /// `max_size` None never rotates; `max_file` defaults to 1.
    pub fn with_rotation(
        path: &Path,
        max_size: Option<u64>,
        max_file: Option<u32>,
    ) -> Result<Self, LogError> {
        let file = open_append(path)?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(LogWriter {
            file,
            path: path.to_owned(),
            size,
            max_size: max_size.filter(|&m| m > 0),
            max_file: max_file.unwrap_or(1).max(1),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn write_entry(
        &mut self,
        stream: LogStream,
        line: &[u8],
        time: SystemTime,
    ) -> Result<(), LogError> {
        let mut out = encode_line(stream, line, time);
        out.push(b'\n');
        self.write_record(&out)
    }

    /// Appends one record already encoded by [`encode_record`] (newline
    /// included), so a caller that also sends it elsewhere encodes it once.
    pub(crate) fn write_record(&mut self, out: &[u8]) -> Result<(), LogError> {
        if let Some(max) = self.max_size {
            if self.size > 0 && self.size + out.len() as u64 > max {
                self.rotate()?;
            }
        }
        self.file.write_all(out).map_err(|source| LogError::Write {
            path: self.path.clone(),
            source,
        })?;
        self.size += out.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), LogError> {
        let werr = |path: &Path| {
            let path = path.to_owned();
            move |source| LogError::Write { path, source }
        };
        if self.max_file == 1 {
            self.file.set_len(0).map_err(werr(&self.path))?;
            self.size = 0;
            return Ok(());
        }
        let last = rotated_path(&self.path, self.max_file - 1);
        match std::fs::remove_file(&last) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(werr(&last)(e)),
        }
        for n in (1..self.max_file - 1).rev() {
            let from = rotated_path(&self.path, n);
            match std::fs::rename(&from, rotated_path(&self.path, n + 1)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(werr(&from)(e)),
            }
        }
        std::fs::rename(&self.path, rotated_path(&self.path, 1)).map_err(werr(&self.path))?;
        self.file = open_append(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

fn open_append(path: &Path) -> Result<File, LogError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| LogError::Open {
            path: path.to_owned(),
            source,
        })
}

/// `<log>.N`, the N-th most recent rotated file.
pub fn rotated_path(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// The rotated files of `path` that exist, oldest first.
fn rotated_files(path: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Vec::new();
    };
    let prefix = format!("{}.", name.to_string_lossy());
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let n = e
                        .file_name()
                        .to_string_lossy()
                        .strip_prefix(&prefix)?
                        .parse()
                        .ok()?;
                    Some((n, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort_by_key(|f| std::cmp::Reverse(f.0));
    found.into_iter().map(|(_, p)| p).collect()
}

/// One json-file record, newline included, as [`LogWriter`] writes it.
pub(crate) fn encode_record(stream: LogStream, line: &[u8], time: SystemTime) -> Vec<u8> {
    let mut out = encode_line(stream, line, time);
    out.push(b'\n');
    out
}

fn encode_line(stream: LogStream, line: &[u8], time: SystemTime) -> Vec<u8> {
    let rec = JsonLine {
        log: String::from_utf8_lossy(line),
        stream: stream.as_str().into(),
        time: format_time(time).into(),
    };
    // Serializing three strings into a Vec cannot fail.
    serde_json::to_vec(&rec).unwrap_or_default()
}

/// Splits a stream of output bytes into log lines: complete lines as they
/// arrive, overlong ones at [`MAX_LINE`], and the rest on [`flush`](Self::flush).
#[derive(Debug, Default)]
pub struct LineSplitter {
    buf: Vec<u8>,
}

impl LineSplitter {
    /// Adds bytes and returns every line now complete (each ending in `\n`,
    /// except pieces of an overlong line).
    pub fn push(&mut self, data: &[u8]) -> Vec<Vec<u8>> {
        self.buf.extend_from_slice(data);
        let mut out = Vec::new();
        loop {
            match self.buf.iter().position(|&b| b == b'\n') {
                Some(i) if i < MAX_LINE => {
                    let rest = self.buf.split_off(i + 1);
                    out.push(std::mem::replace(&mut self.buf, rest));
                }
                _ if self.buf.len() >= MAX_LINE => {
                    let rest = self.buf.split_off(MAX_LINE);
                    out.push(std::mem::replace(&mut self.buf, rest));
                }
                _ => break,
            }
        }
        out
    }

    /// Returns what is left (a line without its newline), if anything.
    pub fn flush(&mut self) -> Option<Vec<u8>> {
        if self.buf.is_empty() {
            None
        } else {
            Some(std::mem::take(&mut self.buf))
        }
    }
}

pub(crate) fn decode_line(raw: &[u8]) -> Option<LogEntry> {
    let rec: JsonLine = serde_json::from_slice(raw).ok()?;
    let stream = match rec.stream.as_ref() {
        "stdout" => LogStream::Stdout,
        "stderr" => LogStream::Stderr,
        _ => return None,
    };
    Some(LogEntry {
        time: parse_time(&rec.time)?,
        stream,
        line: rec.log.into_owned().into_bytes(),
    })
}

fn in_window(e: &LogEntry, since: Option<SystemTime>, until: Option<SystemTime>) -> bool {
    since.is_none_or(|s| e.time >= s) && until.is_none_or(|u| e.time <= u)
}

/// Reads a json-file log, rotated files (`<log>.N`) included, oldest
/// first: entries within `[since, until]`, then the last `tail` of those. A
/// torn last line (being written right now) and lines that are not log
/// records are skipped.
pub fn read(
    path: &Path,
    tail: Option<usize>,
    since: Option<SystemTime>,
    until: Option<SystemTime>,
) -> Result<Vec<LogEntry>, LogError> {
    let mut entries = Vec::new();
    for old in rotated_files(path) {
        match read_one(&old, since, until) {
            Ok(mut e) => entries.append(&mut e),
            // Rotated away between listing and opening.
            Err(LogError::Open { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    entries.append(&mut read_one(path, since, until)?);
    if let Some(n) = tail {
        let skip = entries.len().saturating_sub(n);
        entries.drain(..skip);
    }
    Ok(entries)
}

fn read_one(
    path: &Path,
    since: Option<SystemTime>,
    until: Option<SystemTime>,
) -> Result<Vec<LogEntry>, LogError> {
    let mut file = File::open(path).map_err(|source| LogError::Open {
        path: path.to_owned(),
        source,
    })?;
    let mut data = Vec::new();
    file.read_to_end(&mut data)
        .map_err(|source| LogError::Read {
            path: path.to_owned(),
            source,
        })?;
    let complete = match data.iter().rposition(|&b| b == b'\n') {
        Some(i) => &data[..=i],
        None => &[][..],
    };
    Ok(complete
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(decode_line)
        .filter(|e| in_window(e, since, until))
        .collect())
}

/// Follows a json-file log as it grows, like `tail -f`.
#[derive(Debug)]
pub struct LogFollower {
    path: PathBuf,
    file: File,
    pos: u64,
    partial: Vec<u8>,
    poll_interval: Duration,
}

impl LogFollower {
    /// Opens the log; `from_end` skips what is already there (use [`read`]
    /// for history, then follow from the end).
    pub fn open(path: &Path, from_end: bool) -> Result<Self, LogError> {
        let mut file = File::open(path).map_err(|source| LogError::Open {
            path: path.to_owned(),
            source,
        })?;
        let pos = if from_end {
            file.seek(SeekFrom::End(0))
                .map_err(|source| LogError::Read {
                    path: path.to_owned(),
                    source,
                })?
        } else {
            0
        };
        Ok(LogFollower {
            path: path.to_owned(),
            file,
            pos,
            partial: Vec::new(),
            poll_interval: Duration::from_millis(50),
        })
    }

    /// Returns the entries appended since the last call, waiting up to
    /// `timeout` for at least one; an empty batch means none arrived.
    pub fn next_batch(&mut self, timeout: Duration) -> Result<Vec<LogEntry>, LogError> {
        let deadline = Instant::now() + timeout;
        loop {
            let batch = self.read_new()?;
            if !batch.is_empty() {
                return Ok(batch);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(batch);
            }
            std::thread::sleep(self.poll_interval.min(deadline - now));
        }
    }

    fn read_new(&mut self) -> Result<Vec<LogEntry>, LogError> {
        let mut out = self.read_available()?;
        let err = |source| LogError::Read {
            path: self.path.clone(),
            source,
        };
        // Rotated (renamed away) under us: what was left in the old file is
        // read above; go on with the new file from its start.
        let current = std::fs::metadata(&self.path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        let ours = self.file.metadata().map_err(err)?;
        if current.is_some_and(|c| c != (ours.dev(), ours.ino())) {
            if let Ok(f) = File::open(&self.path) {
                self.file = f;
                self.pos = 0;
                self.partial.clear();
                out.append(&mut self.read_available()?);
            }
        }
        Ok(out)
    }

    fn read_available(&mut self) -> Result<Vec<LogEntry>, LogError> {
        let err = |source| LogError::Read {
            path: self.path.clone(),
            source,
        };
        let len = self.file.metadata().map_err(err)?.len();
        if len < self.pos {
            // Truncated under us (log rotation by copy-truncate): start over.
            self.pos = 0;
            self.partial.clear();
        }
        if len == self.pos {
            return Ok(Vec::new());
        }
        self.file.seek(SeekFrom::Start(self.pos)).map_err(err)?;
        let mut data = Vec::new();
        let n = (&mut self.file)
            .take(len - self.pos)
            .read_to_end(&mut data)
            .map_err(|source| LogError::Read {
                path: self.path.clone(),
                source,
            })?;
        self.pos += n as u64;
        self.partial.extend_from_slice(&data);
        let Some(last_nl) = self.partial.iter().rposition(|&b| b == b'\n') else {
            return Ok(Vec::new());
        };
        let rest = self.partial.split_off(last_nl + 1);
        let complete = std::mem::replace(&mut self.partial, rest);
        Ok(complete
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .filter_map(decode_line)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitter_handles_partial_and_long_lines() {
        let mut s = LineSplitter::default();
        assert_eq!(s.push(b"ab"), Vec::<Vec<u8>>::new());
        assert_eq!(
            s.push(b"c\nde\nf"),
            vec![b"abc\n".to_vec(), b"de\n".to_vec()]
        );
        assert_eq!(s.flush(), Some(b"f".to_vec()));
        assert_eq!(s.flush(), None);
        let long = vec![b'x'; MAX_LINE + 10];
        let out = s.push(&long);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].len(), MAX_LINE);
        assert_eq!(s.flush().map(|v| v.len()), Some(10));
    }

    #[test]
    fn rotates_by_size_and_reads_across_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c-json.log");
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let one = encode_line(LogStream::Stdout, b"line 00\n", t0).len() as u64 + 1;
        // Room for two entries per file, three files.
        let mut w = LogWriter::with_rotation(&path, Some(2 * one), Some(3)).unwrap();
        let mut f = LogFollower::open(&path, false).unwrap();
        let mut followed = Vec::new();
        for i in 0..9u64 {
            w.write_entry(
                LogStream::Stdout,
                format!("line {i:02}\n").as_bytes(),
                t0 + Duration::from_secs(i),
            )
            .unwrap();
            if i % 2 == 1 {
                followed.extend(f.next_batch(Duration::from_millis(1)).unwrap());
            }
        }
        followed.extend(f.next_batch(Duration::from_millis(1)).unwrap());
        assert!(std::fs::metadata(&path).unwrap().len() <= 2 * one);
        assert!(rotated_path(&path, 1).exists());
        assert!(rotated_path(&path, 2).exists());
        assert!(!rotated_path(&path, 3).exists());
        let got: Vec<String> = read(&path, None, None, None)
            .unwrap()
            .iter()
            .map(|e| String::from_utf8_lossy(&e.line).trim().to_string())
            .collect();
        // 9 entries, 2 per file, 3 files: the last 5 survive, in order.
        assert_eq!(got, ["line 04", "line 05", "line 06", "line 07", "line 08"]);
        assert_eq!(read(&path, Some(2), None, None).unwrap().len(), 2);
        // The follower saw every entry, across rotations.
        assert_eq!(followed.len(), 9);

        // max_file 1: the file starts over.
        let p1 = dir.path().join("one.log");
        let mut w = LogWriter::with_rotation(&p1, Some(one), Some(1)).unwrap();
        for i in 0..3 {
            w.write_entry(LogStream::Stderr, b"line 00\n", t0 + Duration::from_secs(i))
                .unwrap();
        }
        assert_eq!(read(&p1, None, None, None).unwrap().len(), 1);
        assert!(!rotated_path(&p1, 1).exists());
    }

    #[test]
    fn write_read_follow_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c-json.log");
        let mut w = LogWriter::open(&path).unwrap();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let t1 = t0 + Duration::from_nanos(1_500);
        w.write_entry(LogStream::Stdout, b"hello\n", t0).unwrap();
        w.write_entry(LogStream::Stderr, b"bad \xff byte\n", t1)
            .unwrap();

        let text = std::fs::read_to_string(&path).unwrap();
        let first = text.lines().next().unwrap();
        assert_eq!(
            first,
            r#"{"log":"hello\n","stream":"stdout","time":"2023-11-14T22:13:20.000000000Z"}"#
        );

        let all = read(&path, None, None, None).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].time, t0);
        assert_eq!(all[1].time, t1);
        assert_eq!(all[1].stream, LogStream::Stderr);
        assert_eq!(all[1].line, "bad \u{fffd} byte\n".as_bytes());
        assert_eq!(read(&path, Some(1), None, None).unwrap()[0].time, t1);
        assert_eq!(read(&path, None, Some(t1), None).unwrap().len(), 1);
        assert_eq!(read(&path, None, None, Some(t0)).unwrap().len(), 1);

        let mut f = LogFollower::open(&path, true).unwrap();
        assert!(f.next_batch(Duration::from_millis(10)).unwrap().is_empty());
        // A torn line is held back until its newline arrives.
        let line = encode_line(LogStream::Stdout, b"later\n", t1);
        let mut raw = OpenOptions::new().append(true).open(&path).unwrap();
        raw.write_all(&line[..5]).unwrap();
        assert!(f.next_batch(Duration::from_millis(10)).unwrap().is_empty());
        raw.write_all(&line[5..]).unwrap();
        raw.write_all(b"\n").unwrap();
        let got = f.next_batch(Duration::from_secs(5)).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].line, b"later\n");
    }
}
