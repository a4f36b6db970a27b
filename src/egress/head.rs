//! A request's head as the egress proxy reads it: `CONNECT host:port` or an absolute
//! `http://` request (httparse), bounded in size, and the origin-form head a plain request is
//! forwarded with, without proxy headers.

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::MAX_HEAD;

/// Reads up to the end of the request head; returns the head and any bytes after it.
pub(super) async fn read_head(client: &mut TcpStream) -> Result<(Vec<u8>, Vec<u8>), String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let body = buf.split_off(end + 4);
            return Ok((buf, body));
        }
        if buf.len() > MAX_HEAD {
            return Err(format!("a request head over {MAX_HEAD} bytes"));
        }
        let n = client.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the connection closed before a request".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

pub(super) struct Head {
    pub(super) method: String,
    /// `host:port` asked for.
    pub(super) authority: String,
    /// For a plain request: the origin-form path (`/x?y`).
    pub(super) path: String,
}

pub(super) fn parse_head(head: &[u8]) -> Result<Head, String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err("not an HTTP request".into()),
    }
    let method = request.method.unwrap_or_default().to_string();
    let target = request.path.unwrap_or_default();
    if method == "CONNECT" {
        return Ok(Head {
            method,
            authority: target.to_string(),
            path: String::new(),
        });
    }
    let rest = target
        .strip_prefix("http://")
        .ok_or_else(|| "only CONNECT and absolute http:// requests are served".to_string())?;
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.contains('@') {
        return Err("credentials in the URL are refused".into());
    }
    let has_port = match authority.strip_prefix('[') {
        Some(v6) => v6
            .split_once(']')
            .is_some_and(|(_, rest)| rest.starts_with(':')),
        None => authority.contains(':'),
    };
    let authority = if has_port {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_string()
    };
    Ok(Head {
        method,
        authority,
        path,
    })
}

/// A plain request's head as the destination gets it: origin-form, without proxy headers, and
/// one exchange per connection.
pub(super) fn forwarded_head(head: &[u8], request: &Head) -> Result<Vec<u8>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Request::new(&mut headers);
    parsed
        .parse(head)
        .map_err(|_| "not an HTTP request".to_string())?;
    let mut out = format!("{} {} HTTP/1.1\r\n", request.method, request.path).into_bytes();
    for header in parsed.headers.iter() {
        let name = header.name.to_ascii_lowercase();
        if name.starts_with("proxy-") || name == "connection" || name == "keep-alive" {
            continue;
        }
        out.extend_from_slice(header.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(header.value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_read_as_connect_or_absolute_http() {
        let h = parse_head(b"CONNECT api.example.com:443 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(
            (h.method.as_str(), h.authority.as_str()),
            ("CONNECT", "api.example.com:443")
        );
        let h = parse_head(b"GET http://pypi.org/simple/?q=1 HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(
            (h.authority.as_str(), h.path.as_str()),
            ("pypi.org:80", "/simple/?q=1")
        );
        let h = parse_head(b"GET http://[::1]:8080 HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!((h.authority.as_str(), h.path.as_str()), ("[::1]:8080", "/"));
        let h = parse_head(b"GET http://[::1] HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(h.authority, "[::1]:80");
        assert!(parse_head(b"GET /relative HTTP/1.1\r\n\r\n").is_err());
        assert!(parse_head(b"GET http://user:pw@host/ HTTP/1.1\r\n\r\n").is_err());
        assert!(parse_head(b"\x16\x03\x01 tls").is_err());
    }

    #[test]
    fn forwarded_heads_lose_proxy_headers() {
        let raw = b"GET http://a.test/x HTTP/1.1\r\nHost: a.test\r\nProxy-Authorization: Basic x\r\nConnection: keep-alive\r\n\r\n";
        let head = parse_head(raw).unwrap();
        let out = String::from_utf8(forwarded_head(raw, &head).unwrap()).unwrap();
        assert_eq!(
            out,
            "GET /x HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n"
        );
    }
}
