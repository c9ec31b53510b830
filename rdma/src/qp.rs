//! RC queue pairs: one per parent connection, with its own completion queue
//! and (on the child, which polls) a completion channel.

use crate::device::Device;
use crate::ffi::{self, ibv_qp_attr};
use crate::RdmaError;
use std::os::fd::RawFd;
use std::sync::Arc;
use weightcast_proto::frame::QpEndpoint;

/// ACK timeout exponent: 4.096 µs × 2^17 ≈ 0.5 s before a retransmit. Real
/// fabrics use 14 (67 ms); soft-RoCE under emulation can stall longer than
/// that, and a retransmit storm helps nobody.
const ACK_TIMEOUT: u8 = 17;
const RETRY_COUNT: u8 = 7;
const RNR_RETRY: u8 = 7;

/// A reliable-connected queue pair and its completion queue.
pub struct QueuePair {
    device: Arc<Device>,
    channel: *mut ffi::ibv_comp_channel,
    cq: *mut ffi::ibv_cq,
    qp: *mut ffi::ibv_qp,
    /// This side, as the other side needs it.
    pub local: QpEndpoint,
}

// SAFETY: verbs calls on one QP/CQ are thread-safe in rdma-core (providers
// lock internally); the pointers are owned and released once in Drop.
unsafe impl Send for QueuePair {}
// SAFETY: as for Send: shared use goes through thread-safe verbs calls.
unsafe impl Sync for QueuePair {}

impl QueuePair {
    /// A QP in RESET with room for `depth` send work requests. `channel`:
    /// completions raise events on an fd (the child polls that way).
    pub fn new(
        device: &Arc<Device>,
        depth: u32,
        max_rd_atomic: u8,
        channel: bool,
    ) -> Result<Self, RdmaError> {
        let v = device.verbs;
        let depth = depth.clamp(1, device.limits.max_qp_wr);
        let mut me = QueuePair {
            device: device.clone(),
            channel: std::ptr::null_mut(),
            cq: std::ptr::null_mut(),
            qp: std::ptr::null_mut(),
            local: QpEndpoint {
                qp_num: 0,
                psn: rand::random::<u32>() & 0x00ff_ffff,
                lid: device.lid,
                gid: device.gid,
                mtu: device.active_mtu,
                max_rd_atomic,
            },
        };
        if channel {
            // SAFETY: valid context.
            me.channel = unsafe { (v.create_comp_channel)(device.ctx) };
            if me.channel.is_null() {
                return Err(RdmaError::verbs("ibv_create_comp_channel"));
            }
            // The fd is polled through tokio: it must not block.
            // SAFETY: a valid fd owned by the channel.
            unsafe {
                let fd = (*me.channel).fd;
                let fl = libc::fcntl(fd, libc::F_GETFL);
                if fl < 0 || libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) < 0 {
                    return Err(RdmaError::verbs(
                        "fcntl(O_NONBLOCK) on the completion channel",
                    ));
                }
            }
        }
        // SAFETY: valid context; the channel is null or ours.
        me.cq = unsafe {
            (v.create_cq)(
                device.ctx,
                depth as i32 + 1,
                std::ptr::null_mut(),
                me.channel,
                0,
            )
        };
        if me.cq.is_null() {
            return Err(RdmaError::verbs("ibv_create_cq"));
        }
        let mut init = ffi::ibv_qp_init_attr {
            qp_context: std::ptr::null_mut(),
            send_cq: me.cq,
            recv_cq: me.cq,
            srq: std::ptr::null_mut(),
            cap: ffi::ibv_qp_cap {
                max_send_wr: depth,
                max_recv_wr: 1,
                max_send_sge: 1,
                max_recv_sge: 1,
                max_inline_data: 0,
            },
            qp_type: ffi::IBV_QPT_RC,
            sq_sig_all: 0,
        };
        // SAFETY: valid PD and init attributes.
        me.qp = unsafe { (v.create_qp)(device.pd, &mut init) };
        if me.qp.is_null() {
            return Err(RdmaError::verbs("ibv_create_qp"));
        }
        // SAFETY: non-null QP.
        me.local.qp_num = unsafe { (*me.qp).qp_num };
        Ok(me)
    }

    fn modify(
        &self,
        attr: &mut ibv_qp_attr,
        mask: i32,
        what: &'static str,
    ) -> Result<(), RdmaError> {
        // SAFETY: valid QP and attributes.
        let rc = unsafe { (self.device.verbs.modify_qp)(self.qp, attr, mask) };
        if rc != 0 {
            return Err(RdmaError::Verbs {
                call: what,
                source: std::io::Error::from_raw_os_error(rc),
            });
        }
        Ok(())
    }

    /// RESET → INIT → RTR → RTS towards `remote`. `remote_access`: what the
    /// other side may do to our memory through this QP (the parent allows
    /// remote reads; the child nothing). Outstanding reads are the smaller of
    /// what each side asked for and what the devices allow.
    pub fn connect(&self, remote: &QpEndpoint, remote_access: i32) -> Result<(), RdmaError> {
        let lim = &self.device.limits;
        let rd = |a: u8, b: u8, dev: u32| a.min(b).min(dev.min(255) as u8).max(1);
        // SAFETY: zeroed plain-data attributes.
        let mut a: ibv_qp_attr = unsafe { std::mem::zeroed() };
        a.qp_state = ffi::IBV_QPS_INIT;
        a.pkey_index = 0;
        a.port_num = self.device.port;
        a.qp_access_flags = remote_access as u32;
        self.modify(
            &mut a,
            ffi::IBV_QP_STATE
                | ffi::IBV_QP_PKEY_INDEX
                | ffi::IBV_QP_PORT
                | ffi::IBV_QP_ACCESS_FLAGS,
            "ibv_modify_qp(INIT)",
        )?;
        // SAFETY: as above.
        let mut a: ibv_qp_attr = unsafe { std::mem::zeroed() };
        a.qp_state = ffi::IBV_QPS_RTR;
        a.path_mtu = self.local.mtu.min(remote.mtu).max(1) as i32;
        a.dest_qp_num = remote.qp_num;
        a.rq_psn = remote.psn;
        a.max_dest_rd_atomic = rd(
            remote.max_rd_atomic,
            remote.max_rd_atomic,
            lim.max_qp_rd_atom,
        );
        a.min_rnr_timer = 12;
        a.ah_attr.dlid = remote.lid;
        a.ah_attr.port_num = self.device.port;
        if remote.gid.iter().any(|b| *b != 0) {
            a.ah_attr.is_global = 1;
            a.ah_attr.grh.dgid = remote.gid;
            a.ah_attr.grh.sgid_index = self.device.gid_index;
            a.ah_attr.grh.hop_limit = 64;
        }
        self.modify(
            &mut a,
            ffi::IBV_QP_STATE
                | ffi::IBV_QP_AV
                | ffi::IBV_QP_PATH_MTU
                | ffi::IBV_QP_DEST_QPN
                | ffi::IBV_QP_RQ_PSN
                | ffi::IBV_QP_MAX_DEST_RD_ATOMIC
                | ffi::IBV_QP_MIN_RNR_TIMER,
            "ibv_modify_qp(RTR)",
        )?;
        // SAFETY: as above.
        let mut a: ibv_qp_attr = unsafe { std::mem::zeroed() };
        a.qp_state = ffi::IBV_QPS_RTS;
        a.timeout = ACK_TIMEOUT;
        a.retry_cnt = RETRY_COUNT;
        a.rnr_retry = RNR_RETRY;
        a.sq_psn = self.local.psn;
        a.max_rd_atomic = rd(
            self.local.max_rd_atomic,
            remote.max_rd_atomic,
            lim.max_qp_init_rd_atom,
        );
        self.modify(
            &mut a,
            ffi::IBV_QP_STATE
                | ffi::IBV_QP_TIMEOUT
                | ffi::IBV_QP_RETRY_CNT
                | ffi::IBV_QP_RNR_RETRY
                | ffi::IBV_QP_SQ_PSN
                | ffi::IBV_QP_MAX_QP_RD_ATOMIC,
            "ibv_modify_qp(RTS)",
        )
    }

    /// Moves the QP to the error state: every outstanding work request
    /// completes at once with a flush error, so no more DMA targets memory
    /// that a caller is about to reuse.
    pub fn set_error(&self) {
        // SAFETY: zeroed plain-data attributes.
        let mut a: ibv_qp_attr = unsafe { std::mem::zeroed() };
        a.qp_state = ffi::IBV_QPS_ERR;
        let _ = self.modify(&mut a, ffi::IBV_QP_STATE, "ibv_modify_qp(ERR)");
    }

    /// Posts one signaled RDMA READ of `len` bytes from `remote_addr`
    /// (`rkey`) into `local_addr` (`lkey`).
    ///
    /// # Safety
    /// `local_addr..+len` must stay valid, registered under `lkey`, and not
    /// be touched by anyone else until this work request's completion has
    /// been polled or the QP is destroyed.
    pub unsafe fn post_read(
        &self,
        wr_id: u64,
        local_addr: u64,
        lkey: u32,
        len: u32,
        remote_addr: u64,
        rkey: u32,
    ) -> Result<(), RdmaError> {
        let mut sge = ffi::ibv_sge {
            addr: local_addr,
            length: len,
            lkey,
        };
        // SAFETY: zeroed plain data, then the fields an RDMA READ uses.
        let mut wr: ffi::ibv_send_wr = unsafe { std::mem::zeroed() };
        wr.wr_id = wr_id;
        wr.sg_list = &mut sge;
        wr.num_sge = 1;
        wr.opcode = ffi::IBV_WR_RDMA_READ;
        wr.send_flags = ffi::IBV_SEND_SIGNALED;
        wr.remote_addr = remote_addr;
        wr.rkey = rkey;
        let mut bad = std::ptr::null_mut();
        // SAFETY: the QP's context ops table is the provider's; post_send
        // copies the WR and SGE before returning.
        let rc = unsafe {
            let ctx = (*self.qp).context;
            match (*ctx).ops.post_send {
                Some(post) => post(self.qp, &mut wr, &mut bad),
                None => libc::ENOSYS,
            }
        };
        if rc != 0 {
            return Err(RdmaError::Verbs {
                call: "ibv_post_send",
                source: std::io::Error::from_raw_os_error(rc),
            });
        }
        Ok(())
    }

    /// Takes up to `out.len()` completions; returns how many.
    pub fn poll(&self, out: &mut [ffi::ibv_wc]) -> Result<usize, RdmaError> {
        // SAFETY: valid CQ; `out` has room for the entries asked for.
        let n = unsafe {
            let ctx = (*self.cq).context;
            match (*ctx).ops.poll_cq {
                Some(poll) => poll(self.cq, out.len() as i32, out.as_mut_ptr()),
                None => -1,
            }
        };
        if n < 0 {
            return Err(RdmaError::verbs("ibv_poll_cq"));
        }
        Ok(n as usize)
    }

    /// Arms the completion channel for the next completion.
    pub fn req_notify(&self) -> Result<(), RdmaError> {
        // SAFETY: valid CQ.
        let rc = unsafe {
            let ctx = (*self.cq).context;
            match (*ctx).ops.req_notify_cq {
                Some(f) => f(self.cq, 0),
                None => libc::ENOSYS,
            }
        };
        if rc != 0 {
            return Err(RdmaError::Verbs {
                call: "ibv_req_notify_cq",
                source: std::io::Error::from_raw_os_error(rc),
            });
        }
        Ok(())
    }

    /// The completion channel's fd (non-blocking), if it has one.
    pub fn channel_fd(&self) -> Option<RawFd> {
        // SAFETY: non-null channel owned by self.
        (!self.channel.is_null()).then(|| unsafe { (*self.channel).fd })
    }

    /// Consumes and acknowledges one completion event, if one is pending.
    pub fn take_event(&self) -> Result<bool, RdmaError> {
        if self.channel.is_null() {
            return Ok(false);
        }
        let mut cq = std::ptr::null_mut();
        let mut ctx = std::ptr::null_mut();
        // SAFETY: valid channel; the fd is non-blocking.
        let rc = unsafe { (self.device.verbs.get_cq_event)(self.channel, &mut cq, &mut ctx) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::WouldBlock {
                return Ok(false);
            }
            return Err(RdmaError::Verbs {
                call: "ibv_get_cq_event",
                source: e,
            });
        }
        // SAFETY: the event was for our CQ (the only one on this channel).
        unsafe { (self.device.verbs.ack_cq_events)(cq, 1) };
        Ok(true)
    }
}

impl Drop for QueuePair {
    fn drop(&mut self) {
        let v = self.device.verbs;
        // SAFETY: owned objects, destroyed once, QP before CQ before channel;
        // every event taken was acknowledged.
        unsafe {
            if !self.qp.is_null() {
                (v.destroy_qp)(self.qp);
            }
            if !self.cq.is_null() {
                (v.destroy_cq)(self.cq);
            }
            if !self.channel.is_null() {
                (v.destroy_comp_channel)(self.channel);
            }
        }
    }
}

impl crate::reads::ReadQueue for QueuePair {
    unsafe fn post_read(&self, wr: &crate::reads::WorkRequest) -> Result<(), RdmaError> {
        // SAFETY: the trait's contract is `QueuePair::post_read`'s: the
        // local bytes stay mapped, registered and untouched until the
        // completion is dispatched or the QP is destroyed.
        unsafe {
            QueuePair::post_read(
                self,
                wr.wr_id,
                wr.local_addr,
                wr.lkey,
                wr.len,
                wr.remote_addr,
                wr.rkey,
            )
        }
    }

    fn set_error(&self) {
        QueuePair::set_error(self)
    }
}
