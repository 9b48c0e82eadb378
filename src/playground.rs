//! The GraphiQL playground on `GET /graphql`, served entirely from the binary.
//!
//! `build.rs` takes GraphiQL 4 and React 18 (UMD builds) from the npm registry
//! at build time, pinned by `graphiql/package-lock.json`, and embeds them here
//! with the playground's own `graphiql/init.js` and `graphiql/playground.css`.
//! The page loads nothing from any other host, so it works offline and behind
//! a CSP that allows only the gateway's origin. Asset names carry a content
//! hash (`/playground/assets/graphiql.<hash>.min.js`) and are cached forever;
//! the page itself is revalidated on every load.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::fnv::fnv1a64;

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
    /// A second tab's query, which needs no variables: the statistics example.
    pub stats_query: String,
}

/// One embedded file under [`ASSET_PREFIX`].
pub(crate) struct Asset {
    /// The file name, with its content hash.
    pub name: &'static str,
    pub content_type: &'static str,
    pub bytes: &'static [u8],
}

// ASSETS, and the hashed names REACT_JS, REACT_DOM_JS, GRAPHIQL_JS,
// GRAPHIQL_CSS, PLAYGROUND_CSS and INIT_JS.
include!(concat!(env!("OUT_DIR"), "/playground_assets.rs"));

/// Where the assets are served.
pub const ASSET_PREFIX: &str = "/playground/assets/";

/// The page's policy: its own origin only. GraphiQL's stylesheet embeds its
/// fonts and icons as `data:` URLs; scripts and styles need nothing inline.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; font-src 'self' data:; connect-src 'self'; \
     object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// The cache policy of the content-hashed assets.
pub const IMMUTABLE: &str = "public, max-age=31536000, immutable";

pub struct Playground {
    html: Bytes,
}

impl Playground {
    pub fn new(defaults: &Defaults) -> Self {
        Self {
            html: Bytes::from(render(defaults)),
        }
    }

    /// The HTML page, with its headers.
    pub fn page(&self) -> Response {
        (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                (header::CACHE_CONTROL, "no-cache"),
                (header::REFERRER_POLICY, "no-referrer"),
                (header::X_FRAME_OPTIONS, "DENY"),
            ],
            self.html.clone(),
        )
            .into_response()
    }
}

/// Routes serving the page's static assets.
pub fn asset_routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route(&format!("{ASSET_PREFIX}{{name}}"), get(asset))
}

async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|a| a.name == name) {
        Some(a) => (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(a.content_type),
                ),
                (header::CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE)),
                (
                    header::X_CONTENT_TYPE_OPTIONS,
                    HeaderValue::from_static("nosniff"),
                ),
            ],
            Body::from(Bytes::from_static(a.bytes)),
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            [
                (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            "no such playground asset\n",
        )
            .into_response(),
    }
}

/// The page: GraphiQL's stylesheet and scripts, then `init.js`, which mounts
/// GraphiQL with the defaults from the JSON block. No inline script or style.
fn render(defaults: &Defaults) -> String {
    // The browser keys GraphiQL's saved state by this name of the defaults.
    let key = format!(
        "{:016x}",
        fnv1a64(
            [
                &defaults.query,
                &defaults.variables,
                &defaults.headers,
                &defaults.stats_query,
            ]
            .map(String::as_str)
            .join("\0")
            .as_bytes()
        )
    );
    let json = serde_json::json!({
        "query": defaults.query,
        "variables": defaults.variables,
        "headers": defaults.headers,
        "statsQuery": defaults.stats_query,
        "key": key,
    });
    let json = script_safe_json(&json.to_string());
    let p = ASSET_PREFIX;
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>visits-gateway · GraphiQL</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="{p}{GRAPHIQL_CSS}">
<link rel="stylesheet" href="{p}{PLAYGROUND_CSS}">
</head>
<body>
<div id="graphiql"><p class="playground-loading">Loading GraphiQL…</p></div>
<script type="application/json" id="playground-defaults">{json}</script>
<script src="{p}{REACT_JS}"></script>
<script src="{p}{REACT_DOM_JS}"></script>
<script src="{p}{GRAPHIQL_JS}"></script>
<script src="{p}{INIT_JS}"></script>
</body>
</html>
"#
    )
}

/// JSON that can stand inside `<script type="application/json">`: `<`, `>`
/// and `&` only occur in JSON strings, where `\u003c` and friends mean the same,
/// so neither `</script>` nor `<!--` can end or change the block.
fn script_safe_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults(query: &str) -> Defaults {
        Defaults {
            query: query.to_owned(),
            variables: r#"{"activityId":"10024069","last":10}"#.to_owned(),
            headers: "{}".to_owned(),
            stats_query: "{ userVisitStats(activityId: \"1\") { visits } }".to_owned(),
        }
    }

    /// The text of the defaults block, parsed.
    fn defaults_block(html: &str) -> serde_json::Value {
        let open = r#"<script type="application/json" id="playground-defaults">"#;
        let start = html.find(open).expect("the defaults block") + open.len();
        let end = start + html[start..].find("</script>").expect("its end");
        serde_json::from_str(&html[start..end]).expect("the block is JSON")
    }

    #[test]
    fn defaults_cannot_break_out_of_their_script_block() {
        let evil = "query { a } # </script><script>alert(1)</script> <!-- </SCRIPT> & \u{2028}";
        let mut d = defaults(evil);
        d.headers = r#"{"x":"</script><img src=x onerror=alert(1)>"}"#.to_owned();
        let html = render(&d);
        assert!(!html.contains("alert(1)</script>"));
        assert!(!html.contains("<img"));
        assert!(!html.contains("<!--"));
        // Five blocks open and five close: the defaults and the four scripts,
        // and nothing that the defaults brought.
        assert_eq!(html.matches("<script").count(), 5);
        assert_eq!(html.matches("</script>").count(), 5);
        let block = defaults_block(&html);
        assert_eq!(block["query"], evil);
        assert_eq!(block["headers"], d.headers);
        assert_eq!(block["variables"], d.variables);
    }

    #[test]
    fn the_page_has_no_inline_script_or_style_and_names_no_host() {
        let html = render(&defaults("{ __typename }"));
        assert!(!html.contains("style="));
        assert!(!html.contains("<style"));
        let lower = html.to_ascii_lowercase();
        for (at, _) in lower.match_indices(" on") {
            let name: String = lower[at + 1..]
                .chars()
                .take_while(char::is_ascii_alphabetic)
                .collect();
            assert!(
                !lower[at + 1 + name.len()..].starts_with('='),
                "event handler {name}"
            );
        }
        assert!(!html.contains("http:") && !html.contains("https:") && !html.contains("//"));
        for s in html.split("<script").skip(1) {
            let (attributes, rest) = s.split_once('>').unwrap();
            let body = &rest[..rest.find("</script>").unwrap()];
            assert!(
                attributes.contains("src=") && body.is_empty()
                    || attributes.contains(r#"type="application/json""#),
                "inline script: <script{attributes}>{body}"
            );
        }
    }

    #[test]
    fn the_page_references_every_embedded_asset() {
        let html = render(&defaults("{ __typename }"));
        for a in ASSETS {
            assert!(
                html.contains(&format!("\"{ASSET_PREFIX}{}\"", a.name)),
                "{}",
                a.name
            );
        }
    }

    #[test]
    fn asset_names_carry_a_content_hash() {
        for a in ASSETS {
            let hash = format!("{:016x}", fnv1a64(a.bytes));
            assert!(
                a.name.contains(&format!(".{hash}.")),
                "{} is not named by its hash {hash}",
                a.name
            );
            assert!(!a.bytes.is_empty());
        }
        let names: std::collections::HashSet<_> = ASSETS.iter().map(|a| a.name).collect();
        assert_eq!(names.len(), ASSETS.len());
    }

    #[test]
    fn the_state_key_follows_the_defaults() {
        let a = defaults_block(&render(&defaults("{ a }")));
        let b = defaults_block(&render(&defaults("{ b }")));
        assert_eq!(a["key"], defaults_block(&render(&defaults("{ a }")))["key"]);
        assert_ne!(a["key"], b["key"]);
    }

    #[test]
    fn script_safe_json_round_trips() {
        let value = serde_json::json!({ "q": "<>&\u{2028}\u{2029}</script>" });
        let safe = script_safe_json(&value.to_string());
        assert!(!safe.contains(['<', '>', '&', '\u{2028}', '\u{2029}']));
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&safe).unwrap(),
            value
        );
    }
}
