//! Who may talk to ingest. KAZOO can authenticate only through its storage URL, and since
//! 4.3.106 it mangles Basic auth credentials on fetches, so the ways offered are:
//! - an allow-list of client networks (`VMPIPE_ALLOW_NETWORKS`, parsed with the settings);
//! - a secret token, either as the first path segment below the prefix
//!   (`http://vmpipe:8080/SECRET`) or as the `token` query parameter (`...?token=SECRET&key=`,
//!   which KAZOO keeps on fetches) (`VMPIPE_ACCESS_TOKEN`);
//! - Basic auth (`VMPIPE_BASIC_AUTH=user:password`), for uploads from KAZOO < 4.3.106 or
//!   other clients only.
//!
//! Failures answer 403 (network, token) or 401 (Basic auth) and are logged without the secret.

use std::net::IpAddr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use vmpipe_common::settings::Networks;

/// Why a request was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Denied {
    #[error("client address not in the allowed networks")]
    Network,
    #[error("missing or wrong access token")]
    Token,
    #[error("missing or wrong credentials")]
    Credentials,
}

pub(crate) struct AccessPolicy {
    pub networks: Networks,
    pub token: Option<String>,
    /// `user:password`
    pub basic: Option<String>,
}

/// How a request presented itself.
pub(crate) struct Presented<'a> {
    pub peer: Option<IpAddr>,
    /// The first path segment below the prefix (raw).
    pub first_segment: Option<&'a str>,
    pub query: &'a str,
    pub authorization: Option<&'a str>,
}

/// Where the token was found, so the caller strips it from the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenAt {
    None,
    PathSegment,
    Query,
}

impl AccessPolicy {
    pub(crate) fn is_open(&self) -> bool {
        self.networks.is_empty() && self.token.is_none() && self.basic.is_none()
    }

    pub(crate) fn check(&self, request: &Presented<'_>) -> Result<TokenAt, Denied> {
        if !self.networks.is_empty() && !request.peer.is_some_and(|ip| self.networks.contains(ip)) {
            return Err(Denied::Network);
        }
        if let Some(expected) = &self.basic {
            let given = request
                .authorization
                .and_then(|h| {
                    h.strip_prefix("Basic ")
                        .or_else(|| h.strip_prefix("basic "))
                })
                .and_then(|b64| STANDARD.decode(b64.trim()).ok());
            if !given.is_some_and(|g| constant_time_eq(&g, expected.as_bytes())) {
                return Err(Denied::Credentials);
            }
        }
        let Some(token) = &self.token else {
            return Ok(TokenAt::None);
        };
        if request
            .first_segment
            .is_some_and(|s| constant_time_eq(s.as_bytes(), token.as_bytes()))
        {
            return Ok(TokenAt::PathSegment);
        }
        let in_query = request
            .query
            .split('&')
            .filter_map(|pair| pair.strip_prefix("token="))
            .any(|value| constant_time_eq(value.as_bytes(), token.as_bytes()));
        if in_query {
            return Ok(TokenAt::Query);
        }
        Err(Denied::Token)
    }
}

/// Compares without stopping at the first difference, so timing does not reveal the secret.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn policy_checks_each_way() {
        let policy = AccessPolicy {
            networks: "127.0.0.0/8".parse().unwrap(),
            token: Some("s3cret".into()),
            basic: None,
        };
        let request = |peer, first, query| Presented {
            peer,
            first_segment: first,
            query,
            authorization: None,
        };
        assert_eq!(
            policy.check(&request(ip("127.0.0.1"), Some("s3cret"), "")),
            Ok(TokenAt::PathSegment)
        );
        assert_eq!(
            policy.check(&request(ip("127.0.0.1"), Some("acct"), "a=1&token=s3cret")),
            Ok(TokenAt::Query)
        );
        assert_eq!(
            policy.check(&request(ip("127.0.0.1"), Some("acct"), "token=nope")),
            Err(Denied::Token)
        );
        assert_eq!(
            policy.check(&request(ip("10.0.0.1"), Some("s3cret"), "")),
            Err(Denied::Network)
        );

        let basic = AccessPolicy {
            networks: Networks::default(),
            token: None,
            basic: Some("kazoo:pw".into()),
        };
        let with = |auth| Presented {
            peer: None,
            first_segment: None,
            query: "",
            authorization: auth,
        };
        let good = format!("Basic {}", STANDARD.encode("kazoo:pw"));
        assert_eq!(basic.check(&with(Some(&good))), Ok(TokenAt::None));
        assert_eq!(
            basic.check(&with(Some("Basic a2F6b286eA=="))),
            Err(Denied::Credentials)
        );
        assert_eq!(basic.check(&with(None)), Err(Denied::Credentials));
    }
}
