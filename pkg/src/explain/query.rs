//! The question as a URL asks it: `?src=10.244.1.5&dst=10.96.0.10&port=80&proto=tcp`
//! (`sport` optional). Every bad parameter is named in one `400 BadRequest` Status, one
//! cause per field, as the apiserver reports invalid objects.
//!
//! Upstream: none (ownkube's own debug endpoint); the Status shape is
//! k8s.io/apimachinery/pkg/api/errors.

use super::{Packet, PROTOCOLS};
use crate::api::status::{CauseExt, StatusExt};
use crate::api::{Status, StatusCause};
use std::collections::HashMap;

/// Read a [`Packet`] from query parameters.
pub fn packet(q: &HashMap<String, String>) -> Result<Packet, Box<Status>> {
    let mut causes = vec![];
    let mut addr = |field: &str| match q.get(field).map(String::as_str) {
        None | Some("") => {
            causes.push(StatusCause::required(field));
            None
        }
        Some(v) => v.parse().map_err(|_| causes.push(StatusCause::invalid(field, v, "must be an IPv4 address"))).ok(),
    };
    let (src, dst) = (addr("src"), addr("dst"));
    let port = port(q, "port", true, &mut causes);
    let sport = port_opt(q, "sport", &mut causes);
    let proto = q.get("proto").map(|s| s.to_lowercase()).unwrap_or_else(|| "tcp".into());
    if !PROTOCOLS.contains(&proto.as_str()) {
        causes.push(StatusCause::not_supported("proto", &proto, &PROTOCOLS));
    }
    match (src, dst, port) {
        (Some(src), Some(dst), Some(port)) if causes.is_empty() => Ok(Packet { proto, src, sport, dst, port }),
        _ => {
            let msgs: Vec<String> = causes.iter().map(|c| format!("{}: {}", c.field(), c.message.as_deref().unwrap_or(""))).collect();
            let mut s = Status::failure(400, "BadRequest", format!("cannot explain this packet: {}", msgs.join(", ")));
            s.details.get_or_insert_with(Default::default).causes = Some(causes);
            Err(Box::new(s))
        }
    }
}

fn port(q: &HashMap<String, String>, field: &str, required: bool, causes: &mut Vec<StatusCause>) -> Option<u16> {
    match q.get(field).map(String::as_str) {
        None | Some("") if required => {
            causes.push(StatusCause::required(field));
            None
        }
        None | Some("") => None,
        Some(v) => match v.parse::<u16>() {
            Ok(p) if p > 0 => Some(p),
            _ => {
                causes.push(StatusCause::invalid(field, v, "must be a port number between 1 and 65535"));
                None
            }
        },
    }
}

fn port_opt(q: &HashMap<String, String>, field: &str, causes: &mut Vec<StatusCause>) -> Option<u16> {
    port(q, field, false, causes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> HashMap<String, String> {
        s.split('&').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn reads_a_packet_and_names_every_bad_field() {
        let p = packet(&q("src=10.244.1.5&dst=10.96.0.10&port=80")).unwrap();
        assert_eq!((p.proto.as_str(), p.port, p.sport), ("tcp", 80, None));
        let e = packet(&q("src=10.244.1.5;rm&port=0&proto=icmp&sport=x")).unwrap_err();
        assert_eq!((e.code(), e.reason()), (400, "BadRequest"));
        let fields: Vec<&str> = e.details.as_ref().unwrap().causes.as_ref().unwrap().iter().map(|c| c.field()).collect();
        assert_eq!(fields, ["src", "dst", "port", "sport", "proto"]);
        assert!(e.message().contains("src: Invalid value: 10.244.1.5;rm: must be an IPv4 address"), "{}", e.message());
    }
}
