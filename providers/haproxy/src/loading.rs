//! Loading a change with the others (see `apply`), putting back what a
//! refused load did not serve, and confirming what HAProxy really serves.

use ferrylb_model::{LoadBalancerRef, LoadBalancerStatus, ProviderError};

use crate::render::Entry;
use crate::status::{pending, status_of};
use crate::{HaproxyProvider, served};

impl HaproxyProvider {
    /// Brings HAProxy to the current state: render, and if it differs from
    /// what is loaded, install and reload. Callers queued behind a reload
    /// find their change already applied by it (coalescing).
    pub(crate) async fn sync(&self) -> Result<(), ProviderError> {
        let mut loaded = self.loaded.lock().await;
        let (desired, through) = self.desired();
        if loaded.entries.as_ref() != Some(&desired) {
            self.load(&mut loaded, desired).await?;
        }
        self.mark_loaded(through);
        Ok(())
    }

    /// [`Self::sync`], rolling `lb` back to `previous` when it fails.
    pub(crate) async fn sync_or_roll_back(
        &self,
        lb: &LoadBalancerRef,
        previous: Option<Entry>,
    ) -> Result<(), ProviderError> {
        let result = self.sync().await;
        if result.is_err() {
            self.roll_back(lb, previous);
        }
        result
    }

    /// Loads `entry` (planned over `previous`) with whatever else changes
    /// now: `Ok` once loaded, Pending while an applier has it.
    pub(crate) async fn load_with_others(
        &self,
        lb: &LoadBalancerRef,
        entry: &Entry,
        previous: Option<Entry>,
    ) -> Result<(), ProviderError> {
        if self.already_loaded(lb, entry, previous.as_ref()).await? {
            return Ok(());
        }
        match self.apply_or_join(lb).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(pending(self.poll_after())),
            Err(e) => {
                self.roll_back(lb, previous);
                Err(e)
            }
        }
    }

    /// Puts back `previous` for `lb` (or removes it) after a failed apply.
    pub(crate) fn roll_back(&self, lb: &LoadBalancerRef, previous: Option<Entry>) {
        let mut entries = self.entries.lock().expect("entries lock");
        match previous {
            Some(p) => entries.insert(lb.clone(), p),
            None => entries.remove(lb),
        };
    }

    /// The refusal of `lb`'s change when its burst was applied, if any: its
    /// entry goes back to what HAProxy runs for it, so nothing refused
    /// stays planned as though it were served.
    pub(crate) fn take_refusal(&self, lb: &LoadBalancerRef) -> Option<ProviderError> {
        let (e, running) = self.bursts().take_refusal(lb)?;
        self.roll_back(lb, running);
        Some(e)
    }

    /// The status for `entry` once HAProxy is seen serving each of its TCP
    /// ports (asked of HAProxy, not taken from what was loaded). When it
    /// does not, what HAProxy runs is no longer known: the next load checks
    /// and reloads the whole configuration, repairing it.
    pub(crate) async fn confirm_served(
        &self,
        entry: &Entry,
    ) -> Result<LoadBalancerStatus, ProviderError> {
        let generation = self.generation.load(std::sync::atomic::Ordering::SeqCst);
        let frontends = self
            .served
            .frontends(&self.settings.admin_socket, generation)
            .await?;
        if let Err(e) = served::check(entry, &frontends) {
            self.served.forget().await;
            if let Ok(mut loaded) = self.loaded.try_lock() {
                loaded.forget_running();
            }
            return Err(e);
        }
        Ok(status_of(entry))
    }
}
