//! The ServiceAccount token issuer: RS256 signing keys (rotatable), TokenRequest-style minting
//! with the claims kube-apiserver puts in projected tokens, and the validation TokenReview
//! performs (signature, expiry, audiences, bound objects).

use std::collections::{BTreeMap, HashMap};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rsa::pkcs1::{EncodeRsaPrivateKey, EncodeRsaPublicKey};
use rsa::traits::PublicKeyParts;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// One signing key.
pub(crate) struct SigningKey {
    pub kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    n: String,
    e: String,
}

impl SigningKey {
    pub(crate) fn generate() -> crate::Result<Self> {
        Self::from_private(rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048)?)
    }

    /// Loads the key in `path` (PKCS#1 PEM), creating it on first use.
    pub(crate) fn persistent(path: &std::path::Path) -> crate::Result<Self> {
        use rsa::pkcs1::DecodeRsaPrivateKey;
        match std::fs::read_to_string(path) {
            Ok(pem) => Self::from_private(rsa::RsaPrivateKey::from_pkcs1_pem(&pem)?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let private = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048)?;
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                std::fs::write(
                    path,
                    private.to_pkcs1_pem(rsa::pkcs1::LineEnding::LF)?.as_bytes(),
                )?;
                Self::from_private(private)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn from_private(private: rsa::RsaPrivateKey) -> crate::Result<Self> {
        let public = private.to_public_key();
        let der = public.to_pkcs1_der()?;
        let kid = hex::encode(&sha2_256(der.as_bytes())[..16]);
        let pem = private.to_pkcs1_pem(rsa::pkcs1::LineEnding::LF)?;
        let public_pem = public.to_pkcs1_pem(rsa::pkcs1::LineEnding::LF)?;
        Ok(Self {
            kid,
            encoding: EncodingKey::from_rsa_pem(pem.as_bytes())?,
            decoding: DecodingKey::from_rsa_pem(public_pem.as_bytes())?,
            n: URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
            e: URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
        })
    }

    pub(crate) fn jwk(&self) -> Value {
        json!({"use": "sig", "kty": "RSA", "kid": self.kid, "alg": "RS256", "n": self.n, "e": self.e})
    }
}

fn sha2_256(bytes: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).to_vec()
}

/// A name and uid, as in the `kubernetes.io` claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ref {
    /// Object name.
    pub name: String,
    /// Object uid.
    pub uid: String,
}

/// The `kubernetes.io` private claim of a bound ServiceAccount token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubernetesClaim {
    /// The namespace.
    pub namespace: String,
    /// The bound pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<Ref>,
    /// The ServiceAccount.
    pub serviceaccount: Ref,
    /// The node the pod runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<Ref>,
}

/// The claims of a projected ServiceAccount token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer.
    pub iss: String,
    /// `system:serviceaccount:NS:NAME`.
    pub sub: String,
    /// Audiences.
    pub aud: Vec<String>,
    /// Expiry (s).
    pub exp: u64,
    /// Issued at (s).
    pub iat: u64,
    /// Not before (s).
    pub nbf: u64,
    /// Token id.
    pub jti: String,
    /// Bound objects.
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: KubernetesClaim,
}

/// What TokenReview concluded.
pub(crate) enum Review {
    Authenticated {
        claims: Box<Claims>,
        audiences: Vec<String>,
    },
    Rejected(String),
}

/// Signing keys, live pods and ServiceAccounts.
pub(crate) struct Issuer {
    pub issuer: String,
    /// The API server's own audiences (used when a review names none).
    pub api_audiences: Vec<String>,
    /// Newest last; all of them are published and accepted.
    pub keys: Vec<SigningKey>,
    /// `ns/name` → uid of pods this issuer bound tokens to.
    pub pods: HashMap<String, String>,
    /// `ns/name` → uid of ServiceAccounts this issuer minted for.
    pub service_accounts: HashMap<String, String>,
    /// Pods deleted since (`ns/name`): their tokens are invalidated. Objects the issuer has not
    /// seen (tokens minted by another process with the same key) count as existing.
    pub deleted_pods: std::collections::HashSet<String>,
}

fn uid() -> String {
    let b: [u8; 16] = rand::random();
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// What to mint.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// Namespace.
    pub namespace: String,
    /// ServiceAccount name.
    pub service_account: String,
    /// Audiences (`aud`).
    pub audiences: Vec<String>,
    /// Lifetime in seconds.
    pub expiration_seconds: u64,
    /// Bind to this pod (created if it does not exist); `None` for an unbound token.
    pub pod: Option<String>,
    /// Node name for the pod.
    pub node: Option<String>,
    /// The pod's UID (`None`: the issuer's own for that pod name, made up the first time).
    pub pod_uid: Option<String>,
    /// Issue-time override (Unix seconds), to mint already-expired tokens.
    pub issued_at: Option<u64>,
}

impl TokenRequest {
    /// A pod-bound token for `namespace/service_account` with one audience, valid one hour.
    pub fn new(namespace: &str, service_account: &str, audience: &str) -> Self {
        Self {
            namespace: namespace.into(),
            service_account: service_account.into(),
            audiences: vec![audience.into()],
            expiration_seconds: 3600,
            pod: Some(format!("{service_account}-{}", &uid()[..5])),
            node: Some("node-1".into()),
            pod_uid: None,
            issued_at: None,
        }
    }
}

pub(crate) fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Issuer {
    pub(crate) fn new(issuer: String, key: SigningKey) -> crate::Result<Self> {
        Ok(Self {
            api_audiences: vec![issuer.clone()],
            issuer,
            keys: vec![key],
            pods: HashMap::new(),
            service_accounts: HashMap::new(),
            deleted_pods: std::collections::HashSet::new(),
        })
    }

    pub(crate) fn mint(&mut self, req: &TokenRequest) -> crate::Result<(String, Claims)> {
        let sa_key = format!("{}/{}", req.namespace, req.service_account);
        let sa_uid = self
            .service_accounts
            .entry(sa_key)
            .or_insert_with(uid)
            .clone();
        let pod = req.pod.as_ref().map(|name| {
            let entry = self.pods.entry(format!("{}/{name}", req.namespace));
            let pod_uid = match &req.pod_uid {
                // A given UID is the pod's from now on (as a recreated pod's would be).
                Some(given) => entry.insert_entry(given.clone()).get().clone(),
                None => entry.or_insert_with(uid).clone(),
            };
            Ref {
                name: name.clone(),
                uid: pod_uid,
            }
        });
        let iat = req.issued_at.unwrap_or_else(now_s);
        let claims = Claims {
            iss: self.issuer.clone(),
            sub: format!(
                "system:serviceaccount:{}:{}",
                req.namespace, req.service_account
            ),
            aud: req.audiences.clone(),
            exp: iat + req.expiration_seconds,
            iat,
            nbf: iat,
            jti: uid(),
            kubernetes: KubernetesClaim {
                namespace: req.namespace.clone(),
                pod,
                serviceaccount: Ref {
                    name: req.service_account.clone(),
                    uid: sa_uid,
                },
                node: req.node.as_ref().map(|n| Ref {
                    name: n.clone(),
                    uid: format!("node-uid-{n}"),
                }),
            },
        };
        let key = self.keys.last().ok_or(crate::Error::NoSigningKey)?;
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(key.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &key.encoding)?;
        Ok((token, claims))
    }

    pub(crate) fn review(&self, token: &str, audiences: &[String]) -> Review {
        const INVALID: &str = "[invalid bearer token, ";
        let reject = |why: &str| Review::Rejected(format!("{INVALID}{why}]"));
        let Ok(header) = jsonwebtoken::decode_header(token) else {
            return reject("token lookup failed");
        };
        let Some(key) = self
            .keys
            .iter()
            .find(|k| Some(&k.kid) == header.kid.as_ref())
        else {
            return reject("square/go-jose: error in cryptographic primitive");
        };
        let mut validation = Validation::new(Algorithm::RS256);
        validation.validate_aud = false;
        validation.validate_nbf = true;
        validation.leeway = 0;
        validation.set_issuer(&[&self.issuer]);
        let claims = match jsonwebtoken::decode::<Claims>(token, &key.decoding, &validation) {
            Ok(d) => d.claims,
            Err(e) => {
                return match e.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                        reject("service account token has expired")
                    }
                    jsonwebtoken::errors::ErrorKind::InvalidSignature => {
                        reject("square/go-jose: error in cryptographic primitive")
                    }
                    _ => reject("token lookup failed"),
                };
            }
        };
        let wanted = if audiences.is_empty() {
            &self.api_audiences
        } else {
            audiences
        };
        let matched: Vec<String> = claims
            .aud
            .iter()
            .filter(|a| wanted.contains(a))
            .cloned()
            .collect();
        if matched.is_empty() {
            return reject(&format!(
                "token audiences {:?} is invalid for the target audiences {:?}",
                claims.aud, wanted
            ));
        }
        let ns = &claims.kubernetes.namespace;
        let sa = &claims.kubernetes.serviceaccount;
        if self
            .service_accounts
            .get(&format!("{ns}/{}", sa.name))
            .is_some_and(|uid| *uid != sa.uid)
        {
            return reject("service account token has been invalidated");
        }
        if let Some(pod) = &claims.kubernetes.pod {
            let key = format!("{ns}/{}", pod.name);
            if self.deleted_pods.contains(&key)
                || self.pods.get(&key).is_some_and(|uid| *uid != pod.uid)
            {
                return reject("service account token has been invalidated");
            }
        }
        Review::Authenticated {
            claims: Box::new(claims),
            audiences: matched,
        }
    }
}

/// The `status.user` kube-apiserver reports for a ServiceAccount token.
pub(crate) fn user_info(claims: &Claims) -> Value {
    let ns = &claims.kubernetes.namespace;
    let mut extra: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    extra.insert(
        "authentication.kubernetes.io/credential-id",
        vec![format!("JTI={}", claims.jti)],
    );
    if let Some(pod) = &claims.kubernetes.pod {
        extra.insert(
            "authentication.kubernetes.io/pod-name",
            vec![pod.name.clone()],
        );
        extra.insert(
            "authentication.kubernetes.io/pod-uid",
            vec![pod.uid.clone()],
        );
    }
    if let Some(node) = &claims.kubernetes.node {
        extra.insert(
            "authentication.kubernetes.io/node-name",
            vec![node.name.clone()],
        );
        extra.insert(
            "authentication.kubernetes.io/node-uid",
            vec![node.uid.clone()],
        );
    }
    json!({
        "username": claims.sub,
        "uid": claims.kubernetes.serviceaccount.uid,
        "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{ns}"), "system:authenticated"],
        "extra": extra,
    })
}
