//! JWT clients: HS256 with a shared secret file, or RS256/ES256 with a public
//! key file. The algorithm is fixed by the key, so `alg: none` and algorithm
//! confusion (an HS256 token signed with the public key) cannot pass; `exp`
//! is always required.

use std::path::Path;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;

use super::{AuthError, Principal, Scope};
use crate::config::ClientSettings;
use crate::secret::Watched;

pub struct JwtVerifier {
    /// Follows its file, like the API keys: a rotated Secret applies without
    /// a restart.
    key: Watched<JwtKey>,
    /// One per algorithm the key file can hold (a rotation may change it),
    /// built once.
    validations: Vec<Validation>,
}

/// A verification key as read from its file.
struct JwtKey {
    algorithm: Algorithm,
    /// The file's meaningful bytes, to tell a rotation from a re-read.
    material: Vec<u8>,
    key: DecodingKey,
}

impl PartialEq for JwtKey {
    fn eq(&self, other: &Self) -> bool {
        self.algorithm == other.algorithm && self.material == other.material
    }
}

/// An HS256 shared secret: at least 32 bytes, surrounding whitespace ignored.
fn read_hs256_secret(path: &Path) -> Result<JwtKey, String> {
    let secret =
        crate::secret::read_secret_file(path).map_err(|e| format!("JWT_HS256_SECRET_FILE: {e}"))?;
    let material = secret.expose().as_bytes().to_vec();
    if material.len() < 32 {
        return Err("JWT_HS256_SECRET_FILE: the secret must be at least 32 bytes".into());
    }
    Ok(JwtKey {
        algorithm: Algorithm::HS256,
        key: DecodingKey::from_secret(&material),
        material,
    })
}

/// An RSA (RS256) or EC P-256 (ES256) public key in PEM.
fn read_public_key(path: &Path) -> Result<JwtKey, String> {
    let pem = std::fs::read(path)
        .map_err(|e| format!("JWT_PUBLIC_KEY_FILE: cannot read {}: {e}", path.display()))?;
    let (key, algorithm) = if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
        (k, Algorithm::RS256)
    } else if let Ok(k) = DecodingKey::from_ec_pem(&pem) {
        (k, Algorithm::ES256)
    } else {
        return Err("JWT_PUBLIC_KEY_FILE: not an RSA or EC (P-256) public key in PEM".into());
    };
    Ok(JwtKey {
        algorithm,
        material: pem,
        key,
    })
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    #[serde(default)]
    activities: Value,
}

impl JwtVerifier {
    pub fn from_settings(s: &ClientSettings) -> Result<Option<Self>, String> {
        let key = match (&s.jwt_hs256_secret_file, &s.jwt_public_key_file) {
            (Some(path), _) => Watched::load(path.clone(), read_hs256_secret)?,
            (None, Some(path)) => Watched::load(path.clone(), read_public_key)?,
            (None, None) => return Ok(None),
        };
        let algorithms: &[Algorithm] = match key.get().algorithm {
            Algorithm::HS256 => &[Algorithm::HS256],
            _ => &[Algorithm::RS256, Algorithm::ES256],
        };
        let validations = algorithms
            .iter()
            .map(|&algorithm| {
                let mut validation = Validation::new(algorithm);
                validation.leeway = 30;
                let mut required = vec!["exp"];
                if let Some(iss) = &s.jwt_issuer {
                    validation.set_issuer(&[iss]);
                    required.push("iss");
                }
                match &s.jwt_audience {
                    Some(aud) => {
                        validation.set_audience(&[aud]);
                        required.push("aud");
                    }
                    None => validation.validate_aud = false,
                }
                validation.set_required_spec_claims(&required);
                validation
            })
            .collect();
        Ok(Some(Self { key, validations }))
    }

    pub fn spawn_reload(&self, every: std::time::Duration) {
        self.key.spawn_reload(every, "JWT key");
    }

    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let key = self.key.get();
        // The algorithm is the key's (a rotation may change it), never the
        // token's header.
        let validation = self
            .validations
            .iter()
            .find(|v| v.algorithms == [key.algorithm])
            .ok_or(AuthError::Invalid("the token is not valid"))?;
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            AuthError::Invalid(match e.kind() {
                ErrorKind::ExpiredSignature => "the token has expired",
                ErrorKind::InvalidIssuer => "the token's issuer is not accepted",
                ErrorKind::InvalidAudience => "the token's audience is not accepted",
                ErrorKind::MissingRequiredClaim(_) => {
                    "the token lacks a required claim (exp, iss or aud)"
                }
                _ => "the token is not valid",
            })
        })?;
        let scope = match &data.claims.activities {
            Value::String(s) if s == "*" => Scope::All,
            Value::Array(ids) => {
                let ids = ids.iter().map(|v| match v {
                    Value::String(s) => s.parse::<u64>().ok(),
                    Value::Number(n) => n.as_u64(),
                    _ => None,
                });
                Scope::Only(std::sync::Arc::new(ids.collect::<Option<_>>().ok_or(
                    AuthError::Invalid(
                        "the activities claim must be \"*\" or an array of activity ids",
                    ),
                )?))
            }
            _ => return Err(AuthError::Invalid("the token has no activities claim")),
        };
        let sub = data.claims.sub.unwrap_or_else(|| "unnamed".into());
        Ok(Principal {
            name: format!("jwt:{sub}").into(),
            scope,
        })
    }
}
