//! Requests and limits become cgroup settings in the OCI spec (containerd and runc write
//! them to cgroup v1 or v2): the cpu request is a weight (`shares`: 1024 per cpu, at least
//! 2), the cpu limit a quota per 100 ms period, the memory limit a hard cap (beyond it the
//! kernel OOM-kills the container: `OOMKilled`). The QoS class says how alike they are:
//! `Guaranteed` (every container's requests equal its limits), `Burstable` (some set),
//! `BestEffort` (none).
//!
//! Upstream: pkg/kubelet/kuberuntime/kuberuntime_container_linux.go, pkg/kubelet/cm/helpers_linux.go,
//! pkg/apis/core/v1/helper/qos/qos.go

use crate::api::{Container, Pod};
use serde_json::{json, Value};

/// A quantity (`250m`, `2`, `1.5`, `64Mi`, `1G`, `1e3`) as a number of thousandths.
fn thousandths(q: &str) -> Result<i128, String> {
    let q = q.trim();
    let bad = || format!("invalid quantity {q:?}");
    let split = q.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-')).unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.is_empty() && frac.is_empty() {
        return Err(bad());
    }
    let frac3: String = format!("{frac:0<3}").chars().take(3).collect();
    let rest_up = frac.len() > 3 && frac[3..].chars().any(|c| c != '0');
    let base = int.parse::<i128>().unwrap_or(0) * 1000 + frac3.parse::<i128>().map_err(|_| bad())? + i128::from(rest_up);
    let mul = |m: i128| base * m;
    Ok(match suffix {
        "" => base,
        "m" => (base + 999) / 1000,
        "k" => mul(1_000),
        "M" => mul(1_000_000),
        "G" => mul(1_000_000_000),
        "T" => mul(1_000_000_000_000),
        "Ki" => mul(1 << 10),
        "Mi" => mul(1 << 20),
        "Gi" => mul(1 << 30),
        "Ti" => mul(1 << 40),
        s if s.starts_with(['e', 'E']) => mul(10i128.pow(s[1..].parse::<u32>().map_err(|_| bad())?)),
        _ => return Err(bad()),
    })
}

/// A cpu quantity in millicpu (`250m` → 250, `1` → 1000), rounded up.
pub fn cpu_milli(q: &str) -> Result<i64, String> {
    Ok(thousandths(q)? as i64)
}

/// A memory quantity in bytes (`64Mi` → 67108864), rounded up.
pub fn memory_bytes(q: &str) -> Result<i64, String> {
    Ok(((thousandths(q)? + 999) / 1000) as i64)
}

/// The cgroup cpu weight of a request, in shares: 1024 per cpu, between 2 and 262144.
pub fn cpu_shares(milli: i64) -> u64 {
    if milli <= 0 {
        return 2;
    }
    ((milli * 1024 / 1000) as u64).clamp(2, 262_144)
}

pub const CPU_PERIOD: i64 = 100_000;

/// The CFS quota (µs per 100 ms period) of a limit, at least 1 ms.
pub fn cpu_quota(milli: i64) -> i64 {
    (milli * CPU_PERIOD / 1000).max(1000)
}

fn get(c: &Container, which: &str, res: &str) -> Option<String> {
    let r = c.resources.as_ref()?;
    let m = if which == "limits" { r.limits.as_ref() } else { r.requests.as_ref() };
    m.and_then(|m| m.get(res)).map(|q| q.0.clone())
}

/// `linux.resources` of the OCI spec for one container.
pub fn linux_resources(c: &Container) -> Result<Value, String> {
    let req = get(c, "requests", "cpu").or_else(|| get(c, "limits", "cpu")).map(|q| cpu_milli(&q)).transpose()?.unwrap_or(0);
    let mut cpu = json!({"shares": cpu_shares(req), "period": CPU_PERIOD});
    if let Some(l) = get(c, "limits", "cpu").map(|q| cpu_milli(&q)).transpose()? {
        cpu["quota"] = json!(cpu_quota(l));
    }
    let mut r = json!({"cpu": cpu});
    if let Some(m) = get(c, "limits", "memory").map(|q| memory_bytes(&q)).transpose()? {
        r["memory"] = json!({"limit": m});
    }
    Ok(r)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl QosClass {
    pub fn as_str(self) -> &'static str {
        match self {
            QosClass::Guaranteed => "Guaranteed",
            QosClass::Burstable => "Burstable",
            QosClass::BestEffort => "BestEffort",
        }
    }
}

/// The QoS class of a pod, from the cpu and memory of all its containers.
pub fn qos_class(pod: &Pod) -> QosClass {
    let Some(spec) = &pod.spec else { return QosClass::BestEffort };
    let all = spec.containers.iter().chain(spec.init_containers.iter().flatten());
    let (mut any, mut guaranteed) = (false, true);
    for c in all {
        for res in ["cpu", "memory"] {
            let (req, lim) = (get(c, "requests", res), get(c, "limits", res));
            let nonzero = |q: &Option<String>| q.as_deref().and_then(|q| thousandths(q).ok()).is_some_and(|v| v > 0);
            any |= nonzero(&req) || nonzero(&lim);
            // Requests left out default to the limits (as the apiserver defaults them).
            let req = req.or_else(|| lim.clone());
            let same = match (&req, &lim) {
                (Some(r), Some(l)) => thousandths(r).ok() == thousandths(l).ok(),
                _ => false,
            };
            guaranteed &= nonzero(&lim) && same;
        }
    }
    match (any, guaranteed) {
        (false, _) => QosClass::BestEffort,
        (true, true) => QosClass::Guaranteed,
        (true, false) => QosClass::Burstable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn quantities() {
        assert_eq!(cpu_milli("250m").unwrap(), 250);
        assert_eq!(cpu_milli("1").unwrap(), 1000);
        assert_eq!(cpu_milli("0.5").unwrap(), 500);
        assert_eq!(memory_bytes("64Mi").unwrap(), 64 << 20);
        assert_eq!(memory_bytes("1G").unwrap(), 1_000_000_000);
        assert_eq!(memory_bytes("1e3").unwrap(), 1000);
        assert_eq!(memory_bytes("128974848").unwrap(), 128974848);
        assert!(cpu_milli("lots").is_err());
        assert_eq!((cpu_shares(100), cpu_shares(0), cpu_quota(250)), (102, 2, 25000));
    }

    #[test]
    fn cgroups_and_qos() {
        let pod = |res: serde_json::Value| -> Pod {
            serde_json::from_value(json!({"spec": {"containers": [{"name": "c", "image": "x", "resources": res}]}})).unwrap()
        };
        let limited = pod(json!({"limits": {"cpu": "500m", "memory": "32Mi"}}));
        assert_eq!(qos_class(&limited), QosClass::Guaranteed, "requests default to limits");
        let r = linux_resources(&limited.spec.unwrap().containers[0]).unwrap();
        assert_eq!(r, json!({"cpu": {"shares": 512, "period": 100000, "quota": 50000}, "memory": {"limit": 32 << 20}}));
        assert_eq!(qos_class(&pod(json!({"requests": {"cpu": "100m"}}))), QosClass::Burstable);
        assert_eq!(qos_class(&pod(json!({}))), QosClass::BestEffort);
    }
}
