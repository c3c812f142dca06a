//! Reconcile errors, each named after the operation that failed and carrying
//! the Service, and whether retrying can help.

use ferrylb_model::reason;
use ferrylb_model::{ErrorKind, ProviderError};

use crate::spec::SpecError;

/// Why reconciling one Service failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Service cannot be turned into a load balancer as it stands.
    #[error("Service {svc}: {source}")]
    InvalidService { svc: String, source: SpecError },

    /// The provider could not ensure the load balancer.
    #[error("ensuring the load balancer for Service {svc} with provider {provider}: {source}")]
    Ensure {
        svc: String,
        provider: String,
        source: ProviderError,
    },

    /// The provider could not delete the load balancer.
    #[error("deleting the load balancer of Service {svc} with provider {provider}: {source}")]
    EnsureDeleted {
        svc: String,
        provider: String,
        source: ProviderError,
    },

    /// Writing the Service's metadata (finalizer) failed.
    #[error("patching Service {svc}: {source}")]
    PatchService { svc: String, source: kube::Error },

    /// Writing the Service's status failed.
    #[error("patching the status of Service {svc}: {source}")]
    PatchStatus { svc: String, source: kube::Error },
}

impl Error {
    /// Whether retrying can help, and when.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidService { .. } => ErrorKind::Permanent,
            Error::Ensure { source, .. } | Error::EnsureDeleted { source, .. } => source.kind,
            Error::PatchService { .. } | Error::PatchStatus { .. } => ErrorKind::Transient,
        }
    }

    /// Short CamelCase reason, for conditions and metrics.
    pub fn reason(&self) -> &str {
        match self {
            Error::InvalidService { .. } => reason::INVALID_SERVICE,
            Error::Ensure { source, .. } | Error::EnsureDeleted { source, .. } => &source.reason,
            Error::PatchService { .. } => reason::PATCH_SERVICE_FAILED,
            Error::PatchStatus { .. } => reason::PATCH_STATUS_FAILED,
        }
    }
}
