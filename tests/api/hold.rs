//! What a hostile client can make the gateway hold (docs/security.md):
//! rate buckets by IPv6 /64, connections that never finish their headers
//! or their body, and memory beyond the caches' byte bounds.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::spawn_app_with;

#[tokio::test]
async fn anonymous_ipv6_clients_share_the_bucket_of_their_64() {
    let app = spawn_app_with(|s| {
        s.client.rate_per_second = 1;
        s.client.burst = 2;
        // The tests connect from 127.0.0.1: that is the proxy.
        s.client.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    let status = |xff: &'static str| {
        let request = app
            .http
            .post(app.url("/graphql"))
            .header("x-forwarded-for", xff)
            .json(&json!({ "query": "{ __typename }" }));
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status("2001:db8:1:2::1").await, 200);
    assert_eq!(status("2001:db8:1:2:aaaa::2").await, 200);
    assert_eq!(
        status("2001:db8:1:2:ffff:ffff:ffff:3").await,
        429,
        "a new address in the same /64 is the same client"
    );
    assert_eq!(
        status("2001:db8:1:3::1").await,
        200,
        "another /64 is another client"
    );
}

/// Reads until the server closes the connection; what it sent, and when.
async fn until_closed(stream: &mut TcpStream, within: Duration) -> (String, Duration) {
    let start = Instant::now();
    let mut got = Vec::new();
    tokio::time::timeout(within, stream.read_to_end(&mut got))
        .await
        .expect("the server closes the connection")
        .ok();
    (String::from_utf8_lossy(&got).into_owned(), start.elapsed())
}

#[tokio::test]
async fn a_connection_that_does_not_finish_its_headers_in_time_is_closed() {
    let app = spawn_app_with(|s| s.server.header_read_timeout = Duration::from_secs(1)).await;
    // Half a request line.
    let mut half = TcpStream::connect(app.addr).await.unwrap();
    half.write_all(b"GET /healt").await.unwrap();
    // Nothing at all.
    let mut silent = TcpStream::connect(app.addr).await.unwrap();
    // A request's headers, then an idle keep-alive connection.
    let mut idle = TcpStream::connect(app.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    for (stream, what) in [
        (&mut half, "half"),
        (&mut silent, "silent"),
        (&mut idle, "idle"),
    ] {
        let (got, after) = until_closed(stream, Duration::from_secs(10)).await;
        assert!(
            after < Duration::from_secs(5),
            "{what}: closed after {after:?}"
        );
        if what == "idle" {
            assert!(got.starts_with("HTTP/1.1 200"), "{got}");
        }
    }
    // A connection that sends its request in time is served.
    assert_eq!(app.status("/healthz").await, 200);
}

#[tokio::test]
async fn a_request_that_does_not_finish_its_body_in_time_gets_408_and_is_closed() {
    let app = spawn_app_with(|s| s.server.body_read_timeout = Duration::from_secs(1)).await;
    // A JSON request, a streamed subscription (and APQ rides either body).
    for accept in ["application/json", "text/event-stream"] {
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        let head = format!(
            "POST /graphql HTTP/1.1\r\nHost: x\r\nAccept: {accept}\r\n\
             Content-Type: application/json\r\nContent-Length: 200\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        // 9 of the 200 bytes announced, then nothing.
        stream.write_all(b"{\"query\":").await.unwrap();
        let (got, after) = until_closed(&mut stream, Duration::from_secs(10)).await;
        assert!(
            after < Duration::from_secs(5),
            "{accept}: closed after {after:?}"
        );
        assert!(got.starts_with("HTTP/1.1 408"), "{accept}: {got}");
        let body = got.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let body: serde_json::Value = serde_json::from_str(body).expect("a JSON body");
        assert_eq!(
            body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
            "{accept}: {body}"
        );
    }
    // A body sent in time is read.
    let r = app.graphql("{ __typename }", json!({})).await;
    assert!(r["errors"].is_null(), "{r}");
}

/// VmRSS of `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status");
    kb * 1024
}

/// Kills the binary when the test ends, however it ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_shape_makes_the_caches_hold_more_than_their_bounds() {
    const RESPONSE_CACHE: u64 = 1 << 20;
    // The parsed documents' and persisted queries' caches: 8 MiB each, fixed.
    const BOUNDS: u64 = RESPONSE_CACHE + (16 << 20);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_visits-gateway"))
            .arg("demo")
            .env_clear()
            .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env("RESPONSE_CACHE_MAX_BYTES", RESPONSE_CACHE.to_string())
            .env("CACHE_MAX_BYTES", "1048576")
            .env("STATS_CACHE_MAX_BYTES", "1048576")
            .env("CLIENT_RATE_PER_SECOND", "1000000")
            .env("CLIENT_BURST", "1000000")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("the binary starts"),
    );
    let pid = child.0.id();
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/graphql");
    let post = |body: String, padding: usize| {
        let mut request = http
            .post(&url)
            .header("content-type", "application/json")
            .body(body);
        for i in 0..padding {
            request = request.header(format!("x-pad-{i}"), "p".repeat(8 * 1024));
        }
        async move { request.send().await.unwrap().text().await.unwrap() }
    };
    // Up to a minute: a debug build generating the demo's data on two busy
    // cores (the rest of the suite runs beside it) takes a while.
    let mut up = false;
    for _ in 0..600 {
        if http
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
            .is_ok()
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "the demo gateway answers");
    // Warm up: every path once, then the baseline.
    for i in 0..20 {
        post(
            json!({ "query": format!("{{ w{i}: __typename }}") }).to_string(),
            1,
        )
        .await;
    }
    let before = rss(pid);
    // Distinct documents of 5,000 tiny selections (10 KB; 1.7 MB parsed).
    for i in 0..120 {
        let query = format!("{{ x{i}: a {} }}", "a ".repeat(4_980));
        post(json!({ "query": query }).to_string(), 0).await;
    }
    // Cacheable POSTs carrying 300 KB of headers each.
    for i in 0..300 {
        let body = post(
            json!({ "query": "{ __typename }", "variables": { "n": i } }).to_string(),
            37,
        )
        .await;
        assert!(body.contains("__typename"), "{body}");
    }
    // Aliased fields, each document distinct.
    for i in 0..100 {
        let query = format!(
            "{{ {} }}",
            (0..1_200)
                .map(|j| format!("f{i}x{j}: __typename"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        post(json!({ "query": query }).to_string(), 0).await;
    }
    let grown = rss(pid).saturating_sub(before);
    println!(
        "RSS grew by {} MiB (bounds {} MiB)",
        grown >> 20,
        BOUNDS >> 20
    );
    // Twice the bounds, and room for the allocator's arenas and slack.
    assert!(
        grown < 2 * BOUNDS + (24 << 20),
        "RSS grew by {} MiB with {} MiB of cache bounds",
        grown >> 20,
        BOUNDS >> 20
    );
}
