//! The tables' records as DNS records: class IN, one TTL for all (5 s, as CoreDNS's
//! kubernetes plugin defaults to, so a changed Service is seen within seconds), and the
//! SOA that negative answers carry in their authority section (its minimum is how long a
//! resolver may cache the `NXDOMAIN`).
//!
//! Upstream: coredns/coredns plugin/kubernetes (kubernetes.go: Records, Serial, MinTTL)

use hickory_server::proto::rr::rdata::{A, PTR, SOA, SRV};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use pkg::dns::{QType, Rr};

/// The record type asked, as the tables know them.
pub fn qtype(t: RecordType) -> QType {
    match t {
        RecordType::A => QType::A,
        RecordType::SRV => QType::Srv,
        RecordType::PTR => QType::Ptr,
        RecordType::ANY => QType::Any,
        _ => QType::Other,
    }
}

fn name(s: &str) -> Option<Name> {
    Name::from_ascii(format!("{}.", s.trim_end_matches('.'))).ok()
}

/// One record of the tables on the wire (`None` for a name DNS cannot carry).
pub fn record(rr: &Rr, ttl: u32) -> Option<Record> {
    Some(match rr {
        Rr::A { name: n, ip } => Record::from_rdata(name(n)?, ttl, RData::A(A(*ip))),
        Rr::Srv { name: n, priority, weight, port, target } => {
            Record::from_rdata(name(n)?, ttl, RData::SRV(SRV::new(*priority, *weight, *port, name(target)?)))
        }
        Rr::Ptr { name: n, target } => Record::from_rdata(name(n)?, ttl, RData::PTR(PTR(name(target)?))),
    })
}

/// The zone's SOA (`ns.dns.<domain>`, `hostmaster.<domain>`), serial `serial`.
pub fn soa(domain: &str, serial: u32, ttl: u32) -> Record {
    let d = domain.trim_matches('.');
    let n = |s: String| name(&s).unwrap_or_else(Name::root);
    let rdata = SOA::new(n(format!("ns.dns.{d}")), n(format!("hostmaster.{d}")), serial, 7200, 1800, 86400, ttl);
    Record::from_rdata(n(d.to_string()), ttl, RData::SOA(rdata))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_carry_the_ttl_and_a_final_dot() {
        let r = record(&Rr::A { name: "web.default.svc.cluster.local".into(), ip: "10.96.0.5".parse().unwrap() }, 5).unwrap();
        assert_eq!(r.name.to_string(), "web.default.svc.cluster.local.");
        assert_eq!(r.ttl, 5);
        assert_eq!(qtype(RecordType::AAAA), QType::Other);
        assert_eq!(soa("cluster.local", 3, 5).name.to_string(), "cluster.local.");
    }
}
