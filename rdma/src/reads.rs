//! Piece reads in flight on one queue pair: which work requests belong to
//! which read, when a read is over, and who holds its destination meanwhile.
//!
//! A read owns its destination: the [`WritePermit`] of the piece and the
//! region it lands in. The permit comes back to the caller only once every
//! work request the read posted has completed or been flushed. If the
//! future is dropped mid-read (a cancelled download, a `select!` that moved
//! on), the NIC may still be writing into the piece: the queue is moved to
//! the error state, so what is in flight is flushed at once, and the permit
//! is parked in the read's entry until the last completion arrives. Only
//! then is it dropped, and only then may anyone else claim the piece.
//!
//! Generic over the queue ([`ReadQueue`]) so that this bookkeeping is tested
//! without a device.

use crate::mr::Registered;
use crate::split::work_requests;
use crate::RdmaError;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};
use tokio::time::timeout;
use weightcast_types::WritePermit;

/// One RDMA READ, as the queue posts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WorkRequest {
    pub wr_id: u64,
    pub local_addr: u64,
    pub lkey: u32,
    pub len: u32,
    pub remote_addr: u64,
    pub rkey: u32,
}

/// What the reads need of a queue pair.
pub(crate) trait ReadQueue: Send + Sync + 'static {
    /// Posts one signaled RDMA READ.
    ///
    /// # Safety
    /// The `len` bytes at `local_addr` stay mapped, registered under
    /// `lkey`, and untouched by anyone else until this request's completion
    /// is dispatched or the queue is destroyed.
    unsafe fn post_read(&self, wr: &WorkRequest) -> Result<(), RdmaError>;
    /// Moves the queue to the error state: every outstanding request
    /// completes at once, flushed, and no new one is accepted.
    fn set_error(&self);
}

/// How one work request ended.
#[derive(Debug)]
pub(crate) enum Completion {
    Success,
    /// Flushed by the queue's error state.
    Flushed,
    Failed(RdmaError),
}

/// Where a granted piece lies on the parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Remote {
    pub addr: u64,
    pub rkey: u32,
}

/// One read in flight.
struct Op {
    state: Mutex<OpState>,
    done: Notify,
}

struct OpState {
    /// Work requests still to complete, plus one held by the poster until
    /// it has posted them all.
    remaining: usize,
    /// The first real error (it wins over the flushes it causes).
    error: Option<RdmaError>,
    /// The destination of a read whose future was dropped, released with
    /// the last completion.
    parked: Option<Box<dyn Send>>,
}

impl Op {
    fn state(&self) -> MutexGuard<'_, OpState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fail(&self, e: RdmaError) {
        let mut s = self.state();
        if s.error.is_none() || matches!(s.error, Some(RdmaError::Broken)) {
            s.error = Some(e);
        }
    }
}

/// The reads of one queue pair.
pub(crate) struct Reads<Q> {
    /// Declared first, so dropped first: a destroyed queue does no more DMA,
    /// and only after that do parked destinations (in `ops`) go.
    pub(crate) queue: Q,
    ops: Mutex<HashMap<u64, Arc<Op>>>,
    /// Send-queue slots: one per RDMA READ in flight.
    slots: Semaphore,
    broken: AtomicBool,
    next_id: AtomicU64,
}

impl<Q: ReadQueue> Reads<Q> {
    /// `in_flight`: RDMA READs the queue may have outstanding at once.
    pub(crate) fn new(queue: Q, in_flight: usize) -> Self {
        Self {
            queue,
            ops: Mutex::new(HashMap::new()),
            slots: Semaphore::new(in_flight.max(1)),
            broken: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
        }
    }

    fn ops(&self) -> MutexGuard<'_, HashMap<u64, Arc<Op>>> {
        self.ops.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Acquire)
    }

    /// Moves the queue to the error state (once): what is in flight is
    /// flushed, and the connection is rebuilt for the next piece.
    pub(crate) fn break_qp(&self) {
        if !self.broken.swap(true, Ordering::AcqRel) {
            self.queue.set_error();
        }
    }

    /// Reads whose work requests are not all over yet.
    #[cfg(test)]
    fn open_reads(&self) -> usize {
        self.ops().len()
    }

    /// A completion polled from the queue's CQ.
    pub(crate) fn dispatch(&self, wr_id: u64, c: Completion) {
        self.slots.add_permits(1);
        let op = self.ops().get(&wr_id).cloned();
        let Some(op) = op else {
            if !matches!(c, Completion::Success) {
                self.break_qp();
            }
            return;
        };
        match c {
            Completion::Success => {}
            Completion::Flushed => {
                op.fail(RdmaError::Broken);
                self.break_qp();
            }
            Completion::Failed(e) => {
                op.fail(e);
                self.break_qp();
            }
        }
        self.complete(wr_id, &op, 1);
    }

    /// `n` of the read's holds are over; the last one ends the read and
    /// releases a parked destination.
    fn complete(&self, id: u64, op: &Op, n: usize) {
        let parked = {
            let mut s = op.state();
            debug_assert!(s.remaining >= n, "more completions than work requests");
            s.remaining = s.remaining.saturating_sub(n);
            if s.remaining > 0 {
                return;
            }
            s.parked.take()
        };
        self.ops().remove(&id);
        op.done.notify_one();
        // After the last completion: no DMA can land in it any more.
        drop(parked);
    }

    /// Reads the permit's range of the local region from `remote` in work
    /// requests of `wr_size` bytes, and returns once every one of them is
    /// over, with the permit. `lkey` is `local`'s. A read with no
    /// completion for `limit` breaks the queue (flushing the rest).
    pub(crate) async fn read<W: WritePermit, R: Send + Sync + 'static>(
        &self,
        local: Arc<Registered<R>>,
        lkey: u32,
        permit: W,
        remote: Remote,
        wr_size: u64,
        limit: Duration,
    ) -> (Result<(), RdmaError>, W) {
        let range = permit.range();
        let Some(base) = local.addr_of(&range) else {
            return (Err(RdmaError::NotRegistered), permit);
        };
        let len = range.end - range.start;
        let wrs: Vec<(u64, u32)> = work_requests(len, wr_size).collect();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let op = Arc::new(Op {
            state: Mutex::new(OpState {
                remaining: wrs.len() + 1,
                error: None,
                parked: None,
            }),
            done: Notify::new(),
        });
        self.ops().insert(id, op.clone());
        let mut pending = Pending {
            reads: self,
            id,
            op: op.clone(),
            unposted: wrs.len() + 1,
            dest: Some((permit, local)),
        };
        for (off, wr_len) in &wrs {
            if self.is_broken() {
                op.fail(RdmaError::Broken);
                break;
            }
            let Ok(slot) = self.slots.acquire().await else {
                op.fail(RdmaError::Broken);
                break;
            };
            // Given back by `dispatch` when this WR's completion arrives.
            slot.forget();
            let wr = WorkRequest {
                wr_id: id,
                local_addr: base + off,
                lkey,
                len: *wr_len,
                remote_addr: remote.addr + off,
                rkey: remote.rkey,
            };
            // SAFETY: the bytes lie inside `local`'s mapping (`addr_of`
            // checked the permit's whole range), registered under `lkey`;
            // `pending` owns the permit, so nothing else touches the range,
            // and it keeps permit and region until this WR's completion is
            // dispatched (parking them if this future is dropped first).
            let posted = unsafe { self.queue.post_read(&wr) };
            if let Err(e) = posted {
                self.slots.add_permits(1);
                op.fail(e);
                self.break_qp();
                break;
            }
            pending.unposted -= 1;
        }
        // Release the poster's hold and the WRs never posted.
        let unposted = std::mem::take(&mut pending.unposted);
        self.complete(id, &op, unposted);
        let mut timed_out = false;
        while op.state().remaining > 0 {
            match timeout(limit, op.done.notified()).await {
                Ok(()) => {}
                Err(_) if !timed_out => {
                    // Flush everything in flight; the flushes end the read.
                    timed_out = true;
                    op.fail(RdmaError::Timeout {
                        bytes: len,
                        secs: limit.as_secs(),
                    });
                    self.break_qp();
                }
                Err(_) => {
                    tracing::error!(
                        remaining = op.state().remaining,
                        "RDMA work requests not flushed after the QP went to error; still waiting"
                    );
                }
            }
        }
        let error = op.state().error.take();
        let (permit, _local) = pending
            .dest
            .take()
            .expect("the destination stays with the read until it returns");
        (error.map_or(Ok(()), Err), permit)
    }
}

/// A read's hold on its destination while its future lives.
struct Pending<'a, Q: ReadQueue, W: Send + 'static, R: Send + Sync + 'static> {
    reads: &'a Reads<Q>,
    id: u64,
    op: Arc<Op>,
    /// Holds not yet released: the poster's and the WRs not posted yet.
    unposted: usize,
    dest: Option<(W, Arc<Registered<R>>)>,
}

impl<Q: ReadQueue, W: Send + 'static, R: Send + Sync + 'static> Drop for Pending<'_, Q, W, R> {
    fn drop(&mut self) {
        // Taken: the read returned normally, every WR over.
        let Some(dest) = self.dest.take() else {
            return;
        };
        // The future was dropped mid-read.
        let mut s = self.op.state();
        s.remaining = s.remaining.saturating_sub(self.unposted);
        if s.remaining == 0 {
            // Nothing was in flight: the destination is free now.
            drop(s);
            self.reads.ops().remove(&self.id);
            drop(dest);
            return;
        }
        let in_flight = s.remaining;
        s.parked = Some(Box::new(dest));
        drop(s);
        tracing::debug!(
            in_flight,
            "RDMA read abandoned mid-flight: flushing the QP; the piece stays claimed until the flushes complete"
        );
        self.reads.break_qp();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mr::FileId;
    use std::fs::File;
    use std::future::Future;
    use std::ops::Range;
    use std::pin::Pin;
    use std::task::{Context, Poll, Waker};

    #[derive(Default)]
    struct FakeQueue {
        posted: Mutex<Vec<WorkRequest>>,
        errored: AtomicBool,
        refuse: AtomicBool,
    }

    impl ReadQueue for FakeQueue {
        unsafe fn post_read(&self, wr: &WorkRequest) -> Result<(), RdmaError> {
            if self.refuse.load(Ordering::SeqCst) {
                return Err(RdmaError::Broken);
            }
            self.posted.lock().unwrap().push(*wr);
            Ok(())
        }
        fn set_error(&self) {
            self.errored.store(true, Ordering::SeqCst);
        }
    }

    impl FakeQueue {
        fn posted(&self) -> Vec<WorkRequest> {
            self.posted.lock().unwrap().clone()
        }
        fn errored(&self) -> bool {
            self.errored.load(Ordering::SeqCst)
        }
    }

    /// A permit that says when it is released.
    struct Permit {
        file: File,
        range: Range<u64>,
        released: Arc<AtomicBool>,
    }
    impl WritePermit for Permit {
        fn file(&self) -> &File {
            &self.file
        }
        fn range(&self) -> Range<u64> {
            self.range.clone()
        }
    }
    impl Drop for Permit {
        fn drop(&mut self) {
            self.released.store(true, Ordering::SeqCst);
        }
    }

    fn permit(range: Range<u64>) -> (Permit, Arc<AtomicBool>) {
        let released = Arc::new(AtomicBool::new(false));
        let file = tempfile::tempfile().unwrap();
        let p = Permit {
            file,
            range,
            released: released.clone(),
        };
        (p, released)
    }

    const BASE: u64 = 0x10_0000;
    const REMOTE: Remote = Remote {
        addr: 0x9000_0000,
        rkey: 42,
    };
    const LIMIT: Duration = Duration::from_secs(60);

    fn region(len: u64) -> Arc<Registered<()>> {
        Arc::new(Registered::new(
            (),
            FileId {
                dev: 1,
                ino: 2,
                len,
            },
            BASE,
            len,
        ))
    }

    /// Polls `f` once (inside the test's runtime: the read's timer needs one).
    fn poll_once<F: Future + ?Sized>(f: Pin<&mut F>) -> Poll<F::Output> {
        f.poll(&mut Context::from_waker(Waker::noop()))
    }

    #[tokio::test]
    async fn a_read_posts_its_work_requests_and_returns_the_permit_when_all_completed() {
        let reads = Reads::new(FakeQueue::default(), 8);
        let (p, released) = permit(4096..4096 + 2500);
        let mut f = Box::pin(reads.read(region(1 << 20), 7, p, REMOTE, 1000, LIMIT));
        assert!(poll_once(f.as_mut()).is_pending());
        let wrs = reads.queue.posted();
        assert_eq!(wrs.len(), 3);
        assert_eq!(
            wrs.iter()
                .map(|w| (w.local_addr, w.len, w.remote_addr))
                .collect::<Vec<_>>(),
            vec![
                (BASE + 4096, 1000, REMOTE.addr),
                (BASE + 5096, 1000, REMOTE.addr + 1000),
                (BASE + 6096, 500, REMOTE.addr + 2000),
            ]
        );
        assert!(wrs.iter().all(|w| w.lkey == 7 && w.rkey == 42));
        for w in &wrs[..2] {
            reads.dispatch(w.wr_id, Completion::Success);
        }
        assert!(poll_once(f.as_mut()).is_pending(), "one WR still in flight");
        reads.dispatch(wrs[2].wr_id, Completion::Success);
        let Poll::Ready((r, p)) = poll_once(f.as_mut()) else {
            panic!("the read is over");
        };
        assert!(r.is_ok());
        assert!(!released.load(Ordering::SeqCst), "the permit came back");
        assert_eq!(p.range, 4096..6596);
        assert!(!reads.queue.errored());
        assert_eq!(reads.open_reads(), 0);
        assert_eq!(reads.slots.available_permits(), 8);
    }

    #[tokio::test]
    async fn a_read_dropped_mid_flight_flushes_the_qp_and_keeps_the_permit_until_the_last_completion(
    ) {
        // Two slots for three WRs: two in flight, the third waits for a slot.
        let reads = Reads::new(FakeQueue::default(), 2);
        let (p, released) = permit(0..3000);
        let mut f = Box::pin(reads.read(region(3000), 7, p, REMOTE, 1000, LIMIT));
        assert!(poll_once(f.as_mut()).is_pending());
        let wrs = reads.queue.posted();
        assert_eq!(wrs.len(), 2);
        drop(f);
        assert!(reads.queue.errored(), "the QP went to the error state");
        assert!(
            !released.load(Ordering::SeqCst),
            "the NIC may still write: the permit is held"
        );
        reads.dispatch(wrs[0].wr_id, Completion::Flushed);
        assert!(!released.load(Ordering::SeqCst), "one WR still in flight");
        assert_eq!(reads.open_reads(), 1);
        reads.dispatch(wrs[1].wr_id, Completion::Flushed);
        assert!(
            released.load(Ordering::SeqCst),
            "released after the last flush"
        );
        assert_eq!(reads.open_reads(), 0);
        assert_eq!(reads.slots.available_permits(), 2);
        assert_eq!(
            reads.queue.posted().len(),
            2,
            "nothing posted after the drop"
        );
    }

    #[tokio::test]
    async fn a_read_dropped_before_it_posted_anything_releases_at_once_and_leaves_the_qp_alone() {
        let reads = Reads::new(FakeQueue::default(), 1);
        let (a, a_released) = permit(0..1000);
        let (b, b_released) = permit(1000..2000);
        let mut fa = Box::pin(reads.read(region(2000), 7, a, REMOTE, 1000, LIMIT));
        assert!(poll_once(fa.as_mut()).is_pending());
        // `b` waits for the only slot, which `a` holds.
        let mut fb = Box::pin(reads.read(region(2000), 7, b, REMOTE, 1000, LIMIT));
        assert!(poll_once(fb.as_mut()).is_pending());
        assert_eq!(reads.queue.posted().len(), 1);
        drop(fb);
        assert!(
            b_released.load(Ordering::SeqCst),
            "nothing of b's in flight"
        );
        assert!(!reads.queue.errored(), "other reads on the QP go on");
        reads.dispatch(reads.queue.posted()[0].wr_id, Completion::Success);
        let Poll::Ready((r, _a)) = poll_once(fa.as_mut()) else {
            panic!("a is over");
        };
        assert!(r.is_ok());
        assert!(!a_released.load(Ordering::SeqCst));
        assert_eq!(reads.open_reads(), 0);
    }

    #[tokio::test]
    async fn a_failed_work_request_fails_the_read_only_after_the_rest_is_flushed() {
        let reads = Reads::new(FakeQueue::default(), 4);
        let (p, released) = permit(0..3000);
        let mut f = Box::pin(reads.read(region(3000), 7, p, REMOTE, 1000, LIMIT));
        assert!(poll_once(f.as_mut()).is_pending());
        let wrs = reads.queue.posted();
        let bad = RdmaError::Completion {
            status: "remote access error".into(),
            vendor_err: 0x88,
        };
        reads.dispatch(wrs[1].wr_id, Completion::Failed(bad));
        assert!(reads.queue.errored());
        reads.dispatch(wrs[0].wr_id, Completion::Flushed);
        assert!(
            poll_once(f.as_mut()).is_pending(),
            "a WR is still in flight"
        );
        reads.dispatch(wrs[2].wr_id, Completion::Flushed);
        let Poll::Ready((r, _p)) = poll_once(f.as_mut()) else {
            panic!("the read is over");
        };
        assert!(
            matches!(
                r,
                Err(RdmaError::Completion {
                    vendor_err: 0x88,
                    ..
                })
            ),
            "the first real error wins over the flushes: {r:?}"
        );
        assert!(
            !released.load(Ordering::SeqCst),
            "the permit comes back for a TCP retry"
        );
    }

    #[tokio::test]
    async fn a_refused_post_and_a_range_outside_the_region_fail_without_dma() {
        let reads = Reads::new(FakeQueue::default(), 4);
        let (p, _) = permit(0..5000);
        let mut f = Box::pin(reads.read(region(3000), 7, p, REMOTE, 1000, LIMIT));
        let Poll::Ready((r, _p)) = poll_once(f.as_mut()) else {
            panic!("nothing to wait for");
        };
        assert!(matches!(r, Err(RdmaError::NotRegistered)));
        assert!(reads.queue.posted().is_empty());
        drop(f);
        reads.queue.refuse.store(true, Ordering::SeqCst);
        let (p, _) = permit(0..3000);
        let mut f = Box::pin(reads.read(region(3000), 7, p, REMOTE, 1000, LIMIT));
        let Poll::Ready((r, _p)) = poll_once(f.as_mut()) else {
            panic!("nothing was posted, nothing to wait for");
        };
        assert!(r.is_err());
        assert!(reads.queue.errored());
        assert_eq!(reads.slots.available_permits(), 4);
        assert_eq!(reads.open_reads(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_without_completions_times_out_flushes_and_still_waits_for_the_flushes() {
        let reads = Arc::new(Reads::new(FakeQueue::default(), 4));
        let (p, released) = permit(0..2000);
        let r2 = reads.clone();
        let read = tokio::spawn(async move {
            let (r, p) = r2
                .read(region(2000), 7, p, REMOTE, 1000, Duration::from_secs(5))
                .await;
            drop(p);
            r
        });
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert!(reads.queue.errored(), "the timeout broke the QP");
        assert!(
            !released.load(Ordering::SeqCst),
            "still waiting for the flushes"
        );
        for w in reads.queue.posted() {
            reads.dispatch(w.wr_id, Completion::Flushed);
        }
        let r = read.await.unwrap();
        assert!(
            matches!(
                r,
                Err(RdmaError::Timeout {
                    bytes: 2000,
                    secs: 5
                })
            ),
            "{r:?}"
        );
        assert!(released.load(Ordering::SeqCst));
    }
}
