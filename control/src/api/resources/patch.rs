//! PATCH, as Kubernetes serves it: JSON merge patch (RFC 7386), JSON patch (RFC 6902)
//! and strategic merge patch (what `kubectl apply` and `kubectl patch` send by default),
//! chosen by the request's Content-Type. The patch is applied to the stored object, the
//! result decoded and validated as a whole object, and written with the revision it was
//! computed from: a write in between makes the patch apply again to the newer object,
//! unless the patch itself named a `resourceVersion`.

use std::collections::HashMap;

use axum::{
    body::Body,
    http::{HeaderMap, StatusCode, header},
    response::Response,
};
use berth_api::{ResourceType, Source, patch::strategic_merge};
use serde_json::Value;

use super::{checked_fields, dry_run, ok_json, read_body, with_warnings, write_scale};
use crate::{
    api::{ApiState, auth::check_escalation, error::ApiError},
    authn::UserInfo,
    registry::decode_error,
};

/// Tries of a patch whose writes keep losing to concurrent ones.
const MAX_ATTEMPTS: usize = 5;

/// The forms of patch a PATCH body may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PatchType {
    Merge,
    Json,
    Strategic,
}

fn patch_type(headers: &HeaderMap) -> Result<PatchType, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let media = content_type.split(';').next().unwrap_or_default().trim();
    match media {
        "application/merge-patch+json" => Ok(PatchType::Merge),
        "application/json-patch+json" => Ok(PatchType::Json),
        "application/strategic-merge-patch+json" => Ok(PatchType::Strategic),
        "application/apply-patch+yaml" => Err(unsupported(
            "server-side apply (application/apply-patch+yaml) is not supported; use client-side `kubectl apply` or `berthctl apply`",
        )),
        other => Err(unsupported(&format!(
            "the patch type {other:?} is not supported: use application/merge-patch+json, application/json-patch+json or application/strategic-merge-patch+json"
        ))),
    }
}

fn unsupported(message: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "UnsupportedMediaType",
        message,
    )
}

/// `patch` applied to `object`.
fn apply(object: &mut Value, patch: &Value, kind: PatchType) -> Result<(), ApiError> {
    match kind {
        PatchType::Merge => {
            json_patch::merge(object, patch);
            Ok(())
        }
        PatchType::Json => {
            let operations: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| ApiError::bad_request(format!("JSON patch: {e}")))?;
            json_patch::patch(object, &operations).map_err(|e| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    format!("the JSON patch does not apply: {e}"),
                )
            })
        }
        PatchType::Strategic => strategic_merge(object, patch).map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                format!("the strategic merge patch does not apply: {e}"),
            )
        }),
    }
}

/// The patch a request carries and its form, from its Content-Type.
async fn read_patch(headers: &HeaderMap, body: Body) -> Result<(PatchType, Value), ApiError> {
    let kind = patch_type(headers)?;
    let bytes = read_body(body, berth_api::MAX_OBJECT_BYTES).await?;
    let patch = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("patch body: {e}")))?;
    Ok((kind, patch))
}

/// `PATCH` of object `name` of kind `rt`.
pub async fn object(
    state: &ApiState,
    rt: &'static ResourceType,
    (namespace, name): (&str, &str),
    user: Option<&UserInfo>,
    (headers, query): (&HeaderMap, &HashMap<String, String>),
    body: Body,
) -> Result<Response, ApiError> {
    let (kind, patch) = read_patch(headers, body).await?;
    let registry = &state.registry;
    let mut attempt = 0;
    loop {
        let mut object = registry.get(rt, namespace, name).await?;
        // Only an RBAC object's write is compared with what it replaces.
        let old = (rt.group == berth_api::rbac::GROUP).then(|| object.clone());
        let read_at = object["metadata"]["resourceVersion"].clone();
        apply(&mut object, &patch, kind)?;
        // A patch that names its own resourceVersion asks for that one precisely.
        let pinned = object["metadata"]["resourceVersion"] != read_at;
        if object["metadata"]["name"].as_str() != Some(name) {
            return Err(ApiError::bad_request(
                "a patch may not change metadata.name",
            ));
        }
        let decoded = rt
            .decode(Source::Value(object))
            .map_err(|e| decode_error(rt, name, e))?;
        let warnings = checked_fields(query, &decoded)?;
        check_escalation(state, user, rt, &decoded.object, old.as_ref()).await?;
        if dry_run(query)? {
            let planned = registry.dry_run(rt, decoded.object).await?;
            return Ok(with_warnings(ok_json(planned), &warnings));
        }
        match registry.update(rt, decoded.object).await {
            Ok(updated) => return Ok(with_warnings(ok_json(updated), &warnings)),
            Err(e) if e.is_conflict() && !pinned && attempt + 1 < MAX_ATTEMPTS => attempt += 1,
            Err(e) => return Err(ApiError::from(e)),
        }
    }
}

/// `PATCH` of a Deployment's or ReplicaSet's scale (what `kubectl scale` sends): the
/// patch applies to the Scale object, and its replicas are written.
pub async fn scale(
    state: &ApiState,
    rt: &'static ResourceType,
    namespace: &str,
    name: &str,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
    body: Body,
) -> Result<Response, ApiError> {
    let (kind, patch) = read_patch(headers, body).await?;
    let mut current = state.registry.get_scale(rt, namespace, name).await?;
    apply(&mut current, &patch, kind)?;
    let scale: berth_api::apps::Scale = serde_json::from_value(current)
        .map_err(|e| ApiError::bad_request(format!("the patched Scale: {e}")))?;
    write_scale(state, rt, namespace, name, scale, query).await
}
