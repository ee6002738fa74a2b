//! `ownkube-load URL REQUESTS [CONCURRENCY]`: a minimal HTTP load generator for the lab
//! benchmark (new connection per request, like `whoami`'s clients). Prints requests/s.
//! Standard library only, so it builds static and runs inside a lab node.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: ownkube-load http://HOST:PORT/ REQUESTS [CONCURRENCY]");
        std::process::exit(2);
    }
    let hostport = args[1].trim_start_matches("http://").trim_end_matches('/').to_string();
    let total: usize = args[2].parse().expect("REQUESTS is a number");
    let conc: usize = args.get(3).and_then(|c| c.parse().ok()).unwrap_or(4);
    let addr = hostport.to_socket_addrs().expect("address").next().expect("address");
    let start = Instant::now();
    let workers: Vec<_> = (0..conc)
        .map(|w| {
            let n = total / conc + usize::from(w < total % conc);
            std::thread::spawn(move || {
                let mut failed = 0;
                for _ in 0..n {
                    let ok = (|| -> std::io::Result<bool> {
                        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
                        s.set_read_timeout(Some(Duration::from_secs(3)))?;
                        s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
                        let mut body = Vec::new();
                        s.read_to_end(&mut body)?;
                        Ok(body.windows(9).any(|w| w == b"HOSTNAME:"))
                    })();
                    if !matches!(ok, Ok(true)) {
                        failed += 1;
                    }
                }
                failed
            })
        })
        .collect();
    let failed: usize = workers.into_iter().map(|w| w.join().unwrap_or(0)).sum();
    let secs = start.elapsed().as_secs_f64();
    println!("{:.0} requests/s ({total} requests, {conc} connections at a time, {failed} failed, {secs:.2} s)", total as f64 / secs);
}
