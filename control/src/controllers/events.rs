//! Events expire (kube-apiserver's `--event-ttl`): an Event unchanged for the TTL since
//! it last happened is deleted, so a busy cluster does not keep one per pod ever made.

use berth_api::core::Event;

use super::{Change, Context, Outcome, Reconciler, Snapshot, Write};
use crate::objects::Kind as _;

pub struct EventExpiry;

/// When `event` last happened, Unix seconds: its last time, else its first, else when it
/// was stored.
fn last_seen(event: &Event) -> Option<u64> {
    [
        &event.last_timestamp,
        &event.first_timestamp,
        &event.metadata.creation_timestamp,
    ]
    .into_iter()
    .find_map(|text| berth_api::time::parse_rfc3339(text))
}

impl Reconciler for EventExpiry {
    type Object = Event;

    fn name(&self) -> &'static str {
        "event-expiry"
    }

    fn affected(&self, change: &Change, _snapshot: &Snapshot) -> Vec<(String, String)> {
        match change.as_kind::<Event>() {
            Some(_) if !change.deleted => vec![change.key()],
            _ => Vec::new(),
        }
    }

    fn reconcile(&self, event: &Event, _snapshot: &Snapshot, ctx: &Context) -> Outcome {
        let ttl = ctx.settings.event_ttl.as_secs();
        // An event without a time is judged from now: it expires a TTL after it is seen.
        let expires = last_seen(event).unwrap_or(ctx.now).saturating_add(ttl);
        if ctx.now >= expires {
            return Outcome::writes(vec![Write::Delete {
                rt: Event::resource_type(),
                namespace: event.metadata.namespace.clone(),
                name: event.metadata.name.clone(),
                force: false,
            }]);
        }
        Outcome {
            writes: Vec::new(),
            requeue_after: Some(std::time::Duration::from_secs(expires - ctx.now)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::controllers::{Settings, fixtures::typed};

    #[test]
    fn an_event_goes_a_ttl_after_it_last_happened() {
        let event: Event = typed(json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": "web.1", "namespace": "shop", "creationTimestamp": "1970-01-01T00:00:10Z"},
            "involvedObject": {"kind": "Pod", "name": "web"},
            "reason": "Scheduled", "message": "m",
            "firstTimestamp": "1970-01-01T00:00:10Z", "lastTimestamp": "1970-01-01T00:01:40Z",
        }));
        let snapshot = Snapshot::from_objects(vec![event.clone().into_object()], 1);
        let at = |now| Context {
            now,
            settings: Settings {
                event_ttl: Duration::from_secs(3600),
                ..Settings::default()
            },
        };
        // 100 s is when it last happened: kept until 3700 s, looked at again then.
        let kept = EventExpiry.reconcile(&event, &snapshot, &at(200));
        assert!(kept.writes.is_empty());
        assert_eq!(kept.requeue_after, Some(Duration::from_secs(3500)));
        let gone = EventExpiry.reconcile(&event, &snapshot, &at(3700));
        assert!(matches!(&gone.writes[..], [Write::Delete { name, .. }] if name == "web.1"));
    }
}
