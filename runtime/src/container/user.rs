//! Resolves a Docker `user` string against the image's /etc/passwd and /etc/group.
//!
//! Rules follow Docker (moby/sys/user): `""` is root; `name` must exist in
//! passwd; a numeric uid need not exist (gid 0 then); `user:group` takes the
//! group by name (must exist) or number; without an explicit group the user's
//! primary group applies plus every group listing the user as a member.
//!
//! What it must never do: follow a symlink out of the container's rootfs
//! (files are resolved with `safe_path::scoped_join`).

use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

fn read_in_rootfs(rootfs: &Path, rel: &str) -> Result<String, String> {
    let path = safe_path::scoped_join(rootfs, rel)
        .map_err(|e| format!("resolving {rel} in {}: {e}", rootfs.display()))?;
    match std::fs::read(&path) {
        Ok(b) => Ok(String::from_utf8_lossy(&b).into_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(format!("reading {}: {e}", path.display())),
    }
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(PasswdEntry {
                name: f.first()?.to_string(),
                uid: f.get(2)?.parse().ok()?,
                gid: f.get(3)?.parse().ok()?,
            })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(GroupEntry {
                name: f.first()?.to_string(),
                gid: f.get(2)?.parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .filter(|s| !s.is_empty())
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

pub(crate) fn resolve(rootfs: &Path, spec: &str) -> Result<ResolvedUser, String> {
    let passwd = parse_passwd(&read_in_rootfs(rootfs, "etc/passwd")?);
    let groups = parse_group(&read_in_rootfs(rootfs, "etc/group")?);
    resolve_with(&passwd, &groups, spec)
}

/// `group_add` entries: numbers as they are, names from the image's /etc/group.
pub(crate) fn resolve_groups(rootfs: &Path, names: &[String]) -> Result<Vec<u32>, String> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let groups = parse_group(&read_in_rootfs(rootfs, "etc/group")?);
    groups_with(&groups, names)
}

fn groups_with(groups: &[GroupEntry], names: &[String]) -> Result<Vec<u32>, String> {
    names
        .iter()
        .map(|n| match n.parse::<u32>() {
            Ok(g) => Ok(g),
            Err(_) => groups
                .iter()
                .find(|g| g.name == *n)
                .map(|g| g.gid)
                .ok_or_else(|| {
                    format!("unable to find group {n}: no matching entries in group file")
                }),
        })
        .collect()
}

fn resolve_with(
    passwd: &[PasswdEntry],
    groups: &[GroupEntry],
    spec: &str,
) -> Result<ResolvedUser, String> {
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let mut uid = 0;
    let mut gid = 0;
    let mut name: Option<&str> = None;
    let found = if user_part.is_empty() {
        passwd.iter().find(|p| p.uid == 0)
    } else if let Ok(n) = user_part.parse::<u32>() {
        uid = n;
        passwd.iter().find(|p| p.uid == n)
    } else {
        let p = passwd.iter().find(|p| p.name == user_part).ok_or_else(|| {
            format!("unable to find user {user_part}: no matching entries in passwd file")
        })?;
        Some(p)
    };
    if let Some(p) = found {
        uid = p.uid;
        gid = p.gid;
        name = Some(&p.name);
    }
    let mut additional_gids = Vec::new();
    match group_part {
        Some(g) if !g.is_empty() => {
            gid = match g.parse::<u32>() {
                Ok(n) => n,
                Err(_) => {
                    groups
                        .iter()
                        .find(|e| e.name == g)
                        .ok_or_else(|| {
                            format!("unable to find group {g}: no matching entries in group file")
                        })?
                        .gid
                }
            };
        }
        _ => {
            if let Some(n) = name {
                for g in groups.iter().filter(|g| g.members.iter().any(|m| m == n)) {
                    if g.gid != gid && !additional_gids.contains(&g.gid) {
                        additional_gids.push(g.gid);
                    }
                }
            }
        }
    }
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> (Vec<PasswdEntry>, Vec<GroupEntry>) {
        (
            parse_passwd("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n"),
            parse_group("root:x:0:\napp:x:1000:\nwheel:x:10:app,other\nstaff:x:50:\n"),
        )
    }

    #[test]
    fn resolves_like_docker() {
        let (p, g) = db();
        let r = |s| resolve_with(&p, &g, s);
        assert_eq!(
            r("").unwrap(),
            ResolvedUser {
                uid: 0,
                gid: 0,
                additional_gids: vec![]
            }
        );
        assert_eq!(
            r("app").unwrap(),
            ResolvedUser {
                uid: 1000,
                gid: 1000,
                additional_gids: vec![10]
            }
        );
        assert_eq!(
            r("1000").unwrap(),
            ResolvedUser {
                uid: 1000,
                gid: 1000,
                additional_gids: vec![10]
            }
        );
        assert_eq!(
            r("4242").unwrap(),
            ResolvedUser {
                uid: 4242,
                gid: 0,
                additional_gids: vec![]
            }
        );
        assert_eq!(
            r("4242:77").unwrap(),
            ResolvedUser {
                uid: 4242,
                gid: 77,
                additional_gids: vec![]
            }
        );
        assert_eq!(
            r("app:staff").unwrap(),
            ResolvedUser {
                uid: 1000,
                gid: 50,
                additional_gids: vec![]
            }
        );
        assert!(r("nobody")
            .unwrap_err()
            .contains("unable to find user nobody"));
        assert_eq!(
            groups_with(&g, &["staff".into(), "4000".into()]).unwrap(),
            vec![50, 4000]
        );
        assert!(groups_with(&g, &["nope".into()]).is_err());
        assert!(r("app:nogroup")
            .unwrap_err()
            .contains("unable to find group"));
    }
}
