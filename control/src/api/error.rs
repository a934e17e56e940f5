//! Every API failure as a Kubernetes-style `Status` object, so clients branch on
//! `reason` and `details.causes` instead of parsing messages.

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use berth_api::validation::FieldError;
use serde::Serialize;
use serde_json::{Value, json};

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub code: StatusCode,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Details>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Details {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<Cause>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Cause {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub field: String,
    pub message: String,
    pub reason: &'static str,
}

impl ApiError {
    pub fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    /// 410: the watch cannot go on from where it is; the client must list again.
    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(StatusCode::GONE, "Expired", message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    pub fn not_found(kind: &str, name: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{kind} {name:?} not found"),
        )
        .with_details(Details {
            name: name.to_owned(),
            kind: kind.to_owned(),
            causes: Vec::new(),
        })
    }

    pub fn no_route(what: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NotFound", what)
    }

    pub fn method_not_allowed(what: impl Into<String>) -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", what)
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "a valid bearer token is required (Authorization: Bearer <token>, see admin.conf)",
        )
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            format!("request body exceeds {limit} bytes"),
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", message)
    }

    pub fn invalid(kind: &str, name: &str, errors: Vec<FieldError>) -> Self {
        let summary: Vec<String> = errors.iter().map(ToString::to_string).collect();
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!("{kind} {name:?} is invalid: {}", summary.join("; ")),
        )
        .with_details(Details {
            name: name.to_owned(),
            kind: kind.to_owned(),
            causes: errors
                .into_iter()
                .map(|e| Cause {
                    field: e.field,
                    message: e.reason,
                    reason: "FieldValueInvalid",
                })
                .collect(),
        })
    }

    pub fn with_details(mut self, details: Details) -> Self {
        self.details = Some(details);
        self
    }

    /// The `Status` body, also sent as a watch `ERROR` event.
    pub fn status(&self) -> Value {
        let mut status = json!({
            "apiVersion": "v1",
            "kind": "Status",
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code.as_u16(),
        });
        if let Some(details) = &self.details {
            status["details"] = json!(details);
        }
        status
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        Self::from(&error)
    }
}

impl From<&StoreError> for ApiError {
    fn from(error: &StoreError) -> Self {
        let message = error.to_string();
        match error {
            StoreError::Conflict { .. } => Self::new(
                StatusCode::CONFLICT,
                "Conflict",
                format!("{message}; read the object again and retry with its new resourceVersion"),
            ),
            StoreError::AlreadyExists { .. } => {
                Self::new(StatusCode::CONFLICT, "AlreadyExists", message)
            }
            StoreError::NotFound { .. } => Self::new(StatusCode::NOT_FOUND, "NotFound", message),
            StoreError::Compacted { .. } => Self::expired(message),
            StoreError::Backend(_) | StoreError::Corrupt(_) => Self::internal(message),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.code.is_server_error() {
            tracing::error!(reason = self.reason, "{}", self.message);
        }
        (self.code, Json(self.status())).into_response()
    }
}
