//! Docker's remote network-driver and IPAM-driver plugin protocol
//! (`weft daemon --docker-plugin NAME`), so that `docker network create
//! -d NAME --ipam-driver NAME` makes weft networks and `docker run
//! --network` puts containers on them, on one host or, through weft's
//! overlay, on several hosts without swarm.
//!
//! # Theory of operation
//!
//! Docker finds the plugin by its socket, `/run/docker/plugins/NAME.sock`
//! ([`default_plugin_dir`]), and speaks HTTP/1.1 POSTs with JSON bodies
//! ([`protocol`]): `/Plugin.Activate` answers that weft implements
//! `NetworkDriver` and `IpamDriver`; every other path is one call of
//! libnetwork's remote driver (`docs/remote.md`) or remote IPAM
//! (`docs/ipam.md`). Calls are served one at a time (a plugin-wide lock):
//! each is a few controller operations, and one at a time keeps them from
//! interleaving. A call that fails answers `{"Err": "..."}` (HTTP 200, as
//! the protocol says), with the controller's message, which says what to
//! change; Docker shows it to the user. A body that is not the JSON of the
//! call is a 400 with serde's message; an unknown path a 404 (Docker then
//! knows the call is not implemented).
//!
//! A Docker network is a weft network ([`network_driver`]): made by
//! `CreateNetwork` (named `-o weft.network=NAME`, else `docker-` and the
//! first 12 digits of Docker's id, which `docker network ls` shows), or,
//! if a weft network of that name exists, joined (so the second host's
//! dockerd joins a cluster network). A Docker endpoint is a weft endpoint
//! whose TAP weft makes in its own namespace at `Join` (named `SrcName`)
//! and Docker moves into the container; weft keeps the TAP's fd, so the
//! frames are switched by weft as for any endpoint. Docker's `-p` reaches
//! weft in `ProgramExternalConnectivity` and becomes weft's published
//! ports (the container sees the client's address).
//!
//! weft's IPAM driver ([`ipam_driver`]) hands out the addresses of the
//! weft network a pool is bound to (at `CreateNetwork`), reserved in that
//! network's IPAM, for an overlay network through the cluster allocator,
//! so they are unique across hosts. With Docker's own IPAM, weft reserves
//! the addresses Docker chose; with none (`--ipam-driver null`), weft
//! chooses and answers them in `CreateEndpoint`.
//!
//! # State and restarts
//!
//! Pools, Docker networks and Docker endpoints ([`state`]) are saved in
//! the controller's state file, in the same atomic write as the networks,
//! endpoints and addresses they concern. A restarted weft re-opens every
//! Docker endpoint's TAP in its container (found by MAC: Docker renamed
//! it), so running containers keep their network. Docker replays calls
//! after its own restart (`Plugin.Activate`, capabilities; with
//! `--live-restore` nothing that changes state; without it the cleanup
//! `Leave`/`DeleteEndpoint`/`ReleaseAddress` of the containers it
//! stopped): every call is idempotent: a known network, endpoint or join
//! is answered as before, an unknown one to remove is already removed.
//!
//! # Limits
//!
//! - Scope is `local` (Docker needs no swarm or KV store): Docker never
//!   calls `AllocateNetwork`/`FreeNetwork` (swarm only), and they are
//!   not served (404). `DiscoverNew`/`DiscoverDelete` are answered and
//!   ignored: weft's gossip finds its hosts.
//! - Docker does not give a remote driver the network's or container's
//!   name: weft shows Docker's ids (see `docker network ls`, `docker
//!   network inspect`) unless `-o weft.network=NAME` names the network.
//! - Docker resolves container names itself (127.0.0.11) on user-defined
//!   networks; weft's embedded DNS answers weft's names on the gateway.

pub mod ipam_driver;
pub mod network_driver;
pub mod protocol;
pub mod state;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Bytes;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::controller::ControllerError;
use crate::error_chain::error_chain;
use crate::Controller;
use protocol::{ActivateResponse, ErrorResponse};

/// Where a root dockerd looks for plugin sockets (fixed, whatever its
/// `--exec-root`).
pub const ROOT_PLUGIN_DIR: &str = "/run/docker/plugins";

/// The content type of the plugin protocol's answers.
const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1.2+json";

/// The plugin: the controller and the lock that serializes calls.
pub struct Plugin {
    controller: Arc<Controller>,
    serial: tokio::sync::Mutex<()>,
}

/// A failed call: the message Docker shows, and the HTTP status (200 for
/// a call understood but refused, as the protocol wants; 400 for a body
/// that does not parse).
#[derive(Debug)]
pub struct PluginError {
    status: StatusCode,
    message: String,
}

/// The directory the plugin's socket goes in by default: for root the
/// one a root dockerd looks in, [`ROOT_PLUGIN_DIR`]; for another user
/// (who cannot write there) `$XDG_RUNTIME_DIR/docker/plugins`, which a
/// rootless dockerd finds through the spec file of [`rootless_spec_path`].
pub fn default_plugin_dir(is_root: bool, xdg_runtime_dir: Option<&Path>) -> PathBuf {
    match (is_root, xdg_runtime_dir) {
        (false, Some(dir)) => dir.join("docker/plugins"),
        _ => PathBuf::from(ROOT_PLUGIN_DIR),
    }
}

/// Where a rootless dockerd (RootlessKit) looks for plugin spec files:
/// `$XDG_CONFIG_HOME/docker/plugins/NAME.spec`, else
/// `$HOME/.config/docker/plugins/NAME.spec` (moby's `pkg/plugins`, the
/// rootless `SpecsPaths`); None without either variable. Its socket
/// directory, `/run/docker/plugins`, is RootlessKit's copy of `/run`,
/// which the user cannot write: a spec file that names the socket is the
/// way in.
pub fn rootless_spec_path(
    name: &str,
    xdg_config_home: Option<&Path>,
    home: Option<&Path>,
) -> Option<PathBuf> {
    let config = match (xdg_config_home, home) {
        (Some(dir), _) if dir.is_absolute() => dir.to_owned(),
        (_, Some(home)) => home.join(".config"),
        _ => return None,
    };
    Some(config.join("docker/plugins").join(format!("{name}.spec")))
}

/// A spec file's text: the socket's URL.
pub fn spec_text(socket: &Path) -> String {
    format!("unix://{}\n", socket.display())
}

impl PluginError {
    /// A call that was understood and refused: `message` says why and
    /// what to change.
    pub fn refused(message: impl Into<String>) -> Self {
        PluginError {
            status: StatusCode::OK,
            message: message.into(),
        }
    }
}

impl From<ControllerError> for PluginError {
    fn from(e: ControllerError) -> Self {
        if crate::api::status_of(&e) >= 500 {
            tracing::error!(error = %error_chain(&e), "Docker plugin call failed");
        }
        PluginError::refused(error_chain(&e))
    }
}

impl IntoResponse for PluginError {
    fn into_response(self) -> Response {
        tracing::info!(status = %self.status, message = self.message, "Docker plugin call refused");
        (
            self.status,
            [(header::CONTENT_TYPE, CONTENT_TYPE)],
            serde_json::to_string(&ErrorResponse::new(self.message)).unwrap_or_default(),
        )
            .into_response()
    }
}

/// An answer as the protocol's JSON.
fn answer(value: &impl Serialize) -> Response {
    match serde_json::to_string(value) {
        Ok(json) => (StatusCode::OK, [(header::CONTENT_TYPE, CONTENT_TYPE)], json).into_response(),
        Err(e) => PluginError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: format!("encoding the answer: {e}"),
        }
        .into_response(),
    }
}

/// Parse a call's body (whatever its content type: Docker's
/// `application/vnd.docker.plugins.v1.x+json`).
///
/// # Errors
///
/// A 400 [`PluginError`] with serde's message and the call's name.
pub fn parse_body<T: DeserializeOwned>(call: &str, body: &[u8]) -> Result<T, PluginError> {
    serde_json::from_slice(body).map_err(|e| PluginError {
        status: StatusCode::BAD_REQUEST,
        message: format!("{call}: the body is not the JSON of this call: {e}"),
    })
}

/// The first 12 digits of a Docker id (as `docker ... ls` shows it).
pub fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

type Shared = axum::extract::State<Arc<Plugin>>;

/// One route per call: parse, serialize, run, answer.
macro_rules! calls {
    ($router:expr, $($path:literal => $method:ident),* $(,)?) => {
        $router$(.route($path, post(|axum::extract::State(p): Shared, body: Bytes| async move {
            let _serial = p.serial.lock().await;
            tracing::debug!(call = $path, body = %String::from_utf8_lossy(&body), "Docker plugin call");
            match p.$method($path, &body).await {
                Ok(response) => response,
                Err(e) => e.into_response(),
            }
        })))*
    };
}

impl Plugin {
    /// A plugin over `controller`.
    pub fn new(controller: Arc<Controller>) -> Arc<Self> {
        Arc::new(Plugin {
            controller,
            serial: tokio::sync::Mutex::new(()),
        })
    }

    /// The plugin protocol's routes.
    pub fn router(self: Arc<Self>) -> Router {
        let router = Router::new().route(
            "/Plugin.Activate",
            post(|| async {
                answer(&ActivateResponse {
                    implements: vec!["NetworkDriver", "IpamDriver"],
                })
            }),
        );
        let router = calls!(router,
            "/NetworkDriver.GetCapabilities" => network_capabilities,
            "/NetworkDriver.CreateNetwork" => create_network,
            "/NetworkDriver.DeleteNetwork" => delete_network,
            "/NetworkDriver.CreateEndpoint" => create_endpoint,
            "/NetworkDriver.EndpointOperInfo" => endpoint_oper_info,
            "/NetworkDriver.DeleteEndpoint" => delete_endpoint,
            "/NetworkDriver.Join" => join,
            "/NetworkDriver.Leave" => leave,
            "/NetworkDriver.ProgramExternalConnectivity" => program_external_connectivity,
            "/NetworkDriver.RevokeExternalConnectivity" => revoke_external_connectivity,
            "/NetworkDriver.DiscoverNew" => discover,
            "/NetworkDriver.DiscoverDelete" => discover,
            "/IpamDriver.GetCapabilities" => ipam_capabilities,
            "/IpamDriver.GetDefaultAddressSpaces" => default_address_spaces,
            "/IpamDriver.RequestPool" => request_pool,
            "/IpamDriver.ReleasePool" => release_pool,
            "/IpamDriver.RequestAddress" => request_address,
            "/IpamDriver.ReleaseAddress" => release_address,
        );
        router
            .fallback(|uri: axum::http::Uri| async move {
                tracing::info!(path = %uri, "Docker plugin call not implemented");
                (
                    StatusCode::NOT_FOUND,
                    [(header::CONTENT_TYPE, CONTENT_TYPE)],
                    serde_json::to_string(&ErrorResponse::new(format!(
                        "{uri}: not a call weft serves"
                    )))
                    .unwrap_or_default(),
                )
            })
            .with_state(self)
    }
}

/// Serve the plugin on `listener` until `shutdown` completes.
///
/// # Errors
///
/// The accept loop's I/O error.
pub async fn serve(
    listener: tokio::net::UnixListener,
    plugin: Arc<Plugin>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, plugin.router())
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rootless_spec_files() {
        assert_eq!(
            rootless_spec_path("weft", Some(Path::new("/home/u/.cfg")), None),
            Some(PathBuf::from("/home/u/.cfg/docker/plugins/weft.spec"))
        );
        assert_eq!(
            rootless_spec_path("weft", None, Some(Path::new("/home/u"))),
            Some(PathBuf::from("/home/u/.config/docker/plugins/weft.spec"))
        );
        assert_eq!(rootless_spec_path("weft", None, None), None);
        assert_eq!(
            spec_text(Path::new("/run/user/1000/docker/plugins/weft.sock")),
            "unix:///run/user/1000/docker/plugins/weft.sock\n"
        );
    }

    #[test]
    fn plugin_dirs() {
        assert_eq!(
            default_plugin_dir(true, Some(Path::new("/run/user/1000"))),
            PathBuf::from("/run/docker/plugins")
        );
        assert_eq!(
            default_plugin_dir(false, Some(Path::new("/run/user/1000"))),
            PathBuf::from("/run/user/1000/docker/plugins")
        );
        assert_eq!(
            default_plugin_dir(false, None),
            PathBuf::from("/run/docker/plugins")
        );
    }

    /// A controller of its own (state in a temporary directory, no
    /// cluster) behind a plugin.
    async fn plugin(dir: &Path) -> Arc<Plugin> {
        let controller = Controller::start(crate::ControllerConfig {
            state_dir: dir.to_owned(),
            helper_exe: PathBuf::from("/nonexistent"),
            netns_dir: dir.join("netns"),
            dns_upstreams: Vec::new(),
            cluster: None,
            nat: weft_services::NatLimits {
                max_flows: 16,
                ..weft_services::NatLimits::default()
            },
        })
        .await
        .expect("controller");
        Plugin::new(Arc::new(controller))
    }

    /// Call `path` with `body`; the status and the answer's JSON.
    async fn call(plugin: &Arc<Plugin>, path: &str, body: &str) -> (u16, serde_json::Value) {
        use tower::ServiceExt;
        let request = axum::http::Request::post(path)
            .header(
                header::CONTENT_TYPE,
                "application/vnd.docker.plugins.v1.2+json",
            )
            .body(axum::body::Body::from(body.to_owned()))
            .expect("request");
        let response = Arc::clone(plugin)
            .router()
            .oneshot(request)
            .await
            .expect("answer");
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        (status, serde_json::from_slice(&bytes).unwrap_or_default())
    }

    /// Docker's calls for a network and an endpoint, replays included, and
    /// their undoing: nothing is duplicated, nothing stays.
    #[tokio::test]
    async fn ipam_and_network_calls_are_idempotent_and_leave_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = plugin(dir.path()).await;
        let (status, activate) = call(&p, "/Plugin.Activate", "null").await;
        assert_eq!(status, 200);
        assert_eq!(
            activate["Implements"],
            serde_json::json!(["NetworkDriver", "IpamDriver"])
        );

        let pool =
            r#"{"AddressSpace":"weft","Pool":"10.9.0.0/24","SubPool":"","Options":{},"V6":false}"#;
        let (_, first) = call(&p, "/IpamDriver.RequestPool", pool).await;
        assert_eq!(first["PoolID"], "weft:10.9.0.0/24", "{first}");
        let (_, again) = call(&p, "/IpamDriver.RequestPool", pool).await;
        assert_eq!(again["PoolID"], first["PoolID"]);
        let (status, overlap) = call(
            &p,
            "/IpamDriver.RequestPool",
            r#"{"AddressSpace":"weft","Pool":"10.9.0.0/16"}"#,
        )
        .await;
        assert_eq!(status, 200);
        assert!(
            overlap["Error"]
                .as_str()
                .unwrap_or("")
                .contains("overlaps 10.9.0.0/24"),
            "{overlap}"
        );
        let (_, gateway) = call(
            &p,
            "/IpamDriver.RequestAddress",
            r#"{"PoolID":"weft:10.9.0.0/24","Address":"","Options":{"RequestAddressType":"com.docker.network.gateway"}}"#,
        )
        .await;
        assert_eq!(gateway["Address"], "10.9.0.1/24", "{gateway}");

        let network_id = "ab".repeat(32);
        let create = format!(
            r#"{{"NetworkID":"{network_id}","Options":{{"com.docker.network.generic":{{}}}},
            "IPv4Data":[{{"AddressSpace":"weft","Pool":"10.9.0.0/24","Gateway":"10.9.0.1/24"}}],"IPv6Data":[]}}"#
        );
        for _ in 0..2 {
            let (status, answer) = call(&p, "/NetworkDriver.CreateNetwork", &create).await;
            assert_eq!((status, answer), (200, serde_json::json!({})));
        }
        let networks = p.controller.networks().await;
        assert_eq!(networks.len(), 1, "{networks:?}");
        assert_eq!(networks[0].name, "docker-abababababab");

        let (_, address) = call(
            &p,
            "/IpamDriver.RequestAddress",
            r#"{"PoolID":"weft:10.9.0.0/24","Address":"","Options":null}"#,
        )
        .await;
        assert_eq!(address["Address"], "10.9.0.2/24", "{address}");
        let endpoint = format!(
            r#"{{"NetworkID":"{network_id}","EndpointID":"{}","Interface":{{"Address":"10.9.0.2/24","AddressIPv6":"","MacAddress":""}},"Options":{{}}}}"#,
            "cd".repeat(32)
        );
        for _ in 0..2 {
            let (_, answer) = call(&p, "/NetworkDriver.CreateEndpoint", &endpoint).await;
            // Only what Docker left empty: the MAC.
            assert_eq!(
                answer,
                serde_json::json!({"Interface": {"MacAddress": "02:42:0a:09:00:02"}})
            );
        }
        assert_eq!(p.controller.docker_state().await.endpoints.len(), 1);

        // Undo, as Docker does (twice: a cleanup may repeat itself).
        let ids = format!(
            r#"{{"NetworkID":"{network_id}","EndpointID":"{}"}}"#,
            "cd".repeat(32)
        );
        let release = r#"{"PoolID":"weft:10.9.0.0/24","Address":"10.9.0.2"}"#;
        for _ in 0..2 {
            assert_eq!(call(&p, "/NetworkDriver.Leave", &ids).await.0, 200);
            assert_eq!(call(&p, "/NetworkDriver.DeleteEndpoint", &ids).await.0, 200);
            assert_eq!(call(&p, "/IpamDriver.ReleaseAddress", release).await.0, 200);
        }
        let delete = format!(r#"{{"NetworkID":"{network_id}"}}"#);
        assert_eq!(
            call(&p, "/NetworkDriver.DeleteNetwork", &delete).await.0,
            200
        );
        let gateway_release = r#"{"PoolID":"weft:10.9.0.0/24","Address":"10.9.0.1"}"#;
        assert_eq!(
            call(&p, "/IpamDriver.ReleaseAddress", gateway_release)
                .await
                .0,
            200
        );
        let pool_release = r#"{"PoolID":"weft:10.9.0.0/24"}"#;
        for _ in 0..3 {
            assert_eq!(
                call(&p, "/IpamDriver.ReleasePool", pool_release).await.0,
                200
            );
        }
        assert!(p.controller.networks().await.is_empty());
        assert!(p.controller.docker_state().await.is_empty());

        // An unknown call is a 404, a body that is not the call's a 400.
        assert_eq!(
            call(&p, "/NetworkDriver.AllocateNetwork", "{}").await.0,
            404
        );
        let (status, bad) = call(&p, "/NetworkDriver.Join", r#"{"NetworkID":1}"#).await;
        assert_eq!(status, 400);
        assert!(bad["Err"].as_str().unwrap_or("").contains("Join"), "{bad}");
    }

    #[test]
    fn bad_bodies_are_400_with_the_call_and_the_field() {
        let e = parse_body::<protocol::NetworkRequest>("/NetworkDriver.DeleteNetwork", b"{}")
            .unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.message.contains("DeleteNetwork"), "{}", e.message);
        assert!(e.message.contains("NetworkID"), "{}", e.message);
    }
}
