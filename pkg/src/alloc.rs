//! Address and port arithmetic for the allocators (IPv4 only).
//!
//! The apiserver hands out three kinds of numbers, each recorded in etcd so that two
//! writers can never take the same one (the check happens inside an etcd transaction):
//! ClusterIPs from `--service-cluster-ip-range`, nodePorts from `--service-node-port-range`,
//! and one pod CIDR per node carved out of `--cluster-cidr`. This module only does the maths.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AllocError {
    #[error("invalid CIDR {0:?}: want a.b.c.d/n with the host bits zero")]
    BadCidr(String),
    #[error("invalid port range {0:?}: want LOW-HIGH within 1-65535")]
    BadRange(String),
}

/// An IPv4 network such as `10.96.0.0/16`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl FromStr for Cidr {
    type Err = AllocError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || AllocError::BadCidr(s.to_string());
        let (a, p) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = a.parse().map_err(|_| bad())?;
        let prefix: u8 = p.parse().map_err(|_| bad())?;
        if prefix > 32 {
            return Err(bad());
        }
        let c = Cidr { addr, prefix };
        if u32::from(addr) & !c.mask() != 0 {
            return Err(bad());
        }
        Ok(c)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Cidr {
    fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix)
        }
    }
    /// Number of addresses, network and broadcast included.
    pub fn size(&self) -> u64 {
        1u64 << (32 - self.prefix)
    }
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr)
    }
    /// The `n`th address of the network (0 is the network address itself).
    pub fn nth(&self, n: u64) -> Option<Ipv4Addr> {
        (n < self.size()).then(|| Ipv4Addr::from(u32::from(self.addr) + n as u32))
    }
    /// Offset of `ip` inside the network.
    pub fn offset(&self, ip: Ipv4Addr) -> Option<u64> {
        self.contains(ip).then(|| (u32::from(ip) - u32::from(self.addr)) as u64)
    }
    /// Addresses that may be handed out: all but the network and broadcast addresses.
    pub fn usable(&self) -> std::ops::Range<u64> {
        if self.prefix >= 31 {
            0..self.size()
        } else {
            1..self.size() - 1
        }
    }
    /// The `n`th subnet of prefix length `prefix` (e.g. the 3rd /24 of 10.244.0.0/16).
    pub fn subnet(&self, prefix: u8, n: u64) -> Option<Cidr> {
        if prefix < self.prefix || prefix > 32 {
            return None;
        }
        let count = 1u64 << (prefix - self.prefix);
        (n < count).then(|| Cidr { addr: Ipv4Addr::from(u32::from(self.addr) + (n << (32 - prefix)) as u32), prefix })
    }
    pub fn subnet_count(&self, prefix: u8) -> u64 {
        if prefix < self.prefix {
            0
        } else {
            1u64 << (prefix - self.prefix)
        }
    }
}

/// An inclusive port range such as `30000-32767`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub low: u16,
    pub high: u16,
}

impl FromStr for PortRange {
    type Err = AllocError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || AllocError::BadRange(s.to_string());
        let (l, h) = s.split_once('-').ok_or_else(bad)?;
        let (low, high): (u16, u16) = (l.trim().parse().map_err(|_| bad())?, h.trim().parse().map_err(|_| bad())?);
        if low == 0 || low > high {
            return Err(bad());
        }
        Ok(PortRange { low, high })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.low, self.high)
    }
}

impl PortRange {
    pub fn contains(&self, p: i64) -> bool {
        (self.low as i64..=self.high as i64).contains(&p)
    }
    pub fn size(&self) -> u64 {
        (self.high - self.low) as u64 + 1
    }
}

/// The first candidate in `0..size`, scanning from `start` and wrapping around, for which
/// `taken` is false. This is how Kubernetes' bitmap allocator picks: a random start spreads
/// concurrent allocators apart, the scan guarantees a free one is found when there is one.
pub fn first_free(size: u64, start: u64, taken: impl Fn(u64) -> bool) -> Option<u64> {
    (0..size).map(|i| (start + i) % size).find(|&i| !taken(i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parsing_and_maths() {
        let c: Cidr = "10.96.0.0/16".parse().unwrap();
        assert_eq!(c.size(), 65536);
        assert!(c.contains("10.96.255.254".parse().unwrap()));
        assert!(!c.contains("10.97.0.1".parse().unwrap()));
        assert_eq!(c.nth(1), Some("10.96.0.1".parse().unwrap()));
        assert_eq!(c.usable(), 1..65535);
        assert_eq!(c.offset("10.96.1.0".parse().unwrap()), Some(256));
        for bad in ["10.96.0.1/16", "10.96.0.0", "10.96.0.0/33", "300.1.1.1/8", "x/8"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn subnets_of_the_cluster_cidr() {
        let c: Cidr = "10.244.0.0/16".parse().unwrap();
        assert_eq!(c.subnet_count(24), 256);
        assert_eq!(c.subnet(24, 0).unwrap().to_string(), "10.244.0.0/24");
        assert_eq!(c.subnet(24, 3).unwrap().to_string(), "10.244.3.0/24");
        assert_eq!(c.subnet(24, 256), None);
    }

    #[test]
    fn port_ranges() {
        let r: PortRange = "30000-32767".parse().unwrap();
        assert_eq!(r.size(), 2768);
        assert!(r.contains(30001) && !r.contains(80));
        assert!("5-1".parse::<PortRange>().is_err());
        assert!("0-10".parse::<PortRange>().is_err());
    }

    #[test]
    fn first_free_wraps_around() {
        assert_eq!(first_free(5, 3, |i| i == 3 || i == 4), Some(0));
        assert_eq!(first_free(3, 0, |_| true), None);
    }
}
