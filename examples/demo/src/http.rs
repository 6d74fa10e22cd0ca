//! A minimal HTTP/1.1 server and client for the demo services.
//!
//! One request per connection (`Connection: close`), bodies framed by
//! `Content-Length` only, a thread per connection. It exists so the demo
//! binary needs no crates; it must never grow keep-alive, chunked request
//! bodies, TLS or anything else a demo does not need, and must never trust
//! sizes from the peer (heads and bodies are capped).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::error::Error;
use crate::resolve;

/// Largest request or status line plus headers we accept.
pub const MAX_HEAD: usize = 16 * 1024;
/// Largest body we accept, in either direction.
pub const MAX_BODY: usize = 1024 * 1024;
/// How long a connection may sit idle in a read or write.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Header names and values in arrival order.
type Headers = Vec<(String, String)>;

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The request target as sent, e.g. `/kv/visits`.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// A response to send, or one that was received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
impl Request {
    /// The value of the first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

impl Response {
    /// A `text/plain` response.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Response {
            status,
            headers: vec![("Content-Type".into(), "text/plain; charset=utf-8".into())],
            body: body.into().into_bytes(),
        }
    }

    /// A `text/html` response.
    pub fn html(status: u16, body: impl Into<String>) -> Self {
        Response {
            status,
            headers: vec![("Content-Type".into(), "text/html; charset=utf-8".into())],
            body: body.into().into_bytes(),
        }
    }

    /// The value of the first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as text, with invalid UTF-8 replaced.
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// The standard reason phrase for the status codes the demo uses.
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Content Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// Reads the head (start line and headers) of a message. Returns `None` if
/// the peer closed the connection before sending anything, which health
/// probes that only open a TCP connection do.
fn read_head<R: BufRead>(r: &mut R) -> Result<Option<(String, Headers)>, Error> {
    let mut budget = MAX_HEAD as u64;
    let mut start = None;
    let mut headers = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = (&mut *r)
            .take(budget)
            .read_until(b'\n', &mut line)
            .map_err(|e| Error::io("reading an HTTP head", e))?;
        budget -= n as u64;
        if n == 0 && start.is_none() && line.is_empty() {
            return Ok(None);
        }
        if line.last() != Some(&b'\n') {
            return Err(Error::Http(if budget == 0 {
                format!("head larger than {MAX_HEAD} bytes")
            } else {
                "connection closed in the middle of the head".to_string()
            }));
        }
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        let line =
            String::from_utf8(line).map_err(|_| Error::Http("head is not UTF-8".to_string()))?;
        if start.is_none() {
            start = Some(line);
            continue;
        }
        if line.is_empty() {
            // `start` was set on the first iteration.
            return Ok(start.map(|s| (s, headers)));
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| Error::Http(format!("header line without a colon: {line:?}")))?;
        if name.is_empty() || name.contains(|c: char| c.is_ascii_whitespace()) {
            return Err(Error::Http(format!("bad header name {name:?}")));
        }
        headers.push((name.to_string(), value.trim().to_string()));
    }
}

/// The body length announced by `headers`, or `None` if there is none.
fn content_length(headers: &[(String, String)]) -> Result<Option<usize>, Error> {
    let mut length = None;
    for (name, value) in headers {
        if !name.eq_ignore_ascii_case("content-length") {
            continue;
        }
        let n: usize = value
            .parse()
            .map_err(|_| Error::Http(format!("bad Content-Length {value:?}")))?;
        if length.is_some_and(|l| l != n) {
            return Err(Error::Http(
                "conflicting Content-Length headers".to_string(),
            ));
        }
        length = Some(n);
    }
    if let Some(n) = length.filter(|&n| n > MAX_BODY) {
        return Err(Error::Http(format!(
            "body of {n} bytes is larger than {MAX_BODY}"
        )));
    }
    Ok(length)
}

fn read_body<R: Read>(r: &mut R, len: usize) -> Result<Vec<u8>, Error> {
    let mut body = vec![0; len];
    r.read_exact(&mut body)
        .map_err(|e| Error::io(format!("reading a {len}-byte HTTP body"), e))?;
    Ok(body)
}

/// Reads one request. `Ok(None)` means the peer closed without sending one.
pub fn read_request<R: BufRead>(r: &mut R) -> Result<Option<Request>, Error> {
    let Some((start, headers)) = read_head(r)? else {
        return Ok(None);
    };
    let mut parts = start.split(' ');
    let (Some(method), Some(path), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Error::Http(format!("bad request line {start:?}")));
    };
    if method.is_empty() || !path.starts_with('/') || !version.starts_with("HTTP/1.") {
        return Err(Error::Http(format!("bad request line {start:?}")));
    }
    if find_header(&headers, "transfer-encoding").is_some() {
        return Err(Error::Http(
            "Transfer-Encoding request bodies are not supported".to_string(),
        ));
    }
    let body = match content_length(&headers)? {
        Some(n) => read_body(r, n)?,
        None => Vec::new(),
    };
    Ok(Some(Request {
        method: method.to_string(),
        path: path.to_string(),
        headers,
        body,
    }))
}

/// Reads one response; without `Content-Length` the body runs to the end of
/// the connection (we always send `Connection: close`).
pub fn read_response<R: BufRead>(r: &mut R) -> Result<Response, Error> {
    let (start, headers) = read_head(r)?
        .ok_or_else(|| Error::Http("connection closed before a response".to_string()))?;
    let mut parts = start.splitn(3, ' ');
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        return Err(Error::Http(format!("bad status line {start:?}")));
    };
    let status: u16 = code
        .parse()
        .ok()
        .filter(|s| (100..600).contains(s) && version.starts_with("HTTP/1."))
        .ok_or_else(|| Error::Http(format!("bad status line {start:?}")))?;
    if find_header(&headers, "transfer-encoding").is_some() {
        return Err(Error::Http(
            "chunked response bodies are not supported".to_string(),
        ));
    }
    let body = match content_length(&headers)? {
        Some(n) => read_body(r, n)?,
        None => {
            let mut body = Vec::new();
            r.take(MAX_BODY as u64 + 1)
                .read_to_end(&mut body)
                .map_err(|e| Error::io("reading an HTTP response body", e))?;
            if body.len() > MAX_BODY {
                return Err(Error::Http(format!(
                    "response body larger than {MAX_BODY} bytes"
                )));
            }
            body
        }
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// Writes `resp` with the framing headers the demo always sends.
pub fn write_response<W: Write>(w: &mut W, resp: &Response) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        resp.status,
        reason(resp.status),
        resp.body.len()
    );
    for (name, value) in &resp.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    w.write_all(head.as_bytes())?;
    w.write_all(&resp.body)?;
    w.flush()
}

/// Writes a request with `Connection: close` and a `Content-Length` body.
pub fn write_request<W: Write>(
    w: &mut W,
    method: &str,
    host: &str,
    path: &str,
    body: &[u8],
) -> io::Result<()> {
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: flotilla-demo\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    w.write_all(head.as_bytes())?;
    w.write_all(body)?;
    w.flush()
}

/// The parts of an `http://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub host: String,
    pub port: u16,
    /// Path and query, always starting with `/`.
    pub path: String,
}

/// Parses `http://HOST[:PORT][/PATH]`; `HOST` may be a bracketed IPv6 literal.
pub fn parse_url(url: &str) -> Result<Url, Error> {
    let bad = |reason: &str| Error::BadUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| bad("only http:// URLs are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
        match after {
            "" => (host, None),
            p => (
                host,
                Some(p.strip_prefix(':').ok_or_else(|| bad("junk after ']'"))?),
            ),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let port = match port {
        Some(p) => p.parse().map_err(|_| bad("bad port"))?,
        None => 80,
    };
    Ok(Url {
        host: host.to_string(),
        port,
        path: path.to_string(),
    })
}

/// Sends one request to `url` and reads the response. Host names are
/// resolved with [`resolve::resolve_host`], never with libc.
pub fn request(method: &str, url: &str, body: &[u8], timeout: Duration) -> Result<Response, Error> {
    let u = parse_url(url)?;
    let ip = resolve::resolve_host(&u.host)?;
    let addr = SocketAddr::new(ip, u.port);
    let io_err = |what: &str, e| Error::io(format!("{what} {method} {url} ({addr})"), e);
    let stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| io_err("connecting for", e))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| io_err("setting timeouts for", e))?;
    let host_header = if u.host.contains(':') {
        format!("[{}]:{}", u.host, u.port)
    } else {
        format!("{}:{}", u.host, u.port)
    };
    write_request(&mut &stream, method, &host_header, &u.path, body)
        .map_err(|e| io_err("sending", e))?;
    read_response(&mut BufReader::new(&stream))
}

/// Serves connections on `listener` forever, a thread each, answering every
/// request with `handler` and logging one line per request to stdout.
/// Every response carries `X-Served-By: <served_by>` so load-balancing
/// tests can tell replicas apart.
pub fn serve<H>(role: &str, served_by: &str, listener: TcpListener, handler: H) -> !
where
    H: Fn(&Request) -> Response + Send + Sync + 'static,
{
    let handler = Arc::new(handler);
    let ctx: Arc<(String, String)> = Arc::new((role.to_string(), served_by.to_string()));
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                let handler = Arc::clone(&handler);
                let ctx = Arc::clone(&ctx);
                let spawned = thread::Builder::new()
                    .name(format!("conn-{peer}"))
                    .spawn(move || handle_connection(&ctx.0, &ctx.1, stream, peer, &*handler));
                if let Err(e) = spawned {
                    eprintln!("{role}: cannot start a thread for {peer}: {e}");
                }
            }
            Err(e) => {
                eprintln!("{role}: accept failed: {e}");
                // Out of descriptors or memory: back off instead of spinning.
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn handle_connection(
    role: &str,
    served_by: &str,
    stream: TcpStream,
    peer: SocketAddr,
    handler: &dyn Fn(&Request) -> Response,
) {
    if let Err(e) = stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(IO_TIMEOUT)))
    {
        eprintln!("{role}: cannot set timeouts on connection from {peer}: {e}");
        return;
    }
    let (line, mut resp) = match read_request(&mut BufReader::new(&stream)) {
        Ok(None) => return,
        Ok(Some(req)) => (format!("{} {}", req.method, req.path), handler(&req)),
        Err(e) => ("-".to_string(), Response::text(400, format!("{e}\n"))),
    };
    resp.headers
        .push(("X-Served-By".to_string(), served_by.to_string()));
    println!(
        "{role} {peer} \"{line}\" {} {}",
        resp.status,
        resp.body.len()
    );
    if let Err(e) = write_response(&mut &stream, &resp) {
        eprintln!("{role}: cannot write response to {peer}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn parse(raw: &str) -> Result<Option<Request>, Error> {
        read_request(&mut Cursor::new(raw.as_bytes().to_vec()))
    }

    #[test]
    fn parses_request_with_body() {
        let req = parse("PUT /kv/a HTTP/1.1\r\nHost: x\r\ncontent-length: 5\r\n\r\nhelloEXTRA")
            .unwrap()
            .unwrap();
        assert_eq!(req.method, "PUT");
        assert_eq!(req.path, "/kv/a");
        assert_eq!(req.header("HOST"), Some("x"));
        assert_eq!(req.body, b"hello");
    }

    #[test]
    fn parses_bare_lf_and_no_body() {
        let req = parse("GET /health HTTP/1.0\nX-A:  b \n\n")
            .unwrap()
            .unwrap();
        assert_eq!(req.path, "/health");
        assert_eq!(req.header("x-a"), Some("b"));
        assert!(req.body.is_empty());
    }

    #[test]
    fn empty_connection_is_not_an_error() {
        assert_eq!(parse("").unwrap(), None);
    }

    #[test]
    fn rejects_malformed_requests() {
        for raw in [
            "GET /\r\n\r\n",
            "GET / HTTP/1.1 extra\r\n\r\n",
            "GET noslash HTTP/1.1\r\n\r\n",
            "GET / SPDY/3\r\n\r\n",
            "GET / HTTP/1.1\r\nNoColon\r\n\r\n",
            "GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            "GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
            "GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "PUT / HTTP/1.1\r\nContent-Length: 10\r\n\r\nshort",
            "GET / HTTP/1.1\r\nHost: x\r\n",
        ] {
            assert!(parse(raw).is_err(), "accepted {raw:?}");
        }
    }

    #[test]
    fn rejects_oversized_head_and_body() {
        let big_head = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        assert!(parse(&big_head).is_err());
        let big_body = format!("PUT / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", MAX_BODY + 1);
        assert!(parse(&big_body).is_err());
    }

    #[test]
    fn response_round_trip() {
        let mut resp = Response::text(404, "no such key\n");
        resp.headers.push(("X-Test".into(), "1".into()));
        let mut wire = Vec::new();
        write_response(&mut wire, &resp).unwrap();
        let text = String::from_utf8(wire.clone()).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"), "{text}");
        assert!(text.contains("Connection: close\r\n"));
        let back = read_response(&mut Cursor::new(wire)).unwrap();
        assert_eq!(back.status, 404);
        assert_eq!(back.header("x-test"), Some("1"));
        assert_eq!(back.body, b"no such key\n");
        assert!(!back.is_success());
    }

    #[test]
    fn response_without_length_reads_to_eof() {
        let raw = b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\nall of it".to_vec();
        let resp = read_response(&mut Cursor::new(raw)).unwrap();
        assert!(resp.is_success());
        assert_eq!(resp.body_text(), "all of it");
    }

    #[test]
    fn rejects_bad_status_lines() {
        for raw in [
            "HTTP/1.1 abc OK\r\n\r\n",
            "HTTP/1.1 99 X\r\n\r\n",
            "ICY 200 OK\r\n\r\n",
            "",
        ] {
            assert!(
                read_response(&mut Cursor::new(raw.as_bytes().to_vec())).is_err(),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn request_round_trip() {
        let mut wire = Vec::new();
        write_request(&mut wire, "POST", "api:5000", "/visit", b"x").unwrap();
        let req = read_request(&mut Cursor::new(wire)).unwrap().unwrap();
        assert_eq!(req.method, "POST");
        assert_eq!(req.path, "/visit");
        assert_eq!(req.header("host"), Some("api:5000"));
        assert_eq!(req.body, b"x");
    }

    #[test]
    fn url_parsing() {
        let u = parse_url("http://store:6000/kv/a?x=1").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("store", 6000, "/kv/a?x=1")
        );
        let u = parse_url("http://api").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.path.as_str()), ("api", 80, "/"));
        let u = parse_url("http://[::1]:5000/health").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("::1", 5000, "/health")
        );
        let u = parse_url("http://[fe80::1]").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("fe80::1", 80));
        for bad in [
            "https://x/",
            "http://",
            "http://:80/",
            "http://x:port/",
            "http://[::1/",
            "http://[::1]x/",
            "x",
        ] {
            assert!(parse_url(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn client_and_server_talk_over_loopback() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        thread::spawn(move || {
            serve("test", "me", listener, |req: &Request| {
                Response::text(
                    201,
                    format!(
                        "{} {} {}",
                        req.method,
                        req.path,
                        String::from_utf8_lossy(&req.body)
                    ),
                )
            })
        });
        let url = format!("http://127.0.0.1:{port}/echo");
        let resp = request("PUT", &url, b"payload", Duration::from_secs(10)).unwrap();
        assert_eq!(resp.status, 201);
        assert_eq!(resp.body_text(), "PUT /echo payload");
        assert_eq!(resp.header("x-served-by"), Some("me"));
    }
}
