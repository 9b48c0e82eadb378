//! visits-gateway: a GraphQL gateway in front of a live-streaming platform's
//! "user visits of an activity" REST report.
//!
//! # Layout
//! The data path, top to bottom:
//! - [`http`]: the doors (`POST` and `GET /graphql`, WebSocket, SSE and
//!   multipart subscriptions, probes), reading requests as [`graphql_http`]
//!   says, and the one admission pipeline every door goes through;
//!   [`playground`]: GraphiQL.
//! - [`live`]: live visits: one poller per activity (per cluster with
//!   Redis), one execution per distinct subscription.
//! - [`response_cache`]: whole responses of repeated queries (the hot path).
//! - [`graphql`]: the schema and the resolvers, cursors, scalars, the cost rule.
//! - [`paging`]: pure rules: ranges, pinning, 7-day windows, slices, pages.
//! - [`visits`]: runs a paging plan; [`stats`]: the statistics of a range;
//!   both, and the live poller, read windows through the one [`reader`].
//! - [`cache`]: the moka page cache with coalescing and TTL by window age.
//! - [`page`]: the platform's page and visit types, their parser, `PageSource`.
//! - [`upstream`]: the platform's REST client, its budget and fair queue.
//! - [`shared`]: what replicas share through Redis (platform budget, second
//!   page cache level, coalescing, the live poller's lease), with its
//!   circuit breaker.
//!
//! Around it: [`config`] (settings), [`auth`] (API keys, JWT, scopes),
//! [`limits`] (per-client rate), [`telemetry`] (metrics, access log),
//! [`otel`] (OpenTelemetry traces), [`secret`] (redacted secrets, token
//! reload), [`error`] (the error codes), [`app`] (wiring and serving),
//! [`demo`] (the simulated platform), [`time`] (the timestamp format).
//!
//! Modules are public only where the binary, the tests or the examples need
//! them, so the compiler finds what nothing uses.

pub mod app;
pub mod auth;
pub mod cache;
pub mod config;
pub mod demo;
pub mod error;
mod fnv;
pub mod graphql;
mod graphql_http;
mod http;
mod limits;
mod live;
pub mod otel;
pub mod page;
pub mod paging;
mod playground;
mod reader;
mod response_cache;
pub mod secret;
pub mod shared;
pub mod stats;
pub mod telemetry;
pub mod time;
mod upstream;
pub mod visits;
