//! Loopback ports for processes a test or the drill starts: picked, checked free, released, and
//! bound by the child a moment later.
//!
//! The port is drawn at random from below the kernel's ephemeral range
//! (`/proc/sys/net/ipv4/ip_local_port_range`), never from `bind(127.0.0.1:0)`: a port the kernel
//! handed out for port 0 is handed out again, to the next `bind(0)` or outgoing connection of
//! any process, while the child is still starting. In a parallel test suite that race is real
//! (a child ingest failed with `EADDRINUSE` while another test's server answered its `/readyz`);
//! ports below the range are only ever taken by an explicit bind.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};

/// Below this, ports are left to well-known services (PostgreSQL, Redis, the dev stack's 8080s).
const LOWEST: u16 = 20_000;

/// A loopback address whose port is free for TCP now, and for UDP too when `udp_too`.
pub fn free_loopback_port(udp_too: bool) -> io::Result<SocketAddr> {
    let below = ephemeral_start().max(LOWEST + 1_000);
    let span = u64::from(below - LOWEST);
    for _ in 0..500 {
        let port = LOWEST + (random_u64() % span) as u16;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let Ok(tcp) = TcpListener::bind(addr) else {
            continue;
        };
        if udp_too && UdpSocket::bind(addr).is_err() {
            continue;
        }
        drop(tcp);
        return Ok(addr);
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        format!("no free loopback port in {LOWEST}..{below}"),
    ))
}

/// The first port of the kernel's ephemeral range (Linux's default when it cannot be read).
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

fn random_u64() -> u64 {
    let (high, low) = uuid::Uuid::new_v4().as_u64_pair();
    high ^ low
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_come_from_below_the_ephemeral_range_and_are_free() {
        for _ in 0..20 {
            let addr = free_loopback_port(true).unwrap();
            assert!(addr.port() >= LOWEST && addr.port() < ephemeral_start().max(LOWEST + 1_000));
            // Free for both: the caller's child can bind it.
            let _tcp = TcpListener::bind(addr).unwrap();
            let _udp = UdpSocket::bind(addr).unwrap();
        }
    }
}
