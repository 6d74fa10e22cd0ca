//! `demo`: one static binary for Flotilla's example stacks and tests.
//!
//! The first argument (or `$ROLE` when there is none) picks what it does:
//! the services `store`, `api` and `web`, an HTTP client (`get`, `put`,
//! `post`) for health checks, and small helpers tests run inside containers
//! whose root filesystem holds nothing else (`sleep`, `echo`, `env`,
//! `hostname`, `pid`, `exit`, `cat`, `ls`, `write`, `stubborn`). It must stay
//! std-only at run time and must never use the libc resolver (see
//! `resolve`), so it works as a static binary in an empty root filesystem.

mod error;
mod http;
mod resolve;
mod roles;
mod signal;

use std::env;
use std::fs;
use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::process::ExitCode;
use std::thread;
use std::time::Duration;

use error::Error;

const USAGE: &str = "\
usage: demo ROLE [ARGS]   (or set ROLE in the environment)

services (listen on $BIND_ADDR:$PORT, BIND_ADDR defaults to 0.0.0.0):
  store                 key-value store: GET|PUT|DELETE /kv/KEY, POST /incr/KEY, GET /health  (PORT 6000)
  api                   visit counter: POST /visit, GET /count, GET /health; uses $STORE_URL  (PORT 5000)
  web                   front end: GET / shows \"hits: N\", GET /health; uses $API_URL       (PORT 8080)

client (prints the body; exit 0 only on a 2xx status):
  get URL | put URL BODY | post URL [BODY]

helpers:
  sleep [SECONDS]       sleep (forever without SECONDS); SIGTERM exits 0
  stubborn              sleep forever ignoring SIGTERM and SIGINT
  tick MS [N CODE]      print tick K every MS ms; after N ticks exit CODE
  echo ARGS...          print ARGS
  env                   print the environment
  hostname              print /proc/sys/kernel/hostname
  lookup NAME           print the address NAME resolves to (hosts, then DNS)
  absent FILE           exit 0 if FILE does not exist, 1 if it does (health checks)
  udp-echo PORT         answer each UDP datagram on PORT with from ADDR:PORT
  pid                   print the process id
  exit N                exit with status N
  cat FILE...           print files
  ls DIR                list a directory
  write FILE TEXT       write TEXT (and a newline) to FILE
";

/// How long the command-line client waits to connect and for each read.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    let mut args: Vec<String> = env::args().skip(1).collect();
    let role = if args.is_empty() {
        env::var("ROLE").ok()
    } else {
        Some(args.remove(0))
    };
    let Some(role) = role else {
        eprint!("{USAGE}");
        return ExitCode::from(2);
    };
    match run(&role, &args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("demo {role}: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(role: &str, args: &[String]) -> Result<ExitCode, Error> {
    // Installed first so every role, helpers included, stops promptly as pid 1.
    if role == "stubborn" {
        signal::ignore_terminate()
    } else {
        signal::exit_on_terminate()
    }
    .map_err(|e| Error::io("installing the termination signal handler", e))?;

    match role {
        "store" => {
            let store = roles::Store::default();
            serve_role(role, 6000, move |req| store.handle(req))
        }
        "api" => {
            let api = roles::Api::new(&env_or("STORE_URL", "http://store:6000"));
            serve_role(role, 5000, move |req| api.handle(req))
        }
        "web" => {
            let web = roles::Web::new(&env_or("API_URL", "http://api:5000"), &served_by());
            serve_role(role, 8080, move |req| web.handle(req))
        }
        "get" => client("GET", arg(args, 0, "URL")?, b""),
        "put" => client(
            "PUT",
            arg(args, 0, "URL")?,
            arg(args, 1, "BODY")?.as_bytes(),
        ),
        "post" => client(
            "POST",
            arg(args, 0, "URL")?,
            args.get(1).map(String::as_bytes).unwrap_or(b""),
        ),
        "sleep" => {
            match args.first() {
                Some(secs) => {
                    let secs: f64 = secs
                        .parse()
                        .ok()
                        .filter(|s: &f64| s.is_finite() && *s >= 0.0)
                        .ok_or_else(|| {
                            Error::Usage(format!("sleep: bad number of seconds {secs:?}"))
                        })?;
                    thread::sleep(Duration::from_secs_f64(secs));
                }
                None => sleep_forever(),
            }
            Ok(ExitCode::SUCCESS)
        }
        "tick" => {
            // `tick MS [N CODE]`: prints "tick K" every MS milliseconds; after
            // N ticks exits with CODE (forever when N is absent).
            let ms: u64 = arg(args, 0, "MS")?
                .parse()
                .map_err(|_| Error::Usage("tick: MS must be a number".into()))?;
            let limit: Option<u64> = args.get(1).and_then(|n| n.parse().ok());
            let code: i32 = args.get(2).and_then(|c| c.parse().ok()).unwrap_or(0);
            let mut out = std::io::stdout();
            let mut k = 0u64;
            loop {
                k += 1;
                writeln!(out, "tick {k}").map_err(|e| Error::io("writing to stdout", e))?;
                out.flush().map_err(|e| Error::io("writing to stdout", e))?;
                if limit.is_some_and(|n| k >= n) {
                    std::process::exit(code);
                }
                thread::sleep(Duration::from_millis(ms));
            }
        }
        "stubborn" => {
            println!("demo stubborn: ignoring SIGTERM and SIGINT");
            sleep_forever()
        }
        "echo" => {
            println!("{}", args.join(" "));
            Ok(ExitCode::SUCCESS)
        }
        "env" => {
            for (k, v) in env::vars_os() {
                println!("{}={}", k.to_string_lossy(), v.to_string_lossy());
            }
            Ok(ExitCode::SUCCESS)
        }
        "hostname" => {
            println!("{}", hostname()?);
            Ok(ExitCode::SUCCESS)
        }
        "absent" => {
            let path = arg(args, 0, "FILE")?;
            Ok(if std::path::Path::new(path).exists() {
                println!("{path} exists");
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        "udp-echo" => {
            let port = arg(args, 0, "PORT")?;
            let port: u16 = port
                .parse()
                .map_err(|_| Error::Usage(format!("udp-echo: bad port {port:?}")))?;
            let sock = std::net::UdpSocket::bind(SocketAddr::new(IpAddr::from([0u8; 4]), port))
                .map_err(|e| Error::io(format!("binding UDP port {port}"), e))?;
            println!("demo udp-echo: listening on udp/{port}");
            let mut buf = [0u8; 2048];
            loop {
                let (_, peer) = sock
                    .recv_from(&mut buf)
                    .map_err(|e| Error::io("receiving a datagram", e))?;
                // The sender as this server sees it: tests check that a
                // published port keeps the client's source address.
                let _ = sock.send_to(format!("from {peer}\n").as_bytes(), peer);
            }
        }
        "lookup" => {
            println!("{}", resolve::resolve_host(arg(args, 0, "NAME")?)?);
            Ok(ExitCode::SUCCESS)
        }
        "pid" => {
            println!("{}", std::process::id());
            Ok(ExitCode::SUCCESS)
        }
        "exit" => {
            let code = arg(args, 0, "N")?;
            let code: i32 = code
                .parse()
                .map_err(|_| Error::Usage(format!("exit: bad status {code:?}")))?;
            std::process::exit(code)
        }
        "cat" => {
            let mut out = std::io::stdout().lock();
            for path in args {
                let data = fs::read(path).map_err(|e| Error::io(format!("reading {path}"), e))?;
                out.write_all(&data)
                    .map_err(|e| Error::io("writing to stdout", e))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        "ls" => {
            let dir = args.first().map(String::as_str).unwrap_or(".");
            let mut names: Vec<String> = fs::read_dir(dir)
                .map_err(|e| Error::io(format!("listing {dir}"), e))?
                .map(|entry| entry.map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect::<Result<_, _>>()
                .map_err(|e| Error::io(format!("listing {dir}"), e))?;
            names.sort();
            for n in names {
                println!("{n}");
            }
            Ok(ExitCode::SUCCESS)
        }
        "write" => {
            let path = arg(args, 0, "FILE")?;
            let text = arg(args, 1, "TEXT")?;
            fs::write(path, format!("{text}\n"))
                .map_err(|e| Error::io(format!("writing {path}"), e))?;
            Ok(ExitCode::SUCCESS)
        }
        "help" | "-h" | "--help" => {
            print!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        other => Err(Error::Usage(format!("unknown role {other:?}\n{USAGE}"))),
    }
}

fn arg<'a>(args: &'a [String], i: usize, name: &str) -> Result<&'a str, Error> {
    args.get(i)
        .map(String::as_str)
        .ok_or_else(|| Error::Usage(format!("missing argument {name}\n{USAGE}")))
}

fn env_or(name: &str, default: &str) -> String {
    env::var(name).unwrap_or_else(|_| default.to_string())
}

/// The kernel host name (the container's, in a UTS namespace): from
/// `/proc/sys/kernel/hostname`, or from uname(2) where /proc is not mounted.
fn hostname() -> Result<String, Error> {
    match fs::read_to_string("/proc/sys/kernel/hostname") {
        Ok(name) => Ok(name.trim().to_string()),
        Err(proc_err) => uname_nodename().map_err(|e| {
            Error::io(
                format!("reading /proc/sys/kernel/hostname ({proc_err}) and calling uname"),
                e,
            )
        }),
    }
}

fn uname_nodename() -> std::io::Result<String> {
    // SAFETY: utsname is plain old data; all-zero bytes are a valid value.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uname(2) writes only into the struct we pass, which lives
    // across the call.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // The kernel NUL-terminates nodename; the cast reinterprets c_char bytes.
    let bytes: Vec<u8> = uts
        .nodename
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The name services report in `X-Served-By` and on the page.
fn served_by() -> String {
    hostname().unwrap_or_else(|_| "unknown".to_string())
}

fn sleep_forever() -> ! {
    loop {
        thread::sleep(Duration::from_secs(3600));
    }
}

/// Binds `$BIND_ADDR:$PORT` and serves forever. `PORT=0` picks a free port;
/// the "listening on" line (always the first line on stdout) reports it.
fn serve_role<H>(role: &str, default_port: u16, handler: H) -> Result<ExitCode, Error>
where
    H: Fn(&http::Request) -> http::Response + Send + Sync + 'static,
{
    let port = match env::var("PORT") {
        Ok(p) => p
            .parse::<u16>()
            .map_err(|_| Error::Usage(format!("bad PORT {p:?}")))?,
        Err(_) => default_port,
    };
    let bind = env_or("BIND_ADDR", "0.0.0.0");
    let ip: IpAddr = bind
        .parse()
        .map_err(|_| Error::Usage(format!("bad BIND_ADDR {bind:?}: need an IP address")))?;
    let listener = TcpListener::bind(SocketAddr::new(ip, port))
        .map_err(|e| Error::io(format!("listening on {ip}:{port}"), e))?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::io("reading the listening address", e))?;
    println!("{role} listening on {local}");
    http::serve(role, &served_by(), listener, handler)
}

/// Runs one request and prints the body; success only on a 2xx status.
fn client(method: &str, url: &str, body: &[u8]) -> Result<ExitCode, Error> {
    let resp = http::request(method, url, body, CLIENT_TIMEOUT)?;
    std::io::stdout()
        .write_all(&resp.body)
        .map_err(|e| Error::io("writing to stdout", e))?;
    if resp.is_success() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "demo {}: {method} {url} returned status {}",
            method.to_lowercase(),
            resp.status
        );
        Ok(ExitCode::from(1))
    }
}
