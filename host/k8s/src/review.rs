//! One TokenReview against the API server, retried with backoff on 5xx, 429 and connection
//! failures (honouring `Retry-After`), never on other 4xx.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};

use super::request::{Answer, exchange};
use super::{ReviewFailure, ReviewOutcome, Settings, Stats, unverified_expiry_ms};

const PATH: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
/// The longest `Retry-After` the gateway waits out within one review.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(2);

enum Attempt {
    Done(Result<ReviewOutcome, ReviewFailure>),
    Retry {
        message: String,
        retry_after: Option<Duration>,
    },
}

/// The `message` of a Kubernetes `Status` body, or a short excerpt of whatever came back.
fn status_message(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.get("message")
                .and_then(|m| m.as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned())
}

async fn attempt(
    client: &kube::Client,
    token: &str,
    audiences: &[String],
    timeout: Duration,
) -> Attempt {
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: token.to_string(),
            audiences: (!audiences.is_empty()).then(|| audiences.to_vec()),
        },
        ..Default::default()
    };
    let mut value = match serde_json::to_value(&review) {
        Ok(v) => v,
        Err(e) => return Attempt::Done(Err(ReviewFailure::Failed(e.to_string()))),
    };
    value["apiVersion"] = "authentication.k8s.io/v1".into();
    value["kind"] = "TokenReview".into();
    let body = match serde_json::to_vec(&value) {
        Ok(b) => b,
        Err(e) => return Attempt::Done(Err(ReviewFailure::Failed(e.to_string()))),
    };
    let request = match http::Request::post(PATH)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::ACCEPT, "application/json")
        .body(kube::client::Body::from(body))
    {
        Ok(r) => r,
        Err(e) => return Attempt::Done(Err(ReviewFailure::Failed(e.to_string()))),
    };
    let Answer {
        status,
        retry_after,
        body,
    } = match exchange(client, request, timeout).await {
        Ok(a) => a,
        Err(message) => {
            return Attempt::Retry {
                message,
                retry_after: None,
            };
        }
    };
    match status.as_u16() {
        200 | 201 => Attempt::Done(parse(&body, token)),
        401 | 403 => Attempt::Done(Err(ReviewFailure::Forbidden(format!(
            "{status}: {}",
            status_message(&body)
        )))),
        429 | 500..=599 => Attempt::Retry {
            message: format!("{status}: {}", status_message(&body)),
            retry_after,
        },
        _ => Attempt::Done(Err(ReviewFailure::Failed(format!(
            "{status}: {}",
            status_message(&body)
        )))),
    }
}

fn parse(body: &[u8], token: &str) -> Result<ReviewOutcome, ReviewFailure> {
    // The answer echoes the request, token included: a parse error says where and what kind
    // of problem, never a value from the body (serde's text may quote one).
    let review: TokenReview = serde_json::from_slice(body).map_err(|e| {
        ReviewFailure::Failed(format!(
            "malformed TokenReview answer ({:?} error at line {} column {})",
            e.classify(),
            e.line(),
            e.column()
        ))
    })?;
    let status = review.status.unwrap_or_default();
    let user = status.user.unwrap_or_default();
    let authenticated = status.authenticated.unwrap_or(false);
    Ok(ReviewOutcome {
        authenticated,
        username: user.username.unwrap_or_default(),
        uid: user.uid.unwrap_or_default(),
        groups: user.groups.unwrap_or_default(),
        extra: user.extra.unwrap_or_default().into_iter().collect(),
        audiences: status.audiences.unwrap_or_default(),
        error: status.error.filter(|e| !e.is_empty()),
        expires_at_ms: if authenticated {
            unverified_expiry_ms(token)
        } else {
            None
        },
    })
}

pub(super) async fn token_review(
    client: &kube::Client,
    token: &str,
    audiences: &[String],
    settings: &Settings,
    stats: &Stats,
) -> Result<ReviewOutcome, ReviewFailure> {
    let started = Instant::now();
    let mut backoff = Duration::from_millis(100);
    let mut tries = 0;
    loop {
        stats.api_requests.fetch_add(1, Ordering::Relaxed);
        tries += 1;
        match attempt(client, token, audiences, settings.request_timeout()).await {
            Attempt::Done(result) => return result,
            Attempt::Retry {
                message,
                retry_after,
            } => {
                let wait = match retry_after {
                    Some(ra) => ra.min(MAX_RETRY_AFTER),
                    None => {
                        let jitter = rand::random_range(0..=backoff.as_millis() as u64);
                        Duration::from_millis(backoff.as_millis() as u64 / 2 + jitter / 2)
                    }
                };
                let budget = settings.request_timeout() * (settings.retries + 1);
                if tries > settings.retries
                    || retry_after.is_some_and(|ra| ra > MAX_RETRY_AFTER)
                    || started.elapsed() + wait > budget
                {
                    tracing::warn!(tries, %message, "TokenReview failed");
                    return Err(ReviewFailure::Unavailable {
                        message,
                        retry_after,
                    });
                }
                tracing::debug!(tries, %message, wait_ms = wait.as_millis() as u64, "TokenReview will be retried");
                tokio::time::sleep(wait).await;
                backoff *= 2;
            }
        }
    }
}

#[cfg(test)]
mod fuzz {
    //! Fuzz harness (proptest): whatever the API server answers, parsing neither panics nor
    //! lets the reviewed token into an error; only `authenticated: true` authenticates.

    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::parse;

    const TOKEN: &str = "eyJTOKENxq.eyJwYXlsb2FkIn0.c2ln";

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            "[a-z:/.-]{0,10}".prop_map(Value::String),
            Just(Value::String(TOKEN.into())),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// A TokenReview answer with every part now and then replaced by arbitrary JSON.
    fn answer() -> impl Strategy<Value = Value> {
        (value(), value(), value(), value(), 0usize..5).prop_map(|(a, b, c, d, which)| {
            let mut r = json!({
                "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                "spec": {"token": TOKEN, "audiences": ["trustgate"]},
                "status": {"authenticated": true, "audiences": ["trustgate"],
                    "user": {"username": "system:serviceaccount:a:b", "uid": "u", "groups": ["g"],
                        "extra": {"k": ["v"]}}},
            });
            // Sets `key` in the object at `path`, if it still is an object.
            let mut put = |path: &str, key: &str, v: Value| {
                if let Some(o) = r.pointer_mut(path).and_then(Value::as_object_mut) {
                    o.insert(key.into(), v);
                }
            };
            put("/status/user", "groups", b);
            put("/status", "error", c);
            put("", "spec", d);
            match which {
                0 => put("/status", "authenticated", a),
                1 => put("/status", "user", a),
                2 => put("/status/user", "extra", a),
                3 => put("", "status", a),
                _ => put("/status", "audiences", a),
            }
            r
        })
    }

    proptest! {
        #[test]
        fn any_answer_parses_or_fails_without_the_token(body in answer()) {
            match parse(body.to_string().as_bytes(), TOKEN) {
                Ok(outcome) => {
                    let claimed = body["status"]["authenticated"] == Value::Bool(true);
                    prop_assert_eq!(outcome.authenticated, claimed);
                }
                Err(e) => {
                    let text = format!("{e:?}");
                    prop_assert!(!text.contains("TOKENxq"), "{}", text);
                }
            }
        }

        #[test]
        fn any_bytes_parse_or_fail(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            if let Err(e) = parse(&bytes, TOKEN) {
                let text = format!("{e:?}");
                prop_assert!(!text.contains("TOKENxq"), "{}", text);
            }
        }

        #[test]
        fn an_unverified_expiry_is_read_or_not_without_panicking(token in ".{0,200}") {
            let _ = crate::unverified_expiry_ms(&token);
        }
    }
}
