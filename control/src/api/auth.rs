//! Authentication then authorization, once per request, before any handler runs (as
//! Kubernetes' WithAuthentication and WithAuthorization filters): a bearer token or the
//! client certificate the TLS handshake verified names the user; RBAC decides on the
//! request's attributes. On unless the operator turns authentication off explicitly.
//!
//! `/apply` carries objects of many kinds, so it is authorized per object by its handler
//! with [`authorize`]; every other path here.

use std::collections::HashMap;

use axum::{
    extract::{Request, State},
    http::header,
    middleware::Next,
    response::{IntoResponse, Response},
};

use super::{ApiState, error::ApiError};
use crate::{
    authn::UserInfo,
    authz::Attributes,
    limits::{Refused, RequestClass},
};

/// Paths a load balancer or supervisor probes without credentials.
const UNAUTHENTICATED: &[&str] = &["/healthz", "/readyz"];

/// Authorized per object by its handler.
const APPLY: &str = "/apply";

/// The user of the connection's verified client certificate, if it presented one; put
/// on each request by the HTTPS listener.
#[derive(Clone, Debug, Default)]
pub struct PeerUser(pub Option<UserInfo>);

pub async fn authenticate_and_authorize(
    State(state): State<ApiState>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(auth) = &state.auth else {
        return next.run(request).await;
    };
    let path = request.uri().path().to_owned();
    if UNAUTHENTICATED.contains(&path.as_str()) {
        return next.run(request).await;
    }
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    // A token presented decides, as in Kubernetes: a wrong one is refused even over a
    // connection with a certificate.
    let user = match token {
        Some(token) if crate::satokens::looks_like_jwt(token) => {
            service_account_user(&state, auth, token).await
        }
        Some(token) => auth.token(token),
        None => request
            .extensions()
            .get::<PeerUser>()
            .and_then(|peer| peer.0.clone()),
    };
    let Some(user) = user else {
        let mut response = ApiError::unauthorized().into_response();
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return response;
    };
    let user = match impersonated(&state, user.clone(), request.headers()).await {
        Ok(user) => user,
        Err(refusal) => return with_user(refusal.into_response(), user),
    };
    let query: HashMap<String, String> =
        form_urlencoded::parse(request.uri().query().unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let attributes = Attributes::of_request(request.method(), &path, &query);
    if path != APPLY
        && let Err(refusal) = authorize(&state, Some(&user), &attributes).await
    {
        return with_user(refusal.into_response(), user);
    }
    // After authentication, as Kubernetes' priority and fairness: the limits are per
    // user, and a request refused by RBAC holds nothing.
    let permit = match state
        .user_limits
        .acquire(&user.name, RequestClass::of(&attributes, &query))
    {
        Ok(permit) => permit,
        Err(refused) => return with_user(too_many_requests(refused, &user.name), user),
    };
    request.extensions_mut().insert(user.clone());
    let response = next.run(request).await;
    // Until the body is sent (a watch's: until the stream ends), not only the headers.
    with_user(crate::limits::hold_until_sent(response, permit), user)
}

/// 429 with Retry-After, as kube-apiserver answers a request its priority and fairness
/// rejects.
fn too_many_requests(refused: Refused, user: &str) -> Response {
    let mut response = ApiError::new(
        axum::http::StatusCode::TOO_MANY_REQUESTS,
        "TooManyRequests",
        refused.message(user),
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    response
}

/// The ServiceAccount a token stands for, if it is one of ours, in its lifetime, for the
/// API server, and the ServiceAccount (and the pod it is bound to) still exist as they
/// were when it was issued.
async fn service_account_user(
    state: &ApiState,
    auth: &crate::authn::Authenticator,
    token: &str,
) -> Option<UserInfo> {
    use berth_api::{
        accounts::{API_AUDIENCE, user_name},
        kinds::{PODS, SERVICE_ACCOUNTS},
    };

    use crate::objects::str_at;
    let claims = auth
        .service_account_tokens()?
        .verify(token, crate::util::unix_now(), API_AUDIENCE)
        .ok()?;
    let k = &claims.kubernetes;
    let account = state
        .registry
        .get(&SERVICE_ACCOUNTS, &k.namespace, &k.serviceaccount.name)
        .await
        .ok()?;
    if str_at(&account, "/metadata/uid") != k.serviceaccount.uid {
        return None;
    }
    if let Some(pod) = &k.pod {
        let bound = state
            .registry
            .get(&PODS, &k.namespace, &pod.name)
            .await
            .ok()?;
        if str_at(&bound, "/metadata/uid") != pod.uid {
            return None;
        }
    }
    Some(UserInfo::new(
        &user_name(&k.namespace, &k.serviceaccount.name),
        [
            "system:serviceaccounts".to_owned(),
            format!("system:serviceaccounts:{}", k.namespace),
        ],
    ))
}

/// The response, marked with who asked: what the audit log records.
fn with_user(mut response: Response, user: UserInfo) -> Response {
    response.extensions_mut().insert(user);
    response
}

/// The user a request acts as: `user`, or the one its `Impersonate-User` (and
/// `Impersonate-Group`) headers name if `user` may `impersonate` that user and each of
/// those groups, as kubectl's `--as` and `--as-group` ask.
async fn impersonated(
    state: &ApiState,
    user: UserInfo,
    headers: &header::HeaderMap,
) -> Result<UserInfo, ApiError> {
    let values = |name: &str| -> Result<Vec<String>, ApiError> {
        headers
            .get_all(name)
            .iter()
            .map(|v| {
                v.to_str()
                    .map(str::to_owned)
                    .map_err(|_| ApiError::bad_request(format!("{name}: not text")))
            })
            .collect()
    };
    let users = values("Impersonate-User")?;
    let groups = values("Impersonate-Group")?;
    let name = match users.as_slice() {
        [] if groups.is_empty() => return Ok(user),
        [] => {
            return Err(ApiError::bad_request(
                "Impersonate-Group needs Impersonate-User",
            ));
        }
        [name] => name.clone(),
        _ => return Err(ApiError::bad_request("one Impersonate-User at most")),
    };
    let may = |resource: &str, name: &str| Attributes::Resource {
        verb: "impersonate".to_owned(),
        group: String::new(),
        resource: resource.to_owned(),
        subresource: String::new(),
        namespace: String::new(),
        name: name.to_owned(),
    };
    authorize(state, Some(&user), &may("users", &name)).await?;
    for group in &groups {
        authorize(state, Some(&user), &may("groups", group)).await?;
    }
    Ok(UserInfo::new(&name, groups))
}

/// Whether `user` may do what `attributes` say: Ok, or the 403 (or the error reading the
/// roles) to answer with. With authentication off there is no user and everything is
/// allowed.
pub async fn authorize(
    state: &ApiState,
    user: Option<&UserInfo>,
    attributes: &Attributes,
) -> Result<(), ApiError> {
    let Some(user) = user else {
        return Ok(());
    };
    if state.authorizer.authorize(user, attributes).await? {
        Ok(())
    } else {
        Err(ApiError::forbidden(attributes, &user.name))
    }
}

/// Refuses writing `object` (`old`: what it replaces) if it is an RBAC object granting
/// more than `user` holds (see `Rbac::escalation`): 403 naming the rules not held.
pub async fn check_escalation(
    state: &ApiState,
    user: Option<&UserInfo>,
    rt: &berth_api::ResourceType,
    object: &serde_json::Value,
    old: Option<&serde_json::Value>,
) -> Result<(), ApiError> {
    let Some(user) = user else {
        return Ok(());
    };
    match state.authorizer.escalation(user, rt, object, old).await? {
        None => Ok(()),
        Some(why) => {
            let name = crate::objects::name_of(object);
            Err(ApiError::new(
                axum::http::StatusCode::FORBIDDEN,
                "Forbidden",
                format!("{}.{} {name:?} is forbidden: {why}", rt.plural, rt.group),
            )
            .with_details(super::error::Details {
                name: name.to_owned(),
                kind: rt.plural.to_owned(),
                causes: Vec::new(),
            }))
        }
    }
}

/// The stored object `check_escalation` compares a write of an RBAC kind with; None for
/// other kinds (nothing to read) and for an object not stored yet.
pub async fn stored_rbac_object(
    state: &ApiState,
    rt: &'static berth_api::ResourceType,
    namespace: &str,
    name: &str,
) -> Result<Option<serde_json::Value>, ApiError> {
    if rt.group != berth_api::rbac::GROUP {
        return Ok(None);
    }
    match state.registry.get(rt, namespace, name).await {
        Ok(object) => Ok(Some(object)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e.into()),
    }
}
