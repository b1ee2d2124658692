//! `VMPIPE_ALLOW_NETWORKS`: client networks in CIDR notation, parsed when the settings load, so
//! a bad value stops every binary at start-up rather than the first request.
//!
//! Unset (or empty), the list is [`DEFAULT_NETWORKS`]: loopback, the private ranges and
//! link-local, never the whole Internet. `0.0.0.0/0,::/0` admits everyone, and says so.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A network in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`, or a single address).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Network {
    address: IpAddr,
    prefix: u8,
}

impl FromStr for Network {
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

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
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

/// The list when `VMPIPE_ALLOW_NETWORKS` is unset: loopback (`127.0.0.0/8`, `::1`), the private
/// ranges (RFC 1918 and IPv6 unique local addresses, `fc00::/7`) and link-local (`169.254.0.0/16`,
/// `fe80::/10`, which no router forwards). Everything a KAZOO on the same site can have, nothing
/// the Internet can reach.
pub const DEFAULT_NETWORKS: &str =
    "127.0.0.0/8,::1/128,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7,169.254.0.0/16,fe80::/10";

/// Comma-separated networks. Unset or empty means [`DEFAULT_NETWORKS`] (not "everyone").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Networks {
    list: Vec<Network>,
    /// Given by the operator, rather than the default list.
    explicit: bool,
}

impl Default for Networks {
    fn default() -> Self {
        let list = DEFAULT_NETWORKS
            .split(',')
            .map(|s| s.parse().expect("the default networks parse"))
            .collect();
        Self {
            list,
            explicit: false,
        }
    }
}

impl Networks {
    /// Whether `ip` is in one of the networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.list.iter().any(|network| network.contains(ip))
    }

    /// The operator gave this list (`VMPIPE_ALLOW_NETWORKS`); false for the default one.
    pub fn is_explicit(&self) -> bool {
        self.explicit
    }

    /// Every IPv4 and every IPv6 address is in the list (`0.0.0.0/0,::/0`): it restricts nothing.
    pub fn admits_everyone(&self) -> bool {
        let whole = |v4: bool| {
            self.list
                .iter()
                .any(|n| n.prefix == 0 && n.address.is_ipv4() == v4)
        };
        whole(true) && whole(false)
    }
}

impl FromStr for Networks {
    type Err = String;

    fn from_str(list: &str) -> Result<Self, Self::Err> {
        let list: Vec<Network> = list
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        if list.is_empty() {
            return Ok(Self::default());
        }
        Ok(Self {
            list,
            explicit: true,
        })
    }
}

impl fmt::Display for Networks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, network) in self.list.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{network}")?;
        }
        Ok(())
    }
}

impl Serialize for Networks {
    /// The default list is written as `""`, so that it reads back as the default (not explicit).
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.explicit {
            serializer.collect_str(self)
        } else {
            serializer.serialize_str("")
        }
    }
}

impl<'de> Deserialize<'de> for Networks {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_match() {
        let nets: Vec<Network> = "10.0.0.0/8, 192.168.1.7, 2001:db8::/32"
            .parse::<Networks>()
            .unwrap()
            .list;
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
        assert!("10.0.0.0/33".parse::<Networks>().is_err());
        assert!("nonsense".parse::<Networks>().is_err());
        assert_eq!("".parse::<Networks>().unwrap(), Networks::default());
        assert_eq!(" , ".parse::<Networks>().unwrap(), Networks::default());
    }

    #[test]
    fn the_default_list_is_loopback_private_and_link_local_only() {
        let default = Networks::default();
        assert!(!default.is_explicit());
        assert!(!default.admits_everyone());
        for inside in [
            "127.0.0.1",
            "127.255.0.9",
            "::1",
            "10.0.0.1",
            "10.255.255.255",
            "172.16.0.1",
            "172.31.255.254",
            "192.168.0.1",
            "192.168.255.255",
            "fc00::1",
            "fd12:3456:789a::1",
            "169.254.10.20",
            "fe80::1",
            // An IPv4 client on a dual-stack socket.
            "::ffff:192.168.1.2",
            "::ffff:127.0.0.1",
        ] {
            assert!(default.contains(inside.parse().unwrap()), "{inside}");
        }
        for outside in [
            "8.8.8.8",
            "203.0.113.9",
            "172.15.255.255",
            "172.32.0.1",
            "192.169.0.1",
            "11.0.0.1",
            "100.64.0.1",
            "0.0.0.0",
            "2001:db8::1",
            "2606:4700::1111",
            "fec0::1",
            "::ffff:8.8.8.8",
            "::",
        ] {
            assert!(!default.contains(outside.parse().unwrap()), "{outside}");
        }
    }

    #[test]
    fn everyone_must_be_said_for_both_families() {
        let everyone: Networks = "0.0.0.0/0, ::/0".parse().unwrap();
        assert!(everyone.is_explicit() && everyone.admits_everyone());
        assert!(everyone.contains("8.8.8.8".parse().unwrap()));
        assert!(everyone.contains("2606:4700::1111".parse().unwrap()));
        let v4: Networks = "0.0.0.0/0".parse().unwrap();
        assert!(!v4.admits_everyone());
        assert!(!v4.contains("2606:4700::1111".parse().unwrap()));
    }

    #[test]
    fn the_default_list_reads_back_as_the_default() {
        let json = serde_json::to_string(&Networks::default()).unwrap();
        assert_eq!(json, "\"\"");
        let back: Networks = serde_json::from_str(&json).unwrap();
        assert!(!back.is_explicit());
        let given: Networks = "10.0.0.0/8".parse().unwrap();
        let back: Networks = serde_json::from_str(&serde_json::to_string(&given).unwrap()).unwrap();
        assert_eq!(back, given);
        assert!(back.is_explicit());
    }

    #[test]
    fn a_list_round_trips_through_its_text() {
        let nets: Networks = "10.0.0.0/8, 192.168.1.7".parse().unwrap();
        assert_eq!(nets.to_string(), "10.0.0.0/8,192.168.1.7/32");
        assert_eq!(nets.to_string().parse::<Networks>().unwrap(), nets);
    }
}
