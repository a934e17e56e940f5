//! Bearer-token authentication, on unless the operator turns it off explicitly.

use axum::{
    extract::{Request, State},
    http::header,
    middleware::Next,
    response::{IntoResponse, Response},
};

use super::{ApiState, error::ApiError};

/// Paths a load balancer or supervisor probes without credentials.
const UNAUTHENTICATED: &[&str] = &["/healthz", "/readyz"];

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
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub async fn require_token(
    State(state): State<ApiState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(auth) = &state.auth else {
        return next.run(request).await;
    };
    if UNAUTHENTICATED.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match token {
        Some(token) if auth.accepts(token) => next.run(request).await,
        _ => {
            let mut response = ApiError::unauthorized().into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            response
        }
    }
}
