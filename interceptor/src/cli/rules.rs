//! Parsing of destination rules given on the command line.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::kernel::CidrRule;

/// `CIDR`, `IPv4CIDR:PORTS` or `[IPv6CIDR]:PORTS`; a bare address is a single host.
pub fn parse_deny(text: &str) -> Result<CidrRule, String> {
    let (net, ports) = if let Some(rest) = text.strip_prefix('[') {
        let (net, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{text:?}: missing ']'"))?;
        let ports = match after {
            "" => None,
            _ => Some(
                after
                    .strip_prefix(':')
                    .ok_or_else(|| format!("{text:?}: expected ':PORTS' after ']'"))?,
            ),
        };
        (net, ports)
    } else if text.contains('.') {
        match text.split_once(':') {
            Some((net, ports)) => (net, Some(ports)),
            None => (text, None),
        }
    } else {
        (text, None)
    };
    let net = parse_net(net).map_err(|e| format!("{text:?}: {e}"))?;
    let ports = match ports {
        None => Vec::new(),
        Some(p) => p
            .split(',')
            .map(|p| {
                p.trim()
                    .parse::<u16>()
                    .map_err(|_| format!("{text:?}: bad port {p:?}"))
            })
            .collect::<Result<_, _>>()?,
    };
    Ok(CidrRule { net, ports })
}

fn parse_net(text: &str) -> Result<IpNet, String> {
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    text.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("{text:?} is neither an address nor a CIDR"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(net: &str, ports: &[u16]) -> CidrRule {
        CidrRule {
            net: net.parse().unwrap(),
            ports: ports.to_vec(),
        }
    }

    #[test]
    fn parses_every_form() {
        assert_eq!(parse_deny("10.0.0.0/8").unwrap(), rule("10.0.0.0/8", &[]));
        assert_eq!(parse_deny("127.0.0.9").unwrap(), rule("127.0.0.9/32", &[]));
        assert_eq!(
            parse_deny("169.254.169.254/32:80,443").unwrap(),
            rule("169.254.169.254/32", &[80, 443])
        );
        assert_eq!(parse_deny("fd00::/8").unwrap(), rule("fd00::/8", &[]));
        assert_eq!(parse_deny("::1").unwrap(), rule("::1/128", &[]));
        assert_eq!(
            parse_deny("[fd00::/8]:443").unwrap(),
            rule("fd00::/8", &[443])
        );
        assert_eq!(parse_deny("10.1.2.3/8").unwrap(), rule("10.0.0.0/8", &[]));
    }

    #[test]
    fn rejects_garbage_with_the_input_in_the_message() {
        for bad in [
            "nope",
            "10.0.0.0/33",
            "10.0.0.1:http",
            "[fd00::/8",
            "[::1]443",
        ] {
            let e = parse_deny(bad).unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
    }
}
