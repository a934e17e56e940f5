//! The typed kinds behind one runtime descriptor ([`ResourceType`]), so the API server,
//! the manifest parser and the OpenAPI document share one table of kinds.

use schemars::{JsonSchema, SchemaGenerator};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;

use crate::{
    accounts::ServiceAccount,
    apps::{ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet},
    autoscaling::HorizontalPodAutoscaler,
    batch::{CronJob, Job},
    configuration::{ConfigMap, Secret},
    core::{Endpoints, Event, Namespace, Node, Pod, Service},
    discovery::EndpointSlice,
    disruption::PodDisruptionBudget,
    meta::{DEFAULT_NAMESPACE, ObjectMeta},
    networking::NetworkPolicy,
    policy::{LimitRange, ResourceQuota},
    rbac::{ClusterRole, ClusterRoleBinding, Role, RoleBinding},
    storage::{PersistentVolume, PersistentVolumeClaim},
    validation::{FieldError, FieldPath, Validator},
};

/// Largest object the store accepts once encoded (etcd's default request limit is 1.5 MiB).
pub const MAX_OBJECT_BYTES: usize = 1024 * 1024;

pub trait Resource:
    Serialize + DeserializeOwned + JsonSchema + Clone + Send + Sync + 'static
{
    /// Empty for the core group.
    const GROUP: &'static str;
    const VERSION: &'static str = "v1";
    const KIND: &'static str;
    const PLURAL: &'static str;
    const NAMESPACED: bool = true;
    /// Whether `status` is owned by controllers through the `/status` subresource, so
    /// writes to the object itself keep the stored status.
    const HAS_STATUS: bool = false;
    /// Abbreviations kubectl users type (`po`, `deploy`), as discovery lists them.
    const SHORT_NAMES: &'static [&'static str] = &[];
    /// Groups of kinds a name like `all` stands for.
    const CATEGORIES: &'static [&'static str] = &[];
    /// Names are path segments (RBAC's `system:discovery`) rather than DNS subdomains.
    const PATH_SEGMENT_NAMES: bool = false;

    fn meta(&self) -> &ObjectMeta;
    fn meta_mut(&mut self) -> &mut ObjectMeta;
    fn type_meta_mut(&mut self) -> (&mut String, &mut String);
    /// Checks beyond metadata; paths start at the object root.
    fn validate_body(&self, v: &mut Validator);

    fn api_version() -> String {
        api_version(Self::GROUP, Self::VERSION)
    }
}

fn api_version(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    }
}

macro_rules! resource {
    ($ty:ty, group = $group:expr, plural = $plural:expr, namespaced = $ns:expr, status = $status:expr,
     $(short_names = [$($short:expr),*], )? $(categories = [$($category:expr),*], )?
     $(path_segment_names = $segments:expr, )?
     |$this:ident, $v:ident| $body:block) => {
        resource!(
            $ty,
            group = $group,
            version = "v1",
            plural = $plural,
            namespaced = $ns,
            status = $status,
            $(short_names = [$($short),*], )?
            $(categories = [$($category),*], )?
            $(path_segment_names = $segments, )?
            |$this, $v| $body
        );
    };
    ($ty:ty, group = $group:expr, version = $version:expr, plural = $plural:expr, namespaced = $ns:expr,
     status = $status:expr, $(short_names = [$($short:expr),*], )? $(categories = [$($category:expr),*], )?
     $(path_segment_names = $segments:expr, )?
     |$this:ident, $v:ident| $body:block) => {
        impl Resource for $ty {
            const GROUP: &'static str = $group;
            const VERSION: &'static str = $version;
            const KIND: &'static str = stringify!($ty);
            const PLURAL: &'static str = $plural;
            const NAMESPACED: bool = $ns;
            const HAS_STATUS: bool = $status;
            $(const SHORT_NAMES: &'static [&'static str] = &[$($short),*];)?
            $(const CATEGORIES: &'static [&'static str] = &[$($category),*];)?
            $(const PATH_SEGMENT_NAMES: bool = $segments;)?

            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }

            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }

            fn type_meta_mut(&mut self) -> (&mut String, &mut String) {
                (&mut self.api_version, &mut self.kind)
            }

            fn validate_body(&self, $v: &mut Validator) {
                let $this = self;
                $body
            }
        }
    };
}

resource!(
    Pod,
    group = "",
    plural = "pods",
    namespaced = true,
    status = true,
    short_names = ["po"],
    categories = ["all"],
    |this, v| {
        this.spec.validate(v, &FieldPath::root("spec"));
    }
);
resource!(
    Service,
    group = "",
    plural = "services",
    namespaced = true,
    status = true,
    short_names = ["svc"],
    categories = ["all"],
    |this, v| {
        this.validate(v);
    }
);
resource!(
    Namespace,
    group = "",
    plural = "namespaces",
    namespaced = false,
    status = true,
    short_names = ["ns"],
    |this, v| {
        this.validate(v);
    }
);
resource!(
    Endpoints,
    group = "",
    plural = "endpoints",
    namespaced = true,
    status = false,
    short_names = ["ep"],
    |this, v| {
        this.validate_subsets(v, &FieldPath::root("subsets"));
    }
);
resource!(
    Node,
    group = "",
    plural = "nodes",
    namespaced = false,
    status = true,
    short_names = ["no"],
    |this, v| {
        this.spec.validate(v, &FieldPath::root("spec"));
    }
);
resource!(
    Event,
    group = "",
    plural = "events",
    namespaced = true,
    status = false,
    short_names = ["ev"],
    |this, v| {
        this.validate_body(v);
    }
);
resource!(
    Deployment,
    group = "apps",
    plural = "deployments",
    namespaced = true,
    status = true,
    short_names = ["deploy"],
    categories = ["all"],
    |this, v| {
        this.spec.validate(v, &FieldPath::root("spec"));
    }
);
resource!(
    DaemonSet,
    group = "apps",
    plural = "daemonsets",
    namespaced = true,
    status = true,
    short_names = ["ds"],
    categories = ["all"],
    |this, v| {
        this.spec.validate(v, &FieldPath::root("spec"));
    }
);
resource!(
    StatefulSet,
    group = "apps",
    plural = "statefulsets",
    namespaced = true,
    status = true,
    short_names = ["sts"],
    categories = ["all"],
    |this, v| {
        this.spec.validate(v, &FieldPath::root("spec"));
    }
);
resource!(
    ReplicaSet,
    group = "apps",
    plural = "replicasets",
    namespaced = true,
    status = true,
    short_names = ["rs"],
    categories = ["all"],
    |this, v| {
        this.spec.validate(v, &FieldPath::root("spec"));
    }
);
resource!(
    ControllerRevision,
    group = "apps",
    plural = "controllerrevisions",
    namespaced = true,
    status = false,
    |this, v| {
        this.data
            .spec
            .validate(v, &FieldPath::root("data").child("spec"));
    }
);
resource!(
    ConfigMap,
    group = "",
    plural = "configmaps",
    namespaced = true,
    status = false,
    short_names = ["cm"],
    |this, v| {
        this.validate(v);
    }
);
resource!(
    Secret,
    group = "",
    plural = "secrets",
    namespaced = true,
    status = false,
    |this, v| {
        this.validate(v);
    }
);

resource!(
    ServiceAccount,
    group = "",
    plural = "serviceaccounts",
    namespaced = true,
    status = false,
    short_names = ["sa"],
    |this, v| {
        this.validate(v);
    }
);
resource!(
    ResourceQuota,
    group = "",
    plural = "resourcequotas",
    namespaced = true,
    status = true,
    short_names = ["quota"],
    |this, v| {
        this.validate(v);
    }
);
resource!(
    LimitRange,
    group = "",
    plural = "limitranges",
    namespaced = true,
    status = false,
    short_names = ["limits"],
    |this, v| {
        this.validate(v);
    }
);
resource!(
    PersistentVolumeClaim,
    group = "",
    plural = "persistentvolumeclaims",
    namespaced = true,
    status = true,
    short_names = ["pvc"],
    |this, v| {
        this.validate(v);
    }
);
resource!(
    PersistentVolume,
    group = "",
    plural = "persistentvolumes",
    namespaced = false,
    status = true,
    short_names = ["pv"],
    |this, v| {
        this.validate(v);
    }
);

resource!(
    HorizontalPodAutoscaler,
    group = "autoscaling",
    version = "v2",
    plural = "horizontalpodautoscalers",
    namespaced = true,
    status = true,
    short_names = ["hpa"],
    categories = ["all"],
    |this, v| {
        this.spec.validate(v, &FieldPath::root("spec"));
    }
);

resource!(
    PodDisruptionBudget,
    group = crate::disruption::GROUP,
    plural = "poddisruptionbudgets",
    namespaced = true,
    status = true,
    short_names = ["pdb"],
    |this, v| {
        this.validate(v);
    }
);

resource!(
    NetworkPolicy,
    group = crate::networking::GROUP,
    plural = "networkpolicies",
    namespaced = true,
    status = false,
    short_names = ["netpol"],
    |this, v| {
        this.validate(v);
    }
);

resource!(
    Job,
    group = "batch",
    plural = "jobs",
    namespaced = true,
    status = true,
    categories = ["all"],
    |this, v| {
        this.spec.validate(v, &FieldPath::root("spec"));
    }
);
resource!(
    CronJob,
    group = "batch",
    plural = "cronjobs",
    namespaced = true,
    status = true,
    short_names = ["cj"],
    categories = ["all"],
    |this, v| {
        this.validate(v);
    }
);

resource!(
    Role,
    group = crate::rbac::GROUP,
    plural = "roles",
    namespaced = true,
    status = false,
    path_segment_names = true,
    |this, v| {
        this.validate(v);
    }
);
resource!(
    ClusterRole,
    group = crate::rbac::GROUP,
    plural = "clusterroles",
    namespaced = false,
    status = false,
    path_segment_names = true,
    |this, v| {
        this.validate(v);
    }
);
resource!(
    EndpointSlice,
    group = crate::discovery::GROUP,
    plural = "endpointslices",
    namespaced = true,
    status = false,
    |this, v| {
        this.validate(v);
    }
);
resource!(
    RoleBinding,
    group = crate::rbac::GROUP,
    plural = "rolebindings",
    namespaced = true,
    status = false,
    path_segment_names = true,
    |this, v| {
        this.validate(v);
    }
);
resource!(
    ClusterRoleBinding,
    group = crate::rbac::GROUP,
    plural = "clusterrolebindings",
    namespaced = false,
    status = false,
    path_segment_names = true,
    |this, v| {
        this.validate(v);
    }
);

/// Where a document to decode comes from; errors carry a line when the source has lines.
pub enum Source<'a> {
    Json(&'a [u8]),
    Yaml(&'a str),
    Value(Value),
}

/// A valid object in canonical form (defaults filled, unknown fields dropped).
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub object: Value,
    /// Fields the input had that Berth does not support, by path; they were ignored.
    pub warnings: Vec<String>,
    /// The paths of those fields, for a client that asks to be refused instead
    /// (`fieldValidation=Strict`).
    pub unknown_fields: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// Not the right shape for the kind (wrong type, missing required field, bad syntax).
    #[error("{}{message}", line.map(|l| format!("line {l}: ")).unwrap_or_default())]
    Malformed {
        line: Option<usize>,
        message: String,
    },
    /// Well-formed but breaks the rules; every broken rule is listed.
    #[error("{} invalid field(s): {}", errors.len(), errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid { errors: Vec<FieldError> },
}

/// A kind as the API server routes it: `/api/v1/...` for the core group,
/// `/apis/<group>/v1/...` otherwise.
#[derive(Clone, Copy)]
pub struct ResourceType {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub namespaced: bool,
    pub has_status: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    decode: fn(Source<'_>) -> Result<Decoded, DecodeError>,
    schema: fn(&mut SchemaGenerator) -> schemars::Schema,
}

/// A kind is identified by group, version and kind; the function pointers follow from them.
impl PartialEq for ResourceType {
    fn eq(&self, other: &Self) -> bool {
        (self.group, self.version, self.kind) == (other.group, other.version, other.kind)
    }
}

impl std::fmt::Debug for ResourceType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.api_version(), self.kind)
    }
}

impl ResourceType {
    pub const fn of<R: Resource>() -> Self {
        Self {
            group: R::GROUP,
            version: R::VERSION,
            kind: R::KIND,
            plural: R::PLURAL,
            namespaced: R::NAMESPACED,
            has_status: R::HAS_STATUS,
            short_names: R::SHORT_NAMES,
            categories: R::CATEGORIES,
            decode: decode::<R>,
            schema: |generator| generator.subschema_for::<R>(),
        }
    }

    pub fn api_version(&self) -> String {
        api_version(self.group, self.version)
    }

    /// Parses, defaults and validates one object of this kind.
    pub fn decode(&self, source: Source<'_>) -> Result<Decoded, DecodeError> {
        (self.decode)(source)
    }

    pub fn schema(&self, generator: &mut SchemaGenerator) -> schemars::Schema {
        (self.schema)(generator)
    }

    /// `/api/v1` or `/apis/apps/v1`.
    pub fn group_path(&self) -> String {
        if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        }
    }
}

/// Every kind the API serves.
pub static RESOURCE_TYPES: &[ResourceType] = &[
    ResourceType::of::<Namespace>(),
    ResourceType::of::<Pod>(),
    ResourceType::of::<Service>(),
    ResourceType::of::<Endpoints>(),
    ResourceType::of::<EndpointSlice>(),
    ResourceType::of::<Node>(),
    ResourceType::of::<Event>(),
    ResourceType::of::<Deployment>(),
    ResourceType::of::<ReplicaSet>(),
    ResourceType::of::<DaemonSet>(),
    ResourceType::of::<StatefulSet>(),
    ResourceType::of::<ControllerRevision>(),
    ResourceType::of::<HorizontalPodAutoscaler>(),
    ResourceType::of::<PodDisruptionBudget>(),
    ResourceType::of::<NetworkPolicy>(),
    ResourceType::of::<Job>(),
    ResourceType::of::<CronJob>(),
    ResourceType::of::<ConfigMap>(),
    ResourceType::of::<Secret>(),
    ResourceType::of::<PersistentVolumeClaim>(),
    ResourceType::of::<PersistentVolume>(),
    ResourceType::of::<LimitRange>(),
    ResourceType::of::<ResourceQuota>(),
    ResourceType::of::<ServiceAccount>(),
    ResourceType::of::<Role>(),
    ResourceType::of::<ClusterRole>(),
    ResourceType::of::<RoleBinding>(),
    ResourceType::of::<ClusterRoleBinding>(),
];

pub fn find_by_kind(api_version: &str, kind: &str) -> Option<&'static ResourceType> {
    RESOURCE_TYPES
        .iter()
        .find(|t| t.kind == kind && t.api_version() == api_version)
}

pub fn find_by_plural(group: &str, plural: &str) -> Option<&'static ResourceType> {
    RESOURCE_TYPES
        .iter()
        .find(|t| t.group == group && t.plural == plural)
}

fn decode<R: Resource>(source: Source<'_>) -> Result<Decoded, DecodeError> {
    let mut ignored = Vec::new();
    let on_ignored = |path: serde_ignored::Path<'_>| ignored.push(path.to_string());
    let typed: Result<R, DecodeError> = match source {
        Source::Json(bytes) => {
            let mut de = serde_json::Deserializer::from_slice(bytes);
            serde_ignored::deserialize(&mut de, on_ignored)
                .and_then(|r| de.end().map(|()| r))
                .map_err(|e| DecodeError::Malformed {
                    line: Some(e.line()),
                    message: e.to_string(),
                })
        }
        Source::Yaml(text) => {
            serde_ignored::deserialize(serde_norway::Deserializer::from_str(text), on_ignored)
                .map_err(|e| DecodeError::Malformed {
                    line: e.location().map(|l| l.line()),
                    message: e.to_string(),
                })
        }
        Source::Value(value) => {
            serde_ignored::deserialize(value, on_ignored).map_err(|e| DecodeError::Malformed {
                line: None,
                message: e.to_string(),
            })
        }
    };
    let mut object = typed?;
    let mut refused = Vec::new();
    let mut unknown_fields = Vec::new();
    for path in ignored {
        // Option layers show as `?` segments; the user's path has none.
        let path = path
            .split('.')
            .filter(|segment| *segment != "?")
            .collect::<Vec<_>>()
            .join(".");
        // Read-only metadata that kubectl round-trips; not worth a warning.
        if matches!(path.as_str(), "metadata.selfLink" | "status") {
            continue;
        }
        match refusal(&path) {
            Some(reason) => refused.push(FieldError {
                field: indexed(&path),
                reason: reason.to_owned(),
            }),
            None => unknown_fields.push(path),
        }
    }
    let field_warnings = match normalize_with_warnings(&mut object) {
        Ok(warnings) => warnings,
        Err(DecodeError::Invalid { errors }) => {
            refused.extend(errors);
            Vec::new()
        }
        Err(other) => return Err(other),
    };
    if !refused.is_empty() {
        return Err(DecodeError::Invalid { errors: refused });
    }
    let warnings = unknown_fields
        .iter()
        .map(|path| format!("{path}: unsupported field, ignored"))
        .chain(field_warnings)
        .collect();
    let object = serde_json::to_value(&object).map_err(|e| DecodeError::Malformed {
        line: None,
        message: e.to_string(),
    })?;
    Ok(Decoded {
        object,
        warnings,
        unknown_fields,
    })
}

/// Pod fields Berth does not implement and cannot ignore whatever their value: running
/// the pod without them would change what the application does (its configuration, its
/// files), so the object is refused with the field named. Other unknown fields are
/// warnings; fields that matter only with some values (`hostNetwork: true`,
/// `initContainers` that are not empty) are typed and checked in `core`. Matched on the
/// last segments of an ignored field's path, in any kind that holds a pod spec.
const REFUSED: &[(&[&str], &str)] = &[
    (&["volumes", "#", "*"], "unsupported volume source"),
    (
        &["projected", "sources", "#", "*"],
        "unsupported projected volume source",
    ),
    (&["env", "#", "valueFrom", "*"], "unsupported env source"),
    (&["envFrom", "#", "*"], "unsupported envFrom source"),
    (
        &["volumeMounts", "#", "mountPropagation"],
        "mount propagation is not supported",
    ),
    (
        &["volumeMounts", "#", "subPathExpr"],
        "subPathExpr is not supported: use subPath",
    ),
    (
        &["containers", "#", "volumeDevices"],
        "block devices are not supported",
    ),
];

/// Why an ignored field at `path` refuses the object, if it does (see [`REFUSED`]).
fn refusal(path: &str) -> Option<&'static str> {
    let segments: Vec<&str> = path.split('.').collect();
    REFUSED.iter().find_map(|(pattern, reason)| {
        let tail = segments.len().checked_sub(pattern.len())?;
        let matches = pattern
            .iter()
            .zip(&segments[tail..])
            .all(|(want, got)| match *want {
                "#" => got.parse::<usize>().is_ok(),
                "*" => true,
                want => want == *got,
            });
        matches.then_some(*reason)
    })
}

/// `spec.containers.0.env` as validation errors spell it: `spec.containers[0].env`.
fn indexed(path: &str) -> String {
    let mut out = String::new();
    for segment in path.split('.') {
        if segment.parse::<usize>().is_ok() {
            out.push_str(&format!("[{segment}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(segment);
        }
    }
    out
}

/// Parses, defaults and validates one object of kind `R` (as [`ResourceType::decode`]
/// does), typed.
pub fn decode_typed<R: Resource>(source: Source<'_>) -> Result<R, DecodeError> {
    let decoded = decode::<R>(source)?;
    serde_json::from_value(decoded.object).map_err(|e| DecodeError::Malformed {
        line: None,
        message: e.to_string(),
    })
}

/// Checks a typed object and fills its `apiVersion`, `kind` and default namespace: what
/// decoding does, for an object already typed.
pub fn normalize<R: Resource>(object: &mut R) -> Result<(), DecodeError> {
    normalize_with_warnings(object).map(drop)
}

/// [`normalize`], and the warnings of fields it accepts but does not act on in full.
fn normalize_with_warnings<R: Resource>(object: &mut R) -> Result<Vec<String>, DecodeError> {
    let mut v = Validator::default();
    let (api_version, kind) = object.type_meta_mut();
    if !api_version.is_empty() && *api_version != R::api_version() {
        v.error(
            &FieldPath::root("apiVersion"),
            &format!(
                "{api_version:?} is not served for {}: use {:?}",
                R::KIND,
                R::api_version()
            ),
        );
    }
    if !kind.is_empty() && kind != R::KIND {
        v.error(
            &FieldPath::root("kind"),
            &format!("expected {:?}, got {kind:?}", R::KIND),
        );
    }
    *api_version = R::api_version();
    *kind = R::KIND.to_owned();
    let meta = object.meta_mut();
    if R::NAMESPACED && meta.namespace.is_empty() {
        meta.namespace = DEFAULT_NAMESPACE.to_owned();
    }
    object.meta().validate(
        R::NAMESPACED,
        R::PATH_SEGMENT_NAMES,
        &mut v,
        &FieldPath::root("metadata"),
    );
    object.validate_body(&mut v);
    let (errors, warnings) = v.into_parts();
    if errors.is_empty() {
        Ok(warnings)
    } else {
        Err(DecodeError::Invalid { errors })
    }
}

/// Type metadata alone, to find which kind a document is before decoding it.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TypeMeta {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
}
