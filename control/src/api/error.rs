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

use crate::{node_client::NodeError, registry, store::StoreError};

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

    /// 403 in Kubernetes' shape: the message says who may not do what, the details name
    /// the resource (as `kind`, as Kubernetes does) and the object.
    pub fn forbidden(attributes: &crate::authz::Attributes, user: &str) -> Self {
        let mut error = Self::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            attributes.forbidden_message(user),
        );
        if let crate::authz::Attributes::Resource { resource, name, .. } = attributes {
            error = error.with_details(Details {
                name: name.clone(),
                kind: resource.clone(),
                causes: Vec::new(),
            });
        }
        error
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

/// The one place a domain error becomes an HTTP status: code, reason and details.
impl From<registry::Error> for ApiError {
    fn from(error: registry::Error) -> Self {
        use registry::Error as E;
        let message = error.to_string();
        match error {
            E::NotFound { kind, name } => Self::not_found(&kind, &name),
            E::KeyNotFound { .. } => Self::new(StatusCode::NOT_FOUND, "NotFound", message),
            E::AlreadyExists(_) => Self::new(StatusCode::CONFLICT, "AlreadyExists", message),
            E::Conflict(_) => Self::new(StatusCode::CONFLICT, "Conflict", message),
            E::Invalid { kind, name, causes } => Self::invalid(&kind, &name, causes),
            E::BadRequest(_) => Self::bad_request(message),
            E::TooLarge(_) => Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                message,
            ),
            E::Expired(_) => Self::expired(message),
            E::Forbidden(_) => Self::new(StatusCode::FORBIDDEN, "Forbidden", message),
            E::StoreUnavailable { no_space: true, .. } => Self::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "InsufficientStorage",
                message,
            ),
            E::StoreUnavailable { .. } => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                message,
            ),
            E::TooManyRequests { cause, .. } => {
                Self::new(StatusCode::TOO_MANY_REQUESTS, "TooManyRequests", message).with_details(
                    Details {
                        causes: vec![Cause {
                            field: String::new(),
                            message: cause,
                            reason: "DisruptionBudget",
                        }],
                        ..Details::default()
                    },
                )
            }
            E::Internal(_) => Self::internal(message),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        Self::from(registry::Error::from(error))
    }
}

/// What a node's answer means to the REST client: 404 for what is not there, 400 for
/// what is not ready, 502 when the node failed.
impl From<NodeError> for ApiError {
    fn from(error: NodeError) -> Self {
        let message = error.to_string();
        match error {
            NodeError::Unavailable(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                message,
            ),
            NodeError::Unreachable(_) => Self::new(StatusCode::BAD_GATEWAY, "BadGateway", message),
            NodeError::NotFound(_) => Self::new(StatusCode::NOT_FOUND, "NotFound", message),
            NodeError::Refused(_) => Self::bad_request(message),
            NodeError::Timeout(_) => Self::new(StatusCode::GATEWAY_TIMEOUT, "Timeout", message),
            NodeError::Internal(_) => Self::internal(message),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn status_of(error: impl Into<ApiError>) -> (u16, &'static str, String) {
        let error = error.into();
        (error.code.as_u16(), error.reason, error.message)
    }

    #[test]
    fn each_domain_error_has_its_kubernetes_code_and_reason() {
        use registry::Error as E;
        let cases = [
            (E::not_found("Pod", "web"), 404, "NotFound"),
            (
                E::KeyNotFound {
                    key: "/core/pods/default/web".into(),
                },
                404,
                "NotFound",
            ),
            (E::AlreadyExists("x exists".into()), 409, "AlreadyExists"),
            (E::Conflict("stale".into()), 409, "Conflict"),
            (E::invalid("Pod", "web", Vec::new()), 422, "Invalid"),
            (E::bad_request("bad"), 400, "BadRequest"),
            (E::TooLarge("big".into()), 413, "RequestEntityTooLarge"),
            (E::Expired("gone".into()), 410, "Expired"),
            (E::Forbidden("no".into()), 403, "Forbidden"),
            (E::internal("broken"), 500, "InternalError"),
            (
                E::StoreUnavailable {
                    message: "full".into(),
                    no_space: true,
                },
                507,
                "InsufficientStorage",
            ),
            (
                E::StoreUnavailable {
                    message: "i/o".into(),
                    no_space: false,
                },
                503,
                "ServiceUnavailable",
            ),
        ];
        for (error, code, reason) in cases {
            let message = error.to_string();
            assert_eq!(status_of(error), (code, reason, message));
        }
    }

    #[test]
    fn not_found_and_invalid_carry_kind_name_and_causes() {
        let status = ApiError::from(registry::Error::not_found("Pod", "web")).status();
        assert_eq!(status["message"], "Pod \"web\" not found");
        assert_eq!(status["details"]["kind"], "Pod");
        assert_eq!(status["details"]["name"], "web");
        let causes = vec![FieldError {
            field: "spec.replicas".into(),
            reason: "must be greater than or equal to 0".into(),
        }];
        let status = ApiError::from(registry::Error::invalid("Deployment", "web", causes)).status();
        assert_eq!(status["code"], 422);
        assert_eq!(
            status["message"],
            "Deployment \"web\" is invalid: spec.replicas: must be greater than or equal to 0"
        );
        assert_eq!(status["details"]["causes"][0]["field"], "spec.replicas");
        assert_eq!(
            status["details"]["causes"][0]["reason"],
            "FieldValueInvalid"
        );
    }

    #[test]
    fn store_errors_keep_their_status() {
        let conflict = StoreError::Conflict {
            key: "/k".into(),
            expected: 3,
            found: Some(4),
        };
        let (code, reason, message) = status_of(conflict);
        assert_eq!((code, reason), (409, "Conflict"));
        assert!(
            message.ends_with("retry with its new resourceVersion"),
            "{message}"
        );
        let compacted = StoreError::Compacted {
            requested: 1,
            compacted: 5,
        };
        assert_eq!(status_of(compacted).1, "Expired");
        let exists = StoreError::AlreadyExists { key: "/k".into() };
        assert_eq!(status_of(exists).0, 409);
    }

    #[test]
    fn node_answers_map_to_what_the_user_acts_on() {
        use crate::node_client::from_node;
        let (code, _, _) = status_of(from_node("n1", &tonic::Status::not_found("no previous")));
        assert_eq!(code, 404);
        let waiting = from_node("n1", &tonic::Status::failed_precondition("not running"));
        assert_eq!(status_of(waiting).0, 400);
        let (code, _, message) = status_of(from_node(
            "n1",
            &tonic::Status::unavailable("connection refused"),
        ));
        assert_eq!(code, 502);
        assert!(message.contains("\"n1\""), "{message}");
    }
}
