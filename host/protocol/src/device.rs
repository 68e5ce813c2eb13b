//! Device identity: an Ed25519 key whose signature over the connection's challenge proves
//! possession. `device.id` is the lowercase hex SHA-256 of the raw 32-byte public key; keys and
//! signatures travel as base64url without padding; the signature covers
//! `trustgate-v1|{device.id}|{client.id}|{role}|{scopes joined by ","}|{signedAt}|{nonce}`.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use super::frames::{DeviceProof, Role};

/// How far `signedAt` may be from the server's clock.
pub const MAX_SIGNATURE_SKEW_MS: u64 = 10 * 60 * 1000;

/// The device id of a raw public key.
pub fn device_id(public_key: &[u8; 32]) -> String {
    hex::encode(Sha256::digest(public_key))
}

/// The exact string a device signs.
pub fn signing_payload(
    device_id: &str,
    client_id: &str,
    role: Role,
    scopes: &[String],
    signed_at: u64,
    nonce: &str,
) -> String {
    format!(
        "trustgate-v1|{device_id}|{client_id}|{}|{}|{signed_at}|{nonce}",
        role.as_str(),
        scopes.join(",")
    )
}

/// Why a device proof was rejected. Every case is `UNAUTHENTICATED` on the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// `publicKey` is not 32 bytes of base64url, or not a valid Ed25519 point.
    #[error("device.publicKey is not a base64url Ed25519 public key")]
    BadKey,
    /// `device.id` is not the SHA-256 of the key.
    #[error("device.id does not match the public key")]
    IdMismatch,
    /// `signature` is not 64 bytes of base64url.
    #[error("device.signature is not a base64url Ed25519 signature")]
    BadSignatureEncoding,
    /// The nonce is not this connection's challenge.
    #[error("device.nonce is not this connection's challenge")]
    NonceMismatch,
    /// `signedAt` is too far from the server's clock.
    #[error("device.signedAt is more than 10 minutes from the server's time")]
    Stale,
    /// The signature does not verify.
    #[error("device.signature does not verify")]
    BadSignature,
}

impl DeviceError {
    /// A stable reason word for `details.reason`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::BadKey => "device-key-invalid",
            Self::IdMismatch => "device-id-mismatch",
            Self::BadSignatureEncoding | Self::BadSignature => "device-signature-invalid",
            Self::NonceMismatch => "device-nonce-mismatch",
            Self::Stale => "device-signature-stale",
        }
    }
}

impl DeviceProof {
    /// Verifies the proof for this connection; returns the verified device id.
    pub fn verify(
        &self,
        client_id: &str,
        role: Role,
        scopes: &[String],
        challenge: &str,
        now_ms: u64,
    ) -> Result<String, DeviceError> {
        let raw = URL_SAFE_NO_PAD
            .decode(&self.public_key)
            .map_err(|_| DeviceError::BadKey)?;
        let raw: [u8; 32] = raw.try_into().map_err(|_| DeviceError::BadKey)?;
        let key = VerifyingKey::from_bytes(&raw).map_err(|_| DeviceError::BadKey)?;
        let id = device_id(&raw);
        if self.id != id {
            return Err(DeviceError::IdMismatch);
        }
        let sig = URL_SAFE_NO_PAD
            .decode(&self.signature)
            .map_err(|_| DeviceError::BadSignatureEncoding)?;
        let sig: [u8; 64] = sig
            .try_into()
            .map_err(|_| DeviceError::BadSignatureEncoding)?;
        // Check the binding to this connection before the (costlier) signature.
        if self.nonce != challenge {
            return Err(DeviceError::NonceMismatch);
        }
        if now_ms.abs_diff(self.signed_at) > MAX_SIGNATURE_SKEW_MS {
            return Err(DeviceError::Stale);
        }
        let payload = signing_payload(&id, client_id, role, scopes, self.signed_at, &self.nonce);
        // Strict verification also rejects weak keys and malleable signatures.
        key.verify_strict(payload.as_bytes(), &Signature::from_bytes(&sig))
            .map_err(|_| DeviceError::BadSignature)?;
        Ok(id)
    }
}

/// A device's private key, as held by a client.
#[derive(Clone)]
pub struct DeviceKey {
    key: SigningKey,
}

impl std::fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("DeviceKey").field("id", &self.id()).finish()
    }
}

impl DeviceKey {
    /// A new random key.
    pub fn generate() -> Self {
        let mut seed = [0u8; 32];
        rand::fill(&mut seed);
        Self::from_seed(seed)
    }

    /// The key with this 32-byte seed.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self {
            key: SigningKey::from_bytes(&seed),
        }
    }

    /// The 32-byte seed (secret).
    pub fn seed(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// The device id.
    pub fn id(&self) -> String {
        device_id(&self.key.verifying_key().to_bytes())
    }

    /// The public key, base64url without padding.
    pub fn public_key(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.key.verifying_key().to_bytes())
    }

    /// A proof for a `connect` with these parameters.
    pub fn prove(
        &self,
        client_id: &str,
        role: Role,
        scopes: &[String],
        nonce: &str,
        signed_at: u64,
    ) -> DeviceProof {
        let id = self.id();
        let payload = signing_payload(&id, client_id, role, scopes, signed_at, nonce);
        let sig = self.key.sign(payload.as_bytes());
        DeviceProof {
            id,
            public_key: self.public_key(),
            signature: URL_SAFE_NO_PAD.encode(sig.to_bytes()),
            signed_at,
            nonce: nonce.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_verify_and_every_tampering_is_caught() {
        let key = DeviceKey::from_seed([7; 32]);
        let scopes = vec!["a".to_string(), "b".to_string()];
        let now = 1_700_000_000_000;
        let proof = key.prove("cli", Role::Worker, &scopes, "n1", now);
        assert_eq!(
            proof.verify("cli", Role::Worker, &scopes, "n1", now),
            Ok(key.id())
        );
        assert_eq!(
            proof.verify("cli", Role::Worker, &scopes, "n2", now),
            Err(DeviceError::NonceMismatch)
        );
        assert_eq!(
            proof.verify("cli", Role::Operator, &scopes, "n1", now),
            Err(DeviceError::BadSignature)
        );
        assert_eq!(
            proof.verify(
                "cli",
                Role::Worker,
                &scopes,
                "n1",
                now + MAX_SIGNATURE_SKEW_MS + 1
            ),
            Err(DeviceError::Stale)
        );
        let mut wrong_id = proof.clone();
        wrong_id.id = "00".repeat(32);
        assert_eq!(
            wrong_id.verify("cli", Role::Worker, &scopes, "n1", now),
            Err(DeviceError::IdMismatch)
        );
        assert_eq!(key.id().len(), 64);
        assert!(!key.public_key().contains('='));
    }
}
