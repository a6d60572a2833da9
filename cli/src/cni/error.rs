//! CNI errors: the spec's JSON error object (`cniVersion`, `code`, `msg`,
//! `details`) and its well-known codes (CNI spec 1.1, "Error"), plus the
//! plugin-specific codes weft adds from 100 up (0-99 are the spec's).
//!
//! A plugin prints the error on stdout and exits non-zero; `msg` is a
//! short summary a runtime shows, `details` says what to do about it.

use serde::Serialize;

/// One of the spec's error codes, or one of weft's (100 and up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// 1: the config's `cniVersion` is not one this plugin speaks.
    IncompatibleVersion,
    /// 2: a field of the network config this plugin does not support.
    UnsupportedField,
    /// 3: the container is unknown or gone; the runtime needs no cleanup.
    UnknownContainer,
    /// 4: a required environment variable is missing or invalid.
    InvalidEnvironment,
    /// 5: an I/O failure (reading stdin, the netns).
    Io,
    /// 6: stdin could not be decoded.
    Decode,
    /// 7: the network config is invalid.
    InvalidConfig,
    /// 11: a transient failure (the daemon is not reachable): try again.
    TryAgainLater,
    /// 50: STATUS: the plugin cannot serve ADD now.
    NotAvailable,
    /// 100 (weft): the daemon refused the request (address in use, ...).
    DaemonRefused,
    /// 101 (weft): the daemon failed while doing it.
    DaemonFailed,
    /// 102 (weft): CHECK found the attachment different from what ADD made.
    CheckFailed,
}

impl ErrorCode {
    /// The number on the wire.
    pub const fn number(self) -> u32 {
        match self {
            ErrorCode::IncompatibleVersion => 1,
            ErrorCode::UnsupportedField => 2,
            ErrorCode::UnknownContainer => 3,
            ErrorCode::InvalidEnvironment => 4,
            ErrorCode::Io => 5,
            ErrorCode::Decode => 6,
            ErrorCode::InvalidConfig => 7,
            ErrorCode::TryAgainLater => 11,
            ErrorCode::NotAvailable => 50,
            ErrorCode::DaemonRefused => 100,
            ErrorCode::DaemonFailed => 101,
            ErrorCode::CheckFailed => 102,
        }
    }
}

/// An error to print as the spec's error object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    /// Its code.
    pub code: ErrorCode,
    /// A short summary.
    pub msg: String,
    /// What exactly, and what to do about it.
    pub details: String,
}

/// The JSON shape (CNI spec, "Error").
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ErrorJson<'a> {
    cni_version: &'a str,
    code: u32,
    msg: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    details: &'a str,
}

impl CniError {
    /// An error with `code`, summary `msg` and `details`.
    pub fn new(code: ErrorCode, msg: impl Into<String>, details: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// The error object, for a config of `cni_version`.
    pub fn to_json(&self, cni_version: &str) -> String {
        let json = ErrorJson {
            cni_version,
            code: self.code.number(),
            msg: &self.msg,
            details: &self.details,
        };
        // Serializing a struct of strings and a number cannot fail.
        serde_json::to_string(&json).unwrap_or_else(|_| {
            format!(
                "{{\"cniVersion\":\"1.1.0\",\"code\":{},\"msg\":\"error\"}}",
                self.code.number()
            )
        })
    }
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.details.is_empty() {
            write!(f, "{} (code {})", self.msg, self.code.number())
        } else {
            write!(
                f,
                "{}: {} (code {})",
                self.msg,
                self.details,
                self.code.number()
            )
        }
    }
}

impl std::error::Error for CniError {}
