//! The binary and its environment: a bad variable is reported by name and
//! never panics; `schema` does not read settings at all.

use std::process::{Command, Output};

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_visits-gateway"))
        .args(args)
        // Only what the test sets: the developer's shell must not matter.
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("the binary runs")
}

#[test]
fn schema_ignores_settings_in_the_environment() {
    let out = run(
        &["schema"],
        &[
            ("MAX_PAGE_SIZE", "x"),
            ("INTROSPECTION_ENABLED", "false"),
            ("MAX_QUERY_DEPTH", "2"),
            ("TRUSTED_PROXIES", "nonsense"),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/schema/schema.graphql"
    ))
    .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), committed);
}

#[test]
fn serve_and_demo_name_a_bad_environment_variable_and_exit_non_zero() {
    let dir = crate::helpers::temp_dir();
    let bad_json = dir.join("bad.json");
    std::fs::write(&bad_json, "{ not json").unwrap();
    let wrong_id = dir.join("wrong-id.json");
    std::fs::write(
        &wrong_id,
        format!(r#"{{"{}": "{{ __typename }}"}}"#, "0".repeat(64)),
    )
    .unwrap();
    let (bad_json, wrong_id) = (bad_json.to_str().unwrap(), wrong_id.to_str().unwrap());
    for (command, name, value) in [
        // A trusted documents manifest is read and checked at start.
        (
            "serve",
            "PERSISTED_QUERIES_FILE",
            "/nonexistent/manifest.json",
        ),
        ("demo", "PERSISTED_QUERIES_FILE", bad_json),
        ("serve", "PERSISTED_QUERIES_FILE", wrong_id),
        ("demo", "PERSISTED_QUERIES_ONLY", "true"),
        ("serve", "MAX_PAGE_SIZE", "x"),
        ("demo", "MAX_PAGE_SIZE", "0"),
        ("serve", "UPSTREAM_TIMEOUT_MS", "0"),
        ("demo", "PIN_GRANULARITY_SECONDS", "3601"),
        ("serve", "NEGATIVE_CACHE_SECONDS", "-1"),
        ("demo", "UPSTREAM_MAX_BODY_BYTES", "1023"),
        ("serve", "MAX_PLATFORM_REQUESTS_PER_QUERY", "0"),
        ("demo", "TRUSTED_PROXIES", "10.0.0.0/8,10.0.0.0/33"),
        ("serve", "CLIENT_BURST", "many"),
        // Standard OpenTelemetry variables are checked too.
        ("demo", "OTEL_TRACES_EXPORTER", "zipkin"),
        ("demo", "OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        // Checked across settings, after parsing.
        ("demo", "DEFAULT_PAGE_SIZE", "200"),
        ("serve", "UPSTREAM_DEADLINE_MS", "20000"),
    ] {
        let out = run(&[command], &[(name, value)]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{command} {name}={value}: {stderr}"
        );
        assert!(stderr.contains(name), "{command} {name}={value}: {stderr}");
        assert!(
            !stderr.contains("panicked"),
            "{command} {name}={value}: {stderr}"
        );
    }
}
