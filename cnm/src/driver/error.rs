//! Why a driver operation failed.

use std::path::PathBuf;

use weft_datapath::published::PublishError;
use weft_datapath::DatapathError;

use crate::attach::AttachError;

/// Why a driver operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The attach helper failed.
    #[error(transparent)]
    Attach(#[from] AttachError),
    /// The data path refused or is gone.
    #[error("data path")]
    Datapath(#[from] DatapathError),
    /// The helper's fd is not a usable TAP.
    #[error("the TAP fd for {sandbox} is not usable")]
    Tap {
        /// The sandbox.
        sandbox: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A VM's stream socket could not be bound.
    #[error("binding the VM socket {path}")]
    StreamSocket {
        /// The socket's path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A macvlan network's parent cannot be used.
    #[error("--opt parent={parent}: {reason}")]
    Parent {
        /// The option's value.
        parent: String,
        /// What is wrong, for the user.
        reason: String,
    },
    /// The helper answered without a TAP fd.
    #[error("the attach helper for {0} sent no TAP fd")]
    NoFd(PathBuf),
    /// The network is not known to the driver.
    #[error("network {0:?} is not known to the driver")]
    UnknownNetwork(String),
    /// A host port of a published port cannot be bound.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// An overlay network on a daemon that is not in a cluster.
    #[error("start the daemon with --listen to use overlay networks")]
    NoCluster,
    /// A published port's family has no address in the endpoint.
    #[error("-p {mapping}: the endpoint has no address of that family to relay to")]
    NoAddressFor {
        /// The mapping (`-p` syntax).
        mapping: String,
    },
}
