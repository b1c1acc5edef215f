//! Verifying a JWT into a [`Grant`]: signature (HS256 with a shared
//! secret; RS/PS/ES with a public key), `exp`, and the `channels` claim.
//!
//! The `jsonwebtoken` crate does the JOSE work (header, base64url,
//! signature, `exp`); this module picks the key by the token's algorithm,
//! so an RSA public key is never used as an HMAC secret (the classic
//! algorithm-confusion attack), and reads the claims tickcast needs.

use std::path::Path;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::grant::Grant;
use crate::channel::Pattern;

/// Shortest HS256 secret accepted: 256 bits, the size of the hash
/// (RFC 7518 section 3.2 requires a key at least that long).
pub const MIN_SECRET_BYTES: usize = 32;

/// Why a token was not accepted; the text is what the client is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error(
        "a token is required: connect with ?token=JWT or an `Authorization: Bearer JWT` header"
    )]
    Missing,
    #[error("the token has expired (its exp is past): get a fresh one")]
    Expired,
    #[error("the token is not valid yet (its nbf is in the future; are the clocks in step?)")]
    NotYetValid,
    #[error("the token's signature does not verify (signed with another secret or key?)")]
    BadSignature,
    #[error("the token is not a well-formed JWT ({0})")]
    Malformed(String),
    #[error("the token's algorithm {alg} is not accepted here (accepted: {accepted})")]
    Algorithm { alg: String, accepted: String },
    #[error("the token has no exp claim: tokens must say when they expire (Unix seconds)")]
    NoExpiry,
    #[error("the token has no channels claim (the list of channel patterns it may subscribe to)")]
    NoChannels,
    #[error("the token's channels claim is not a list of channel patterns: {0}")]
    BadChannels(String),
    #[error(
        "the token's channels claim has {count} patterns, more than \
         limits.max_token_channels ({limit})"
    )]
    TooManyChannels { count: usize, limit: usize },
    #[error("this server has no token key configured, so it takes no tokens")]
    NotConfigured,
}

/// One key and the algorithms it verifies.
#[derive(Clone)]
struct KeyCheck {
    key: DecodingKey,
    validation: Validation,
}

impl KeyCheck {
    fn new(key: DecodingKey, algorithms: &[Algorithm]) -> Self {
        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms.to_vec();
        // `exp` is required and checked to the second: the server closes
        // the connection at `exp` too, so the two agree.
        validation.leeway = 0;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        // tickcast has no audience of its own to check.
        validation.validate_aud = false;
        Self { key, validation }
    }
}

/// Checks tokens against the configured secret and/or public key.
#[derive(Clone)]
pub struct TokenVerifier {
    secret: Option<KeyCheck>,
    public_key: Option<KeyCheck>,
    /// `limits.max_token_channels`.
    max_channels: usize,
}

impl std::fmt::Debug for TokenVerifier {
    // Never the key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("secret", &self.secret.is_some())
            .field(
                "public_key",
                &self.public_key.as_ref().map(|k| &k.validation.algorithms),
            )
            .field("max_channels", &self.max_channels)
            .finish()
    }
}

const HMAC: [Algorithm; 3] = [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
const RSA: [Algorithm; 6] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];
const EC: [Algorithm; 2] = [Algorithm::ES256, Algorithm::ES384];

impl TokenVerifier {
    /// A verifier with neither key; add one with [`with_secret`] or
    /// [`with_public_key_pem`].
    ///
    /// [`with_secret`]: Self::with_secret
    /// [`with_public_key_pem`]: Self::with_public_key_pem
    pub fn new(max_channels: usize) -> Self {
        Self {
            secret: None,
            public_key: None,
            max_channels,
        }
    }

    /// Accepts HS256 (and HS384/HS512) tokens signed with `secret`.
    pub fn with_secret(mut self, secret: &[u8]) -> Result<Self, String> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "the JWT secret is {} bytes; use at least {MIN_SECRET_BYTES} \
                 (for example the output of `openssl rand -base64 32`)",
                secret.len()
            ));
        }
        self.secret = Some(KeyCheck::new(DecodingKey::from_secret(secret), &HMAC));
        Ok(self)
    }

    /// Accepts tokens signed by the private half of this PEM public key:
    /// RS256/PS256 (and 384/512) for an RSA key, ES256/ES384 for an EC key.
    pub fn with_public_key_pem(mut self, pem: &[u8]) -> Result<Self, String> {
        let check = if let Ok(key) = DecodingKey::from_ec_pem(pem) {
            KeyCheck::new(key, &EC)
        } else if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
            KeyCheck::new(key, &RSA)
        } else {
            return Err("not an RSA or EC public key in PEM form \
                 (-----BEGIN PUBLIC KEY----- ...)"
                .into());
        };
        self.public_key = Some(check);
        Ok(self)
    }

    /// Reads a PEM public key file (see [`with_public_key_pem`](Self::with_public_key_pem)).
    pub fn with_public_key_file(self, path: &Path) -> Result<Self, String> {
        let pem = std::fs::read(path)
            .map_err(|e| format!("cannot read the JWT public key {}: {e}", path.display()))?;
        self.with_public_key_pem(&pem)
            .map_err(|e| format!("JWT public key {}: {e}", path.display()))
    }

    /// The algorithms this verifier accepts, for messages.
    fn accepted(&self) -> String {
        let names: Vec<String> = [&self.secret, &self.public_key]
            .into_iter()
            .flatten()
            .flat_map(|check| check.validation.algorithms.iter())
            .map(|alg| format!("{alg:?}"))
            .collect();
        names.join(", ")
    }

    /// The grant of a valid token, or why it is not one.
    pub fn verify(&self, token: &str) -> Result<Grant, TokenError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| TokenError::Malformed(e.to_string()))?;
        let check = match header.alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => self.secret.as_ref(),
            _ => self.public_key.as_ref(),
        }
        .filter(|check| check.validation.algorithms.contains(&header.alg))
        .ok_or_else(|| TokenError::Algorithm {
            alg: format!("{:?}", header.alg),
            accepted: self.accepted(),
        })?;
        let claims =
            jsonwebtoken::decode::<Map<String, Value>>(token, &check.key, &check.validation)
                .map_err(|e| match e.kind() {
                    ErrorKind::ExpiredSignature => TokenError::Expired,
                    ErrorKind::InvalidSignature => TokenError::BadSignature,
                    ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                    ErrorKind::MissingRequiredClaim(claim) if claim == "exp" => {
                        TokenError::NoExpiry
                    }
                    ErrorKind::InvalidAlgorithm => TokenError::Algorithm {
                        alg: format!("{:?}", header.alg),
                        accepted: self.accepted(),
                    },
                    _ => TokenError::Malformed(e.to_string()),
                })?
                .claims;
        self.grant(&claims)
    }

    fn grant(&self, claims: &Map<String, Value>) -> Result<Grant, TokenError> {
        // jsonwebtoken has checked that `exp` is there and in the future.
        let expires_at = match claims.get("exp") {
            Some(Value::Number(n)) => n
                .as_u64()
                .or_else(|| n.as_f64().map(|f| f as u64))
                .ok_or(TokenError::NoExpiry)?,
            _ => return Err(TokenError::NoExpiry),
        };
        let list = match claims.get("channels") {
            None | Some(Value::Null) => return Err(TokenError::NoChannels),
            Some(Value::Array(list)) => list,
            Some(_) => {
                return Err(TokenError::BadChannels(
                    "it must be an array of strings".into(),
                ))
            }
        };
        if list.len() > self.max_channels {
            return Err(TokenError::TooManyChannels {
                count: list.len(),
                limit: self.max_channels,
            });
        }
        let mut patterns = Vec::with_capacity(list.len());
        for (i, item) in list.iter().enumerate() {
            let Value::String(text) = item else {
                return Err(TokenError::BadChannels(format!(
                    "channels[{i}] is not a string"
                )));
            };
            let pattern = Pattern::new(text)
                .map_err(|e| TokenError::BadChannels(format!("channels[{i}] {text:?}: {e}")))?;
            patterns.push(pattern);
        }
        Ok(Grant::new(patterns, expires_at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn now() -> u64 {
        crate::clock::unix_nanos() / 1_000_000_000
    }

    fn hs256(secret: &[u8], claims: Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    fn verifier() -> TokenVerifier {
        TokenVerifier::new(4).with_secret(SECRET).unwrap()
    }

    #[test]
    fn a_valid_token_gives_its_channels_until_its_exp() {
        let exp = now() + 60;
        let token = hs256(SECRET, json!({"exp": exp, "channels": ["quotes.*", "a.b"]}));
        let grant = verifier().verify(&token).unwrap();
        assert_eq!(grant.expires_at(), exp);
        assert_eq!(grant.patterns().len(), 2);
        assert!(grant.covers(&Pattern::new("quotes.X").unwrap()));
    }

    #[test]
    fn each_bad_token_says_what_is_wrong() {
        let v = verifier();
        let exp = now() + 60;
        let cases = [
            (
                hs256(
                    b"another-secret-another-secret-xx",
                    json!({"exp": exp, "channels": []}),
                ),
                TokenError::BadSignature,
            ),
            (
                hs256(SECRET, json!({"exp": now() - 10, "channels": []})),
                TokenError::Expired,
            ),
            (hs256(SECRET, json!({"channels": []})), TokenError::NoExpiry),
            (hs256(SECRET, json!({"exp": exp})), TokenError::NoChannels),
            (
                hs256(SECRET, json!({"exp": exp, "channels": "quotes.*"})),
                TokenError::BadChannels("it must be an array of strings".into()),
            ),
            (
                hs256(
                    SECRET,
                    json!({"exp": exp, "channels": ["a", "b", "c", "d", "e"]}),
                ),
                TokenError::TooManyChannels { count: 5, limit: 4 },
            ),
        ];
        for (token, expected) in cases {
            assert_eq!(v.verify(&token), Err(expected));
        }
        assert!(matches!(
            v.verify(&hs256(SECRET, json!({"exp": exp, "channels": ["a..b"]}))),
            Err(TokenError::BadChannels(m)) if m.contains("channels[0]")
        ));
        assert!(matches!(
            v.verify("not.a.jwt"),
            Err(TokenError::Malformed(_))
        ));
        assert!(matches!(v.verify(""), Err(TokenError::Malformed(_))));
    }

    #[test]
    fn the_none_algorithm_and_unconfigured_families_are_refused() {
        // {"alg":"none"} with an empty signature.
        let none = "eyJhbGciOiJub25lIn0.eyJleHAiOjk5OTk5OTk5OTksImNoYW5uZWxzIjpbIj4iXX0.";
        assert!(verifier().verify(none).is_err());
        // A public key only: HS256 tokens are not verified with it.
        let pem = include_bytes!("../../tests/fixtures/auth/es256-public.pem");
        let only_key = TokenVerifier::new(4).with_public_key_pem(pem).unwrap();
        let token = hs256(SECRET, json!({"exp": now() + 60, "channels": []}));
        assert!(matches!(
            only_key.verify(&token),
            Err(TokenError::Algorithm { alg, .. }) if alg == "HS256"
        ));
    }

    #[test]
    fn short_secrets_and_bad_keys_are_refused() {
        assert!(TokenVerifier::new(4).with_secret(b"short").is_err());
        assert!(TokenVerifier::new(4)
            .with_public_key_pem(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
            .is_err());
    }
}
