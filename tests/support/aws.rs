//! AWS helpers: SDK clients for the environment's moto server, and a VPC
//! per test. moto serves every access key from one account, so tests keep
//! apart by VPC and cluster name: each test seeds its own VPC, runs the
//! provider with that VPC and a cluster name of its own, and lists only what
//! is in its VPC.

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ec2::config::Credentials;

use super::env::TestEnv;

/// SDK configuration pointing at moto.
pub async fn sdk_config(env: &TestEnv) -> SdkConfig {
    sdk_config_for_account(env, &fresh_account_id()).await
}

/// SDK configuration pointing at moto, with the given access key id.
pub async fn sdk_config_for_account(env: &TestEnv, account: &str) -> SdkConfig {
    sdk_config_at(&env.aws_endpoint(), account).await
}

/// SDK configuration for `endpoint`, retrying with short backoffs. (FerryLB
/// itself uses adaptive retry, which also slows its sending rate after
/// throttling: right against AWS, but under the fault proxy's constant
/// throttling it would make a test wait minutes.)
pub async fn sdk_config_at(endpoint: &str, account: &str) -> SdkConfig {
    use aws_sdk_elasticloadbalancingv2::config::retry::RetryConfig;
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(5)
                .with_initial_backoff(std::time::Duration::from_millis(20)),
        )
        .credentials_provider(Credentials::new(
            account,
            "testing",
            None,
            None,
            "ferrylb-tests",
        ))
        .load()
        .await
}

/// A 12-digit account id not used before by this test binary.
pub fn fresh_account_id() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("{:07}{:05}", std::process::id() % 10_000_000, n % 100_000)
}

/// A VPC with one subnet per zone (tagged for internet-facing and internal
/// load balancers of `cluster`) and EC2 instances standing for nodes.
pub struct Seed {
    /// A cluster name used by no other test.
    pub cluster: String,
    pub vpc: String,
    pub subnets: Vec<String>,
    /// (instance id, zone).
    pub instances: Vec<(String, String)>,
}

impl Seed {
    /// The Node `spec.providerID` of instance `i`.
    pub fn provider_id(&self, i: usize) -> String {
        let (id, zone) = &self.instances[i];
        format!("aws:///{zone}/{id}")
    }
}

/// Creates the VPC, subnets and `instances` instances (spread over zones).
pub async fn seed(conf: &SdkConfig, instances: usize) -> Seed {
    seed_cluster(conf, &format!("test-{}", fresh_account_id()), instances).await
}

/// [`seed`] for `cluster`: a new VPC with subnets tagged for it.
pub async fn seed_cluster(conf: &SdkConfig, cluster: &str, instances: usize) -> Seed {
    use aws_sdk_ec2::types::{InstanceType, ResourceType, Tag, TagSpecification};
    let ec2 = aws_sdk_ec2::Client::new(conf);
    let vpc = ec2
        .create_vpc()
        .cidr_block("10.0.0.0/16")
        .send()
        .await
        .expect("CreateVpc")
        .vpc()
        .and_then(|v| v.vpc_id())
        .expect("a VPC id")
        .to_owned();
    let mut subnets = Vec::new();
    let zones = ["us-east-1a", "us-east-1b"];
    for (i, zone) in zones.iter().enumerate() {
        let tags = TagSpecification::builder()
            .resource_type(ResourceType::Subnet)
            .tags(
                Tag::builder()
                    .key("kubernetes.io/role/elb")
                    .value("1")
                    .build(),
            )
            .tags(
                Tag::builder()
                    .key("kubernetes.io/role/internal-elb")
                    .value("1")
                    .build(),
            )
            .tags(
                Tag::builder()
                    .key(format!("kubernetes.io/cluster/{cluster}"))
                    .value("shared")
                    .build(),
            )
            .build();
        let s = ec2
            .create_subnet()
            .vpc_id(&vpc)
            .cidr_block(format!("10.0.{}.0/24", i + 1))
            .availability_zone(*zone)
            .tag_specifications(tags)
            .send()
            .await
            .expect("CreateSubnet");
        subnets.push(
            s.subnet()
                .and_then(|s| s.subnet_id())
                .expect("a subnet id")
                .to_owned(),
        );
    }
    let mut out = Vec::new();
    for i in 0..instances {
        let z = i % zones.len();
        let run = ec2
            .run_instances()
            .image_id("ami-12345678")
            .instance_type(InstanceType::T3Micro)
            .subnet_id(&subnets[z])
            .min_count(1)
            .max_count(1)
            .send()
            .await
            .expect("RunInstances");
        let id = run.instances()[0]
            .instance_id()
            .expect("an instance id")
            .to_owned();
        out.push((id, zones[z].to_owned()));
    }
    Seed {
        cluster: cluster.to_owned(),
        vpc,
        subnets,
        instances: out,
    }
}

/// An AWS provider for the seed's cluster and VPC. moto does not throttle,
/// so FerryLB's own pacing is scaled up to keep tests fast.
pub fn provider(conf: &SdkConfig, seed: &Seed) -> ferrylb_aws::AwsProvider {
    ferrylb_aws::AwsProvider::new(conf, settings(seed))
}

/// Test settings for the seed's cluster and VPC (fast pacing).
pub fn settings(seed: &Seed) -> ferrylb_aws::AwsSettings {
    let mut s = ferrylb_aws::AwsSettings::new(&seed.cluster);
    s.vpc_id = Some(seed.vpc.clone());
    s.limits.scale = 1000.0;
    s
}

/// Everything ELBv2 and EC2 security groups hold in the seed's VPC.
#[derive(Debug, Default)]
pub struct Inventory {
    pub load_balancers: Vec<aws_sdk_elasticloadbalancingv2::types::LoadBalancer>,
    pub target_groups: Vec<aws_sdk_elasticloadbalancingv2::types::TargetGroup>,
    /// Listeners of every load balancer.
    pub listeners: Vec<aws_sdk_elasticloadbalancingv2::types::Listener>,
    /// (target group name, target id, port), sorted.
    pub targets: Vec<(String, String, u16)>,
    /// Security groups other than the VPCs' default ones.
    pub security_groups: Vec<aws_sdk_ec2::types::SecurityGroup>,
}

impl Inventory {
    /// Whether nothing FerryLB could have made exists.
    pub fn is_empty(&self) -> bool {
        self.load_balancers.is_empty()
            && self.target_groups.is_empty()
            && self.listeners.is_empty()
            && self.security_groups.is_empty()
    }

    /// Target group name → (protocol, port) and sorted targets.
    /// The target ids registered in each target group, in order.
    pub fn registered_ids(&self) -> Vec<std::collections::BTreeSet<String>> {
        self.target_groups
            .iter()
            .map(|t| {
                self.targets_of(t.target_group_name().unwrap())
                    .into_iter()
                    .map(|(id, _)| id)
                    .collect()
            })
            .collect()
    }

    pub fn targets_of(&self, tg_name: &str) -> Vec<(String, u16)> {
        self.targets
            .iter()
            .filter(|(n, _, _)| n == tg_name)
            .map(|(_, id, port)| (id.clone(), *port))
            .collect()
    }
}

/// Lists the seed's VPC.
pub async fn inventory(conf: &SdkConfig, seed: &Seed) -> Inventory {
    let in_vpc = |v: Option<&str>| v == Some(seed.vpc.as_str());
    let elb = aws_sdk_elasticloadbalancingv2::Client::new(conf);
    let ec2 = aws_sdk_ec2::Client::new(conf);
    let mut inv = Inventory::default();
    let mut marker = None;
    loop {
        let page = elb
            .describe_load_balancers()
            .set_marker(marker)
            .send()
            .await
            .expect("DescribeLoadBalancers");
        inv.load_balancers.extend(
            page.load_balancers()
                .iter()
                .filter(|l| in_vpc(l.vpc_id()))
                .cloned(),
        );
        marker = page.next_marker().map(str::to_owned);
        if marker.is_none() {
            break;
        }
    }
    for lb in &inv.load_balancers {
        let arn = lb.load_balancer_arn().unwrap();
        match elb.describe_listeners().load_balancer_arn(arn).send().await {
            Ok(r) => inv.listeners.extend(r.listeners().iter().cloned()),
            // Deleted since it was listed (a controller is at work).
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_load_balancer_not_found_exception()) => {}
            Err(e) => panic!(
                "DescribeListeners {arn}: {}",
                aws_sdk_elasticloadbalancingv2::error::DisplayErrorContext(e)
            ),
        }
    }
    let mut marker = None;
    loop {
        let page = elb
            .describe_target_groups()
            .set_marker(marker)
            .send()
            .await
            .expect("DescribeTargetGroups");
        inv.target_groups.extend(
            page.target_groups()
                .iter()
                .filter(|t| in_vpc(t.vpc_id()))
                .cloned(),
        );
        marker = page.next_marker().map(str::to_owned);
        if marker.is_none() {
            break;
        }
    }
    for tg in &inv.target_groups {
        let arn = tg.target_group_arn().unwrap();
        let h = match elb
            .describe_target_health()
            .target_group_arn(arn)
            .send()
            .await
        {
            Ok(h) => h,
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_target_group_not_found_exception()) =>
            {
                continue;
            }
            Err(e) => panic!(
                "DescribeTargetHealth {arn}: {}",
                aws_sdk_elasticloadbalancingv2::error::DisplayErrorContext(e)
            ),
        };
        for d in h.target_health_descriptions() {
            let t = d.target().unwrap();
            inv.targets.push((
                tg.target_group_name().unwrap().to_owned(),
                t.id().unwrap_or_default().to_owned(),
                t.port().unwrap_or_default() as u16,
            ));
        }
    }
    inv.targets.sort();
    inv.security_groups = ec2
        .describe_security_groups()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("vpc-id")
                .values(&seed.vpc)
                .build(),
        )
        .send()
        .await
        .expect("DescribeSecurityGroups")
        .security_groups()
        .iter()
        .filter(|g| g.group_name() != Some("default") && in_vpc(g.vpc_id()))
        .cloned()
        .collect();
    inv
}

/// Simulates the process dying around AWS call `k` (counting from 1):
/// call `k` reaches AWS and takes effect but its answer is lost, and no
/// later call is sent.
#[derive(Debug)]
pub struct CrashAfter {
    k: usize,
    sent: std::sync::atomic::AtomicUsize,
}

impl CrashAfter {
    pub fn new(k: usize) -> Self {
        Self {
            k,
            sent: std::sync::atomic::AtomicUsize::new(0),
        }
    }
}

impl aws_smithy_runtime_api::client::interceptors::Intercept for CrashAfter {
    fn name(&self) -> &'static str {
        "CrashAfter"
    }

    fn read_before_transmit(
        &self,
        _ctx: &aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef<'_>,
        _rc: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
        _cfg: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        use std::sync::atomic::Ordering;
        if self.sent.load(Ordering::SeqCst) >= self.k {
            return Err("process gone: call not sent".into());
        }
        self.sent.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn read_before_deserialization(
        &self,
        _ctx: &aws_smithy_runtime_api::client::interceptors::context::BeforeDeserializationInterceptorContextRef<'_>,
        _rc: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
        _cfg: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        use std::sync::atomic::Ordering;
        if self.sent.load(Ordering::SeqCst) >= self.k {
            return Err("process gone: answer lost".into());
        }
        Ok(())
    }
}

/// An ACM certificate in moto for `domain`, in `account`: its ARN. (ACM's
/// JSON API through curl, so the tests need no ACM SDK crate.)
pub fn request_certificate(endpoint: &str, account: &str, domain: &str) -> String {
    let out = std::process::Command::new("curl")
        .args(["-sS", "-X", "POST", endpoint])
        .args(["-H", "X-Amz-Target: CertificateManager.RequestCertificate"])
        .args(["-H", "Content-Type: application/x-amz-json-1.1"])
        .arg("-H")
        .arg(format!(
            "Authorization: AWS4-HMAC-SHA256 Credential={account}/20260101/us-east-1/acm/aws4_request, SignedHeaders=host, Signature=0"
        ))
        .arg("-d")
        .arg(format!("{{\"DomainName\":\"{domain}\"}}"))
        .output()
        .expect("running curl");
    let body: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("ACM RequestCertificate: {e}: {out:?}"));
    body["CertificateArn"]
        .as_str()
        .unwrap_or_else(|| panic!("no CertificateArn in {body}"))
        .to_owned()
}

/// AWS's target quota for a Network Load Balancer, enforced in front of
/// moto (which has none): targets registered per zone, summed over the
/// load balancer's target groups (each counts), may not pass `per_zone`. A
/// RegisterTargets that would is refused before it is sent, as AWS refuses
/// it with TooManyTargets, and counted.
#[derive(Debug)]
pub struct TargetQuota {
    per_zone: usize,
    zone_of: std::collections::HashMap<String, String>,
    registered:
        std::sync::Mutex<std::collections::HashMap<String, std::collections::BTreeSet<String>>>,
    pub refused: std::sync::atomic::AtomicUsize,
}

impl TargetQuota {
    /// A quota of `per_zone` for instances whose zones `zone_of` gives.
    pub fn new(per_zone: usize, zone_of: std::collections::HashMap<String, String>) -> Self {
        Self {
            per_zone,
            zone_of,
            registered: std::sync::Mutex::default(),
            refused: std::sync::atomic::AtomicUsize::new(0),
        }
    }
}

/// `%XX` decoding of a form value.
fn form_decode(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("00");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl aws_smithy_runtime_api::client::interceptors::Intercept for TargetQuota {
    fn name(&self) -> &'static str {
        "TargetQuota"
    }

    fn read_before_transmit(
        &self,
        ctx: &aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef<'_>,
        _rc: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
        _cfg: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        let Some(body) = ctx.request().body().bytes() else {
            return Ok(());
        };
        let form: Vec<(String, String)> = String::from_utf8_lossy(body)
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (form_decode(k), form_decode(v)))
            .collect();
        let get = |k: &str| {
            form.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        let action = get("Action").unwrap_or_default();
        if action != "RegisterTargets" && action != "DeregisterTargets" {
            return Ok(());
        }
        let tg = get("TargetGroupArn").unwrap_or_default();
        let ids: Vec<String> = form
            .iter()
            .filter(|(k, _)| k.starts_with("Targets.member.") && k.ends_with(".Id"))
            .map(|(_, v)| v.clone())
            .collect();
        let mut registered = self.registered.lock().unwrap();
        let mut next = registered.clone();
        let set = next.entry(tg).or_default();
        for id in ids {
            if action == "RegisterTargets" {
                set.insert(id);
            } else {
                set.remove(&id);
            }
        }
        let mut per_zone: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        for id in next.values().flatten() {
            let zone = self.zone_of.get(id).map(String::as_str).unwrap_or("?");
            *per_zone.entry(zone).or_default() += 1;
        }
        if let Some((zone, n)) = per_zone.iter().find(|(_, n)| **n > self.per_zone) {
            self.refused
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            return Err(format!(
                "TooManyTargets: {n} targets in {zone} would pass the quota of {}",
                self.per_zone
            )
            .into());
        }
        *registered = next;
        Ok(())
    }
}
