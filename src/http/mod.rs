//! The HTTP surface (docs/api.md, "GraphQL over HTTP"): the doors (GraphQL
//! over POST and GET, subscriptions over WebSocket, Server-Sent Events and
//! multipart HTTP), the playground, probes. Every door hands its document to
//! the one [`admission`] pipeline; every refusal is a [`Refusal`], which
//! renders itself.

pub mod admission;
mod refusal;
mod state;
pub mod stream;
mod subscriptions;
pub mod websocket;

pub use refusal::Refusal;
pub use state::{AppState, RequestLimits};

use std::sync::Arc;
use std::sync::atomic::Ordering;

use std::time::Duration;

use async_graphql::parser::types::{DocumentOperations, ExecutableDocument, OperationType};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use tower_http::catch_panic::CatchPanicLayer;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::auth::Principal;
use crate::error::ErrorCode;
use crate::graphql::RequestScope;
use crate::graphql_http::{self, MediaType, Params};
use crate::response_cache::{Facts, ResponseKey};
use crate::telemetry::{self, Metrics, OutcomeLabel, RequestStats};
use crate::upstream::fair::{Caller, Priority};
use admission::{Admitted, Client, Door};

/// The main router; `/metrics` is on it unless it has a port of its own.
pub fn router(state: Arc<AppState>, with_metrics: bool) -> Router {
    let mut router = Router::new()
        .route("/graphql", get(get_graphql).post(graphql))
        .route("/", get(|| async { Redirect::temporary("/graphql") }))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz));
    if state.playground.is_some() {
        router = router.merge(crate::playground::asset_routes());
    }
    if with_metrics {
        router = router.route("/metrics", get(metrics));
    }
    fallbacks(router)
        .with_state(state.clone())
        // Inside the access log, so a panic's log line carries the request id
        // and its 500 is counted like any answer.
        .layer(CatchPanicLayer::custom(panic_response(
            state.metrics.clone(),
        )))
        // Outermost, so it sees every request and the final status.
        .layer(middleware::from_fn_with_state(
            state.metrics.clone(),
            telemetry::observe,
        ))
}

/// Every answer has a GraphQL error body, an unknown path or a method its
/// path does not take (405, the router keeping its `Allow` header) too.
/// After every route: a method fallback applies to the routes before it.
fn fallbacks(router: Router<Arc<AppState>>) -> Router<Arc<AppState>> {
    router
        .fallback(|| async {
            error_response(
                StatusCode::NOT_FOUND,
                ErrorCode::BadUserInput,
                "no such path",
            )
        })
        .method_not_allowed_fallback(|method: axum::http::Method| async move {
            error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorCode::BadUserInput,
                &format!(
                    "this path does not take {method}: its `Allow` header lists what it takes"
                ),
            )
        })
}

/// A panic in a request is our bug: the client gets a GraphQL `INTERNAL`
/// error (never a dropped connection), the log gets the panic with the
/// request id, and `visits_gateway_panics_total` counts it.
fn panic_response(
    metrics: Arc<Metrics>,
) -> impl Fn(Box<dyn std::any::Any + Send + 'static>) -> Response + Clone {
    move |panic| {
        let detail = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        metrics.panics.inc();
        tracing::error!(panic = %detail, "a request panicked; answered 500 INTERNAL");
        Refusal::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            "internal error: the gateway logged it with this response's x-request-id",
        )
        .into_response(&metrics, None)
    }
}

/// `/metrics` alone, for `METRICS_LISTEN_ADDR`.
pub fn metrics_router(state: Arc<AppState>) -> Router {
    fallbacks(Router::new().route("/metrics", get(metrics))).with_state(state)
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    state.cache.report().await;
    let (entries, bytes) = state.responses.size();
    state.metrics.response_cache_entries.set(entries as i64);
    state.metrics.response_cache_bytes.set(bytes as i64);
    let body = state.metrics.encode();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// A GraphQL error body for what is not a GraphQL request (not counted).
fn error_response(status: StatusCode, code: ErrorCode, message: &str) -> Response {
    Refusal::new(status, code, message).render(None)
}

/// `POST /graphql`: a GraphQL request as a JSON body (`application/json`).
/// Credential and client rate are checked before the body is read, and the
/// body is bounded; then [`answer`].
async fn graphql(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    // A subscription over plain HTTP: Server-Sent Events or multipart.
    if let Some(protocol) = graphql_http::negotiate_stream(&parts.headers) {
        return stream::serve(state, protocol, parts, body).await;
    }
    let Some(media) = graphql_http::negotiate(&parts.headers) else {
        return not_acceptable().into_response(&state.metrics, None);
    };
    match admit_post(&state, &parts, body).await {
        Ok((client, body)) => answer(&state, client, media, Form::Body, body).await,
        Err(refusal) => refusal.into_response(&state.metrics, Some(media)),
    }
}

/// A POST's client (stage 1 of [`admission`], before the body is read),
/// then its body: JSON (else 415), at most `MAX_BODY_BYTES` (else 413), all
/// of it within `BODY_READ_TIMEOUT_SECONDS` (else 408). Every door with a
/// body (POST, SSE, multipart) reads it here.
async fn admit_post(
    state: &AppState,
    parts: &axum::http::request::Parts,
    body: axum::body::Body,
) -> Result<(Client, Bytes), Refusal> {
    let client = admit(state, parts)?;
    if !graphql_http::is_json_content_type(&parts.headers) {
        return Err(Refusal::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::BadUserInput,
            "send a GraphQL request as `Content-Type: application/json` (UTF-8)",
        ));
    }
    let limit = state.limits.max_body_bytes;
    let deadline = state.limits.body_read_timeout;
    // A client that announces a body and trickles it (or stops) must not
    // hold the connection and its buffer: the header timeout is over.
    let read = tokio::time::timeout(deadline, axum::body::to_bytes(body, limit));
    let body = read
        .await
        .map_err(|_| {
            Refusal::new(
                StatusCode::REQUEST_TIMEOUT,
                ErrorCode::BadUserInput,
                format!(
                    "the request body did not all arrive within BODY_READ_TIMEOUT_SECONDS ({} s)",
                    deadline.as_secs()
                ),
            )
            // The rest of the body may still come: nothing else can follow
            // it on this connection.
            .header(header::CONNECTION, HeaderValue::from_static("close"))
        })?
        .map_err(|_| {
            Refusal::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::BadUserInput,
                format!("the request body is larger than MAX_BODY_BYTES ({limit} bytes)"),
            )
        })?;
    Ok((client, body))
}

/// How a request came: a POST's JSON body or a GET's query string. Part of
/// the response cache's key, so the two never share an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    Body,
    QueryString,
}

/// What POST and GET share once the client is admitted: answer from the
/// response cache if it can, read the request, check what it may cost the
/// platform, else execute with a deadline. Each refusal before execution has
/// its HTTP status and a GraphQL error body (docs/api.md, "Error codes"), the
/// status of a request error chosen by the response's media type (GraphQL
/// over HTTP).
async fn answer(
    state: &AppState,
    client: Client,
    media: MediaType,
    form: Form,
    raw: Bytes,
) -> Response {
    // One clock for the whole request: the pin bucket of the response cache
    // is the pinned `now` the resolver plans with.
    let now = Utc::now();
    let bucket = crate::paging::pinned_now(now, state.limits.pin_granularity);
    // The hot path: a response built moments ago for the same request, found
    // before the request is even parsed.
    let key = state.responses.is_enabled().then(|| {
        let bucket = bucket.timestamp_millis();
        match form {
            Form::Body => ResponseKey::new(raw.clone(), bucket),
            Form::QueryString => ResponseKey::for_query_string(raw.clone(), bucket),
        }
    });
    let public = client.principal.is_anonymous();
    if let Some((body, left)) = key
        .as_ref()
        .and_then(|k| cached(state, k, &client.principal))
    {
        return finish(form, media, StatusCode::OK, body, Some((left, public)));
    }
    let refused = |r: Refusal| r.into_response(&state.metrics, Some(media));
    let params = match form {
        Form::Body => Params::from_json(&raw),
        Form::QueryString => Params::from_query_string(&String::from_utf8_lossy(&raw)),
    };
    // A body or query string that is not a GraphQL request is a 400 in
    // both media types (GraphQL over HTTP: a request that is not
    // well-formed).
    let params = match params {
        Ok(params) => params,
        Err(message) => return refused(Refusal::malformed(message)),
    };
    let door = match form {
        Form::Body => Door::Post,
        Form::QueryString => Door::Get,
    };
    let Admitted {
        request, parsed, ..
    } = match admission::document(state, &params, door, now) {
        Ok(admitted) => admitted,
        Err(refusal) => return refused(refusal),
    };
    let scope = RequestScope::new(now, state.limits.window_concurrency);
    let operation = if crate::otel::enabled() {
        operation_span(parsed.as_deref(), params.operation_name.as_deref(), "http")
    } else {
        tracing::Span::none()
    };
    // Its platform requests take turns with other clients'
    // (docs/operations.md);
    // `userVisitStats` lowers its own priority.
    let caller = Caller::new(client.bucket, Priority::Interactive);
    let execution = caller.scope(
        state
            .schema
            .execute(request.data(client.principal).data(scope.clone()))
            .instrument(operation),
    );
    let mut response = match within_deadline(state, execution).await {
        Ok(response) => response,
        Err(refusal) => return refused(refusal),
    };
    let facts = scope.facts();
    annotate(state, &mut response, &facts);
    // Nothing ran: the document did not parse or validate, or its variables
    // did not coerce (no error has a path). With
    // `application/graphql-response+json` that is a request error: 400, and
    // no `data`.
    let not_executed = response.data == async_graphql::Value::Null
        && !response.errors.is_empty()
        && response.errors.iter().all(|e| e.path.is_empty());
    let (status, serialised) = if not_executed && media == MediaType::GraphQLResponse {
        let without_data = serde_json::to_value(&response).map(|mut value| {
            if let Some(object) = value.as_object_mut() {
                object.remove("data");
            }
            value
        });
        (
            media.request_error_status(),
            without_data.and_then(|v| serde_json::to_vec(&v)),
        )
    } else {
        (StatusCode::OK, serde_json::to_vec(&response))
    };
    let body = match serialised {
        Ok(body) => Bytes::from(body),
        Err(e) => {
            tracing::error!(error = %e, "cannot serialise a GraphQL response");
            return refused(Refusal::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal,
                "internal error",
            ));
        }
    };
    let fresh = response
        .errors
        .is_empty()
        .then(|| (fresh_for(state, bucket, &facts), public));
    if let Some(key) = key
        && let Some((ttl, _)) = fresh
    {
        state
            .responses
            .insert(key, body.clone(), facts.activities, ttl);
    }
    finish(form, media, status, body, fresh)
}

/// A request's execution, bounded by `REQUEST_TIMEOUT_MS`.
pub(crate) async fn within_deadline(
    state: &AppState,
    execution: impl std::future::Future<Output = async_graphql::Response>,
) -> Result<async_graphql::Response, Refusal> {
    tokio::time::timeout(state.limits.request_timeout, execution)
        .await
        .map_err(|_| {
            Refusal::new(
                StatusCode::GATEWAY_TIMEOUT,
                ErrorCode::UpstreamTimeout,
                "the request did not complete within the gateway's deadline",
            )
        })
}

/// The longest operation name a span carries.
const MAX_OPERATION_NAME: usize = 100;

/// The GraphQL operation's span, with the semantic conventions' type and
/// name when the document settles them, and how its results travel
/// (`transport`: `http` for one response, `sse` or `multipart` for a
/// stream, `websocket`). The document itself is left out: its literals may hold what a
/// client would not want in a trace backend.
fn operation_span(
    doc: Option<&ExecutableDocument>,
    name: Option<&str>,
    transport: &'static str,
) -> tracing::Span {
    let ty = doc.and_then(|doc| graphql_http::operation_type(doc, name));
    let ty = ty.map(|ty| match ty {
        OperationType::Query => "query",
        OperationType::Mutation => "mutation",
        OperationType::Subscription => "subscription",
    });
    // The name the document gives the operation run: the request's
    // `operationName` when the document defines it, else the name of its one
    // operation. Cut short, as it names the span.
    let name = match (ty, name, doc.map(|d| &d.operations)) {
        (None, _, _) => None,
        (Some(_), Some(name), _) => Some(name),
        (Some(_), None, Some(DocumentOperations::Multiple(ops))) if ops.len() == 1 => {
            ops.keys().next().map(|n| n.as_str())
        }
        _ => None,
    }
    .map(|name| &name[..name.floor_char_boundary(MAX_OPERATION_NAME)]);
    // Named like the conventions' `{type} {name}`.
    let span_name = match (ty, name) {
        (Some(ty), Some(name)) => format!("{ty} {name}"),
        (Some(ty), None) => ty.to_owned(),
        (None, _) => "GraphQL Operation".to_owned(),
    };
    let span = tracing::info_span!("graphql", otel.name = span_name);
    if let Some(ty) = ty {
        span.set_attribute("graphql.operation.type", ty);
    }
    if let Some(name) = name {
        span.set_attribute("graphql.operation.name", name.to_owned());
    }
    span.set_attribute("visits.transport", transport);
    span
}

/// The response; for a GET with its caching headers (docs/api.md): a response
/// without errors may be kept while it stays fresh, by shared caches
/// (`public`) only when it needed no credential, with an ETag for
/// `If-None-Match`; anything else is `no-store`.
fn finish(
    form: Form,
    media: MediaType,
    status: StatusCode,
    body: Bytes,
    fresh: Option<(Duration, bool)>,
) -> Response {
    let etag = match fresh {
        Some((ttl, _)) if form == Form::QueryString && ttl.as_secs() > 0 => Some(etag(&body)),
        _ => None,
    };
    let mut r = respond(media, status, body);
    if form == Form::QueryString {
        let headers = r.headers_mut();
        headers.insert(
            header::VARY,
            HeaderValue::from_static("Accept, Authorization"),
        );
        if let (Some(etag), Some((ttl, public))) = (etag, fresh) {
            let scope = if public { "public" } else { "private" };
            let directive = format!("{scope}, max-age={}", ttl.as_secs());
            if let Ok(value) = HeaderValue::from_str(&directive) {
                headers.insert(header::CACHE_CONTROL, value);
            }
            headers.insert(header::ETAG, etag);
        }
    }
    r
}

/// A strong validator of a response body: its SHA-256, shortened.
fn etag(body: &[u8]) -> HeaderValue {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(body);
    HeaderValue::from_str(&format!("\"{}\"", hex::encode(&digest[..16])))
        .unwrap_or_else(|_| HeaderValue::from_static("\"\""))
}

/// Whether `If-None-Match` names `etag` (weak comparison, as RFC 9110 says).
fn none_match(if_none_match: &HeaderValue, etag: &HeaderValue) -> bool {
    let strip = |t: &str| t.trim().trim_start_matches("W/").to_owned();
    let (Ok(list), Ok(etag)) = (if_none_match.to_str(), etag.to_str()) else {
        return false;
    };
    let etag = strip(etag);
    list.split(',').any(|t| t.trim() == "*" || strip(t) == etag)
}

/// 406: the client accepts neither GraphQL response type.
fn not_acceptable() -> Refusal {
    Refusal::new(
        StatusCode::NOT_ACCEPTABLE,
        ErrorCode::BadUserInput,
        "GraphQL responses are application/graphql-response+json or application/json: accept one of them",
    )
}

/// Stage 1 of [`admission`] for an HTTP request: who is asking, and whether
/// they may ask now; before any GraphQL work (and before a POST's body is read).
fn admit(state: &AppState, parts: &axum::http::request::Parts) -> Result<Client, Refusal> {
    let address = admission::address(state, parts);
    let client = admission::client(state, admission::authorization(parts), &address)?;
    admission::charge(state, &client)?;
    Ok(client)
}

/// A cached response for `key`, if this client may see all it touched.
fn cached(state: &AppState, key: &ResponseKey, principal: &Principal) -> Option<(Bytes, Duration)> {
    let hit = state.responses.get(key).filter(|r| r.visible_to(principal));
    let outcome = if hit.is_some() { "hit" } else { "miss" };
    state
        .metrics
        .response_cache_lookups
        .get_or_create(&OutcomeLabel { outcome })
        .inc();
    crate::otel::cache_event("response", outcome);
    let hit = hit?;
    RequestStats::with(|s| s.response_cached.store(true, Ordering::Relaxed));
    let left = hit
        .expires_at
        .saturating_duration_since(tokio::time::Instant::now());
    Some((hit.body.clone(), left))
}

/// Every error gets a code and is counted; a response built from stale pages
/// says so in `extensions.stale`.
pub(crate) fn annotate(state: &AppState, response: &mut async_graphql::Response, facts: &Facts) {
    // Our resolver always sets a code; errors without one come from
    // async-graphql's parsing, validation and input coercion: bad input.
    for error in &mut response.errors {
        let ext = error.extensions.get_or_insert_with(Default::default);
        if ext.get("code").is_none() {
            ext.set("code", ErrorCode::BadUserInput.as_str());
        }
        if let Some(async_graphql::Value::String(code)) = ext.get("code") {
            state.metrics.graphql_error(code);
        }
    }
    if let Some(age) = facts.freshness.stale_age {
        let mut stale = async_graphql::indexmap::IndexMap::new();
        stale.insert(
            async_graphql::Name::new("ageSeconds"),
            async_graphql::Value::from(age.as_secs()),
        );
        stale.insert(
            async_graphql::Name::new("reason"),
            async_graphql::Value::from("the platform failed; some pages are older than their TTL"),
        );
        response
            .extensions
            .insert("stale".to_owned(), async_graphql::Value::Object(stale));
    }
}

/// How long a successful response stays fresh, and is cached: no longer
/// than its freshest-expiring page, nor past its pin bucket. A response with
/// a stale page has no freshness left, so it is not cached.
fn fresh_for(state: &AppState, bucket: DateTime<Utc>, facts: &Facts) -> Duration {
    let left_in_bucket = (bucket + state.limits.pin_granularity - Utc::now())
        .to_std()
        .unwrap_or(Duration::ZERO);
    facts
        .freshness
        .fresh_for
        .min(left_in_bucket)
        .min(state.responses.max_ttl())
}

fn respond(media: MediaType, status: StatusCode, body: Bytes) -> Response {
    (status, [(header::CONTENT_TYPE, media.content_type())], body).into_response()
}

/// `GET /graphql`: a WebSocket upgrade is a subscription connection; a
/// browser (`Accept: text/html`) gets the playground; any other GET is a
/// GraphQL query over HTTP, its parameters in the query string, answered
/// like a POST ([`answer`]) except that it may only run a query.
async fn get_graphql(State(state): State<Arc<AppState>>, request: Request) -> Response {
    if websocket::is_upgrade(request.headers()) {
        return websocket::upgrade(state, request).await;
    }
    let (parts, _body) = request.into_parts();
    let wants_html = parts
        .headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"));
    if wants_html {
        return match &state.playground {
            Some(p) => p.page(),
            None => error_response(
                StatusCode::NOT_FOUND,
                ErrorCode::BadUserInput,
                "the playground is switched off",
            ),
        };
    }
    let mut response = match graphql_http::negotiate(&parts.headers) {
        None => not_acceptable().into_response(&state.metrics, None),
        Some(media) => match admit(&state, &parts) {
            Err(refusal) => refusal.into_response(&state.metrics, Some(media)),
            Ok(client) => {
                let query = parts.uri.query().unwrap_or("");
                // A GET carries what a POST body may, no more.
                let limit = state.limits.max_body_bytes;
                if query.len() > limit {
                    Refusal::new(
                        StatusCode::URI_TOO_LONG,
                        ErrorCode::BadUserInput,
                        format!("the query string is larger than MAX_BODY_BYTES ({limit} bytes): send the request as a POST"),
                    )
                    .into_response(&state.metrics, Some(media))
                } else {
                    let raw = Bytes::copy_from_slice(query.as_bytes());
                    answer(&state, client, media, Form::QueryString, raw).await
                }
            }
        },
    };
    // Only what `answer` found cacheable says so; every refusal is no-store.
    let headers = response.headers_mut();
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    if let (Some(if_none_match), Some(etag)) = (
        parts.headers.get(header::IF_NONE_MATCH),
        response.headers().get(header::ETAG),
    ) && none_match(if_none_match, etag)
    {
        let mut not_modified = StatusCode::NOT_MODIFIED.into_response();
        for name in [header::ETAG, header::CACHE_CONTROL, header::VARY] {
            if let Some(value) = response.headers().get(&name) {
                not_modified.headers_mut().insert(name, value.clone());
            }
        }
        return not_modified;
    }
    response
}

async fn readyz(State(state): State<Arc<AppState>>) -> (StatusCode, &'static str) {
    if state.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}
