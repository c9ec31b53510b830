//! Device and port discovery: one opened device, its protection domain, the
//! port and GID this process uses, and the device's limits.

use crate::ffi::{self, Verbs};
use crate::RdmaError;
use std::ffi::CStr;

/// What the device allows, as far as weightcast cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest message (one work request) the port carries.
    pub max_msg_sz: u64,
    /// Work requests one queue pair may hold.
    pub max_qp_wr: u32,
    /// RDMA READs one QP may have outstanding as initiator.
    pub max_qp_init_rd_atom: u32,
    /// RDMA READs one QP may serve at once as responder.
    pub max_qp_rd_atom: u32,
    pub max_mr_size: u64,
}

/// An opened RDMA device with an active port.
pub struct Device {
    pub(crate) verbs: &'static Verbs,
    pub(crate) ctx: *mut ffi::ibv_context,
    pub(crate) pd: *mut ffi::ibv_pd,
    pub name: String,
    pub port: u8,
    pub gid_index: u8,
    pub gid: [u8; 16],
    pub lid: u16,
    /// `enum ibv_mtu` of the port.
    pub active_mtu: u8,
    pub ethernet: bool,
    pub limits: Limits,
}

// SAFETY: verbs objects are thread-safe per rdma-core's documentation (every
// call takes its own locks); the pointers are owned by this value.
unsafe impl Send for Device {}
// SAFETY: as for Send: shared use goes through thread-safe verbs calls.
unsafe impl Sync for Device {}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("name", &self.name)
            .field("port", &self.port)
            .field("gid_index", &self.gid_index)
            .field("gid", &format_gid(&self.gid))
            .field("limits", &self.limits)
            .finish()
    }
}

/// A GID the way `ibv_devinfo` prints it: IPv4-mapped ones as `::ffff:a.b.c.d`.
pub fn format_gid(g: &[u8; 16]) -> String {
    std::net::Ipv6Addr::from(*g).to_string()
}

fn is_ipv4_mapped(g: &[u8; 16]) -> bool {
    g[..10].iter().all(|b| *b == 0) && g[10] == 0xff && g[11] == 0xff
}

/// Which GID to use: RoCE v2 over IPv4 routes everywhere an IP does, so an
/// IPv4-mapped v2 GID wins, then any IPv4-mapped one, then any non-zero one
/// (InfiniBand: index 0, the port GID). `types[i]` is the sysfs GID type
/// ("RoCE v2", "IB/RoCE v1") when known.
pub fn pick_gid(gids: &[[u8; 16]], types: &[Option<String>]) -> Option<usize> {
    let v2 = |i: usize| types.get(i).and_then(|t| t.as_deref()) == Some("RoCE v2");
    let nonzero = |g: &[u8; 16]| g.iter().any(|b| *b != 0);
    let by = |f: &dyn Fn(usize, &[u8; 16]) -> bool| {
        gids.iter()
            .enumerate()
            .find(|(i, g)| nonzero(g) && f(*i, g))
            .map(|(i, _)| i)
    };
    by(&|i, g| is_ipv4_mapped(g) && v2(i))
        .or_else(|| by(&|_, g| is_ipv4_mapped(g)))
        .or_else(|| by(&|i, _| v2(i)))
        .or_else(|| by(&|_, _| true))
}

impl Device {
    /// Opens `name`, or the first device with an active port.
    /// [`RdmaError::is_absent`] tells the errors that just mean "no RDMA
    /// here" (the quiet case of `--transport auto`).
    pub fn open(name: Option<&str>) -> Result<Device, RdmaError> {
        let verbs = Verbs::get().map_err(RdmaError::Library)?;
        let mut n = 0;
        // SAFETY: plain call; the list is freed below.
        let list = unsafe { (verbs.get_device_list)(&mut n) };
        if list.is_null() || n <= 0 {
            if !list.is_null() {
                // SAFETY: returned by get_device_list.
                unsafe { (verbs.free_device_list)(list) };
            }
            return Err(RdmaError::NoDevice);
        }
        let mut last_err = None;
        let mut found = None;
        for i in 0..n as usize {
            // SAFETY: `list` has `n` entries.
            let dev = unsafe { *list.add(i) };
            // SAFETY: valid device; returns a static NUL-terminated name.
            let dev_name = unsafe { CStr::from_ptr((verbs.get_device_name)(dev)) }
                .to_string_lossy()
                .into_owned();
            if name.is_some_and(|want| want != dev_name) {
                continue;
            }
            match Self::open_one(verbs, dev, dev_name) {
                Ok(d) => {
                    found = Some(d);
                    break;
                }
                Err(e) => last_err = Some(e),
            }
        }
        // SAFETY: opened contexts stay valid after the list is freed.
        unsafe { (verbs.free_device_list)(list) };
        match (found, last_err, name) {
            (Some(d), _, _) => Ok(d),
            (None, Some(e), _) => Err(e),
            (None, None, Some(want)) => Err(RdmaError::DeviceNotFound(want.to_string())),
            (None, None, None) => Err(RdmaError::NoDevice),
        }
    }

    fn open_one(
        verbs: &'static Verbs,
        dev: *mut ffi::ibv_device,
        name: String,
    ) -> Result<Device, RdmaError> {
        // SAFETY: `dev` comes from the device list.
        let ctx = unsafe { (verbs.open_device)(dev) };
        if ctx.is_null() {
            return Err(RdmaError::verbs("ibv_open_device"));
        }
        // From here on `Device::drop` releases what exists.
        let mut d = Device {
            verbs,
            ctx,
            pd: std::ptr::null_mut(),
            name,
            port: 0,
            gid_index: 0,
            gid: [0; 16],
            lid: 0,
            active_mtu: 0,
            ethernet: false,
            limits: Limits {
                max_msg_sz: 0,
                max_qp_wr: 0,
                max_qp_init_rd_atom: 0,
                max_qp_rd_atom: 0,
                max_mr_size: 0,
            },
        };
        // SAFETY: zeroed plain-data out-parameter.
        let mut attr: ffi::ibv_device_attr = unsafe { std::mem::zeroed() };
        // SAFETY: valid context and out-parameter.
        if unsafe { (verbs.query_device)(ctx, &mut attr) } != 0 {
            return Err(RdmaError::verbs("ibv_query_device"));
        }
        let ports = attr.phys_port_cnt;
        let mut chosen = None;
        for port in 1..=ports.max(1) {
            // SAFETY: zeroed plain-data out-parameter, as verbs.h's inline
            // wrapper does before the compat call.
            let mut pa: ffi::ibv_port_attr = unsafe { std::mem::zeroed() };
            // SAFETY: valid context and out-parameter.
            if unsafe { (verbs.query_port)(ctx, port, &mut pa) } != 0 {
                continue;
            }
            if pa.state == ffi::IBV_PORT_ACTIVE {
                chosen = Some((port, pa));
                break;
            }
        }
        let Some((port, pa)) = chosen else {
            return Err(RdmaError::NoActivePort(d.name.clone()));
        };
        let mut gids = Vec::new();
        let mut types = Vec::new();
        for i in 0..pa.gid_tbl_len.clamp(0, 256) {
            let mut g = [0u8; 16];
            // SAFETY: valid context, index below the table length.
            if unsafe { (verbs.query_gid)(ctx, port, i, &mut g) } != 0 {
                g = [0; 16];
            }
            gids.push(g);
            types.push(
                std::fs::read_to_string(format!(
                    "/sys/class/infiniband/{}/ports/{port}/gid_attrs/types/{i}",
                    d.name
                ))
                .ok()
                .map(|s| s.trim().to_string()),
            );
            // GID tables are long (rxe: 1024) and mostly empty: stop at the
            // first empty entry once something was found.
            if g == [0; 16] && gids.iter().any(|g| *g != [0; 16]) {
                break;
            }
        }
        let gid_index = match std::env::var("WEIGHTCAST_RDMA_GID_INDEX")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
        {
            Some(i) if i < gids.len() => i,
            _ => pick_gid(&gids, &types).ok_or_else(|| RdmaError::NoGid(d.name.clone()))?,
        };
        // SAFETY: valid context.
        let pd = unsafe { (verbs.alloc_pd)(ctx) };
        if pd.is_null() {
            return Err(RdmaError::verbs("ibv_alloc_pd"));
        }
        d.pd = pd;
        d.port = port;
        d.gid_index = gid_index as u8;
        d.gid = gids[gid_index];
        d.lid = pa.lid;
        d.active_mtu = pa.active_mtu as u8;
        d.ethernet = pa.link_layer == ffi::IBV_LINK_LAYER_ETHERNET;
        d.limits = Limits {
            max_msg_sz: pa.max_msg_sz as u64,
            max_qp_wr: attr.max_qp_wr.max(1) as u32,
            max_qp_init_rd_atom: attr.max_qp_init_rd_atom.max(1) as u32,
            max_qp_rd_atom: attr.max_qp_rd_atom.max(1) as u32,
            max_mr_size: attr.max_mr_size,
        };
        Ok(d)
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        // SAFETY: owned objects, released once, PD before its context. Every
        // QP and MR holds an Arc<Device>, so none outlives this.
        unsafe {
            if !self.pd.is_null() {
                (self.verbs.dealloc_pd)(self.pd);
            }
            (self.verbs.close_device)(self.ctx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(a: u8) -> [u8; 16] {
        let mut g = [0u8; 16];
        g[10] = 0xff;
        g[11] = 0xff;
        g[12..].copy_from_slice(&[10, 0, 2, a]);
        g
    }

    #[test]
    fn gid_choice_prefers_ipv4_roce_v2() {
        let link_local = {
            let mut g = [0u8; 16];
            g[0] = 0xfe;
            g[1] = 0x80;
            g[15] = 1;
            g
        };
        let t = |s: &str| Some(s.to_string());
        // rxe: link-local v2 first, IPv4-mapped v2 second.
        assert_eq!(
            pick_gid(&[link_local, v4(15)], &[t("RoCE v2"), t("RoCE v2")]),
            Some(1)
        );
        // mlx5: v1 and v2 entries per address.
        assert_eq!(
            pick_gid(
                &[link_local, link_local, v4(9), v4(9)],
                &[t("IB/RoCE v1"), t("RoCE v2"), t("IB/RoCE v1"), t("RoCE v2")]
            ),
            Some(3)
        );
        // InfiniBand, no sysfs types: the port GID.
        assert_eq!(pick_gid(&[link_local], &[None]), Some(0));
        assert_eq!(pick_gid(&[[0; 16]], &[None]), None);
        assert_eq!(format_gid(&v4(15)), "::ffff:10.0.2.15");
    }
}
