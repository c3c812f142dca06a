//! Coalescing of lookups that reconciles running at the same time make, so
//! that N Services converging together cost ⌈N/20⌉ describe calls, not N.
//!
//! # How
//! The first caller of a window becomes its leader: it waits [`WINDOW`] for
//! others to join, then runs one lookup for every key gathered and hands
//! each joiner its own answer. No background task: a window exists only
//! while a leader is waiting.
//!
//! # Guarantees
//! Every caller gets the answer for its own key, or the batch's error. A
//! leader cancelled mid-window fails its joiners with a transient error
//! (they retry as any failed reconcile does).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use ferrylb_model::ProviderError;
use tokio::sync::oneshot;

/// How long a leader waits for others to join.
pub const WINDOW: Duration = Duration::from_millis(50);

type Reply<V> = oneshot::Sender<Result<Option<V>, ProviderError>>;
/// Keys gathered in the open window, each with where its answer goes.
type Waiting<V> = Vec<(String, Reply<V>)>;

/// Lookups of `V` by string key, coalesced.
pub struct Coalescer<V> {
    pending: Mutex<Option<Waiting<V>>>,
}

impl<V> Default for Coalescer<V> {
    fn default() -> Self {
        Self {
            pending: Mutex::new(None),
        }
    }
}

impl<V: Clone> Coalescer<V> {
    /// The value for `key`, looked up together with every other key asked
    /// for in the same window. `lookup` gets the distinct keys and returns
    /// what it found (absent keys are simply missing).
    pub async fn get<F, Fut>(&self, key: &str, lookup: F) -> Result<Option<V>, ProviderError>
    where
        F: FnOnce(Vec<String>) -> Fut,
        Fut: Future<Output = Result<HashMap<String, V>, ProviderError>>,
    {
        let (tx, rx) = oneshot::channel();
        let leader = {
            let mut pending = self.pending.lock().expect("coalescer lock");
            match pending.as_mut() {
                Some(waiting) => {
                    waiting.push((key.to_owned(), tx));
                    false
                }
                None => {
                    *pending = Some(vec![(key.to_owned(), tx)]);
                    true
                }
            }
        };
        if leader {
            tokio::time::sleep(WINDOW).await;
            let batch = self
                .pending
                .lock()
                .expect("coalescer lock")
                .take()
                .unwrap_or_default();
            let mut keys: Vec<String> = batch.iter().map(|(k, _)| k.clone()).collect();
            keys.sort();
            keys.dedup();
            match lookup(keys).await {
                Ok(found) => {
                    for (k, reply) in batch {
                        let _ = reply.send(Ok(found.get(&k).cloned()));
                    }
                }
                Err(e) => {
                    for (_, reply) in batch {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        }
        rx.await.unwrap_or_else(|_| {
            Err(ProviderError::transient(
                "Interrupted",
                "a batched AWS lookup was cancelled; retrying",
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn concurrent_lookups_share_one_call_and_get_their_own_answers() {
        let c = Arc::new(Coalescer::<String>::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for i in 0..10 {
            let (c, calls) = (c.clone(), calls.clone());
            tasks.push(tokio::spawn(async move {
                c.get(&format!("k{i}"), |keys| async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Ok(keys
                        .into_iter()
                        .filter(|k| k != "k3")
                        .map(|k| (k.clone(), format!("v{}", &k[1..])))
                        .collect())
                })
                .await
            }));
        }
        for (i, t) in tasks.into_iter().enumerate() {
            let got = t.await.unwrap().unwrap();
            if i == 3 {
                assert_eq!(got, None);
            } else {
                assert_eq!(got, Some(format!("v{i}")));
            }
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_failed_batch_fails_every_member() {
        let c = Arc::new(Coalescer::<String>::default());
        let (a, b) = tokio::join!(
            c.get("a", |_| async {
                Err(ProviderError::transient("X", "down"))
            }),
            c.get("b", |_| async { Ok(HashMap::new()) }),
        );
        assert!(a.is_err() && b.is_err());
    }
}
