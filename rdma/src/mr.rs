//! Memory regions: each task's mmap'd cache file is registered once per
//! process (lazily, on its first RDMA use, as child or as parent) and
//! deregistered when the task is evicted.
//!
//! Registration pins the whole file and costs time in proportion to its size
//! (the kernel walks and pins every page), so it must not happen per piece.
//! One region serves both roles: the child's reads land in it (local write),
//! and its verified pieces are read from it by other children (remote read).

use crate::device::Device;
use crate::RdmaError;
use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use weightcast_types::TaskId;

/// One registered memory region.
pub struct MemoryRegion {
    device: Arc<Device>,
    mr: *mut crate::ffi::ibv_mr,
    pub lkey: u32,
    pub rkey: u32,
}

// SAFETY: an ibv_mr is immutable after registration; deregistration happens
// once, in Drop.
unsafe impl Send for MemoryRegion {}
// SAFETY: as for Send: shared use goes through thread-safe verbs calls.
unsafe impl Sync for MemoryRegion {}

impl MemoryRegion {
    /// Registers `len` bytes at `base` for local writes and remote reads.
    pub fn register(device: &Arc<Device>, base: *mut u8, len: usize) -> Result<Self, RdmaError> {
        let access = crate::ffi::IBV_ACCESS_LOCAL_WRITE | crate::ffi::IBV_ACCESS_REMOTE_READ;
        // SAFETY: the caller keeps `base..base+len` mapped for as long as
        // the region lives (see `Registered::keep`).
        let mr = unsafe { (device.verbs.reg_mr)(device.pd, base.cast(), len, access) };
        if mr.is_null() {
            let e = std::io::Error::last_os_error();
            return Err(RdmaError::Register {
                bytes: len as u64,
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
        })
    }
}

impl Drop for MemoryRegion {
    fn drop(&mut self) {
        // SAFETY: registered in `register`, deregistered once.
        unsafe { (self.device.verbs.dereg_mr)(self.mr) };
    }
}

/// A task's region with the mapping it covers. `keep` holds the mapping
/// (the task file) alive for as long as anyone uses the region: an in-flight
/// read that outlives an eviction still targets mapped memory.
pub struct Registered<R> {
    pub region: R,
    pub base: usize,
    pub len: usize,
    keep: Arc<dyn Any + Send + Sync>,
}

impl<R> Registered<R> {
    /// Offset of `ptr..ptr+len` inside the region, if it lies wholly inside.
    pub fn offset_of(&self, ptr: *const u8, len: usize) -> Option<usize> {
        let p = ptr as usize;
        let off = p.checked_sub(self.base)?;
        (off.checked_add(len)? <= self.len).then_some(off)
    }

    /// The value that keeps the mapping alive.
    pub fn keep(&self) -> &Arc<dyn Any + Send + Sync> {
        &self.keep
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
    /// The task's region over `base..base+len`, registered by `register`
    /// the first time, or again when the task's mapping changed (a task file
    /// recreated with another length).
    pub fn get_or_register<E>(
        &self,
        task: TaskId,
        base: *mut u8,
        len: usize,
        keep: Arc<dyn Any + Send + Sync>,
        register: impl FnOnce() -> Result<R, E>,
    ) -> Result<Arc<Registered<R>>, E> {
        // Registration happens under the lock: two first uses of one task at
        // once must not pin the file twice.
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = entries.get(&task) {
            if r.base == base as usize && r.len == len {
                return Ok(r.clone());
            }
        }
        let r = Arc::new(Registered {
            region: register()?,
            base: base as usize,
            len,
            keep,
        });
        entries.insert(task, r.clone());
        Ok(r)
    }

    pub fn get(&self, task: &TaskId) -> Option<Arc<Registered<R>>> {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(task)
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

    #[test]
    fn a_task_is_registered_once_and_deregistered_after_eviction() {
        let live = Arc::new(AtomicUsize::new(0));
        let regs = AtomicUsize::new(0);
        let table = RegionTable::<Fake>::default();
        let mut buf = vec![0u8; 4096];
        let base = buf.as_mut_ptr();
        let keep: Arc<dyn Any + Send + Sync> = Arc::new(());
        let reg = || {
            regs.fetch_add(1, Ordering::SeqCst);
            live.fetch_add(1, Ordering::SeqCst);
            Ok::<_, ()>(Fake(live.clone()))
        };
        let a = table
            .get_or_register(TaskId([1; 32]), base, 4096, keep.clone(), reg)
            .unwrap();
        let b = table
            .get_or_register(TaskId([1; 32]), base, 4096, keep.clone(), reg)
            .unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(regs.load(Ordering::SeqCst), 1, "registered once");
        // Another task is another region.
        table
            .get_or_register(TaskId([2; 32]), base, 100, keep.clone(), reg)
            .unwrap();
        assert_eq!(table.len(), 2);
        // The same task over a new mapping is registered again.
        let c = table
            .get_or_register(TaskId([1; 32]), base, 2048, keep.clone(), reg)
            .unwrap();
        assert_eq!(regs.load(Ordering::SeqCst), 3);
        assert_eq!(c.len, 2048);
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
        assert!(table.get(&TaskId([1; 32])).is_none());
        // A failed registration leaves nothing behind.
        let failed = table.get_or_register(TaskId([3; 32]), base, 1, keep, || Err::<Fake, _>("no"));
        assert!(failed.is_err());
        assert_eq!(table.len(), 1);
        drop(buf);
    }

    #[test]
    fn only_slices_inside_the_region_have_an_offset() {
        let r = Registered {
            region: (),
            base: 0x1000,
            len: 0x100,
            keep: Arc::new(()),
        };
        assert_eq!(r.offset_of(0x1000 as *const u8, 0x100), Some(0));
        assert_eq!(r.offset_of(0x1080 as *const u8, 0x80), Some(0x80));
        assert_eq!(r.offset_of(0x1080 as *const u8, 0x81), None);
        assert_eq!(r.offset_of(0x0fff as *const u8, 1), None);
        assert_eq!(r.offset_of(usize::MAX as *const u8, 2), None);
    }
}
