//! Who may talk to ingest. KAZOO can authenticate only through its storage URL, and since
//! 4.3.106 it mangles Basic auth credentials on fetches, so the ways offered are:
//! - an allow-list of client networks (`VMPIPE_ALLOW_NETWORKS`);
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

/// A network in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`, or a single address).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Network {
    address: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Network {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (address, prefix) = s.trim().split_once('/').unwrap_or((s.trim(), ""));
        let address: IpAddr = address
            .parse()
            .map_err(|_| format!("not an IP network: {s:?}"))?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        let prefix = if prefix.is_empty() {
            max
        } else {
            prefix
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("bad prefix length in {s:?}"))?
        };
        Ok(Self { address, prefix })
    }
}

impl Network {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            // An IPv4 client on a dual-stack socket shows up as ::ffff:a.b.c.d.
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let (net, addr, bits) = match (self.address, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                (u128::from(u32::from(n)), u128::from(u32::from(a)), 32)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => (u128::from(n), u128::from(a), 128),
            _ => return false,
        };
        let shift = bits - u32::from(self.prefix);
        shift >= 128 || (net >> shift) == (addr >> shift)
    }
}

/// Parses `VMPIPE_ALLOW_NETWORKS`: comma-separated networks; empty allows everyone.
pub fn parse_networks(list: &str) -> Result<Vec<Network>, String> {
    list.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(str::parse)
        .collect()
}

/// Why a request was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("client address not in the allowed networks")]
    Network,
    #[error("missing or wrong access token")]
    Token,
    #[error("missing or wrong credentials")]
    Credentials,
}

pub struct AccessPolicy {
    pub networks: Vec<Network>,
    pub token: Option<String>,
    /// `user:password`
    pub basic: Option<String>,
}

/// How a request presented itself.
pub struct Presented<'a> {
    pub peer: Option<IpAddr>,
    /// The first path segment below the prefix (raw).
    pub first_segment: Option<&'a str>,
    pub query: &'a str,
    pub authorization: Option<&'a str>,
}

/// Where the token was found, so the caller strips it from the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenAt {
    None,
    PathSegment,
    Query,
}

impl AccessPolicy {
    pub fn is_open(&self) -> bool {
        self.networks.is_empty() && self.token.is_none() && self.basic.is_none()
    }

    pub fn check(&self, request: &Presented<'_>) -> Result<TokenAt, Denied> {
        if !self.networks.is_empty()
            && !request
                .peer
                .is_some_and(|ip| self.networks.iter().any(|n| n.contains(ip)))
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
    fn networks_match() {
        let nets = parse_networks("10.0.0.0/8, 192.168.1.7, 2001:db8::/32").unwrap();
        assert!(nets[0].contains("10.200.3.4".parse().unwrap()));
        assert!(!nets[0].contains("11.0.0.1".parse().unwrap()));
        assert!(nets[1].contains("192.168.1.7".parse().unwrap()));
        assert!(!nets[1].contains("192.168.1.8".parse().unwrap()));
        assert!(nets[2].contains("2001:db8::1".parse().unwrap()));
        assert!(nets[0].contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(
            "0.0.0.0/0"
                .parse::<Network>()
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!(parse_networks("10.0.0.0/33").is_err());
        assert!(parse_networks("nonsense").is_err());
        assert!(parse_networks("").unwrap().is_empty());
    }

    #[test]
    fn policy_checks_each_way() {
        let policy = AccessPolicy {
            networks: parse_networks("127.0.0.0/8").unwrap(),
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
            networks: vec![],
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
