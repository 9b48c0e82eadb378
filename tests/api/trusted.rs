//! Trusted documents: a manifest from Apollo's
//! `generate-persisted-query-manifest` or relay-compiler, operations named
//! by APQ hash, `documentId` or `doc_id` over POST and GET, and
//! `PERSISTED_QUERIES_ONLY`, in which nothing else runs: not over HTTP, not
//! over WebSocket, and never at the platform's expense.

use std::time::Duration;

use serde_json::{Value, json};
use visits_gateway::demo::{EXAMPLE_ACTIVITY, SMALL_ACTIVITY};

use crate::helpers::{TestApp, error_code, spawn_app_with, temp_dir};
use crate::live::{connect, init, next, send, started};
use crate::over_http::{GRAPHQL_RESPONSE, JSON, encode, get, post};

/// What Relay's default (MD5) id looks like; the gateway takes it as a name.
const RELAY_ID: &str = "3be4abb81fa595e25eb725b2c6a87508";

fn total_count() -> String {
    format!(
        "query TotalCount {{\n  userVisits(activityId: \"{EXAMPLE_ACTIVITY}\", last: 1) {{\n    totalCount\n  }}\n}}"
    )
}

const LIVE: &str =
    "subscription Live($id: ID!) {\n  userVisitAdded(activityId: $id) {\n    visitAt\n  }\n}";

fn sha256_hex(text: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// An Apollo manifest of `total_count()` and `LIVE`, as the generator writes it.
fn apollo_manifest() -> Value {
    json!({
        "format": "apollo-persisted-query-manifest",
        "version": 1,
        "operations": [
            { "id": sha256_hex(&total_count()), "name": "TotalCount", "type": "query", "body": total_count() },
            { "id": sha256_hex(LIVE), "name": "Live", "type": "subscription", "body": LIVE },
        ]
    })
}

fn relay_manifest() -> Value {
    json!({ RELAY_ID: total_count() })
}

/// A gateway with `manifest` in PERSISTED_QUERIES_FILE (read the way the
/// setting reads it), only its operations when `only`.
async fn app_with(manifest: &Value, only: bool) -> TestApp {
    let path = temp_dir().join("manifest.json");
    std::fs::write(&path, manifest.to_string()).unwrap();
    spawn_app_with(move |s| {
        s.upstream.live_poll = Duration::from_secs(1);
        s.server.persisted_queries_file = Some(path);
        s.server.persisted_queries_only = only;
    })
    .await
}

fn apq(hash: &str) -> Value {
    json!({ "persistedQuery": { "version": 1, "sha256Hash": hash } })
}

fn total_of(r: &Value) -> u64 {
    r["data"]["userVisits"]["totalCount"]
        .as_u64()
        .unwrap_or_else(|| panic!("no totalCount in {r}"))
}

#[tokio::test]
async fn an_apollo_manifest_runs_by_hash_and_document_id_over_post_and_get() {
    for only in [false, true] {
        let app = app_with(&apollo_manifest(), only).await;
        let hash = sha256_hex(&total_count());
        // Apollo Client's persisted query link: the hash alone, never
        // PERSISTED_QUERY_NOT_FOUND for a manifest operation.
        let (status, _, by_hash) = post(
            &app,
            GRAPHQL_RESPONSE,
            &json!({ "extensions": apq(&hash) }).to_string(),
        )
        .await;
        assert_eq!(status, 200, "{by_hash}");
        let total = total_of(&by_hash);
        let qs = format!("extensions={}", encode(&apq(&hash).to_string()));
        let (status, _, r) = get(&app, JSON, &qs).await;
        assert_eq!((status.as_u16(), total_of(&r)), (200, total), "{r}");
        // GraphQL over HTTP's persisted documents: `sha256:<hex>`.
        let id = format!("sha256:{hash}");
        let (status, _, r) = post(
            &app,
            JSON,
            &json!({ "documentId": id, "variables": {} }).to_string(),
        )
        .await;
        assert_eq!((status.as_u16(), total_of(&r)), (200, total), "{r}");
        let (status, _, r) = get(
            &app,
            GRAPHQL_RESPONSE,
            &format!("documentId={}", encode(&id)),
        )
        .await;
        assert_eq!((status.as_u16(), total_of(&r)), (200, total), "{r}");
        // An id the manifest does not have.
        let (status, _, r) = post(
            &app,
            GRAPHQL_RESPONSE,
            &json!({ "documentId": "sha256:".to_owned() + &sha256_hex("{ __typename }") })
                .to_string(),
        )
        .await;
        assert_eq!(
            (status.as_u16(), error_code(&r).as_str()),
            (400, "PERSISTED_QUERY_NOT_FOUND"),
            "{r}"
        );
        // A subscription of the manifest is not run by GET.
        let live = format!("documentId=sha256:{}", sha256_hex(LIVE));
        let (status, _, _) = get(&app, JSON, &live).await;
        assert_eq!(status, 405);
    }
}

#[tokio::test]
async fn a_relay_manifest_runs_by_doc_id_and_document_id_over_post_and_get() {
    for only in [false, true] {
        let app = app_with(&relay_manifest(), only).await;
        let mut totals = Vec::new();
        for body in [
            // What Relay's docs have the network layer send.
            json!({ "doc_id": RELAY_ID, "variables": {} }),
            json!({ "documentId": RELAY_ID }),
        ] {
            let (status, _, r) = post(&app, GRAPHQL_RESPONSE, &body.to_string()).await;
            assert_eq!(status, 200, "{r}");
            totals.push(total_of(&r));
        }
        for qs in [
            format!("doc_id={RELAY_ID}"),
            format!("documentId={RELAY_ID}"),
        ] {
            let (status, _, r) = get(&app, JSON, &qs).await;
            assert_eq!(status, 200, "{r}");
            totals.push(total_of(&r));
        }
        assert!(totals.windows(2).all(|w| w[0] == w[1]), "{totals:?}");
        // The document's SHA-256 names it too, whatever the manifest's id.
        let (status, _, r) = post(
            &app,
            JSON,
            &json!({ "extensions": apq(&sha256_hex(&total_count())) }).to_string(),
        )
        .await;
        assert_eq!((status.as_u16(), total_of(&r)), (200, totals[0]), "{r}");
        for (body, code) in [
            (json!({ "doc_id": "unknown" }), "PERSISTED_QUERY_NOT_FOUND"),
            // One name, not two; an id and a query text are not both sent.
            (
                json!({ "doc_id": RELAY_ID, "query": total_count() }),
                "BAD_USER_INPUT",
            ),
        ] {
            let (status, _, r) = post(&app, GRAPHQL_RESPONSE, &body.to_string()).await;
            assert_eq!(
                (status.as_u16(), error_code(&r).as_str()),
                (400, code),
                "{body}: {r}"
            );
        }
    }
}

#[tokio::test]
async fn without_only_mode_free_text_and_apq_still_run_beside_the_manifest() {
    let app = app_with(&relay_manifest(), false).await;
    let query = "{ __typename }";
    let (status, _, r) = post(&app, JSON, &json!({ "query": query }).to_string()).await;
    assert_eq!(
        (status.as_u16(), &r["data"]["__typename"]),
        (200, &json!("Query")),
        "{r}"
    );
    let hash = sha256_hex(query);
    let (status, _, r) = post(
        &app,
        JSON,
        &json!({ "query": query, "extensions": apq(&hash) }).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    let (status, _, r) = post(&app, JSON, &json!({ "extensions": apq(&hash) }).to_string()).await;
    assert_eq!(
        (status.as_u16(), &r["data"]["__typename"]),
        (200, &json!("Query")),
        "{r}"
    );
}

#[tokio::test]
async fn only_mode_refuses_free_text_apq_registration_and_introspection_at_no_platform_cost() {
    let app = app_with(&apollo_manifest(), true).await;
    let other = format!(r#"{{ userVisits(activityId: "{EXAMPLE_ACTIVITY}") {{ totalCount }} }}"#);
    let introspection = "{ __schema { queryType { name } } }";
    let register = json!({ "query": other, "extensions": apq(&sha256_hex(&other)) });
    for accept in [GRAPHQL_RESPONSE, JSON] {
        for body in [
            json!({ "query": other }),
            json!({ "query": introspection }),
            register.clone(),
        ] {
            let (status, content_type, r) = post(&app, accept, &body.to_string()).await;
            assert_eq!(
                (status.as_u16(), error_code(&r).as_str()),
                (403, "PERSISTED_QUERY_NOT_ALLOWED"),
                "{accept} {body}: {r}"
            );
            assert!(content_type.starts_with(accept), "{content_type}");
            assert!(r.get("data").is_none(), "{r}");
            let message = r["errors"][0]["message"].as_str().unwrap();
            assert!(message.contains("PERSISTED_QUERIES_ONLY"), "{message}");
        }
        let (status, _, r) = get(&app, accept, &format!("query={}", encode(&other))).await;
        assert_eq!(
            (status.as_u16(), error_code(&r).as_str()),
            (403, "PERSISTED_QUERY_NOT_ALLOWED"),
            "{r}"
        );
    }
    // The registration stored nothing.
    let (status, _, r) = post(
        &app,
        GRAPHQL_RESPONSE,
        &json!({ "extensions": apq(&sha256_hex(&other)) }).to_string(),
    )
    .await;
    assert_eq!(
        (status.as_u16(), error_code(&r).as_str()),
        (400, "PERSISTED_QUERY_NOT_FOUND"),
        "{r}"
    );
    assert_eq!(app.sim.request_count(), 0);
    let m = app.metrics().await;
    assert!(
        m.contains(r#"visits_gateway_graphql_errors_total{code="PERSISTED_QUERY_NOT_ALLOWED"} 8"#),
        "{m}"
    );
    // The manifest's own text is its operation, and runs.
    let (status, _, r) = post(&app, JSON, &json!({ "query": total_count() }).to_string()).await;
    assert_eq!(status, 200, "{r}");
    total_of(&r);
    assert!(app.sim.request_count() > 0);
}

#[tokio::test]
async fn only_mode_subscribes_to_manifest_operations_alone() {
    let app = app_with(&apollo_manifest(), true).await;
    let mut ws = connect(&app, None).await;
    init(&mut ws, json!({})).await;
    let variables = json!({ "id": SMALL_ACTIVITY.to_string() });
    let other = "subscription { userVisitAdded(activityId: \"1\") { visitAt nickname } }";
    send(
        &mut ws,
        json!({ "id": "free", "type": "subscribe", "payload": { "query": other, "variables": variables } }),
    )
    .await;
    // Refused by the admission pipeline before it runs: the protocol's
    // `error` message, which ends the subscription.
    let m = next(&mut ws, Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        (&m["id"], &m["type"]),
        (&json!("free"), &json!("error")),
        "{m}"
    );
    assert_eq!(
        m["payload"][0]["extensions"]["code"], "PERSISTED_QUERY_NOT_ALLOWED",
        "{m}"
    );
    assert_eq!(app.sim.request_count(), 0);
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(
            r#"visits_gateway_graphql_errors_total{code="PERSISTED_QUERY_NOT_ALLOWED"} 1"#
        ),
        "{metrics}"
    );

    // The manifest's subscription runs, sent as its text (what graphql-ws
    // clients send) or by its hash alone.
    let before = app.sim.request_count();
    send(
        &mut ws,
        json!({ "id": "text", "type": "subscribe", "payload": { "query": LIVE, "variables": variables } }),
    )
    .await;
    send(
        &mut ws,
        json!({ "id": "hash", "type": "subscribe", "payload": {
            "variables": variables, "extensions": apq(&sha256_hex(LIVE)) } }),
    )
    .await;
    started(&app, before, 1).await;
    let at = chrono::Utc::now();
    app.sim.add_visit(SMALL_ACTIVITY, at);
    let mut ids = Vec::new();
    for _ in 0..2 {
        let m = next(&mut ws, Duration::from_secs(5)).await.unwrap();
        assert_eq!(m["type"], "next", "{m}");
        assert!(
            m["payload"]["data"]["userVisitAdded"]["visitAt"].is_string(),
            "{m}"
        );
        ids.push(m["id"].as_str().unwrap().to_owned());
    }
    ids.sort();
    assert_eq!(ids, ["hash", "text"]);
}
