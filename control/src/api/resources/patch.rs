//! PATCH, as Kubernetes serves it: JSON merge patch (RFC 7386), JSON patch (RFC 6902),
//! strategic merge patch (what `kubectl apply` and `kubectl patch` send by default) and
//! server-side apply (`kubectl apply --server-side`), chosen by the request's
//! Content-Type. The patch is applied to the stored object, the result decoded and
//! validated as a whole object, and written with the revision it was computed from: a
//! write in between makes the patch apply again to the newer object, unless the patch
//! itself named a `resourceVersion`. An apply to a missing object creates it.

use std::collections::HashMap;

use axum::{
    body::Body,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use berth_api::{
    ResourceType, Source,
    managed::{self, Conflict, Writer},
    patch::strategic_merge,
};
use serde_json::{Value, json};

use super::{
    checked_fields, dry_run, field_manager, is_true, ok_json, read_body, with_warnings, write_scale,
};
use crate::{
    api::{
        ApiState,
        auth::{authorize, check_escalation},
        error::{ApiError, Cause, Details},
    },
    authn::UserInfo,
    authz::Attributes,
    registry::{FieldManager, decode_error},
};

/// Tries of a patch whose writes keep losing to concurrent ones.
const MAX_ATTEMPTS: usize = 5;

/// The forms of patch a PATCH body may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PatchType {
    Merge,
    Json,
    Strategic,
    /// Server-side apply: the body is the manager's whole configuration.
    Apply,
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
        "application/apply-patch+yaml" => Ok(PatchType::Apply),
        other => Err(unsupported(&format!(
            "the patch type {other:?} is not supported: use application/merge-patch+json, application/json-patch+json, application/strategic-merge-patch+json or application/apply-patch+yaml"
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

/// `patch` applied to `object` (an apply is not a patch of this kind: see [`server_side_apply`]).
fn apply(object: &mut Value, patch: &Value, kind: PatchType) -> Result<(), ApiError> {
    match kind {
        PatchType::Apply => Err(ApiError::bad_request(
            "server-side apply (application/apply-patch+yaml) applies to objects only, not to subresources",
        )),
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
    let patch = if kind == PatchType::Apply {
        // YAML, of which JSON is a part.
        serde_norway::from_slice(&bytes).map_err(|e| {
            let line = e
                .location()
                .map(|l| format!(" (line {})", l.line()))
                .unwrap_or_default();
            ApiError::bad_request(format!("the applied configuration{line}: {e}"))
        })?
    } else {
        serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::bad_request(format!("patch body: {e}")))?
    };
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
    if kind == PatchType::Apply {
        return server_side_apply(state, rt, (namespace, name), user, (headers, query), patch)
            .await;
    }
    let manager = field_manager(query, headers, "")?;
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
            let planned = registry
                .dry_run(rt, decoded.object, manager.as_ref())
                .await?;
            return Ok(with_warnings(ok_json(planned), &warnings));
        }
        match registry
            .update_by(rt, decoded.object, manager.as_ref())
            .await
        {
            Ok(updated) => return Ok(with_warnings(ok_json(updated), &warnings)),
            Err(e) if e.is_conflict() && !pinned && attempt + 1 < MAX_ATTEMPTS => attempt += 1,
            Err(e) => return Err(ApiError::from(e)),
        }
    }
}

/// Server-side apply of `config` (the body of an `application/apply-patch+yaml` PATCH)
/// to object `name`: merged into the stored object (created if there is none) with the
/// ownership rules of [`managed::apply`], then validated and written like any write.
async fn server_side_apply(
    state: &ApiState,
    rt: &'static ResourceType,
    (namespace, name): (&str, &str),
    user: Option<&UserInfo>,
    (headers, query): (&HeaderMap, &HashMap<String, String>),
    mut config: Value,
) -> Result<Response, ApiError> {
    let manager = match query.get("fieldManager").filter(|m| !m.is_empty()) {
        Some(_) => field_manager(query, headers, "")?,
        None => None,
    }
    .ok_or_else(|| ApiError::bad_request("fieldManager is required for apply requests"))?;
    let force = is_true(query.get("force"));
    check_config(rt, (namespace, name), &mut config)?;
    let registry = &state.registry;
    let mut attempt = 0;
    loop {
        let live = match registry.get(rt, namespace, name).await {
            Ok(live) => Some(live),
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(e.into()),
        };
        if live.is_none() {
            // An apply that creates needs what a create needs.
            authorize(state, user, &create_attributes(rt, namespace, name)).await?;
        }
        let read_at = live
            .as_ref()
            .map(|l| l["metadata"]["resourceVersion"].clone());
        // Fields the server does not store are no one's: found in the merged object
        // (whatever the owners), then left out of the configuration that is applied.
        let (merged, _) = apply_config(rt, live.as_ref(), &config, &manager, true)?;
        let probe = rt
            .decode(Source::Value(merged.clone()))
            .map_err(|e| decode_error(rt, name, e))?;
        let warnings = checked_fields(query, &probe)?;
        let mut stored_config = config.clone();
        managed::without_paths(&mut stored_config, &merged, &probe.unknown_fields);
        let (mut object, entries) =
            apply_config(rt, live.as_ref(), &stored_config, &manager, force)?;
        object["metadata"]["managedFields"] = json!(entries);
        let pinned =
            live.is_some() && read_at.as_ref() != Some(&object["metadata"]["resourceVersion"]);
        let decoded = rt
            .decode(Source::Value(object))
            .map_err(|e| decode_error(rt, name, e))?;
        // A configuration naming a stale resourceVersion goes on to its 409.
        if let Some(live) = &live
            && !pinned
            && unchanged(live, &decoded.object)
        {
            return Ok(with_warnings(ok_json(live.clone()), &warnings));
        }
        let old = live.as_ref().filter(|_| rt.group == berth_api::rbac::GROUP);
        check_escalation(state, user, rt, &decoded.object, old).await?;
        let code = match live {
            Some(_) => StatusCode::OK,
            None => StatusCode::CREATED,
        };
        if dry_run(query)? {
            let planned = registry.dry_run(rt, decoded.object, None).await?;
            return Ok(with_warnings(
                (code, axum::Json(planned)).into_response(),
                &warnings,
            ));
        }
        let written = match &live {
            Some(_) => registry.update(rt, decoded.object).await,
            None => registry.create(rt, decoded.object).await,
        };
        let written = match written {
            Ok(written) => written,
            Err(e) if e.is_conflict() && !pinned && attempt + 1 < MAX_ATTEMPTS => {
                attempt += 1;
                continue;
            }
            Err(e) => return Err(ApiError::from(e)),
        };
        return Ok(with_warnings(
            (code, axum::Json(written)).into_response(),
            &warnings,
        ));
    }
}

/// Whether the apply that produced `object` leaves `live` as it is: the same object and
/// the same owners, the entries' times aside (a value the server normalises differs from
/// the configuration's until decoded, so the apply alone cannot tell).
fn unchanged(live: &Value, object: &Value) -> bool {
    if !managed::same_owners(&managed::entries_of(live), &managed::entries_of(object)) {
        return false;
    }
    let mut candidate = object.clone();
    candidate["metadata"]["managedFields"] = live["metadata"]["managedFields"].clone();
    candidate["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"].clone();
    candidate == *live
}

/// Checks an applied configuration names what the URL names (filling in what it leaves
/// out): its kind, name and namespace.
fn check_config(
    rt: &ResourceType,
    (namespace, name): (&str, &str),
    config: &mut Value,
) -> Result<(), ApiError> {
    let Value::Object(fields) = config else {
        return Err(ApiError::bad_request(
            "the applied configuration must be an object",
        ));
    };
    let api_version = rt.api_version();
    for (field, wanted) in [("apiVersion", api_version.as_str()), ("kind", rt.kind)] {
        match fields.get(field).and_then(Value::as_str) {
            None => {
                fields.insert(field.to_owned(), json!(wanted));
            }
            Some(given) if given == wanted => {}
            Some(given) => {
                return Err(ApiError::bad_request(format!(
                    "the applied configuration's {field} {given:?} is not the URL's {wanted:?}"
                )));
            }
        }
    }
    let meta = fields
        .entry("metadata")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("metadata must be an object"))?;
    let mut check = |field: &str, wanted: &str| match meta.get(field).and_then(Value::as_str) {
        None | Some("") => {
            if !wanted.is_empty() {
                meta.insert(field.to_owned(), json!(wanted));
            }
            Ok(())
        }
        Some(given) if given == wanted => Ok(()),
        Some(given) => Err(ApiError::bad_request(format!(
            "the applied configuration's metadata.{field} {given:?} does not match the URL's {wanted:?}"
        ))),
    };
    check("name", name)?;
    check("namespace", namespace)
}

/// The apply merged into `live`: the object and its entries, or 409 naming the
/// conflicts.
fn apply_config(
    rt: &ResourceType,
    live: Option<&Value>,
    config: &Value,
    manager: &FieldManager,
    force: bool,
) -> Result<(Value, Vec<managed::ManagedFieldsEntry>), ApiError> {
    let api_version = rt.api_version();
    let time = crate::util::rfc3339_now();
    let writer = Writer {
        manager: &manager.name,
        api_version: &api_version,
        subresource: "",
        time: &time,
    };
    let entries = live.map(managed::entries_of).unwrap_or_default();
    managed::apply(live, &entries, config, &writer, force).map_err(conflict)
}

/// Kubernetes' answer to an apply that conflicts: 409, reason Conflict, a cause
/// `FieldManagerConflict` per field.
fn conflict(conflicts: Vec<Conflict>) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "Conflict",
        managed::conflict_message(&conflicts),
    )
    .with_details(Details {
        causes: conflicts
            .into_iter()
            .map(|c| Cause {
                field: c.path,
                message: format!("conflict with {}", c.manager),
                reason: "FieldManagerConflict",
            })
            .collect(),
        ..Details::default()
    })
}

/// What authorizing a create of `name` asks.
fn create_attributes(rt: &ResourceType, namespace: &str, name: &str) -> Attributes {
    Attributes::Resource {
        verb: "create".to_owned(),
        group: rt.group.to_owned(),
        resource: rt.plural.to_owned(),
        subresource: String::new(),
        namespace: namespace.to_owned(),
        name: name.to_owned(),
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
    let read_at = current["metadata"]["resourceVersion"].clone();
    apply(&mut current, &patch, kind)?;
    let mut scale: berth_api::apps::Scale = serde_json::from_value(current)
        .map_err(|e| ApiError::bad_request(format!("the patched Scale: {e}")))?;
    // Only a resourceVersion the patch itself names is a precondition: the one read here
    // would turn a controller's concurrent status write into a 409 for the patch.
    if read_at == Value::String(scale.metadata.resource_version.clone()) {
        scale.metadata.resource_version.clear();
    }
    write_scale(state, rt, (namespace, name), scale, (headers, query)).await
}
