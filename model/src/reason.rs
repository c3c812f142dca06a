//! Every reason FerryLB gives, on Events, on the `LoadBalancerReady`
//! condition and in the `reason` label of its metrics: one list, so a user
//! can look any of them up and a test can name them without spelling them.
//!
//! Event reasons on the Service follow Kubernetes' own service controller
//! (`kubectl describe service` reads the same with FerryLB as without it).

// Events on the Service, as Kubernetes' service controller names them.
/// About to create or converge the load balancer.
pub const ENSURING: &str = "EnsuringLoadBalancer";
/// The load balancer is converged and its address published.
pub const ENSURED: &str = "EnsuredLoadBalancer";
/// Only the targets changed (a node came or went).
pub const UPDATED: &str = "UpdatedLoadBalancer";
/// Any failure; the Event's note says which operation and why.
pub const SYNC_FAILED: &str = "SyncLoadBalancerFailed";
pub const DELETING: &str = "DeletingLoadBalancer";
pub const DELETED: &str = "DeletedLoadBalancer";
/// No node can take the traffic (Kubernetes' own spelling).
pub const UNAVAILABLE: &str = "UnAvailableLoadBalancer";

// Condition reasons of the controller itself.
/// The condition's reason when the load balancer is ready.
pub const READY: &str = "Ensured";
/// The Service cannot become a load balancer as it stands.
pub const INVALID_SERVICE: &str = "InvalidService";
pub const PATCH_SERVICE_FAILED: &str = "PatchServiceFailed";
pub const PATCH_STATUS_FAILED: &str = "PatchStatusFailed";
/// A provider call ran past `--provider-timeout`.
pub const PROVIDER_TIMEOUT: &str = "ProviderTimeout";
/// Accepted and being applied with other changes (never an Event).
pub const APPLYING: &str = "Applying";

// What the Service asks for, whatever the provider.
/// An annotation's value is not one the provider accepts.
pub const INVALID_ANNOTATION: &str = "InvalidAnnotation";
/// An annotation another implementation reads that FerryLB does not.
pub const UNSUPPORTED_ANNOTATION: &str = "UnsupportedAnnotation";
/// A port's protocol the load balancer cannot serve.
pub const UNSUPPORTED_PROTOCOL: &str = "UnsupportedProtocol";
/// A combination of ports the load balancer cannot serve.
pub const UNSUPPORTED_PORTS: &str = "UnsupportedPorts";

// AWS.
/// Nodes left out of the targets (no providerID or no IPv4 address).
pub const NODES_NOT_REGISTERED: &str = "NodesNotRegistered";
/// Pods that are not registered as targets (none ready, or an address
/// the target groups cannot take), or no endpoints known at all.
pub const ENDPOINTS_NOT_REGISTERED: &str = "EndpointsNotRegistered";
/// The Service's EndpointSlices cannot be watched (RBAC, say).
pub const ENDPOINTS_UNAVAILABLE: &str = "EndpointsUnavailable";
/// The scheme or address type changed: a new NLB replaces the old one.
pub const REPLACING_LOAD_BALANCER: &str = "ReplacingLoadBalancer";
pub const THROTTLED: &str = "Throttled";
pub const ACCESS_DENIED: &str = "AccessDenied";
/// AWS did not answer, or answered with a server error.
pub const AWS_UNAVAILABLE: &str = "AwsUnavailable";
/// AWS refused a request for another reason; the message has its code.
pub const AWS_REJECTED: &str = "AwsRejected";
pub const SUBNETS_NOT_FOUND: &str = "SubnetsNotFound";
/// AWS no longer knows a subnet or VPC FerryLB had found (the network was
/// rebuilt): the lookup is done again.
pub const SUBNET_GONE: &str = "SubnetGone";
/// More targets than the load balancer holds: a subset of the nodes is
/// registered.
pub const TARGET_SUBSET: &str = "TargetSubset";
/// Not even a subset fits the load balancer's target quota.
pub const TOO_MANY_TARGETS: &str = "TooManyTargets";
/// The AWS SDK found no credentials at all.
pub const AWS_CREDENTIALS_MISSING: &str = "AwsCredentialsMissing";
/// A resource with FerryLB's name exists but is not tagged for the Service.
pub const SECURITY_GROUP_CONFLICT: &str = "SecurityGroupConflict";
pub const TARGET_GROUP_CONFLICT: &str = "TargetGroupConflict";
pub const LOAD_BALANCER_CONFLICT: &str = "LoadBalancerConflict";
/// A deletion waits for AWS to let go of a dependency.
pub const DELETION_PENDING: &str = "DeletionPending";

// HAProxy.
pub const ADDRESS_IN_USE: &str = "AddressInUse";
pub const ADDRESS_NOT_IN_POOL: &str = "AddressNotInPool";
/// The Service's address is of a family its `spec.ipFamilies` does not
/// hold (it asked for that address).
pub const ADDRESS_FAMILY_MISMATCH: &str = "AddressFamilyMismatch";
pub const PORT_COLLISION: &str = "PortCollision";
pub const POOL_EXHAUSTED: &str = "PoolExhausted";
/// Another process on the host already listens on the address and port.
pub const PORT_IN_USE: &str = "PortInUse";
pub const HAPROXY_UNAVAILABLE: &str = "HAProxyUnavailable";
pub const HAPROXY_RUNTIME_API_FAILED: &str = "HAProxyRuntimeApiFailed";
/// HAProxy does not run a listener the Service's status would promise
/// (absent from what it serves, or paused): the address is not Ready.
pub const NOT_SERVED: &str = "NotServed";
/// `haproxy -c` refused the rendered configuration.
pub const INVALID_HAPROXY_CONFIGURATION: &str = "InvalidHAProxyConfiguration";
/// `keepalived -t` refused the rendered configuration.
pub const INVALID_KEEPALIVED_CONFIGURATION: &str = "InvalidKeepalivedConfiguration";
pub const VIP_BIND_FAILED: &str = "VipBindFailed";
pub const VRRP_FAILED: &str = "VrrpFailed";
/// `bird -p` refused the rendered configuration (what runs is unchanged).
pub const INVALID_BIRD_CONFIGURATION: &str = "InvalidBirdConfiguration";
/// BIRD could not be started, configured or asked.
pub const BGP_FAILED: &str = "BgpFailed";
