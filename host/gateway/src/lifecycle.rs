//! Device lifecycle operations — approve, reject, revoke — as every entry point (the admin API,
//! an operator's session, the CLI through the API) performs them: the store change, the audit
//! record naming who did it, and for a revocation the immediate close of the device's sessions.

use serde::Serialize;
use tracing::info;
use trustgate_protocol::{CloseCode, now_ms};

use crate::pairing_store::{DeviceRecord, PairingError, PendingRequest, StoreEvent};
use crate::state::GatewayState;

/// The audit record of a lifecycle event.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LifecycleRecord<'a> {
    /// Unix milliseconds.
    pub ts: u64,
    /// `pairing.approve`, `pairing.reject` or `device.revoke`.
    pub event: &'a str,
    /// Who did it: `admin-token`, or `operator:<subject>` for an operator session.
    pub actor: &'a str,
    /// The device.
    pub device: &'a str,
    /// The pairing request decided, for approve and reject.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<&'a str>,
    /// The role approved or asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'a str>,
    /// Sessions closed on this replica, for a revocation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sessions_closed: Option<usize>,
}

/// Lifecycle operations on behalf of one actor.
pub(crate) struct Lifecycle<'a> {
    state: &'a GatewayState,
    actor: &'a str,
}

impl<'a> Lifecycle<'a> {
    pub(crate) fn new(state: &'a GatewayState, actor: &'a str) -> Self {
        Self { state, actor }
    }

    fn audit(&self, record: LifecycleRecord<'_>) {
        self.state.audit.record(&record);
    }

    /// Approves a pending request.
    pub(crate) async fn approve(&self, request_id: &str) -> Result<DeviceRecord, PairingError> {
        let device = self.state.pairing.approve(request_id, self.actor).await?;
        let role = self
            .state
            .pairing
            .device(&device.id)
            .and_then(|d| d.roles.last().map(|r| r.as_str()))
            .unwrap_or("");
        info!(request = %request_id, device = %device.id, actor = %self.actor, "pairing approved");
        self.audit(LifecycleRecord {
            ts: now_ms(),
            event: "pairing.approve",
            actor: self.actor,
            device: &device.id,
            request_id: Some(request_id),
            role: Some(role),
            sessions_closed: None,
        });
        Ok(device)
    }

    /// Rejects a pending request.
    pub(crate) async fn reject(&self, request_id: &str) -> Result<PendingRequest, PairingError> {
        let request = self.state.pairing.reject(request_id).await?;
        info!(request = %request_id, device = %request.device_id, actor = %self.actor, "pairing rejected");
        self.audit(LifecycleRecord {
            ts: now_ms(),
            event: "pairing.reject",
            actor: self.actor,
            device: &request.device_id,
            request_id: Some(request_id),
            role: Some(request.role.as_str()),
            sessions_closed: None,
        });
        Ok(request)
    }

    /// Revokes an approved device and closes its sessions here at once (other replicas close
    /// theirs when the store tells them). Returns the device and the sessions closed here.
    pub(crate) async fn revoke(
        &self,
        device_id: &str,
    ) -> Result<(DeviceRecord, usize), PairingError> {
        let device = self.state.pairing.revoke(device_id).await?;
        let closed = close_device_sessions(self.state, device_id);
        info!(device = %device_id, actor = %self.actor, sessions = closed, "device revoked");
        self.audit(LifecycleRecord {
            ts: now_ms(),
            event: "device.revoke",
            actor: self.actor,
            device: device_id,
            request_id: None,
            role: None,
            sessions_closed: Some(closed),
        });
        Ok((device, closed))
    }
}

/// Closes every session of a device with 4401.
pub(crate) fn close_device_sessions(state: &GatewayState, device_id: &str) -> usize {
    state
        .sessions
        .close_where(CloseCode::CREDENTIALS_EXPIRED, "device revoked", |s| {
            s.device_id.as_deref() == Some(device_id)
        })
}

/// Follows the store's events for as long as the gateway runs: a device removed anywhere —
/// here, or on another replica sharing the store — closes its sessions here.
pub(crate) async fn follow_store(state: std::sync::Weak<GatewayState>) {
    let Some(mut events) = state.upgrade().map(|s| s.pairing.subscribe()) else {
        return;
    };
    loop {
        let event = events.recv().await;
        let Some(state) = state.upgrade() else { return };
        match event {
            Ok(StoreEvent::DeviceRemoved(id)) => {
                let closed = close_device_sessions(&state, &id);
                if closed > 0 {
                    info!(device = %id, sessions = closed, "sessions of a removed device closed");
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                // Events were missed: close every device session whose device is gone.
                let closed = state.sessions.close_where(
                    CloseCode::CREDENTIALS_EXPIRED,
                    "device revoked",
                    |s| {
                        s.device_id
                            .as_deref()
                            .is_some_and(|d| state.pairing.device(d).is_none())
                    },
                );
                info!(
                    sessions = closed,
                    "store events missed; device sessions re-checked"
                );
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}
