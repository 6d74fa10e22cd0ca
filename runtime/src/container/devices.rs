//! Facts about the host that the OCI spec needs: device nodes (for
//! `devices:` and `privileged`), the kernel's last capability, and the
//! per-CPU paths Docker masks in addition to its fixed list.
//!
//! What it must never do: create, change or open a device: it only stats.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use super::spec::ResolvedDevice;
use super::Device;

/// The capabilities this process may hand out (its bounding set, as a
/// bit mask): "all capabilities" for a privileged container means these,
/// as with Docker, which lists what its own environment offers.
pub(crate) fn available_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapBnd:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or((1 << 41) - 1)
}

fn device_of(
    path: &Path,
    container_path: &str,
    permissions: &str,
) -> Result<Option<ResolvedDevice>, String> {
    let md = std::fs::metadata(path).map_err(|e| format!("device {}: {e}", path.display()))?;
    let ft = md.file_type();
    let kind = if ft.is_char_device() {
        'c'
    } else if ft.is_block_device() {
        'b'
    } else {
        return Ok(None);
    };
    let rdev = md.rdev();
    Ok(Some(ResolvedDevice {
        container_path: container_path.to_string(),
        kind,
        major: nix::sys::stat::major(rdev),
        minor: nix::sys::stat::minor(rdev),
        file_mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        permissions: permissions.to_string(),
    }))
}

/// The devices a spec asks for; a directory stands for every device under it.
pub(crate) fn resolve(devices: &[Device]) -> Result<Vec<ResolvedDevice>, String> {
    let mut out = Vec::new();
    for d in devices {
        if !d.permissions.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
            return Err(format!(
                "device {}: invalid cgroup permissions {:?} (any of \"rwm\")",
                d.host_path.display(),
                d.permissions
            ));
        }
        let target = if d.container_path.is_empty() {
            d.host_path.to_string_lossy().into_owned()
        } else {
            d.container_path.clone()
        };
        if d.host_path.is_dir() {
            let mut found = Vec::new();
            walk(&d.host_path, &mut found, &[])?;
            for p in found {
                let rel = p.strip_prefix(&d.host_path).unwrap_or(&p);
                let inner = Path::new(&target).join(rel);
                if let Some(dev) = device_of(&p, &inner.to_string_lossy(), &d.permissions)? {
                    out.push(dev);
                }
            }
        } else {
            match device_of(&d.host_path, &target, &d.permissions)? {
                Some(dev) => out.push(dev),
                None => return Err(format!("{} is not a device node", d.host_path.display())),
            }
        }
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>, skip: &[&str]) -> Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("listing {}: {e}", dir.display()))?;
    for e in entries.flatten() {
        let name = e.file_name();
        if skip.iter().any(|s| name == *s) {
            continue;
        }
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            walk(&e.path(), out, &[])?;
        } else if ft.is_char_device() || ft.is_block_device() {
            out.push(e.path());
        }
    }
    Ok(())
}

/// Every device node under the host's /dev, as a privileged container gets
/// them (the same directories skipped as containerd's HostDevices).
pub(crate) fn host_devices() -> Result<Vec<ResolvedDevice>, String> {
    let mut found = Vec::new();
    walk(
        Path::new("/dev"),
        &mut found,
        &["pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"],
    )?;
    let mut out = Vec::new();
    for p in found {
        // The console is the container's own; /dev/ptmx is libcontainer's
        // symlink into the container's devpts.
        if p == Path::new("/dev/console") || p == Path::new("/dev/ptmx") {
            continue;
        }
        // A node that vanished meanwhile is not an error.
        if let Ok(Some(d)) = device_of(&p, &p.to_string_lossy(), "rwm") {
            out.push(d);
        }
    }
    Ok(out)
}

/// `/sys/devices/system/cpu/cpuN/thermal_throttle` for each CPU that has it.
pub(crate) fn thermal_throttle_paths() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/sys/devices/system/cpu") else {
        return Vec::new();
    };
    let mut out: Vec<String> = entries
        .flatten()
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.strip_prefix("cpu")
                .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(|e| e.path().join("thermal_throttle"))
        .filter(|p| p.exists())
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_device_nodes_and_rejects_files() {
        let got = resolve(&[Device {
            host_path: "/dev/null".into(),
            container_path: "/dev/mynull".into(),
            permissions: "rw".into(),
        }])
        .unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].kind, got[0].major, got[0].minor), ('c', 1, 3));
        assert_eq!(got[0].container_path, "/dev/mynull");
        assert!(resolve(&[Device {
            host_path: "/etc/hostname".into(),
            ..Default::default()
        }])
        .unwrap_err()
        .contains("not a device"));
        assert!(resolve(&[Device {
            host_path: "/dev/null".into(),
            permissions: "x".into(),
            ..Default::default()
        }])
        .is_err());
        assert!(host_devices()
            .unwrap()
            .iter()
            .any(|d| d.container_path == "/dev/null"));
    }
}
