//! `rtc.port_range`: each connection gets its own UDP port from a fixed range (for firewalls
//! that want a range rather than one port), returned to the pool when the socket closes.

use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use quinn_udp::{RecvMeta, Transmit};
use webrtc::runtime::AsyncUdpSocket;

/// Free ports per media address. The lock is held only to pop or push one port.
#[derive(Debug)]
pub struct PortPool {
    range: RangeInclusive<u16>,
    free: Mutex<HashMap<IpAddr, VecDeque<u16>>>,
}

#[derive(Debug, thiserror::Error)]
#[error("no free UDP port in {first}-{last} on {ip}")]
pub struct PortsExhausted {
    pub ip: IpAddr,
    pub first: u16,
    pub last: u16,
}

impl PortPool {
    pub fn new(range: RangeInclusive<u16>, ips: &[IpAddr]) -> Arc<PortPool> {
        let free = ips
            .iter()
            .map(|ip| (*ip, range.clone().collect::<VecDeque<u16>>()))
            .collect();
        Arc::new(PortPool {
            range,
            free: Mutex::new(free),
        })
    }

    pub fn range(&self) -> RangeInclusive<u16> {
        self.range.clone()
    }

    /// Ports of `ip` not leased right now.
    pub fn available(&self, ip: IpAddr) -> usize {
        self.free
            .lock()
            .map(|f| f.get(&ip).map_or(0, VecDeque::len))
            .unwrap_or(0)
    }

    fn take(&self, ip: IpAddr) -> Option<u16> {
        self.free.lock().ok()?.get_mut(&ip)?.pop_front()
    }

    fn give_back(&self, ip: IpAddr, port: u16) {
        if let Ok(mut free) = self.free.lock() {
            free.entry(ip).or_default().push_back(port);
        }
    }

    /// A socket on `ip` bound to a free port of the range. A port some other process holds is
    /// skipped (and retried by a later lease).
    pub fn bind(
        self: &Arc<Self>,
        ip: IpAddr,
    ) -> Result<(std::net::UdpSocket, PortLease), PortsExhausted> {
        let attempts = self.available(ip);
        let mut busy = Vec::new();
        let mut bound = None;
        for _ in 0..attempts {
            let Some(port) = self.take(ip) else { break };
            match std::net::UdpSocket::bind(SocketAddr::new(ip, port)) {
                Ok(socket) => {
                    bound = Some((socket, port));
                    break;
                }
                Err(_) => busy.push(port),
            }
        }
        for port in busy {
            self.give_back(ip, port);
        }
        let (socket, port) = bound.ok_or(PortsExhausted {
            ip,
            first: *self.range.start(),
            last: *self.range.end(),
        })?;
        Ok((
            socket,
            PortLease {
                pool: self.clone(),
                ip,
                port,
            },
        ))
    }
}

/// A leased port; dropping it returns the port to the pool.
#[derive(Debug)]
pub struct PortLease {
    pool: Arc<PortPool>,
    ip: IpAddr,
    port: u16,
}

impl PortLease {
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for PortLease {
    fn drop(&mut self) {
        self.pool.give_back(self.ip, self.port);
    }
}

/// A connection's socket on a leased port. Reports the address webrtc-rs keyed it under.
pub struct LeasedSocket {
    // Field order matters: the socket closes before the port goes back to the pool.
    inner: Arc<dyn AsyncUdpSocket>,
    reported_addr: SocketAddr,
    _lease: PortLease,
}

impl LeasedSocket {
    pub fn new(
        inner: Arc<dyn AsyncUdpSocket>,
        reported_addr: SocketAddr,
        lease: PortLease,
    ) -> LeasedSocket {
        LeasedSocket {
            inner,
            reported_addr,
            _lease: lease,
        }
    }
}

impl std::fmt::Debug for LeasedSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeasedSocket")
            .field("port", &self._lease.port)
            .field("reported_addr", &self.reported_addr)
            .finish()
    }
}

impl AsyncUdpSocket for LeasedSocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.reported_addr)
    }

    fn poll_send(&self, cx: &mut Context<'_>, transmit: &Transmit<'_>) -> Poll<io::Result<usize>> {
        self.inner.poll_send(cx, transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn max_gso_segments(&self) -> usize {
        self.inner.max_gso_segments()
    }

    fn max_gro_segments(&self) -> usize {
        self.inner.max_gro_segments()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    /// A free range of `n` ports on loopback (bound once to find them, then released).
    fn free_range(n: u16) -> RangeInclusive<u16> {
        for _ in 0..50 {
            let probe = std::net::UdpSocket::bind((LOOPBACK, 0)).unwrap();
            let first = probe.local_addr().unwrap().port();
            drop(probe);
            let Some(last) = first.checked_add(n - 1) else {
                continue;
            };
            let all_free = (first..=last).all(|p| std::net::UdpSocket::bind((LOOPBACK, p)).is_ok());
            if all_free {
                return first..=last;
            }
        }
        panic!("no free port range on loopback");
    }

    #[test]
    fn leases_stay_in_range_run_out_and_come_back() {
        let range = free_range(3);
        let pool = PortPool::new(range.clone(), &[LOOPBACK]);
        let a = pool.bind(LOOPBACK).unwrap();
        let b = pool.bind(LOOPBACK).unwrap();
        let c = pool.bind(LOOPBACK).unwrap();
        let mut ports = vec![a.1.port(), b.1.port(), c.1.port()];
        ports.sort();
        assert_eq!(ports, range.clone().collect::<Vec<_>>());
        assert_eq!(a.0.local_addr().unwrap().port(), a.1.port());
        let err = pool.bind(LOOPBACK).unwrap_err();
        assert!(err.to_string().contains("no free UDP port"), "{err}");
        let returned = b.1.port();
        drop(b);
        assert_eq!(pool.available(LOOPBACK), 1);
        let again = pool.bind(LOOPBACK).unwrap();
        assert_eq!(again.1.port(), returned);
    }

    #[test]
    fn a_port_held_by_someone_else_is_skipped() {
        let range = free_range(2);
        let squatter = std::net::UdpSocket::bind((LOOPBACK, *range.start())).unwrap();
        let pool = PortPool::new(range.clone(), &[LOOPBACK]);
        let (_socket, lease) = pool.bind(LOOPBACK).unwrap();
        assert_eq!(lease.port(), *range.end());
        assert!(pool.bind(LOOPBACK).is_err());
        drop(squatter);
        assert_eq!(pool.bind(LOOPBACK).unwrap().1.port(), *range.start());
    }
}
