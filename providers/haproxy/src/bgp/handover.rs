//! A planned stop that drops no new connection: new handshakes to the
//! VIPs are dropped for a moment before the routes are withdrawn (as VRRP's
//! handover does, [`crate::vrrp::handover`]).

use super::{Bird, Inner};

impl Bird {
    /// Drops new handshakes to the announced VIPs and waits
    /// `handover_pause`; `true` when the pause is in place (and must be
    /// cleared).
    pub(super) async fn pause_before_withdrawal(&self, inner: &Inner) -> bool {
        let pause = self.settings.handover_pause;
        if pause.is_zero() || inner.announced == 0 {
            return false;
        }
        if let Err(e) = self.nft().pause(&inner.vips).await {
            tracing::warn!(error = %e, "pausing new connections before withdrawing failed; withdrawing at once");
            return false;
        }
        tracing::info!(
            ?pause,
            "new connections to the VIPs paused; withdrawing the routes once the accepted ones finish"
        );
        tokio::time::sleep(pause).await;
        true
    }

    fn nft(&self) -> crate::vrrp::handover::Nft {
        crate::vrrp::handover::Nft::new(self.settings.nft.clone())
    }

    /// Removes a pause (this process's, or one a replica killed while
    /// stopping left behind).
    pub(super) async fn clear_pause(&self) {
        if self.settings.handover_pause.is_zero() {
            return;
        }
        if let Err(e) = self.nft().resume().await {
            tracing::warn!(error = %e, "clearing the pause failed; new connections to this host's VIPs stay dropped");
        }
    }
}
