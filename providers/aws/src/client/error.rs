//! A failed AWS call, what its code means (throttled, denied, unavailable,
//! gone), and the [`ProviderError`] a user sees for it.

use std::fmt;
use std::time::Duration;

use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use ferrylb_model::{ProviderError, reason};

/// A failed AWS call: the IAM action, AWS's error code and message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{action}: {}{message}", code.as_deref().map(|c| format!("{c}: ")).unwrap_or_default())]
pub struct CallError {
    pub action: &'static str,
    pub code: Option<String>,
    pub message: String,
    /// No answer from AWS (timeout, connection failure) or a 5xx.
    pub unavailable: bool,
    /// The SDK found no credentials to sign the request with.
    pub no_credentials: bool,
}

/// What the SDK's credential chain says when it finds nothing.
const NO_CREDENTIALS: &[&str] = &[
    "no providers in chain provided credentials",
    "CredentialsNotLoaded",
    "the credential provider was not enabled",
];

/// Codes for a subnet or VPC AWS no longer knows.
const NETWORK_GONE: &[&str] = &[
    "SubnetNotFound",
    "InvalidSubnetID.NotFound",
    "InvalidSubnet",
    "InvalidVpcID.NotFound",
];

const THROTTLING: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "RequestThrottled",
    "SlowDown",
];
const DENIED: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    "UnauthorizedOperation",
    "UnauthorizedAccess",
    "AuthFailure",
];

impl CallError {
    pub(super) fn from_sdk<E, R>(action: &'static str, err: SdkError<E, R>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: fmt::Debug,
    {
        match &err {
            SdkError::ServiceError(se) => {
                let e = se.err();
                let status = format!("{:?}", se.raw());
                Self {
                    action,
                    code: e.code().map(str::to_owned),
                    message: e
                        .message()
                        .map(str::to_owned)
                        .unwrap_or_else(|| e.to_string()),
                    unavailable: e.code().is_none() && status.contains("status: 5"),
                    no_credentials: false,
                }
            }
            other => {
                let message = display_chain(other);
                Self {
                    action,
                    code: other.code().map(str::to_owned),
                    no_credentials: NO_CREDENTIALS.iter().any(|m| message.contains(m)),
                    message,
                    unavailable: true,
                }
            }
        }
    }

    /// Whether AWS answered with this error code.
    pub fn is(&self, code: &str) -> bool {
        self.code.as_deref() == Some(code)
    }

    /// Whether AWS throttled the call.
    pub fn is_throttling(&self) -> bool {
        self.code
            .as_deref()
            .is_some_and(|c| THROTTLING.contains(&c))
    }
}

/// Treats some AWS error codes as success, for idempotent calls: a delete
/// of something already gone, an ingress rule already there.
pub trait Tolerate {
    /// `Ok(())` on success or when AWS answered with one of `codes`.
    fn tolerate(self, codes: &[&str]) -> Result<(), CallError>;
}

impl<T> Tolerate for Result<T, CallError> {
    fn tolerate(self, codes: &[&str]) -> Result<(), CallError> {
        match self {
            Ok(_) => Ok(()),
            Err(e) if codes.iter().any(|c| e.is(c)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

fn display_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

impl From<CallError> for ProviderError {
    fn from(e: CallError) -> Self {
        let code = e.code.as_deref().unwrap_or("");
        if e.no_credentials {
            ProviderError::transient(
                reason::AWS_CREDENTIALS_MISSING,
                "FerryLB found no AWS credentials: give its ServiceAccount an IAM role \
                 (IRSA: the eks.amazonaws.com/role-arn annotation, the chart's aws.roleArn), \
                 or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or run \
                 it where instance metadata serves a role",
            )
        } else if NETWORK_GONE.contains(&code) {
            ProviderError::transient(reason::SUBNET_GONE, e.to_string())
        } else if e.is_throttling() {
            ProviderError::retry_after(
                Duration::from_secs(10),
                reason::THROTTLED,
                format!("AWS throttled {}; retrying", e.action),
            )
        } else if DENIED.contains(&code) {
            ProviderError::transient(
                reason::ACCESS_DENIED,
                format!(
                    "AWS denied {} ({code}): {}. Grant {} to FerryLB's IAM role",
                    e.action, e.message, e.action
                ),
            )
        } else if e.unavailable
            || code.starts_with("InternalFailure")
            || code == "ServiceUnavailable"
        {
            ProviderError::transient(reason::AWS_UNAVAILABLE, e.to_string())
        } else {
            ProviderError::transient(reason::AWS_REJECTED, e.to_string())
        }
    }
}
