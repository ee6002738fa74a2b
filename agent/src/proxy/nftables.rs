//! Running `nft`: each transaction of a [`pkg::proxy::nftables::Plan`] is fed to
//! `nft -f -` (one file, one atomic transaction), and `nft list table ip ownkube` tells a
//! full sync which chains exist. Argument vectors only, through the same [`Runner`] as
//! iptables (so tests aim it at a network namespace).
//!
//! Upstream: sigs.k8s.io/knftables (exec.go)

use super::iptables::{IptablesError, Runner};

impl Runner {
    /// Apply one transaction.
    pub async fn nft_apply(&self, text: &str) -> Result<(), IptablesError> {
        self.pipe("nft", &["-f", "-"], text).await
    }

    /// The chains and sets of ownkube's table now (none if the table does not exist).
    pub async fn nft_objects(&self) -> Vec<String> {
        match self.output("nft", &["list", "table", "ip", "ownkube"]).await {
            Ok(listing) => pkg::proxy::nftables::objects(&listing),
            Err(_) => vec![],
        }
    }

    /// Remove ownkube's table (what the iptables mode does at start, so that a node
    /// switched from nftables keeps no stale rules).
    pub async fn nft_delete_table(&self) {
        let _ = self.run("nft", &["delete", "table", "ip", "ownkube"]).await;
    }
}
