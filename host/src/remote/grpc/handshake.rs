//! go-plugin's handshake: the environment a host starts a plugin with, and the one line the
//! plugin prints on stdout once it listens, `CORE|APP|NETWORK|ADDRESS|PROTOCOL|CERT`.

use std::net::SocketAddr;
use std::path::PathBuf;

use interface::PROTOCOL_VERSION;

use crate::remote::CORE_PROTOCOL_VERSION;

/// The environment variable listing the application protocol versions a host speaks.
pub(crate) const PROTOCOL_VERSIONS_ENV: &str = "PLUGIN_PROTOCOL_VERSIONS";
/// Where a plugin creates its Unix socket (go-plugin 1.5 and later; older ones use `TMPDIR`).
pub(crate) const UNIX_SOCKET_DIR_ENV: &str = "PLUGIN_UNIX_SOCKET_DIR";

/// Where a plugin listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Address {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

/// A plugin's handshake line, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Handshake {
    pub(crate) app_version: u32,
    pub(crate) address: Address,
    /// The plugin's certificate (DER) for automatic mutual TLS, if it sent one.
    pub(crate) certificate: Option<Vec<u8>>,
}

/// Checks a plugin's handshake line as a host that speaks application protocol `app` over gRPC.
///
/// The error says what was expected and what was found, in one line.
pub(crate) fn parse(line: &str, app: u32) -> Result<Handshake, String> {
    let line = line.trim_end_matches(['\r', '\n']);
    // As go-plugin's host splits it: at most six fields, the last one keeping any `|`.
    let parts: Vec<&str> = line.splitn(6, '|').collect();
    if parts.len() < 4 {
        return Err(format!(
            "expected a go-plugin handshake line `CORE|APP|NETWORK|ADDRESS|PROTOCOL|CERT` on \
             stdout, found {:?}",
            shorten(line)
        ));
    }
    if parts[0] != CORE_PROTOCOL_VERSION.to_string() {
        return Err(format!(
            "expected go-plugin core protocol {CORE_PROTOCOL_VERSION}, found {:?}",
            shorten(parts[0])
        ));
    }
    let app_version = match parts[1].parse::<u32>() {
        Ok(version) if version == app => version,
        _ => {
            return Err(format!(
                "expected app protocol version {app} (the host offered {app}), found {:?}",
                shorten(parts[1])
            ))
        }
    };
    let address = match parts[2] {
        "unix" => Address::Unix(PathBuf::from(parts[3])),
        "tcp" => match parts[3].parse::<SocketAddr>() {
            Ok(addr) => Address::Tcp(addr),
            Err(_) => {
                return Err(format!(
                    "expected a TCP address `HOST:PORT`, found {:?}",
                    shorten(parts[3])
                ))
            }
        },
        other => {
            return Err(format!("expected network `unix` or `tcp`, found {:?}", shorten(other)))
        }
    };
    // go-plugin hosts read a missing protocol field as net/rpc, go-plugin's default.
    match parts.get(4).copied().unwrap_or("netrpc") {
        "grpc" => {}
        "netrpc" => {
            return Err("the plugin speaks go-plugin's net/rpc protocol; calcplug supports only \
                        gRPC (serve it with plugin.GRPCServer and a GRPCPlugin)"
                .to_owned())
        }
        other => return Err(format!("expected protocol `grpc`, found {:?}", shorten(other))),
    }
    let certificate = match parts.get(5).copied().unwrap_or("") {
        "" => None,
        text => Some(decode_certificate(text)?),
    };
    Ok(Handshake { app_version, address, certificate })
}

/// The line a plugin prints: `CORE|APP|unix|PATH|grpc|CERT`, the certificate base64 without
/// padding, or empty.
pub(crate) fn format(app: u32, address: &Address, certificate: Option<&[u8]>) -> String {
    let (network, address) = match address {
        Address::Unix(path) => ("unix", path.display().to_string()),
        Address::Tcp(addr) => ("tcp", addr.to_string()),
    };
    let certificate = certificate.map(base64_encode).unwrap_or_default();
    format!("{CORE_PROTOCOL_VERSION}|{app}|{network}|{address}|grpc|{certificate}")
}

/// The application protocol version a plugin that speaks `supported` serves to a host that
/// offers `offered` (`PLUGIN_PROTOCOL_VERSIONS`, comma-separated), as go-plugin's server
/// chooses: the highest version both have, else the plugin's lowest (and the host refuses it).
pub(crate) fn negotiate(supported: &[u32], offered: Option<&str>) -> u32 {
    let offered: Vec<u32> = offered
        .unwrap_or("")
        .split(',')
        .filter_map(|version| version.trim().parse().ok())
        .collect();
    let common = supported.iter().filter(|version| offered.contains(version)).max();
    common.or(supported.iter().min()).copied().unwrap_or(PROTOCOL_VERSION)
}

fn shorten(text: &str) -> String {
    const MAX: usize = 120;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 without padding, as go-plugin writes the certificate field.
pub(crate) fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

/// Decodes the certificate field: standard base64, padded or not.
fn decode_certificate(text: &str) -> Result<Vec<u8>, String> {
    let bad = || format!("expected the certificate field in base64, found {:?}", shorten(text));
    let text = text.trim_end_matches('=');
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut bits, mut count) = (0u32, 0u32);
    for byte in text.bytes() {
        let value = ALPHABET.iter().position(|c| *c == byte).ok_or_else(bad)?;
        bits = bits << 6 | value as u32;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    if count >= 6 {
        return Err(bad());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grpc_line_is_read_as_go_plugin_writes_it() {
        let line = "1|1|unix|/tmp/plugin123|grpc|\n";
        let handshake = parse(line, 1).unwrap();
        assert_eq!(handshake.address, Address::Unix(PathBuf::from("/tmp/plugin123")));
        assert_eq!(handshake.certificate, None);
        let tcp = parse("1|1|tcp|127.0.0.1:10000|grpc", 1).unwrap();
        assert_eq!(tcp.address, Address::Tcp("127.0.0.1:10000".parse().unwrap()));
        let line = format(1, &Address::Unix(PathBuf::from("/s")), Some(&[1, 2, 3, 4]));
        assert_eq!(line, "1|1|unix|/s|grpc|AQIDBA");
        assert_eq!(parse(&line, 1).unwrap().certificate, Some(vec![1, 2, 3, 4]));
    }

    #[test]
    fn each_wrong_field_is_named_with_what_was_expected() {
        let err = |line: &str| parse(line, 1).unwrap_err();
        assert_eq!(
            err("hello world"),
            "expected a go-plugin handshake line `CORE|APP|NETWORK|ADDRESS|PROTOCOL|CERT` on \
             stdout, found \"hello world\""
        );
        assert_eq!(err("2|1|unix|/s|grpc|"), "expected go-plugin core protocol 1, found \"2\"");
        assert_eq!(
            err("1|2|unix|/s|grpc|"),
            "expected app protocol version 1 (the host offered 1), found \"2\""
        );
        assert_eq!(err("1|1|udp|/s|grpc|"), "expected network `unix` or `tcp`, found \"udp\"");
        assert_eq!(
            err("1|1|tcp|nowhere|grpc|"),
            "expected a TCP address `HOST:PORT`, found \"nowhere\""
        );
        assert!(
            err("1|1|unix|/s|netrpc|").contains("net/rpc protocol; calcplug supports only gRPC")
        );
        assert!(err("1|1|unix|/s").contains("net/rpc"), "no protocol field means net/rpc");
        assert_eq!(err("1|1|unix|/s|http|"), "expected protocol `grpc`, found \"http\"");
        assert!(err("1|1|unix|/s|grpc|not base64!").starts_with("expected the certificate"));
    }

    #[test]
    fn the_app_version_is_the_highest_common_else_the_lowest_supported() {
        assert_eq!(negotiate(&[1], Some("1")), 1);
        assert_eq!(negotiate(&[1, 2, 3], Some("1,2,5")), 2);
        assert_eq!(negotiate(&[2, 3], Some("1,5")), 2);
        assert_eq!(negotiate(&[2, 3], None), 2, "a legacy host offers nothing");
        assert_eq!(negotiate(&[1, 2], Some("x, 2")), 2, "an unparsable entry is skipped");
    }

    #[test]
    fn base64_round_trips_every_length_and_accepts_padding() {
        for len in 0..40u8 {
            let bytes: Vec<u8> = (0..len).map(|i| i.wrapping_mul(37).wrapping_add(11)).collect();
            let text = base64_encode(&bytes);
            assert!(!text.contains('='));
            assert_eq!(decode_certificate(&text).unwrap(), bytes, "{len}");
        }
        assert_eq!(base64_encode(b"Man"), "TWFu");
        assert_eq!(base64_encode(b"Ma"), "TWE");
        assert_eq!(decode_certificate("TWE=").unwrap(), b"Ma");
        assert!(decode_certificate("T").is_err(), "a lone sextet is not a byte");
    }

    proptest::proptest! {
        #[test]
        fn fuzz_handshake_lines_never_panic(line in "\\PC{0,200}") {
            let _ = parse(&line, 1);
        }
    }
}
