//! Who is asking, and which activities they may read (docs/security.md). Checked in
//! the HTTP layer before any GraphQL work, and per activity in the resolver
//! before the cache is read.

pub mod jwt;
pub mod keys;

use std::collections::HashSet;
use std::sync::Arc;

use crate::config::ClientSettings;
use crate::limits::Rate;
use crate::paging::ActivityId;

/// The activities a client may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    All,
    Only(Arc<HashSet<u64>>),
}

impl Scope {
    /// `*` or comma-separated ids; anything else is refused.
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw == "*" {
            return Ok(Scope::All);
        }
        raw.split(',')
            .map(|id| {
                ActivityId::parse(id.trim())
                    .map(ActivityId::get)
                    .map_err(|_| format!("{id:?} is not an activity id"))
            })
            .collect::<Result<HashSet<_>, _>>()
            .map(|ids| Scope::Only(Arc::new(ids)))
    }

    /// `*`, or the ids sorted and comma-separated: equal for equal scopes,
    /// whoever holds them.
    pub fn canonical(&self) -> String {
        match self {
            Scope::All => "*".to_owned(),
            Scope::Only(ids) => {
                let mut ids: Vec<u64> = ids.iter().copied().collect();
                ids.sort_unstable();
                ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
            }
        }
    }
}

/// An authenticated client (or the anonymous one, where allowed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// `key:<name>`, `jwt:<sub>` or `anonymous`: for rate limits and logs
    /// (shared, so keying a rate limit by it costs no copy).
    pub name: Arc<str>,
    pub scope: Scope,
}

impl Principal {
    pub fn anonymous() -> Self {
        static NAME: std::sync::LazyLock<Arc<str>> =
            std::sync::LazyLock::new(|| "anonymous".into());
        Self {
            name: NAME.clone(),
            scope: Scope::All,
        }
    }

    pub fn may_read(&self, activity: ActivityId) -> bool {
        match &self.scope {
            Scope::All => true,
            Scope::Only(ids) => ids.contains(&activity.get()),
        }
    }

    pub fn is_anonymous(&self) -> bool {
        &*self.name == "anonymous"
    }
}

/// Who was let in, and the request rate they are held to when they have
/// their own (an API key with a `rate=` column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    pub principal: Principal,
    pub rate: Option<Rate>,
}

impl From<Principal> for Client {
    fn from(principal: Principal) -> Self {
        Self {
            principal,
            rate: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// No `Authorization` header, and anonymous clients are not allowed.
    Missing,
    /// A credential that is not valid; the reason is safe to show.
    Invalid(&'static str),
}

pub struct Authenticator {
    keys: Option<keys::ApiKeys>,
    jwt: Option<jwt::JwtVerifier>,
    allow_unauthenticated: bool,
}

impl Authenticator {
    pub fn from_settings(s: &ClientSettings) -> Result<Self, String> {
        let keys = s
            .api_keys_file
            .as_ref()
            .map(|p| keys::ApiKeys::load(p.clone()))
            .transpose()?;
        let jwt = jwt::JwtVerifier::from_settings(s)?;
        if keys.is_none() && jwt.is_none() && !s.allow_unauthenticated {
            return Err("no client authentication is configured: set API_KEYS_FILE, or JWT_HS256_SECRET_FILE / \
                        JWT_PUBLIC_KEY_FILE; or set ALLOW_UNAUTHENTICATED=true to run an open gateway on purpose"
                .into());
        }
        Ok(Self {
            keys,
            jwt,
            allow_unauthenticated: s.allow_unauthenticated,
        })
    }

    /// Follows the keys and JWT key files, so a rotated Secret applies
    /// without a restart.
    pub fn spawn_reload(&self, every: std::time::Duration) {
        if let Some(k) = &self.keys {
            k.spawn_reload(every);
        }
        if let Some(j) = &self.jwt {
            j.spawn_reload(every);
        }
    }

    /// Checks the `Authorization` header value, if any. The scheme is
    /// case-insensitive (RFC 9110 §11.1): `Bearer`, `bearer`, `BEARER`.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Client, AuthError> {
        let Some(value) = authorization else {
            return if self.allow_unauthenticated {
                Ok(Principal::anonymous().into())
            } else {
                Err(AuthError::Missing)
            };
        };
        let Some(credential) = value
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, credential)| credential.trim())
            .filter(|c| !c.is_empty())
        else {
            return Err(AuthError::Invalid(
                "the Authorization header must be `Bearer <API key or JWT>`",
            ));
        };
        // A JWT has three dot-separated parts; API keys are told to have none.
        if credential.matches('.').count() == 2
            && let Some(jwt) = &self.jwt
        {
            return jwt.verify(credential).map(Client::from);
        }
        if let Some(client) = self.keys.as_ref().and_then(|k| k.lookup(credential)) {
            return Ok(client);
        }
        Err(AuthError::Invalid("the credential is not valid"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> Authenticator {
        Authenticator {
            keys: None,
            jwt: None,
            allow_unauthenticated: true,
        }
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_others_are_refused() {
        let auth = open();
        for value in ["Bearer k", "bearer k", "BEARER k", "bEaReR   k  "] {
            // No key matches, but the header's form was accepted.
            assert_eq!(
                auth.authenticate(Some(value)),
                Err(AuthError::Invalid("the credential is not valid")),
                "{value:?}"
            );
        }
        for value in ["Basic k", "Bearer", "Bearer ", "Bearerk", "Token k", ""] {
            assert_eq!(
                auth.authenticate(Some(value)),
                Err(AuthError::Invalid(
                    "the Authorization header must be `Bearer <API key or JWT>`"
                )),
                "{value:?}"
            );
        }
        assert_eq!(
            auth.authenticate(None),
            Ok(Client::from(Principal::anonymous()))
        );
    }
}
