//! Errors: every way an AWS call or answer can fail, as a value (never a panic).
//!
//! [`AwsError`]'s `Display` is the one formatter of failed AWS calls, for the daemon, its admin
//! commands and gatehouse-vpc: the action (`service:Operation`), AWS's error code and message
//! (or, when AWS gave none, a one-line explanation), and what to do. Never the SDK's `Debug`
//! (which dumps the raw response: `SdkBody { inner: Once(Some(b"<?xml ...`).

use std::fmt;

use aws_sdk_iam::config::http::HttpResponse;
use aws_sdk_iam::error::{ProvideErrorMetadata, SdkError};

/// Error codes AWS uses for "slow down".
const THROTTLING_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "RequestThrottled",
];

/// Error codes AWS uses for "this identity may not call this action".
const ACCESS_DENIED_CODES: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    "UnauthorizedOperation",
    "UnauthorizedAccess",
];

/// Error codes AWS uses for "these credentials are not valid".
const BAD_CREDENTIALS_CODES: &[&str] = &[
    "InvalidClientTokenId",
    "UnrecognizedClientException",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "ExpiredTokenException",
    "AuthFailure",
    "InvalidAccessKeyId",
];

/// Longest AWS message kept (AWS's own are a few hundred characters).
const MAX_MESSAGE: usize = 1000;

/// A failed AWS call or an unusable answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AwsError {
    /// An AWS call failed: unreachable, refused, throttled, an error answer, a timeout.
    #[error("{}", CallText { service, operation, action: *action, code: code.as_deref(), message })]
    Call {
        /// `iam`, `ec2`, `ssm`: the prefix of the IAM action.
        service: &'static str,
        /// The API action, e.g. `ListUsers`.
        operation: &'static str,
        /// The IAM action the call needs, when it is not `service:operation` (S3's
        /// `HeadBucket` needs `s3:ListBucket`).
        action: Option<&'static str>,
        /// AWS's error code, when the answer had one.
        code: Option<String>,
        /// With a code: AWS's message. Without: what went wrong, in one line.
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
    /// AWS's error code, when the failed call got one.
    pub fn code(&self) -> Option<&str> {
        match self {
            AwsError::Call { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    /// Whether AWS asked us to slow down.
    pub fn is_throttling(&self) -> bool {
        self.code().is_some_and(|c| THROTTLING_CODES.contains(&c))
    }

    /// Whether AWS refused the call for lack of permission.
    pub fn is_access_denied(&self) -> bool {
        self.code()
            .is_some_and(|c| ACCESS_DENIED_CODES.contains(&c))
    }

    /// Whether AWS said the entity asked about does not exist (IAM's `NoSuchEntity`): for a
    /// user or key listed a moment earlier, it was deleted in between.
    pub fn is_no_such_entity(&self) -> bool {
        self.code() == Some("NoSuchEntity")
    }

    /// Builds a [`AwsError::Call`] from an SDK error of any AWS SDK client: `service` is the
    /// IAM action prefix (`iam`, `ec2`, `ssm`), `operation` the API name (`ListUsers`).
    pub fn call<E>(
        service: &'static str,
        operation: &'static str,
        error: &SdkError<E, HttpResponse>,
    ) -> AwsError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let (code, message) = match error {
            SdkError::ServiceError(context) => match context.err().code() {
                Some(code) => (
                    Some(code.to_owned()),
                    context.err().message().unwrap_or_default().to_owned(),
                ),
                None => (
                    None,
                    not_an_aws_answer(context.raw().status().as_u16(), service, operation),
                ),
            },
            SdkError::ResponseError(context) => (
                None,
                not_an_aws_answer(context.raw().status().as_u16(), service, operation),
            ),
            SdkError::TimeoutError(_) => (
                None,
                "no answer from AWS in time: check the network path to the endpoint (egress \
                 rules, NAT, proxy)"
                    .to_owned(),
            ),
            SdkError::DispatchFailure(_) => (
                None,
                format!(
                    "cannot reach AWS ({}): check the endpoint, DNS and the network path \
                     (egress rules, NAT, proxy)",
                    causes(error)
                ),
            ),
            SdkError::ConstructionFailure(_) => (
                None,
                format!(
                    "the request could not be made ({}): check the AWS credentials (instance \
                     profile, environment) and region",
                    causes(error)
                ),
            ),
            _ => (None, causes(error)),
        };
        AwsError::Call {
            service,
            operation,
            action: None,
            code,
            message: one_line(&message),
        }
    }

    /// [`AwsError::call`] for a call whose IAM action is `action`, not `service:operation`.
    pub fn call_needing<E>(
        service: &'static str,
        operation: &'static str,
        action: &'static str,
        error: &SdkError<E, HttpResponse>,
    ) -> AwsError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let mut e = AwsError::call(service, operation, error);
        if let AwsError::Call { action: a, .. } = &mut e {
            *a = Some(action);
        }
        e
    }
}

/// The one-line explanation of an HTTP answer that is not an AWS error document.
fn not_an_aws_answer(status: u16, service: &str, operation: &str) -> String {
    format!(
        "the endpoint answered HTTP {status} without an AWS error code (not an AWS API answer: \
         a proxy, or an endpoint that does not implement {service}:{operation})"
    )
}

/// The `Display` of each cause under `error`, joined with `: ` (never `Debug`).
fn causes(error: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = error.source();
    while let Some(e) = next {
        let text = e.to_string();
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    if parts.is_empty() {
        error.to_string()
    } else {
        parts.join(": ")
    }
}

/// `text` on one line of printable characters, at most [`MAX_MESSAGE`] of them (AWS's answer is
/// input: it must not forge journal lines or drive the terminal).
fn one_line(text: &str) -> String {
    let mut out: String = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(MAX_MESSAGE)
        .collect();
    if text.chars().count() > MAX_MESSAGE {
        out.push_str("...");
    }
    out
}

/// How a failed call reads: the action, AWS's code and message, and what to do.
struct CallText<'a> {
    service: &'a str,
    operation: &'a str,
    action: Option<&'a str>,
    code: Option<&'a str>,
    message: &'a str,
}

impl fmt::Display for CallText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let call = format!("{}:{}", self.service, self.operation);
        let action = self.action.map_or(call.clone(), str::to_owned);
        let Some(code) = self.code else {
            return write!(f, "AWS call {call} failed: {}", self.message);
        };
        write!(f, "AWS call {call} failed: {code}")?;
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        if ACCESS_DENIED_CODES.contains(&code) {
            write!(
                f,
                " (the IAM identity this runs as lacks the action {action}: allow it in its \
                 policy, e.g. the bastion role's)"
            )
        } else if THROTTLING_CODES.contains(&code) {
            write!(f, " (AWS is throttling: retried with backoff)")
        } else if BAD_CREDENTIALS_CODES.contains(&code) {
            write!(
                f,
                " (AWS does not accept these credentials: check the instance profile or the \
                 AWS_* environment)"
            )
        } else {
            Ok(())
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
            action: None,
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

    use aws_sdk_iam::config::http::HttpResponse;
    use aws_sdk_iam::error::{ConnectorError, ErrorMetadata};
    use aws_sdk_iam::operation::list_users::ListUsersError;

    /// IAM's AccessDenied answer, as the SDK hands it over (raw response included).
    const DENIED_XML: &str = "<?xml version=\"1.0\"?><ErrorResponse><Error><Type>Sender</Type>\
        <Code>AccessDenied</Code><Message>User: arn:aws:iam::123456789012:user/bastion is not \
        authorized to perform: iam:ListUsers</Message></Error></ErrorResponse>";

    fn response(status: u16, body: &str) -> HttpResponse {
        HttpResponse::new(status.try_into().expect("status"), body.to_owned().into())
    }

    /// No formatted AWS error shows the SDK's debug structures.
    fn assert_no_dump(text: &str) {
        for dump in ["SdkBody", "Once(", "Some(", "{ ", "<?xml", "ErrorMetadata"] {
            assert!(!text.contains(dump), "{dump:?} in {text}");
        }
    }

    #[test]
    fn a_denied_call_names_the_action_code_message_and_fix() {
        let meta = ErrorMetadata::builder()
            .code("AccessDenied")
            .message(
                "User: arn:aws:iam::123456789012:user/bastion is not authorized to perform: \
                 iam:ListUsers",
            )
            .build();
        let sdk = SdkError::service_error(ListUsersError::generic(meta), response(403, DENIED_XML));
        let error = AwsError::call("iam", "ListUsers", &sdk);
        assert!(error.is_access_denied());
        let text = error.to_string();
        assert_eq!(
            text,
            "AWS call iam:ListUsers failed: AccessDenied: User: \
             arn:aws:iam::123456789012:user/bastion is not authorized to perform: iam:ListUsers \
             (the IAM identity this runs as lacks the action iam:ListUsers: allow it in its \
             policy, e.g. the bastion role's)"
        );
        // What the SDK's own reporter gives (the old message): the raw response, dumped.
        let old = aws_sdk_iam::error::DisplayErrorContext(&sdk).to_string();
        assert!(old.contains("SdkBody"), "{old}");
    }

    #[test]
    fn answers_without_an_aws_error_are_one_human_line() {
        // moto's 500 for an action it does not implement: an HTML page, no AWS error code.
        let html = "<!doctype html>\n<title>500 Internal Server Error</title>\n<h1>Oops</h1>";
        let service = SdkError::service_error(
            ListUsersError::generic(ErrorMetadata::builder().build()),
            response(500, html),
        );
        let response_error: SdkError<ListUsersError, HttpResponse> =
            SdkError::response_error("failed to parse the body", response(502, html));
        for (sdk, status) in [(service, "500"), (response_error, "502")] {
            let text = AwsError::call("iam", "ListGroups", &sdk).to_string();
            assert!(
                text.starts_with(&format!(
                    "AWS call iam:ListGroups failed: the endpoint answered HTTP {status} without \
                     an AWS error code"
                )),
                "{text}"
            );
            assert!(!text.contains('\n') && !text.contains("doctype"), "{text}");
            assert_no_dump(&text);
        }

        let refused: SdkError<ListUsersError, HttpResponse> =
            SdkError::dispatch_failure(ConnectorError::io(Box::new(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "Connection refused (os error 111)",
            ))));
        let text = AwsError::call("ec2", "DescribeInstances", &refused).to_string();
        assert!(
            text.starts_with("AWS call ec2:DescribeInstances failed: cannot reach AWS (")
                && text.contains("Connection refused (os error 111)")
                && text.contains("check the endpoint"),
            "{text}"
        );
        assert_no_dump(&text);

        let timeout: SdkError<ListUsersError, HttpResponse> =
            SdkError::timeout_error("operation timed out");
        let text = AwsError::call("ssm", "GetParameter", &timeout).to_string();
        assert!(
            text.starts_with("AWS call ssm:GetParameter failed: no answer from AWS in time"),
            "{text}"
        );
        assert_no_dump(&text);
    }

    #[test]
    fn aws_messages_are_kept_to_one_printable_line() {
        let meta = ErrorMetadata::builder()
            .code("Throttling")
            .message("Rate exceeded\n2026-01-01 forged line\u{1b}[31m")
            .build();
        let sdk = SdkError::service_error(ListUsersError::generic(meta), response(400, ""));
        let error = AwsError::call("iam", "ListUsers", &sdk);
        assert!(error.is_throttling());
        let text = error.to_string();
        assert!(!text.contains('\n') && !text.contains('\u{1b}'), "{text}");
        assert!(
            text.contains("Throttling: Rate exceeded 2026-01-01"),
            "{text}"
        );
    }
}
