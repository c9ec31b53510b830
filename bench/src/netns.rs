//! A virtual cluster on one machine: network namespaces joined by a switch.
//!
//! ```text
//!   root ns ── mgmt veth ──┐
//!                          │  switch ns: br0 [── capped veth ── br1]   (zones)
//!   host ns "h3": eth0 ────┘  (tbf on eth0 = upload cap; tbf on the switch
//!                              port = download cap)
//! ```
//! Addresses are 10.77.x.y/16 on interfaces made here; there is no default
//! route, so nothing leaves the machine. The root namespace gets a management
//! port on the switch (uncapped) so the harness can read metrics.
//! Everything is deleted on drop, and namespaces left by a crashed run (whose
//! pid is gone) are deleted at the next start.

use anyhow::{bail, Context, Result};
use std::process::Command;

/// `100mbit`, `1gbit`, `500kbit`, or plain bits per second.
pub fn parse_bits(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let (num, mult) = if let Some(n) = t.strip_suffix("gbit") {
        (n, 1e9)
    } else if let Some(n) = t.strip_suffix("mbit") {
        (n, 1e6)
    } else if let Some(n) = t.strip_suffix("kbit") {
        (n, 1e3)
    } else {
        (t.as_str(), 1.0)
    };
    num.trim()
        .parse::<f64>()
        .map(|n| (n * mult) as u64)
        .map_err(|_| format!("invalid bandwidth {s:?}: use e.g. 100mbit"))
}

/// Runs a command, failing with its stderr.
fn sh(args: &[&str]) -> Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("cannot run {}", args[0]))?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn in_ns(ns: &str, args: &[&str]) -> Result<String> {
    let mut full = vec!["ip", "netns", "exec", ns];
    full.extend_from_slice(args);
    sh(&full)
}

/// A tbf qdisc at `bits_per_sec` on `dev`.
fn cap(ns: &str, dev: &str, bits_per_sec: u64) -> Result<()> {
    // Burst: 10 ms at the rate, at least 32 KiB (tbf needs rate/HZ).
    let burst = (bits_per_sec / 8 / 100).max(32 << 10);
    in_ns(
        ns,
        &[
            "tc",
            "qdisc",
            "add",
            "dev",
            dev,
            "root",
            "tbf",
            "rate",
            &format!("{bits_per_sec}bit"),
            "burst",
            &burst.to_string(),
            "latency",
            "100ms",
        ],
    )?;
    Ok(())
}

/// Bytes a qdisc has sent (`tc -s qdisc`).
fn sent_bytes(ns: &str, dev: &str) -> u64 {
    in_ns(ns, &["tc", "-s", "qdisc", "show", "dev", dev])
        .ok()
        .and_then(|s| {
            let i = s.find("Sent ")?;
            s[i + 5..].split_whitespace().next()?.parse().ok()
        })
        .unwrap_or(0)
}

/// The counters of [`TCP_LOSS_COUNTERS`] from `/proc/net/snmp`- and
/// `/proc/net/netstat`-style text: pairs of lines, names then values, each
/// starting with the same `Group:` prefix.
pub fn tcp_loss_counters(text: &str) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.windows(2) {
        let (Some((g1, names)), Some((g2, values))) =
            (pair[0].split_once(':'), pair[1].split_once(':'))
        else {
            continue;
        };
        if g1 != g2 || !matches!(g1, "Tcp" | "TcpExt") {
            continue;
        }
        for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
            if let (true, Ok(v)) = (TCP_LOSS_COUNTERS.contains(&name), value.parse::<u64>()) {
                out.insert(name.to_string(), v);
            }
        }
    }
    out
}

/// What [`Net::tcp_counters`] reads.
pub const TCP_LOSS_COUNTERS: &[&str] = &[
    "OutSegs",
    "RetransSegs",
    "TCPTimeouts",
    "TCPLossProbes",
    "TCPFastRetrans",
    "TCPSlowStartRetrans",
    "TCPSpuriousRTOs",
    "TCPSackRecovery",
];

/// Upload and download caps of one host, bits per second (`None`: uncapped).
#[derive(Debug, Clone, Copy, Default)]
pub struct Caps {
    pub up: Option<u64>,
    pub down: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct NetHost {
    pub name: String,
    pub ns: String,
    pub ip: String,
    pub zone: usize,
    /// The switch-side veth (its egress is this host's download).
    port: String,
}

pub struct Net {
    prefix: String,
    switch: String,
    pub hosts: Vec<NetHost>,
    zones: usize,
    mgmt: String,
}

/// Whether this process may create network namespaces.
pub fn check_privileges() -> Result<()> {
    let probe = format!("wcprobe{}", std::process::id());
    sh(&["ip", "netns", "add", &probe]).context(
        "the cluster emulator needs root and iproute2 (ip, tc) to create network namespaces",
    )?;
    let _ = sh(&["ip", "netns", "del", &probe]);
    Ok(())
}

/// Deletes namespaces and links left by emulator runs whose process is gone.
pub fn clean_stale() {
    let Ok(list) = sh(&["ip", "netns", "list"]) else {
        return;
    };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(rest) = name.strip_prefix("wc") else {
            continue;
        };
        let Some((pid, _)) = rest.split_once('-') else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = sh(&["ip", "netns", "del", name]);
            let _ = sh(&["ip", "link", "del", &format!("wc{pid}m")]);
        }
    }
}

/// Namespaces of this process still present (for teardown checks).
pub fn leftover_namespaces(pid: u32) -> Vec<String> {
    let p = format!("wc{pid}-");
    sh(&["ip", "netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&p))
        .map(String::from)
        .collect()
}

/// Deletes everything of the emulator run with this pid.
pub fn teardown(pid: u32) {
    for ns in leftover_namespaces(pid) {
        // Processes keep a namespace alive after `ip netns del`: end them first.
        if let Ok(pids) = sh(&["ip", "netns", "pids", &ns]) {
            for p in pids.split_whitespace() {
                let _ = sh(&["kill", "-9", p]);
            }
        }
        let _ = sh(&["ip", "netns", "del", &ns]);
    }
    let _ = sh(&["ip", "link", "del", &format!("wc{pid}m")]);
}

impl Net {
    /// A switch with `zones` bridges; with two zones, the link between them
    /// is capped at `cross_zone` bits/s.
    pub fn new(zones: usize, cross_zone: Option<u64>) -> Result<Net> {
        check_privileges()?;
        clean_stale();
        let pid = std::process::id();
        let prefix = format!("wc{pid}");
        let switch = format!("{prefix}-sw");
        let mgmt = format!("{prefix}m");
        let net = Net {
            prefix: prefix.clone(),
            switch: switch.clone(),
            hosts: Vec::new(),
            zones: zones.max(1),
            mgmt: mgmt.clone(),
        };
        sh(&["ip", "netns", "add", &switch])?;
        in_ns(&switch, &["ip", "link", "set", "lo", "up"])?;
        for z in 0..net.zones {
            let br = format!("br{z}");
            in_ns(&switch, &["ip", "link", "add", &br, "type", "bridge"])?;
            in_ns(&switch, &["ip", "link", "set", &br, "up"])?;
        }
        if net.zones == 2 {
            let (a, b) = (format!("{prefix}za"), format!("{prefix}zb"));
            sh(&["ip", "link", "add", &a, "type", "veth", "peer", "name", &b])?;
            for (dev, br) in [(&a, "br0"), (&b, "br1")] {
                sh(&["ip", "link", "set", dev, "netns", &switch])?;
                in_ns(&switch, &["ip", "link", "set", dev, "master", br])?;
                in_ns(&switch, &["ip", "link", "set", dev, "up"])?;
                if let Some(c) = cross_zone {
                    cap(&switch, dev, c)?;
                }
            }
        }
        // Management port: the root namespace joins br0, uncapped.
        let peer = format!("{prefix}n");
        sh(&[
            "ip", "link", "add", &mgmt, "type", "veth", "peer", "name", &peer,
        ])?;
        sh(&["ip", "link", "set", &peer, "netns", &switch])?;
        in_ns(&switch, &["ip", "link", "set", &peer, "master", "br0"])?;
        in_ns(&switch, &["ip", "link", "set", &peer, "up"])?;
        sh(&["ip", "addr", "add", "10.77.255.254/16", "dev", &mgmt])?;
        sh(&["ip", "link", "set", &mgmt, "up"])?;
        Ok(net)
    }

    /// Adds a host in `zone` with its caps.
    pub fn add_host(&mut self, name: &str, zone: usize, caps: Caps) -> Result<NetHost> {
        let i = self.hosts.len();
        let ns = format!("{}-{name}", self.prefix);
        let ip = format!("10.77.{}.{}", i / 250, i % 250 + 1);
        let (a, b) = (
            format!("{}a{i}", self.prefix),
            format!("{}b{i}", self.prefix),
        );
        sh(&["ip", "netns", "add", &ns])?;
        sh(&["ip", "link", "add", &a, "type", "veth", "peer", "name", &b])?;
        sh(&["ip", "link", "set", &a, "netns", &ns])?;
        sh(&["ip", "link", "set", &b, "netns", &self.switch])?;
        in_ns(&ns, &["ip", "link", "set", &a, "name", "eth0"])?;
        in_ns(
            &ns,
            &["ip", "addr", "add", &format!("{ip}/16"), "dev", "eth0"],
        )?;
        in_ns(&ns, &["ip", "link", "set", "eth0", "up"])?;
        in_ns(&ns, &["ip", "link", "set", "lo", "up"])?;
        let br = format!("br{}", zone.min(self.zones - 1));
        in_ns(&self.switch, &["ip", "link", "set", &b, "master", &br])?;
        in_ns(&self.switch, &["ip", "link", "set", &b, "up"])?;
        if let Some(up) = caps.up {
            cap(&ns, "eth0", up)?;
        }
        if let Some(down) = caps.down {
            cap(&self.switch, &b, down)?;
        }
        let h = NetHost {
            name: name.to_string(),
            ns,
            ip,
            zone,
            port: b,
        };
        self.hosts.push(h.clone());
        Ok(h)
    }

    /// Bytes a host has uploaded (through its capped eth0).
    pub fn uploaded(&self, h: &NetHost) -> u64 {
        sent_bytes(&h.ns, "eth0")
    }

    /// Bytes a host has downloaded (through its switch port).
    pub fn downloaded(&self, h: &NetHost) -> u64 {
        sent_bytes(&self.switch, &h.port)
    }

    /// The host's TCP loss counters (its namespace's `/proc/net/snmp` and
    /// `/proc/net/netstat`): whether a slow transfer lost packets and how
    /// it recovered (fast retransmit, tail-loss probe, or a timeout).
    pub fn tcp_counters(&self, h: &NetHost) -> std::collections::BTreeMap<String, u64> {
        let text = in_ns(&h.ns, &["cat", "/proc/net/snmp", "/proc/net/netstat"]);
        tcp_loss_counters(&text.unwrap_or_default())
    }

    /// Every host's (uploaded, downloaded) bytes at once, read from the
    /// switch's interface counters in one call (its port's receive bytes are
    /// the host's upload, its transmit bytes the host's download): cheap
    /// enough to sample every second, where a `tc` call per link is not.
    pub fn link_bytes(&self) -> std::collections::HashMap<String, (u64, u64)> {
        let mut out = std::collections::HashMap::new();
        let Ok(dev) = in_ns(&self.switch, &["cat", "/proc/net/dev"]) else {
            return out;
        };
        for line in dev.lines().skip(2) {
            let Some((name, rest)) = line.split_once(':') else {
                continue;
            };
            let f: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            let (Some(rx), Some(tx)) = (f.first(), f.get(8)) else {
                continue;
            };
            if let Some(h) = self.hosts.iter().find(|h| h.port == name.trim()) {
                out.insert(h.name.clone(), (*rx, *tx));
            }
        }
        out
    }

    /// Bytes that crossed between the zones, both directions.
    pub fn cross_zone(&self) -> u64 {
        if self.zones < 2 {
            return 0;
        }
        sent_bytes(&self.switch, &format!("{}za", self.prefix))
            + sent_bytes(&self.switch, &format!("{}zb", self.prefix))
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for h in &self.hosts {
            let _ = sh(&["ip", "netns", "del", &h.ns]);
        }
        let _ = sh(&["ip", "netns", "del", &self.switch]);
        let _ = sh(&["ip", "link", "del", &self.mgmt]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_loss_counters_pair_names_with_values() {
        let text = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
                    Tcp: RtoAlgorithm OutSegs RetransSegs\nTcp: 1 5000 12\n\
                    TcpExt: SyncookiesSent TCPTimeouts TCPLossProbes\nTcpExt: 0 3 7\n";
        let c = tcp_loss_counters(text);
        assert_eq!(c.get("OutSegs"), Some(&5000));
        assert_eq!(c.get("RetransSegs"), Some(&12));
        assert_eq!(c.get("TCPTimeouts"), Some(&3));
        assert_eq!(c.get("TCPLossProbes"), Some(&7));
        assert!(!c.contains_key("SyncookiesSent"));
        assert!(!c.contains_key("Forwarding"));
    }
}
