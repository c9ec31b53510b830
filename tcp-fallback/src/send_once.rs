//! A seed sends each piece about once.
//!
//! Children of a seed pick the pieces only the seed holds in an order of
//! their own, but nothing stops two of them from asking for the same piece
//! at the same moment: each copy beyond the first costs the seed's (and so
//! the whole swarm's) scarcest link. A seed's upload server therefore
//! admits a piece only when no other child is receiving it from this seed
//! right now and none received it within the last `hold`; otherwise it
//! answers `Elsewhere` with the time left, and the child takes the piece
//! from the peers it reaches first (BitTorrent calls the idea
//! super-seeding). Should the peer that got it vanish before passing it on,
//! the seed sends it again once the hold is over.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use weightcast_types::TaskId;

/// Entries this old are forgotten when the table grows.
const FORGET_AFTER_HOLDS: u32 = 4;

#[derive(Debug, Default, Clone, Copy)]
struct Sent {
    /// Children receiving it now.
    sending: u32,
    /// When a child last received all of it.
    last: Option<Instant>,
}

/// Which pieces this seed sent, and when.
#[derive(Debug)]
pub struct SendOnce {
    hold: Duration,
    pieces: Mutex<HashMap<(TaskId, u32), Sent>>,
}

impl SendOnce {
    pub fn new(hold: Duration) -> Arc<Self> {
        Arc::new(Self {
            hold,
            pieces: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(TaskId, u32), Sent>> {
        // Every update is a single field write: a poisoned lock holds no
        // half-made state.
        self.pieces.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// May piece `num` of `task` go out now? A ticket if so (held while it
    /// is sent), else how long until it may.
    pub fn admit(
        self: &Arc<Self>,
        task: TaskId,
        num: u32,
        now: Instant,
    ) -> Result<SendTicket, Duration> {
        let mut pieces = self.lock();
        if pieces.len() > 65_536 {
            let keep = self.hold * FORGET_AFTER_HOLDS;
            pieces.retain(|_, s| {
                s.sending > 0 || s.last.is_some_and(|t| now.duration_since(t) < keep)
            });
        }
        let sent = pieces.entry((task, num)).or_default();
        if sent.sending > 0 {
            return Err(self.hold);
        }
        if let Some(left) = sent
            .last
            .and_then(|t| self.hold.checked_sub(now.saturating_duration_since(t)))
            .filter(|left| !left.is_zero())
        {
            return Err(left);
        }
        sent.sending += 1;
        Ok(SendTicket {
            owner: self.clone(),
            key: (task, num),
        })
    }
}

/// One admitted send; [`SendTicket::sent`] records that the child got it
/// all. Dropped unsent (the child went away mid-piece), it leaves the
/// piece free to go out again at once.
#[derive(Debug)]
pub struct SendTicket {
    owner: Arc<SendOnce>,
    key: (TaskId, u32),
}

impl SendTicket {
    pub fn sent(self, now: Instant) {
        if let Some(s) = self.owner.lock().get_mut(&self.key) {
            s.last = Some(now);
        }
    }
}

impl Drop for SendTicket {
    fn drop(&mut self) {
        if let Some(s) = self.owner.lock().get_mut(&self.key) {
            s.sending = s.sending.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_piece_goes_out_once_per_hold() {
        let once = SendOnce::new(Duration::from_secs(5));
        let t = TaskId([1; 32]);
        let t0 = Instant::now();
        let first = once.admit(t, 0, t0).expect("the first child gets it");
        assert_eq!(
            once.admit(t, 0, t0).unwrap_err(),
            Duration::from_secs(5),
            "not while it is on its way to the first"
        );
        assert!(once.admit(t, 1, t0).is_ok(), "other pieces are free");
        first.sent(t0 + Duration::from_secs(1));
        let left = once.admit(t, 0, t0 + Duration::from_secs(2)).unwrap_err();
        assert_eq!(left, Duration::from_secs(4));
        assert!(
            once.admit(t, 0, t0 + Duration::from_secs(6)).is_ok(),
            "again after the hold (its receiver may have gone)"
        );
    }

    #[test]
    fn a_send_that_broke_off_frees_the_piece_at_once() {
        let once = SendOnce::new(Duration::from_secs(5));
        let t = TaskId([2; 32]);
        let t0 = Instant::now();
        drop(once.admit(t, 3, t0).unwrap());
        assert!(once.admit(t, 3, t0).is_ok());
    }
}
