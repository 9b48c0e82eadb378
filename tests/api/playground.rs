//! The GraphiQL playground is served entirely by the gateway: the page, and
//! every script, stylesheet and font it needs, with no other host named.

use reqwest::StatusCode;
use reqwest::header::{ACCEPT, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, LOCATION};

use crate::helpers::{TestApp, spawn_app};

const BROWSER_ACCEPT: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";

async fn page(app: &TestApp) -> reqwest::Response {
    app.http
        .get(app.url("/graphql"))
        .header(ACCEPT, BROWSER_ACCEPT)
        .send()
        .await
        .unwrap()
}

fn header(response: &reqwest::Response, name: impl reqwest::header::AsHeaderName) -> &str {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap())
        .unwrap_or("")
}

/// The values of every `src="..."` and `href="..."` attribute in the page.
fn references(html: &str) -> Vec<String> {
    let mut found = Vec::new();
    for attribute in [" src=", " href="] {
        for (at, _) in html.match_indices(attribute) {
            let rest = &html[at + attribute.len()..];
            let quote = rest.chars().next().unwrap();
            assert!(
                quote == '"' || quote == '\'',
                "unquoted attribute at {}",
                &rest[..20]
            );
            let end = rest[1..].find(quote).unwrap();
            found.push(rest[1..1 + end].to_owned());
        }
    }
    found
}

#[tokio::test]
async fn the_page_is_html_with_a_strict_csp() {
    let app = spawn_app().await;
    let response = page(&app).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(header(&response, CONTENT_TYPE).starts_with("text/html"));
    assert_eq!(header(&response, CACHE_CONTROL), "no-cache");
    assert_eq!(header(&response, "x-content-type-options"), "nosniff");
    let csp = header(&response, CONTENT_SECURITY_POLICY).to_owned();
    for directive in [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "font-src 'self' data:",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ] {
        assert!(csp.contains(directive), "CSP {csp:?} lacks {directive:?}");
    }
    assert!(!csp.contains("unsafe"), "CSP {csp:?}");
    assert!(!csp.contains("http") && !csp.contains('*'), "CSP {csp:?}");

    let html = response.text().await.unwrap();
    assert!(html.contains("<div id=\"graphiql\">"), "{html}");
    // The example query, for an activity that exists.
    assert!(html.contains("userVisits"), "{html}");
    // And the statistics example, for a second tab.
    assert!(html.contains("userVisitStats"), "{html}");
    assert!(html.contains("10024069"), "{html}");
}

#[tokio::test]
async fn every_asset_the_page_references_is_served_and_cached_forever() {
    let app = spawn_app().await;
    let html = page(&app).await.text().await.unwrap();

    // No other host: no absolute or scheme-relative URL anywhere in the page.
    for needle in ["http:", "https:", "//"] {
        assert!(!html.contains(needle), "the page names {needle:?}:\n{html}");
    }

    let references = references(&html);
    let mut scripts = 0;
    let mut stylesheets = 0;
    for reference in &references {
        if reference.starts_with("data:") {
            continue;
        }
        assert!(
            reference.starts_with("/playground/assets/"),
            "{reference} is not one of the gateway's assets"
        );
        let response = app.http.get(app.url(reference)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{reference}");
        let content_type = header(&response, CONTENT_TYPE).to_owned();
        if reference.ends_with(".js") {
            assert_eq!(
                content_type, "text/javascript; charset=utf-8",
                "{reference}"
            );
            scripts += 1;
        } else if reference.ends_with(".css") {
            assert_eq!(content_type, "text/css; charset=utf-8", "{reference}");
            stylesheets += 1;
        } else {
            panic!("{reference}: an asset of an unexpected kind");
        }
        assert_eq!(
            header(&response, CACHE_CONTROL),
            "public, max-age=31536000, immutable",
            "{reference}"
        );
        assert_eq!(header(&response, "x-content-type-options"), "nosniff");
        let body = response.bytes().await.unwrap();
        assert!(!body.is_empty(), "{reference} is empty");
        if reference.ends_with(".css") {
            // Fonts and icons are data: URLs inside the stylesheets.
            let css = String::from_utf8_lossy(&body);
            for (at, _) in css.match_indices("url(") {
                let target = css[at + 4..].trim_start_matches(['"', '\'']);
                assert!(
                    target.starts_with("data:"),
                    "{reference}: url({})",
                    &target[..40]
                );
            }
        }
    }
    // React, ReactDOM, GraphiQL and the page's own script; GraphiQL's
    // stylesheet and the page's own.
    assert_eq!(scripts, 4, "{references:?}");
    assert_eq!(stylesheets, 2, "{references:?}");
    // Each name carries a content hash.
    assert!(
        references
            .iter()
            .any(|r| r.starts_with("/playground/assets/graphiql.") && r.ends_with(".min.js")),
        "{references:?}"
    );
}

#[tokio::test]
async fn an_unknown_asset_is_not_found() {
    let app = spawn_app().await;
    for path in [
        "/playground/assets/graphiql.0000000000000000.min.js",
        "/playground/assets/graphiql.min.js",
        "/playground/assets/..%2FCargo.toml",
        "/playground/assets/",
    ] {
        let response = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
    }
}

#[tokio::test]
async fn the_root_redirects_to_the_playground() {
    let app = spawn_app().await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = client
        .get(app.url("/"))
        .header(ACCEPT, BROWSER_ACCEPT)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_redirection(), "{}", response.status());
    assert_eq!(header(&response, LOCATION), "/graphql");
}
