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

/// `limit` and `continue`: which part of a list to answer (Kubernetes' chunking).
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Page {
    /// At most this many items; None: all.
    pub limit: Option<usize>,
    /// Only items whose store key sorts after this one (from the previous page's token).
    pub after: Option<String>,
}

/// A continue token: the last key answered, so the next page starts after it. Opaque to
/// clients (base64 of JSON, as Kubernetes' are).
#[derive(serde::Serialize, serde::Deserialize)]
struct Continue {
    start: String,
}

impl Page {
    pub(super) fn parse(query: &HashMap<String, String>) -> Result<Self, ApiError> {
        use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
        let limit = match query.get("limit").map(String::as_str) {
            None | Some("" | "0") => None,
            Some(text) => Some(text.parse::<usize>().map_err(|_| {
                ApiError::bad_request(format!("limit: {text:?} is not a non-negative number"))
            })?),
        };
        let after = match query.get("continue").map(String::as_str) {
            None | Some("") => None,
            Some(token) => {
                let decoded: Continue = URL_SAFE_NO_PAD
                    .decode(token)
                    .ok()
                    .and_then(|json| serde_json::from_slice(&json).ok())
                    .ok_or_else(|| {
                        ApiError::bad_request(
                            "continue: not a token this server gave (list again without it)",
                        )
                    })?;
                Some(decoded.start)
            }
        };
        Ok(Page { limit, after })
    }

    /// The token of a page that ended at `last`.
    pub(super) fn token(last: &str) -> String {
        use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
        let json = serde_json::to_vec(&Continue {
            start: last.to_owned(),
        })
        .unwrap_or_default();
        URL_SAFE_NO_PAD.encode(json)
    }

    /// This page of `items` (each with its store key, in key order): the items, and
    /// the continue token and count of what remains when something does.
    pub(super) fn cut<T>(&self, items: Vec<(String, T)>) -> (Vec<T>, Option<(String, usize)>) {
        let mut rest = items
            .into_iter()
            .skip_while(|(key, _)| self.after.as_ref().is_some_and(|after| key <= after))
            .peekable();
        let mut page = Vec::new();
        let mut last = None;
        while self.limit.is_none_or(|limit| page.len() < limit) {
            let Some((key, item)) = rest.next() else {
                break;
            };
            page.push(item);
            last = Some(key);
        }
        let remaining = rest.count();
        let next = match last {
            Some(last) if remaining > 0 => Some((Page::token(&last), remaining)),
            _ => None,
        };
        (page, next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn pages_follow_each_other_to_the_end() {
        let items: Vec<(String, u32)> = (0..5).map(|i| (format!("k{i}"), i)).collect();
        let first = Page::parse(&query(&[("limit", "2")])).expect("valid");
        let (page, next) = first.cut(items.clone());
        assert_eq!(page, [0, 1]);
        let (token, remaining) = next.expect("more");
        assert_eq!(remaining, 3);
        let second = Page::parse(&query(&[("limit", "2"), ("continue", &token)])).expect("valid");
        let (page, next) = second.cut(items.clone());
        assert_eq!(page, [2, 3]);
        let third = Page::parse(&query(&[
            ("limit", "2"),
            ("continue", &next.expect("more").0),
        ]))
        .expect("valid");
        assert_eq!(third.cut(items.clone()), (vec![4], None));
        assert_eq!(Page::default().cut(items).0.len(), 5);
        assert!(Page::parse(&query(&[("limit", "-1")])).is_err());
        assert!(Page::parse(&query(&[("continue", "garbage!")])).is_err());
    }
}
