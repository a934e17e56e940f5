//! The control plane's own certificate authority, its serving certificate and the admin
//! token, created at first start under `<data-dir>/pki/`.
//!
//! The CA and token persist; the serving certificate is re-issued at every start so a
//! changed address or `--tls-san` takes effect without touching the CA clients trust.

use std::{
    fs,
    net::IpAddr,
    path::{Path, PathBuf},
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};

use berth_api::identity;

use crate::{credentials::Auth, util};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error(
        "{0:?} names nodes or the control plane on the agent and node APIs: not a group to give a user"
    )]
    Reserved(String),
    #[error("{0} groups asked for: a certificate made here names one group (O) at most")]
    OneGroup(usize),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_owned(),
        source,
    }
}

pub struct Pki {
    pub ca_cert_pem: String,
    ca_key_pem: String,
    /// Shared secret nodes present to join (like k3s' node token); 0600 in the PKI dir.
    pub bootstrap_token: String,
    /// When it was made (its file's modification time, Unix seconds): its expiry counts
    /// from then.
    pub bootstrap_token_issued: u64,
    pub server_cert_pem: String,
    pub server_key_pem: String,
    /// SHA-256 of the admin token; the token itself is only in admin.conf.
    pub admin_token_digest: [u8; 32],
    /// Only set when the token was created by this start (to write admin.conf).
    pub new_admin_token: Option<String>,
    /// The control plane's client certificate for the agents' node API (O =
    /// berth:control-plane), issued at every start like the serving certificate and
    /// kept in memory only.
    pub node_client_cert_pem: String,
    pub node_client_key_pem: String,
}

const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const SERVER_CERT: &str = "server.crt";
const SERVER_KEY: &str = "server.key";
const ADMIN_TOKEN_DIGEST: &str = "admin-token.sha256";
const BOOTSTRAP_TOKEN: &str = "bootstrap-token";
/// What every control plane of one cluster holds the same (the serving certificate is
/// each one's own, for its own addresses).
pub(crate) const SHARED_FILES: &[&str] = &[CA_CERT, CA_KEY, ADMIN_TOKEN_DIGEST, BOOTSTRAP_TOKEN];
pub use berth_api::identity::{CONTROL_PLANE_ORGANIZATION, NODE_ORGANIZATION};

/// The CA's identity; rebuilt identically at each start to sign with the stored key.
fn ca_params() -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "berth-ca");
    dn.push(DnType::OrganizationName, "Berth");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

impl Pki {
    /// Loads the CA and token from `dir`, creating them the first time, and issues a
    /// serving certificate for `names` (DNS names or IP addresses).
    pub fn load_or_create(dir: &Path, names: &[String]) -> Result<Self, PkiError> {
        berth_files::private_dir(dir).map_err(io(dir))?;
        let (ca_key_path, ca_cert_path) = (dir.join(CA_KEY), dir.join(CA_CERT));
        let (ca_key, ca_cert_pem) = if ca_key_path.exists() && ca_cert_path.exists() {
            let key_pem = fs::read_to_string(&ca_key_path).map_err(io(&ca_key_path))?;
            let key = KeyPair::from_pem(&key_pem).map_err(|e| PkiError::Invalid {
                path: ca_key_path.clone(),
                reason: e.to_string(),
            })?;
            (
                key,
                fs::read_to_string(&ca_cert_path).map_err(io(&ca_cert_path))?,
            )
        } else {
            let key = KeyPair::generate()?;
            let cert = ca_params()?.self_signed(&key)?;
            write_private(&ca_key_path, key.serialize_pem().as_bytes())?;
            write_private(&ca_cert_path, cert.pem().as_bytes())?;
            (key, cert.pem())
        };
        let ca_key_pem = ca_key.serialize_pem();
        let issuer = Issuer::new(ca_params()?, ca_key);

        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "berth-control");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        for name in names {
            let san = match name.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(name.clone().try_into()?),
            };
            if !params.subject_alt_names.contains(&san) {
                params.subject_alt_names.push(san);
            }
        }
        let server_key = KeyPair::generate()?;
        let server_cert = params.signed_by(&server_key, &issuer)?;
        let server_key_pem = server_key.serialize_pem();
        write_private(&dir.join(SERVER_KEY), server_key_pem.as_bytes())?;
        let server_cert_path = dir.join(SERVER_CERT);
        write_private(&server_cert_path, server_cert.pem().as_bytes())?;

        let (node_client_cert_pem, node_client_key_pem) = control_plane_client(&issuer)?;

        let digest_path = dir.join(ADMIN_TOKEN_DIGEST);
        let (admin_token_digest, new_admin_token) = if digest_path.exists() {
            let text = fs::read_to_string(&digest_path).map_err(io(&digest_path))?;
            let digest = parse_hex32(text.trim()).ok_or_else(|| PkiError::Invalid {
                path: digest_path.clone(),
                reason: "expected 64 hex digits".to_owned(),
            })?;
            (digest, None)
        } else {
            let token = util::hex(&util::random_bytes::<32>());
            let digest = Auth::digest(&token);
            write_private(&digest_path, util::hex(&digest).as_bytes())?;
            (digest, Some(token))
        };
        let bootstrap_path = dir.join(BOOTSTRAP_TOKEN);
        let bootstrap_token = if bootstrap_path.exists() {
            fs::read_to_string(&bootstrap_path)
                .map_err(io(&bootstrap_path))?
                .trim()
                .to_owned()
        } else {
            let token = util::hex(&util::random_bytes::<24>());
            write_private(&bootstrap_path, token.as_bytes())?;
            token
        };
        let bootstrap_token_issued = fs::metadata(&bootstrap_path)
            .and_then(|m| m.modified())
            .map_err(io(&bootstrap_path))?
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Ok(Self {
            ca_cert_pem,
            ca_key_pem,
            bootstrap_token,
            bootstrap_token_issued,
            server_cert_pem: server_cert.pem(),
            server_key_pem,
            admin_token_digest,
            new_admin_token,
            node_client_cert_pem,
            node_client_key_pem,
        })
    }
}

impl Pki {
    /// Issues a node certificate for the key in `csr_pem`. Whatever subject the CSR asks
    /// for is replaced: the certificate names exactly `node_name`, as its CN (what the
    /// agent API reads) and as its one DNS name (what the control plane verifies when it
    /// calls the node's API, whatever address it dials). It is good for both ends of TLS.
    /// A certificate for node `node_name` on the key of `csr_pem`, with a random serial
    /// number (returned in hex beside the PEM): the Node records it, so a certificate
    /// of a node that joined again, or was deleted, is told apart from the current one.
    ///
    /// It is valid from a minute ago (clocks differ a little) for `validity`.
    pub fn sign_node_csr(
        &self,
        csr_pem: &str,
        node_name: &str,
        validity: std::time::Duration,
    ) -> Result<(String, String), PkiError> {
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(1);
        params.not_after = now + validity;
        // Positive in DER: the top bit clear.
        let mut serial = util::random_bytes::<16>();
        serial[0] &= 0x7f;
        serial[0] |= 0x01;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params
            .distinguished_name
            .push(DnType::CommonName, node_name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, NODE_ORGANIZATION);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.subject_alt_names = vec![SanType::DnsName(node_name.try_into()?)];
        let key = KeyPair::from_pem(&self.ca_key_pem)?;
        let issuer = Issuer::new(ca_params()?, key);
        let request = rcgen::CertificateSigningRequestParams {
            params,
            public_key: csr.public_key,
        };
        Ok((request.signed_by(&issuer)?.pem(), util::hex(&serial)))
    }
}

/// Issues a client certificate and key for `user` in `groups` (CN and O, as Kubernetes
/// reads them), signed with the CA stored in `dir`; nothing else in `dir` changes. One
/// group at most: rcgen's distinguished names hold one value per attribute type.
///
/// The organisations of node and control-plane certificates are refused: they are not
/// RBAC groups but identities on the agent and node APIs, which RBAC does not guard.
pub fn sign_user(dir: &Path, user: &str, groups: &[String]) -> Result<(String, String), PkiError> {
    if let Some(reserved) = groups
        .iter()
        .find(|g| [NODE_ORGANIZATION, CONTROL_PLANE_ORGANIZATION].contains(&g.as_str()))
    {
        return Err(PkiError::Reserved(reserved.clone()));
    }
    if groups.len() > 1 {
        return Err(PkiError::OneGroup(groups.len()));
    }
    let ca_key_path = dir.join(CA_KEY);
    let key_pem = fs::read_to_string(&ca_key_path).map_err(io(&ca_key_path))?;
    let ca_key = KeyPair::from_pem(&key_pem).map_err(|e| PkiError::Invalid {
        path: ca_key_path.clone(),
        reason: e.to_string(),
    })?;
    let issuer = Issuer::new(ca_params()?, ca_key);
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, user);
    for group in groups {
        params
            .distinguished_name
            .push(DnType::OrganizationName, group.as_str());
    }
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The node name a node certificate was issued for: its CN, if its O says it is a node's.
pub fn node_name_of_certificate(der: &[u8]) -> Option<String> {
    identity::name_in_role(der, NODE_ORGANIZATION)
}

/// A client certificate and key naming the control plane, for calling the nodes.
fn control_plane_client(issuer: &Issuer<'_, KeyPair>) -> Result<(String, String), PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "berth-control");
    params
        .distinguished_name
        .push(DnType::OrganizationName, CONTROL_PLANE_ORGANIZATION);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

pub(crate) fn parse_hex32(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Replaces `path` with `data`, readable by its owner only, whole or not at all
/// (`berth_files::write_private`), with the path in the error.
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), PkiError> {
    berth_files::write_private(path, data).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use rustls::pki_types::{CertificateDer, pem::PemObject as _};

    use super::*;

    fn der(pem: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem.as_bytes())
            .expect("a PEM certificate")
            .to_vec()
    }

    #[test]
    fn user_certificates_name_the_user_and_groups_but_never_a_node() {
        let dir = tempfile::tempdir().expect("tempdir");
        Pki::load_or_create(dir.path(), &["127.0.0.1".to_owned()]).expect("pki");
        let (cert, _key) = sign_user(dir.path(), "alice", &["team-a".to_owned()]).expect("signed");
        let user = crate::authn::user_of_certificate(&der(&cert)).expect("a user");
        assert_eq!(user.name, "alice");
        assert_eq!(user.groups, ["team-a", "system:authenticated"]);
        assert!(matches!(
            sign_user(dir.path(), "bob", &["a".to_owned(), "b".to_owned()]),
            Err(PkiError::OneGroup(2))
        ));
        assert_eq!(node_name_of_certificate(&der(&cert)), None);
        for reserved in [NODE_ORGANIZATION, CONTROL_PLANE_ORGANIZATION] {
            assert!(matches!(
                sign_user(dir.path(), "n1", &[reserved.to_owned()]),
                Err(PkiError::Reserved(_))
            ));
        }
    }

    #[test]
    fn node_certificates_name_the_node_for_both_ends_of_tls() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = Pki::load_or_create(dir.path(), &["127.0.0.1".to_owned()]).expect("pki");
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, "evil");
        let csr = params
            .serialize_request(&key)
            .and_then(|csr| csr.pem())
            .expect("csr");
        let (pem, serial) = pki
            .sign_node_csr(&csr, "node-1", std::time::Duration::from_secs(3600))
            .expect("signed");
        let cert = der(&pem);
        assert_eq!(identity::serial_of(&cert), Some(serial));
        assert_eq!(node_name_of_certificate(&cert).as_deref(), Some("node-1"));
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert).expect("x509");
        let usage = parsed
            .extended_key_usage()
            .expect("eku")
            .expect("present")
            .value;
        assert!(usage.client_auth && usage.server_auth);
        let names = parsed
            .subject_alternative_name()
            .expect("san")
            .expect("present");
        assert_eq!(
            names.value.general_names,
            [x509_parser::extensions::GeneralName::DNSName("node-1")]
        );

        // The control plane's client certificate is not a node's, and says whose it is.
        let control = der(&pki.node_client_cert_pem);
        assert_eq!(node_name_of_certificate(&control), None);
        assert_eq!(
            identity::name_in_role(&control, CONTROL_PLANE_ORGANIZATION).as_deref(),
            Some("berth-control")
        );
        assert_eq!(
            identity::name_in_role(&cert, CONTROL_PLANE_ORGANIZATION),
            None
        );
    }
}
