//! `POST .../serviceaccounts/NAME/token`: a token for a ServiceAccount (Kubernetes'
//! TokenRequest), what `berthctl create token` and the agents' token projection ask for.

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use berth_api::{
    accounts::{API_AUDIENCE, TokenRequest, TokenRequestStatus},
    kinds::{PODS, SERVICE_ACCOUNTS},
};
use serde_json::Value;

use super::{ApiState, error::ApiError};
use crate::{objects::str_at, satokens::ObjectClaim, util};

fn uid_of(object: &Value) -> String {
    str_at(object, "/metadata/uid").to_owned()
}

pub(super) async fn issue(
    state: &ApiState,
    namespace: &str,
    name: &str,
    mut request: TokenRequest,
) -> Result<Response, ApiError> {
    let signer = state
        .auth
        .as_ref()
        .and_then(|auth| auth.service_account_tokens())
        .ok_or_else(|| ApiError::bad_request("this server issues no ServiceAccount tokens"))?;
    let account = state
        .registry
        .get(&SERVICE_ACCOUNTS, namespace, name)
        .await?;
    let seconds = crate::satokens::lifetime(request.spec.expiration_seconds);
    let pod = match &request.spec.bound_object_ref {
        None => None,
        Some(bound) if bound.kind == "Pod" => {
            let pod = state.registry.get(&PODS, namespace, &bound.name).await?;
            let uid = uid_of(&pod);
            if !bound.uid.is_empty() && bound.uid != uid {
                return Err(ApiError::bad_request(format!(
                    "spec.boundObjectRef.uid: pod {namespace}/{} has uid {uid}, not {}",
                    bound.name, bound.uid
                )));
            }
            Some(ObjectClaim {
                name: bound.name.clone(),
                uid,
            })
        }
        Some(bound) => {
            return Err(ApiError::bad_request(format!(
                "spec.boundObjectRef.kind {:?}: a token can be bound to a Pod only",
                bound.kind
            )));
        }
    };
    if request.spec.audiences.is_empty() {
        request.spec.audiences = vec![API_AUDIENCE.to_owned()];
    }
    let now = util::unix_now();
    let account = ObjectClaim {
        name: name.to_owned(),
        uid: uid_of(&account),
    };
    let (token, expires) = signer.grant(
        namespace,
        account,
        pod,
        request.spec.audiences.clone(),
        now,
        seconds,
    );
    request.api_version = "authentication.k8s.io/v1".to_owned();
    request.kind = "TokenRequest".to_owned();
    request.metadata.name = name.to_owned();
    request.metadata.namespace = namespace.to_owned();
    request.metadata.creation_timestamp = util::rfc3339(now);
    request.spec.expiration_seconds = i64::try_from(seconds).ok();
    request.status = Some(TokenRequestStatus {
        token,
        expiration_timestamp: util::rfc3339(expires),
    });
    Ok((StatusCode::CREATED, Json(request)).into_response())
}
