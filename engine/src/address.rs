//! The address a peer advertises for its upload server: what others dial.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// `host:port` for peers to dial: `advertise` when given (an IP or host,
/// with or without a port), else the bound address, else (bound to
/// 0.0.0.0) the address this host routes to `scheduler` from, else loopback.
pub fn piece_addr(advertise: Option<&str>, bound: SocketAddr, scheduler: Option<&str>) -> String {
    let host = match advertise {
        Some(a) => a.to_string(),
        None if !bound.ip().is_unspecified() => bound.ip().to_string(),
        None => scheduler
            .and_then(route_addr_towards)
            .map(|ip| ip.to_string())
            .unwrap_or_else(|| "127.0.0.1".to_string()),
    };
    if host.parse::<Ipv6Addr>().is_ok() {
        format!("[{host}]:{}", bound.port())
    } else if host.contains(':') {
        host // already host:port (or [v6]:port)
    } else {
        format!("{host}:{}", bound.port())
    }
}

/// The address this host uses towards `endpoint` (no packet is sent).
fn route_addr_towards(endpoint: &str) -> Option<IpAddr> {
    let hostport = endpoint
        .split("://")
        .nth(1)
        .unwrap_or(endpoint)
        .split('/')
        .next()?;
    let target = std::net::ToSocketAddrs::to_socket_addrs(hostport)
        .ok()?
        .next()?;
    let bind = if target.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let s = std::net::UdpSocket::bind(bind).ok()?;
    s.connect(target).ok()?;
    Some(s.local_addr().ok()?.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertised_bound_and_routed_addresses() {
        let bound: SocketAddr = "10.0.0.2:7430".parse().unwrap();
        assert_eq!(piece_addr(None, bound, None), "10.0.0.2:7430");
        assert_eq!(piece_addr(Some("node-3"), bound, None), "node-3:7430");
        assert_eq!(piece_addr(Some("node-3:9000"), bound, None), "node-3:9000");
        assert_eq!(piece_addr(Some("fd00::7"), bound, None), "[fd00::7]:7430");
        let any: SocketAddr = "0.0.0.0:7430".parse().unwrap();
        assert_eq!(
            piece_addr(None, any, Some("http://127.0.0.1:7400")),
            "127.0.0.1:7430",
            "the address that routes to the scheduler"
        );
    }
}
