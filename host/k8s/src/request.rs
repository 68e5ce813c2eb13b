//! One HTTP exchange with the API server through the `kube` client (its TLS, CA and bearer
//! token), bounded by a timeout. Shared by TokenReview and the OIDC key-set fetches.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;

/// What the API server answered.
pub(super) struct Answer {
    pub status: http::StatusCode,
    /// `Retry-After` in seconds, if sent.
    pub retry_after: Option<Duration>,
    pub body: Bytes,
}

/// Sends `request` and reads the whole answer within `timeout`. A transport failure or the
/// timeout comes back as a message naming it (never the request body, which may hold a token).
pub(super) async fn exchange(
    client: &kube::Client,
    request: http::Request<kube::client::Body>,
    timeout: Duration,
) -> Result<Answer, String> {
    let exchange = async {
        let response = client.send(request).await.map_err(|e| e.to_string())?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok(Answer {
            status,
            retry_after,
            body,
        })
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(answer) => answer,
        Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
    }
}
