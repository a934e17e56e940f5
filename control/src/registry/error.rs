//! What can go wrong below the API: in the registry, the store under it and the watch
//! cache. Each variant carries what a Kubernetes `Status` needs (kind, name, causes);
//! the API edge picks the HTTP code and reason, the agent API the gRPC code.

use berth_api::{DecodeError, ResourceType, validation::FieldError};

use crate::{store::StoreError, watch_cache::WatchEnd};

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("{kind} {name:?} not found")]
    NotFound { kind: String, name: String },
    /// A store key a write required was not there.
    #[error("{key} not found")]
    KeyNotFound { key: String },
    #[error("{0}")]
    AlreadyExists(String),
    /// A precondition failed or a concurrent write won; reading again and retrying may work.
    #[error("{0}")]
    Conflict(String),
    #[error("{kind} {name:?} is invalid: {}", summary(causes))]
    Invalid {
        kind: String,
        name: String,
        causes: Vec<FieldError>,
    },
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    TooLarge(String),
    /// A watch cannot go on from where it is; its client must list again.
    #[error("{0}")]
    Expired(String),
    /// Not allowed for this writer or in this state (a node writing a pod not bound to
    /// it, a create in a terminating namespace).
    #[error("{0}")]
    Forbidden(String),
    /// The store's file failed an I/O call: writes are refused until it recovers.
    /// `no_space`: the filesystem is full or over quota.
    #[error("{message}")]
    StoreUnavailable { message: String, no_space: bool },
    /// Refused for now; the same request may succeed later (an eviction a disruption
    /// budget does not allow yet). `cause` says what it waits for.
    #[error("{message}")]
    TooManyRequests { message: String, cause: String },
    #[error("{0}")]
    Internal(String),
}

fn summary(causes: &[FieldError]) -> String {
    causes
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn not_found(kind: &str, name: &str) -> Self {
        Self::NotFound {
            kind: kind.to_owned(),
            name: name.to_owned(),
        }
    }

    pub fn invalid(kind: &str, name: &str, causes: Vec<FieldError>) -> Self {
        Self::Invalid {
            kind: kind.to_owned(),
            name: name.to_owned(),
            causes,
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::Internal(message.into())
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::BadRequest(message.into())
    }

    /// Whatever the object's name, it is not there.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound { .. } | Self::KeyNotFound { .. })
    }

    /// Another write got there first: a stale revision, or a key created concurrently.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::Conflict(_) | Self::AlreadyExists(_))
    }
}

impl From<StoreError> for Error {
    fn from(error: StoreError) -> Self {
        Self::from(&error)
    }
}

impl From<&StoreError> for Error {
    fn from(error: &StoreError) -> Self {
        let message = error.to_string();
        match error {
            StoreError::Conflict { .. } => Self::Conflict(format!(
                "{message}; read the object again and retry with its new resourceVersion"
            )),
            StoreError::AlreadyExists { .. } => Self::AlreadyExists(message),
            StoreError::NotFound { key } => Self::KeyNotFound { key: key.clone() },
            StoreError::Compacted { .. } => Self::Expired(message),
            StoreError::Faulted(fault) => Self::StoreUnavailable {
                message: format!("{message}; writes are refused until the store recovers"),
                no_space: fault.no_space,
            },
            StoreError::Fenced { .. } => Self::Conflict(message),
            StoreError::Backend(_) | StoreError::Corrupt(_) => Self::Internal(message),
        }
    }
}

impl From<&WatchEnd> for Error {
    fn from(end: &WatchEnd) -> Self {
        match end {
            WatchEnd::FellBehind { .. } => Self::Expired(end.to_string()),
            WatchEnd::Store(e) => Self::from(e.as_ref()),
        }
    }
}

/// A body that does not decode as `rt`: malformed (400) or breaking its rules (422).
pub fn decode_error(rt: &ResourceType, name: &str, error: DecodeError) -> Error {
    match error {
        DecodeError::Invalid { errors } => Error::invalid(rt.kind, name, errors),
        DecodeError::Malformed { line, message } => Error::BadRequest(match line {
            Some(line) => format!("{} body, line {line}: {message}", rt.kind),
            None => format!("{} body: {message}", rt.kind),
        }),
    }
}
