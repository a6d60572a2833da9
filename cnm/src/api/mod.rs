//! The control API: HTTP/1.1 + JSON on a Unix socket.
//!
//! | method and path | body | answer |
//! |---|---|---|
//! | `GET /v1/networks` | | `[Network]` |
//! | `POST /v1/networks` | `CreateNetworkRequest` | `201 Network` |
//! | `GET /v1/networks/{name}` | | `NetworkDetails` |
//! | `DELETE /v1/networks/{name}` | | `204` |
//! | `POST /v1/networks/{name}/connect` | `ConnectRequest` | `201 Endpoint` |
//! | `POST /v1/networks/{name}/disconnect` | `DisconnectRequest` | `204` |
//! | `GET /v1/peers` | | `PeersReport` (400 without `--listen`) |
//! | `GET /v1/version` | | `{"version": ..., "pid": ...}` |
//! | `GET /v1/info` | | `Info`: version, uptime, state directory, counts, cluster |
//! | `GET /v1/networks/{name}/fdb` | | the forwarding table: MAC, kind, endpoint or host, age |
//! | `POST /v1/networks/{name}/capture` | `CaptureRequest` | a pcapng stream of the network's (or one endpoint's) frames |
//! | `POST /v1/capture/overlay` | `CaptureRequest` | a pcapng stream of the tunnel's datagrams (400 without `--listen`) |
//! | `GET /v1/events[?since=TIME]` | | JSON lines as things change; first the kept ones since TIME (RFC 3339 or Unix seconds) |
//! | `GET /metrics` | | Prometheus text (0.0.4) |
//!
//! A `ConnectRequest` may carry `ports`, the published ports: each the
//! `-p` text (`"127.0.0.1:8080:80/tcp"`) or an object (`{"host_ip":
//! "127.0.0.1", "host_port": 8080, "container_port": 80, "proto": "tcp"}`,
//! `host_ip` and `proto` optional); the `Endpoint` answered and shown by
//! `inspect` has them as objects, with the host port really bound (port 0
//! asks the kernel for one). A host port in use is a 409, a privileged one
//! (below `net.ipv4.ip_unprivileged_port_start` for a daemon without the
//! capability) or `ports` on a `null`/`host` network is a 400.
//!
//! A `ConnectRequest` may also name the interface (`ifname`, refused if
//! the sandbox has one of that name), its `mac`, and `labels` the endpoint
//! keeps and `inspect` shows (`weft-cni` finds its attachments by them).
//!
//! Every error is `{"message": "..."}` with a 4xx status for a request
//! that must change (the message says how) and 5xx for a failure of the
//! daemon itself. Unknown fields in a body are refused, so a typo is an
//! error, not a silently ignored option.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;

use weft_datapath::published::PublishError;
use weft_ipam::{AddSubnetError, AllocError};
use weft_overlay::driver::gossip::ClusterAllocError;

use crate::controller::{Controller, ControllerError};
use crate::error_chain::error_chain;
use types::{ConnectRequest, CreateNetworkRequest, DisconnectRequest};

pub mod types;

/// An error answer.
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    /// What went wrong and what to do about it.
    pub message: String,
}

/// An error the API turns into a response.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl From<ControllerError> for ApiError {
    fn from(e: ControllerError) -> Self {
        let status =
            StatusCode::from_u16(status_of(&e)).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::error!(error = %error_chain(&e), "request failed");
        }
        ApiError {
            status,
            message: error_chain(&e),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: format!("invalid request body: {}", e.body_text()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ErrorBody {
                message: self.message,
            }),
        )
            .into_response()
    }
}

type Shared = State<Arc<Controller>>;

/// The API's routes over `controller`.
pub fn router(controller: Arc<Controller>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/v1/version", get(version))
        .route("/v1/info", get(info))
        .route("/v1/peers", get(peers))
        .route("/v1/events", get(events))
        .route("/v1/networks", get(list_networks).post(create_network))
        .route(
            "/v1/networks/{name}",
            get(inspect_network).delete(delete_network),
        )
        .route("/v1/networks/{name}/fdb", get(fdb))
        .route("/v1/networks/{name}/capture", post(capture))
        .route("/v1/capture/overlay", post(capture_overlay))
        .route("/v1/networks/{name}/connect", post(connect))
        .route("/v1/networks/{name}/disconnect", post(disconnect))
        .fallback(not_found)
        .with_state(controller)
}

async fn version() -> impl IntoResponse {
    Json(serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        // `weft run` enters the daemon's user namespace through
        // /proc/PID/ns/user when the daemon runs in one of its own.
        "pid": std::process::id(),
    }))
}

async fn metrics(State(c): Shared) -> impl IntoResponse {
    let text = crate::metrics::render(crate::metrics::collect(&c).await);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}

/// The topology page (`weft daemon --web IP:PORT`): one HTML page whose
/// script reads the read-only part of the API from the same listener.
const WEB_PAGE: &str = include_str!("../web.html");

/// Serve the topology page and the read-only API it reads (`GET
/// /v1/networks`, `/v1/networks/NAME`, `/v1/peers`, `/metrics`) on a TCP
/// listener; nothing there changes anything.
///
/// # Errors
///
/// When accepting fails for good.
pub async fn serve_web(
    listener: tokio::net::TcpListener,
    controller: Arc<Controller>,
) -> std::io::Result<()> {
    let router = Router::new()
        .route(
            "/",
            get(|| async {
                (
                    [(axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8")],
                    WEB_PAGE,
                )
            }),
        )
        .route("/v1/networks", get(list_networks))
        .route("/v1/networks/{name}", get(inspect_network))
        .route("/v1/peers", get(peers))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(controller);
    axum::serve(listener, router).await
}

/// Serve only `GET /metrics` on a TCP listener (`weft daemon --metrics
/// ADDR:PORT`, for Prometheus), without the rest of the API.
///
/// # Errors
///
/// When accepting fails for good.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    controller: Arc<Controller>,
) -> std::io::Result<()> {
    let router = Router::new()
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(controller);
    axum::serve(listener, router).await
}

/// A capture: the pcapng stream of `crate::capture`, chunked, until the
/// session ends or the client goes away.
async fn capture(
    State(c): Shared,
    Path(name): Path<String>,
    body: Result<Json<crate::capture::CaptureRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(request) = body?;
    let (handle, names) = c.capture(&name, &request).await?;
    Ok(capture_stream(
        handle,
        crate::capture::Interfaces::Ports(names),
        request,
        name,
    ))
}

/// A capture of the tunnel: the datagrams between hosts, as pcapng.
async fn capture_overlay(
    State(c): Shared,
    body: Result<Json<crate::capture::CaptureRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(request) = body?;
    let handle = c.capture_overlay(&request).await?;
    Ok(capture_stream(
        handle,
        crate::capture::Interfaces::Underlay,
        request,
        "(tunnel)".into(),
    ))
}

/// Stream a capture session's pcapng until it ends or the client goes.
fn capture_stream(
    handle: weft_datapath::capture::CaptureHandle,
    interfaces: crate::capture::Interfaces,
    request: crate::capture::CaptureRequest,
    name: String,
) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    tokio::task::spawn_blocking(move || {
        let (frames, dropped) = crate::capture::pump(handle, &interfaces, &request, |chunk| {
            tx.blocking_send(chunk).is_ok()
        });
        tracing::info!(network = name, frames, dropped, "capture ended");
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, std::convert::Infallible>(chunk), rx))
    });
    (
        [(axum::http::header::CONTENT_TYPE, "application/x-pcapng")],
        axum::body::Body::from_stream(stream),
    )
        .into_response()
}

async fn fdb(State(c): Shared, Path(name): Path<String>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(c.fdb(&name).await?))
}

/// Events as they happen, one JSON object per line, until the client goes
/// away (see `crate::events`).
async fn events(State(c): Shared, Query(query): Query<EventsQuery>) -> Result<Response, ApiError> {
    let (past, rx) = match &query.since {
        Some(since) => {
            let since = parse_since(since).ok_or_else(|| ApiError {
                status: StatusCode::BAD_REQUEST,
                message: format!(
                    "since={since:?}: give a time as RFC 3339 (2026-12-03T15:00:00Z) or Unix seconds"
                ),
            })?;
            c.events.subscribe_since(since)
        }
        None => (Vec::new(), c.events.subscribe()),
    };
    let line = |event: &crate::events::Event| {
        let mut line = serde_json::to_vec(event).unwrap_or_default();
        line.push(b'\n');
        Ok::<_, std::convert::Infallible>(line)
    };
    let past = futures_util::stream::iter(past.iter().map(line).collect::<Vec<_>>());
    let live = futures_util::stream::unfold(rx, move |mut rx| async move {
        let event = crate::events::next(&mut rx).await?;
        Some((line(&event), rx))
    });
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::from_stream(futures_util::StreamExt::chain(past, live)),
    )
        .into_response())
}

/// `GET /v1/events`' query.
#[derive(Debug, serde::Deserialize)]
struct EventsQuery {
    /// First send the kept events since this time.
    since: Option<String>,
}

/// A time as RFC 3339 or (fractional) Unix seconds.
fn parse_since(text: &str) -> Option<std::time::SystemTime> {
    if let Ok(seconds) = text.parse::<f64>() {
        let since = std::time::Duration::try_from_secs_f64(seconds).ok()?;
        return std::time::SystemTime::UNIX_EPOCH.checked_add(since);
    }
    humantime::parse_rfc3339_weak(text).ok()
}

async fn info(State(c): Shared) -> impl IntoResponse {
    Json(c.info().await)
}

async fn peers(State(c): Shared) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(c.peers()?))
}

async fn not_found() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        message: "no such API path: see the table in cnm/src/api.rs (GET /v1/networks, ...)".into(),
    }
}

async fn list_networks(State(c): Shared) -> impl IntoResponse {
    Json(c.networks().await)
}

async fn create_network(
    State(c): Shared,
    body: Result<Json<CreateNetworkRequest>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Json(request) = body?;
    let network = c.create_network(request).await?;
    Ok((StatusCode::CREATED, Json(network)))
}

async fn inspect_network(
    State(c): Shared,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(c.inspect(&name).await?))
}

async fn delete_network(
    State(c): Shared,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    c.delete_network(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn connect(
    State(c): Shared,
    Path(name): Path<String>,
    body: Result<Json<ConnectRequest>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Json(request) = body?;
    let endpoint = c.connect(&name, request).await?;
    Ok((StatusCode::CREATED, Json(endpoint)))
}

async fn disconnect(
    State(c): Shared,
    Path(name): Path<String>,
    body: Result<Json<DisconnectRequest>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Json(request) = body?;
    c.disconnect(&name, request).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Serve the API on `listener` until `shutdown` completes.
///
/// # Errors
///
/// The accept loop's I/O error.
pub async fn serve(
    listener: tokio::net::UnixListener,
    controller: Arc<Controller>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(controller))
        .with_graceful_shutdown(shutdown)
        .await
}

/// The HTTP status for a controller error: 4xx for a request that must
/// change, 5xx for a failure of the daemon itself.
pub fn status_of(error: &ControllerError) -> u16 {
    match error {
        ControllerError::NetworkNotFound { .. } | ControllerError::NotConnected { .. } => 404,
        ControllerError::EndpointNotFound { .. } | ControllerError::NoSuchEndpoint { .. } => 404,
        ControllerError::SandboxNotFound { .. } => 404,
        ControllerError::NetworkExists { .. }
        | ControllerError::NetworkInUse { .. }
        | ControllerError::DockerNetwork { .. }
        | ControllerError::AlreadyConnected { .. }
        | ControllerError::AddressOnLan { .. } => 409,
        ControllerError::Subnet(AddSubnetError::Overlaps { .. }) => 409,
        ControllerError::Address(AllocError::InUse { .. }) => 409,
        ControllerError::Publish(PublishError::InUse { .. }) => 409,
        ControllerError::Publish(PublishError::Privileged { .. })
        | ControllerError::Publish(PublishError::NoSuchAddress(_))
        | ControllerError::InvalidOption { .. }
        | ControllerError::InvalidLabel { .. }
        | ControllerError::InvalidInterface { .. }
        | ControllerError::InvalidBandwidth(_)
        | ControllerError::InvalidCapture(_)
        | ControllerError::BandwidthNotAllowed { .. }
        | ControllerError::StreamNotAllowed { .. }
        | ControllerError::InvalidSocketPath { .. }
        | ControllerError::PortsNotAllowed { .. }
        | ControllerError::InvalidPort(_) => 400,
        ControllerError::InvalidName { .. }
        | ControllerError::UnknownDriver(_)
        | ControllerError::SubnetsNotAllowed { .. }
        | ControllerError::HostBitsSet { .. }
        | ControllerError::MtuOutOfRange { .. }
        | ControllerError::Subnet(_)
        | ControllerError::Address(_)
        | ControllerError::DuplicateFamily
        | ControllerError::NotANetworkNamespace { .. }
        | ControllerError::DaemonsOwnNamespace { .. }
        | ControllerError::OverlayNeedsCluster
        | ControllerError::OverlaySubnets => 400,
        ControllerError::VniInUse { .. } => 409,
        ControllerError::ClusterAddress(ClusterAllocError::Allocate(
            weft_overlay::AllocateError::Exhausted(_),
        )) => 409,
        ControllerError::ClusterAddress(_) => 503,
        ControllerError::Driver { .. }
        | ControllerError::Publish(PublishError::Bind { .. })
        | ControllerError::Store(_)
        | ControllerError::Datapath(_)
        | ControllerError::Cluster(_)
        | ControllerError::TunnelBind { .. } => 500,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::model::DriverKind;

    #[test]
    fn statuses_follow_the_kind_of_error() {
        assert_eq!(
            status_of(&ControllerError::NetworkNotFound { name: "x".into() }),
            404
        );
        assert_eq!(
            status_of(&ControllerError::NetworkExists { name: "x".into() }),
            409
        );
        assert_eq!(
            status_of(&ControllerError::NetworkInUse {
                name: "x".into(),
                count: 1
            }),
            409
        );
        assert_eq!(status_of(&ControllerError::DuplicateFamily), 400);
        let path = std::path::PathBuf::from("/etc/passwd");
        assert_eq!(
            status_of(&ControllerError::NotANetworkNamespace { path: path.clone() }),
            400
        );
        assert_eq!(
            status_of(&ControllerError::DaemonsOwnNamespace { path }),
            400
        );
        assert_eq!(status_of(&ControllerError::OverlayNeedsCluster), 400);
        assert_eq!(status_of(&ControllerError::OverlaySubnets), 400);
        assert_eq!(
            status_of(&ControllerError::VniInUse {
                vni: weft_vswitch::Vni::new(1).unwrap(),
                network: "x".into()
            }),
            409
        );
        assert_eq!(
            status_of(&ControllerError::ClusterAddress(
                ClusterAllocError::Timeout(Duration::from_secs(1))
            )),
            503
        );
        let addr = "0.0.0.0:8080".parse().unwrap();
        let proto = weft_datapath::published::L4Proto::Tcp;
        assert_eq!(
            status_of(&ControllerError::Publish(PublishError::InUse {
                addr,
                proto
            })),
            409
        );
        assert_eq!(
            status_of(&ControllerError::Publish(PublishError::Privileged {
                addr,
                proto,
                start: 1024
            })),
            400
        );
        assert_eq!(
            status_of(&ControllerError::PortsNotAllowed {
                driver: DriverKind::Host
            }),
            400
        );
    }
}
