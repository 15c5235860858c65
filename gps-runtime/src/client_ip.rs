//! The client's IP address behind reverse proxies, for per-IP limits and the audit log: the one
//! `X-Forwarded-For` reading of every service.
//!
//! `TRUSTED_PROXIES` lists the proxies (CIDR blocks or single addresses, comma-separated;
//! default empty). A request whose TCP peer is not one of them is attributed to the peer and
//! its `X-Forwarded-For` is ignored: anyone can write that header, so believing it from an
//! untrusted peer would let a client pick the address its limits are counted under. From a
//! trusted peer, the header is read right to left (each proxy appends the address it received
//! the request from) and the first hop that is not a trusted proxy is the client. A hop that is
//! not an IP address ends the walk at the proxy that wrote it.

use axum::http::HeaderMap;
use std::net::IpAddr;
use std::str::FromStr;

/// The header proxies append the client's address to.
pub const FORWARDED_FOR: &str = "x-forwarded-for";

/// One trusted network: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`, what a dual-stack socket reports) as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Why a `TRUSTED_PROXIES` entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("TRUSTED_PROXIES entry {entry:?}: {reason}")]
pub struct TrustedProxiesError {
    /// The entry.
    pub entry: String,
    /// Why.
    pub reason: &'static str,
}

/// The reverse proxies whose `X-Forwarded-For` is believed (`TRUSTED_PROXIES`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    networks: Vec<Network>,
}

impl FromStr for TrustedProxies {
    type Err = TrustedProxiesError;

    /// `10.0.0.0/8, 192.168.1.10, fd00::/8`; empty trusts no one.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut networks = Vec::new();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let bad = |reason| TrustedProxiesError {
                entry: entry.to_owned(),
                reason,
            };
            let (addr, prefix) = match entry.split_once('/') {
                Some((addr, prefix)) => (addr, Some(prefix)),
                None => (entry, None),
            };
            let addr = canonical(
                addr.parse::<IpAddr>()
                    .map_err(|_| bad("not an IP address"))?,
            );
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let prefix = match prefix {
                Some(p) => p
                    .parse::<u8>()
                    .ok()
                    .filter(|p| *p <= max)
                    .ok_or_else(|| bad("prefix length out of range"))?,
                None => max,
            };
            networks.push(Network { addr, prefix });
        }
        Ok(Self { networks })
    }
}

impl TrustedProxies {
    /// Whether `ip` is a trusted proxy.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.networks.iter().any(|n| n.contains(ip))
    }

    /// The client of a request that arrived from `peer` with `headers`.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if !self.trusts(peer) {
            return peer;
        }
        // Every X-Forwarded-For field, in order, as one list (RFC 9110 §5.3).
        let hops: Vec<&str> = headers
            .get_all(FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            let Some(ip) = parse_hop(hop) else {
                // Garbage from the proxy's side of the chain: the proxy that wrote it is the
                // closest address we can vouch for.
                return client;
            };
            client = ip;
            if !self.trusts(ip) {
                return ip;
            }
        }
        client
    }
}

/// A hop of `X-Forwarded-For`: an address, maybe with a port (`1.2.3.4:5678`, `[::1]:80`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Ok(addr) = hop.parse::<std::net::SocketAddr>() {
        return Some(canonical(addr.ip()));
    }
    None
}

/// `TRUSTED_PROXIES` as a flag and env var, for a service's config (`#[command(flatten)]`).
#[derive(Debug, Clone, clap::Args)]
pub struct ClientIpArgs {
    /// Reverse proxies (CIDR blocks or addresses, comma-separated) whose `X-Forwarded-For` is
    /// believed for the client's IP (per-IP limits, audit); empty: the TCP peer is the client.
    #[arg(long = "trusted-proxies", env = "TRUSTED_PROXIES", default_value = "")]
    pub trusted_proxies: TrustedProxies,
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(FORWARDED_FOR, HeaderValue::from_str(v).unwrap());
        }
        headers
    }

    #[test]
    fn an_untrusted_peers_forwarded_for_is_ignored() {
        let spoofed = xff(&["203.0.113.7"]);
        let none = TrustedProxies::default();
        assert_eq!(
            none.client_ip(ip("198.51.100.1"), &spoofed),
            ip("198.51.100.1")
        );
        let proxies: TrustedProxies = "10.0.0.0/8".parse().unwrap();
        assert_eq!(
            proxies.client_ip(ip("198.51.100.1"), &spoofed),
            ip("198.51.100.1"),
            "a client that is not the proxy cannot choose its address"
        );
    }

    #[test]
    fn the_right_most_untrusted_hop_is_the_client() {
        let proxies: TrustedProxies = "10.0.0.0/8, 192.168.1.10".parse().unwrap();
        // The client prepended a spoofed hop; the proxies appended what they saw.
        let headers = xff(&["1.1.1.1, 203.0.113.7", "10.1.2.3"]);
        assert_eq!(
            proxies.client_ip(ip("192.168.1.10"), &headers),
            ip("203.0.113.7")
        );
        // Only trusted hops: the left-most of them.
        let headers = xff(&["10.0.0.9, 10.0.0.8"]);
        assert_eq!(proxies.client_ip(ip("10.0.0.1"), &headers), ip("10.0.0.9"));
        // No header from a trusted proxy: the proxy itself.
        assert_eq!(
            proxies.client_ip(ip("10.0.0.1"), &HeaderMap::new()),
            ip("10.0.0.1")
        );
        // Garbage ends the walk at the proxy that wrote it.
        let headers = xff(&["203.0.113.7, unknown, 10.0.0.2"]);
        assert_eq!(proxies.client_ip(ip("10.0.0.1"), &headers), ip("10.0.0.2"));
        // Ports and IPv4-mapped peers.
        let headers = xff(&["203.0.113.7:5555"]);
        assert_eq!(
            proxies.client_ip(ip("::ffff:10.0.0.1"), &headers),
            ip("203.0.113.7")
        );
        let headers = xff(&["[2001:db8::1]:443"]);
        assert_eq!(
            proxies.client_ip(ip("10.0.0.1"), &headers),
            ip("2001:db8::1")
        );
    }

    #[test]
    fn the_list_parses_cidrs_and_addresses_and_names_bad_entries() {
        let proxies: TrustedProxies = " 10.0.0.0/8 ,fd00::/8, 127.0.0.1 ,".parse().unwrap();
        assert!(proxies.trusts(ip("10.255.0.1")));
        assert!(proxies.trusts(ip("fd12::1")));
        assert!(proxies.trusts(ip("127.0.0.1")));
        assert!(!proxies.trusts(ip("127.0.0.2")));
        assert!(!proxies.trusts(ip("11.0.0.1")));
        assert!("0.0.0.0/0"
            .parse::<TrustedProxies>()
            .unwrap()
            .trusts(ip("8.8.8.8")));
        assert_eq!(
            "".parse::<TrustedProxies>().unwrap(),
            TrustedProxies::default()
        );
        let err = "10.0.0.0/33".parse::<TrustedProxies>().unwrap_err();
        assert_eq!(err.entry, "10.0.0.0/33");
        assert!("proxy.local".parse::<TrustedProxies>().is_err());
    }
}
