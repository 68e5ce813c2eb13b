//! Frames and their parameters. Parsing is strict: an unknown field anywhere in a client frame
//! is an error naming its full path (`params.client.nmae`).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::codes::ErrorCode;

/// A request frame from a client: `{"type":"req","id":S,"method":S,"params":{}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestFrame {
    /// Always `req`.
    #[serde(rename = "type")]
    pub kind: ReqTag,
    /// The client's id for matching the response.
    pub id: String,
    /// The method, e.g. `connect`, `ping`.
    pub method: String,
    /// Method parameters (an object; `{}` if omitted).
    #[serde(default = "empty_object")]
    pub params: Value,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

/// The literal `req`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReqTag {
    /// `req`
    Req,
}

impl RequestFrame {
    /// A request with the given id, method and params.
    pub fn new(id: impl Into<String>, method: impl Into<String>, params: Value) -> Self {
        Self {
            kind: ReqTag::Req,
            id: id.into(),
            method: method.into(),
            params,
        }
    }
}

/// What a client may send: only requests.
pub type ClientFrame = RequestFrame;

/// A response frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseFrame {
    /// Always `res`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The request's id.
    pub id: String,
    /// Whether the request succeeded.
    pub ok: bool,
    /// The result, on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
    /// The error, on failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

impl ResponseFrame {
    /// A success.
    pub fn ok(id: impl Into<String>, payload: Value) -> Self {
        Self {
            kind: "res".into(),
            id: id.into(),
            ok: true,
            payload: Some(payload),
            error: None,
        }
    }

    /// A failure.
    pub fn err(id: impl Into<String>, error: ErrorBody) -> Self {
        Self {
            kind: "res".into(),
            id: id.into(),
            ok: false,
            payload: None,
            error: Some(error),
        }
    }
}

/// `{"code":S,"message":S,"retryable":B,"retryAfterMs"?:N,"details"?:{}}`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    /// The stable code.
    pub code: ErrorCode,
    /// A human-readable explanation (never a secret).
    pub message: String,
    /// Whether the client should retry.
    pub retryable: bool,
    /// How long to wait before retrying, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// Structured extras, e.g. `{"requestId":...}` or `{"field":...}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

impl ErrorBody {
    /// An error whose retryability follows from its code.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retryable: code.retryable(),
            retry_after_ms: None,
            details: None,
        }
    }

    /// Adds details.
    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    /// Adds a retry hint.
    pub fn with_retry_after(mut self, ms: Option<u64>) -> Self {
        self.retry_after_ms = ms;
        self
    }
}

/// An event frame: `{"type":"event","event":S,"payload":{},"seq"?:N}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventFrame {
    /// Always `event`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The event name, e.g. `tick`.
    pub event: String,
    /// Event data.
    pub payload: Value,
    /// Sequence number, for ordered events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
}

impl EventFrame {
    /// An event.
    pub fn new(event: impl Into<String>, payload: Value, seq: Option<u64>) -> Self {
        Self {
            kind: "event".into(),
            event: event.into(),
            payload,
            seq,
        }
    }
}

/// What the server sends, as a client parses it (lenient: unknown fields are ignored so old
/// clients keep working with newer servers).
#[derive(Debug, Clone, PartialEq)]
pub enum ServerFrame {
    /// A response.
    Res(ResponseFrame),
    /// An event.
    Event(EventFrame),
    /// A request from the server (not used in v1 but parsed for completeness).
    Req(RequestFrame),
}

impl ServerFrame {
    /// Parses a server frame.
    pub fn parse(text: &str) -> Result<Self, FrameError> {
        let value: Value = serde_json::from_str(text).map_err(|e| FrameError {
            field: None,
            message: format!("not a JSON object: {e}"),
        })?;
        match value.get("type").and_then(Value::as_str) {
            Some("res") => from_value(value, "").map(Self::Res),
            Some("event") => from_value(value, "").map(Self::Event),
            Some("req") => from_value(value, "").map(Self::Req),
            _ => Err(FrameError {
                field: Some("type".into()),
                message: "`type` must be `res`, `event` or `req`".into(),
            }),
        }
    }
}

/// The role a peer asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Runs commands for operators.
    Worker,
    /// Manages workers and pairing.
    Operator,
}

impl Role {
    /// `worker` or `operator`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Worker => "worker",
            Self::Operator => "operator",
        }
    }
}

/// `params` of `connect`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConnectParams {
    /// Lowest protocol version the client speaks.
    pub min_protocol: u32,
    /// Highest protocol version the client speaks.
    pub max_protocol: u32,
    /// The client software.
    pub client: ClientInfo,
    /// The requested role.
    pub role: Role,
    /// The requested scopes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// Presented credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthParams>,
    /// A device identity proof.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceProof>,
}

/// `client` of `connect`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClientInfo {
    /// The client program's id.
    pub id: String,
    /// Its version.
    pub version: String,
    /// Its platform.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// An id of this running instance (e.g. the pod name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
}

/// `auth` of `connect` and `reauth`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthParams {
    /// The auth method, e.g. `k8s-sa-trust`, `device-token`.
    pub method: String,
    /// A bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// A device token from an earlier pairing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_token: Option<String>,
}

/// `device` of `connect`: an Ed25519 signature over the connection's challenge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DeviceProof {
    /// Lowercase hex SHA-256 of the raw public key.
    pub id: String,
    /// Raw 32-byte Ed25519 public key, base64url without padding.
    pub public_key: String,
    /// Signature over the signing payload, base64url without padding.
    pub signature: String,
    /// When the client signed (Unix ms).
    pub signed_at: u64,
    /// The challenge nonce.
    pub nonce: String,
}

/// How the peer got past pairing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pairing {
    /// A plugin allowed it to skip pairing.
    Skipped,
    /// It is an approved device.
    Paired,
}

/// Payload of a successful `connect`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HelloOk {
    /// Always `hello-ok`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The negotiated protocol version.
    pub protocol: u32,
    /// The server.
    pub server: HelloServer,
    /// What the peer was authenticated as.
    pub auth: HelloAuth,
    /// Session limits.
    pub policy: HelloPolicy,
}

/// `server` of `hello-ok`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HelloServer {
    /// Gateway version.
    pub version: String,
    /// This connection's id.
    pub conn_id: String,
}

/// `auth` of `hello-ok`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HelloAuth {
    /// The method that established the identity.
    pub method: String,
    /// The subject.
    pub subject: String,
    /// The granted role.
    pub role: Role,
    /// The granted scopes.
    pub scopes: Vec<String>,
    /// How pairing was satisfied.
    pub pairing: Pairing,
    /// A new device token, when one was issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_token: Option<String>,
    /// When the session's credentials expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
}

/// `policy` of `hello-ok`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HelloPolicy {
    /// Largest message the server accepts, in bytes.
    pub max_payload: usize,
    /// How long the server waits for `connect`.
    pub handshake_timeout_ms: u64,
    /// Interval of `tick` events.
    pub tick_interval_ms: u64,
}

/// A frame or parameter that does not parse. `field` is the dotted path of the offending
/// field, when there is one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FrameError {
    /// The offending field, e.g. `params.client.id`.
    pub field: Option<String>,
    /// What is wrong, naming the field.
    pub message: String,
}

/// A client-chosen name (an unknown field, a map key) as it may appear in an error: shown only
/// when it looks like a field name, so a token sent as a key is never echoed.
fn shown_name(name: &str) -> Option<&str> {
    (!name.is_empty()
        && name.len() <= 40
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
    .then_some(name)
}

/// What kind of JSON value serde's `invalid type` / `invalid value` saw, without the value:
/// serde writes e.g. `string "Bearer eyJ…"` or `integer `5``.
fn kind_of(unexpected: &str) -> &'static str {
    const KINDS: &[(&str, &str)] = &[
        ("string", "a string"),
        ("integer", "an integer"),
        ("floating point", "a number"),
        ("boolean", "a boolean"),
        ("map", "an object"),
        ("sequence", "an array"),
        ("null", "null"),
        ("unit", "null"),
        ("char", "a string"),
    ];
    KINDS
        .iter()
        .find(|(prefix, _)| unexpected.starts_with(prefix))
        .map_or("a value of another kind", |(_, kind)| kind)
}

/// serde's message with every client value taken out: what was expected, what kind of value
/// came, which of our fields is missing — never the value itself.
fn redacted(inner: &str) -> String {
    if let Some(rest) = inner
        .strip_prefix("invalid type: ")
        .or_else(|| inner.strip_prefix("invalid value: "))
    {
        // `<unexpected>, expected <what we wanted>`: the second half is ours.
        let expected = rest.rsplit_once(", expected ").map(|(_, e)| e);
        return match expected {
            Some(e) => format!("expected {e}, got {}", kind_of(rest)),
            None => format!("got {} of the wrong kind", kind_of(rest)),
        };
    }
    if let Some(rest) = inner.strip_prefix("unknown variant `") {
        let expected = rest.split_once("`, expected ").map(|(_, e)| e);
        return match expected {
            Some(e) => format!("not an accepted value (expected {e})"),
            None => "not an accepted value".into(),
        };
    }
    if let Some(rest) = inner.strip_prefix("unknown field `") {
        // The name is the client's text (it could be a token): only what we accept is shown.
        let expected = rest.split_once("`, ").map(|(_, e)| e);
        return match expected {
            Some(e) => format!("an unknown field; {e}"),
            None => "an unknown field".into(),
        };
    }
    if inner.starts_with("missing field `") || inner.starts_with("invalid length ") {
        // Our field names and counts only.
        return inner.to_string();
    }
    if inner.starts_with("duplicate field `") {
        return "a field appears twice".into();
    }
    "not valid here".into()
}

fn from_value<T: DeserializeOwned>(value: Value, prefix: &str) -> Result<T, FrameError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        // The path is made of our field names, array indices and — inside maps — the client's
        // keys; a key that does not look like a name is not shown.
        let path: Vec<String> = e
            .path()
            .iter()
            .map(|segment| match segment {
                serde_path_to_error::Segment::Seq { index } => format!("[{index}]"),
                serde_path_to_error::Segment::Map { key } => {
                    shown_name(key).map_or_else(|| ".<key>".to_string(), |k| format!(".{k}"))
                }
                serde_path_to_error::Segment::Enum { variant } => shown_name(variant)
                    .map_or_else(|| ".<variant>".to_string(), |v| format!(".{v}")),
                serde_path_to_error::Segment::Unknown => ".?".to_string(),
            })
            .collect();
        let inner = e.into_inner().to_string();
        // serde_path_to_error's path ends at an unknown field's own name: drop it.
        let mut path = path;
        if inner.starts_with("unknown field `") {
            path.pop();
        }
        let missing = inner
            .strip_prefix("missing field `")
            .and_then(|r| r.split('`').next());
        let mut field = path.concat().trim_start_matches('.').to_string();
        if let Some(name) = missing
            && !field.ends_with(name)
        {
            if !field.is_empty() {
                field.push('.');
            }
            field.push_str(name);
        }
        if !prefix.is_empty() {
            field = if field.is_empty() {
                prefix.to_string()
            } else {
                format!("{prefix}.{field}")
            };
        }
        let message = redacted(&inner);
        let message = if field.is_empty() {
            message
        } else {
            format!("`{field}`: {message}")
        };
        FrameError {
            field: (!field.is_empty()).then_some(field),
            message,
        }
    })
}

/// Parses a client's text frame strictly.
pub fn parse_client_frame(text: &str) -> Result<ClientFrame, FrameError> {
    // serde_json's syntax errors say where (line, column) and what was expected, never the
    // text around it.
    let value: Value = serde_json::from_str(text).map_err(|e| FrameError {
        field: None,
        message: format!("frame is not valid JSON: {e}"),
    })?;
    if !value.is_object() {
        return Err(FrameError {
            field: None,
            message: "frame must be a JSON object".into(),
        });
    }
    match value.get("type").and_then(Value::as_str) {
        Some("req") => {}
        Some(_) => {
            return Err(FrameError {
                field: Some("type".into()),
                message: "`type`: clients may only send `req` frames".into(),
            });
        }
        None => {
            return Err(FrameError {
                field: Some("type".into()),
                message: "`type`: missing or not a string".into(),
            });
        }
    }
    let frame: RequestFrame = from_value(value, "")?;
    if !frame.params.is_object() {
        return Err(FrameError {
            field: Some("params".into()),
            message: "`params`: must be an object".into(),
        });
    }
    Ok(frame)
}

/// Parses a request's `params` into a method's parameter type; errors name `params.<field>`.
pub fn parse_params<T: DeserializeOwned>(params: &Value) -> Result<T, FrameError> {
    from_value(params.clone(), "params")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_reported_at_their_path_without_their_name() {
        // An unknown field's name is the client's text: reported as "an unknown field" at
        // the path of the object that holds it, with what that object accepts.
        let e =
            parse_client_frame(r#"{"type":"req","id":"1","method":"x","extra":1}"#).unwrap_err();
        assert_eq!(e.field, None);
        assert!(
            e.message.starts_with("an unknown field; expected one of"),
            "{}",
            e.message
        );
        assert!(!e.message.contains("extra"), "{}", e.message);
        let f = parse_client_frame(
            r#"{"type":"req","id":"1","method":"connect","params":{"minProtocol":1,"maxProtocol":1,"role":"worker","client":{"id":"a","version":"1","nmae":"x"}}}"#,
        )
        .unwrap();
        let e = parse_params::<ConnectParams>(&f.params).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("params.client"));
        assert!(
            e.message.starts_with("`params.client`: an unknown field"),
            "{}",
            e.message
        );
        assert!(!e.message.contains("nmae"), "{}", e.message);
        let e = parse_params::<ConnectParams>(&serde_json::json!({"minProtocol":1})).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("params.maxProtocol"));
    }

    #[test]
    fn only_requests_are_accepted_from_clients() {
        let e = parse_client_frame(r#"{"type":"event","event":"x","payload":{}}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("type"));
        assert!(parse_client_frame("[1]").is_err());
        assert!(parse_client_frame("nope").is_err());
        let ok = parse_client_frame(r#"{"type":"req","id":"7","method":"ping"}"#).unwrap();
        assert_eq!(ok.params, serde_json::json!({}));
    }

    #[test]
    fn error_bodies_serialize_in_camel_case() {
        let body = ErrorBody::new(ErrorCode::RateLimited, "slow down").with_retry_after(Some(500));
        let v = serde_json::to_value(ResponseFrame::err("1", body)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"res","id":"1","ok":false,"error":{"code":"RATE_LIMITED","message":"slow down","retryable":true,"retryAfterMs":500}})
        );
    }
}
