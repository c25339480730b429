//! The remote driver protocol's JSON (moby `libnetwork/drivers/remote/api/api.go`,
//! `libnetwork/docs/remote.md`), hand-written: no maintained Rust crate implements it.

use axum::{Json, response::IntoResponse};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Default, Serialize)]
pub struct Empty {}

#[derive(Debug, Serialize)]
pub struct Implements {
    #[serde(rename = "Implements")]
    pub implements: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Capabilities {
    #[serde(rename = "Scope")]
    pub scope: String,
    #[serde(rename = "ConnectivityScope")]
    pub connectivity_scope: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct IpamData {
    #[serde(rename = "Pool", default)]
    pub pool: String,
    /// CIDR form (`10.1.0.1/24`).
    #[serde(rename = "Gateway", default)]
    pub gateway: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct CreateNetwork {
    #[serde(rename = "NetworkID", default)]
    pub network_id: String,
    #[serde(rename = "Options", default)]
    pub options: serde_json::Map<String, Value>,
    #[serde(rename = "IPv4Data", default)]
    pub ipv4_data: Vec<IpamData>,
}

impl CreateNetwork {
    /// `--internal`, as Docker passes it to a remote driver: among the generic (`-o`)
    /// options, or as a top-level label.
    pub fn internal(&self) -> bool {
        let truthy = |v: &Value| v.as_bool() == Some(true) || v.as_str() == Some("true");
        let key = "com.docker.network.internal";
        self.options.get(key).is_some_and(truthy)
            || self
                .options
                .get("com.docker.network.generic")
                .and_then(|g| g.get(key))
                .is_some_and(truthy)
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct DeleteNetwork {
    #[serde(rename = "NetworkID", default)]
    pub network_id: String,
}

/// A failed call: `{"Err": "..."}` with the CLI's one-line message (Docker shows it).
#[derive(Debug)]
pub struct Failure(String);

impl Failure {
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> axum::response::Response {
        (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            Json(serde_json::json!({ "Err": self.0 })),
        )
            .into_response()
    }
}
