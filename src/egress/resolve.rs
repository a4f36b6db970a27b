//! Where a request may go: on the job's list, resolved on the host (or by the operator's
//! `hosts`), to an address that is public or that the operator lists; and whether a client is
//! in the sandbox's network.

use std::net::{IpAddr, SocketAddr};

use super::{HANDSHAKE_TIMEOUT, Rules, non_public};
use crate::model::{Allow, Host};

/// Where `allow` may be reached, if anywhere: on the job's list, and an address that is public
/// or that the operator lists.
pub(super) async fn resolve(allow: &Allow, rules: &Rules) -> Result<SocketAddr, String> {
    if !rules.allow.contains(allow) {
        return Err(format!("{allow} is not on the job's allowlist"));
    }
    let listed = |ip: &IpAddr| rules.operator.allow_addresses.contains(ip);
    let candidates: Vec<IpAddr> = match &allow.host {
        Host::Ip(ip) if listed(ip) => return Ok(SocketAddr::new(*ip, allow.port)),
        Host::Ip(_) => {
            return Err(format!(
                "{allow} is an IP literal; only the operator can list one ([egress] allow_addresses)"
            ));
        }
        Host::Name(name) => match rules.operator.hosts.get(name) {
            Some(ip) => vec![*ip],
            None => tokio::time::timeout(
                HANDSHAKE_TIMEOUT,
                tokio::net::lookup_host((name.as_str(), allow.port)),
            )
            .await
            .map_err(|_| format!("resolving {name} took over 10 s"))?
            .map_err(|e| format!("cannot resolve {name}: {e}"))?
            .map(|a| a.ip())
            .collect(),
        },
    };
    let mut refused = Vec::new();
    for ip in candidates {
        match non_public(ip) {
            Some(why) if !listed(&ip) => refused.push(format!("{ip} ({why})")),
            _ => return Ok(SocketAddr::new(ip, allow.port)),
        }
    }
    if refused.is_empty() {
        Err(format!("{} has no address", allow.host))
    } else {
        Err(format!(
            "{} resolves only to addresses no job may reach: {}",
            allow.host,
            refused.join(", ")
        ))
    }
}

pub(super) fn in_network(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(prefix.min(32)))
                .unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(prefix.min(128)))
                .unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_match_by_prefix() {
        let net: IpAddr = "172.18.0.0".parse().unwrap();
        assert!(in_network("172.18.3.4".parse().unwrap(), net, 16));
        assert!(!in_network("172.19.0.1".parse().unwrap(), net, 16));
        assert!(!in_network("::1".parse().unwrap(), net, 16));
        assert!(in_network("10.0.0.1".parse().unwrap(), net, 0));
    }
}
