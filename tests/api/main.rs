//! One integration test binary: the real gateway on port 0, in front of the
//! simulated platform on port 0, driven over HTTP.

mod cli;
mod clients;
mod errors;
mod fair;
mod guards;
mod helpers;
mod hold;
mod hostile;
mod hot_path;
mod live;
mod live_cluster;
mod ops;
mod over_http;
mod paging;
mod playground;
mod replicas;
mod resilience;
mod security;
mod settings;
mod stats;
mod stats_live;
mod streams;
mod surface;
mod traces;
mod trusted;
mod upstream_economy;
