//! Events the registry records about what it did (scaled, rolled back).

use berth_api::{Source, kinds::EVENTS};
use serde_json::{Value, json};

use super::{Error, Registry, name_of, namespace_of};
use crate::{objects::str_at, util};

impl Registry {
    /// Best effort: an event that fails to write must not fail the action it describes.
    pub async fn record_event(&self, involved: &Value, reason: &str, message: &str, type_: &str) {
        self.record_event_from(involved, reason, message, type_, ("apiserver", ""))
            .await;
    }

    /// [`Registry::record_event`] for an event another component saw (a node's agent):
    /// `source` is its (component, host).
    pub async fn record_event_from(
        &self,
        involved: &Value,
        reason: &str,
        message: &str,
        type_: &str,
        source: (&str, &str),
    ) {
        let namespace = match namespace_of(involved) {
            "" => berth_api::meta::DEFAULT_NAMESPACE,
            ns => ns,
        };
        let now = util::rfc3339_now();
        let event = json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": format!("{}.{}", name_of(involved), util::hex(&util::random_bytes::<8>())),
                "namespace": namespace,
            },
            "involvedObject": {
                "apiVersion": str_at(involved, "/apiVersion"),
                "kind": str_at(involved, "/kind"),
                "name": name_of(involved),
                "namespace": namespace_of(involved),
                "uid": str_at(involved, "/metadata/uid"),
            },
            "reason": reason,
            "message": message,
            "type": type_,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "source": {"component": source.0, "host": source.1},
        });
        let result = match EVENTS.decode(Source::Value(event)) {
            Ok(decoded) => self.create(&EVENTS, decoded.object).await.map(drop),
            Err(e) => Err(Error::internal(e.to_string())),
        };
        if let Err(e) = result {
            tracing::warn!(
                "could not record event {reason} for {}: {e}",
                name_of(involved)
            );
        }
    }
}
