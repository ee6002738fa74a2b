//! The protobuf wire format, just enough to read: varints, fixed64 and length-delimited
//! fields, and the apimachinery types whose JSON is not their message's shape.
//!
//! Upstream: https://protobuf.dev/programming-guides/encoding/

use super::{ProtoError, Ty};
use serde_json::{json, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireType {
    Varint = 0,
    Fixed64 = 1,
    Len = 2,
    Fixed32 = 5,
}

/// A cursor over a message's bytes; every read checks the bounds.
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn varint(&mut self) -> Result<u64, ProtoError> {
        let mut v = 0u64;
        for i in 0..10 {
            let (&b, rest) = self.buf.split_first().ok_or(ProtoError::Malformed("truncated varint"))?;
            self.buf = rest;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(ProtoError::Malformed("varint longer than 10 bytes"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtoError> {
        if n > self.buf.len() {
            return Err(ProtoError::Malformed("field runs past the end of its message"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    pub fn fixed64(&mut self) -> Result<u64, ProtoError> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().map_err(|_| ProtoError::Malformed("fixed64"))?))
    }

    pub fn bytes(&mut self) -> Result<&'a [u8], ProtoError> {
        let n = usize::try_from(self.varint()?).map_err(|_| ProtoError::Malformed("length too large"))?;
        self.take(n)
    }

    /// The next field's number and wire type, or `None` at the end.
    pub fn key(&mut self) -> Result<Option<(u32, WireType)>, ProtoError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let k = self.varint()?;
        let wt = match k & 7 {
            0 => WireType::Varint,
            1 => WireType::Fixed64,
            2 => WireType::Len,
            5 => WireType::Fixed32,
            _ => return Err(ProtoError::Malformed("unsupported wire type (groups are not used by Kubernetes)")),
        };
        let n = u32::try_from(k >> 3).map_err(|_| ProtoError::Malformed("field number too large"))?;
        if n == 0 {
            return Err(ProtoError::IllegalTag(k & 7));
        }
        Ok(Some((n, wt)))
    }

    pub fn skip(&mut self, wt: WireType) -> Result<(), ProtoError> {
        match wt {
            WireType::Varint => self.varint().map(drop),
            WireType::Fixed64 => self.take(8).map(drop),
            WireType::Fixed32 => self.take(4).map(drop),
            WireType::Len => self.bytes().map(drop),
        }
    }
}

/// A small message's varint fields and length-delimited fields, by number.
type Fields<'a> = (Vec<(u32, u64)>, Vec<(u32, &'a [u8])>);

/// Read the numbered fields of a small message.
fn fields(b: &[u8]) -> Result<Fields<'_>, ProtoError> {
    let (mut ints, mut lens) = (vec![], vec![]);
    let mut r = Reader::new(b);
    while let Some((n, wt)) = r.key()? {
        match wt {
            WireType::Varint => ints.push((n, r.varint()?)),
            WireType::Len => lens.push((n, r.bytes()?)),
            other => r.skip(other)?,
        }
    }
    Ok((ints, lens))
}

fn text(b: &[u8]) -> Result<String, ProtoError> {
    String::from_utf8(b.to_vec()).map_err(|_| ProtoError::Malformed("string is not UTF-8"))
}

/// The JSON of Time, MicroTime, Quantity, IntOrString, RawExtension and Duration.
pub fn special(b: &[u8], ty: &Ty) -> Result<Value, ProtoError> {
    let (ints, lens) = fields(b)?;
    let int = |n: u32| ints.iter().find(|(f, _)| *f == n).map_or(0, |(_, v)| *v);
    let len = |n: u32| lens.iter().find(|(f, _)| *f == n).map(|(_, v)| *v);
    Ok(match ty {
        Ty::Time | Ty::MicroTime => {
            let t = chrono::DateTime::from_timestamp(int(1) as i64, int(2) as u32).ok_or(ProtoError::Malformed("time out of range"))?;
            let precision = if matches!(ty, Ty::Time) { chrono::SecondsFormat::Secs } else { chrono::SecondsFormat::Micros };
            json!(t.to_rfc3339_opts(precision, true))
        }
        Ty::Quantity => json!(text(len(1).unwrap_or_default())?),
        Ty::IntOrString if int(1) == 1 => json!(text(len(3).unwrap_or_default())?),
        Ty::IntOrString => json!(int(2) as i32),
        Ty::RawJson => match len(1) {
            Some(raw) if !raw.is_empty() => {
                serde_json::from_slice(raw).map_err(|_| ProtoError::Malformed("embedded object is not JSON"))?
            }
            _ => Value::Null,
        },
        Ty::Duration => json!(format!("{}s", int(1) as i64 as f64 / 1e9)),
        _ => return Err(ProtoError::Malformed("not a special type")),
    })
}
