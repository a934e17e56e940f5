//! What list and watch requests share of their query string.

use std::collections::HashMap;

use berth_api::selector::{FieldSelector, Selector};

use super::error::ApiError;

/// `labelSelector` and `fieldSelector`, parsed; a bad one is the client's error.
pub(super) fn selectors(
    query: &HashMap<String, String>,
) -> Result<(Selector, FieldSelector), ApiError> {
    let labels = Selector::parse(query.get("labelSelector").map_or("", String::as_str))
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let fields = FieldSelector::parse(query.get("fieldSelector").map_or("", String::as_str))
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok((labels, fields))
}
