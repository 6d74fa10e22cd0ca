//! The init binary for containers with `init: true`.
//!
//! `flotilla-init` (runtime/init/main.rs, built statically by build.rs) is
//! embedded in the runtime and written once to `<run_dir>/flotilla-init`,
//! from where each such container gets it bind-mounted read-only.
//!
//! What it must never do: replace the file while containers may be exec'ing
//! it (a new version goes to a temporary name and is renamed into place).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

const INIT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/flotilla-init"));

/// Writes the init binary under `run_dir` unless it is already there; returns its path.
pub(crate) fn install(run_dir: &Path) -> Result<PathBuf, String> {
    let path = run_dir.join("flotilla-init");
    if std::fs::read(&path).is_ok_and(|b| b == INIT) {
        return Ok(path);
    }
    let tmp = run_dir.join(format!("flotilla-init.tmp{}", std::process::id()));
    std::fs::write(&tmp, INIT)
        .and_then(|_| std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)))
        .and_then(|_| std::fs::rename(&tmp, &path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            format!("installing the init binary at {}: {e}", path.display())
        })?;
    Ok(path)
}
