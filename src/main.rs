//! The `visits-gateway` binary: settings, telemetry, serve until shutdown.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tokio::net::TcpListener;
use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;
use tracing_subscriber::{EnvFilter, fmt};
use visits_gateway::app::App;
use visits_gateway::config::{Cli, Command, LogFormat, Settings};
use visits_gateway::demo::{EXAMPLE_ACTIVITY, SimPlatform};
use visits_gateway::graphql::manifest::Manifest;
use visits_gateway::otel;
use visits_gateway::secret::{Secret, TokenSource};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (settings, demo) = match cli.command {
        Command::Schema => {
            print!("{}", visits_gateway::graphql::sdl());
            return ExitCode::SUCCESS;
        }
        Command::Serve(s) => (s, false),
        Command::Demo(mut s) => {
            // The demo is for trying things out: open unless auth is configured.
            if !s.client.auth_configured() {
                s.client.allow_unauthenticated = true;
            }
            (s, true)
        }
    };
    if let Err(e) = settings.validate() {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let manifest = match Manifest::from_setting(settings.server.persisted_queries_file.as_deref()) {
        Ok(manifest) => manifest,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let traces = match init_tracing(settings.server.log_format) {
        Ok(traces) => traces,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(settings, manifest, demo));
    // The server has stopped: export the spans still queued.
    if let Some(traces) = traces {
        traces.shutdown();
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Logs as `RUST_LOG` says; with OpenTelemetry on, the gateway's spans also
/// go to the exporter, whatever `RUST_LOG` lets through to the log.
fn init_tracing(format: LogFormat) -> Result<Option<otel::Tracing>, String> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let Some((traces, tracer)) = otel::start()? else {
        // Tracing off: the subscriber as it always was, nothing added.
        let builder = tracing_subscriber::fmt().with_env_filter(filter);
        match format {
            LogFormat::Json => builder.json().flatten_event(true).init(),
            LogFormat::Text => builder.init(),
        }
        return Ok(None);
    };
    let log = match format {
        LogFormat::Json => fmt::layer().json().flatten_event(true).boxed(),
        LogFormat::Text => fmt::layer().boxed(),
    };
    let spans = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(Targets::new().with_target("visits_gateway", Level::INFO));
    tracing_subscriber::registry()
        .with(log.with_filter(filter))
        .with(spans)
        .init();
    Ok(Some(traces))
}

async fn run(
    mut settings: Settings,
    manifest: Option<Arc<Manifest>>,
    demo: bool,
) -> Result<(), String> {
    let token = if demo {
        // The simulated platform gets a fresh token; nobody needs to know it.
        let token = Secret::new(format!(
            "demo-{:016x}{:016x}",
            fastrand::u64(..),
            fastrand::u64(..)
        ));
        let sim = SimPlatform::start(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            token.clone(),
            chrono::Utc::now(),
        )
        .await
        .map_err(|e| format!("cannot start the simulated platform: {e}"))?;
        sim.spawn_live_visits(std::time::Duration::from_secs(5));
        settings.upstream.base_url = sim.base_url().parse().map_err(|e| format!("{e}"))?;
        TokenSource::fixed(token)
    } else {
        settings.upstream.token_source()?
    };
    let app = App::build(&settings, token, manifest)?;
    let listen_addr = settings.server.listen_addr;
    let listener = TcpListener::bind(listen_addr)
        .await
        .map_err(|e| format!("cannot listen on LISTEN_ADDR {listen_addr}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(%addr, demo, "visits-gateway listening");
    if let (Some(metrics_addr), Some(router)) = (
        settings.server.metrics_listen_addr,
        app.metrics_router.clone(),
    ) {
        let metrics_listener = TcpListener::bind(metrics_addr)
            .await
            .map_err(|e| format!("cannot listen on METRICS_LISTEN_ADDR {metrics_addr}: {e}"))?;
        tracing::info!(addr = %metrics_addr, "metrics listening");
        tokio::spawn(visits_gateway::app::serve_http(
            metrics_listener,
            router,
            settings.server.header_read_timeout,
            std::future::pending(),
        ));
    }
    if demo {
        print_demo_banner(addr);
    }
    app.serve(listener, shutdown_signal())
        .await
        .map_err(|e| e.to_string())
}

fn print_demo_banner(addr: SocketAddr) {
    let host = if addr.ip().is_unspecified() {
        "127.0.0.1".to_owned()
    } else {
        addr.ip().to_string()
    };
    println!(
        "\nvisits-gateway demo: a simulated platform with live visits is running behind the gateway.\n\
         GraphiQL: http://{host}:{port}/graphql\n\n\
         Try:\n  query {{ userVisits(activityId: \"{EXAMPLE_ACTIVITY}\", first: 5) {{\n    totalCount range {{ from to }}\n    \
         pageInfo {{ hasNextPage endCursor }}\n    nodes {{ nickname isAnonymous city visitAt durationMinutes }} }} }}\n",
        port = addr.port()
    );
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = terminate => {} }
    tracing::info!("shutdown signal received");
}
