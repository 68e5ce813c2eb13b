//! Protocol v1: JSON text frames over WebSocket (see `docs/protocol.md`). This module holds the
//! wire types, their strict parsing, the error codes and the device-identity proof; it knows
//! nothing of the gateway.

mod codes;
mod device;
mod frames;

pub use codes::{CloseCode, ErrorCode};
pub use device::{DeviceError, DeviceKey, MAX_SIGNATURE_SKEW_MS, device_id, signing_payload};
pub use frames::{
    AuthParams, ClientFrame, ClientInfo, ConnectParams, DeviceProof, ErrorBody, EventFrame,
    FrameError, HelloAuth, HelloOk, HelloPolicy, HelloServer, Pairing, RequestFrame, ResponseFrame,
    Role, ServerFrame, parse_client_frame, parse_params,
};

/// The auth method of a paired device presenting its device token.
pub const DEVICE_TOKEN_METHOD: &str = "device-token";

/// The protocol version this gateway speaks.
pub const PROTOCOL_VERSION: u32 = 1;
