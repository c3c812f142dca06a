//! FerryLB's provider-neutral model: the [`LoadBalancerSpec`] a provider is
//! asked to build, the [`LoadBalancerStatus`] it reports, and the
//! [`LoadBalancerProvider`] trait every provider implements. No Kubernetes or
//! cloud types: providers depend on this crate, never on kube.
#![forbid(unsafe_code)]

pub mod conformance;
mod provider;
pub mod reason;
mod spec;
mod status;
pub mod subset;

pub use provider::{ErrorKind, LoadBalancerProvider, NodeDrain, ProviderError, excerpt};
pub use spec::{
    Endpoint, HealthCheck, IpFamily, Listener, LoadBalancerRef, LoadBalancerSpec, Protocol,
    ServiceKey, Target, load_balancer_name, split_list,
};
pub use status::{Address, Ingress, IpMode, LoadBalancerStatus, PortStatus, Warning};
