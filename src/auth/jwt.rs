//! JWT clients: HS256 with a shared secret file, or RS256/ES256 with a public
//! key file. The algorithm is fixed by the key, so `alg: none` and algorithm
//! confusion (an HS256 token signed with the public key) cannot pass; `exp`
//! is always required.

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;

use super::{AuthError, Principal, Scope};
use crate::config::Settings;

pub struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    #[serde(default)]
    activities: Value,
}

impl JwtVerifier {
    pub fn from_settings(s: &Settings) -> Result<Option<Self>, String> {
        let (key, algorithm) = match (&s.jwt_hs256_secret_file, &s.jwt_public_key_file) {
            (Some(path), _) => {
                let secret = crate::secret::read_secret_file(path)
                    .map_err(|e| format!("JWT_HS256_SECRET_FILE: {e}"))?;
                if secret.expose().len() < 32 {
                    return Err(
                        "JWT_HS256_SECRET_FILE: the secret must be at least 32 bytes".into(),
                    );
                }
                (
                    DecodingKey::from_secret(secret.expose().as_bytes()),
                    Algorithm::HS256,
                )
            }
            (None, Some(path)) => {
                let pem = std::fs::read(path).map_err(|e| {
                    format!("JWT_PUBLIC_KEY_FILE: cannot read {}: {e}", path.display())
                })?;
                if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
                    (k, Algorithm::RS256)
                } else if let Ok(k) = DecodingKey::from_ec_pem(&pem) {
                    (k, Algorithm::ES256)
                } else {
                    return Err(
                        "JWT_PUBLIC_KEY_FILE: not an RSA or EC (P-256) public key in PEM".into(),
                    );
                }
            }
            (None, None) => return Ok(None),
        };
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
        Ok(Some(Self { key, validation }))
    }

    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let data =
            jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(|e| {
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
            name: format!("jwt:{sub}"),
            scope,
        })
    }
}
