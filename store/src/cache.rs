//! The bounded cache: how much the store may hold, and which tasks go when
//! it is full.
//!
//! - **size**: the bytes of every task on disk (each data file is
//!   preallocated to its length) stay within [`CachePolicy::max_bytes`].
//!   A new task makes room first; one that cannot fit even then (the rest
//!   is in use) is refused with [`StoreError::CacheFull`], never written
//!   past the bound.
//! - **watermarks**: above the high watermark, the least recently used
//!   tasks are evicted until the cache is below the low watermark, so that
//!   a full cache does not evict one task per new one.
//! - **TTL**: a task unused for longer than [`CachePolicy::ttl`] is evicted
//!   whatever the size.
//! - **never evicted**: a task in use — open with a holder besides the
//!   store (a download writing it, an upload sending one of its pieces, a
//!   streaming reader), reported in use by the [`CacheHooks`] (a download
//!   running, which has not opened the file yet), or pinned (`get --pin`).
//!
//! "Used" is a `used` marker's mtime in the task directory, touched when a
//! task is created, hit, or served (at most once a minute per task), so the
//! order survives a restart.

use crate::error::{io_err, StoreError};
use crate::layout::{StoreLayout, TaskDir};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::{Duration, SystemTime};
use weightcast_types::TaskId;

/// What bounds the cache. The default bounds nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct CachePolicy {
    /// The most bytes the tasks may hold; `None`: no bound.
    pub max_bytes: Option<u64>,
    /// Eviction starts above this fraction of `max_bytes`...
    pub high_watermark: f64,
    /// ...and goes on until usage is below this fraction.
    pub low_watermark: f64,
    /// Tasks unused for longer than this are evicted.
    pub ttl: Option<Duration>,
}

impl Default for CachePolicy {
    fn default() -> Self {
        Self {
            max_bytes: None,
            high_watermark: 0.9,
            low_watermark: 0.8,
            ttl: None,
        }
    }
}

impl CachePolicy {
    /// Whether there is anything to collect at all.
    pub fn is_bounded(&self) -> bool {
        self.max_bytes.is_some() || self.ttl.is_some()
    }

    fn high_bytes(&self) -> Option<u64> {
        self.max_bytes
            .map(|m| (m as f64 * self.high_watermark.clamp(0.0, 1.0)) as u64)
    }

    fn low_bytes(&self) -> Option<u64> {
        let low = self
            .low_watermark
            .clamp(0.0, self.high_watermark.clamp(0.0, 1.0));
        self.max_bytes.map(|m| (m as f64 * low) as u64)
    }
}

/// `--cache-size`: bytes (`50GiB`) or a share of the data dir's filesystem (`80%`).
pub fn parse_cache_size(s: &str, data_dir: &Path) -> Result<u64, String> {
    let s = s.trim();
    if let Some(pct) = s.strip_suffix('%') {
        let pct: f64 = pct
            .trim()
            .parse()
            .ok()
            .filter(|p: &f64| *p > 0.0 && *p <= 100.0)
            .ok_or_else(|| format!("invalid --cache-size {s:?}: a percentage is 1% to 100%"))?;
        let total = filesystem_bytes(data_dir).map_err(|e| {
            format!(
                "--cache-size {s}: cannot read the size of the filesystem of {}: {e}",
                data_dir.display()
            )
        })?;
        return Ok((total as f64 * pct / 100.0) as u64);
    }
    weightcast_types::byte_size::parse(s)
        .map_err(|e| format!("invalid --cache-size {s:?}: {e} (bytes like 50GiB, or 80%)"))
}

/// The size of the filesystem holding `dir`.
fn filesystem_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: statvfs fills the zeroed struct it is given, from a NUL-ended path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above; both pointers are valid for the call.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // The field types differ by platform (u32 on 32-bit ones).
    #[allow(clippy::unnecessary_cast)]
    let (blocks, frsize) = (st.f_blocks as u64, st.f_frsize as u64);
    Ok(blocks.saturating_mul(frsize))
}

/// What the store asks the engine about its tasks.
pub trait CacheHooks: Send + Sync {
    /// A download of the task runs (it may not have opened the file yet).
    fn in_use(&self, id: &TaskId) -> bool;
    /// The task was evicted: forget it elsewhere (RDMA region, scheduler).
    fn evicted(&self, id: &TaskId);
}

/// One task in the cache, as `weightcast cache ls` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CacheEntry {
    pub task_id: String,
    pub url: String,
    pub bytes: u64,
    pub complete: bool,
    pub pinned: bool,
    pub in_use: bool,
    /// Seconds since the task was last used.
    pub idle_seconds: u64,
}

/// The cache's state: its entries, what they hold, the bound.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct CacheReport {
    pub entries: Vec<CacheEntry>,
    pub used_bytes: u64,
    pub max_bytes: Option<u64>,
    /// Tasks evicted by the operation that made this report.
    #[serde(default)]
    pub evicted: Vec<String>,
}

/// Why a task went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvictReason {
    Expired,
    Size,
}

/// A task directory as the collector sees it.
#[derive(Debug, Clone)]
pub(crate) struct OnDisk {
    pub id: TaskId,
    pub url: String,
    pub bytes: u64,
    pub pinned: bool,
    pub last_used: SystemTime,
}

impl TaskDir {
    pub(crate) fn used_marker(&self) -> std::path::PathBuf {
        self.path().join("used")
    }

    pub(crate) fn pin_marker(&self) -> std::path::PathBuf {
        self.path().join("pinned")
    }

    /// Marks the task used now.
    pub(crate) fn touch(&self) {
        let path = self.used_marker();
        let now = SystemTime::now();
        let r = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(now));
        if let Err(e) = r {
            tracing::debug!(path = %path.display(), error = %e, "cannot mark a task used");
        }
    }

    pub(crate) fn set_pinned(&self, pinned: bool) -> Result<(), StoreError> {
        let path = self.pin_marker();
        if pinned {
            std::fs::write(&path, b"").map_err(io_err(&path))
        } else {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(&path)(e)),
                _ => Ok(()),
            }
        }
    }

    fn last_used(&self) -> SystemTime {
        [self.used_marker(), self.meta()]
            .iter()
            .find_map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .unwrap_or(SystemTime::UNIX_EPOCH)
    }
}

/// Every task directory with a readable `meta.json`.
pub(crate) fn scan(layout: &StoreLayout) -> Vec<OnDisk> {
    let Ok(dirs) = std::fs::read_dir(layout.tasks_dir()) else {
        return Vec::new();
    };
    dirs.filter_map(|e| {
        let e = e.ok()?;
        let id: TaskId = e.file_name().to_str()?.parse().ok()?;
        let dir = layout.task(&id);
        let meta = dir.read_meta()?;
        Some(OnDisk {
            id,
            url: meta.url,
            bytes: meta.content_length,
            pinned: dir.pin_marker().exists(),
            last_used: dir.last_used(),
        })
    })
    .collect()
}

/// Which of `tasks` to evict so that `reserve` more bytes fit: the expired
/// ones, then, above the high watermark (or when the reserve would not fit
/// under the bound), the least recently used until usage plus the reserve
/// is below the low watermark. `in_use(id)`: the task may not go.
pub(crate) fn choose_victims(
    policy: &CachePolicy,
    tasks: &[OnDisk],
    reserve: u64,
    now: SystemTime,
    in_use: impl Fn(&TaskId) -> bool,
) -> Vec<(TaskId, EvictReason)> {
    let mut used: u64 = tasks.iter().map(|t| t.bytes).sum();
    let mut candidates: Vec<&OnDisk> = tasks
        .iter()
        .filter(|t| !t.pinned && !in_use(&t.id))
        .collect();
    candidates.sort_by_key(|t| t.last_used);
    let mut victims = Vec::new();
    if let Some(ttl) = policy.ttl {
        candidates.retain(|t| {
            let expired = now.duration_since(t.last_used).unwrap_or_default() > ttl;
            if expired {
                used -= t.bytes;
                victims.push((t.id, EvictReason::Expired));
            }
            !expired
        });
    }
    let (Some(max), Some(high), Some(low)) =
        (policy.max_bytes, policy.high_bytes(), policy.low_bytes())
    else {
        return victims;
    };
    // The high watermark is at most the bound itself.
    if used.saturating_add(reserve) <= high.min(max) {
        return victims;
    }
    for t in candidates {
        if used.saturating_add(reserve) <= low {
            break;
        }
        used -= t.bytes;
        victims.push((t.id, EvictReason::Size));
    }
    victims
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(n: u8, bytes: u64, age_s: u64, now: SystemTime) -> OnDisk {
        OnDisk {
            id: TaskId([n; 32]),
            url: format!("u{n}"),
            bytes,
            pinned: false,
            last_used: now - Duration::from_secs(age_s),
        }
    }

    #[test]
    fn the_least_recently_used_go_first_down_to_the_low_watermark() {
        let now = SystemTime::now();
        let policy = CachePolicy {
            max_bytes: Some(100),
            ..Default::default()
        };
        let tasks = vec![
            task(1, 30, 10, now),
            task(2, 30, 30, now),
            task(3, 30, 20, now),
        ];
        // 90 used: not above the high watermark (90).
        assert!(choose_victims(&policy, &tasks, 0, now, |_| false).is_empty());
        // 30 more would be 120: evict the oldest until 80 holds with them.
        assert_eq!(
            choose_victims(&policy, &tasks, 20, now, |_| false),
            vec![(TaskId([2; 32]), EvictReason::Size)]
        );
        let v = choose_victims(&policy, &tasks, 30, now, |_| false);
        assert_eq!(
            v,
            vec![
                (TaskId([2; 32]), EvictReason::Size),
                (TaskId([3; 32]), EvictReason::Size)
            ]
        );
    }

    #[test]
    fn tasks_in_use_or_pinned_are_never_chosen_and_the_ttl_expires_others() {
        let now = SystemTime::now();
        let mut tasks = vec![
            task(1, 50, 1000, now),
            task(2, 50, 900, now),
            task(3, 50, 5, now),
        ];
        tasks[1].pinned = true;
        let policy = CachePolicy {
            max_bytes: Some(100),
            ttl: Some(Duration::from_secs(60)),
            ..Default::default()
        };
        let v = choose_victims(&policy, &tasks, 0, now, |id| *id == TaskId([1; 32]));
        // Task 1 is old but in use, task 2 pinned: only task 3 can go, and
        // it is fresh, but 150 > 90 so it goes for size.
        assert_eq!(v, vec![(TaskId([3; 32]), EvictReason::Size)]);
        let v = choose_victims(&policy, &tasks, 0, now, |_| false);
        assert_eq!(v[0], (TaskId([1; 32]), EvictReason::Expired));
        assert!(!v.iter().any(|(id, _)| *id == TaskId([2; 32])));
    }

    #[test]
    fn an_unbounded_policy_evicts_nothing() {
        let now = SystemTime::now();
        let tasks = vec![task(1, u64::MAX / 2, 1 << 30, now)];
        assert!(
            choose_victims(&CachePolicy::default(), &tasks, u64::MAX / 2, now, |_| {
                false
            })
            .is_empty()
        );
        assert!(!CachePolicy::default().is_bounded());
    }

    #[test]
    fn sizes_parse_as_bytes_or_a_share_of_the_filesystem() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(parse_cache_size("10MiB", d.path()).unwrap(), 10 << 20);
        let half = parse_cache_size("50%", d.path()).unwrap();
        let all = parse_cache_size("100%", d.path()).unwrap();
        assert!(
            half > 0 && half <= all && all - 2 * half <= 1,
            "{half} {all}"
        );
        assert!(parse_cache_size("0%", d.path()).is_err());
        assert!(parse_cache_size("101%", d.path()).is_err());
        assert!(parse_cache_size("lots", d.path()).is_err());
    }
}
