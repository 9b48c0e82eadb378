//! visits-gateway: a GraphQL gateway in front of a live-streaming platform's
//! "user visits of an activity" REST report.
//!
//! # Layout
//! The data path, top to bottom:
//! - [`http`]: the HTTP surface (`POST` and `GET /graphql`, probes), reading
//!   requests as [`graphql_http`] says; [`playground`]: GraphiQL.
//! - [`live`]: `userVisitAdded` subscriptions over WebSocket, one poller per activity.
//! - [`response_cache`]: whole responses of repeated queries (the hot path).
//! - [`graphql`]: the schema and the `userVisits` resolver, cursors, scalars.
//! - [`paging`]: pure rules: ranges, pinning, 7-day windows, slices, pages.
//! - [`visits`]: runs a paging plan against the page cache; [`stats`]: the
//!   statistics of a range, from the same pages.
//! - [`cache`]: the moka page cache with coalescing and TTL by window age.
//! - [`upstream`]: the platform's REST client and its JSON.
//! - [`shared`]: what replicas share through Redis (platform budget, second
//!   page cache level, coalescing), with its circuit breaker.
//!
//! Around it: [`config`] (settings), [`auth`] (API keys, JWT, scopes),
//! [`limits`] (per-client rate), [`telemetry`] (metrics, access log), [`otel`] (OpenTelemetry traces), [`secret`] (redacted secrets, token reload), [`error`] (codes of SPEC §4), [`app`] (wiring and serving),
//! [`demo`] (the simulated platform), [`time`] (the timestamp format).

pub mod app;
pub mod auth;
pub mod cache;
pub mod config;
pub mod demo;
pub mod error;
mod fnv;
pub mod graphql;
pub mod graphql_http;
pub mod http;
pub mod limits;
pub mod live;
pub mod otel;
pub mod page;
pub mod paging;
pub mod playground;
pub mod reader;
pub mod response_cache;
pub mod secret;
pub mod shared;
pub mod stats;
pub mod telemetry;
pub mod time;
pub mod upstream;
pub mod visits;
