//! The HTTP surface of SPEC §6: GraphQL over POST, the playground, probes.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use serde_json::json;

use crate::app::AppState;
use crate::error::ErrorCode;

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/graphql", get(playground).post(graphql))
        .route("/", get(|| async { Redirect::temporary("/graphql") }))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .merge(crate::playground::asset_routes())
        .with_state(state)
}

/// A GraphQL error body for failures that happen before execution.
pub fn error_response(status: StatusCode, code: ErrorCode, message: &str) -> Response {
    let body =
        json!({ "errors": [{ "message": message, "extensions": { "code": code.as_str() } }] });
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn graphql(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let request: async_graphql::Request = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            let message =
                format!("the body must be a JSON GraphQL request {{\"query\": ...}}: {e}");
            return error_response(StatusCode::BAD_REQUEST, ErrorCode::BadUserInput, &message);
        }
    };
    let mut response = state.schema.execute(request).await;
    // Our resolver always sets a code; errors without one come from
    // async-graphql's parsing, validation and input coercion: bad input.
    for error in &mut response.errors {
        let ext = error.extensions.get_or_insert_with(Default::default);
        if ext.get("code").is_none() {
            ext.set("code", ErrorCode::BadUserInput.as_str());
        }
    }
    match serde_json::to_vec(&response) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot serialise a GraphQL response");
            error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal,
                "internal error",
            )
        }
    }
}

/// GraphiQL for browsers; other clients are told to POST.
async fn playground(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let wants_html = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"));
    match &state.playground {
        Some(p) if wants_html => p.page(),
        Some(_) => error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::BadUserInput,
            "send GraphQL requests with POST; GET /graphql serves the playground to browsers",
        ),
        None => error_response(
            StatusCode::NOT_FOUND,
            ErrorCode::BadUserInput,
            "the playground is switched off",
        ),
    }
}

async fn readyz(State(state): State<Arc<AppState>>) -> (StatusCode, &'static str) {
    if state.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}
