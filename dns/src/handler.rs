//! One question in, one answer out. For a name in the cluster domain (or a reverse name
//! in the cluster's ranges) the answer comes from the tables: the records, an empty
//! answer (`NODATA`) or `NXDOMAIN`, both of those with the zone's SOA so resolvers may
//! cache them, and the `AA` bit set (this server *is* the authority). Any other name is
//! forwarded upstream, or `REFUSED` at once when there is no upstream. A message without
//! exactly one question is `FORMERR`.
//!
//! hickory-server does the wire work: parsing, encoding, and for UDP truncating an
//! answer to what the client can take (512 bytes, or its EDNS size) with the `TC` bit
//! set, so the client asks again over TCP.
//!
//! Upstream: coredns/coredns plugin/kubernetes (handler.go), plugin/forward

use crate::forward::Upstream;
use crate::watch::Shared;
use crate::zone;
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Edns, Header, HeaderCounts, Metadata, ResponseCode};
use hickory_server::proto::rr::{DNSClass, Record};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use pkg::dns::Answer;

/// The server's request handler.
pub struct Handler {
    pub tables: Shared,
    pub upstream: Option<Upstream>,
    pub ttl: u32,
}

/// What the answer is made of, once the tables (or the upstream) have spoken.
struct Reply {
    code: ResponseCode,
    authoritative: bool,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    additionals: Vec<Record>,
}

impl Reply {
    fn code(code: ResponseCode) -> Reply {
        Reply { code, authoritative: false, answers: vec![], authorities: vec![], additionals: vec![] }
    }
}

impl Handler {
    /// The answer to the request's one question.
    async fn reply(&self, request: &Request) -> Reply {
        let Ok(info) = request.request_info() else { return Reply::code(ResponseCode::FormErr) };
        let (name, qtype) = (info.query.name().to_string(), info.query.query_type());
        if info.query.query_class() != DNSClass::IN {
            return Reply::code(ResponseCode::Refused);
        }
        let (answer, soa) = {
            let t = self.tables.read().expect("tables lock");
            (t.records.answer(&name, zone::qtype(qtype)), t.soa.clone())
        };
        let local = |code, answers: Vec<Record>, soa: Option<Record>| Reply {
            code,
            authoritative: true,
            answers,
            authorities: soa.into_iter().collect(),
            additionals: vec![],
        };
        match answer {
            Answer::Records(rrs) => local(ResponseCode::NoError, rrs.iter().filter_map(|r| zone::record(r, self.ttl)).collect(), None),
            Answer::NoData => local(ResponseCode::NoError, vec![], soa),
            Answer::NxDomain => local(ResponseCode::NXDomain, vec![], soa),
            Answer::NotOurs => self.forward(request).await,
        }
    }

    /// Ask the upstream; `REFUSED` without one, `SERVFAIL` when it fails.
    async fn forward(&self, request: &Request) -> Reply {
        let Some(up) = &self.upstream else { return Reply::code(ResponseCode::Refused) };
        match up.exchange(request.as_slice(), request.metadata.id).await {
            Ok(m) => Reply {
                code: m.metadata.response_code,
                authoritative: false,
                answers: m.answers,
                authorities: m.authorities,
                additionals: m.additionals,
            },
            Err(e) => {
                tracing::debug!(error = %e, "forwarding failed");
                Reply::code(ResponseCode::ServFail)
            }
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(&self, request: &Request, mut response: R) -> ResponseInfo {
        let reply = self.reply(request).await;
        // Answer in EDNS when asked in it, offering what the client offered (at least 512).
        let edns = request.edns.as_ref().map(|e| {
            let mut r = Edns::new();
            r.set_max_payload(e.max_payload().max(512));
            r
        });
        let mut meta = Metadata::response_from_request(&request.metadata);
        meta.authoritative = reply.authoritative;
        meta.recursion_available = self.upstream.is_some();
        meta.response_code = reply.code;
        let builder = MessageResponseBuilder::new(&request.queries, edns.as_ref());
        let msg = builder.build(meta, reply.answers.iter(), reply.authorities.iter(), [], reply.additionals.iter());
        match response.send_response(msg).await {
            Ok(info) => info,
            Err(e) => {
                tracing::warn!(error = %e, "could not send an answer");
                let mut m = Metadata::response_from_request(&request.metadata);
                m.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header { metadata: m, counts: HeaderCounts::default() })
            }
        }
    }
}
