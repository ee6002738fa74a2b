//! Label and field selectors, as in `?labelSelector=app=web,tier!=db` and
//! `?fieldSelector=spec.nodeName=node1` (k8s.io/apimachinery's `labels` and `fields`).
//!
//! A selector is a list of requirements that must all hold. Label requirements:
//! `k=v` (or `k==v`), `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k` (exists), `!k` (absent).
//! Field requirements: `path=v`, `path==v`, `path!=v` over a few well-known fields.

use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirement {
    pub key: String,
    pub op: Op,
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector(pub Vec<Requirement>);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unable to parse requirement: {0}")]
pub struct ParseError(pub String);

/// Split at commas that are not inside parentheses.
fn split_top_level(s: &str) -> Vec<&str> {
    let (mut depth, mut start, mut out) = (0i32, 0, vec![]);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// Keys and values follow the label rules: `a/b/c` is no key, `-x` no value.
fn valid_key(k: &str) -> bool {
    crate::validation::is_label_key(k)
}

fn valid_value(v: &str) -> bool {
    crate::validation::is_label_value(v)
}

fn parse_set(rest: &str, whole: &str) -> Result<Vec<String>, ParseError> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| ParseError(format!("{whole}: expected a parenthesised set of values")))?;
    let values: Vec<String> = inner.split(',').map(|v| v.trim().to_string()).collect();
    if values == [""] {
        return Err(ParseError(format!("{whole}: for 'in', 'notin' operators, values set can't be empty")));
    }
    if values.iter().any(|v| !valid_value(v)) {
        return Err(ParseError(format!("{whole}: invalid value in set")));
    }
    Ok(values)
}

/// The selector's string form (`app=web,tier in (a,b),!canary`), as `Scale.status.selector`
/// and `kubectl get -l` write it; [`LabelSelector::parse`] reads it back.
impl std::fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|r| match &r.op {
                Op::In(v) if v.len() == 1 => format!("{}={}", r.key, v[0]),
                Op::NotIn(v) if v.len() == 1 => format!("{}!={}", r.key, v[0]),
                Op::In(v) => format!("{} in ({})", r.key, v.join(",")),
                Op::NotIn(v) => format!("{} notin ({})", r.key, v.join(",")),
                Op::Exists => r.key.clone(),
                Op::DoesNotExist => format!("!{}", r.key),
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

impl LabelSelector {
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let mut reqs = vec![];
        if s.trim().is_empty() {
            return Ok(Self(reqs));
        }
        for part in split_top_level(s) {
            let p = part.trim();
            if p.is_empty() {
                return Err(ParseError(format!("{s}: empty requirement")));
            }
            let req = if let Some(k) = p.strip_prefix('!') {
                Requirement { key: k.trim().to_string(), op: Op::DoesNotExist }
            } else if let Some((k, v)) = p.split_once("!=") {
                Requirement { key: k.trim().into(), op: Op::NotIn(vec![v.trim().into()]) }
            } else if let Some((k, v)) = p.split_once("==").or_else(|| p.split_once('=')) {
                Requirement { key: k.trim().into(), op: Op::In(vec![v.trim().into()]) }
            } else if let Some((k, rest)) = p.split_once(" notin ") {
                Requirement { key: k.trim().into(), op: Op::NotIn(parse_set(rest, p)?) }
            } else if let Some((k, rest)) = p.split_once(" in ") {
                Requirement { key: k.trim().into(), op: Op::In(parse_set(rest, p)?) }
            } else {
                Requirement { key: p.to_string(), op: Op::Exists }
            };
            if !valid_key(&req.key) {
                return Err(ParseError(format!("{p}: invalid label key {:?}", req.key)));
            }
            if let Op::In(v) | Op::NotIn(v) = &req.op {
                if v.iter().any(|v| !valid_value(v)) {
                    return Err(ParseError(format!("{p}: invalid label value")));
                }
            }
            reqs.push(req);
        }
        Ok(Self(reqs))
    }

    /// The selector a service's `spec.selector` map stands for: every pair must be equal.
    pub fn from_map(m: &BTreeMap<String, String>) -> Self {
        Self(m.iter().map(|(k, v)| Requirement { key: k.clone(), op: Op::In(vec![v.clone()]) }).collect())
    }

    /// The selector a workload's `spec.selector` (`matchLabels` and `matchExpressions`)
    /// stands for. An expression with an unknown operator or a missing value is an error.
    pub fn from_spec(spec: &crate::api::LabelSelector) -> Result<Self, ParseError> {
        let mut sel = spec.match_labels.as_ref().map(Self::from_map).unwrap_or_default();
        for (i, e) in spec.match_expressions.iter().flatten().enumerate() {
            if !valid_key(&e.key) {
                return Err(ParseError(format!("matchExpressions[{i}].key: invalid key")));
            }
            let values = e.values.clone().unwrap_or_default();
            let op = match (e.operator.as_str(), values.is_empty()) {
                ("In", false) => Op::In(values),
                ("NotIn", false) => Op::NotIn(values),
                ("Exists", true) => Op::Exists,
                ("DoesNotExist", true) => Op::DoesNotExist,
                (op, _) => return Err(ParseError(format!("matchExpressions[{i}]: operator {op:?} with {} values", values.len()))),
            };
            sel.0.push(Requirement { key: e.key.clone(), op });
        }
        Ok(sel)
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match (&r.op, labels.get(&r.key)) {
            (Op::In(vs), Some(v)) => vs.contains(v),
            (Op::In(_), None) => false,
            (Op::NotIn(vs), Some(v)) => !vs.contains(v),
            (Op::NotIn(_), None) => true,
            (Op::Exists, v) => v.is_some(),
            (Op::DoesNotExist, v) => v.is_none(),
        })
    }
}

/// A parsed field selector: `(field, wanted value, equal?)` triples.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector(pub Vec<(String, String, bool)>);

impl FieldSelector {
    /// Parse, accepting only the fields in `supported`.
    pub fn parse(s: &str, supported: &[&str]) -> Result<Self, ParseError> {
        let mut out = vec![];
        if s.trim().is_empty() {
            return Ok(Self(out));
        }
        for part in s.split(',') {
            let (field, value, eq) = if let Some((f, v)) = part.split_once("!=") {
                (f, v, false)
            } else if let Some((f, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                (f, v, true)
            } else {
                return Err(ParseError(format!("invalid selector: '{part}'; can't understand '{part}'")));
            };
            let field = field.trim();
            if !supported.contains(&field) {
                return Err(ParseError(format!("field label not supported: {field}")));
            }
            out.push((field.to_string(), value.trim().to_string(), eq));
        }
        Ok(Self(out))
    }

    /// `get` returns an object's value for a field path (empty when unset).
    pub fn matches(&self, get: impl Fn(&str) -> String) -> bool {
        self.0.iter().all(|(f, v, eq)| (get(f) == *v) == *eq)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_selector_prints_as_it_parses() {
        for text in ["app=web", "app=web,tier in (a,b),!canary,track,env notin (x,y),x!=y"] {
            assert_eq!(LabelSelector::parse(text).unwrap().to_string(), text);
        }
    }

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn every_operator() {
        let l = labels(&[("app", "web"), ("tier", "front"), ("env", "prod")]);
        let yes = [
            "",
            "app=web",
            "app==web",
            "tier!=db",
            "env in (prod, staging)",
            "env notin (dev)",
            "app",
            "!missing",
            "app=web,tier in (front),!missing",
            "missing!=x",
            "missing notin (a)",
        ];
        for s in yes {
            assert!(LabelSelector::parse(s).unwrap().matches(&l), "{s} should match");
        }
        let no = ["app=db", "tier!=front", "env in (dev)", "env notin (prod)", "missing", "!app", "app=web,tier=db", "missing in (a)"];
        for s in no {
            assert!(!LabelSelector::parse(s).unwrap().matches(&l), "{s} should not match");
        }
    }

    #[test]
    fn bad_selectors_are_errors() {
        for s in ["app=web,", "a b=c", "env in prod", "app=we b", "x in (a,b c)"] {
            assert!(LabelSelector::parse(s).is_err(), "{s} should be rejected");
        }
    }

    #[test]
    fn field_selectors() {
        let f = FieldSelector::parse("spec.nodeName=node1,status.phase!=Failed", &["spec.nodeName", "status.phase"]).unwrap();
        assert!(f.matches(|p| if p == "spec.nodeName" { "node1".into() } else { "Running".into() }));
        assert!(!f.matches(|p| if p == "spec.nodeName" { "node2".into() } else { "Running".into() }));
        assert!(FieldSelector::parse("spec.foo=x", &["spec.nodeName"]).is_err());
        assert!(FieldSelector::parse("nonsense", &["spec.nodeName"]).is_err());
    }
}
