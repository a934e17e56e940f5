//! `authorization.k8s.io/v1` SelfSubjectAccessReview and SelfSubjectRulesReview: a user
//! asks what they themselves may do (`kubectl auth can-i`, with `--list` for the rules).
//! Answered by the same authorizer every request goes through, never stored.

use axum::{
    Extension, Json,
    body::Body,
    extract::{Path, State},
    http::{HeaderMap, StatusCode, header},
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

/// kubectl sends its typed requests (`auth can-i`'s among them) as protobuf; it reads the
/// JSON answer.
const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";

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
    let protobuf = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(PROTOBUF));
    let result = async {
        let bytes = read_body(body, MAX_OBJECT_BYTES).await?;
        let malformed = || ApiError::bad_request(format!("request body: not a {}", review.kind()));
        match review {
            Review::Access => {
                let review = if protobuf {
                    proto::access_review(&bytes).ok_or_else(malformed)?
                } else {
                    serde_json::from_slice(&bytes)
                        .map_err(|e| ApiError::bad_request(format!("request body: {e}")))?
                };
                access(state, user, review).await
            }
            Review::Rules => {
                let review = if protobuf {
                    proto::rules_review(&bytes).ok_or_else(malformed)?
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

/// The two reviews in Kubernetes' protobuf encoding: the `k8s\0` magic, a
/// runtime.Unknown whose field 2 holds the object; the object's spec is its field 2.
mod proto {
    use berth_api::rbac::{
        NonResourceAttributes, ResourceAttributes, SelfSubjectAccessReview,
        SelfSubjectAccessReviewSpec, SelfSubjectRulesReview, SelfSubjectRulesReviewSpec,
    };

    /// The length-delimited and varint fields of one message, by number; None when the
    /// bytes are not a protobuf message.
    fn fields(mut bytes: &[u8]) -> Option<Vec<(u64, &[u8])>> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let key = varint(&mut bytes)?;
            match key & 7 {
                0 => {
                    varint(&mut bytes)?;
                }
                2 => {
                    let len = usize::try_from(varint(&mut bytes)?).ok()?;
                    let value = bytes.get(..len)?;
                    bytes = bytes.get(len..)?;
                    out.push((key >> 3, value));
                }
                _ => return None,
            }
        }
        Some(out)
    }

    fn varint(bytes: &mut &[u8]) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = bytes.split_first()?;
            *bytes = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }

    fn field(fields: &[(u64, &[u8])], number: u64) -> Option<Vec<u8>> {
        fields
            .iter()
            .find(|(n, _)| *n == number)
            .map(|(_, v)| v.to_vec())
    }

    fn text(fields: &[(u64, &[u8])], number: u64) -> String {
        field(fields, number)
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_default()
    }

    /// The object's spec fields.
    fn spec(bytes: &[u8]) -> Option<Vec<(u64, Vec<u8>)>> {
        let unknown = fields(bytes.strip_prefix(b"k8s\0")?)?;
        let raw = field(&unknown, 2)?;
        let object = fields(&raw)?;
        let spec = field(&object, 2).unwrap_or_default();
        Some(
            fields(&spec)?
                .into_iter()
                .map(|(n, v)| (n, v.to_vec()))
                .collect(),
        )
    }

    fn borrowed(owned: &[(u64, Vec<u8>)]) -> Vec<(u64, &[u8])> {
        owned.iter().map(|(n, v)| (*n, v.as_slice())).collect()
    }

    pub fn access_review(bytes: &[u8]) -> Option<SelfSubjectAccessReview> {
        let spec = spec(bytes)?;
        let spec = borrowed(&spec);
        let resource_attributes = match field(&spec, 1) {
            Some(raw) => {
                let f = fields(&raw)?;
                Some(ResourceAttributes {
                    namespace: text(&f, 1),
                    verb: text(&f, 2),
                    group: text(&f, 3),
                    version: text(&f, 4),
                    resource: text(&f, 5),
                    subresource: text(&f, 6),
                    name: text(&f, 7),
                })
            }
            None => None,
        };
        let non_resource_attributes = match field(&spec, 2) {
            Some(raw) => {
                let f = fields(&raw)?;
                Some(NonResourceAttributes {
                    path: text(&f, 1),
                    verb: text(&f, 2),
                })
            }
            None => None,
        };
        Some(SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes,
                non_resource_attributes,
            },
            ..SelfSubjectAccessReview::default()
        })
    }

    pub fn rules_review(bytes: &[u8]) -> Option<SelfSubjectRulesReview> {
        let spec = spec(bytes)?;
        Some(SelfSubjectRulesReview {
            spec: SelfSubjectRulesReviewSpec {
                namespace: text(&borrowed(&spec), 1),
            },
            ..SelfSubjectRulesReview::default()
        })
    }
}
