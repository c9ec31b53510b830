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
//!
//! **Poor spreaders.** A first copy is worth only as much as its receiver
//! passes it on. A child whose uplink is a tenth of the others' keeps the
//! pieces it got first to itself for seconds: its siblings wait out the
//! hold and the seed sends those pieces again (on the emulator's
//! heterogeneous swarm, a quarter of the uplinks at B/10, the seed host sent
//! 1.14–1.54 copies and every peer finished together at 1.5–1.75 × S/B,
//! bound by the seed's rate of new pieces). So the seed counts, per child
//! (by address), the first copies it received and how many of them it had
//! to send again after the hold; a child with [`POOR_MIN_RESENT`] or more
//! re-sends, at least one in [`POOR_SHARE`] of its first copies, gets no
//! pieces from this seed while a child that spreads well asked it within
//! [`GOOD_CHILD_ACTIVE`]: it is told `Elsewhere` and takes them from its
//! siblings (a re-sent piece would stay with it as the first copy did); and
//! what it holds goes to a good child at once, not after the hold. Where
//! no such child is around (one child, or every child slow), nothing
//! changes, so no swarm can stall on the rule.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use weightcast_types::TaskId;

/// Entries this old are forgotten when the table grows.
const FORGET_AFTER_HOLDS: u32 = 4;

/// Re-sent first copies before a child can count as a poor spreader.
const POOR_MIN_RESENT: u32 = 2;
/// A poor spreader had at least one in this many of its first copies sent
/// again.
const POOR_SHARE: u32 = 4;
/// A child that spreads well and asked within this long is around to take
/// the first copies a poor spreader is refused.
const GOOD_CHILD_ACTIVE: Duration = Duration::from_secs(2);
/// What a poor spreader refused a piece is told to wait before asking
/// this seed for it again.
const POOR_RETRY: Duration = Duration::from_secs(1);
/// A child silent this long starts afresh (a new task, a changed link).
const CHILD_FORGOTTEN: Duration = Duration::from_secs(60);

#[derive(Debug, Default, Clone, Copy)]
struct Sent {
    /// Children receiving it now.
    sending: u32,
    /// When a child last received all of it, and who.
    last: Option<(Instant, IpAddr)>,
}

/// How well one child passed on the first copies it got.
#[derive(Debug, Clone, Copy)]
struct Child {
    first_copies: u32,
    resent: u32,
    last_request: Instant,
}

impl Child {
    fn new(now: Instant) -> Self {
        Self {
            first_copies: 0,
            resent: 0,
            last_request: now,
        }
    }

    fn poor(&self) -> bool {
        self.resent >= POOR_MIN_RESENT && self.resent * POOR_SHARE >= self.first_copies
    }
}

#[derive(Debug, Default)]
struct Table {
    pieces: HashMap<(TaskId, u32), Sent>,
    children: HashMap<IpAddr, Child>,
    /// The last two children that spread well to ask, newest first.
    good: [Option<(IpAddr, Instant)>; 2],
}

impl Table {
    /// Did a child other than `child` that spreads well ask lately?
    fn good_other_active(&self, child: IpAddr, now: Instant) -> bool {
        self.good
            .iter()
            .flatten()
            .any(|&(who, at)| who != child && now.saturating_duration_since(at) < GOOD_CHILD_ACTIVE)
    }

    fn note_good(&mut self, child: IpAddr, now: Instant) {
        if self.good[0].is_some_and(|(who, _)| who == child) {
            self.good[0] = Some((child, now));
        } else {
            self.good = [Some((child, now)), self.good[0]];
        }
    }
}

/// Which pieces this seed sent, when, and to whom.
#[derive(Debug)]
pub struct SendOnce {
    hold: Duration,
    table: Mutex<Table>,
}

impl SendOnce {
    pub fn new(hold: Duration) -> Arc<Self> {
        Arc::new(Self {
            hold,
            table: Mutex::new(Table::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // Every update is a few field writes that cannot fail halfway: a
        // poisoned lock holds no half-made state.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// May piece `num` of `task` go out to `child` now? A ticket if so
    /// (held while it is sent), else how long until it may.
    pub fn admit(
        self: &Arc<Self>,
        task: TaskId,
        num: u32,
        child: IpAddr,
        now: Instant,
    ) -> Result<SendTicket, Duration> {
        let mut t = self.lock();
        if t.pieces.len() > 65_536 {
            let keep = self.hold * FORGET_AFTER_HOLDS;
            t.pieces.retain(|_, s| {
                s.sending > 0 || s.last.is_some_and(|(at, _)| now.duration_since(at) < keep)
            });
            t.children
                .retain(|_, c| now.saturating_duration_since(c.last_request) < CHILD_FORGOTTEN);
        }
        let c = t.children.entry(child).or_insert_with(|| Child::new(now));
        if now.saturating_duration_since(c.last_request) >= CHILD_FORGOTTEN {
            *c = Child::new(now);
        }
        c.last_request = now;
        let me = *c;
        if !me.poor() {
            t.note_good(child, now);
        }
        let sent = t.pieces.get(&(task, num)).copied().unwrap_or_default();
        if sent.sending > 0 {
            return Err(self.hold);
        }
        // The hold waits for the receiver to pass the piece on; a poor
        // spreader will not, so a piece it holds goes to a good child now.
        let kept_by_poor = |to: &IpAddr| t.children.get(to).is_some_and(Child::poor);
        if let Some(left) = sent
            .last
            .filter(|(_, to)| me.poor() || !kept_by_poor(to))
            .and_then(|(at, _)| {
                self.hold
                    .checked_sub(now.saturating_duration_since(at))
                    .filter(|left| !left.is_zero())
            })
        {
            return Err(left);
        }
        // A copy sent to a poor spreader, first or again after the hold,
        // is a copy the seed will send once more.
        if me.poor() && t.good_other_active(child, now) {
            return Err(POOR_RETRY);
        }
        t.pieces.entry((task, num)).or_default().sending += 1;
        Ok(SendTicket {
            owner: self.clone(),
            key: (task, num),
            child,
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
    child: IpAddr,
}

impl SendTicket {
    /// The child got the whole piece. A copy that was not the first blames
    /// the child that got the one before: it did not pass the piece on in
    /// time. Counted here, once per copy sent, not when the request was
    /// admitted: a request answered `Busy` after its ticket, or a send that
    /// broke off, sent nothing.
    pub fn sent(self, now: Instant) {
        let mut t = self.owner.lock();
        let before = t
            .pieces
            .get_mut(&self.key)
            .and_then(|s| s.last.replace((now, self.child)));
        let (blamed, first) = match before {
            Some((_, to)) => (to, false),
            None => (self.child, true),
        };
        if let Some(c) = t.children.get_mut(&blamed) {
            if first {
                c.first_copies += 1;
            } else {
                c.resent += 1;
            }
        }
    }
}

impl Drop for SendTicket {
    fn drop(&mut self) {
        if let Some(s) = self.owner.lock().pieces.get_mut(&self.key) {
            s.sending = s.sending.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
    const C: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 3));
    const HOLD: Duration = Duration::from_secs(5);
    const MS: Duration = Duration::from_millis(1);

    /// `child` gets piece `num` whole at `at`.
    fn give(once: &Arc<SendOnce>, t: TaskId, num: u32, child: IpAddr, at: Instant) {
        once.admit(t, num, child, at)
            .unwrap_or_else(|w| panic!("piece {num} refused to {child} ({w:?})"))
            .sent(at);
    }

    /// `slow` gets first copies 0 and 1 that `b` asks for again after the
    /// hold: `slow` did not pass them on.
    fn make_poor(once: &Arc<SendOnce>, t: TaskId, slow: IpAddr, b: IpAddr, t0: Instant) -> Instant {
        give(once, t, 0, slow, t0);
        give(once, t, 1, slow, t0);
        let later = t0 + HOLD + MS;
        give(once, t, 0, b, later);
        give(once, t, 1, b, later);
        later
    }

    #[test]
    fn a_child_that_does_not_pass_first_copies_on_gets_nothing_while_a_good_one_is_around() {
        let once = SendOnce::new(HOLD);
        let t = TaskId([3; 32]);
        let now = make_poor(&once, t, A, B, Instant::now());
        assert_eq!(
            once.admit(t, 7, A, now + MS).unwrap_err(),
            POOR_RETRY,
            "a first copy goes to the child that spreads it"
        );
        give(&once, t, 7, B, now + MS);
        // A piece the poor child got is not held for it: B gets it at once.
        let once2 = SendOnce::new(HOLD);
        let t0 = Instant::now();
        give(&once2, t, 0, A, t0);
        give(&once2, t, 1, A, t0);
        let t1 = t0 + HOLD - Duration::from_secs(1);
        give(&once2, t, 5, A, t1);
        let t2 = t0 + HOLD + MS;
        give(&once2, t, 0, B, t2);
        assert_eq!(
            once2.admit(t, 5, C, t2).unwrap_err(),
            HOLD - (t2 - t1),
            "held while A may still pass it on"
        );
        give(&once2, t, 1, B, t2);
        assert!(
            once2.admit(t, 5, C, t2).is_ok(),
            "A kept 0 and 1: 5 is not held for it"
        );
        // Pieces already sent once are held as before, for everyone; after
        // the hold a re-send goes to B, not to A, who would keep it too.
        assert!(once.admit(t, 7, A, now + 2 * MS).is_err());
        let resend = now + HOLD + 2 * MS;
        give(&once, t, 9, B, resend - MS);
        assert_eq!(once.admit(t, 7, A, resend).unwrap_err(), POOR_RETRY);
        assert!(once.admit(t, 7, B, resend).is_ok());
        // With no good child asking lately, the poor one is served: a swarm
        // of slow uplinks must not stall.
        let quiet = resend + GOOD_CHILD_ACTIVE + MS;
        assert!(once.admit(t, 8, A, quiet).is_ok());
    }

    #[test]
    fn re_sends_blame_the_child_that_kept_the_piece_and_only_at_a_share() {
        let once = SendOnce::new(HOLD);
        let t = TaskId([4; 32]);
        let t0 = Instant::now();
        // A passes on most of its first copies: 10 pieces, 2 sent again.
        for n in 0..10 {
            give(&once, t, n, A, t0);
        }
        let later = t0 + HOLD + MS;
        give(&once, t, 0, B, later);
        give(&once, t, 1, B, later);
        assert!(
            once.admit(t, 20, A, later + MS).is_ok(),
            "2 of 10 is under the share"
        );
        // C kept both of its first copies: it is the poor one, not B, who
        // asked again.
        let mut t1 = later + 2 * MS;
        give(&once, t, 30, C, t1);
        give(&once, t, 31, C, t1);
        t1 += HOLD + MS;
        give(&once, t, 30, B, t1);
        give(&once, t, 31, B, t1);
        assert_eq!(once.admit(t, 40, C, t1 + MS).unwrap_err(), POOR_RETRY);
        assert!(once.admit(t, 41, B, t1 + MS).is_ok());
    }

    #[test]
    fn a_re_send_that_never_went_out_blames_no_one() {
        let once = SendOnce::new(HOLD);
        let t = TaskId([6; 32]);
        let t0 = Instant::now();
        give(&once, t, 0, A, t0);
        give(&once, t, 1, A, t0);
        // B is admitted for both again and again, but each time the seed
        // had no upload slot (`Busy`): nothing was sent, A is not blamed.
        let later = t0 + HOLD + MS;
        for _ in 0..5 {
            drop(once.admit(t, 0, B, later).unwrap());
            drop(once.admit(t, 1, B, later).unwrap());
        }
        assert!(once.admit(t, 2, A, later + MS).is_ok());
    }

    #[test]
    fn a_lone_child_is_never_refused_first_copies() {
        let once = SendOnce::new(HOLD);
        let t = TaskId([5; 32]);
        // The same address asks again (daemons sharing one address look
        // like one child): it is the only child, so it is served.
        let now = make_poor(&once, t, A, A, Instant::now());
        assert!(once.admit(t, 9, A, now + MS).is_ok());
    }

    #[test]
    fn a_piece_goes_out_once_per_hold() {
        let once = SendOnce::new(Duration::from_secs(5));
        let t = TaskId([1; 32]);
        let t0 = Instant::now();
        let first = once.admit(t, 0, A, t0).expect("the first child gets it");
        assert_eq!(
            once.admit(t, 0, A, t0).unwrap_err(),
            Duration::from_secs(5),
            "not while it is on its way to the first"
        );
        assert!(once.admit(t, 1, A, t0).is_ok(), "other pieces are free");
        first.sent(t0 + Duration::from_secs(1));
        let left = once
            .admit(t, 0, A, t0 + Duration::from_secs(2))
            .unwrap_err();
        assert_eq!(left, Duration::from_secs(4));
        assert!(
            once.admit(t, 0, A, t0 + Duration::from_secs(6)).is_ok(),
            "again after the hold (its receiver may have gone)"
        );
    }

    #[test]
    fn a_send_that_broke_off_frees_the_piece_at_once() {
        let once = SendOnce::new(Duration::from_secs(5));
        let t = TaskId([2; 32]);
        let t0 = Instant::now();
        drop(once.admit(t, 3, A, t0).unwrap());
        assert!(once.admit(t, 3, A, t0).is_ok());
    }
}
