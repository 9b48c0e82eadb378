//! What a hostile client can make the gateway hold (issue 20, SPEC §5b):
//! rate buckets by IPv6 /64, connections that never finish their headers,
//! and memory beyond the caches' byte bounds.

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
