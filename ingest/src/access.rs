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
//! A client refused by the network list is told about in the log once in a while (which
//! address, and which setting admits it), not once per request.
//!
//! Unset, the network list is loopback and the private networks (see
//! [`vmpipe_common::settings::DEFAULT_NETWORKS`]); start-up warns when neither a token nor a list
//! the operator gave restricts access.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use tracing::warn;
use vmpipe_common::Settings;
use vmpipe_common::settings::{DEFAULT_NETWORKS, Networks};

/// How long a client's refusal by the network list is not explained again.
const EXPLAIN_EVERY: Duration = Duration::from_secs(600);
/// Refused clients remembered at once; past that (a flood of addresses), no more explanations
/// until the oldest are forgotten.
const REMEMBERED_CLIENTS: usize = 1024;

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
    /// When each refused client was last explained in the log.
    pub refusals: Refusals,
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
    pub(crate) fn from_settings(settings: &Settings) -> Self {
        Self {
            networks: settings.allow_networks.clone(),
            token: settings
                .access_token
                .as_ref()
                .map(|t| t.expose().to_owned()),
            basic: settings.basic_auth.as_ref().map(|b| b.expose().to_owned()),
            refusals: Refusals::default(),
        }
    }

    pub(crate) fn is_open(&self) -> bool {
        self.networks.admits_everyone() && self.token.is_none() && self.basic.is_none()
    }

    /// What start-up should warn about: access restricted by neither a secret nor a network
    /// list the operator gave.
    pub(crate) fn unrestricted(&self) -> Option<&'static str> {
        if self.token.is_some() || self.basic.is_some() {
            None
        } else if !self.networks.is_explicit() {
            Some(
                "no VMPIPE_ACCESS_TOKEN and no VMPIPE_ALLOW_NETWORKS: every client on a loopback, \
                 private or link-local network may store and fetch voicemails; set \
                 VMPIPE_ACCESS_TOKEN (and VMPIPE_ALLOW_NETWORKS to KAZOO's networks)",
            )
        } else if self.networks.admits_everyone() {
            Some(
                "ingest is open to everyone: VMPIPE_ALLOW_NETWORKS admits every address and \
                 neither VMPIPE_ACCESS_TOKEN nor VMPIPE_BASIC_AUTH is set; set VMPIPE_ACCESS_TOKEN",
            )
        } else {
            None
        }
    }

    /// Logs, once per client in [`EXPLAIN_EVERY`], that the network list refused `client` and
    /// which setting would admit it.
    pub(crate) fn explain_refusal(&self, client: Option<IpAddr>) {
        let Some(client) = client.map(|ip| ip.to_canonical()) else {
            return;
        };
        if !self.refusals.first_in_a_while(client, Instant::now()) {
            return;
        }
        let host_bits = if client.is_ipv4() { 32 } else { 128 };
        let minutes = EXPLAIN_EVERY.as_secs() / 60;
        if self.networks.is_explicit() {
            warn!(%client, setting = "VMPIPE_ALLOW_NETWORKS", allowed = %self.networks,
                "client {client} refused (403): its address is not in VMPIPE_ALLOW_NETWORKS; \
                 to admit it, add it there (e.g. {client}/{host_bits}). Not repeated for this \
                 client for {minutes} minutes");
        } else {
            warn!(%client, setting = "VMPIPE_ALLOW_NETWORKS", allowed = DEFAULT_NETWORKS,
                "client {client} refused (403): VMPIPE_ALLOW_NETWORKS is not set, so only \
                 loopback, private and link-local networks may connect; to admit it, set \
                 VMPIPE_ALLOW_NETWORKS to include it (e.g. {client}/{host_bits}, or \
                 0.0.0.0/0,::/0 for everyone, with VMPIPE_ACCESS_TOKEN set). Not repeated for \
                 this client for {minutes} minutes");
        }
    }

    pub(crate) fn check(&self, request: &Presented<'_>) -> Result<TokenAt, Denied> {
        if !self.networks.admits_everyone()
            && !request.peer.is_some_and(|ip| self.networks.contains(ip))
        {
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

/// The clients refused by the network list, and when each was last explained in the log.
#[derive(Default)]
pub(crate) struct Refusals {
    seen: Mutex<HashMap<IpAddr, Instant>>,
}

impl Refusals {
    /// Whether a refusal of `client` at `now` is its first, or its first for [`EXPLAIN_EVERY`].
    fn first_in_a_while(&self, client: IpAddr, now: Instant) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let recent = |last: &Instant| now.saturating_duration_since(*last) < EXPLAIN_EVERY;
        if seen.get(&client).is_some_and(recent) {
            return false;
        }
        if seen.len() >= REMEMBERED_CLIENTS && !seen.contains_key(&client) {
            seen.retain(|_, last| recent(last));
            if seen.len() >= REMEMBERED_CLIENTS {
                return false;
            }
        }
        seen.insert(client, now);
        true
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
            refusals: Refusals::default(),
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
            networks: "0.0.0.0/0,::/0".parse().unwrap(),
            token: None,
            basic: Some("kazoo:pw".into()),
            refusals: Refusals::default(),
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

    fn policy(networks: &str, token: Option<&str>) -> AccessPolicy {
        let mut settings = Settings::default();
        settings.allow_networks = networks.parse().unwrap();
        settings.access_token = token.map(|t| vmpipe_common::settings::Secret(t.into()));
        AccessPolicy::from_settings(&settings)
    }

    #[test]
    fn the_default_list_refuses_a_public_client_and_admits_a_private_one() {
        let default = policy("", None);
        let from = |peer| Presented {
            peer,
            first_segment: Some("acct"),
            query: "",
            authorization: None,
        };
        assert_eq!(default.check(&from(ip("192.168.1.20"))), Ok(TokenAt::None));
        assert_eq!(default.check(&from(ip("::1"))), Ok(TokenAt::None));
        assert_eq!(
            default.check(&from(ip("203.0.113.9"))),
            Err(Denied::Network)
        );
        assert_eq!(default.check(&from(None)), Err(Denied::Network));
        assert!(!default.is_open());
        let everyone = policy("0.0.0.0/0,::/0", None);
        assert!(everyone.is_open());
        assert_eq!(everyone.check(&from(ip("203.0.113.9"))), Ok(TokenAt::None));
    }

    #[test]
    fn start_up_warns_unless_a_secret_or_a_given_list_restricts_access() {
        let warning = |networks, token| policy(networks, token).unrestricted();
        assert!(warning("", None).is_some_and(|w| w.contains("VMPIPE_ACCESS_TOKEN")));
        assert!(warning("0.0.0.0/0,::/0", None).is_some_and(|w| w.contains("everyone")));
        assert_eq!(warning("10.0.0.0/8", None), None);
        assert_eq!(warning("", Some("s3cret")), None);
        assert_eq!(warning("0.0.0.0/0,::/0", Some("s3cret")), None);
    }

    #[test]
    fn a_refused_client_is_explained_once_in_a_while() {
        let refusals = Refusals::default();
        let start = Instant::now();
        let a: IpAddr = "203.0.113.9".parse().unwrap();
        let b: IpAddr = "198.51.100.7".parse().unwrap();
        assert!(refusals.first_in_a_while(a, start));
        assert!(!refusals.first_in_a_while(a, start + Duration::from_secs(1)));
        assert!(refusals.first_in_a_while(b, start + Duration::from_secs(1)));
        assert!(!refusals.first_in_a_while(a, start + EXPLAIN_EVERY - Duration::from_secs(1)));
        assert!(refusals.first_in_a_while(a, start + EXPLAIN_EVERY));
        // A flood of addresses is not a flood of lines.
        let flood = Refusals::default();
        let explained = (0..5000u32)
            .filter(|i| flood.first_in_a_while(IpAddr::from(i.to_be_bytes()), start))
            .count();
        assert_eq!(explained, REMEMBERED_CLIENTS);
        let later = start + EXPLAIN_EVERY;
        assert!(flood.first_in_a_while("192.0.2.1".parse().unwrap(), later));
    }
}
