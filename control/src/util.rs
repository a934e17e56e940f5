//! Small helpers with one owner each: random identifiers, digests. Timestamps are
//! berth-api's (berthctl needs them too); re-exported for the server's modules.

pub(crate) use berth_api::time::{
    parse_rfc3339, rfc3339, rfc3339_micros_now, rfc3339_now, unix_now,
};
use ring::rand::{SecureRandom as _, SystemRandom};

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // The OS random source failing means the machine cannot run TLS either.
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("OS random number generator failed");
    bytes
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A random RFC 4122 version 4 UUID, the format of `metadata.uid`.
pub fn uuid_v4() -> String {
    let mut b = random_bytes::<16>();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids() {
        let id = uuid_v4();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert_ne!(id, uuid_v4());
    }
}
