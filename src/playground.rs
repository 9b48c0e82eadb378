//! The GraphiQL playground on `GET /graphql`.
//! (Interim: async-graphql's CDN page; to be replaced by assets embedded in
//! the binary.)

use axum::Router;
use axum::response::{Html, IntoResponse, Response};

/// What the page opens with.
#[derive(Debug, Clone)]
pub struct Defaults {
    /// The example query shown in the editor.
    pub query: String,
    /// JSON of the example's variables.
    pub variables: String,
    /// JSON of the request headers pre-filled in the headers tab (`{}` when
    /// no auth is configured).
    pub headers: String,
}

pub struct Playground {
    html: String,
}

impl Playground {
    pub fn new(defaults: &Defaults) -> Self {
        let _ = defaults;
        Self {
            html: async_graphql::http::GraphiQLSource::build()
                .endpoint("/graphql")
                .finish(),
        }
    }

    /// The HTML page, with its headers.
    pub fn page(&self) -> Response {
        Html(self.html.clone()).into_response()
    }
}

/// Routes serving the page's static assets.
pub fn asset_routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
}
