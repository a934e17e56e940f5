//! What the server keeps of a bearer token: its SHA-256 digest. Shared by the API's
//! authentication, the PKI (the admin token) and the bootstrap tokens.

/// Known tokens, kept only as SHA-256 digests so memory and disk never hold more than
/// the admin.conf the operator was given.
pub struct Auth {
    digests: Vec<[u8; 32]>,
}

impl Auth {
    pub fn from_digests(digests: Vec<[u8; 32]>) -> Self {
        Self { digests }
    }

    pub fn digest(token: &str) -> [u8; 32] {
        let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        out
    }

    pub fn accepts(&self, token: &str) -> bool {
        let presented = Self::digest(token);
        // Compare every digest in full so timing reveals nothing about near misses.
        self.digests.iter().fold(false, |found, known| {
            found | constant_time_eq(known, &presented)
        })
    }

    /// Compares two digests in constant time.
    pub fn digests_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
        constant_time_eq(a, b)
    }
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
