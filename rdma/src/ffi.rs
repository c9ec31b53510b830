//! The few libibverbs calls weightcast needs, loaded at run time.
//!
//! Why not `ibverbs`/`rdma-sys`: both link `libibverbs.so.1` at build and at
//! start-up (`#[link(name = "ibverbs")]`), so a binary built with them does
//! not even start on a machine without rdma-core, and building them needs
//! libclang, cmake and the rdma-core headers. weightcast ships one binary for
//! every machine: it `dlopen`s `libibverbs.so.1` when RDMA is wanted and
//! quietly uses TCP when the library or a device is missing.
//!
//! The structs below mirror `<infiniband/verbs.h>` (rdma-core's ABI, stable
//! since rdma-core 13: new fields only go into the `verbs_*` extensions, which
//! we never touch). `ibv_post_send`, `ibv_poll_cq` and `ibv_req_notify_cq` are
//! `static inline` in verbs.h: they call through `ibv_context.ops`, and so do
//! we. Only the fields we read or write are named; the rest is opaque padding
//! of the exact size. `tests::layout_matches_verbs_h` compiles a C program
//! against the real header, where one is installed, and compares.

#![allow(non_camel_case_types)]

use std::ffi::{c_char, c_int, c_uint, c_void};
use std::sync::OnceLock;

// enum ibv_wr_opcode / ibv_send_flags / ibv_qp_type / ibv_qp_state
pub const IBV_WR_RDMA_READ: c_int = 4;
pub const IBV_SEND_SIGNALED: c_uint = 2;
pub const IBV_QPT_RC: c_int = 2;
pub const IBV_QPS_INIT: c_int = 1;
pub const IBV_QPS_RTR: c_int = 2;
pub const IBV_QPS_RTS: c_int = 3;
pub const IBV_QPS_ERR: c_int = 6;
// enum ibv_access_flags
pub const IBV_ACCESS_LOCAL_WRITE: c_int = 1;
pub const IBV_ACCESS_REMOTE_READ: c_int = 4;
// enum ibv_qp_attr_mask
pub const IBV_QP_STATE: c_int = 1;
pub const IBV_QP_ACCESS_FLAGS: c_int = 8;
pub const IBV_QP_PKEY_INDEX: c_int = 16;
pub const IBV_QP_PORT: c_int = 32;
pub const IBV_QP_AV: c_int = 128;
pub const IBV_QP_PATH_MTU: c_int = 256;
pub const IBV_QP_TIMEOUT: c_int = 512;
pub const IBV_QP_RETRY_CNT: c_int = 1024;
pub const IBV_QP_RNR_RETRY: c_int = 2048;
pub const IBV_QP_RQ_PSN: c_int = 4096;
pub const IBV_QP_MAX_QP_RD_ATOMIC: c_int = 8192;
pub const IBV_QP_MIN_RNR_TIMER: c_int = 32768;
pub const IBV_QP_SQ_PSN: c_int = 65536;
pub const IBV_QP_MAX_DEST_RD_ATOMIC: c_int = 131072;
pub const IBV_QP_DEST_QPN: c_int = 1048576;
// enum ibv_wc_status, ibv_port_state, ibv_link_layer
pub const IBV_WC_SUCCESS: c_int = 0;
pub const IBV_WC_WR_FLUSH_ERR: c_int = 5;
pub const IBV_PORT_ACTIVE: c_int = 4;
pub const IBV_LINK_LAYER_ETHERNET: u8 = 2;

/// `struct ibv_context_ops`: 37 function pointers; we call three.
#[repr(C)]
pub struct ibv_context_ops {
    _before_poll_cq: [*mut c_void; 11],
    pub poll_cq: Option<unsafe extern "C" fn(*mut ibv_cq, c_int, *mut ibv_wc) -> c_int>,
    pub req_notify_cq: Option<unsafe extern "C" fn(*mut ibv_cq, c_int) -> c_int>,
    _before_post_send: [*mut c_void; 12],
    pub post_send:
        Option<unsafe extern "C" fn(*mut ibv_qp, *mut ibv_send_wr, *mut *mut ibv_send_wr) -> c_int>,
    _rest: [*mut c_void; 6],
}

#[repr(C)]
pub struct ibv_context {
    pub device: *mut c_void,
    pub ops: ibv_context_ops,
    pub cmd_fd: c_int,
    pub async_fd: c_int,
    pub num_comp_vectors: c_int,
    _mutex_and_compat: [u8; 52],
}

#[repr(C)]
pub struct ibv_device_attr {
    pub fw_ver: [c_char; 64],
    pub node_guid: u64,
    pub sys_image_guid: u64,
    pub max_mr_size: u64,
    pub page_size_cap: u64,
    pub vendor_id: u32,
    pub vendor_part_id: u32,
    pub hw_ver: u32,
    pub max_qp: c_int,
    pub max_qp_wr: c_int,
    pub device_cap_flags: c_uint,
    pub max_sge: c_int,
    pub max_sge_rd: c_int,
    pub max_cq: c_int,
    pub max_cqe: c_int,
    pub max_mr: c_int,
    pub max_pd: c_int,
    pub max_qp_rd_atom: c_int,
    pub max_ee_rd_atom: c_int,
    pub max_res_rd_atom: c_int,
    pub max_qp_init_rd_atom: c_int,
    _ee_to_srq: [u8; 64],
    pub max_pkeys: u16,
    pub local_ca_ack_delay: u8,
    pub phys_port_cnt: u8,
}

#[repr(C)]
pub struct ibv_port_attr {
    pub state: c_int,
    pub max_mtu: c_int,
    pub active_mtu: c_int,
    pub gid_tbl_len: c_int,
    pub port_cap_flags: u32,
    pub max_msg_sz: u32,
    pub bad_pkey_cntr: u32,
    pub qkey_viol_cntr: u32,
    pub pkey_tbl_len: u16,
    pub lid: u16,
    pub sm_lid: u16,
    pub lmc: u8,
    pub max_vl_num: u8,
    pub sm_sl: u8,
    pub subnet_timeout: u8,
    pub init_type_reply: u8,
    pub active_width: u8,
    pub active_speed: u8,
    pub phys_state: u8,
    pub link_layer: u8,
    pub flags: u8,
    pub port_cap_flags2: u16,
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ibv_wc {
    pub wr_id: u64,
    pub status: c_int,
    pub opcode: c_int,
    pub vendor_err: u32,
    pub byte_len: u32,
    pub imm_data: u32,
    pub qp_num: u32,
    pub src_qp: u32,
    pub wc_flags: c_uint,
    pub pkey_index: u16,
    pub slid: u16,
    pub sl: u8,
    pub dlid_path_bits: u8,
}

/// `union ibv_gid` holds two u64s, so the route is 8-aligned in C.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub struct ibv_global_route {
    pub dgid: [u8; 16],
    pub flow_label: u32,
    pub sgid_index: u8,
    pub hop_limit: u8,
    pub traffic_class: u8,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct ibv_ah_attr {
    pub grh: ibv_global_route,
    pub dlid: u16,
    pub sl: u8,
    pub src_path_bits: u8,
    pub static_rate: u8,
    pub is_global: u8,
    pub port_num: u8,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct ibv_qp_cap {
    pub max_send_wr: u32,
    pub max_recv_wr: u32,
    pub max_send_sge: u32,
    pub max_recv_sge: u32,
    pub max_inline_data: u32,
}

#[repr(C)]
pub struct ibv_qp_init_attr {
    pub qp_context: *mut c_void,
    pub send_cq: *mut ibv_cq,
    pub recv_cq: *mut ibv_cq,
    pub srq: *mut c_void,
    pub cap: ibv_qp_cap,
    pub qp_type: c_int,
    pub sq_sig_all: c_int,
}

#[repr(C)]
pub struct ibv_qp_attr {
    pub qp_state: c_int,
    pub cur_qp_state: c_int,
    pub path_mtu: c_int,
    pub path_mig_state: c_int,
    pub qkey: u32,
    pub rq_psn: u32,
    pub sq_psn: u32,
    pub dest_qp_num: u32,
    pub qp_access_flags: c_uint,
    pub cap: ibv_qp_cap,
    pub ah_attr: ibv_ah_attr,
    pub alt_ah_attr: ibv_ah_attr,
    pub pkey_index: u16,
    pub alt_pkey_index: u16,
    pub en_sqd_async_notify: u8,
    pub sq_draining: u8,
    pub max_rd_atomic: u8,
    pub max_dest_rd_atomic: u8,
    pub min_rnr_timer: u8,
    pub port_num: u8,
    pub timeout: u8,
    pub retry_cnt: u8,
    pub rnr_retry: u8,
    pub alt_port_num: u8,
    pub alt_timeout: u8,
    pub rate_limit: u32,
}

#[repr(C)]
pub struct ibv_sge {
    pub addr: u64,
    pub length: u32,
    pub lkey: u32,
}

/// `struct ibv_send_wr` with its `wr` union as the `rdma` member (the only
/// one an RDMA READ uses) and the later unions as padding.
#[repr(C)]
pub struct ibv_send_wr {
    pub wr_id: u64,
    pub next: *mut ibv_send_wr,
    pub sg_list: *mut ibv_sge,
    pub num_sge: c_int,
    pub opcode: c_int,
    pub send_flags: c_uint,
    pub imm_data: u32,
    pub remote_addr: u64,
    pub rkey: u32,
    _wr_union_rest: [u8; 20],
    _qp_type_and_bind: [u8; 56],
}

#[repr(C)]
pub struct ibv_mr {
    pub context: *mut ibv_context,
    pub pd: *mut c_void,
    pub addr: *mut c_void,
    pub length: usize,
    pub handle: u32,
    pub lkey: u32,
    pub rkey: u32,
}

#[repr(C)]
pub struct ibv_qp {
    pub context: *mut ibv_context,
    pub qp_context: *mut c_void,
    pub pd: *mut c_void,
    pub send_cq: *mut ibv_cq,
    pub recv_cq: *mut ibv_cq,
    pub srq: *mut c_void,
    pub handle: u32,
    pub qp_num: u32,
    pub state: c_int,
    pub qp_type: c_int,
    _sync: [u8; 96],
}

#[repr(C)]
pub struct ibv_cq {
    pub context: *mut ibv_context,
    _rest: [u8; 120],
}

#[repr(C)]
pub struct ibv_comp_channel {
    pub context: *mut ibv_context,
    pub fd: c_int,
    pub refcnt: c_int,
}

pub type ibv_device = c_void;
pub type ibv_pd = c_void;

/// The exported libibverbs functions weightcast calls, resolved once.
pub struct Verbs {
    _lib: libloading::Library,
    pub get_device_list: unsafe extern "C" fn(*mut c_int) -> *mut *mut ibv_device,
    pub free_device_list: unsafe extern "C" fn(*mut *mut ibv_device),
    pub get_device_name: unsafe extern "C" fn(*mut ibv_device) -> *const c_char,
    pub open_device: unsafe extern "C" fn(*mut ibv_device) -> *mut ibv_context,
    pub close_device: unsafe extern "C" fn(*mut ibv_context) -> c_int,
    pub query_device: unsafe extern "C" fn(*mut ibv_context, *mut ibv_device_attr) -> c_int,
    pub query_port: unsafe extern "C" fn(*mut ibv_context, u8, *mut ibv_port_attr) -> c_int,
    pub query_gid: unsafe extern "C" fn(*mut ibv_context, u8, c_int, *mut [u8; 16]) -> c_int,
    pub alloc_pd: unsafe extern "C" fn(*mut ibv_context) -> *mut ibv_pd,
    pub dealloc_pd: unsafe extern "C" fn(*mut ibv_pd) -> c_int,
    pub reg_mr: unsafe extern "C" fn(*mut ibv_pd, *mut c_void, usize, c_int) -> *mut ibv_mr,
    pub dereg_mr: unsafe extern "C" fn(*mut ibv_mr) -> c_int,
    pub create_comp_channel: unsafe extern "C" fn(*mut ibv_context) -> *mut ibv_comp_channel,
    pub destroy_comp_channel: unsafe extern "C" fn(*mut ibv_comp_channel) -> c_int,
    pub create_cq: unsafe extern "C" fn(
        *mut ibv_context,
        c_int,
        *mut c_void,
        *mut ibv_comp_channel,
        c_int,
    ) -> *mut ibv_cq,
    pub destroy_cq: unsafe extern "C" fn(*mut ibv_cq) -> c_int,
    pub get_cq_event:
        unsafe extern "C" fn(*mut ibv_comp_channel, *mut *mut ibv_cq, *mut *mut c_void) -> c_int,
    pub ack_cq_events: unsafe extern "C" fn(*mut ibv_cq, c_uint),
    pub create_qp: unsafe extern "C" fn(*mut ibv_pd, *mut ibv_qp_init_attr) -> *mut ibv_qp,
    pub modify_qp: unsafe extern "C" fn(*mut ibv_qp, *mut ibv_qp_attr, c_int) -> c_int,
    pub destroy_qp: unsafe extern "C" fn(*mut ibv_qp) -> c_int,
    pub wc_status_str: unsafe extern "C" fn(c_int) -> *const c_char,
}

/// The library name the dynamic loader looks for (the runtime package's
/// SONAME, present without the -dev package).
pub const LIBRARY: &str = "libibverbs.so.1";

static VERBS: OnceLock<Result<Verbs, String>> = OnceLock::new();

impl Verbs {
    /// Loads libibverbs once per process; the error says why it is unusable.
    pub fn get() -> Result<&'static Verbs, String> {
        VERBS.get_or_init(Self::load).as_ref().map_err(Clone::clone)
    }

    fn load() -> Result<Verbs, String> {
        // SAFETY: loading libibverbs runs its constructors, which only set up
        // its own state; it is a well-behaved system library.
        let lib = unsafe { libloading::Library::new(LIBRARY) }
            .map_err(|e| format!("cannot load {LIBRARY}: {e}"))?;
        macro_rules! sym {
            ($name:literal) => {
                // SAFETY: the symbol's C signature is the field's type, as
                // declared in verbs.h.
                unsafe {
                    *lib.get(concat!($name, "\0").as_bytes())
                        .map_err(|e| format!("{LIBRARY} lacks {}: {e}", $name))?
                }
            };
        }
        Ok(Verbs {
            get_device_list: sym!("ibv_get_device_list"),
            free_device_list: sym!("ibv_free_device_list"),
            get_device_name: sym!("ibv_get_device_name"),
            open_device: sym!("ibv_open_device"),
            close_device: sym!("ibv_close_device"),
            query_device: sym!("ibv_query_device"),
            query_port: sym!("ibv_query_port"),
            query_gid: sym!("ibv_query_gid"),
            alloc_pd: sym!("ibv_alloc_pd"),
            dealloc_pd: sym!("ibv_dealloc_pd"),
            reg_mr: sym!("ibv_reg_mr"),
            dereg_mr: sym!("ibv_dereg_mr"),
            create_comp_channel: sym!("ibv_create_comp_channel"),
            destroy_comp_channel: sym!("ibv_destroy_comp_channel"),
            create_cq: sym!("ibv_create_cq"),
            destroy_cq: sym!("ibv_destroy_cq"),
            get_cq_event: sym!("ibv_get_cq_event"),
            ack_cq_events: sym!("ibv_ack_cq_events"),
            create_qp: sym!("ibv_create_qp"),
            modify_qp: sym!("ibv_modify_qp"),
            destroy_qp: sym!("ibv_destroy_qp"),
            wc_status_str: sym!("ibv_wc_status_str"),
            _lib: lib,
        })
    }

    /// `ibv_wc_status_str`, owned.
    pub fn status_str(&self, status: c_int) -> String {
        // SAFETY: returns a static string for any value.
        let p = unsafe { (self.wc_status_str)(status) };
        if p.is_null() {
            return format!("status {status}");
        }
        // SAFETY: non-null, NUL-terminated static string.
        unsafe { std::ffi::CStr::from_ptr(p) }
            .to_string_lossy()
            .into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    /// Sizes and offsets as the C compiler sees them in verbs.h (x86-64 and
    /// aarch64 Linux agree).
    const EXPECTED: &[(&str, usize)] = &[
        ("size ibv_context", 328),
        ("off ibv_context.cmd_fd", 264),
        ("off ops.poll_cq", 88),
        ("off ops.req_notify_cq", 96),
        ("off ops.post_send", 200),
        ("size ibv_device_attr", 232),
        ("off ibv_device_attr.max_mr_size", 80),
        ("off ibv_device_attr.max_qp_wr", 112),
        ("off ibv_device_attr.max_qp_init_rd_atom", 156),
        ("off ibv_device_attr.phys_port_cnt", 227),
        ("size ibv_port_attr", 52),
        ("off ibv_port_attr.max_msg_sz", 20),
        ("off ibv_port_attr.lid", 34),
        ("off ibv_port_attr.link_layer", 46),
        ("size ibv_wc", 48),
        ("off ibv_wc.vendor_err", 16),
        ("size ibv_ah_attr", 32),
        ("off ibv_ah_attr.is_global", 29),
        ("size ibv_qp_init_attr", 64),
        ("off ibv_qp_init_attr.qp_type", 52),
        ("size ibv_qp_attr", 144),
        ("off ibv_qp_attr.ah_attr", 56),
        ("off ibv_qp_attr.max_rd_atomic", 126),
        ("off ibv_qp_attr.timeout", 130),
        ("size ibv_send_wr", 128),
        ("off ibv_send_wr.opcode", 28),
        ("off ibv_send_wr.wr", 40),
        ("size ibv_mr", 48),
        ("off ibv_mr.lkey", 36),
        ("off ibv_mr.rkey", 40),
        ("size ibv_qp", 160),
        ("off ibv_qp.qp_num", 52),
        ("size ibv_cq", 128),
        ("off ibv_comp_channel.fd", 8),
    ];

    fn ours(what: &str) -> usize {
        match what {
            "size ibv_context" => size_of::<ibv_context>(),
            "off ibv_context.cmd_fd" => offset_of!(ibv_context, cmd_fd),
            "off ops.poll_cq" => offset_of!(ibv_context_ops, poll_cq),
            "off ops.req_notify_cq" => offset_of!(ibv_context_ops, req_notify_cq),
            "off ops.post_send" => offset_of!(ibv_context_ops, post_send),
            "size ibv_device_attr" => size_of::<ibv_device_attr>(),
            "off ibv_device_attr.max_mr_size" => offset_of!(ibv_device_attr, max_mr_size),
            "off ibv_device_attr.max_qp_wr" => offset_of!(ibv_device_attr, max_qp_wr),
            "off ibv_device_attr.max_qp_init_rd_atom" => {
                offset_of!(ibv_device_attr, max_qp_init_rd_atom)
            }
            "off ibv_device_attr.phys_port_cnt" => offset_of!(ibv_device_attr, phys_port_cnt),
            "size ibv_port_attr" => size_of::<ibv_port_attr>(),
            "off ibv_port_attr.max_msg_sz" => offset_of!(ibv_port_attr, max_msg_sz),
            "off ibv_port_attr.lid" => offset_of!(ibv_port_attr, lid),
            "off ibv_port_attr.link_layer" => offset_of!(ibv_port_attr, link_layer),
            "size ibv_wc" => size_of::<ibv_wc>(),
            "off ibv_wc.vendor_err" => offset_of!(ibv_wc, vendor_err),
            "size ibv_ah_attr" => size_of::<ibv_ah_attr>(),
            "off ibv_ah_attr.is_global" => offset_of!(ibv_ah_attr, is_global),
            "size ibv_qp_init_attr" => size_of::<ibv_qp_init_attr>(),
            "off ibv_qp_init_attr.qp_type" => offset_of!(ibv_qp_init_attr, qp_type),
            "size ibv_qp_attr" => size_of::<ibv_qp_attr>(),
            "off ibv_qp_attr.ah_attr" => offset_of!(ibv_qp_attr, ah_attr),
            "off ibv_qp_attr.max_rd_atomic" => offset_of!(ibv_qp_attr, max_rd_atomic),
            "off ibv_qp_attr.timeout" => offset_of!(ibv_qp_attr, timeout),
            "size ibv_send_wr" => size_of::<ibv_send_wr>(),
            "off ibv_send_wr.opcode" => offset_of!(ibv_send_wr, opcode),
            "off ibv_send_wr.wr" => offset_of!(ibv_send_wr, remote_addr),
            "size ibv_mr" => size_of::<ibv_mr>(),
            "off ibv_mr.lkey" => offset_of!(ibv_mr, lkey),
            "off ibv_mr.rkey" => offset_of!(ibv_mr, rkey),
            "size ibv_qp" => size_of::<ibv_qp>(),
            "off ibv_qp.qp_num" => offset_of!(ibv_qp, qp_num),
            "size ibv_cq" => size_of::<ibv_cq>(),
            "off ibv_comp_channel.fd" => offset_of!(ibv_comp_channel, fd),
            other => panic!("unknown layout item {other}"),
        }
    }

    #[test]
    fn layout_matches_the_recorded_abi() {
        for (what, want) in EXPECTED {
            assert_eq!(ours(what), *want, "{what}");
        }
    }

    /// Where rdma-core's headers and a C compiler exist (CI installs them
    /// with the VM's packages), the recorded numbers are checked against the
    /// header itself.
    #[test]
    fn layout_matches_verbs_h() {
        let header = std::path::Path::new("/usr/include/infiniband/verbs.h");
        let cc = std::process::Command::new("cc").arg("--version").output();
        if !header.exists() || cc.is_err() {
            eprintln!("skipped: no verbs.h or no C compiler here");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut c = String::from(
            "#include <stdio.h>\n#include <stddef.h>\n#include <infiniband/verbs.h>\nint main(void){\n",
        );
        for (what, _) in EXPECTED {
            let (kind, rest) = what.split_once(' ').unwrap();
            let expr = match kind {
                "size" => format!("sizeof(struct {rest})"),
                _ => {
                    let (ty, field) = rest.split_once('.').unwrap();
                    let ty = if ty == "ops" { "ibv_context_ops" } else { ty };
                    format!("offsetof(struct {ty}, {field})")
                }
            };
            c.push_str(&format!("printf(\"%zu\\n\", (size_t){expr});\n"));
        }
        c.push_str("return 0;}\n");
        let src = dir.path().join("probe.c");
        let bin = dir.path().join("probe");
        std::fs::write(&src, c).unwrap();
        let built = std::process::Command::new("cc")
            .arg(&src)
            .arg("-o")
            .arg(&bin)
            .status()
            .unwrap();
        assert!(built.success(), "probe did not compile against verbs.h");
        let out = std::process::Command::new(&bin).output().unwrap();
        let got: Vec<usize> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| l.parse().unwrap())
            .collect();
        for ((what, want), got) in EXPECTED.iter().zip(got) {
            assert_eq!(got, *want, "{what}: verbs.h says {got}");
        }
    }
}
