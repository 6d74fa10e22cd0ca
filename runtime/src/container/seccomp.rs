//! Seccomp profiles in Docker's format, turned into the OCI `linux.seccomp`
//! section for one container.
//!
//! The default profile is Docker's own: `seccomp_default.json` beside this
//! file is a verbatim copy of moby's `profiles/seccomp/default.json`
//! (github.com/moby/moby, vendor/github.com/moby/profiles/seccomp/default.json
//! at commit b985e2313a8676e18072b442911fc8f64f17d440; Apache License 2.0,
//! Copyright The Moby Authors). Custom profiles (`security_opt:
//! seccomp=profile.json`) use the same format and the same filtering: rules
//! are kept or dropped by architecture, by the container's bounding
//! capabilities and by the running kernel's version, exactly as moby's
//! `setupSeccomp` does.
//!
//! What it must never do: load a filter (libcontainer does that inside the
//! container) or silently weaken a profile: anything it cannot translate is
//! an error.

use std::collections::BTreeSet;

use oci_spec::runtime::LinuxSeccomp;
use serde::Deserialize;
use serde_json::{json, Value};

/// moby's default profile, embedded so the binary needs no file at run time.
const DEFAULT_PROFILE: &str = include_str!("seccomp_default.json");

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Profile {
    #[serde(default)]
    default_action: String,
    #[serde(default)]
    default_errno_ret: Option<u32>,
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    arch_map: Vec<ArchMap>,
    #[serde(default)]
    flags: Vec<String>,
    #[serde(default)]
    listener_path: Option<String>,
    #[serde(default)]
    syscalls: Vec<Syscall>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArchMap {
    architecture: String,
    #[serde(default)]
    sub_architectures: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Syscall {
    #[serde(default)]
    name: String,
    #[serde(default)]
    names: Vec<String>,
    action: String,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Option<Vec<Value>>,
    #[serde(default)]
    includes: Option<Filter>,
    #[serde(default)]
    excludes: Option<Filter>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Filter {
    #[serde(default)]
    caps: Vec<String>,
    #[serde(default)]
    arches: Vec<String>,
    #[serde(default)]
    min_kernel: Option<String>,
}

/// The running machine as the profile's filters see it.
#[derive(Debug, Clone)]
pub(crate) struct Host {
    /// Docker's (libseccomp's) name for the native architecture: "amd64", "arm64", ...
    pub arch: &'static str,
    /// Kernel version as (major, minor).
    pub kernel: (u32, u32),
}

impl Host {
    pub fn detect() -> Host {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "x86" => "x86",
            "aarch64" => "arm64",
            "arm" => "arm",
            "riscv64" => "riscv64",
            "s390x" => "s390x",
            "powerpc64" => "ppc64le",
            "loongarch64" => "loong64",
            other => other,
        };
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        Host {
            arch,
            kernel: parse_kernel(&release).unwrap_or((0, 0)),
        }
    }

    fn seccomp_arch(&self) -> Option<&'static str> {
        Some(match self.arch {
            "amd64" => "SCMP_ARCH_X86_64",
            "x86" => "SCMP_ARCH_X86",
            "arm64" => "SCMP_ARCH_AARCH64",
            "arm" => "SCMP_ARCH_ARM",
            "riscv64" => "SCMP_ARCH_RISCV64",
            "s390x" => "SCMP_ARCH_S390X",
            "ppc64le" => "SCMP_ARCH_PPC64LE",
            "loong64" => "SCMP_ARCH_LOONGARCH64",
            _ => return None,
        })
    }
}

fn parse_kernel(s: &str) -> Option<(u32, u32)> {
    let mut it = s.split(|c: char| !c.is_ascii_digit());
    let major = it.next()?.parse().ok()?;
    let minor = it.next().and_then(|m| m.parse().ok()).unwrap_or(0);
    Some((major, minor))
}

/// Docker's default profile for a container with these bounding capabilities.
pub(crate) fn default_profile(
    caps: &BTreeSet<String>,
    host: &Host,
) -> Result<LinuxSeccomp, String> {
    translate(DEFAULT_PROFILE, caps, host).map_err(|e| format!("the built-in seccomp profile: {e}"))
}

/// A profile in Docker's JSON format (a custom `seccomp=FILE`).
pub(crate) fn custom_profile(
    json_text: &str,
    caps: &BTreeSet<String>,
    host: &Host,
) -> Result<LinuxSeccomp, String> {
    translate(json_text, caps, host).map_err(|e| format!("the custom seccomp profile: {e}"))
}

fn translate(text: &str, caps: &BTreeSet<String>, host: &Host) -> Result<LinuxSeccomp, String> {
    let p: Profile = serde_json::from_str(text).map_err(|e| format!("parsing: {e}"))?;
    if p.default_action.is_empty() && p.syscalls.is_empty() {
        return Err("it has neither a defaultAction nor syscalls".into());
    }
    if !p.architectures.is_empty() && !p.arch_map.is_empty() {
        return Err("both 'architectures' and 'archMap' are given; use one".into());
    }
    let mut arches = p.architectures.clone();
    if let Some(native) = host.seccomp_arch() {
        if let Some(m) = p.arch_map.iter().find(|m| m.architecture == native) {
            arches.push(m.architecture.clone());
            arches.extend(m.sub_architectures.iter().flatten().cloned());
        }
    }
    let kernel_at_least = |v: &str| -> Result<bool, String> {
        let want = parse_kernel(v).ok_or_else(|| format!("bad minKernel {v:?}"))?;
        Ok(host.kernel >= want)
    };

    let mut syscalls = Vec::new();
    'rules: for call in &p.syscalls {
        let names = match (call.name.is_empty(), call.names.is_empty()) {
            (false, false) => {
                return Err(format!(
                    "a rule for {} has both 'name' and 'names'",
                    call.name
                ))
            }
            (false, true) => vec![call.name.clone()],
            _ => call.names.clone(),
        };
        if let Some(ex) = &call.excludes {
            if ex.arches.iter().any(|a| a == host.arch) || ex.caps.iter().any(|c| caps.contains(c))
            {
                continue 'rules;
            }
            if let Some(k) = &ex.min_kernel {
                if kernel_at_least(k)? {
                    continue 'rules;
                }
            }
        }
        if let Some(inc) = &call.includes {
            if !inc.arches.is_empty() && !inc.arches.iter().any(|a| a == host.arch) {
                continue 'rules;
            }
            if !inc.caps.iter().all(|c| caps.contains(c)) {
                continue 'rules;
            }
            if let Some(k) = &inc.min_kernel {
                if !kernel_at_least(k)? {
                    continue 'rules;
                }
            }
        }
        let mut rule = json!({"names": names, "action": call.action});
        if let Some(e) = call.errno_ret {
            rule["errnoRet"] = json!(e);
        }
        if let Some(args) = &call.args {
            rule["args"] = json!(args);
        }
        syscalls.push(rule);
    }

    let mut doc = json!({
        "defaultAction": p.default_action,
        "syscalls": syscalls,
    });
    if let Some(e) = p.default_errno_ret {
        doc["defaultErrnoRet"] = json!(e);
    }
    if !arches.is_empty() {
        doc["architectures"] = json!(arches);
    }
    if !p.flags.is_empty() {
        doc["flags"] = json!(p.flags);
    }
    if let Some(l) = &p.listener_path {
        doc["listenerPath"] = json!(l);
    }
    serde_json::from_value(doc).map_err(|e| format!("translating to the OCI format: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn names(s: &LinuxSeccomp) -> Vec<String> {
        s.syscalls()
            .iter()
            .flatten()
            .flat_map(|r| r.names().to_vec())
            .collect()
    }

    const HOST: Host = Host {
        arch: "amd64",
        kernel: (6, 1),
    };

    #[test]
    fn default_profile_filters_by_caps_and_arch() {
        let plain = default_profile(&caps(&["CAP_CHOWN"]), &HOST).unwrap();
        assert_eq!(
            plain.default_action(),
            oci_spec::runtime::LinuxSeccompAction::ScmpActErrno
        );
        assert_eq!(plain.default_errno_ret(), Some(1));
        assert_eq!(
            plain.architectures().as_ref().unwrap().len(),
            3,
            "x86_64 + x86 + x32"
        );
        let n = names(&plain);
        assert!(n.iter().any(|s| s == "read"));
        assert!(n.iter().any(|s| s == "arch_prctl"), "amd64-only rule kept");
        assert!(
            !n.iter().any(|s| s == "mount"),
            "CAP_SYS_ADMIN rule dropped"
        );
        assert!(
            !n.iter().any(|s| s == "sync_file_range2"),
            "ppc64le rule dropped"
        );
        // clone3 answers ENOSYS without CAP_SYS_ADMIN.
        assert!(plain
            .syscalls()
            .iter()
            .flatten()
            .any(|r| *r.names() == ["clone3"] && r.errno_ret() == Some(38)));

        let admin = default_profile(&caps(&["CAP_SYS_ADMIN"]), &HOST).unwrap();
        let n = names(&admin);
        assert!(n.iter().any(|s| s == "mount"));
        assert!(!admin
            .syscalls()
            .iter()
            .flatten()
            .any(|r| *r.names() == ["clone3"] && r.errno_ret() == Some(38)));
    }

    #[test]
    fn min_kernel_and_custom_profiles() {
        let old = Host {
            arch: "amd64",
            kernel: (4, 4),
        };
        let n = names(&default_profile(&caps(&[]), &old).unwrap());
        assert!(!n.iter().any(|s| s == "ptrace"), "needs 4.8");
        let n = names(&default_profile(&caps(&[]), &HOST).unwrap());
        assert!(n.iter().any(|s| s == "ptrace"));

        let custom = r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"name":"mkdir","action":"SCMP_ACT_ERRNO","errnoRet":13}]}"#;
        let p = custom_profile(custom, &caps(&[]), &HOST).unwrap();
        assert_eq!(names(&p), ["mkdir"]);
        assert!(custom_profile("{}", &caps(&[]), &HOST).is_err());
        assert!(custom_profile("not json", &caps(&[]), &HOST)
            .unwrap_err()
            .contains("parsing"));
    }

    #[test]
    fn kernel_versions_parse() {
        assert_eq!(parse_kernel("6.18.0-rc1"), Some((6, 18)));
        assert_eq!(parse_kernel("4.8"), Some((4, 8)));
        assert_eq!(parse_kernel("x"), None);
    }
}
