//! A loopback simulator of OpenAI's Files and Batches APIs and Anthropic's
//! Message Batches API for batchgate's tests.
//!
//! It stores uploads in memory and validates batch input files. Each batch moves
//! through `validating`, `in_progress`, `finalizing` and `completed` (or
//! Anthropic's `in_progress` and `ended`) on a clock with configurable phase
//! durations. Result files are deterministic, and their prompt token counts
//! come from the real tokenizer. Fault profiles inject rate limits, server
//! errors, delays, expiry and damaged result files.
//!
//! ```no_run
//! # async fn example() -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let simulator =
//!     batchgate_simulator::start(batchgate_simulator::SimulatorConfig::default(), listener)
//!         .await?;
//! let files_url = format!("{}/v1/files", simulator.base_url());
//! # let _ = files_url;
//! simulator.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod anthropic;
mod batch;
mod batches;
mod bodies;
mod call_faults;
mod config;
mod error;
mod faults;
mod files;
mod hooks;
mod line_faults;
mod plan;
mod results;
mod seeding;
mod state;
mod validation;

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::header::AUTHORIZATION;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use crate::config::SimulatorConfig;
use crate::error::ApiError;
pub use crate::faults::FaultProfile;
use crate::state::AppState;

/// Maximum time that `RunningSimulator::shutdown` waits for open requests.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// A simulator serving on a listener. Dropping it also stops the server, but
/// without waiting for it.
#[derive(Debug)]
pub struct RunningSimulator {
    /// Base URL such as `http://127.0.0.1:41234`, without a trailing slash and
    /// without `/v1`.
    pub base_url: String,
    local_addr: SocketAddr,
    state: AppState,
    shutdown_sender: oneshot::Sender<()>,
    server: JoinHandle<io::Result<()>>,
}

impl RunningSimulator {
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Returns the number of batches of both providers created so far, failed
    /// ones included.
    pub fn batches_created(&self) -> usize {
        let store = self.state.lock();
        store.batches.len() + store.message_batches.len()
    }

    /// Stops accepting connections and waits up to 5 s for open requests to end.
    pub async fn shutdown(self) {
        // A send error means that the server has already stopped.
        let _ = self.shutdown_sender.send(());
        let mut server = self.server;
        match tokio::time::timeout(SHUTDOWN_TIMEOUT, &mut server).await {
            Ok(Ok(Ok(()))) => tracing::info!(base_url = %self.base_url, "simulator stopped"),
            Ok(Ok(Err(error))) => tracing::error!(%error, "simulator server failed"),
            Ok(Err(error)) => tracing::error!(%error, "simulator server task failed"),
            Err(_) => {
                tracing::warn!(
                    timeout_secs = SHUTDOWN_TIMEOUT.as_secs(),
                    "simulator did not stop in time, aborting open connections"
                );
                server.abort();
            }
        }
    }
}

/// Starts serving on `listener` with a task on the current tokio runtime.
///
/// The library serves on whatever address the listener has. Only the binary
/// rejects non-loopback addresses.
pub async fn start(
    config: SimulatorConfig,
    listener: tokio::net::TcpListener,
) -> io::Result<RunningSimulator> {
    config
        .validate()
        .map_err(|message| io::Error::new(io::ErrorKind::InvalidInput, message))?;
    let local_addr = listener.local_addr()?;
    let base_url = format!("http://{}", reachable_address(local_addr));
    let state = AppState::new(config, base_url.clone());
    let app = router(state.clone());

    let (shutdown_sender, shutdown_receiver) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            // Resolves on a send and also when the sender is dropped.
            let _ = shutdown_receiver.await;
        })
        .await
    });
    tracing::info!(%base_url, "simulator listening");

    Ok(RunningSimulator {
        base_url,
        local_addr,
        state,
        shutdown_sender,
        server,
    })
}

/// Replaces an unspecified bind address (0.0.0.0 or ::) with the loopback
/// address of the same family, which clients can connect to.
fn reachable_address(address: SocketAddr) -> SocketAddr {
    let ip = match address.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, address.port())
}

fn router(state: AppState) -> Router {
    let upload_limit = files::MAX_UPLOAD_BYTES + files::MULTIPART_OVERHEAD_BYTES;
    let api = Router::new()
        .route(
            "/v1/files",
            post(files::upload_file).layer(DefaultBodyLimit::max(upload_limit)),
        )
        .route(
            "/v1/files/{file_id}",
            get(files::retrieve_file).delete(files::delete_file),
        )
        .route("/v1/files/{file_id}/content", get(files::download_file))
        .route(
            "/v1/batches",
            post(batches::create_batch).get(batches::list_batches),
        )
        .route("/v1/batches/{batch_id}", get(batches::retrieve_batch))
        .route("/v1/batches/{batch_id}/cancel", post(batches::cancel_batch))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            call_faults::inject_openai_call_faults,
        ))
        .route_layer(middleware::from_fn(require_bearer_token));

    let hooks = Router::new()
        .route("/_sim/stats", get(hooks::stats))
        .route(
            "/_sim/config",
            get(hooks::read_config).post(hooks::update_config),
        )
        .route(
            "/_sim/faults",
            get(hooks::read_faults).post(hooks::replace_faults),
        )
        .route(
            "/_sim/next-batch-faults",
            get(hooks::read_next_batch_faults)
                .post(hooks::queue_next_batch_faults)
                .merge(delete(hooks::clear_next_batch_faults)),
        )
        .route_layer(middleware::from_fn(hooks::require_loopback_peer));

    api.merge(anthropic::router(state.clone()))
        .merge(hooks)
        .fallback(unknown_route)
        .with_state(state)
}

/// Rejects a request with 401 unless it has `Authorization: Bearer <non-empty key>`.
/// The key itself is neither checked further nor logged.
async fn require_bearer_token(request: Request, next: Next) -> Response {
    let has_key = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_once(' '))
        .is_some_and(|(scheme, key)| {
            scheme.eq_ignore_ascii_case("bearer") && !key.trim().is_empty()
        });
    if has_key {
        next.run(request).await
    } else {
        tracing::debug!(path = %request.uri().path(), "rejected a request without a bearer token");
        ApiError::missing_api_key().into_response()
    }
}

async fn unknown_route(request: Request) -> ApiError {
    ApiError::not_found(format!(
        "Invalid URL ({} {})",
        request.method(),
        request.uri().path()
    ))
}
