//! The mesh control API: Kubernetes-shaped REST over HTTPS.
//!
//! Resource paths (`/api/v1/...`, `/apis/apps/v1/...`) are routed by one handler that
//! resolves the kind from berth-api's table, so adding a kind needs no routing change.

mod access_review;
pub mod auth;
mod discovery;
pub mod error;
mod metrics_api;
pub mod monitoring;
mod node_proxy;
mod openapi;
mod protobuf;
mod query;
mod resources;
mod streaming;
mod table;
mod token_request;
mod tokens;
pub mod watch;

use std::{sync::Arc, time::Instant};

use axum::{
    Json, Router,
    body::Body,
    extract::{Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{any, delete, get, post},
};
use serde_json::json;

use crate::{metrics::Metrics, registry::Registry, util};

use self::error::ApiError;

#[derive(Clone)]
pub struct ApiState {
    pub registry: Registry,
    pub metrics: Metrics,
    /// Who a request is from; None only when the operator explicitly turned
    /// authentication (and so authorization) off.
    pub auth: Option<Arc<crate::authn::Authenticator>>,
    /// What a user may do.
    pub authorizer: crate::authz::Rbac,
    /// The node bootstrap tokens; None serves no `/bootstrap-tokens`.
    pub tokens: Option<Arc<crate::tokens::BootstrapTokens>>,
    /// Calls nodes' agents for logs, exec and datapath views.
    pub nodes: Arc<crate::node_client::NodeClient>,
    /// Load figures from the agents, served under metrics.k8s.io.
    pub usage: crate::usage::Usage,
    /// Where each request is recorded; None: no audit log.
    pub audit: Option<Arc<crate::audit::AuditLog>>,
    /// Requests in flight and watches open per user.
    pub user_limits: crate::limits::UserLimiter,
    /// The settings the server started with (a snapshot reads the cluster's files from
    /// its data directory).
    pub config: Arc<crate::config::Config>,
}

/// How a request is labelled in metrics; handlers attach it to their response.
#[derive(Clone, Debug)]
pub struct RequestInfo {
    pub verb: &'static str,
    pub resource: String,
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/api", get(discovery::core_versions))
        .route("/api/v1", get(discovery::core_resources))
        .route("/apis", get(discovery::groups))
        .route("/api/{*path}", any(resources::handle))
        .route(
            "/apis/authorization.k8s.io/v1/{review}",
            post(access_review::serve),
        )
        .route("/apis/{*path}", any(apis))
        .route(
            &format!("{}/{{*path}}", metrics_api::PREFIX),
            any(metrics_api::serve),
        )
        .route("/apply", post(resources::apply))
        .route("/bootstrap-tokens", get(tokens::list).post(tokens::create))
        .route("/bootstrap-tokens/{id}", delete(tokens::delete))
        .route("/openapi.json", get(openapi::serve))
        .route("/openapi/v3", get(openapi::v3_index))
        .route("/openapi/v3/{*path}", get(openapi::v3_group_version))
        .route("/metrics", get(metrics))
        .route("/snapshot", get(snapshot))
        .route("/version", get(version))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate_and_authorize,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(middleware::from_fn_with_state(state.clone(), audit))
        .with_state(state)
}

/// Records the request in the audit log at the level its policy gives, once answered.
/// The body is kept for the log only when a `Request` level could want it.
async fn audit(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    use crate::audit::{Level, Record, body_may_be_logged};
    let Some(log) = state.audit.clone() else {
        return next.run(request).await;
    };
    let received = util::rfc3339_micros_now();
    let path = request.uri().path().to_owned();
    let uri = request.uri().to_string();
    let query: std::collections::HashMap<String, String> =
        form_urlencoded::parse(request.uri().query().unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let attributes = crate::authz::Attributes::of_request(request.method(), &path, &query);
    let user_agent = request
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let wants_body = matches!(
        *request.method(),
        axum::http::Method::POST | axum::http::Method::PUT | axum::http::Method::PATCH
    ) && body_may_be_logged(&path, &attributes);
    let (request, body) = if wants_body {
        let (parts, body) = request.into_parts();
        match axum::body::to_bytes(body, berth_api::MAX_OBJECT_BYTES * 4).await {
            Ok(bytes) => {
                let logged = serde_json::from_slice::<serde_json::Value>(&bytes).ok();
                (Request::from_parts(parts, Body::from(bytes)), logged)
            }
            Err(_) => {
                return ApiError::too_large(berth_api::MAX_OBJECT_BYTES * 4).into_response();
            }
        }
    } else {
        (request, None)
    };
    let response = next.run(request).await;
    let user = response.extensions().get::<crate::authn::UserInfo>();
    let level = log.policy.level(user, &attributes);
    if level != Level::None {
        log.record(
            level,
            &Record {
                id: util::uuid_v4(),
                uri: &uri,
                user_agent: user_agent.as_deref(),
                user,
                attributes: &attributes,
                code: response.status().as_u16(),
                received,
                completed: util::rfc3339_micros_now(),
                body,
            },
        );
    }
    response
}

/// `/apis/...`: a group's or group version's discovery document, or a resource path (the
/// router cannot tell them apart).
async fn apis(
    state: State<ApiState>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    user: Option<axum::Extension<crate::authn::UserInfo>>,
    headers: axum::http::HeaderMap,
    upgrade: Result<
        axum::extract::ws::WebSocketUpgrade,
        axum::extract::ws::rejection::WebSocketUpgradeRejection,
    >,
    body: Body,
) -> Response {
    match discovery::group_path(&method, uri.path()) {
        Some(document) => document,
        None => resources::handle(state, method, uri, user, headers, upgrade, body).await,
    }
}

pub(crate) fn with_info(mut response: Response, verb: &'static str, resource: &str) -> Response {
    response.extensions_mut().insert(RequestInfo {
        verb,
        resource: resource.to_owned(),
    });
    response
}

async fn observe(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let response = next.run(request).await;
    let (verb, resource) = match response.extensions().get::<RequestInfo>() {
        Some(info) => (info.verb, info.resource.clone()),
        None => (method_verb(&method), String::new()),
    };
    state
        .metrics
        .request_seconds
        .with_label_values(&[verb, resource.as_str(), response.status().as_str()])
        .observe(started.elapsed().as_secs_f64());
    response
}

fn method_verb(method: &axum::http::Method) -> &'static str {
    match *method {
        axum::http::Method::GET => "get",
        axum::http::Method::POST => "create",
        axum::http::Method::PUT => "update",
        axum::http::Method::DELETE => "delete",
        axum::http::Method::PATCH => "patch",
        _ => "other",
    }
}

async fn metrics(State(state): State<ApiState>) -> Response {
    state.metrics.observe_store(state.registry.store().as_ref());
    let response = match state.metrics.render() {
        Ok(text) => {
            let mut response = Body::from(text).into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        Err(e) => ApiError::internal(format!("rendering metrics: {e}")).into_response(),
    };
    with_info(response, "get", "metrics")
}

/// `berthctl snapshot save`: every object and the cluster's CA, tokens and keys
/// (cluster-admin only: it holds Secrets and the CA key in the clear).
async fn snapshot(State(state): State<ApiState>) -> Response {
    let store = Arc::clone(state.registry.store());
    let config = Arc::clone(&state.config);
    let taken =
        tokio::task::spawn_blocking(move || crate::snapshot::take(store.as_ref(), &config)).await;
    let response = match taken {
        Ok(Ok(snapshot)) => Json(snapshot).into_response(),
        Ok(Err(e)) => ApiError::internal(format!("taking the snapshot: {e}")).into_response(),
        Err(e) => ApiError::internal(format!("taking the snapshot: {e}")).into_response(),
    };
    with_info(response, "get", "snapshot")
}

async fn version() -> Response {
    with_info(
        Json(json!({"gitVersion": env!("CARGO_PKG_VERSION"), "platform": "berth"})).into_response(),
        "get",
        "version",
    )
}

/// Liveness: the process serves requests. A failing store does not make it so much as
/// restarting would help.
async fn healthz() -> Response {
    with_info((StatusCode::OK, "ok").into_response(), "get", "healthz")
}

/// Readiness, in Kubernetes' `/readyz` shape: `ok`, or one `[+]`/`[-]` line per check
/// (always when one fails, or with `?verbose`) and 503 when any fails.
async fn readyz(
    State(state): State<ApiState>,
    query: axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Response {
    let health = state.registry.store().health();
    let verbose = query.contains_key("verbose");
    let response = match health.fault {
        None if !verbose => (StatusCode::OK, "ok".to_owned()),
        None => (
            StatusCode::OK,
            "[+]ping ok\n[+]store ok\nreadyz check passed\n".to_owned(),
        ),
        Some(fault) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("[+]ping ok\n[-]store failed: {fault}\nreadyz check failed\n"),
        ),
    };
    with_info(response.into_response(), "get", "readyz")
}

async fn not_found(request: Request) -> Response {
    ApiError::no_route(format!(
        "no endpoint {} {}",
        request.method(),
        request.uri().path()
    ))
    .into_response()
}
