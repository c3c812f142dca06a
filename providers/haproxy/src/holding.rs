//! Holding the VIPs: which replica puts them on its interface (the leader
//! without VRRP or BGP), handing them over on a planned stop, and giving
//! back those no Service uses any more.

use std::net::IpAddr;

use ferrylb_model::ProviderError;

use crate::render::Entry;
use crate::{HaproxyProvider, vrrp};

impl HaproxyProvider {
    /// Every VIP some Service holds.
    pub(crate) fn held_vips(&self) -> std::collections::BTreeSet<IpAddr> {
        self.entries
            .lock()
            .expect("entries lock")
            .values()
            .flat_map(|e| e.vips.iter().copied())
            .collect()
    }

    /// Whether this replica puts VIPs on `vip_interface`: the leader does,
    /// a follower (serving the same configuration) does not. Without VRRP
    /// only one host may answer for a VIP.
    pub fn set_holding(&self, holding: bool) {
        self.holding
            .store(holding, std::sync::atomic::Ordering::SeqCst);
    }

    /// Stops holding VIPs at once (a leader that lost its Lease): takes
    /// every VIP off `vip_interface`, so that the next leader is the only
    /// host answering for them. With VRRP or BGP the VIPs are theirs, and
    /// nothing changes here.
    pub async fn stop_holding(&self) {
        self.set_holding(false);
        if !self.binds_vips() {
            return;
        }
        for ip in self.held_vips() {
            if let Err(e) = self.vips.remove(ip).await {
                tracing::warn!(%ip, error = %e, "removing a VIP from the interface failed");
            }
        }
    }

    /// Whether this replica puts VIPs on an interface itself (not VRRP,
    /// not BGP).
    pub(crate) fn binds_vips(&self) -> bool {
        self.settings.vip_interface.is_some() && self.keepalived.is_none() && self.bird.is_none()
    }

    /// A planned stop of the replica holding the VIPs on `vip_interface`:
    /// drops new TCP handshakes to them for `handover_pause`, so that the
    /// connections HAProxy accepted finish while their packets still reach
    /// this host, then takes them off (clients send a dropped SYN again a
    /// second later, to the next holder). Holds no VIP afterwards.
    pub async fn hand_over(&self) {
        self.set_holding(false);
        if !self.binds_vips() {
            return;
        }
        let vips = self.held_vips();
        let pause = self.settings.handover_pause;
        let nft = vrrp::handover::Nft::new(self.settings.nft_binary.clone());
        let paused = !pause.is_zero()
            && !vips.is_empty()
            && match nft.pause(&vips).await {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "pausing new connections to the VIPs failed; handing them over at once");
                    false
                }
            };
        if paused {
            tracing::info!(
                ?pause,
                vips = vips.len(),
                "new connections to the VIPs paused; handing them over once the accepted ones finish"
            );
            tokio::time::sleep(pause).await;
        }
        self.stop_holding().await;
        if paused {
            self.clear_handover_pause().await;
        }
    }

    /// Starts holding VIPs (a follower that became the leader): puts every
    /// VIP its HAProxy already serves (the mirror loaded them) on `vip_interface` at
    /// once and announces it, rather than when each Service is next
    /// reconciled, so a handover's gap is a Lease round trip.
    pub async fn start_holding(&self) {
        self.set_holding(true);
        if !self.binds_vips() {
            return;
        }
        // Only what HAProxy runs: a VIP is never put up before HAProxy
        // listens on it.
        let serving: std::collections::BTreeSet<IpAddr> = self
            .loaded
            .lock()
            .await
            .entries
            .iter()
            .flat_map(|e| e.values())
            .flat_map(|e| e.vips.iter().copied())
            .collect();
        for ip in serving {
            match self.vips.add(ip).await {
                Ok(true) => self.vips.announce(ip),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(%ip, error = %e, "putting a VIP on the interface failed; the next reconcile tries again")
                }
            }
        }
    }

    /// Removes a handover pause a replica killed during its handover left
    /// on this host (it would drop handshakes to the VIPs for good).
    pub async fn clear_handover_pause(&self) {
        if !self.binds_vips() || self.settings.handover_pause.is_zero() {
            return;
        }
        let nft = vrrp::handover::Nft::new(self.settings.nft_binary.clone());
        if let Err(e) = nft.resume().await {
            tracing::warn!(error = %e, "clearing the handover pause failed; new connections to the VIPs may be dropped");
        }
    }

    /// Hands the VIPs over (stops keepalived, withdraws the BGP routes, or
    /// takes them off `vip_interface`), so the replica that takes over is the only host
    /// answering for them, then stops a managed HAProxy: in this order, this
    /// host never answers for a VIP nobody listens on.
    pub async fn shutdown(&self) {
        if let Some(f) = self.flusher.get() {
            f.abort();
        }
        if let Some(k) = &self.keepalived {
            k.stop().await;
        }
        if let Some(b) = &self.bird {
            b.stop().await;
        }
        for ip in self.held_vips() {
            if let Err(e) = self.vips.remove(ip).await {
                tracing::warn!(%ip, error = %e, "removing a VIP from the interface on shutdown failed");
            }
        }
        self.process.stop().await;
    }

    /// Gives back the VIP of a removal `entry` overtook (its Service lost
    /// its TCP ports and got them back before the removal was loaded),
    /// unless it is in use.
    pub(crate) async fn release_overtaken(&self, entry: &Entry) -> Result<(), ProviderError> {
        let overtaken = self
            .deleting
            .lock()
            .expect("deleting lock")
            .remove(&entry.spec.lb);
        for old in overtaken.into_iter().flatten() {
            if !entry.vips.contains(&old) && !self.vip_still_used(old) {
                self.vips.remove(old).await?;
            }
        }
        Ok(())
    }

    pub(crate) fn vip_still_used(&self, ip: IpAddr) -> bool {
        self.entries
            .lock()
            .expect("entries lock")
            .values()
            .any(|e| e.vips.contains(&ip))
    }
}
