//! The kind table's entries by name, for code that addresses one kind (the store keys of
//! its objects, a watch on it) rather than every kind.

use crate::{
    ResourceType,
    accounts::ServiceAccount,
    apps::{ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet},
    autoscaling::HorizontalPodAutoscaler,
    batch::{CronJob, Job},
    configuration::{ConfigMap, Secret},
    core::{Endpoints, Event, Namespace, Node, Pod, Service},
    discovery::EndpointSlice,
    disruption::PodDisruptionBudget,
    networking::NetworkPolicy,
    policy::{LimitRange, ResourceQuota},
    rbac::{ClusterRole, ClusterRoleBinding, Role, RoleBinding},
    storage::{PersistentVolume, PersistentVolumeClaim},
};

pub static NAMESPACES: ResourceType = ResourceType::of::<Namespace>();
pub static PODS: ResourceType = ResourceType::of::<Pod>();
pub static SERVICES: ResourceType = ResourceType::of::<Service>();
pub static ENDPOINTS: ResourceType = ResourceType::of::<Endpoints>();
pub static ENDPOINT_SLICES: ResourceType = ResourceType::of::<EndpointSlice>();
pub static NODES: ResourceType = ResourceType::of::<Node>();
pub static EVENTS: ResourceType = ResourceType::of::<Event>();
pub static DEPLOYMENTS: ResourceType = ResourceType::of::<Deployment>();
pub static REPLICASETS: ResourceType = ResourceType::of::<ReplicaSet>();
pub static DAEMON_SETS: ResourceType = ResourceType::of::<DaemonSet>();
pub static STATEFULSETS: ResourceType = ResourceType::of::<StatefulSet>();
pub static CONTROLLER_REVISIONS: ResourceType = ResourceType::of::<ControllerRevision>();
pub static HPAS: ResourceType = ResourceType::of::<HorizontalPodAutoscaler>();
pub static PDBS: ResourceType = ResourceType::of::<PodDisruptionBudget>();
pub static NETWORK_POLICIES: ResourceType = ResourceType::of::<NetworkPolicy>();
pub static JOBS: ResourceType = ResourceType::of::<Job>();
pub static CRON_JOBS: ResourceType = ResourceType::of::<CronJob>();
pub static CONFIG_MAPS: ResourceType = ResourceType::of::<ConfigMap>();
pub static SECRETS: ResourceType = ResourceType::of::<Secret>();
pub static PERSISTENT_VOLUME_CLAIMS: ResourceType = ResourceType::of::<PersistentVolumeClaim>();
pub static PERSISTENT_VOLUMES: ResourceType = ResourceType::of::<PersistentVolume>();
pub static ROLES: ResourceType = ResourceType::of::<Role>();
pub static CLUSTER_ROLES: ResourceType = ResourceType::of::<ClusterRole>();
pub static ROLE_BINDINGS: ResourceType = ResourceType::of::<RoleBinding>();
pub static CLUSTER_ROLE_BINDINGS: ResourceType = ResourceType::of::<ClusterRoleBinding>();
pub static LIMIT_RANGES: ResourceType = ResourceType::of::<LimitRange>();
pub static RESOURCE_QUOTAS: ResourceType = ResourceType::of::<ResourceQuota>();
pub static SERVICE_ACCOUNTS: ResourceType = ResourceType::of::<ServiceAccount>();
