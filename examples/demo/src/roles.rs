//! The three demo services: `store` (in-memory key-value store), `api`
//! (a visit counter kept in the store) and `web` (a page showing the count).
//!
//! Each is a request handler for [`crate::http::serve`]. They keep no state
//! but the store's map, never persist anything, and reach each other only
//! through the URLs they were given.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::http::{self, Request, Response};

/// The store key the api keeps its visit counter under.
const VISITS_KEY: &str = "visits";
/// How long a service waits for another one.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);

/// In-memory key-value store.
#[derive(Debug, Default)]
pub struct Store {
    data: Mutex<HashMap<String, Vec<u8>>>,
}

impl Store {
    fn with_data<T>(&self, f: impl FnOnce(&mut HashMap<String, Vec<u8>>) -> T) -> T {
        // A panic while holding the lock cannot leave the map half-updated
        // (each operation is one map call), so a poisoned lock is still usable.
        let mut guard = self.data.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    /// `GET /health`, `GET|PUT|DELETE /kv/KEY`, `POST /incr/KEY` (atomic
    /// increment of a decimal value, so concurrent api replicas count right).
    pub fn handle(&self, req: &Request) -> Response {
        let method = req.method.as_str();
        if req.path == "/health" {
            return Response::text(200, "ok\n");
        }
        if let Some(key) = req.path.strip_prefix("/kv/").filter(|k| !k.is_empty()) {
            return match method {
                "GET" => match self.with_data(|d| d.get(key).cloned()) {
                    Some(value) => Response {
                        status: 200,
                        headers: vec![("Content-Type".into(), "application/octet-stream".into())],
                        body: value,
                    },
                    None => Response::text(404, format!("no key {key:?}\n")),
                },
                "PUT" => {
                    self.with_data(|d| d.insert(key.to_string(), req.body.clone()));
                    Response::text(200, "stored\n")
                }
                "DELETE" => match self.with_data(|d| d.remove(key)) {
                    Some(_) => Response::text(200, "deleted\n"),
                    None => Response::text(404, format!("no key {key:?}\n")),
                },
                _ => Response::text(405, "use GET, PUT or DELETE\n"),
            };
        }
        if let Some(key) = req.path.strip_prefix("/incr/").filter(|k| !k.is_empty()) {
            if method != "POST" {
                return Response::text(405, "use POST\n");
            }
            let result = self.with_data(|d| {
                let current = match d.get(key) {
                    None => 0,
                    Some(v) => std::str::from_utf8(v)
                        .ok()
                        .and_then(|s| s.trim().parse::<u64>().ok())
                        .ok_or_else(|| format!("value of {key:?} is not a counter\n"))?,
                };
                let next = current.saturating_add(1);
                d.insert(key.to_string(), next.to_string().into_bytes());
                Ok::<_, String>(next)
            });
            return match result {
                Ok(n) => Response::text(200, format!("{n}\n")),
                Err(msg) => Response::text(409, msg),
            };
        }
        Response::text(404, "not found\n")
    }
}

/// The visit-counting API in front of the store.
#[derive(Debug)]
pub struct Api {
    store_url: String,
}

impl Api {
    /// An API using the store at `store_url` (e.g. `http://store:6000`).
    pub fn new(store_url: &str) -> Self {
        Api {
            store_url: store_url.trim_end_matches('/').to_string(),
        }
    }

    fn store(&self, method: &str, path: &str) -> Result<Response, String> {
        let url = format!("{}{path}", self.store_url);
        http::request(method, &url, b"", UPSTREAM_TIMEOUT)
            .map_err(|e| format!("store unreachable: {e}\n"))
    }

    /// `GET /health` (200 only if the store answers its health check),
    /// `POST /visit` (count one visit, return the count), `GET /count`.
    pub fn handle(&self, req: &Request) -> Response {
        match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/health") => match self.store("GET", "/health") {
                Ok(r) if r.is_success() => Response::text(200, "ok\n"),
                Ok(r) => Response::text(503, format!("store health check returned {}\n", r.status)),
                Err(msg) => Response::text(503, msg),
            },
            ("POST", "/visit") => match self.store("POST", &format!("/incr/{VISITS_KEY}")) {
                Ok(r) if r.is_success() => Response::text(200, r.body_text()),
                Ok(r) => Response::text(
                    502,
                    format!("store returned {}: {}", r.status, r.body_text()),
                ),
                Err(msg) => Response::text(502, msg),
            },
            ("GET", "/count") => match self.store("GET", &format!("/kv/{VISITS_KEY}")) {
                Ok(r) if r.is_success() => {
                    Response::text(200, format!("{}\n", r.body_text().trim()))
                }
                Ok(r) if r.status == 404 => Response::text(200, "0\n"),
                Ok(r) => Response::text(
                    502,
                    format!("store returned {}: {}", r.status, r.body_text()),
                ),
                Err(msg) => Response::text(502, msg),
            },
            (_, "/health" | "/visit" | "/count") => Response::text(405, "method not allowed\n"),
            _ => Response::text(404, "not found\n"),
        }
    }
}

/// The front end.
#[derive(Debug)]
pub struct Web {
    api_url: String,
    hostname: String,
}

impl Web {
    /// A front end using the api at `api_url`, naming itself `hostname`.
    pub fn new(api_url: &str, hostname: &str) -> Self {
        Web {
            api_url: api_url.trim_end_matches('/').to_string(),
            hostname: hostname.to_string(),
        }
    }

    /// `GET /` (count a visit through the api and show the total),
    /// `GET /health` (always 200 while the process serves).
    pub fn handle(&self, req: &Request) -> Response {
        match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/health") => Response::text(200, "ok\n"),
            ("GET", "/") => {
                let url = format!("{}/visit", self.api_url);
                match http::request("POST", &url, b"", UPSTREAM_TIMEOUT) {
                    Ok(r) if r.is_success() => {
                        let api_host = r.header("X-Served-By").unwrap_or("?").to_string();
                        Response::html(200, page(r.body_text().trim(), &self.hostname, &api_host))
                    }
                    Ok(r) => {
                        Response::text(502, format!("api returned {}: {}", r.status, r.body_text()))
                    }
                    Err(e) => Response::text(502, format!("api unreachable: {e}\n")),
                }
            }
            (_, "/" | "/health") => Response::text(405, "method not allowed\n"),
            _ => Response::text(404, "not found\n"),
        }
    }
}

/// Escapes text for HTML; the values come from other services.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn page(hits: &str, web_host: &str, api_host: &str) -> String {
    format!(
        "<!doctype html>\n<html><head><title>Flotilla demo</title></head><body>\n\
         <h1>Hello from Flotilla</h1>\n<p>hits: {}</p>\n<p>web: {} / api: {}</p>\n</body></html>\n",
        escape(hits),
        escape(web_host),
        escape(api_host)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, path: &str, body: &[u8]) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            headers: Vec::new(),
            body: body.to_vec(),
        }
    }

    #[test]
    fn store_crud_and_incr() {
        let s = Store::default();
        assert_eq!(s.handle(&req("GET", "/health", b"")).status, 200);
        assert_eq!(s.handle(&req("GET", "/kv/a", b"")).status, 404);
        assert_eq!(s.handle(&req("PUT", "/kv/a", b"x y")).status, 200);
        assert_eq!(s.handle(&req("GET", "/kv/a", b"")).body, b"x y");
        assert_eq!(s.handle(&req("POST", "/incr/a", b"")).status, 409);
        assert_eq!(s.handle(&req("DELETE", "/kv/a", b"")).status, 200);
        assert_eq!(s.handle(&req("GET", "/kv/a", b"")).status, 404);
        assert_eq!(s.handle(&req("POST", "/incr/n", b"")).body, b"1\n");
        assert_eq!(s.handle(&req("POST", "/incr/n", b"")).body, b"2\n");
        assert_eq!(s.handle(&req("GET", "/kv/n", b"")).body, b"2");
        assert_eq!(s.handle(&req("POST", "/kv/n", b"")).status, 405);
        assert_eq!(s.handle(&req("GET", "/incr/n", b"")).status, 405);
        assert_eq!(s.handle(&req("GET", "/kv/", b"")).status, 404);
    }

    #[test]
    fn api_reports_unreachable_store() {
        // Port 1 on loopback: nothing listens there, so connecting fails fast.
        let api = Api::new("http://127.0.0.1:1/");
        assert_eq!(api.handle(&req("GET", "/health", b"")).status, 503);
        assert_eq!(api.handle(&req("POST", "/visit", b"")).status, 502);
        assert_eq!(api.handle(&req("GET", "/visit", b"")).status, 405);
        assert_eq!(api.handle(&req("GET", "/nope", b"")).status, 404);
    }

    #[test]
    fn page_escapes_values() {
        let p = page("3", "<web>", "a&b");
        assert!(p.contains("hits: 3"));
        assert!(p.contains("&lt;web&gt;") && p.contains("a&amp;b"));
    }
}
