//! A raw protocol client over a real WebSocket, for asserting every protocol rule.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use trustgate_protocol::now_ms;
use trustgate_protocol::{DeviceKey, Role};

/// Longest a test waits for any single frame before failing (instead of hanging).
const WAIT: Duration = Duration::from_secs(15);

/// What arrived.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// A JSON text frame.
    Frame(Value),
    /// A close frame with code and reason.
    Close(u16, String),
    /// The stream ended without a close frame.
    Ended,
}

/// A client connection that has read the challenge.
pub struct WsClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The challenge nonce.
    pub nonce: String,
}

impl WsClient {
    /// Opens a connection to `url` and reads `connect.challenge`.
    pub async fn open(url: &str) -> Self {
        Self::open_with(url, None).await
    }

    /// Like [`WsClient::open`], trusting the given TLS configuration for `wss://`.
    pub async fn open_with(url: &str, tls: Option<std::sync::Arc<rustls::ClientConfig>>) -> Self {
        let connector = tls.map(tokio_tungstenite::Connector::Rustls);
        let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(url, None, true, connector)
            .await
            .expect("ws connect");
        let mut c = Self {
            ws,
            nonce: String::new(),
        };
        match c.recv().await {
            Incoming::Frame(f) => {
                assert_eq!(f["type"], "event", "{f}");
                assert_eq!(f["event"], "connect.challenge", "{f}");
                assert!(f["payload"]["ts"].as_u64().is_some(), "{f}");
                c.nonce = f["payload"]["nonce"].as_str().expect("nonce").to_string();
            }
            other => panic!("expected the challenge, got {other:?}"),
        }
        c
    }

    /// Like [`WsClient::open`], from the loopback address `local` (e.g. `127.0.0.2`), so a
    /// test can play several client addresses.
    pub async fn open_from(url: &str, local: std::net::IpAddr) -> Self {
        let stream = tcp_from(url, local).await;
        let (ws, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream))
            .await
            .expect("ws upgrade");
        let mut c = Self {
            ws,
            nonce: String::new(),
        };
        match c.recv().await {
            Incoming::Frame(f) => {
                c.nonce = f["payload"]["nonce"].as_str().expect("nonce").to_string();
            }
            other => panic!("expected the challenge, got {other:?}"),
        }
        c
    }

    /// Sends a text frame with arbitrary bytes as its payload (e.g. invalid UTF-8).
    pub async fn send_raw_text(&mut self, bytes: Vec<u8>) {
        use tokio_tungstenite::tungstenite::protocol::frame::Frame;
        use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
        let frame = Frame::message(bytes, OpCode::Data(Data::Text), true);
        self.ws
            .send(Message::Frame(frame))
            .await
            .expect("send raw frame");
    }

    /// Closes the connection cleanly.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }

    /// Sends raw text.
    pub async fn send_text(&mut self, text: impl Into<String>) {
        self.ws
            .send(Message::text(text.into()))
            .await
            .expect("send");
    }

    /// Sends a binary frame.
    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.ws.send(Message::binary(bytes)).await.expect("send");
    }

    /// Sends a JSON value.
    pub async fn send_json(&mut self, v: &Value) {
        self.send_text(v.to_string()).await;
    }

    /// Next frame, close, or end.
    pub async fn recv(&mut self) -> Incoming {
        loop {
            let next = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for the server");
            return match next {
                Some(Ok(Message::Text(t))) => {
                    Incoming::Frame(serde_json::from_str(&t).expect("server sent JSON"))
                }
                Some(Ok(Message::Close(Some(f)))) => {
                    Incoming::Close(u16::from(f.code), f.reason.to_string())
                }
                Some(Ok(Message::Close(None))) => Incoming::Close(1005, String::new()),
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Binary(_))) => panic!("server sent binary"),
                Some(Err(_)) | None => Incoming::Ended,
            };
        }
    }

    /// Sends a request and returns its response, skipping events.
    pub async fn request(&mut self, id: &str, method: &str, params: Value) -> Value {
        self.send_json(&json!({"type": "req", "id": id, "method": method, "params": params}))
            .await;
        self.response(id).await
    }

    /// Waits for the response with this id, skipping events.
    pub async fn response(&mut self, id: &str) -> Value {
        loop {
            match self.recv().await {
                Incoming::Frame(f) if f["type"] == "res" && f["id"] == id => return f,
                Incoming::Frame(_) => continue,
                other => panic!("expected response {id}, got {other:?}"),
            }
        }
    }

    /// Waits for an event with this name.
    pub async fn event(&mut self, name: &str) -> Value {
        loop {
            match self.recv().await {
                Incoming::Frame(f) if f["type"] == "event" && f["event"] == name => return f,
                Incoming::Frame(_) => continue,
                other => panic!("expected event {name}, got {other:?}"),
            }
        }
    }

    /// Waits for the close frame, skipping frames; returns (code, reason).
    pub async fn closed(&mut self) -> (u16, String) {
        loop {
            match self.recv().await {
                Incoming::Frame(_) => continue,
                Incoming::Close(code, reason) => return (code, reason),
                Incoming::Ended => panic!("the stream ended without a close frame"),
            }
        }
    }

    /// Sends `connect` with these params and returns the response.
    pub async fn connect(&mut self, params: Value) -> Value {
        self.request("c1", "connect", params).await
    }
}

/// `connect` params for a role with optional auth and device key.
pub fn connect_params(
    role: &str,
    auth: Option<Value>,
    device: Option<(&DeviceKey, &str)>,
) -> Value {
    let mut p = json!({
        "minProtocol": 1,
        "maxProtocol": 1,
        "client": {"id": "test-client", "version": "1.0.0"},
        "role": role,
    });
    if let Some(a) = auth {
        p["auth"] = a;
    }
    if let Some((key, nonce)) = device {
        let r = if role == "operator" {
            Role::Operator
        } else {
            Role::Worker
        };
        p["device"] =
            serde_json::to_value(key.prove("test-client", r, &[], nonce, now_ms())).expect("proof");
    }
    p
}

/// A TCP connection to the host of `ws://host:port` from the local address `local`.
pub async fn tcp_from(url: &str, local: std::net::IpAddr) -> TcpStream {
    let addr: std::net::SocketAddr = url
        .trim_start_matches("ws://")
        .trim_end_matches('/')
        .parse()
        .expect("ws://ip:port");
    let socket = match local {
        std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .expect("socket");
    socket
        .bind(std::net::SocketAddr::new(local, 0))
        .expect("bind local address");
    socket.connect(addr).await.expect("tcp connect")
}
