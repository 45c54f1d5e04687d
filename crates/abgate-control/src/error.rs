//! What an operator's request to the controller can fail with.

/// A request the controller refuses, or could not carry out. An API maps each kind to
/// its status in one place.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No experiment has this id.
    #[error("no experiment {0}")]
    NotFound(String),
    /// An experiment with this id runs already.
    #[error("experiment {0} exists")]
    Exists(String),
    /// The request cannot be carried out as given (a bad split, an unknown variant, an
    /// experiment that has ended, a subset without endpoints).
    #[error("{0}")]
    Invalid(String),
    /// Carrying it out failed (the state store).
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ControlError {
    /// An [`Invalid`](Self::Invalid) request, explained.
    pub fn invalid(why: impl std::fmt::Display) -> Self {
        Self::Invalid(why.to_string())
    }
}

impl From<abgate_state::StateError> for ControlError {
    fn from(e: abgate_state::StateError) -> Self {
        Self::Internal(e.into())
    }
}

impl From<serde_json::Error> for ControlError {
    fn from(e: serde_json::Error) -> Self {
        Self::Internal(e.into())
    }
}
