//! ServiceAccount tokens: JWTs signed with the control plane's Ed25519 key
//! (`pki/sa.key`, made once, like kube-apiserver's `--service-account-signing-key-file`),
//! with Kubernetes' claims — issuer, subject `system:serviceaccount:NS:NAME`, audiences,
//! expiry, and the ServiceAccount (and pod) they belong to. A token is accepted only
//! while its signature, lifetime and audience hold and the objects it names still exist
//! with the same uids (checked by the authenticator against the store).

use std::path::Path;

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use ring::{
    rand::SystemRandom,
    signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey},
};
use serde::{Deserialize, Serialize};

use crate::pki::{self, PkiError};

/// The issuer of Berth's tokens (their `iss`).
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
pub(crate) const KEY_FILE: &str = "sa.key";

/// The lifetime a token asked for `asked` seconds gets: Kubernetes' default of an hour,
/// and within the bounds projected tokens may ask for.
pub fn lifetime(asked: Option<i64>) -> u64 {
    let bounds = berth_api::core::TOKEN_EXPIRATION_SECONDS;
    asked
        .unwrap_or(3600)
        .clamp(*bounds.start(), *bounds.end())
        .unsigned_abs()
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("not a JWT")]
    Malformed,
    #[error("the token's signature is not the control plane's")]
    Signature,
    #[error("the token expired")]
    Expired,
    #[error("the token is not for this server (audiences {0:?})")]
    Audience(Vec<String>),
}

/// Kubernetes' private claims: whose token it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubernetesClaims {
    pub namespace: String,
    pub serviceaccount: ObjectClaim,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<ObjectClaim>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectClaim {
    pub name: String,
    pub uid: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: Vec<String>,
    pub exp: u64,
    pub iat: u64,
    pub nbf: u64,
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: KubernetesClaims,
}

pub struct TokenSigner {
    key: Ed25519KeyPair,
}

impl TokenSigner {
    /// The signing key in `pki_dir`, made (0600) when there is none.
    pub fn load_or_create(pki_dir: &Path) -> Result<Self, PkiError> {
        let path = pki_dir.join(KEY_FILE);
        let invalid = |reason: &str| PkiError::Invalid {
            path: path.clone(),
            reason: reason.to_owned(),
        };
        let pkcs8 = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let made = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
                    .map_err(|_| invalid("could not generate an Ed25519 key"))?;
                pki::write_private(&path, made.as_ref())?;
                made.as_ref().to_vec()
            }
            Err(source) => return Err(PkiError::Io { path, source }),
        };
        let key = Ed25519KeyPair::from_pkcs8(&pkcs8)
            .map_err(|_| invalid("not an Ed25519 key in PKCS#8"))?;
        Ok(Self { key })
    }

    /// A signed token carrying `claims`.
    pub fn issue(&self, claims: &Claims) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"EdDSA","typ":"JWT"}"#);
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
        let signed = format!("{header}.{body}");
        let signature = URL_SAFE_NO_PAD.encode(self.key.sign(signed.as_bytes()));
        format!("{signed}.{signature}")
    }

    /// A token of ServiceAccount `account` in `namespace` (bound to `pod`, if any) for
    /// `audiences`, valid from `now` for `seconds`; with its expiry (Unix seconds).
    pub fn grant(
        &self,
        namespace: &str,
        account: ObjectClaim,
        pod: Option<ObjectClaim>,
        audiences: Vec<String>,
        now: u64,
        seconds: u64,
    ) -> (String, u64) {
        let expires = now.saturating_add(seconds);
        let claims = Claims {
            iss: ISSUER.to_owned(),
            sub: berth_api::accounts::user_name(namespace, &account.name),
            aud: audiences,
            exp: expires,
            iat: now,
            nbf: now,
            kubernetes: KubernetesClaims {
                namespace: namespace.to_owned(),
                serviceaccount: account,
                pod,
            },
        };
        (self.issue(&claims), expires)
    }

    /// The claims of `token` if this control plane signed it, it is within its lifetime
    /// at `now`, and it is for `audience`.
    pub fn verify(&self, token: &str, now: u64, audience: &str) -> Result<Claims, TokenError> {
        let mut parts = token.split('.');
        let (Some(header), Some(body), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| TokenError::Malformed)?;
        UnparsedPublicKey::new(&ED25519, self.key.public_key().as_ref())
            .verify(format!("{header}.{body}").as_bytes(), &signature)
            .map_err(|_| TokenError::Signature)?;
        let claims: Claims = URL_SAFE_NO_PAD
            .decode(body)
            .ok()
            .and_then(|json| serde_json::from_slice(&json).ok())
            .ok_or(TokenError::Malformed)?;
        if now >= claims.exp || now < claims.nbf {
            return Err(TokenError::Expired);
        }
        if !claims.aud.iter().any(|a| a == audience) {
            return Err(TokenError::Audience(claims.aud));
        }
        Ok(claims)
    }
}

/// Whether a bearer token looks like a JWT rather than a static token.
pub fn looks_like_jwt(token: &str) -> bool {
    token.matches('.').count() == 2 && token.starts_with("eyJ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: u64) -> Claims {
        Claims {
            iss: ISSUER.to_owned(),
            sub: "system:serviceaccount:a:default".to_owned(),
            aud: vec![ISSUER.to_owned()],
            exp,
            iat: 100,
            nbf: 100,
            kubernetes: KubernetesClaims {
                namespace: "a".to_owned(),
                serviceaccount: ObjectClaim {
                    name: "default".to_owned(),
                    uid: "u1".to_owned(),
                },
                pod: None,
            },
        }
    }

    #[test]
    fn tokens_verify_only_when_signed_here_in_time_and_for_us() {
        let dir = tempfile::tempdir().expect("dir");
        let signer = TokenSigner::load_or_create(dir.path()).expect("key");
        let token = signer.issue(&claims(200));
        assert!(looks_like_jwt(&token));
        assert_eq!(signer.verify(&token, 150, ISSUER), Ok(claims(200)));
        assert_eq!(signer.verify(&token, 200, ISSUER), Err(TokenError::Expired));
        assert!(matches!(
            signer.verify(&token, 150, "other"),
            Err(TokenError::Audience(_))
        ));
        // Another key (another cluster) did not sign it; the same key file reloads.
        let other = tempfile::tempdir().expect("dir");
        let stranger = TokenSigner::load_or_create(other.path()).expect("key");
        assert_eq!(
            stranger.verify(&token, 150, ISSUER),
            Err(TokenError::Signature)
        );
        let reloaded = TokenSigner::load_or_create(dir.path()).expect("key");
        assert!(reloaded.verify(&token, 150, ISSUER).is_ok());
        let mut tampered = token.clone();
        tampered.insert(token.find('.').expect("dot") + 5, 'x');
        assert!(signer.verify(&tampered, 150, ISSUER).is_err());
    }
}
