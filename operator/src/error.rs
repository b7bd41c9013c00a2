//! The operator's one error type. Each variant says what went wrong in words a user can act on,
//! and has a short `metric_label` for the error counter.

/// Why a reconcile did not finish.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec cannot be run as written; the message says what to change.
    #[error("invalid spec: {0}")]
    InvalidSpec(String),

    /// The object lacks metadata the API server always sets (name, namespace, uid).
    #[error("DurableNamespace is missing metadata.{0}")]
    MissingMetadata(&'static str),

    /// A call to the Kubernetes API failed.
    #[error("Kubernetes API call failed: {0}")]
    Kube(#[from] kube::Error),

    /// A child object could not be turned into JSON (a bug).
    #[error("could not serialize {kind}: {source}")]
    Serialize {
        kind: &'static str,
        #[source]
        source: serde_json::Error,
    },

    /// The operator could not produce a random peer token.
    #[error("could not generate the peer token: {0}")]
    Random(String),

    /// Leader election failed.
    #[error("leader election: {0}")]
    Lease(String),

    /// The metrics and health server failed.
    #[error("metrics server: {0}")]
    Server(#[from] std::io::Error),
}

impl Error {
    /// Label of the `stead_operator_reconcile_errors_total` counter.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::InvalidSpec(_) => "invalid_spec",
            Error::MissingMetadata(_) => "missing_metadata",
            Error::Kube(_) => "kube_api",
            Error::Serialize { .. } => "serialize",
            Error::Random(_) => "random",
            Error::Lease(_) => "lease",
            Error::Server(_) => "server",
        }
    }

    /// The condition reason published for this error.
    pub fn condition_reason(&self) -> &'static str {
        match self {
            Error::InvalidSpec(_) => "InvalidSpec",
            Error::MissingMetadata(_) => "InvalidSpec",
            Error::Kube(_) => "KubernetesApiError",
            _ => "OperatorError",
        }
    }

    /// Errors the user must fix in the manifest: retrying will not help until the spec changes.
    pub fn is_user_error(&self) -> bool {
        matches!(self, Error::InvalidSpec(_))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
