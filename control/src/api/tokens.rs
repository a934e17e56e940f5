//! `/bootstrap-tokens`: create, list and delete the tokens node agents join with.
//! Admin-only like every other path (the bearer token middleware runs first).

use std::sync::Arc;

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::json;

use super::{ApiState, error::ApiError, with_info};
use crate::tokens::{BootstrapTokens, TokenError};

const RESOURCE: &str = "bootstraptokens";

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateToken {
    /// 0 or absent: the token never expires.
    #[serde(default)]
    pub ttl_seconds: u64,
    #[serde(default)]
    pub description: String,
}

fn tokens(state: &ApiState) -> Result<&Arc<BootstrapTokens>, ApiError> {
    state
        .tokens
        .as_ref()
        .ok_or_else(|| ApiError::no_route("this server does not manage bootstrap tokens"))
}

fn token_error(error: TokenError) -> ApiError {
    match error {
        TokenError::NotFound(id) => ApiError::not_found("BootstrapToken", &id),
        other => ApiError::internal(other.to_string()),
    }
}

pub async fn create(State(state): State<ApiState>, body: axum::body::Bytes) -> Response {
    let result = (|| {
        let request: CreateToken = if body.is_empty() {
            CreateToken::default()
        } else {
            serde_json::from_slice(&body)
                .map_err(|e| ApiError::bad_request(format!("bootstrap token request: {e}")))?
        };
        let (token, record) = tokens(&state)?
            .create(request.ttl_seconds, &request.description)
            .map_err(token_error)?;
        let mut body = serde_json::to_value(&record).unwrap_or_default();
        body["token"] = json!(token);
        Ok::<_, ApiError>((StatusCode::CREATED, Json(body)).into_response())
    })();
    with_info(
        result.unwrap_or_else(IntoResponse::into_response),
        "create",
        RESOURCE,
    )
}

pub async fn list(State(state): State<ApiState>) -> Response {
    let result = tokens(&state).and_then(|t| {
        let items = t.list().map_err(token_error)?;
        Ok(Json(json!({"kind": "BootstrapTokenList", "items": items})).into_response())
    });
    with_info(
        result.unwrap_or_else(IntoResponse::into_response),
        "list",
        RESOURCE,
    )
}

pub async fn delete(State(state): State<ApiState>, Path(id): Path<String>) -> Response {
    let result = tokens(&state).and_then(|t| {
        t.delete(&id)
            .map_err(token_error)
            .map(|()| Json(json!({"kind": "Status", "status": "Success"})).into_response())
    });
    with_info(
        result.unwrap_or_else(IntoResponse::into_response),
        "delete",
        RESOURCE,
    )
}
