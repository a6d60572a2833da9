//! The API client every CLI subcommand uses: HTTP/1.1 over the daemon's
//! Unix socket (hyper), JSON in and out.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::UnixStream;

/// A client of one daemon.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

/// The daemon's error answer: its HTTP status (so a caller can tell "no
/// such thing" from "try again") and its message, which is all `Display`
/// shows.
#[derive(Debug)]
pub struct Refusal {
    /// The HTTP status (`network exists` and weft-cni tell 404 apart).
    pub status: StatusCode,
    /// The daemon's message.
    pub message: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Refusal {}

impl Client {
    /// A client of the daemon listening on `socket`.
    pub fn new(socket: &Path) -> Self {
        Client {
            socket: socket.to_owned(),
        }
    }

    /// Connect, send one request, and return the daemon's answer (its
    /// body not read yet).
    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>> {
        let stream = UnixStream::connect(&self.socket).await.with_context(|| {
            format!(
                "connecting to the weft daemon at {} (is `weft daemon` running? --socket or WEFT_SOCKET choose another)",
                self.socket.display()
            )
        })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP handshake with the daemon")?;
        tokio::spawn(connection);
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "weft");
        if body.is_some() {
            builder = builder.header("content-type", "application/json");
        }
        let request = builder.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        sender
            .send_request(request)
            .await
            .context("sending the request")
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes)> {
        let response = self.request(method, path, body).await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        Ok((status, bytes))
    }

    /// Send a request whose answer is a stream (`weft capture`): each
    /// chunk of a success goes to `sink` as it arrives; an error answer
    /// becomes an error carrying the daemon's message.
    ///
    /// # Errors
    ///
    /// The daemon is unreachable or refused, the stream broke, or `sink`
    /// failed.
    pub async fn stream<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: &B,
        mut sink: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        let response = self
            .request(method, path, Some(serde_json::to_vec(body)?))
            .await?;
        let status = response.status();
        let mut body = response.into_body();
        if !status.is_success() {
            let bytes = body.collect().await?.to_bytes();
            return Err(refusal(status, &bytes).into());
        }
        while let Some(frame) = body.frame().await {
            let frame = frame.context("reading the daemon's stream")?;
            if let Some(data) = frame.data_ref() {
                sink(data)?;
            }
        }
        Ok(())
    }

    /// Send a request; decode a success as `T`, turn an error answer into
    /// an error carrying the daemon's message.
    ///
    /// # Errors
    ///
    /// The daemon is unreachable, answered with an error, or with
    /// something that is not `T`.
    pub async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T> {
        let body = body.map(serde_json::to_vec).transpose()?;
        let (status, bytes) = self.send(method, path, body).await?;
        if !status.is_success() {
            return Err(refusal(status, &bytes).into());
        }
        let bytes = if bytes.is_empty() {
            Bytes::from_static(b"null")
        } else {
            bytes
        };
        serde_json::from_slice(&bytes).context("decoding the daemon's answer")
    }
}

/// The daemon's error answer: its message, or the body as text.
fn refusal(status: StatusCode, bytes: &[u8]) -> Refusal {
    let message = serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(bytes).into_owned());
    Refusal { status, message }
}
