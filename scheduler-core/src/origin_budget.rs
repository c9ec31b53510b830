//! Cluster-wide byte-rate budgets towards origins.
//!
//! Each seed limits its own requests to an origin, but ten seeds with a
//! 100 MB/s limit each still hit a hub with 1 GB/s. With `scheduler
//! --origin-rate-limit HOST=RATE` the scheduler splits RATE evenly among
//! the peers that fetch from that origin right now and tells each its share
//! whenever the set changes, so the sum stays within the budget.

use std::collections::{BTreeMap, BTreeSet};
use weightcast_types::PeerId;

/// `scheme://host:port` of a URL, and its host and `host:port` (what a
/// budget may be keyed by); `None` for a URL without a host.
pub(crate) fn origin_of(url: &str) -> Option<Origin> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit('@').next()?.to_ascii_lowercase();
    if authority.is_empty() {
        return None;
    }
    let scheme = scheme.to_ascii_lowercase();
    let port_of = |p: Option<&str>| {
        p.and_then(|p| p.parse::<u16>().ok())
            .unwrap_or_else(|| default_port(&scheme))
    };
    let (host, port) = match authority.strip_prefix('[') {
        // [v6]:port, as `Url::host_str` writes the host: with brackets.
        Some(rest) => {
            let (h, after) = rest.split_once(']')?;
            (format!("[{h}]"), port_of(after.strip_prefix(':')))
        }
        None => match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), port_of(Some(p))),
            None => (authority.clone(), port_of(None)),
        },
    };
    Some(Origin {
        key: format!("{scheme}://{host}:{port}"),
        host_port: format!("{host}:{port}"),
        host,
    })
}

fn default_port(scheme: &str) -> u16 {
    match scheme {
        "http" => 80,
        _ => 443,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Origin {
    /// `scheme://host:port`, as peers key their own limits.
    pub key: String,
    pub host: String,
    pub host_port: String,
}

/// The budgets and the shares last sent.
#[derive(Debug, Default)]
pub(crate) struct OriginBudgets {
    /// By `host` or `host:port`, lower-case.
    limits: BTreeMap<String, u64>,
    /// (peer, origin key) → the share it was last told.
    sent: BTreeMap<(PeerId, String), u64>,
}

impl OriginBudgets {
    pub fn new(limits: &BTreeMap<String, u64>) -> Self {
        Self {
            limits: limits
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), *v))
                .collect(),
            sent: BTreeMap::new(),
        }
    }

    /// The budget that covers `origin`, if any (`host:port` first).
    pub fn limit(&self, origin: &Origin) -> Option<u64> {
        self.limits
            .get(&origin.host_port)
            .or_else(|| self.limits.get(&origin.host))
            .copied()
    }

    /// The shares to send now that `fetchers` fetch from `origin`: each
    /// its part of the budget, and 0 ("no limit from the scheduler") to
    /// peers that were told a share before and no longer fetch. Only
    /// changes are returned.
    pub fn rebalance(
        &mut self,
        origin: &Origin,
        fetchers: &BTreeSet<PeerId>,
    ) -> Vec<(PeerId, u64)> {
        let Some(limit) = self.limit(origin) else {
            return Vec::new();
        };
        let share = if fetchers.is_empty() {
            0
        } else {
            (limit / fetchers.len() as u64).max(1)
        };
        let mut out = Vec::new();
        let gone: Vec<PeerId> = self
            .sent
            .keys()
            .filter(|(p, o)| *o == origin.key && !fetchers.contains(p))
            .map(|(p, _)| p.clone())
            .collect();
        for p in gone {
            self.sent.remove(&(p.clone(), origin.key.clone()));
            out.push((p, 0));
        }
        for p in fetchers {
            let key = (p.clone(), origin.key.clone());
            if self.sent.get(&key) != Some(&share) {
                self.sent.insert(key, share);
                out.push((p.clone(), share));
            }
        }
        out
    }

    /// Forgets a peer that left the cluster.
    pub fn forget(&mut self, peer: &str) {
        self.sent.retain(|(p, _), _| p != peer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_keyed_like_the_peers_key_them() {
        let o = origin_of("https://CDN.example.com/blobs/x?sig=1").unwrap();
        assert_eq!(o.key, "https://cdn.example.com:443");
        assert_eq!(o.host, "cdn.example.com");
        let o = origin_of("http://10.0.0.5:8080/m.safetensors").unwrap();
        assert_eq!(
            (o.host.as_str(), o.host_port.as_str()),
            ("10.0.0.5", "10.0.0.5:8080")
        );
        assert_eq!(origin_of("not a url"), None);
    }

    #[test]
    fn a_budget_is_split_among_the_fetchers_and_released_when_they_stop() {
        let mut b = OriginBudgets::new(&BTreeMap::from([("hub.example".to_string(), 300)]));
        let o = origin_of("https://hub.example/x").unwrap();
        let set = |ps: &[&str]| ps.iter().map(|p| p.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(b.rebalance(&o, &set(&["a"])), vec![("a".into(), 300)]);
        let mut two = b.rebalance(&o, &set(&["a", "b"]));
        two.sort();
        assert_eq!(two, vec![("a".into(), 150), ("b".into(), 150)]);
        assert!(
            b.rebalance(&o, &set(&["a", "b"])).is_empty(),
            "only changes"
        );
        assert_eq!(
            b.rebalance(&o, &set(&["b"])),
            vec![("a".into(), 0), ("b".into(), 300)]
        );
        let other = origin_of("https://elsewhere/x").unwrap();
        assert!(
            b.rebalance(&other, &set(&["a"])).is_empty(),
            "no budget there"
        );
    }
}
