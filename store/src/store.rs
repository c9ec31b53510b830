//! The store: opens task files on demand (resuming what is on disk when it
//! fits, else creating and preallocating), keeps the open ones shared, and
//! deletes a task whose content turned out wrong.

use crate::cache::{self, CacheEntry, CacheHooks, CachePolicy, CacheReport, EvictReason};
use crate::error::{io_err, StoreError};
use crate::layout::{StoreLayout, TaskMeta};
use crate::resident::DEFAULT_WINDOW;
use crate::task_file::TaskFile;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime};
use weightcast_types::piece::PieceLayout;
use weightcast_types::TaskId;

/// A served task's `used` marker is touched at most this often.
const TOUCH_EVERY: Duration = Duration::from_secs(60);

pub struct Store {
    layout: StoreLayout,
    open: Mutex<HashMap<TaskId, Arc<TaskFile>>>,
    /// Bytes of verified pieces each task file keeps mapped (see
    /// [`resident`](crate::resident)); 0 keeps everything.
    mapped_window: u64,
    policy: CachePolicy,
    hooks: OnceLock<Arc<dyn CacheHooks>>,
    /// One collection (or admission) at a time: two new tasks cannot both
    /// take the last free bytes.
    collecting: Mutex<()>,
    touched: Mutex<HashMap<TaskId, Instant>>,
    evictions: AtomicU64,
}

/// Why `weightcast cache rm` did not remove a task.
#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    #[error("task {0} is in use (downloading, being served or read): try again when it is idle")]
    InUse(TaskId),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Store {
    pub fn new(data_dir: &Path) -> Result<Self, StoreError> {
        Self::with_policy(data_dir, CachePolicy::default())
    }

    /// A store whose tasks stay within `policy`.
    pub fn with_policy(data_dir: &Path, policy: CachePolicy) -> Result<Self, StoreError> {
        let layout = StoreLayout::new(data_dir);
        std::fs::create_dir_all(layout.tasks_dir()).map_err(io_err(layout.tasks_dir()))?;
        Ok(Self {
            layout,
            open: Mutex::new(HashMap::new()),
            mapped_window: DEFAULT_WINDOW,
            policy,
            hooks: OnceLock::new(),
            collecting: Mutex::new(()),
            touched: Mutex::new(HashMap::new()),
            evictions: AtomicU64::new(0),
        })
    }

    /// Keeps `bytes` of verified pieces mapped per task file instead of
    /// [`DEFAULT_WINDOW`]; 0 never releases a page (the kernel alone
    /// decides, and a container's memory limit counts every page touched).
    pub fn with_mapped_window(mut self, bytes: u64) -> Self {
        self.mapped_window = bytes;
        self
    }

    pub fn policy(&self) -> &CachePolicy {
        &self.policy
    }

    /// What the engine is asked about tasks before they go (set once).
    pub fn set_hooks(&self, hooks: Arc<dyn CacheHooks>) {
        if self.hooks.set(hooks).is_err() {
            tracing::warn!("the store's cache hooks were set twice; keeping the first");
        }
    }

    /// Tasks evicted since start.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// Whether a task may not be evicted now: a download runs, or its file
    /// is held by someone besides the store (a writer, a piece being
    /// served, a streaming reader).
    pub fn in_use(&self, id: &TaskId) -> bool {
        if self.hooks.get().is_some_and(|h| h.in_use(id)) {
            return true;
        }
        self.open_tasks()
            .get(id)
            .is_some_and(|t| Arc::strong_count(t) > 1)
    }

    /// Marks a task used (for the LRU order), at most once a minute.
    pub fn note_used(&self, id: &TaskId) {
        let now = Instant::now();
        {
            let mut touched = self.touched.lock().unwrap_or_else(|p| p.into_inner());
            if touched.get(id).is_some_and(|t| now - *t < TOUCH_EVERY) {
                return;
            }
            if touched.len() > 65536 {
                touched.clear();
            }
            touched.insert(*id, now);
        }
        self.layout.task(id).touch();
    }

    /// Evicts what the policy says must go, so that `reserve` more bytes
    /// fit; the tasks evicted.
    pub fn collect(&self, reserve: u64) -> Vec<(TaskId, EvictReason)> {
        let _one = self.collecting.lock().unwrap_or_else(|p| p.into_inner());
        self.collect_locked(reserve).0
    }

    /// [`Store::collect`] under the collection lock; also the bytes held after.
    fn collect_locked(&self, reserve: u64) -> (Vec<(TaskId, EvictReason)>, u64) {
        let tasks = cache::scan(&self.layout);
        let victims =
            cache::choose_victims(&self.policy, &tasks, reserve, SystemTime::now(), |id| {
                self.in_use(id)
            });
        let mut used: u64 = tasks.iter().map(|t| t.bytes).sum();
        for (id, why) in &victims {
            // Checked again: a task may have been taken up meanwhile.
            if self.in_use(id) {
                continue;
            }
            let bytes = tasks.iter().find(|t| t.id == *id).map_or(0, |t| t.bytes);
            self.discard(id);
            used = used.saturating_sub(bytes);
            self.evictions.fetch_add(1, Ordering::Relaxed);
            tracing::info!(task = %id, bytes, reason = ?why, "evicted from the cache");
            if let Some(h) = self.hooks.get() {
                h.evicted(id);
            }
        }
        (victims, used)
    }

    /// Makes room for a new task of `bytes` (replacing whatever `id` held),
    /// or says why there is none.
    fn admit(&self, id: &TaskId, bytes: u64) -> Result<(), StoreError> {
        let Some(max) = self.policy.max_bytes else {
            return Ok(());
        };
        if bytes > max {
            // No eviction can make room: evict nothing for it.
            return Err(StoreError::CacheFull {
                bytes,
                max,
                held: self.report().used_bytes,
            });
        }
        let _one = self.collecting.lock().unwrap_or_else(|p| p.into_inner());
        // The task's own old files are replaced, not kept beside.
        let own = self.peek_meta(id).map_or(0, |m| m.content_length);
        let (_, used) = self.collect_locked(bytes.saturating_sub(own));
        let used = used.saturating_sub(own);
        if used.saturating_add(bytes) > max {
            return Err(StoreError::CacheFull {
                bytes,
                max,
                held: used,
            });
        }
        Ok(())
    }

    /// Keeps a task from eviction (`get --pin`), or lets it go again.
    pub fn pin(&self, id: &TaskId, pinned: bool) -> Result<(), StoreError> {
        self.layout.task(id).set_pinned(pinned)
    }

    /// Removes a task that is not in use (`weightcast cache rm`), pinned or
    /// not; `false` when there was none.
    pub fn remove(&self, id: &TaskId) -> Result<bool, RemoveError> {
        let _one = self.collecting.lock().unwrap_or_else(|p| p.into_inner());
        if self.in_use(id) {
            return Err(RemoveError::InUse(*id));
        }
        let held = self.layout.task(id).path().exists();
        if held {
            self.discard(id);
            if let Some(h) = self.hooks.get() {
                h.evicted(id);
            }
        }
        Ok(held)
    }

    /// Every task on disk, least recently used first.
    pub fn report(&self) -> CacheReport {
        let now = SystemTime::now();
        let mut tasks = cache::scan(&self.layout);
        tasks.sort_by_key(|t| t.last_used);
        let entries: Vec<CacheEntry> = tasks
            .into_iter()
            .map(|t| CacheEntry {
                task_id: t.id.to_hex(),
                complete: self.is_complete_on_disk(&t.id),
                in_use: self.in_use(&t.id),
                url: t.url,
                bytes: t.bytes,
                pinned: t.pinned,
                idle_seconds: now
                    .duration_since(t.last_used)
                    .unwrap_or_default()
                    .as_secs(),
            })
            .collect();
        CacheReport {
            used_bytes: entries.iter().map(|e| e.bytes).sum(),
            max_bytes: self.policy.max_bytes,
            entries,
            evicted: Vec::new(),
        }
    }

    /// Whether a task is complete, by its open file or its piece table on
    /// disk (without re-hashing it).
    fn is_complete_on_disk(&self, id: &TaskId) -> bool {
        if let Some(t) = self.get(id) {
            return t.is_complete();
        }
        crate::task_file::table_says_complete(&self.layout.task(id))
    }

    /// The open tasks; a panic while the map was held left it whole.
    fn open_tasks(&self) -> MutexGuard<'_, HashMap<TaskId, Arc<TaskFile>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An open task, if this process has it open.
    /// Flushes every open task's piece table (at shutdown).
    pub fn sync(&self) {
        let open: Vec<Arc<TaskFile>> = self
            .open
            .lock()
            .map(|o| o.values().cloned().collect())
            .unwrap_or_default();
        for t in open {
            t.sync();
        }
    }

    pub fn get(&self, id: &TaskId) -> Option<Arc<TaskFile>> {
        self.open_tasks().get(id).cloned()
    }

    /// Opens the task's file, resuming what is on disk when its metadata
    /// matches, else creating and preallocating it.
    pub fn open_or_create(
        &self,
        id: TaskId,
        url: &str,
        content_length: u64,
    ) -> Result<Arc<TaskFile>, StoreError> {
        if let Some(t) = self.get(&id) {
            if t.layout.content_length == content_length {
                return Ok(t);
            }
        }
        let dir = self.layout.task(&id);
        let meta = TaskMeta {
            url: url.to_string(),
            content_length,
            piece_size: PieceLayout::for_length(content_length).piece_size,
        };
        let file = match dir.read_meta() {
            Some(on_disk) if on_disk.resumable_as(&meta) => {
                TaskFile::resume(id, dir.clone(), &meta, self.mapped_window)?
            }
            _ => {
                self.admit(&id, content_length)?;
                TaskFile::create(id, dir.clone(), &meta, self.mapped_window)?
            }
        };
        dir.touch();
        let mut open = self.open_tasks();
        // Someone opened the same task meanwhile: one TaskFile per task, so
        // that one claim table guards its pieces.
        if let Some(t) = open.get(&id) {
            if t.layout.content_length == content_length {
                return Ok(t.clone());
            }
        }
        open.insert(id, file.clone());
        Ok(file)
    }

    /// The metadata of a task on disk, without opening it.
    pub fn peek_meta(&self, id: &TaskId) -> Option<TaskMeta> {
        self.layout.task(id).read_meta()
    }

    /// A task on disk that is complete, opened (for cache hits).
    pub fn open_complete(&self, id: TaskId) -> Option<Arc<TaskFile>> {
        if let Some(t) = self.get(&id) {
            if t.is_complete() {
                self.layout.task(&id).touch();
            }
            return t.is_complete().then_some(t);
        }
        let meta = self.peek_meta(&id)?;
        let t = self
            .open_or_create(id, &meta.url, meta.content_length)
            .ok()?;
        t.is_complete().then_some(t)
    }

    /// Records that the task is shared with the swarm, so that after a
    /// restart this peer tells its scheduler it holds it.
    pub fn mark_shared(&self, id: &TaskId) -> Result<(), StoreError> {
        let path = self.layout.task(id).shared_marker();
        std::fs::write(&path, b"").map_err(io_err(&path))
    }

    /// The swarm tasks on disk (see [`Store::mark_shared`]), complete or
    /// not; unreadable entries are skipped.
    pub fn shared_on_disk(&self) -> Vec<TaskId> {
        let Ok(entries) = std::fs::read_dir(self.layout.tasks_dir()) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<TaskId>().ok())
            .filter(|id| self.layout.task(id).shared_marker().exists())
            .collect()
    }

    /// The open tasks that are complete.
    pub fn open_complete_tasks(&self) -> Vec<Arc<TaskFile>> {
        self.open_tasks()
            .values()
            .filter(|t| t.is_complete())
            .cloned()
            .collect()
    }

    /// Whether the task is shared with the swarm (see [`Store::mark_shared`]).
    pub fn is_shared(&self, id: &TaskId) -> bool {
        self.layout.task(id).shared_marker().exists()
    }

    /// Deletes a task whose content turned out wrong, so a retry starts
    /// clean. Files still open (an upload in progress) keep their bytes
    /// until they are dropped.
    pub fn discard(&self, id: &TaskId) {
        let mut open = self.open_tasks();
        open.remove(id);
        // Under the lock: nobody resumes the directory while it goes.
        self.layout.task(id).remove();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreError;
    use std::fs::OpenOptions;
    use std::os::unix::fs::FileExt;
    use weightcast_types::piece::MIN_PIECE_SIZE;
    use weightcast_types::WritePermit;

    #[test]
    fn a_bounded_store_evicts_idle_tasks_never_held_or_pinned_ones() {
        let dir = tempfile::tempdir().unwrap();
        let policy = CachePolicy {
            max_bytes: Some(250),
            ..Default::default()
        };
        let store = Store::with_policy(dir.path(), policy).unwrap();
        let id = |n: &str| TaskId::from_url(n);
        let a = store.open_or_create(id("a"), "a", 100).unwrap();
        a.begin_write(0).unwrap().commit(None).unwrap();
        drop(a);
        std::thread::sleep(Duration::from_millis(5));
        let b = store.open_or_create(id("b"), "b", 100).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        // 300 would pass the high watermark (225): the idle, least recently
        // used task goes; the held one stays.
        let c = store.open_or_create(id("c"), "c", 100).unwrap();
        assert!(
            store.peek_meta(&id("a")).is_none(),
            "the idle task was evicted"
        );
        assert!(store.peek_meta(&id("b")).is_some());
        assert!(store.in_use(&id("b")), "held by this test");
        // Everything held: no room, and nothing written past the bound.
        let e = store.open_or_create(id("d"), "d", 100).err().unwrap();
        assert!(matches!(e, StoreError::CacheFull { held: 200, .. }), "{e}");
        assert!(store.peek_meta(&id("d")).is_none());
        // A pinned task stays when it is idle too.
        drop((b, c));
        store.pin(&id("b"), true).unwrap();
        let d = store.open_or_create(id("d"), "d", 100).unwrap();
        assert!(store.peek_meta(&id("b")).is_some(), "pinned");
        assert!(store.peek_meta(&id("c")).is_none(), "idle, unpinned");
        assert_eq!(store.evictions(), 2);
        let report = store.report();
        assert_eq!(report.used_bytes, 200);
        assert!(report.entries.iter().any(|e| e.pinned && e.url == "b"));
        // rm: a held task is refused, an idle pinned one goes.
        assert!(matches!(store.remove(&id("d")), Err(RemoveError::InUse(_))));
        drop(d);
        assert!(store.remove(&id("d")).unwrap());
        assert!(store.remove(&id("b")).unwrap());
        assert!(!store.remove(&id("b")).unwrap(), "already gone");
    }

    #[test]
    fn the_ttl_evicts_idle_tasks_only() {
        let dir = tempfile::tempdir().unwrap();
        let policy = CachePolicy {
            ttl: Some(Duration::from_millis(1)),
            ..Default::default()
        };
        let store = Store::with_policy(dir.path(), policy).unwrap();
        drop(
            store
                .open_or_create(TaskId::from_url("idle"), "idle", 10)
                .unwrap(),
        );
        let held = store
            .open_or_create(TaskId::from_url("held"), "held", 10)
            .unwrap();
        std::thread::sleep(Duration::from_millis(10));
        let gone = store.collect(0);
        assert_eq!(gone, vec![(TaskId::from_url("idle"), EvictReason::Expired)]);
        assert!(store.peek_meta(&held.id).is_some());
    }

    #[test]
    fn pieces_are_written_once_verified_and_persisted_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let id = TaskId::from_url("u");
        let len = MIN_PIECE_SIZE * 2 + 5;
        {
            let store = Store::new(dir.path()).unwrap();
            let t = store.open_or_create(id, "u", len).unwrap();
            let mut w = t.begin_write(0).unwrap();
            assert!(t.begin_write(0).is_none(), "one writer per piece");
            assert!(
                t.verified_piece(0).is_none(),
                "no reader while it is written"
            );
            w.buf().fill(1);
            w.commit(None).unwrap();
            assert!(
                t.begin_write(0).is_none(),
                "verified pieces are never rewritten"
            );
            let mut w = t.begin_write(2).unwrap();
            assert_eq!(
                w.range(),
                2 * MIN_PIECE_SIZE..len,
                "the permit names the piece"
            );
            w.buf().fill(2);
            let wrong = [0u8; 32];
            assert!(matches!(
                w.commit(Some(wrong)),
                Err(StoreError::DigestMismatch { .. })
            ));
            assert!(t.verified(2).is_none());
            assert!(
                t.begin_write(2).is_some(),
                "a failed piece can be fetched again"
            );
            assert!(t.begin_write(3).is_none(), "no such piece");
            let v = t.verified_piece(0).unwrap();
            assert_eq!(v.as_ref().len() as u64, MIN_PIECE_SIZE);
            assert_eq!(v.range(), 0..MIN_PIECE_SIZE);
            assert!(t.verified_piece(1).is_none());
            assert_eq!(t.missing_pieces(), vec![1, 2]);
        }
        // A new process: the table resumes piece 0 only.
        let store = Store::new(dir.path()).unwrap();
        let t = store.open_or_create(id, "u", len).unwrap();
        assert_eq!(t.verified_pieces().len(), 1);
        assert!(t.verified(0).is_some());
        assert_eq!(t.verified_bytes(), MIN_PIECE_SIZE);
        assert!(t.begin_write(1).is_some(), "resume leaves no claim behind");
    }

    #[test]
    fn a_piece_corrupted_on_disk_is_dropped_on_resume() {
        let dir = tempfile::tempdir().unwrap();
        let id = TaskId::from_url("u");
        let data = {
            let store = Store::new(dir.path()).unwrap();
            let t = store.open_or_create(id, "u", 100).unwrap();
            let mut w = t.begin_write(0).unwrap();
            w.buf().fill(7);
            w.commit(None).unwrap();
            assert!(t.is_complete());
            t.data_path()
        };
        let f = OpenOptions::new().write(true).open(&data).unwrap();
        f.write_at(b"X", 50).unwrap();
        let store = Store::new(dir.path()).unwrap();
        let t = store.open_or_create(id, "u", 100).unwrap();
        assert!(!t.is_complete());
        assert!(store.open_complete(id).is_none());
        drop((t, store));
        // The table no longer claims it either.
        let store = Store::new(dir.path()).unwrap();
        assert!(store
            .open_or_create(id, "u", 100)
            .unwrap()
            .verified_pieces()
            .is_empty());
    }

    #[test]
    fn a_truncated_data_file_starts_over_instead_of_faulting() {
        let dir = tempfile::tempdir().unwrap();
        let id = TaskId::from_url("u");
        let len = MIN_PIECE_SIZE + 10;
        let data = {
            let store = Store::new(dir.path()).unwrap();
            let t = store.open_or_create(id, "u", len).unwrap();
            for n in 0..2 {
                t.begin_write(n).unwrap().commit(None).unwrap();
            }
            assert!(t.is_complete());
            t.data_path()
        };
        OpenOptions::new()
            .write(true)
            .open(&data)
            .unwrap()
            .set_len(0)
            .unwrap();
        let store = Store::new(dir.path()).unwrap();
        let t = store.open_or_create(id, "u", len).unwrap();
        assert!(t.verified_pieces().is_empty());
        assert_eq!(
            std::fs::metadata(&data).unwrap().len(),
            len,
            "preallocated again"
        );
        assert!(t.begin_write(1).is_some());
    }

    #[test]
    fn a_different_length_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let id = TaskId::from_url("u");
        let store = Store::new(dir.path()).unwrap();
        let t = store.open_or_create(id, "u", 10).unwrap();
        t.begin_write(0).unwrap().commit(None).unwrap();
        drop(t);
        let store = Store::new(dir.path()).unwrap();
        let t = store.open_or_create(id, "u", 20).unwrap();
        assert!(t.verified_pieces().is_empty());
        let empty = store.open_or_create(TaskId::from_url("e"), "e", 0).unwrap();
        assert!(empty.is_complete(), "an empty file has no pieces to fetch");
        assert!(empty.begin_write(0).is_none());
    }

    #[test]
    fn shared_tasks_are_listed_after_a_reopen_and_private_ones_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let (shared, private) = (TaskId::from_url("s"), TaskId::from_url("p"));
        {
            let store = Store::new(dir.path()).unwrap();
            for (id, url) in [(shared, "s"), (private, "p")] {
                let t = store.open_or_create(id, url, 10).unwrap();
                t.begin_write(0).unwrap().commit(None).unwrap();
            }
            store.mark_shared(&shared).unwrap();
            assert_eq!(store.open_complete_tasks().len(), 2);
        }
        let store = Store::new(dir.path()).unwrap();
        assert!(store.open_complete_tasks().is_empty(), "nothing open yet");
        assert_eq!(store.shared_on_disk(), vec![shared]);
        assert!(store.is_shared(&shared) && !store.is_shared(&private));
        store.discard(&shared);
        assert!(store.shared_on_disk().is_empty());
    }

    #[test]
    fn a_discarded_task_is_gone_from_disk_but_open_readers_keep_their_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let id = TaskId::from_url("u");
        let store = Store::new(dir.path()).unwrap();
        let t = store.open_or_create(id, "u", 100).unwrap();
        let mut w = t.begin_write(0).unwrap();
        w.buf().fill(9);
        w.commit(None).unwrap();
        let piece = t.verified_piece(0).unwrap();
        store.discard(&id);
        assert!(store.get(&id).is_none());
        assert!(store.peek_meta(&id).is_none());
        assert!(!t.data_path().exists());
        assert!(piece.as_ref().iter().all(|b| *b == 9));
        let again = store.open_or_create(id, "u", 100).unwrap();
        assert!(!Arc::ptr_eq(&again, &t));
        assert!(again.verified_pieces().is_empty());
    }

    /// Bytes of `path` mapped into this process now (its `Rss` in
    /// /proc/self/smaps): each test has a file of its own, so tests running
    /// in parallel do not mix.
    fn mapped_rss(path: &std::path::Path) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let want = path.to_str().unwrap();
        let mut ours = false;
        let mut kb = 0;
        for line in smaps.lines() {
            let first = line.split_whitespace().next().unwrap_or("");
            if first.contains('-') && !first.ends_with(':') {
                ours = line.trim_end().ends_with(want);
            } else if ours && first == "Rss:" {
                kb += line
                    .split_whitespace()
                    .nth(1)
                    .unwrap()
                    .parse::<u64>()
                    .unwrap();
            }
        }
        kb * 1024
    }

    /// Writes and reads a 64-piece file through a store with `window`;
    /// returns the file's mapped bytes at the end, checking every byte.
    fn mapped_after_64_pieces(window: u64) -> u64 {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path()).unwrap().with_mapped_window(window);
        let len = 64 * MIN_PIECE_SIZE;
        let t = store
            .open_or_create(TaskId::from_url("u"), "u", len)
            .unwrap();
        assert_eq!(t.layout.piece_size, MIN_PIECE_SIZE);
        for n in 0..64u32 {
            let mut w = t.begin_write(n).unwrap();
            w.buf().fill(n as u8 + 1);
            w.commit(None).unwrap();
        }
        let after_writing = mapped_rss(&t.data_path());
        // Served: every piece read once, then piece 3 kept by a reader.
        for n in 0..64u32 {
            let p = t.verified_piece(n).unwrap();
            assert!(p.as_ref().iter().all(|b| *b == n as u8 + 1), "piece {n}");
        }
        let held = t.verified_piece(3).unwrap();
        for n in 10..64u32 {
            drop(t.verified_piece(n).unwrap());
        }
        assert!(
            held.as_ref().iter().all(|b| *b == 4),
            "a held piece keeps its bytes"
        );
        let after_serving = mapped_rss(&t.data_path());
        // Released pages come back from the file, byte for byte.
        let on_disk = crate::sha256_file(&t.data_path()).unwrap();
        assert_eq!(on_disk, hex::encode(t.sha256()));
        after_writing.max(after_serving)
    }

    #[test]
    fn verified_pieces_past_the_window_leave_the_mapping_and_keep_their_bytes() {
        let window = 4 * MIN_PIECE_SIZE;
        let kept = mapped_after_64_pieces(window);
        // The window, the newest piece and the held one at most.
        assert!(
            kept <= window + 2 * MIN_PIECE_SIZE,
            "{kept} bytes of a 64 MiB file still mapped with a 4 MiB window"
        );
        let everything = mapped_after_64_pieces(0);
        assert!(
            everything >= 60 * MIN_PIECE_SIZE,
            "without a window the whole file stays mapped ({everything} bytes): the measure works"
        );
    }
}
