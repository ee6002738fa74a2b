//! `whoami`: a tiny HTTP server for the lab. `GET /` answers
//! `HOSTNAME:<pod name> IP:<pod ip>` so that `curl NODE_IP:30001` shows which pod answered.
//! The IP is the address the connection arrived on: behind a Service that is the pod's
//! own, because kube-proxy's DNAT rewrote the destination to it.
//!
//! Listens on `$PORT` (default 8080). Standard library only, one thread per connection.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "unknown".into())
}

fn handle(mut s: TcpStream, host: &str) -> std::io::Result<()> {
    let mut reader = BufReader::new(s.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    // Drain the headers.
    let mut h = String::new();
    while reader.read_line(&mut h)? > 2 {
        h.clear();
    }
    let ip = s.local_addr()?.ip();
    let body = format!("HOSTNAME:{host} IP:{ip}\n");
    write!(s, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
}

fn main() -> std::io::Result<()> {
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".into());
    let listener = TcpListener::bind(format!("0.0.0.0:{port}"))?;
    let host = hostname();
    eprintln!("whoami {host} listening on :{port}");
    for conn in listener.incoming() {
        let Ok(s) = conn else { continue };
        let host = host.clone();
        std::thread::spawn(move || {
            let _ = handle(s, &host);
        });
    }
    Ok(())
}
