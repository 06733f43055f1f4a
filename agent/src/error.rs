//! A failure with the step it happened in: what the host shows the user.

use husk_agent::protocol::ErrorReply;

#[derive(Debug, Clone, thiserror::Error)]
#[error("{step}: {message}")]
pub struct StepError {
    pub step: String,
    pub message: String,
}

impl StepError {
    pub fn new(step: impl Into<String>, message: impl ToString) -> Self {
        Self {
            step: step.into(),
            message: message.to_string(),
        }
    }
}

impl From<StepError> for ErrorReply {
    fn from(err: StepError) -> Self {
        ErrorReply {
            step: err.step,
            message: err.message,
        }
    }
}
