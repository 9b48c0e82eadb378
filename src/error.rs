//! One error type for everything a client can be told, each with the code of
//! docs/api.md. Causes that matter only to operators are logged where they happen;
//! the client gets the code and a message it can act on, never a secret and
//! never the platform's raw body.

use std::time::Duration;

use async_graphql::ErrorExtensions;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    BadUserInput,
    Unauthenticated,
    Forbidden,
    RateLimited,
    QueryTooExpensive,
    PersistedQueryNotFound,
    /// `PERSISTED_QUERIES_ONLY` and the document is not the manifest's.
    PersistedQueryNotAllowed,
    ActivityNotFound,
    UpstreamFeatureDisabled,
    UpstreamUnauthorized,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
    UpstreamBadResponse,
    /// A subscription closed because its client fell behind.
    SubscriberTooSlow,
    /// Statistics whose pages are still being read in the background.
    StatsLoading,
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 17] = [
        Self::BadUserInput,
        Self::Unauthenticated,
        Self::Forbidden,
        Self::RateLimited,
        Self::QueryTooExpensive,
        Self::PersistedQueryNotFound,
        Self::PersistedQueryNotAllowed,
        Self::ActivityNotFound,
        Self::UpstreamFeatureDisabled,
        Self::UpstreamUnauthorized,
        Self::UpstreamRateLimited,
        Self::UpstreamTimeout,
        Self::UpstreamUnavailable,
        Self::UpstreamBadResponse,
        Self::SubscriberTooSlow,
        Self::StatsLoading,
        Self::Internal,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::BadUserInput => "BAD_USER_INPUT",
            Self::Unauthenticated => "UNAUTHENTICATED",
            Self::Forbidden => "FORBIDDEN",
            Self::RateLimited => "RATE_LIMITED",
            Self::QueryTooExpensive => "QUERY_TOO_EXPENSIVE",
            Self::PersistedQueryNotFound => "PERSISTED_QUERY_NOT_FOUND",
            Self::PersistedQueryNotAllowed => "PERSISTED_QUERY_NOT_ALLOWED",
            Self::ActivityNotFound => "ACTIVITY_NOT_FOUND",
            Self::UpstreamFeatureDisabled => "UPSTREAM_FEATURE_DISABLED",
            Self::UpstreamUnauthorized => "UPSTREAM_UNAUTHORIZED",
            Self::UpstreamRateLimited => "UPSTREAM_RATE_LIMITED",
            Self::UpstreamTimeout => "UPSTREAM_TIMEOUT",
            Self::UpstreamUnavailable => "UPSTREAM_UNAVAILABLE",
            Self::UpstreamBadResponse => "UPSTREAM_BAD_RESPONSE",
            Self::SubscriberTooSlow => "SUBSCRIBER_TOO_SLOW",
            Self::StatsLoading => "STATS_LOADING",
            Self::Internal => "INTERNAL",
        }
    }

    /// The platform's clear "no" about an activity, remembered for
    /// `NEGATIVE_CACHE_SECONDS`. A 401 is not: it is about our token,
    /// which an operator may fix at any moment.
    pub fn is_definitive_refusal(self) -> bool {
        matches!(self, Self::ActivityNotFound | Self::UpstreamFeatureDisabled)
    }

    /// Failures worth retrying against the platform.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            Self::UpstreamRateLimited | Self::UpstreamTimeout | Self::UpstreamUnavailable
        )
    }
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct GatewayError {
    pub code: ErrorCode,
    pub message: String,
    /// The `message` of the platform's `{name,message,status}` envelope, when it sent one.
    pub upstream_message: Option<String>,
    /// From a 429's `Retry-After`, used by the retry policy.
    pub retry_after: Option<Duration>,
    /// The platform's HTTP status, when it answered; for metrics.
    pub status: Option<u16>,
    /// More `extensions` for the client, by name (`pagesRead`...).
    pub extensions: Vec<(&'static str, i64)>,
}

impl GatewayError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            upstream_message: None,
            retry_after: None,
            status: None,
            extensions: Vec::new(),
        }
    }

    pub fn bad_input(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadUserInput, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    /// The platform answered something the gateway cannot read.
    pub fn bad_response(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::UpstreamBadResponse, message)
    }

    pub fn upstream_timeout() -> Self {
        Self::new(
            ErrorCode::UpstreamTimeout,
            "the platform did not answer in time",
        )
    }

    /// Adds a number to the error's `extensions`.
    pub fn with_extension(mut self, name: &'static str, value: i64) -> Self {
        self.extensions.push((name, value));
        self
    }

    /// The gateway's own platform budget had no slot in time (no platform
    /// answer: a platform 429 carries its status).
    pub fn is_budget_refusal(&self) -> bool {
        self.code == ErrorCode::UpstreamRateLimited && self.status.is_none()
    }

    pub fn with_upstream_message(mut self, message: Option<String>) -> Self {
        self.upstream_message = message;
        self
    }
}

impl ErrorExtensions for GatewayError {
    fn extend(&self) -> async_graphql::Error {
        async_graphql::Error::new(self.message.clone()).extend_with(|_, e| {
            e.set("code", self.code.as_str());
            if let Some(m) = &self.upstream_message {
                e.set("upstreamMessage", m.as_str());
            }
            for (name, value) in &self.extensions {
                e.set(*name, *value);
            }
        })
    }
}
