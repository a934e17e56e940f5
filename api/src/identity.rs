//! Who a cluster certificate names. Every certificate the cluster CA issues carries its
//! holder's role in the subject's organisation, and its name in the common name, so
//! both ends of the agent and node APIs decide who is calling from the verified
//! certificate alone (the way Kubernetes reads `O=system:nodes`).

/// Organisation of node certificates (the agents').
pub const NODE_ORGANIZATION: &str = "berth:nodes";
/// Organisation of the control plane's client certificate, the only caller the node
/// API accepts.
pub const CONTROL_PLANE_ORGANIZATION: &str = "berth:control-plane";

/// The common name of a DER certificate if its subject's organisation is `organization`.
pub fn name_in_role(der: &[u8], organization: &str) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let in_role = subject
        .iter_organization()
        .any(|o| o.as_str().is_ok_and(|o| o == organization));
    let name = subject.iter_common_name().next()?.as_str().ok()?;
    in_role.then(|| name.to_owned())
}

/// The serial number of a DER certificate, in lower-case hex: what the control plane
/// records for the one certificate of each node it accepts.
pub fn serial_of(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(
        cert.raw_serial()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    )
}

/// A DER certificate's validity, Unix seconds (not before, not after).
pub fn validity_of(der: &[u8]) -> Option<(i64, i64)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let validity = cert.validity();
    Some((
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    ))
}

/// The DER of the first certificate of a PEM text.
pub fn der_of_pem(pem: &str) -> Option<Vec<u8>> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    Some(pem.contents)
}

/// [`validity_of`] the first certificate of a PEM text.
pub fn validity_of_pem(pem: &str) -> Option<(i64, i64)> {
    validity_of(&der_of_pem(pem)?)
}
