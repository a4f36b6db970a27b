//! Host names and `host:port` allowlist entries, as a job, the operator config and the egress
//! proxy all write them: parsed once, lowercase, with addresses in disguise refused.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use super::Invalid;

/// One `host:port` a job's stage may reach: a DNS name, or an IP literal (refused unless the
/// operator lists that address).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct Allow {
    pub host: Host,
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    /// Lowercase, without a trailing dot.
    Name(String),
    Ip(IpAddr),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(name) => f.write_str(name),
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

impl fmt::Display for Allow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl Allow {
    /// Parses `host:port` (`[v6]:port` for an IPv6 literal); the error says what is wrong.
    pub fn parse(text: &str) -> Result<Allow, Invalid> {
        let (host, port) = text
            .rsplit_once(':')
            .ok_or_else(|| Invalid(format!("`{text}` is not host:port")))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| Invalid(format!("`{text}`: `{port}` is not a port (1-65535)")))?;
        Ok(Allow {
            host: Host::parse(host).map_err(|why| Invalid(format!("`{text}`: {why}")))?,
            port,
        })
    }
}

impl Host {
    pub fn parse(text: &str) -> Result<Host, Invalid> {
        if let Some(v6) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
            return v6
                .parse::<Ipv6Addr>()
                .map(|ip| Host::Ip(IpAddr::V6(ip)))
                .map_err(|_| Invalid(format!("`{v6}` is not an IPv6 address")));
        }
        if let Ok(ip) = text.parse::<Ipv4Addr>() {
            return Ok(Host::Ip(IpAddr::V4(ip)));
        }
        let name = text.strip_suffix('.').unwrap_or(text).to_ascii_lowercase();
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
            return Err(Invalid(format!("`{text}` is not a host name")));
        }
        // All-numeric names (`2130706433`, `0x7f.1`) are addresses in disguise to some resolvers.
        if name
            .split('.')
            .all(|l| l.bytes().all(|b| b.is_ascii_digit()) || l.starts_with("0x"))
        {
            return Err(Invalid(format!("`{text}` is a number, not a host name")));
        }
        Ok(Host::Name(name))
    }
}

impl TryFrom<String> for Allow {
    type Error = Invalid;
    fn try_from(text: String) -> Result<Self, Invalid> {
        Allow::parse(&text)
    }
}

impl From<Allow> for String {
    fn from(allow: Allow) -> String {
        allow.to_string()
    }
}

/// A host name as the operator must write it in the config: a name (not an address), already
/// lowercase and without a trailing dot, so what is written is what is matched.
pub fn written_host_name(text: &str) -> Result<String, Invalid> {
    match Host::parse(text)? {
        Host::Name(normal) if normal == text => Ok(normal),
        Host::Name(normal) => Err(Invalid(format!("write `{text}` as `{normal}`"))),
        Host::Ip(_) => Err(Invalid(format!("`{text}` is an address, not a host name"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_literals_and_ports() {
        let a = Allow::parse("API.Anthropic.com.:443").unwrap();
        assert_eq!(a.host, Host::Name("api.anthropic.com".into()));
        assert_eq!(a.to_string(), "api.anthropic.com:443");
        assert_eq!(
            Allow::parse("[::1]:8080").unwrap().host,
            Host::Ip("::1".parse().unwrap())
        );
        assert!(matches!(
            Allow::parse("10.0.0.1:80").unwrap().host,
            Host::Ip(_)
        ));
        for bad in [
            "example.com",
            "example.com:0",
            "example.com:99999",
            ":443",
            "exa mple.com:443",
            "-x.com:443",
            "2130706433:80",
            "0x7f.1:80",
            "[nope]:443",
            "a..b:443",
        ] {
            assert!(Allow::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn written_names_must_be_as_matched() {
        assert!(written_host_name("api.example.com").is_ok());
        assert!(
            written_host_name("API.example.com")
                .unwrap_err()
                .0
                .contains("write")
        );
        assert!(
            written_host_name("10.0.0.1")
                .unwrap_err()
                .0
                .contains("address")
        );
    }
}
