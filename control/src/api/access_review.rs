//! `authorization.k8s.io/v1` SelfSubjectAccessReview and SelfSubjectRulesReview: a user
//! asks what they themselves may do (`kubectl auth can-i`, with `--list` for the rules).
//! Answered by the same authorizer every request goes through, never stored.

use axum::{
    Extension, Json,
    body::Body,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use berth_api::{
    MAX_OBJECT_BYTES,
    rbac::{
        AUTHORIZATION_GROUP, NonResourceRule, ResourceRule, SelfSubjectAccessReview,
        SelfSubjectRulesReview, SubjectAccessReviewStatus, SubjectRulesReviewStatus,
    },
};

use super::{ApiState, error::ApiError, resources::read_body, with_info};
use crate::{authn::UserInfo, authz::Attributes};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Review {
    Access,
    Rules,
}

impl Review {
    fn kind(self) -> &'static str {
        match self {
            Self::Access => "SelfSubjectAccessReview",
            Self::Rules => "SelfSubjectRulesReview",
        }
    }

    fn plural(self) -> &'static str {
        match self {
            Self::Access => "selfsubjectaccessreviews",
            Self::Rules => "selfsubjectrulesreviews",
        }
    }
}

/// The reviews as discovery lists them (`kubectl api-resources`).
pub fn discovery() -> Vec<serde_json::Value> {
    [Review::Access, Review::Rules]
        .into_iter()
        .map(|review| {
            serde_json::json!({"name": review.plural(), "singularName": "", "namespaced": false,
                "kind": review.kind(), "verbs": ["create"]})
        })
        .collect()
}

/// `POST /apis/authorization.k8s.io/v1/<review>`.
pub async fn serve(
    State(state): State<ApiState>,
    Path(plural): Path<String>,
    user: Option<Extension<UserInfo>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(review) = [Review::Access, Review::Rules]
        .into_iter()
        .find(|review| review.plural() == plural)
    else {
        return ApiError::no_route(format!(
            "the server does not serve {plural} in {AUTHORIZATION_GROUP}/v1"
        ))
        .into_response();
    };
    let user = user.as_ref().map(|Extension(user)| user);
    let state = &state;
    let protobuf = super::protobuf::is_protobuf(&headers);
    let result = async {
        let bytes = read_body(body, MAX_OBJECT_BYTES).await?;
        let malformed = || ApiError::bad_request(format!("request body: not a {}", review.kind()));
        match review {
            Review::Access => {
                let review = if protobuf {
                    super::protobuf::access_review(&bytes).ok_or_else(malformed)?
                } else {
                    serde_json::from_slice(&bytes)
                        .map_err(|e| ApiError::bad_request(format!("request body: {e}")))?
                };
                access(state, user, review).await
            }
            Review::Rules => {
                let review = if protobuf {
                    super::protobuf::rules_review(&bytes).ok_or_else(malformed)?
                } else {
                    serde_json::from_slice(&bytes)
                        .map_err(|e| ApiError::bad_request(format!("request body: {e}")))?
                };
                rules(state, user, review).await
            }
        }
    };
    let response = result.await.unwrap_or_else(IntoResponse::into_response);
    with_info(response, "create", review.plural())
}

async fn access(
    state: &ApiState,
    user: Option<&UserInfo>,
    mut review: SelfSubjectAccessReview,
) -> Result<Response, ApiError> {
    let spec = &review.spec;
    let attributes = match (&spec.resource_attributes, &spec.non_resource_attributes) {
        (Some(r), None) => Attributes::Resource {
            verb: r.verb.clone(),
            group: r.group.clone(),
            resource: r.resource.clone(),
            subresource: r.subresource.clone(),
            namespace: r.namespace.clone(),
            name: r.name.clone(),
        },
        (None, Some(n)) => Attributes::NonResource {
            verb: n.verb.clone(),
            path: n.path.clone(),
        },
        _ => {
            return Err(ApiError::invalid(
                "SelfSubjectAccessReview",
                "",
                vec![berth_api::validation::FieldError {
                    field: "spec".to_owned(),
                    reason:
                        "exactly one of resourceAttributes and nonResourceAttributes must be set"
                            .to_owned(),
                }],
            ));
        }
    };
    let allowed = match user {
        Some(user) => state.authorizer.authorize(user, &attributes).await?,
        None => true,
    };
    review.api_version = format!("{AUTHORIZATION_GROUP}/v1");
    review.kind = "SelfSubjectAccessReview".to_owned();
    review.status = Some(SubjectAccessReviewStatus {
        allowed,
        ..SubjectAccessReviewStatus::default()
    });
    Ok((StatusCode::CREATED, Json(review)).into_response())
}

async fn rules(
    state: &ApiState,
    user: Option<&UserInfo>,
    mut review: SelfSubjectRulesReview,
) -> Result<Response, ApiError> {
    let rules = match user {
        Some(user) => state.authorizer.rules(user, &review.spec.namespace).await?,
        // Authentication off: anyone may do anything.
        None => crate::authz::full_authority(),
    };
    let mut status = SubjectRulesReviewStatus::default();
    for rule in rules {
        if rule.non_resource_urls.is_empty() {
            status.resource_rules.push(ResourceRule {
                verbs: rule.verbs,
                api_groups: rule.api_groups,
                resources: rule.resources,
                resource_names: rule.resource_names,
            });
        } else {
            status.non_resource_rules.push(NonResourceRule {
                verbs: rule.verbs,
                non_resource_urls: rule.non_resource_urls,
            });
        }
    }
    review.api_version = format!("{AUTHORIZATION_GROUP}/v1");
    review.kind = "SelfSubjectRulesReview".to_owned();
    review.status = Some(status);
    Ok((StatusCode::CREATED, Json(review)).into_response())
}
