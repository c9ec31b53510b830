//! Cutting one piece read into RDMA READ work requests.
//!
//! One work request moves at most the port's `max_msg_sz` (and at most
//! `u32::MAX`: an SGE length is 32 bits). Smaller requests than that still
//! pay off: with several outstanding, the NIC streams one while the next is
//! requested, and a failure costs less to diagnose. [`DEFAULT_WR_SIZE`] is
//! the size weightcast uses unless told otherwise.

/// 1 MiB: large enough that per-WR overhead (a doorbell, a CQE, one
/// completion to dispatch) is far below 1% at 200 Gb/s (≈ 24k WRs/s), small
/// enough that 16 outstanding fit any NIC's read credits.
pub const DEFAULT_WR_SIZE: u64 = 1 << 20;

/// The work-request size to use on a port: `wanted`, bounded by the port's
/// `max_msg_sz` and the 32-bit SGE length, never 0.
pub fn wr_size(wanted: u64, max_msg_sz: u64) -> u64 {
    let limit = if max_msg_sz == 0 {
        u32::MAX as u64
    } else {
        max_msg_sz
    };
    wanted.min(limit).min(u32::MAX as u64).max(1)
}

/// The (offset, length) of each work request for a `len`-byte read.
pub fn work_requests(len: u64, wr_size: u64) -> impl Iterator<Item = (u64, u32)> {
    let step = wr_size.clamp(1, u32::MAX as u64);
    (0..len.div_ceil(step)).map(move |i| {
        let off = i * step;
        (off, (len - off).min(step) as u32)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_cut_within_the_limits_and_cover_the_piece_exactly() {
        for (len, wr) in [
            (0u64, 1u64 << 20),
            (1, 1 << 20),
            ((1 << 20) - 1, 1 << 20),
            (1 << 20, 1 << 20),
            ((1 << 20) + 1, 1 << 20),
            (64 << 20, 1 << 20),
            ((64 << 20) + 12345, 4096),
            (10, 3),
        ] {
            let wrs: Vec<(u64, u32)> = work_requests(len, wr).collect();
            assert_eq!(wrs.len() as u64, len.div_ceil(wr), "len {len} wr {wr}");
            let mut next = 0;
            for (off, l) in &wrs {
                assert_eq!(*off, next, "contiguous");
                assert!(*l as u64 <= wr && *l > 0);
                next += *l as u64;
            }
            assert_eq!(next, len, "covers the piece");
        }
    }

    #[test]
    fn wr_size_respects_the_port() {
        assert_eq!(wr_size(DEFAULT_WR_SIZE, 1 << 31), 1 << 20);
        assert_eq!(wr_size(DEFAULT_WR_SIZE, 4096), 4096);
        assert_eq!(wr_size(1 << 40, 0), u32::MAX as u64);
        assert_eq!(wr_size(0, 1 << 31), 1);
        // A 4 GiB piece still becomes 32-bit work requests.
        assert!(work_requests(4 << 30, 1 << 40).all(|(_, l)| l > 0));
        assert_eq!(work_requests(4 << 30, 1 << 40).count(), 2);
    }
}
