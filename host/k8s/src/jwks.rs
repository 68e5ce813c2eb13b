//! Local verification of ServiceAccount tokens against the cluster's OIDC issuer keys: discovery
//! (`/.well-known/openid-configuration`) and the key set (`jwks_uri`) are fetched through the
//! same authenticated, CA-verified client as TokenReviews, cached, and refreshed when a token
//! names an unknown key id — at most once per `min_refresh`, so a flood of forged key ids
//! cannot turn into a flood of API calls.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::request::{Answer, exchange};
use super::{ReviewFailure, ReviewOutcome, Stats};
use crate::now_ms;

/// Tolerated clock skew for `exp`, `nbf` and `iat`.
const LEEWAY_S: u64 = 30;

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

#[derive(Deserialize)]
struct Ref {
    name: String,
    uid: String,
}

#[derive(Deserialize)]
struct KubeClaim {
    namespace: String,
    #[serde(default)]
    pod: Option<Ref>,
    serviceaccount: Ref,
    #[serde(default)]
    node: Option<Ref>,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    aud: Audience,
    exp: u64,
    #[serde(default)]
    iat: Option<u64>,
    #[serde(default)]
    jti: Option<String>,
    #[serde(rename = "kubernetes.io")]
    kubernetes: Option<KubeClaim>,
}

#[derive(Deserialize, Default)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
    #[default]
    None,
}

impl Audience {
    fn list(&self) -> Vec<String> {
        match self {
            Self::One(a) => vec![a.clone()],
            Self::Many(v) => v.clone(),
            Self::None => Vec::new(),
        }
    }
}

#[derive(Default)]
struct KeySet {
    issuer: Option<String>,
    keys: HashMap<String, (DecodingKey, Algorithm)>,
    last_refresh: Option<Instant>,
}

pub(super) struct Jwks {
    client: kube::Client,
    issuer_override: Option<String>,
    min_refresh: Duration,
    timeout: Duration,
    stats: Arc<Stats>,
    keys: std::sync::RwLock<KeySet>,
    refreshing: tokio::sync::Mutex<()>,
}

async fn get_json<T: for<'de> Deserialize<'de>>(
    client: &kube::Client,
    path: &str,
    timeout: Duration,
) -> Result<T, ReviewFailure> {
    let request = http::Request::get(path)
        .header(http::header::ACCEPT, "application/json")
        .body(kube::client::Body::empty())
        .map_err(|e| ReviewFailure::Failed(e.to_string()))?;
    let Answer { status, body, .. } =
        exchange(client, request, timeout)
            .await
            .map_err(|message| ReviewFailure::Unavailable {
                message: format!("GET {path}: {message}"),
                retry_after: None,
            })?;
    match status.as_u16() {
        200 => serde_json::from_slice(&body)
            .map_err(|e| ReviewFailure::Failed(format!("GET {path}: malformed answer: {e}"))),
        401 | 403 => Err(ReviewFailure::Forbidden(format!("GET {path}: {status}"))),
        429 | 500..=599 => Err(ReviewFailure::Unavailable {
            message: format!("GET {path}: {status}"),
            retry_after: None,
        }),
        _ => Err(ReviewFailure::Failed(format!("GET {path}: {status}"))),
    }
}

impl Jwks {
    pub(super) fn new(
        client: kube::Client,
        issuer_override: Option<String>,
        min_refresh: Duration,
        timeout: Duration,
        stats: Arc<Stats>,
    ) -> Self {
        Self {
            client,
            issuer_override,
            min_refresh,
            timeout,
            stats,
            keys: std::sync::RwLock::new(KeySet::default()),
            refreshing: tokio::sync::Mutex::new(()),
        }
    }

    fn lookup(&self, kid: &str) -> Option<(DecodingKey, Algorithm, String)> {
        let set = self.keys.read().unwrap_or_else(|p| p.into_inner());
        let issuer = set.issuer.clone()?;
        set.keys.get(kid).map(|(k, alg)| (k.clone(), *alg, issuer))
    }

    /// Fetches discovery and keys, unless another task just did or the rate limit says no.
    async fn refresh(&self, kid: &str) -> Result<(), ReviewFailure> {
        let _one_at_a_time = self.refreshing.lock().await;
        {
            let set = self.keys.read().unwrap_or_else(|p| p.into_inner());
            if set.keys.contains_key(kid) {
                return Ok(()); // another task's refresh brought it
            }
            if set
                .last_refresh
                .is_some_and(|t| t.elapsed() < self.min_refresh)
            {
                return Ok(()); // rate-limited: the kid stays unknown for now
            }
        }
        self.stats.jwks_refreshes.fetch_add(1, Ordering::Relaxed);
        let discovery: Discovery = get_json(
            &self.client,
            "/.well-known/openid-configuration",
            self.timeout,
        )
        .await?;
        // The key set is fetched from the API server the client trusts, whatever host the
        // discovery document names.
        let path = discovery
            .jwks_uri
            .parse::<http::Uri>()
            .ok()
            .and_then(|u| u.path_and_query().map(|p| p.as_str().to_string()))
            .unwrap_or_else(|| "/openid/v1/jwks".into());
        let set: JwkSet = get_json(&self.client, &path, self.timeout).await?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            let alg = match &jwk.algorithm {
                jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
                jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
                _ => continue,
            };
            if let Ok(key) = DecodingKey::from_jwk(jwk) {
                keys.insert(kid, (key, alg));
            }
        }
        let mut state = self.keys.write().unwrap_or_else(|p| p.into_inner());
        state.issuer = Some(self.issuer_override.clone().unwrap_or(discovery.issuer));
        state.keys = keys;
        state.last_refresh = Some(Instant::now());
        tracing::info!(
            keys = state.keys.len(),
            "refreshed the cluster's token signing keys"
        );
        Ok(())
    }

    pub(super) async fn verify(
        &self,
        token: &str,
        audiences: &[String],
    ) -> Result<ReviewOutcome, ReviewFailure> {
        let Ok(header) = jsonwebtoken::decode_header(token) else {
            return Ok(ReviewOutcome::rejected("malformed token"));
        };
        let kid = header.kid.unwrap_or_default();
        let found = match self.lookup(&kid) {
            Some(k) => Some(k),
            None => {
                self.refresh(&kid).await?;
                self.lookup(&kid)
            }
        };
        let Some((key, alg, issuer)) = found else {
            return Ok(ReviewOutcome::rejected(
                "token signed with an unknown key (bad signature or rotated key)",
            ));
        };
        if header.alg != alg {
            return Ok(ReviewOutcome::rejected(
                "token algorithm does not match its key",
            ));
        }
        let mut validation = Validation::new(alg);
        validation.leeway = LEEWAY_S;
        validation.validate_nbf = true;
        validation.set_issuer(&[issuer.as_str()]);
        validation.set_audience(audiences);
        validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
        let claims = match jsonwebtoken::decode::<Claims>(token, &key, &validation) {
            Ok(data) => data.claims,
            Err(e) => {
                use jsonwebtoken::errors::ErrorKind as K;
                let why = match e.kind() {
                    K::ExpiredSignature => "service account token has expired".to_string(),
                    K::ImmatureSignature => "token is not valid yet (nbf)".to_string(),
                    K::InvalidAudience => format!(
                        "token audiences are invalid for the target audiences {audiences:?}"
                    ),
                    K::InvalidIssuer => "token issuer is not the cluster's".to_string(),
                    K::InvalidSignature => "invalid signature".to_string(),
                    other => format!("invalid token: {other:?}"),
                };
                return Ok(ReviewOutcome::rejected(why));
            }
        };
        if claims
            .iat
            .is_some_and(|iat| iat > now_ms() / 1000 + LEEWAY_S)
        {
            return Ok(ReviewOutcome::rejected("token issued in the future (iat)"));
        }
        let Some(k) = claims.kubernetes else {
            return Ok(ReviewOutcome::rejected("not a ServiceAccount token"));
        };
        let mut extra = BTreeMap::new();
        if let Some(jti) = &claims.jti {
            extra.insert(
                "authentication.kubernetes.io/credential-id".to_string(),
                vec![format!("JTI={jti}")],
            );
        }
        if let Some(pod) = &k.pod {
            extra.insert(
                "authentication.kubernetes.io/pod-name".into(),
                vec![pod.name.clone()],
            );
            extra.insert(
                "authentication.kubernetes.io/pod-uid".into(),
                vec![pod.uid.clone()],
            );
        }
        if let Some(node) = &k.node {
            extra.insert(
                "authentication.kubernetes.io/node-name".into(),
                vec![node.name.clone()],
            );
            extra.insert(
                "authentication.kubernetes.io/node-uid".into(),
                vec![node.uid.clone()],
            );
        }
        let matched = claims
            .aud
            .list()
            .into_iter()
            .filter(|a| audiences.contains(a))
            .collect();
        Ok(ReviewOutcome {
            authenticated: true,
            username: claims.sub,
            uid: k.serviceaccount.uid,
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{}", k.namespace),
                "system:authenticated".into(),
            ],
            extra,
            audiences: matched,
            error: None,
            expires_at_ms: Some(claims.exp.saturating_mul(1000)),
        })
    }
}
