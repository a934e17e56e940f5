//! Maglev consistent hashing (Eisenbud et al., NSDI 2016): every backend gets a
//! pseudo-random permutation of the table's slots derived from its identity, and the
//! backends take turns claiming their next preferred free slot. Tables depend only on
//! the set of backends, so every node builds the same table for the same input, and
//! removing one of N backends moves little more than the 1/N of slots it owned.

use std::net::Ipv4Addr;

/// A backend's identity for hashing: the same on every node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendIdentity {
    pub addr: Ipv4Addr,
    pub port: u16,
}

impl BackendIdentity {
    fn bytes(&self) -> [u8; 6] {
        let [a, b, c, d] = self.addr.octets();
        let [p, q] = self.port.to_be_bytes();
        [a, b, c, d, p, q]
    }
}

/// FNV-1a, 64 bits: stable across Rust versions and machines, unlike std's hasher.
fn fnv1a(seed: u64, bytes: &[u8]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325 ^ seed;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // FNV's low bits mix poorly for short inputs; finish with a 64-bit avalanche.
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^ (hash >> 33)
}

/// Table sizes services can get: primes just below powers of two, so each fills most of
/// the pool block it is given.
pub const TABLE_SIZES: [u32; 10] = [
    251, 509, 1_021, 2_039, 4_093, 8_191, 16_381, 32_749, 65_521, 131_071,
];

/// Slots per backend the table aims for: with fewer, removing a backend moves noticeably
/// more than its own share of flows (Maglev paper, section 5.3; at 100 slots per backend
/// about 1.7% more than 1/N here, at 200 about 0.5%).
pub const SLOTS_PER_BACKEND: u32 = 200;

/// The table size for a service with `backends` active backends: the smallest size of at
/// least `min_size` and 200 slots per backend (capped at the largest size).
pub fn table_size(backends: usize, min_size: u32) -> u32 {
    let wanted = u32::try_from(backends)
        .unwrap_or(u32::MAX)
        .saturating_mul(SLOTS_PER_BACKEND)
        .max(min_size);
    if wanted <= min_size {
        return min_size;
    }
    TABLE_SIZES
        .iter()
        .copied()
        .find(|size| *size >= wanted)
        .unwrap_or(TABLE_SIZES[TABLE_SIZES.len() - 1])
}

pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let n = u64::from(n);
    let mut divisor = 2u64;
    while divisor * divisor <= n {
        if n.is_multiple_of(divisor) {
            return false;
        }
        divisor += 1;
    }
    true
}

/// Builds a lookup table of `size` slots (prime) over `backends`, returning for each slot
/// the index of its backend in `backends` as given. The caller passes backends in a
/// canonical order (sorted by identity) so every node gets the same table.
/// Returns an empty table when there are no backends.
pub fn build_table(backends: &[BackendIdentity], size: u32) -> Vec<u32> {
    if backends.is_empty() || size == 0 {
        return Vec::new();
    }
    let m = u64::from(size);
    let permutation: Vec<(u64, u64)> = backends
        .iter()
        .map(|backend| {
            let bytes = backend.bytes();
            let offset = fnv1a(0x6d61_676c_6576_3031, &bytes) % m;
            let skip = if m > 1 {
                fnv1a(0x6d61_676c_6576_3032, &bytes) % (m - 1) + 1
            } else {
                1
            };
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; backends.len()];
    let mut table = vec![u32::MAX; size as usize];
    let mut filled = 0u32;
    'fill: loop {
        for (index, (offset, skip)) in permutation.iter().enumerate() {
            let mut slot = ((offset + next[index] * skip) % m) as usize;
            while table[slot] != u32::MAX {
                next[index] += 1;
                slot = ((offset + next[index] * skip) % m) as usize;
            }
            table[slot] = index as u32;
            next[index] += 1;
            filled += 1;
            if filled == size {
                break 'fill;
            }
        }
    }
    table
}

/// Fingerprint of a table's input, stored with the service so a restarted agent can tell
/// whether the live table is already right without reading it back.
pub fn fingerprint(backends: &[BackendIdentity], size: u32) -> u32 {
    let mut bytes = Vec::with_capacity(backends.len() * 6 + 4);
    bytes.extend_from_slice(&size.to_be_bytes());
    for backend in backends {
        bytes.extend_from_slice(&backend.bytes());
    }
    let hash = fnv1a(0x6669_6e67_6572_7072, &bytes);
    // Never zero: zero marks "no table written yet".
    ((hash ^ (hash >> 32)) as u32).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends(count: u8) -> Vec<BackendIdentity> {
        (0..count)
            .map(|i| BackendIdentity {
                addr: Ipv4Addr::new(198, 18, 1, i + 1),
                port: 8080,
            })
            .collect()
    }

    #[test]
    fn table_sizes_grow_with_the_backends() {
        assert!(TABLE_SIZES.iter().all(|size| is_prime(*size)));
        assert_eq!(table_size(3, 1021), 1021);
        assert_eq!(table_size(5, 1021), 1021);
        assert_eq!(table_size(6, 1021), 2039);
        assert_eq!(table_size(50, 1021), 16381);
        assert_eq!(table_size(5000, 1021), 131_071);
        assert_eq!(table_size(1, 251), 251);
    }

    #[test]
    fn primes() {
        assert!(is_prime(1021));
        assert!(is_prime(65537));
        assert!(!is_prime(1024));
        assert!(!is_prime(1));
    }

    #[test]
    fn every_slot_is_filled_and_shares_are_even() {
        let table = build_table(&backends(7), 1021);
        assert_eq!(table.len(), 1021);
        let mut shares = [0u32; 7];
        for backend in &table {
            shares[*backend as usize] += 1;
        }
        // Maglev gives each backend floor(M/N) or ceil(M/N) slots.
        for share in shares {
            assert!((145..=146).contains(&share), "share {share}");
        }
    }

    #[test]
    fn same_input_same_table() {
        assert_eq!(
            build_table(&backends(5), 1021),
            build_table(&backends(5), 1021)
        );
        assert_ne!(
            fingerprint(&backends(5), 1021),
            fingerprint(&backends(4), 1021)
        );
    }

    #[test]
    fn empty_backends_give_empty_table() {
        assert!(build_table(&[], 1021).is_empty());
    }
}
