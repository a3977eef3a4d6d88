//! Errors: every way an AWS call or answer can fail, as a value (never a panic).

use aws_sdk_iam::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

/// Error codes AWS uses for "slow down".
const THROTTLING_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "RequestThrottled",
];

/// A failed AWS call or an unusable answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AwsError {
    /// An AWS call failed: unreachable, refused, throttled, an error answer, a timeout.
    #[error("{service} {operation} failed: {message}")]
    Call {
        /// `iam`, `ec2`, `ssm`.
        service: &'static str,
        /// The API action, e.g. `ListUsers`.
        operation: &'static str,
        /// AWS's error code, when the answer had one.
        code: Option<String>,
        /// The whole error chain.
        message: String,
    },
    /// A listing that succeeded but cannot be trusted (e.g. empty where the last one was not).
    #[error("{0}")]
    Suspicious(String),
    /// The SSM host key parameter holds something that is not a usable host key.
    #[error("SSM parameter {parameter}: {reason}")]
    HostKey {
        /// The parameter name.
        parameter: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl AwsError {
    /// Whether AWS asked us to slow down.
    pub fn is_throttling(&self) -> bool {
        matches!(self, AwsError::Call { code: Some(code), .. } if THROTTLING_CODES.contains(&code.as_str()))
    }

    /// Whether AWS said the entity asked about does not exist (IAM's `NoSuchEntity`): for a
    /// user or key listed a moment earlier, it was deleted in between.
    pub fn is_no_such_entity(&self) -> bool {
        matches!(self, AwsError::Call { code: Some(code), .. } if code == "NoSuchEntity")
    }

    /// Builds a [`AwsError::Call`] from an SDK error.
    pub(crate) fn call<E, R>(
        service: &'static str,
        operation: &'static str,
        error: &SdkError<E, R>,
    ) -> AwsError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        AwsError::Call {
            service,
            operation,
            code: error.code().map(str::to_owned),
            message: DisplayErrorContext(error).to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_is_recognised_by_code() {
        let e = |code: Option<&str>| AwsError::Call {
            service: "iam",
            operation: "ListUsers",
            code: code.map(str::to_owned),
            message: String::new(),
        };
        assert!(e(Some("Throttling")).is_throttling());
        assert!(e(Some("RequestLimitExceeded")).is_throttling());
        assert!(!e(Some("AccessDenied")).is_throttling());
        assert!(!e(None).is_throttling());
        assert!(!AwsError::Suspicious("x".into()).is_throttling());
        assert!(e(Some("NoSuchEntity")).is_no_such_entity());
        assert!(!e(Some("AccessDenied")).is_no_such_entity());
        assert!(!e(None).is_no_such_entity());
    }
}
