use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use visits_gateway::app::App;
use visits_gateway::auth::keys::hash_key;
use visits_gateway::config::Settings;
use visits_gateway::demo::{EXAMPLE_ACTIVITY, SMALL_ACTIVITY};
use visits_gateway::secret::{Secret, TokenSource};

use crate::helpers::{TestApp, USER_VISITS, error_code, keys_line, logs, spawn_app_with, temp_dir};

/// POSTs `userVisits` for `activity` with an optional bearer credential.
async fn ask(app: &TestApp, bearer: Option<&str>, activity: u64) -> (u16, Value) {
    let mut req = app.http.post(app.url("/graphql")).json(
        &json!({ "query": USER_VISITS, "variables": { "id": activity.to_string(), "first": 3 } }),
    );
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    assert!(!text.contains(&app.token));
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}")),
    )
}

const WEB_KEY: &str = "vgk_web_0123456789abcdef";
const OPS_KEY: &str = "vgk_ops_fedcba9876543210";

async fn keyed_app() -> (TestApp, PathBuf) {
    let dir = temp_dir();
    let file = dir.join("api-keys");
    std::fs::write(
        &file,
        format!(
            "# test keys\n{}{}",
            keys_line("web", WEB_KEY, &EXAMPLE_ACTIVITY.to_string()),
            keys_line("ops", OPS_KEY, "*")
        ),
    )
    .unwrap();
    let f = file.clone();
    let app = spawn_app_with(move |s| {
        s.client.allow_unauthenticated = false;
        s.client.api_keys_file = Some(f);
        s.client.secrets_reload = Duration::from_secs(1);
    })
    .await;
    (app, file)
}

#[tokio::test]
async fn serve_refuses_to_start_without_client_authentication() {
    let settings = Settings::defaults();
    let Err(e) = App::build(&settings, TokenSource::fixed(Secret::new("t")), None) else {
        panic!("an open gateway was built without ALLOW_UNAUTHENTICATED");
    };
    assert!(
        e.contains("API_KEYS_FILE") && e.contains("ALLOW_UNAUTHENTICATED=true"),
        "{e}"
    );
}

#[tokio::test]
async fn api_keys_let_in_only_their_activities_and_nothing_reaches_the_platform_otherwise() {
    let (app, _) = keyed_app().await;
    let (status, body) = ask(&app, None, EXAMPLE_ACTIVITY).await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (401, "UNAUTHENTICATED"),
        "{body}"
    );
    let (status, body) = ask(&app, Some("vgk_wrong"), EXAMPLE_ACTIVITY).await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (401, "UNAUTHENTICATED"),
        "{body}"
    );
    let (status, body) = ask(
        &app,
        Some(&hex::encode(hash_key(WEB_KEY))),
        EXAMPLE_ACTIVITY,
    )
    .await;
    assert_eq!(status, 401, "the stored hash is not a key: {body}");
    let (status, body) = ask(&app, Some(WEB_KEY), SMALL_ACTIVITY).await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (200, "FORBIDDEN"),
        "{body}"
    );
    assert_eq!(
        app.sim.request_count(),
        0,
        "a refused client reached the platform"
    );

    let (status, body) = ask(&app, Some(WEB_KEY), EXAMPLE_ACTIVITY).await;
    assert_eq!(status, 200);
    assert!(body["errors"].is_null(), "{body}");
    let (_, body) = ask(&app, Some(OPS_KEY), SMALL_ACTIVITY).await;
    assert!(body["errors"].is_null(), "{body}");
    // The client's credential never travels upstream.
    for seen in app.sim.seen() {
        assert_eq!(
            seen.authorization.as_deref(),
            Some(format!("Bearer {}", app.token).as_str())
        );
    }
}

#[tokio::test]
async fn a_rotated_keys_file_applies_without_restart() {
    let (app, file) = keyed_app().await;
    assert_eq!(ask(&app, Some(WEB_KEY), EXAMPLE_ACTIVITY).await.0, 200);
    let new_key = "vgk_web_rotated_42";
    // Like a Secret volume: write a new file and swap it in atomically.
    let tmp = file.with_extension("new");
    std::fs::write(&tmp, keys_line("web", new_key, "*")).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    assert!(
        accepted_eventually(&app, new_key).await,
        "the new key was never accepted"
    );
    assert_eq!(
        ask(&app, Some(WEB_KEY), EXAMPLE_ACTIVITY).await.0,
        401,
        "the old key still works"
    );
}

#[tokio::test]
async fn a_rotated_jwt_secret_applies_without_restart() {
    let (app, file) = jwt_app_with_file().await;
    let signed = |secret: &str| hs256(&claims(now_secs() + 600, json!("*")), secret.as_bytes());
    assert_eq!(
        ask(&app, Some(&signed(HS_SECRET)), EXAMPLE_ACTIVITY)
            .await
            .0,
        200
    );

    // A secret too short is refused on reload: the current one stays.
    let tmp = file.with_extension("new");
    std::fs::write(&tmp, "short").unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    // The reload ran and refused it, for this test's file (the log buffer is
    // the whole test binary's).
    let file_field = format!("\"file\":\"{}\"", file.display());
    let refused = || {
        crate::helpers::logs()
            .lines()
            .any(|l| l.contains(&file_field) && l.contains("the secret must be at least 32 bytes"))
    };
    for _ in 0..50 {
        if refused() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refused(), "no reload refused the short secret");
    assert_eq!(
        ask(&app, Some(&signed(HS_SECRET)), EXAMPLE_ACTIVITY)
            .await
            .0,
        200
    );

    let rotated = "another-long-hs256-secret-after-rotation-987654321";
    std::fs::write(&tmp, rotated).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    assert!(
        accepted_eventually(&app, &signed(rotated)).await,
        "a token signed with the new secret was never accepted"
    );
    let (status, body) = ask(&app, Some(&signed(HS_SECRET)), EXAMPLE_ACTIVITY).await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (401, "UNAUTHENTICATED"),
        "{body}"
    );
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub(crate) const HS_SECRET: &str = "a-very-long-hs256-secret-for-the-tests-0123456789";

pub(crate) async fn jwt_app() -> TestApp {
    jwt_app_with_file().await.0
}

/// A gateway taking HS256 JWTs signed with `HS_SECRET`, from a file it
/// re-reads every second; the file's path to rotate it.
async fn jwt_app_with_file() -> (TestApp, PathBuf) {
    let secret = temp_dir().join("jwt-secret");
    std::fs::write(&secret, format!("{HS_SECRET}\n")).unwrap();
    let file = secret.clone();
    let app = spawn_app_with(move |s| {
        s.client.allow_unauthenticated = false;
        s.client.jwt_hs256_secret_file = Some(secret);
        s.client.jwt_issuer = Some("https://auth.example.com".into());
        s.client.jwt_audience = Some("visits-gateway".into());
        s.client.secrets_reload = Duration::from_secs(1);
    })
    .await;
    (app, file)
}

/// Asks every 200 ms, for up to 10 s, until `bearer` is let in.
async fn accepted_eventually(app: &TestApp, bearer: &str) -> bool {
    for _ in 0..50 {
        if ask(app, Some(bearer), EXAMPLE_ACTIVITY).await.0 == 200 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

pub(crate) fn hs256(claims: &Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

pub(crate) fn claims(exp: u64, activities: Value) -> Value {
    json!({ "sub": "frontend-1", "exp": exp, "iss": "https://auth.example.com", "aud": "visits-gateway", "activities": activities })
}

#[tokio::test]
async fn jwts_are_checked_for_signature_expiry_issuer_audience_and_scope() {
    let app = jwt_app().await;
    let scoped = hs256(
        &claims(now_secs() + 600, json!([EXAMPLE_ACTIVITY.to_string()])),
        HS_SECRET.as_bytes(),
    );
    let (status, body) = ask(&app, Some(&scoped), EXAMPLE_ACTIVITY).await;
    assert_eq!(status, 200);
    assert!(body["errors"].is_null(), "{body}");
    let (_, body) = ask(&app, Some(&scoped), SMALL_ACTIVITY).await;
    assert_eq!(error_code(&body), "FORBIDDEN");
    let all = hs256(&claims(now_secs() + 600, json!("*")), HS_SECRET.as_bytes());
    assert!(ask(&app, Some(&all), SMALL_ACTIVITY).await.1["errors"].is_null());

    let expired = hs256(&claims(now_secs() - 3600, json!("*")), HS_SECRET.as_bytes());
    let wrong_signature = hs256(
        &claims(now_secs() + 600, json!("*")),
        b"another-secret-that-is-also-long-enough!!",
    );
    let mut other_issuer = claims(now_secs() + 600, json!("*"));
    other_issuer["iss"] = json!("https://evil.example.com");
    let mut no_exp = claims(0, json!("*"));
    no_exp.as_object_mut().unwrap().remove("exp");
    // `alg: none`: a header and claims with an empty signature.
    let b64 = |v: &Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let none = format!(
        "{}.{}.",
        b64(&json!({ "alg": "none", "typ": "JWT" })),
        b64(&claims(now_secs() + 600, json!("*")))
    );
    for (name, token, hint) in [
        ("expired", expired, "expired"),
        ("wrong signature", wrong_signature, "not valid"),
        (
            "other issuer",
            hs256(&other_issuer, HS_SECRET.as_bytes()),
            "issuer",
        ),
        ("no exp", hs256(&no_exp, HS_SECRET.as_bytes()), "claim"),
        ("alg none", none, "not valid"),
    ] {
        let (status, body) = ask(&app, Some(&token), EXAMPLE_ACTIVITY).await;
        assert_eq!(
            (status, error_code(&body).as_str()),
            (401, "UNAUTHENTICATED"),
            "{name}: {body}"
        );
        assert!(
            body["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains(hint),
            "{name}: {body}"
        );
    }
    assert_eq!(
        app.sim.request_count(),
        2,
        "only the two allowed queries reached the platform"
    );
}

#[tokio::test]
async fn es256_jwts_verify_and_an_hs256_token_signed_with_the_public_key_does_not() {
    let dir = temp_dir();
    let private = dir.join("ec.pem");
    let public = dir.join("ec.pub.pem");
    let ok = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
        ])
        .arg(&private)
        .status()
        .expect("openssl is installed (CI installs it)");
    assert!(ok.success());
    let ok = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public)
        .status()
        .unwrap();
    assert!(ok.success());
    let public_pem = std::fs::read(&public).unwrap();
    let pubfile = public.clone();
    let app = spawn_app_with(move |s| {
        s.client.allow_unauthenticated = false;
        s.client.jwt_public_key_file = Some(pubfile);
    })
    .await;
    let claims = json!({ "sub": "svc", "exp": now_secs() + 600, "activities": [EXAMPLE_ACTIVITY] });
    let key = EncodingKey::from_ec_pem(&std::fs::read(&private).unwrap()).unwrap();
    let good = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &key).unwrap();
    let (status, body) = ask(&app, Some(&good), EXAMPLE_ACTIVITY).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["errors"].is_null(), "{body}");
    let confused = hs256(&claims, &public_pem);
    let (status, body) = ask(&app, Some(&confused), EXAMPLE_ACTIVITY).await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (401, "UNAUTHENTICATED"),
        "{body}"
    );
}

#[tokio::test]
async fn a_client_over_its_rate_gets_rate_limited_with_retry_after() {
    let app = spawn_app_with(|s| {
        s.client.rate_per_second = 1;
        s.client.burst = 3;
    })
    .await;
    for _ in 0..3 {
        assert_eq!(ask(&app, None, SMALL_ACTIVITY).await.0, 200);
    }
    let r = app
        .http
        .post(app.url("/graphql"))
        .json(&json!({ "query": "{ __typename }" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().get("retry-after").is_some());
    let body: Value = r.json().await.unwrap();
    assert_eq!(error_code(&body), "RATE_LIMITED");
}

#[tokio::test]
async fn oversized_bodies_and_expensive_queries_are_refused() {
    let app = spawn_app_with(|s| s.server.max_body_bytes = 4096).await;
    let big = json!({ "query": format!("{{ __typename }} # {}", "x".repeat(5000)) });
    let r = app
        .http
        .post(app.url("/graphql"))
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(error_code(&r.json().await.unwrap()), "BAD_USER_INPUT");

    let fields = "userId isAnonymous anonymousId nickname avatar province city visitAt lastOnlineAt durationMinutes referer userAgent device partnerUid invitedBy";
    let aliases: String = (0..8)
        .map(|i| format!("a{i}: userVisits(activityId: \"{SMALL_ACTIVITY}\") {{ totalCount edges {{ cursor node {{ {fields} }} }} nodes {{ {fields} }} }}\n"))
        .collect();
    let r = app.graphql(&format!("{{ {aliases} }}"), json!({})).await;
    assert_eq!(error_code(&r), "QUERY_TOO_EXPENSIVE", "{r}");
    assert_eq!(
        r["errors"][0]["extensions"]["cost"], 24,
        "8 x 3 pages at worst"
    );
    assert_eq!(r["errors"][0]["extensions"]["limit"], 16);
    // Complexity is bounded whatever the fields: 60 aliases of a cheap one.
    let types: String = (0..60)
        .map(|i| format!("t{i}:__type(name:\"UserVisit\"){{fields{{name type{{name}}}}}} "))
        .collect();
    let r = app.graphql(&format!("{{ {types} }}"), json!({})).await;
    assert_eq!(error_code(&r), "BAD_USER_INPUT", "{r}");
    assert!(
        r["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("complex"),
        "{r}"
    );
    assert_eq!(app.sim.request_count(), 0);
}

#[tokio::test]
async fn cors_answers_only_the_allowed_origins() {
    let app =
        spawn_app_with(|s| s.server.cors_allowed_origins = vec!["https://app.example.com".into()])
            .await;
    let preflight = |origin: &'static str| {
        app.http
            .request(reqwest::Method::OPTIONS, app.url("/graphql"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "content-type,authorization",
            )
            .send()
    };
    let ok = preflight("https://app.example.com").await.unwrap();
    assert_eq!(
        ok.headers().get("access-control-allow-origin").unwrap(),
        "https://app.example.com"
    );
    let other = preflight("https://evil.example.com").await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn introspection_and_the_playground_can_be_switched_off() {
    let app = spawn_app_with(|s| {
        s.server.introspection_enabled = false;
        s.server.playground_enabled = false;
    })
    .await;
    // async-graphql answers introspection with null when it is off.
    let r = app
        .graphql("{ __schema { types { name } } }", json!({}))
        .await;
    assert_eq!(r["data"]["__schema"], Value::Null, "{r}");
    let r = app
        .graphql(
            "{ __type(name: \"UserVisit\") { fields { name } } }",
            json!({}),
        )
        .await;
    assert_eq!(r["data"]["__type"], Value::Null, "{r}");
    let page = app
        .http
        .get(app.url("/graphql"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 404);
}

#[tokio::test]
async fn no_platform_token_or_client_credential_appears_in_any_log_line() {
    let (app, _) = keyed_app().await;
    let jwt = jwt_app().await;
    let token = hs256(&claims(now_secs() + 600, json!("*")), HS_SECRET.as_bytes());
    let expired = hs256(&claims(now_secs() - 600, json!("*")), HS_SECRET.as_bytes());
    // The whole scenario: allowed, refused, forbidden, failing upstream.
    ask(&app, Some(WEB_KEY), EXAMPLE_ACTIVITY).await;
    ask(&app, Some(WEB_KEY), SMALL_ACTIVITY).await;
    ask(&app, Some("vgk_not_a_key"), EXAMPLE_ACTIVITY).await;
    ask(&app, None, EXAMPLE_ACTIVITY).await;
    app.sim
        .push_fault(visits_gateway::demo::Fault::Status(500, "boom".into()));
    ask(&app, Some(OPS_KEY), SMALL_ACTIVITY).await;
    ask(&jwt, Some(&token), EXAMPLE_ACTIVITY).await;
    ask(&jwt, Some(&expired), EXAMPLE_ACTIVITY).await;
    let logs = logs();
    for secret in [
        app.token.as_str(),
        jwt.token.as_str(),
        WEB_KEY,
        OPS_KEY,
        "vgk_not_a_key",
        HS_SECRET,
        &token,
        &expired,
    ] {
        assert!(!logs.contains(secret), "a secret leaked into the logs");
    }
}
