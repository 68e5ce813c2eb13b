//! trustgate protocol v1: JSON text frames over WebSocket (see `docs/protocol.md`). This crate
//! holds the wire types, their strict parsing, the error and close codes and the
//! device-identity proof. It is the bottom layer: it knows nothing of the gateway, the plugin
//! runtime or Kubernetes, and the worker client uses the same types as the server.

mod codes;
mod device;
mod frames;
#[cfg(test)]
mod fuzz;
mod time;

pub use codes::{CloseCode, ErrorCode};
pub use device::{DeviceError, DeviceKey, MAX_SIGNATURE_SKEW_MS, device_id, signing_payload};
pub use frames::{
    AuthParams, ClientFrame, ClientInfo, ConnectParams, DeviceProof, ErrorBody, EventFrame,
    FrameError, HelloAuth, HelloOk, HelloPolicy, HelloServer, Pairing, RequestFrame, ResponseFrame,
    Role, ServerFrame, parse_client_frame, parse_params,
};
pub use time::now_ms;

/// The auth method of a paired device presenting its device token.
pub const DEVICE_TOKEN_METHOD: &str = "device-token";

/// The protocol version this gateway speaks.
pub const PROTOCOL_VERSION: u32 = 1;
