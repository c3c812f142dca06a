//! Orphans: resources tagged for this cluster whose Service no longer
//! exists (deleted while FerryLB was not running, or with its finalizer
//! removed by hand).
//!
//! # Guarantees
//! The caller lists AWS first and the Services second: a resource can only
//! be tagged with a uid whose Service existed when it was created, so a uid
//! missing from the later Service list belongs to a deleted Service, never to
//! one created in between.

use std::collections::BTreeSet;

use ferrylb_model::ProviderError;

use crate::AwsProvider;
pub use crate::converge::Owned as Orphan;

impl AwsProvider {
    /// Everything tagged for this cluster, grouped by Service uid.
    ///
    /// # Errors
    /// When AWS cannot be asked.
    pub async fn tagged(&self) -> Result<Vec<Orphan>, ProviderError> {
        Ok(self.find_owned(None).await?.into_values().collect())
    }

    /// The groups of `tagged` whose Service uid is not in `live`.
    pub fn orphans(tagged: Vec<Orphan>, live: &BTreeSet<String>) -> Vec<Orphan> {
        tagged
            .into_iter()
            .filter(|o| !live.contains(&o.uid))
            .collect()
    }

    /// Deletes one orphan's resources (absent is success).
    ///
    /// # Errors
    /// When AWS refuses or cannot be reached; what was deleted stays deleted.
    pub async fn delete_orphan(&self, o: &Orphan) -> Result<(), ProviderError> {
        self.delete_owned(o).await
    }
}
