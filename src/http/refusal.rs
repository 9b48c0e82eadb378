//! One error type for everything refused before a document runs, whatever
//! door it came through: it knows its code, message and status, and renders
//! itself as an HTTP response (in the media type negotiated) or as a
//! `graphql-transport-ws` `error` message. Every refusal is counted once, as
//! it is rendered.

use axum::body::Bytes;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::error::ErrorCode;
use crate::graphql_http::MediaType;
use crate::telemetry::Metrics;

/// How a refusal's HTTP status is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    /// The same in every media type (401, 403, 413, 429, ...).
    Fixed(StatusCode),
    /// A well-formed request that cannot run (like a validation error): 200
    /// with `data: null` in `application/json`, 400 without `data` in
    /// `application/graphql-response+json` (GraphQL over HTTP).
    RequestError,
}

#[derive(Debug, Clone)]
pub struct Refusal {
    status: Status,
    code: ErrorCode,
    message: String,
    /// More of `extensions` than the code (the cost and its limit).
    extensions: Map<String, Value>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl Refusal {
    /// A refusal with a status of its own.
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status: Status::Fixed(status),
            code,
            message: message.into(),
            extensions: Map::new(),
            headers: Vec::new(),
        }
    }

    /// A well-formed request refused before it runs (see [`Status::RequestError`]).
    pub fn request_error(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status: Status::RequestError,
            ..Self::new(StatusCode::OK, code, message)
        }
    }

    /// A body or query string that is not a GraphQL request: 400 in both media types.
    pub fn malformed(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorCode::BadUserInput, message)
    }

    /// `RATE_LIMITED`, with `Retry-After`.
    pub fn rate_limited(message: impl Into<String>, retry_after_secs: u64) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            message,
        )
        .header(header::RETRY_AFTER, HeaderValue::from(retry_after_secs))
    }

    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    pub fn extension(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.extensions.insert(name.to_owned(), value.into());
        self
    }

    pub fn code(&self) -> ErrorCode {
        self.code
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    fn error(&self) -> Value {
        let mut extensions = self.extensions.clone();
        extensions.insert("code".into(), self.code.as_str().into());
        json!({ "message": self.message, "extensions": extensions })
    }

    /// The HTTP response, in `media` when one was negotiated (else JSON),
    /// counted in the error metrics.
    pub fn into_response(self, metrics: &Metrics, media: Option<MediaType>) -> Response {
        metrics.graphql_error(self.code.as_str());
        self.render(media)
    }

    /// The HTTP response, not counted: for what is not a GraphQL request at
    /// all (an unknown path, the playground switched off).
    pub fn render(self, media: Option<MediaType>) -> Response {
        let media = media.unwrap_or(MediaType::Json);
        let mut body = json!({ "errors": [self.error()] });
        let status = match self.status {
            Status::Fixed(status) => status,
            Status::RequestError => {
                if media == MediaType::Json {
                    body["data"] = Value::Null;
                }
                media.request_error_status()
            }
        };
        let mut response = (
            status,
            [(header::CONTENT_TYPE, media.content_type())],
            Bytes::from(body.to_string()),
        )
            .into_response();
        response.headers_mut().extend(self.headers);
        response
    }

    /// A GraphQL response carrying the refusal as a field error would be
    /// (`data: null`): a subscription's result.
    pub fn into_result(self, metrics: &Metrics) -> String {
        metrics.graphql_error(self.code.as_str());
        json!({ "data": null, "errors": [self.error()] }).to_string()
    }

    /// The `graphql-transport-ws` `error` message that ends subscription `id`.
    pub fn into_ws_error(self, metrics: &Metrics, id: &str) -> String {
        metrics.graphql_error(self.code.as_str());
        json!({ "id": id, "type": "error", "payload": [self.error()] }).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(r: Response) -> Value {
        let bytes = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn a_request_error_is_a_200_with_null_data_in_json_and_a_400_without_in_graphql_response()
    {
        let metrics = Metrics::new();
        let refusal = Refusal::request_error(ErrorCode::QueryTooExpensive, "too much")
            .extension("cost", 30)
            .extension("limit", 20);
        let json = refusal
            .clone()
            .into_response(&metrics, Some(MediaType::Json));
        assert_eq!(json.status(), StatusCode::OK);
        let json = body(json).await;
        assert_eq!(json["data"], Value::Null);
        assert_eq!(
            json["errors"][0]["extensions"]["code"],
            "QUERY_TOO_EXPENSIVE"
        );
        assert_eq!(json["errors"][0]["extensions"]["cost"], 30);
        let gr = refusal.into_response(&metrics, Some(MediaType::GraphQLResponse));
        assert_eq!(gr.status(), StatusCode::BAD_REQUEST);
        assert!(body(gr).await.get("data").is_none());
    }

    #[tokio::test]
    async fn a_rate_limit_says_when_to_come_back_over_http_and_websocket() {
        let metrics = Metrics::new();
        let refusal = Refusal::rate_limited("slow down", 3);
        let r = refusal.clone().into_response(&metrics, None);
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "3");
        let ws: Value = serde_json::from_str(&refusal.into_ws_error(&metrics, "7")).unwrap();
        assert_eq!(ws["id"], "7");
        assert_eq!(ws["type"], "error");
        assert_eq!(ws["payload"][0]["extensions"]["code"], "RATE_LIMITED");
    }
}
