//! Memory regions: each task's cache file is registered once per process
//! (lazily, on its first RDMA use, as child or as parent) and deregistered
//! when the task is evicted.
//!
//! This crate maps the file itself, shared (`MAP_SHARED`, so the very pages
//! of the page cache that the store's own mapping shows), and registers that
//! mapping: the store hands over a file, never an address, and every address
//! a work request uses is computed here, inside a mapping this crate owns.
//!
//! Registration pins the whole file and costs time in proportion to its size
//! (the kernel walks and pins every page), so it must not happen per piece.
//! One region serves both roles: the child's reads land in it (local write),
//! and its verified pieces are read from it by other children (remote read).

use crate::device::Device;
use crate::RdmaError;
use memmap2::{MmapOptions, MmapRaw};
use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex};
use weightcast_types::TaskId;

/// Which file a region maps. A task file recreated (another length, or
/// discarded and fetched again) is another inode: the old one lives on,
/// unlinked, for as long as a mapping of it exists, so its number is not
/// reused meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
    pub len: u64,
}

impl FileId {
    pub fn of(file: &File) -> Result<Self, RdmaError> {
        let m = file.metadata().map_err(RdmaError::File)?;
        Ok(Self {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
        })
    }
}

/// One registered memory region over this crate's own mapping of a file.
pub struct MemoryRegion {
    device: Arc<Device>,
    mr: *mut crate::ffi::ibv_mr,
    pub lkey: u32,
    pub rkey: u32,
    /// Unmapped after deregistration: fields drop after `Drop::drop`.
    map: MmapRaw,
}

// SAFETY: an ibv_mr is immutable after registration; deregistration happens
// once, in Drop; the mapping is only addressed by work requests.
unsafe impl Send for MemoryRegion {}
// SAFETY: as for Send: shared use goes through thread-safe verbs calls.
unsafe impl Sync for MemoryRegion {}

impl MemoryRegion {
    /// Maps the first `len` bytes of `file` (shared, read-write) and
    /// registers them for local writes and remote reads.
    pub fn register_file(device: &Arc<Device>, file: &File, len: u64) -> Result<Self, RdmaError> {
        let bytes = usize::try_from(len).map_err(|_| RdmaError::NotRegistered)?;
        if bytes == 0 {
            return Err(RdmaError::NotRegistered);
        }
        let map = MmapOptions::new()
            .len(bytes)
            .map_raw(file)
            .map_err(RdmaError::File)?;
        let access = crate::ffi::IBV_ACCESS_LOCAL_WRITE | crate::ffi::IBV_ACCESS_REMOTE_READ;
        // SAFETY: `map` is a live mapping of `bytes` bytes that this value
        // owns and unmaps only after deregistering the region.
        let mr =
            unsafe { (device.verbs.reg_mr)(device.pd, map.as_mut_ptr().cast(), bytes, access) };
        if mr.is_null() {
            let e = std::io::Error::last_os_error();
            return Err(RdmaError::Register {
                bytes: len,
                source: e,
            });
        }
        // SAFETY: non-null result of ibv_reg_mr.
        let (lkey, rkey) = unsafe { ((*mr).lkey, (*mr).rkey) };
        Ok(Self {
            device: device.clone(),
            mr,
            lkey,
            rkey,
            map,
        })
    }

    /// Where the mapping starts in this process, for work requests.
    pub(crate) fn base(&self) -> u64 {
        self.map.as_ptr() as u64
    }
}

impl Drop for MemoryRegion {
    fn drop(&mut self) {
        // SAFETY: registered in `register_file`, deregistered once, before
        // the mapping it covers is unmapped.
        unsafe { (self.device.verbs.dereg_mr)(self.mr) };
    }
}

/// A task's region with the file it maps.
pub struct Registered<R> {
    pub region: R,
    pub file: FileId,
    /// The mapping's address in this process, and its length.
    base: u64,
    len: u64,
}

impl<R> Registered<R> {
    pub(crate) fn new(region: R, file: FileId, base: u64, len: u64) -> Self {
        Self {
            region,
            file,
            base,
            len,
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The address of the file's bytes `range` in the mapping, if they lie
    /// wholly inside it: what a local SGE or a remote READ names.
    pub(crate) fn addr_of(&self, range: &Range<u64>) -> Option<u64> {
        (range.start <= range.end && range.end <= self.len).then(|| self.base + range.start)
    }
}

/// Which task has which region. Generic over the region type so the
/// bookkeeping is tested without a device.
pub struct RegionTable<R> {
    entries: Mutex<HashMap<TaskId, Arc<Registered<R>>>>,
}

impl<R> Default for RegionTable<R> {
    fn default() -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
        }
    }
}

impl<R> RegionTable<R> {
    /// The task's region over `file`, registered by `register` the first
    /// time, or again when the task's file changed (recreated).
    pub fn get_or_register<E>(
        &self,
        task: TaskId,
        file: FileId,
        register: impl FnOnce() -> Result<Registered<R>, E>,
    ) -> Result<Arc<Registered<R>>, E> {
        // Registration happens under the lock: two first uses of one task at
        // once must not pin the file twice.
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = entries.get(&task) {
            if r.file == file {
                return Ok(r.clone());
            }
        }
        let r = Arc::new(register()?);
        entries.insert(task, r.clone());
        Ok(r)
    }

    /// The task's region, if it maps `file`.
    pub fn get(&self, task: &TaskId, file: &FileId) -> Option<Arc<Registered<R>>> {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(task)
            .filter(|r| r.file == *file)
            .cloned()
    }

    /// Forgets the task's region; it is deregistered when the last
    /// in-flight use of it ends. `true` if there was one.
    pub fn evict(&self, task: &TaskId) -> bool {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(task)
            .is_some()
    }

    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fake registration that counts live regions.
    struct Fake(Arc<AtomicUsize>);
    impl Drop for Fake {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn id(ino: u64, len: u64) -> FileId {
        FileId { dev: 1, ino, len }
    }

    #[test]
    fn a_task_is_registered_once_and_deregistered_after_eviction() {
        let live = Arc::new(AtomicUsize::new(0));
        let regs = AtomicUsize::new(0);
        let table = RegionTable::<Fake>::default();
        let reg = |f: FileId| {
            regs.fetch_add(1, Ordering::SeqCst);
            live.fetch_add(1, Ordering::SeqCst);
            Ok::<_, ()>(Registered::new(Fake(live.clone()), f, 0x1000, f.len))
        };
        let a = table
            .get_or_register(TaskId([1; 32]), id(5, 4096), || reg(id(5, 4096)))
            .unwrap();
        let b = table
            .get_or_register(TaskId([1; 32]), id(5, 4096), || reg(id(5, 4096)))
            .unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(regs.load(Ordering::SeqCst), 1, "registered once");
        assert!(table.get(&TaskId([1; 32]), &id(5, 4096)).is_some());
        assert!(
            table.get(&TaskId([1; 32]), &id(6, 4096)).is_none(),
            "another file"
        );
        // Another task is another region.
        table
            .get_or_register(TaskId([2; 32]), id(7, 100), || reg(id(7, 100)))
            .unwrap();
        assert_eq!(table.len(), 2);
        // The same task over a recreated file is registered again.
        let c = table
            .get_or_register(TaskId([1; 32]), id(8, 2048), || reg(id(8, 2048)))
            .unwrap();
        assert_eq!(regs.load(Ordering::SeqCst), 3);
        assert_eq!(c.len(), 2048);
        drop((a, b));
        assert_eq!(
            live.load(Ordering::SeqCst),
            2,
            "the replaced region is gone"
        );
        // Eviction deregisters only when the last user lets go.
        assert!(table.evict(&TaskId([1; 32])));
        assert!(!table.evict(&TaskId([1; 32])));
        assert_eq!(live.load(Ordering::SeqCst), 2, "still used by `c`");
        drop(c);
        assert_eq!(live.load(Ordering::SeqCst), 1);
        assert!(table.get(&TaskId([1; 32]), &id(8, 2048)).is_none());
        // A failed registration leaves nothing behind.
        let failed = table.get_or_register(TaskId([3; 32]), id(9, 1), || {
            Err::<Registered<Fake>, _>("no")
        });
        assert!(failed.is_err());
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn only_ranges_inside_the_region_have_an_address() {
        let r = Registered::new((), id(1, 0x100), 0x1000, 0x100);
        assert_eq!(r.addr_of(&(0..0x100)), Some(0x1000));
        assert_eq!(r.addr_of(&(0x80..0x100)), Some(0x1080));
        assert_eq!(r.addr_of(&(0x80..0x101)), None);
        assert_eq!(
            r.addr_of(&(0x100..0x100)),
            Some(0x1100),
            "empty, at the end"
        );
        #[allow(clippy::reversed_empty_ranges)]
        let backwards = 0x20..0x10;
        assert_eq!(r.addr_of(&backwards), None);
        assert_eq!(r.addr_of(&(u64::MAX - 1..u64::MAX)), None);
    }

    #[test]
    fn a_file_is_known_by_its_inode_and_length() {
        let d = tempfile::tempdir().unwrap();
        let a = File::create(d.path().join("a")).unwrap();
        a.set_len(10).unwrap();
        let b = File::create(d.path().join("b")).unwrap();
        let ia = FileId::of(&a).unwrap();
        assert_eq!(ia.len, 10);
        assert_ne!(ia, FileId::of(&b).unwrap());
        assert_eq!(ia, FileId::of(&a.try_clone().unwrap()).unwrap());
    }
}
