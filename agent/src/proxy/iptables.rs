//! Running `iptables`, `iptables-save`, `iptables-restore` and `conntrack`, always as
//! argument vectors (never a shell), optionally prefixed (`ip netns exec NAME`) so tests
//! can aim them at a throwaway network namespace.

use std::process::Stdio;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum IptablesError {
    #[error("{cmd} failed ({code:?}): {stderr}")]
    Failed { cmd: String, code: Option<i32>, stderr: String },
    #[error("could not run {0}: {1}")]
    Spawn(String, std::io::Error),
}

/// Where the commands run: this network namespace, or another one through a prefix; or
/// nowhere (a hollow node, [`Runner::hollow`]).
#[derive(Clone, Debug, Default)]
pub struct Runner {
    pub prefix: Vec<String>,
    /// Run nothing: every command "succeeds" with no output, so a hollow proxy renders
    /// its rules and applies none, as kubemark's fake iptables does.
    pub hollow: bool,
}

impl Runner {
    /// Commands run inside the named network namespace (`ip netns exec NAME ...`).
    pub fn in_netns(name: &str) -> Runner {
        Runner { prefix: vec!["ip".into(), "netns".into(), "exec".into(), name.into()], hollow: false }
    }

    /// A runner that runs nothing (its `hollow` field).
    pub fn hollow() -> Runner {
        Runner { prefix: vec![], hollow: true }
    }

    fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut argv: Vec<&str> = self.prefix.iter().map(String::as_str).collect();
        argv.push(program);
        argv.extend_from_slice(args);
        let mut c = Command::new(argv[0]);
        c.args(&argv[1..]).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        c
    }

    /// Run a command; `Ok(false)` when it exited 1 (iptables' "no such rule"), error otherwise.
    pub async fn run(&self, program: &str, args: &[&str]) -> Result<bool, IptablesError> {
        if self.hollow {
            return Ok(true);
        }
        let out = self.command(program, args).output().await.map_err(|e| IptablesError::Spawn(program.into(), e))?;
        match out.status.code() {
            Some(0) => Ok(true),
            Some(1) => Ok(false),
            code => Err(IptablesError::Failed {
                cmd: format!("{program} {}", args.join(" ")),
                code,
                stderr: String::from_utf8_lossy(&out.stderr).into(),
            }),
        }
    }

    /// Make sure a chain exists in a table.
    pub async fn ensure_chain(&self, table: &str, chain: &str) -> Result<(), IptablesError> {
        if !self.run("iptables", &["-w", "-t", table, "-S", chain]).await? {
            self.run("iptables", &["-w", "-t", table, "-N", chain]).await?;
        }
        Ok(())
    }

    /// Make sure a rule exists (once) at the top of a chain: `-C`, then `-I` if missing.
    pub async fn ensure_rule(&self, table: &str, chain: &str, rule: &[String]) -> Result<(), IptablesError> {
        let mut check = vec!["-w", "-t", table, "-C", chain];
        check.extend(rule.iter().map(String::as_str));
        if !self.run("iptables", &check).await? {
            check[3] = "-I";
            if !self.run("iptables", &check).await? {
                return Err(IptablesError::Failed { cmd: format!("iptables {}", check.join(" ")), code: Some(1), stderr: String::new() });
            }
        }
        Ok(())
    }

    /// `iptables-save -t TABLE`.
    pub async fn save(&self, table: &str) -> Result<String, IptablesError> {
        self.output("iptables-save", &["-t", table]).await
    }

    /// Feed a ruleset to `iptables-restore --noflush`: each table's part is committed
    /// atomically, and chains the text does not name are left as they are.
    pub async fn restore(&self, text: &str) -> Result<(), IptablesError> {
        self.pipe("iptables-restore", &["-w", "--noflush"], text).await
    }

    /// Run a program with `text` on its standard input; an error unless it exits 0.
    pub async fn pipe(&self, program: &str, args: &[&str], text: &str) -> Result<(), IptablesError> {
        if self.hollow {
            return Ok(());
        }
        let spawn_err = |e| IptablesError::Spawn(program.into(), e);
        let mut child = self.command(program, args).stdin(Stdio::piped()).spawn().map_err(spawn_err)?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin.write_all(text.as_bytes()).await.map_err(spawn_err)?;
        drop(stdin);
        let out = child.wait_with_output().await.map_err(spawn_err)?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr).into();
            return Err(IptablesError::Failed { cmd: format!("{program} {}", args.join(" ")), code: out.status.code(), stderr });
        }
        Ok(())
    }

    /// Run a program and return its standard output; an error unless it exits 0.
    pub async fn output(&self, program: &str, args: &[&str]) -> Result<String, IptablesError> {
        if self.hollow {
            return Ok(String::new());
        }
        let out = self.command(program, args).output().await.map_err(|e| IptablesError::Spawn(program.into(), e))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr).into();
            return Err(IptablesError::Failed { cmd: format!("{program} {}", args.join(" ")), code: out.status.code(), stderr });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Remove what the iptables mode left (what the nftables mode does at start, so that
    /// a node switched from iptables is neither proxied twice nor left with stale rules):
    /// per table, one atomic restore of [`pkg::proxy::iptables::cleanup`].
    pub async fn remove_iptables_rules(&self) -> Result<(), IptablesError> {
        for table in ["nat", "filter"] {
            if let Some(text) = pkg::proxy::iptables::cleanup(table, &self.save(table).await?) {
                self.restore(&text).await?;
            }
        }
        Ok(())
    }
}

/// Chain names declared in an `iptables-save` listing.
pub fn chains(save: &str) -> Vec<String> {
    save.lines().filter_map(|l| l.strip_prefix(':')).filter_map(|l| l.split(' ').next()).map(String::from).collect()
}
