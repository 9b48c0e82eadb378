//! What a hostile client can make the gateway hold (issue 20, SPEC §5b):
//! rate buckets by IPv6 /64, connections that never finish their headers,
//! and memory beyond the caches' byte bounds.

use serde_json::json;

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
