//! Pod addresses from the node's pod CIDR (what a CNI plugin's host-local IPAM does).
//!
//! The agent keeps no address file: every pod's address is also a label on its pause
//! container ([`crate::runtime::labels::POD_IP`]), so an agent that restarts rebuilds the
//! book with [`Ipam::reserve`] from what runs, and a pod can never be given an address
//! that a running pod still has.

use std::{collections::BTreeMap, fmt, net::Ipv4Addr, str::FromStr};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    #[error("{0:?} is not an IPv4 CIDR such as 198.18.1.0/24")]
    InvalidCidr(String),
    #[error(
        "pod CIDR {0} is too small: it needs room for at least one pod besides the network, first and broadcast addresses"
    )]
    TooSmall(Cidr),
    #[error("pod CIDR {cidr} is exhausted: all {capacity} pod addresses are in use")]
    Exhausted { cidr: Cidr, capacity: u32 },
    #[error("{ip} is not a pod address of {cidr}")]
    OutOfRange { ip: Ipv4Addr, cidr: Cidr },
    #[error("{ip} belongs to pod {owner} already")]
    InUse { ip: Ipv4Addr, owner: String },
}

/// An IPv4 network: its first address and prefix length (host bits are cleared).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: Ipv4Addr,
    prefix: u8,
}

impl Cidr {
    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix))
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u64::from(u32::from(ip)).wrapping_sub(u64::from(u32::from(self.network))) < self.size()
    }
}

impl FromStr for Cidr {
    type Err = IpamError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || IpamError::InvalidCidr(text.to_owned());
        let (addr, prefix) = text.split_once('/').ok_or_else(invalid)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| invalid())?;
        let prefix: u8 = prefix.parse().map_err(|_| invalid())?;
        if prefix > 32 {
            return Err(invalid());
        }
        let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
        Ok(Cidr {
            network: Ipv4Addr::from(u32::from(addr) & mask),
            prefix,
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// The address book of one node: which pod (by uid) has which address.
#[derive(Debug, Clone)]
pub struct Ipam {
    cidr: Cidr,
    /// Offsets into the CIDR that pods may get: [first, last].
    first: u32,
    last: u32,
    by_ip: BTreeMap<Ipv4Addr, String>,
    by_owner: BTreeMap<String, Ipv4Addr>,
    /// Where the next search starts. Handing out addresses round the range instead of
    /// always the lowest free one keeps a just-released address unused for as long as
    /// possible, so conntrack entries and neighbour caches that still name it age out
    /// before a new pod takes it.
    cursor: u32,
}

impl Ipam {
    /// Pods get every address of `cidr` but the network address, the first host address
    /// (a node conventionally takes it for itself or a gateway) and the broadcast address.
    pub fn new(cidr: Cidr) -> Result<Self, IpamError> {
        let size = cidr.size();
        // /31 and /32 have no room for a pod once the reserved addresses are out.
        if size < 4 {
            return Err(IpamError::TooSmall(cidr));
        }
        let last = u32::try_from(size - 2).map_err(|_| IpamError::TooSmall(cidr))?;
        Ok(Ipam {
            cidr,
            first: 2,
            last,
            by_ip: BTreeMap::new(),
            by_owner: BTreeMap::new(),
            cursor: 2,
        })
    }

    pub fn cidr(&self) -> Cidr {
        self.cidr
    }

    /// How many pods the CIDR can hold.
    pub fn capacity(&self) -> u32 {
        self.last - self.first + 1
    }

    pub fn allocated(&self) -> usize {
        self.by_ip.len()
    }

    pub fn get(&self, owner: &str) -> Option<Ipv4Addr> {
        self.by_owner.get(owner).copied()
    }

    pub fn owner(&self, ip: Ipv4Addr) -> Option<&str> {
        self.by_ip.get(&ip).map(String::as_str)
    }

    fn at(&self, offset: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.cidr.network).wrapping_add(offset))
    }

    fn is_pod_address(&self, ip: Ipv4Addr) -> bool {
        self.cidr.contains(ip) && {
            let offset = u32::from(ip).wrapping_sub(u32::from(self.cidr.network));
            (self.first..=self.last).contains(&offset)
        }
    }

    /// The owner's address: the one it has, or a free one. Asking twice is harmless.
    pub fn allocate(&mut self, owner: &str) -> Result<Ipv4Addr, IpamError> {
        if let Some(ip) = self.get(owner) {
            return Ok(ip);
        }
        let capacity = self.capacity();
        for step in 0..capacity {
            let offset = self.first + (self.cursor - self.first + step) % capacity;
            let ip = self.at(offset);
            if !self.by_ip.contains_key(&ip) {
                self.cursor = if offset == self.last {
                    self.first
                } else {
                    offset + 1
                };
                self.insert(ip, owner);
                return Ok(ip);
            }
        }
        Err(IpamError::Exhausted {
            cidr: self.cidr,
            capacity,
        })
    }

    /// Records an address found in use (after a restart). Fails when it lies outside
    /// the pod range or another owner has it: the caller must then give that pod a new
    /// address rather than let two pods share one.
    pub fn reserve(&mut self, ip: Ipv4Addr, owner: &str) -> Result<(), IpamError> {
        if !self.is_pod_address(ip) {
            return Err(IpamError::OutOfRange {
                ip,
                cidr: self.cidr,
            });
        }
        match self.by_ip.get(&ip) {
            Some(current) if current == owner => return Ok(()),
            Some(current) => {
                return Err(IpamError::InUse {
                    ip,
                    owner: current.clone(),
                });
            }
            None => {}
        }
        // An owner holds one address: a reservation replaces an older one.
        self.release(owner);
        self.insert(ip, owner);
        Ok(())
    }

    /// Frees the owner's address, if it has one.
    pub fn release(&mut self, owner: &str) -> Option<Ipv4Addr> {
        let ip = self.by_owner.remove(owner)?;
        self.by_ip.remove(&ip);
        Some(ip)
    }

    fn insert(&mut self, ip: Ipv4Addr, owner: &str) {
        self.by_ip.insert(ip, owner.to_owned());
        self.by_owner.insert(owner.to_owned(), ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book(cidr: &str) -> Ipam {
        Ipam::new(cidr.parse().expect("a CIDR")).expect("room for pods")
    }

    #[test]
    fn cidrs_parse_and_normalise() {
        let cidr: Cidr = "198.18.3.77/24".parse().expect("a CIDR");
        assert_eq!(cidr.to_string(), "198.18.3.0/24");
        assert!(cidr.contains(Ipv4Addr::new(198, 18, 3, 255)));
        assert!(!cidr.contains(Ipv4Addr::new(198, 18, 4, 0)));
        for bad in ["198.18.3.0", "198.18.3.0/33", "x/24", "198.18.3.0/-1"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        let all: Cidr = "0.0.0.0/0".parse().expect("the whole space");
        assert!(all.contains(Ipv4Addr::new(255, 255, 255, 255)));
    }

    #[test]
    fn skips_network_first_and_broadcast() {
        let mut ipam = book("198.18.5.0/30");
        assert_eq!(ipam.capacity(), 1);
        assert_eq!(ipam.allocate("a"), Ok(Ipv4Addr::new(198, 18, 5, 2)));
        assert!(matches!(
            ipam.allocate("b"),
            Err(IpamError::Exhausted { capacity: 1, .. })
        ));
        assert!(Ipam::new("198.18.5.0/31".parse().expect("a CIDR")).is_err());
        let mut big = book("198.18.6.0/24");
        assert_eq!(big.capacity(), 253);
        let all: Vec<Ipv4Addr> = (0..253)
            .map(|n| big.allocate(&format!("pod-{n}")).expect("room"))
            .collect();
        assert_eq!(all.first(), Some(&Ipv4Addr::new(198, 18, 6, 2)));
        assert_eq!(all.last(), Some(&Ipv4Addr::new(198, 18, 6, 254)));
        assert!(big.allocate("one-too-many").is_err());
    }

    #[test]
    fn allocation_is_idempotent_and_never_doubles() {
        let mut ipam = book("198.18.7.0/24");
        let a = ipam.allocate("a").expect("room");
        assert_eq!(ipam.allocate("a"), Ok(a));
        let b = ipam.allocate("b").expect("room");
        assert_ne!(a, b);
        assert_eq!(ipam.allocated(), 2);
        assert_eq!(ipam.owner(b), Some("b"));
    }

    #[test]
    fn released_addresses_are_reused_last() {
        let mut ipam = book("198.18.8.0/29");
        let a = ipam.allocate("a").expect("room");
        ipam.release("a");
        let b = ipam.allocate("b").expect("room");
        assert_ne!(a, b, "a just-released address waits its turn");
        for owner in ["c", "d", "e"] {
            ipam.allocate(owner).expect("room");
        }
        // Only a's old address is left now.
        assert_eq!(ipam.allocate("f"), Ok(a));
    }

    #[test]
    fn reservations_rebuild_the_book_and_refuse_conflicts() {
        let mut ipam = book("198.18.9.0/24");
        let ip = Ipv4Addr::new(198, 18, 9, 40);
        ipam.reserve(ip, "a").expect("free");
        ipam.reserve(ip, "a").expect("same owner again");
        assert_eq!(
            ipam.reserve(ip, "b"),
            Err(IpamError::InUse {
                ip,
                owner: "a".to_owned()
            })
        );
        assert!(matches!(
            ipam.reserve(Ipv4Addr::new(198, 18, 9, 255), "c"),
            Err(IpamError::OutOfRange { .. })
        ));
        assert!(matches!(
            ipam.reserve(Ipv4Addr::new(198, 18, 10, 4), "c"),
            Err(IpamError::OutOfRange { .. })
        ));
        assert_eq!(ipam.allocate("a"), Ok(ip), "the owner keeps its address");
        for _ in 0..300 {
            let fresh = ipam.allocate("other").expect("room");
            assert_ne!(fresh, ip);
            ipam.release("other");
        }
    }
}
