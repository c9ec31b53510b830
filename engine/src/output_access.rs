//! Who may have the daemon write where.
//!
//! A local API client names an output path, and the daemon (often root)
//! would place the file there as itself: an init container with the socket
//! mounted could then write anywhere on the host. So a file the daemon
//! places itself (a request without `client_places`) must pass two checks:
//!
//! - **an allowed root**: the output's directory, symlinks resolved, lies
//!   under one of the daemon's `--output-root`s. Without one the daemon
//!   places nothing itself: `weightcast get` places its file as the
//!   calling user (from the cache path the daemon answers with), which
//!   needs no trust in the daemon at all, so the zero-config `get` works.
//! - **the client's own rights**: the client's uid and groups, from the
//!   kernel (`SO_PEERCRED`, `SO_PEERGROUPS`), must be able to search every
//!   directory above the output and write the output's directory, by the
//!   ordinary owner/group/other mode bits (and the sticky bit for an
//!   existing file). The placed file is then given to the client's uid and
//!   gid (when the daemon is root), as if the client had made it.
//!
//! The directory that was checked is the one written: it is opened once,
//! its identity compared with what was checked, and the file is placed
//! through that open directory (`/proc/self/fd/N/name`), so swapping a
//! path component for a symlink after the check changes nothing.

use std::ffi::OsString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The roots a daemon places outputs under (`--output-root`).
#[derive(Debug, Clone, Default)]
pub struct OutputPolicy {
    roots: Vec<PathBuf>,
}

impl OutputPolicy {
    /// The roots, resolved now (a root that does not exist is an error: it
    /// is a typo more often than not).
    pub fn new(roots: &[PathBuf]) -> std::io::Result<Self> {
        let roots = roots
            .iter()
            .map(|r| {
                std::fs::canonicalize(r).map_err(|e| {
                    std::io::Error::new(e.kind(), format!("--output-root {}: {e}", r.display()))
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { roots })
    }

    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }
}

/// Who is on the other end of a local API connection, as the kernel says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (empty where the kernel cannot say).
    pub groups: Vec<u32>,
}

/// `SO_PEERGROUPS` (Linux 4.13+; the same number on every architecture
/// but sparc and mips, which this project does not build for).
const SO_PEERGROUPS: libc::c_int = 59;
/// The most supplementary groups read (Linux allows 65536; a client with
/// more loses only the group bits of the ones past this).
const MAX_GROUPS: usize = 1024;

impl Client {
    /// The credentials of the process that connected `stream`.
    pub fn of(stream: &tokio::net::UnixStream) -> std::io::Result<Self> {
        let cred = stream.peer_cred()?;
        Ok(Self {
            uid: cred.uid(),
            gid: cred.gid(),
            groups: peer_groups(stream.as_raw_fd()),
        })
    }

    fn is_root(&self) -> bool {
        self.uid == 0
    }

    fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }

    /// Whether the mode bits of `meta` grant this client all of `want`
    /// (`0o1` search, `0o2` write, as "other" bits), the kernel's rule:
    /// the owner class if it owns the file, else the group class if it is
    /// in the file's group, else the other class.
    fn may(&self, meta: &std::fs::Metadata, want: u32) -> bool {
        if self.is_root() {
            return true;
        }
        let shift = if meta.uid() == self.uid {
            6
        } else if self.in_group(meta.gid()) {
            3
        } else {
            0
        };
        (meta.mode() >> shift) & want == want
    }
}

fn peer_groups(fd: libc::c_int) -> Vec<u32> {
    let mut groups = vec![0 as libc::gid_t; MAX_GROUPS];
    let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
    // SAFETY: the buffer is `len` bytes of gid_t, owned here for the call;
    // the kernel writes at most `len` bytes and sets `len` to what it wrote.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_PEERGROUPS,
            groups.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "SO_PEERGROUPS unavailable: only the client's primary group counts");
        return Vec::new();
    }
    groups.truncate(len as usize / std::mem::size_of::<libc::gid_t>());
    groups
}

/// Why the daemon will not place a file where a client asked.
#[derive(Debug, thiserror::Error)]
pub enum OutputDenied {
    #[error("this daemon places no file itself (it has no --output-root): let the client place it (weightcast get does), or start the daemon with --output-root DIR")]
    NoRoots,
    #[error("{path} is outside this daemon's output roots ({roots}): write under one of them, or let the client place the file itself")]
    OutsideRoots { path: PathBuf, roots: String },
    #[error("output {path} names no file in a directory")]
    NoFileName { path: PathBuf },
    #[error("the output's directory {path} does not exist or cannot be opened: create it first, as the user that will own it ({source})")]
    NoDirectory {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("uid {uid} may not search {path}: the daemon writes only where its client could")]
    NotSearchable { path: PathBuf, uid: u32 },
    #[error("uid {uid} may not write to {path}: the daemon writes only where its client could")]
    NotWritable { path: PathBuf, uid: u32 },
    #[error("{path} belongs to another user in a sticky directory: uid {uid} may not replace it")]
    StickyOther { path: PathBuf, uid: u32 },
    #[error("the output's directory {path} changed while it was checked: try again")]
    Moved { path: PathBuf },
}

/// An output the client may have the daemon write: its directory, open.
#[derive(Debug)]
pub struct Target {
    dir: File,
    name: OsString,
    /// The checked directory, symlinks resolved (for messages).
    pub dir_path: PathBuf,
    /// Who the placed file is given to; `None`: it stays the daemon's.
    pub owner: Option<(u32, u32)>,
}

impl Target {
    /// A path to the output through the open directory: what was checked
    /// is what is written, whatever happens to the path meanwhile.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.dir.as_raw_fd())).join(&self.name)
    }
}

/// Checks that `client` may have the daemon write `output`, under
/// `policy`'s roots; hands back the directory to place it through.
pub fn authorize(
    policy: &OutputPolicy,
    client: &Client,
    output: &Path,
) -> Result<Target, OutputDenied> {
    if policy.roots.is_empty() {
        return Err(OutputDenied::NoRoots);
    }
    let name = match output.file_name() {
        Some(n) if !output.as_os_str().as_encoded_bytes().ends_with(b"/") => n.to_os_string(),
        _ => {
            return Err(OutputDenied::NoFileName {
                path: output.to_path_buf(),
            })
        }
    };
    let parent = output.parent().unwrap_or(Path::new("/"));
    let no_dir = |source| OutputDenied::NoDirectory {
        path: parent.to_path_buf(),
        source,
    };
    let dir_path = std::fs::canonicalize(parent).map_err(no_dir)?;
    if !policy.roots.iter().any(|r| dir_path.starts_with(r)) {
        let roots = policy
            .roots
            .iter()
            .map(|r| r.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        return Err(OutputDenied::OutsideRoots {
            path: output.to_path_buf(),
            roots,
        });
    }
    // Every directory above must be searchable by the client.
    for above in dir_path.ancestors().skip(1) {
        let meta = std::fs::metadata(above).map_err(no_dir)?;
        if !client.may(&meta, 0o1) {
            return Err(OutputDenied::NotSearchable {
                path: above.to_path_buf(),
                uid: client.uid,
            });
        }
    }
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&dir_path)
        .map_err(no_dir)?;
    // The directory opened is the one whose path was resolved: no
    // component was swapped for a symlink in between.
    let opened =
        std::fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd())).map_err(no_dir)?;
    if opened != dir_path {
        return Err(OutputDenied::Moved { path: dir_path });
    }
    let meta = dir.metadata().map_err(no_dir)?;
    if !client.may(&meta, 0o3) {
        return Err(OutputDenied::NotWritable {
            path: dir_path,
            uid: client.uid,
        });
    }
    let target = Target {
        dir,
        name,
        dir_path,
        owner: None,
    };
    if meta.mode() & libc::S_ISVTX != 0 && !client.is_root() && meta.uid() != client.uid {
        if let Ok(existing) = std::fs::symlink_metadata(target.path()) {
            if existing.uid() != client.uid {
                return Err(OutputDenied::StickyOther {
                    path: output.to_path_buf(),
                    uid: client.uid,
                });
            }
        }
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let daemon_is_root = unsafe { libc::geteuid() } == 0;
    Ok(Target {
        owner: (daemon_is_root && !client.is_root()).then_some((client.uid, client.gid)),
        ..target
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn nobody() -> Client {
        Client {
            uid: 65534,
            gid: 65534,
            groups: vec![],
        }
    }

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn without_roots_the_daemon_places_nothing() {
        let d = tempfile::tempdir().unwrap();
        let e = authorize(&OutputPolicy::default(), &nobody(), &d.path().join("f")).unwrap_err();
        assert!(matches!(e, OutputDenied::NoRoots), "{e}");
    }

    #[test]
    fn outputs_outside_the_roots_are_refused_also_through_a_symlink() {
        let root = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        chmod(root.path(), 0o777);
        chmod(elsewhere.path(), 0o777);
        let policy = OutputPolicy::new(&[root.path().to_path_buf()]).unwrap();
        let root_client = Client {
            uid: 0,
            gid: 0,
            groups: vec![],
        };
        let e = authorize(&policy, &root_client, &elsewhere.path().join("f")).unwrap_err();
        assert!(matches!(e, OutputDenied::OutsideRoots { .. }), "{e}");
        std::os::unix::fs::symlink(elsewhere.path(), root.path().join("link")).unwrap();
        let e = authorize(&policy, &root_client, &root.path().join("link/f")).unwrap_err();
        assert!(matches!(e, OutputDenied::OutsideRoots { .. }), "{e}");
        let t = authorize(&policy, &root_client, &root.path().join("f")).unwrap();
        assert_eq!(t.owner, None, "a root client's file stays root's");
        assert!(t.path().starts_with("/proc/self/fd/"));
    }

    #[test]
    fn the_client_needs_write_on_the_directory_and_search_above_it() {
        let root = tempfile::tempdir().unwrap();
        let policy = OutputPolicy::new(&[root.path().to_path_buf()]).unwrap();
        chmod(root.path(), 0o755);
        let mine = root.path().join("mine");
        std::fs::create_dir(&mine).unwrap();
        std::os::unix::fs::chown(&mine, Some(65534), Some(65534)).unwrap();
        chmod(&mine, 0o700);
        let t = authorize(&policy, &nobody(), &mine.join("model.bin")).unwrap();
        assert_eq!(
            t.owner,
            Some((65534, 65534)),
            "the file is given to its client"
        );
        // root's own directory: no.
        let e = authorize(&policy, &nobody(), &root.path().join("model.bin")).unwrap_err();
        assert!(matches!(e, OutputDenied::NotWritable { .. }), "{e}");
        // A group-writable directory of the client's (supplementary) group.
        let team = root.path().join("team");
        std::fs::create_dir(&team).unwrap();
        std::os::unix::fs::chown(&team, Some(0), Some(4242)).unwrap();
        chmod(&team, 0o770);
        assert!(authorize(&policy, &nobody(), &team.join("f")).is_err());
        let member = Client {
            groups: vec![4242],
            ..nobody()
        };
        authorize(&policy, &member, &team.join("f")).unwrap();
        // The owner class decides for the owner, even when "other" could.
        chmod(&mine, 0o577);
        assert!(authorize(&policy, &nobody(), &mine.join("f")).is_err());
        chmod(&mine, 0o777);
        // A world-writable directory below one nobody cannot search.
        let closed = root.path().join("closed");
        std::fs::create_dir_all(closed.join("open")).unwrap();
        chmod(&closed, 0o700);
        chmod(&closed.join("open"), 0o777);
        let e = authorize(&policy, &nobody(), &closed.join("open/f")).unwrap_err();
        assert!(matches!(e, OutputDenied::NotSearchable { .. }), "{e}");
        // A missing directory is not created by the daemon.
        let e = authorize(&policy, &nobody(), &mine.join("no/such/f")).unwrap_err();
        assert!(matches!(e, OutputDenied::NoDirectory { .. }), "{e}");
        let e = authorize(&policy, &nobody(), Path::new("/")).unwrap_err();
        assert!(matches!(e, OutputDenied::NoFileName { .. }), "{e}");
    }

    #[test]
    fn a_sticky_directory_protects_other_users_files() {
        let root = tempfile::tempdir().unwrap();
        let policy = OutputPolicy::new(&[root.path().to_path_buf()]).unwrap();
        chmod(root.path(), 0o755);
        let tmp = root.path().join("tmp");
        std::fs::create_dir(&tmp).unwrap();
        chmod(&tmp, 0o1777);
        std::fs::write(tmp.join("roots"), b"x").unwrap();
        let e = authorize(&policy, &nobody(), &tmp.join("roots")).unwrap_err();
        assert!(matches!(e, OutputDenied::StickyOther { .. }), "{e}");
        authorize(&policy, &nobody(), &tmp.join("new")).unwrap();
    }

    #[test]
    fn a_placed_file_is_the_clients_and_lands_in_the_checked_directory() {
        let root = tempfile::tempdir().unwrap();
        chmod(root.path(), 0o755);
        let policy = OutputPolicy::new(&[root.path().to_path_buf()]).unwrap();
        let mine = root.path().join("mine");
        std::fs::create_dir(&mine).unwrap();
        std::os::unix::fs::chown(&mine, Some(65534), Some(65534)).unwrap();
        let t = authorize(&policy, &nobody(), &mine.join("model.bin")).unwrap();
        // The path is swapped for another directory after the check: the
        // file still lands in the one that was checked.
        std::fs::rename(&mine, root.path().join("moved")).unwrap();
        std::fs::create_dir(&mine).unwrap();
        let cache = root.path().join("cache");
        std::fs::write(&cache, b"weights").unwrap();
        weightcast_store::export::place_owned(&cache, &t.path(), t.owner).unwrap();
        assert!(!mine.join("model.bin").exists());
        let placed = root.path().join("moved/model.bin");
        assert_eq!(std::fs::read(&placed).unwrap(), b"weights");
        let meta = std::fs::metadata(&placed).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
    }
}
