use std::collections::BTreeSet;

use berth_api::core::Service;

use super::Strategy;
use crate::{
    registry::{
        Batch, Registry, Result,
        allocation::{claim_ops, claims},
    },
    store::Op,
};

/// A Service holds cluster-wide unique values (its clusterIP, nodePorts and LoadBalancer
/// addresses) as allocation keys written with it.
pub(in crate::registry) struct ServiceStrategy;

impl Strategy for ServiceStrategy {
    type Object = Service;

    fn prepare_for_create(&self, service: &mut Service) {
        service.status = None;
    }

    fn prepare_for_update(&self, service: &mut Service, old: &Service) {
        service.status = old.status.clone();
    }

    fn spec_changed(&self, service: &Service, old: &Service) -> bool {
        service.spec != old.spec
    }

    async fn complete(
        &self,
        registry: &Registry,
        old: Option<&Service>,
        service: &mut Service,
        batch: &mut Batch,
    ) -> Result<Vec<Op>> {
        if old.is_none() {
            super::admit_count(registry, "services", service, batch).await?;
        }
        registry
            .complete_service(old, service, &mut batch.allocations)
            .await?;
        let held = old.map(claims).unwrap_or_default();
        Ok(claim_ops(&held, &claims(service), service))
    }

    /// A status write can take or release LoadBalancer addresses.
    fn status_ops(&self, old: &Service, service: &Service) -> Vec<Op> {
        claim_ops(&claims(old), &claims(service), service)
    }

    async fn delete_ops(&self, _registry: &Registry, service: &Service) -> Result<Vec<Op>> {
        Ok(claim_ops(&claims(service), &BTreeSet::new(), service))
    }
}

#[cfg(test)]
mod tests {
    use berth_api::core::{LoadBalancerIngress, ServiceStatus};

    use super::*;

    fn with_address(ip: &str) -> Service {
        Service {
            status: Some(ServiceStatus {
                load_balancer: berth_api::core::LoadBalancerStatus {
                    ingress: vec![LoadBalancerIngress { ip: ip.into() }],
                },
                ..ServiceStatus::default()
            }),
            ..Service::default()
        }
    }

    #[test]
    fn a_status_write_takes_the_new_load_balancer_address_and_releases_the_old() {
        let ops = ServiceStrategy
            .status_ops(&with_address("198.18.128.1"), &with_address("198.18.128.2"));
        let taken: Vec<_> = ops
            .iter()
            .filter_map(|op| match op {
                Op::Put { key, .. } => Some(key.as_str()),
                _ => None,
            })
            .collect();
        let released: Vec<_> = ops
            .iter()
            .filter_map(|op| match op {
                Op::Delete { key, .. } => Some(key.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(
            taken,
            [crate::registry::allocation::load_balancer_ip_key(
                "198.18.128.2"
            )]
        );
        assert_eq!(
            released,
            [crate::registry::allocation::load_balancer_ip_key(
                "198.18.128.1"
            )]
        );
        assert!(
            ServiceStrategy
                .status_ops(&Service::default(), &Service::default())
                .is_empty()
        );
    }
}
