//! The admission pipeline: every GraphQL document, whatever door it comes
//! through (a POST body, a GET query string, an APQ hash, a trusted document
//! id, a WebSocket `subscribe` message, a POST asking for a stream of
//! results), passes the same stages, in this order, before async-graphql
//! validates (depth, complexity) and runs it:
//!
//! 1. [`client`]: who is asking (the credential) and whether they may ask
//!    now (their rate; a WebSocket message is charged like a request);
//! 2. [`persisted`](document): the document's text, from an APQ hash or a
//!    trusted document id;
//! 3. `guard`: bracket nesting and selections once fragments are expanded,
//!    before async-graphql's parser and validator see the document (a deep
//!    literal overflows the parser's stack; a fragment bomb costs the
//!    validator 2^n); the parsed document is cached;
//! 4. `door`: what this door may run (a GET runs queries only);
//! 5. `cost`: the whole request's worst case in platform requests, and its
//!    timeline buckets, counted on every field the executor would run.
//!
//! A door cannot skip a stage: [`document`] is the only way from a request's
//! parameters to something async-graphql executes.

use std::net::SocketAddr;
use std::sync::Arc;

use async_graphql::parser::types::{ExecutableDocument, OperationType};
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, StatusCode, header};
use chrono::{DateTime, Utc};

use super::AppState;
use super::refusal::Refusal;
use crate::auth::{AuthError, Principal};
use crate::error::ErrorCode;
use crate::graphql::cost;
use crate::graphql::persisted::Refusal as PersistedRefusal;
use crate::graphql_http::{self, Params};
use crate::limits::Rate;
use crate::secret::Secret;

/// The door a document came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    Post,
    Get,
    WebSocket,
    /// A POST asking for a stream of results (Server-Sent Events, multipart).
    Stream,
}

/// An authenticated client, and what its rate is counted by.
#[derive(Clone)]
pub struct Client {
    pub principal: Principal,
    /// Its key's name or JWT subject; an anonymous client's address (an
    /// IPv6 one by its /64).
    pub bucket: Arc<str>,
    pub rate: Option<Rate>,
}

static X_FORWARDED_FOR: header::HeaderName = header::HeaderName::from_static("x-forwarded-for");

/// Stage 1: who is asking, from `authorization` (a header, or a
/// `connection_init` entry), counted by `address` when anonymous.
pub fn client(
    state: &AppState,
    authorization: Option<&str>,
    address: &Arc<str>,
) -> Result<Client, Refusal> {
    let client = state.auth.authenticate(authorization).map_err(|e| {
        let message = match e {
            AuthError::Missing => {
                "authentication required: send `Authorization: Bearer <API key or JWT>`"
            }
            AuthError::Invalid(reason) => reason,
        };
        Refusal::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthenticated,
            message,
        )
        .header(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))
    })?;
    let bucket = if client.principal.is_anonymous() {
        address.clone()
    } else {
        client.principal.name.clone()
    };
    Ok(Client {
        principal: client.principal,
        bucket,
        rate: client.rate,
    })
}

/// What a long-lived connection (a socket, a stream) authenticated with,
/// kept to check again while it lives: an expired JWT or a revoked key
/// does not outlive its validity there.
pub struct Credential {
    authorization: Option<Secret>,
    address: Arc<str>,
    /// Who it made the client: what the connection's operations run as.
    principal: Principal,
}

impl Credential {
    pub fn new(authorization: Option<&str>, address: Arc<str>, principal: Principal) -> Self {
        Self {
            authorization: authorization.map(Secret::new),
            address,
            principal,
        }
    }

    /// Stage 1 again, as it stands now (keys reloaded, the clock moved on):
    /// it must still hold, and still grant what it granted (a key's scope
    /// narrowed on a reload no longer holds for the connection).
    pub fn recheck(&self, state: &AppState) -> Result<(), Refusal> {
        let authorization = self.authorization.as_ref().map(Secret::expose);
        let now = client(state, authorization, &self.address)?;
        if now.principal != self.principal {
            return Err(Refusal::new(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthenticated,
                "the credential's scope changed since the connection opened: connect again",
            ));
        }
        Ok(())
    }
}

/// The `Authorization` header, if any; one that is not visible ASCII
/// cannot be a valid credential.
pub fn authorization(parts: &axum::http::request::Parts) -> Option<&str> {
    parts
        .headers
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or("\u{0}"))
}

/// What an anonymous client is counted by: its address (behind trusted
/// proxies, the one they forwarded), an IPv6 address by its /64.
pub fn address(state: &AppState, parts: &axum::http::request::Parts) -> Arc<str> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(
            || "ip:unknown".into(),
            |c| {
                let forwarded = parts.headers.get_all(&X_FORWARDED_FOR).iter();
                let ip = state
                    .trusted_proxies
                    .client_ip(c.0.ip(), forwarded.map(HeaderValue::as_bytes));
                format!("ip:{}", crate::limits::client_host(ip)).into()
            },
        )
}

/// Stage 1's second half: takes one request (or WebSocket message) from the
/// client's rate bucket, or refuses with `RATE_LIMITED` and `Retry-After`.
pub fn charge(state: &AppState, client: &Client) -> Result<(), Refusal> {
    state
        .client_limiter
        .check(&client.bucket, client.rate)
        .map_err(|wait| {
            let secs = wait.as_secs().max(1);
            Refusal::rate_limited(
                format!("too many requests from this client; retry in {secs} s"),
                secs,
            )
        })
}

/// A document admitted to run.
pub struct Admitted {
    /// Its text (from the request, or the persisted document it named).
    pub query: Arc<str>,
    /// The request for async-graphql, with the parsed document when it parsed.
    pub request: async_graphql::Request,
    pub parsed: Option<Arc<ExecutableDocument>>,
}

/// Stages 2 to 5 for one request's parameters, at the request's `now`.
pub fn document(
    state: &AppState,
    params: &Params,
    door: Door,
    now: DateTime<Utc>,
) -> Result<Admitted, Refusal> {
    // 2. persisted
    let query = match state.persisted.resolve(
        params.query.as_deref(),
        params.document_id.as_deref(),
        params.extensions.as_ref(),
    ) {
        Ok(Some(query)) => query,
        Ok(None) => {
            return Err(Refusal::malformed(match door {
                Door::Post | Door::Stream => {
                    "the request has no `query`: send {\"query\": \"{ ... }\"}"
                }
                Door::Get => "the request has no `query`: GET /graphql?query={...}",
                Door::WebSocket => "the subscribe message has no `query`",
            }));
        }
        Err(PersistedRefusal::NotFound) => {
            return Err(Refusal::request_error(
                ErrorCode::PersistedQueryNotFound,
                if state.persisted.only() {
                    "PersistedQueryNotFound: this id or hash is not an operation of the gateway's manifest (PERSISTED_QUERIES_FILE)"
                } else {
                    "PersistedQueryNotFound: the gateway does not know this id or hash; send the query with it"
                },
            ));
        }
        // A refusal by the operator's policy, like a credential's: the same
        // 403 in both media types, so it stands out among answers.
        Err(PersistedRefusal::NotAllowed(message)) => {
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                ErrorCode::PersistedQueryNotAllowed,
                message,
            ));
        }
        Err(PersistedRefusal::Invalid(message)) => {
            return Err(Refusal::request_error(ErrorCode::BadUserInput, message));
        }
    };
    #[cfg(feature = "test-hooks")]
    if query.contains("__testPanic") {
        panic!("a panic provoked by a test");
    }
    // 3. guard (and parse, once per text while cached)
    let parsed = state
        .documents
        .parse(&query)
        .map_err(|message| Refusal::request_error(ErrorCode::BadUserInput, message))?;
    let mut request = params.request(query.to_string());
    if let Some(doc) = &parsed {
        // 4. door
        let operation = graphql_http::operation_type(doc, params.operation_name.as_deref());
        if door == Door::Get && operation.is_some_and(|ty| ty != OperationType::Query) {
            return Err(Refusal::new(
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorCode::BadUserInput,
                "a GET may only run a query: send mutations and subscriptions with POST",
            )
            .header(header::ALLOW, HeaderValue::from_static("POST")));
        }
        // 5. cost
        let plan = cost::worst_case(
            &state.resolver,
            doc,
            params.operation_name.as_deref(),
            &request.variables,
            now,
        );
        let limit = state.limits.max_platform_requests;
        if plan.platform_requests > limit {
            let cost = plan.platform_requests;
            return Err(Refusal::request_error(
                ErrorCode::QueryTooExpensive,
                format!(
                    "this request could need {cost} platform requests; one request may need at most {limit} \
                     (MAX_PLATFORM_REQUESTS_PER_QUERY): ask for shorter ranges, smaller pages or fewer fields"
                ),
            )
            .extension("cost", cost)
            .extension("limit", limit));
        }
        if plan.timeline_buckets > cost::MAX_TIMELINE_BUCKETS {
            return Err(Refusal::request_error(
                ErrorCode::BadUserInput,
                format!(
                    "this request's timelines would have {} buckets together; a request may have at most {} \
                     (all its `timeline` fields together): ask for longer intervals, shorter ranges or fewer timelines",
                    plan.timeline_buckets,
                    cost::MAX_TIMELINE_BUCKETS
                ),
            ));
        }
        request.set_parsed_query((**doc).clone());
        // The resolver runs the plans costed here: one plan a field.
        request = request.data(plan.visits);
    }
    Ok(Admitted {
        query,
        request,
        parsed,
    })
}
