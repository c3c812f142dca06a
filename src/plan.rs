//! `ferrylb plan`: what a provider would do for a set of Service, Node and
//! EndpointSlice manifests, without a cluster. The same spec builder, address
//! allocation and renderer as the controller, minus the I/O.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;
use ferrylb_haproxy::pool::AddressPool;
use ferrylb_haproxy::{HaproxyProvider, HaproxySettings, status_of};
use ferrylb_model::LoadBalancerSpec;
use std::sync::Arc;

use ferrylb_model::Endpoint;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::Deserialize;

mod aws;

/// The largest manifest text `plan` reads.
pub const MAX_INPUT_BYTES: usize = 16 << 20;
/// The deepest nesting `plan` reads; Kubernetes objects nest far less.
pub const MAX_DEPTH: usize = 100;

/// Refuses input a YAML parser would spend minutes on: too large, or nested
/// too deep (in flow style `[[[`, block sequences `- - -` or indentation).
/// A linear scan that over-counts rather than under-counts.
fn check_bounds(text: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        text.len() <= MAX_INPUT_BYTES,
        "the manifests are {} bytes; plan reads at most {MAX_INPUT_BYTES}",
        text.len()
    );
    let mut flow = 0usize;
    for (n, line) in text.lines().enumerate() {
        let indent = line.len() - line.trim_start().len();
        let dashes = line
            .trim_start()
            .split_inclusive(' ')
            .take_while(|w| w.trim() == "-")
            .count();
        for c in line.chars() {
            match c {
                '[' | '{' => flow += 1,
                ']' | '}' => flow = flow.saturating_sub(1),
                _ => {}
            }
            anyhow::ensure!(
                flow <= MAX_DEPTH,
                "line {}: nested deeper than {MAX_DEPTH} levels; plan refuses such input",
                n + 1
            );
        }
        anyhow::ensure!(
            indent / 2 + dashes <= MAX_DEPTH,
            "line {}: nested deeper than {MAX_DEPTH} levels; plan refuses such input",
            n + 1
        );
    }
    Ok(())
}

/// The objects of a set of manifests that a plan reads.
#[derive(Debug, Default)]
pub struct Manifests {
    /// Sorted by namespace and name.
    pub services: Vec<Service>,
    pub nodes: Vec<Node>,
    pub endpoint_slices: Vec<EndpointSlice>,
}

impl Manifests {
    /// The endpoints of Service `namespace/name` in the manifests' slices,
    /// or `None` when they carry none for it.
    fn endpoints_of(&self, namespace: &str, name: &str) -> Option<Arc<[Endpoint]>> {
        let slices: Vec<&EndpointSlice> = self
            .endpoint_slices
            .iter()
            .filter(|s| {
                s.metadata.namespace.as_deref().unwrap_or("default") == namespace
                    && s.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(crate::spec::LABEL_SERVICE_NAME))
                        .is_some_and(|n| n == name)
            })
            .collect();
        (!slices.is_empty()).then(|| crate::spec::endpoints(slices))
    }
}

/// Reads every object in a multi-document YAML (or JSON) text, flattening
/// `kind: List`.
///
/// # Errors
/// Input over [`MAX_INPUT_BYTES`] or nested deeper than [`MAX_DEPTH`], and
/// anything that is not YAML or not a valid Service, Node or EndpointSlice.
pub fn parse_manifests(text: &str) -> anyhow::Result<Manifests> {
    check_bounds(text)?;
    let mut services: Vec<Service> = Vec::new();
    let mut nodes = Vec::new();
    let mut endpoint_slices = Vec::new();
    let mut pending: Vec<serde_json::Value> = Vec::new();
    for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
        let value =
            serde_json::Value::deserialize(doc).with_context(|| format!("document {}", i + 1))?;
        pending.push(value);
    }
    while let Some(v) = pending.pop() {
        match v.get("kind").and_then(|k| k.as_str()) {
            Some("List") => pending.extend(
                v.get("items")
                    .and_then(|i| i.as_array())
                    .cloned()
                    .unwrap_or_default(),
            ),
            Some("Service") => {
                services.push(serde_json::from_value(v).context("reading a Service")?)
            }
            Some("Node") => nodes.push(serde_json::from_value(v).context("reading a Node")?),
            Some("EndpointSlice") => {
                endpoint_slices.push(serde_json::from_value(v).context("reading an EndpointSlice")?)
            }
            _ => {}
        }
    }
    services.sort_by(|a, b| {
        (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name))
    });
    Ok(Manifests {
        services,
        nodes,
        endpoint_slices,
    })
}

/// The eligible nodes' line that opens every plan.
fn nodes_line(targets: &[ferrylb_model::Target]) -> String {
    format!(
        "# {} eligible node(s): {}\n",
        targets.len(),
        targets
            .iter()
            .map(|t| t.node.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// What a Service of the manifests is called in a plan: `namespace/name`.
type Named<T> = Vec<(String, T)>;

/// Stands in for the uid of a Service the manifests give none (one not
/// created yet).
const NO_UID: &str = "plan-";

/// The specs of the LoadBalancer Services of `class` (or of no class), as
/// the controller builds them, and why the others cannot become one: those
/// of another class are named too, so that a plan is never silently empty.
fn specs(
    services: &[Service],
    class: &str,
    targets: &std::sync::Arc<[ferrylb_model::Target]>,
) -> (Named<LoadBalancerSpec>, Named<String>) {
    let (mut specs, mut refused) = (Vec::new(), Vec::new());
    for svc in services {
        let Some(spec) = svc
            .spec
            .as_ref()
            .filter(|s| s.type_.as_deref() == Some("LoadBalancer"))
        else {
            continue;
        };
        let name = format!(
            "{}/{}",
            svc.metadata.namespace.as_deref().unwrap_or("default"),
            svc.metadata.name.as_deref().unwrap_or_default()
        );
        if let Some(other) = spec.load_balancer_class.as_deref().filter(|c| *c != class) {
            refused.push((
                name,
                format!(
                    "its spec.loadBalancerClass {other:?} is not the class planned here \
                     ({class:?}); plan it with the provider that serves that class (--provider)"
                ),
            ));
            continue;
        }
        let mut svc = svc.clone();
        svc.metadata
            .namespace
            .get_or_insert_with(|| "default".into());
        svc.metadata
            .uid
            .get_or_insert_with(|| format!("{NO_UID}{name}"));
        match crate::spec::build(&svc, targets) {
            Ok(spec) => specs.push((name, spec)),
            Err(e) => refused.push((name, e.to_string())),
        }
    }
    (specs, refused)
}

/// The HAProxy plan as text: assignments (or why a Service gets none), then
/// the configuration.
pub fn plan(text: &str, class: &str, pool: AddressPool) -> anyhow::Result<String> {
    let Manifests {
        services, nodes, ..
    } = parse_manifests(text)?;
    // Nothing is written or started: the directory only appears in the
    // rendered `stats socket` line.
    let provider =
        HaproxyProvider::new(HaproxySettings::in_dir(pool, Path::new("/var/run/ferrylb")));
    let targets = crate::spec::targets(&nodes);
    let mut out = nodes_line(&targets);
    let _ = writeln!(out, "# Address assignments");
    let (mut specs, refused) = specs(&services, class, &targets);
    for (name, e) in refused {
        let _ = writeln!(out, "#   {name}: not provisioned: {e}");
    }
    // Services that already carry an address keep it: plan them first.
    specs.sort_by_key(|(_, s)| s.status_ips.is_empty());
    for (name, spec) in &specs {
        match provider.plan(spec) {
            Ok((entry, _)) => {
                let status = status_of(&entry);
                let ports: Vec<String> = spec
                    .listeners
                    .iter()
                    .map(|l| format!("{}/{}->{}", l.port, l.protocol, l.node_port))
                    .collect();
                let vips: Vec<String> = entry.vips.iter().map(ToString::to_string).collect();
                let _ = writeln!(
                    out,
                    "#   {name}: {} ports {}",
                    vips.join(" "),
                    ports.join(",")
                );
                for w in status.warnings {
                    let _ = writeln!(out, "#     warning: {}", w.message);
                }
            }
            Err(e) => {
                let _ = writeln!(out, "#   {name}: not provisioned: {e}");
            }
        }
    }
    let _ = writeln!(out, "# HAProxy configuration");
    out.push_str(&provider.render());
    Ok(out)
}

/// The AWS plan as text: for each Service, the NLB, security group rules,
/// listeners, target groups with their health checks and targets, and tags
/// FerryLB would create for cluster `cluster`, or why it would create
/// none. Offline: subnets are described, not looked up.
pub fn plan_aws(text: &str, class: &str, cluster: &str) -> anyhow::Result<String> {
    let manifests = parse_manifests(text)?;
    let targets = crate::spec::targets(&manifests.nodes);
    let mut out = nodes_line(&targets);
    let (mut specs, mut refused) = specs(&manifests.services, class, &targets);
    // As the controller does: the endpoints of the Services that need them,
    // from the manifests' EndpointSlices.
    for (_, spec) in &mut specs {
        if aws::needs_endpoints(spec) {
            spec.endpoints = manifests.endpoints_of(&spec.lb.key.namespace, &spec.lb.key.name);
        }
    }
    if specs.iter().any(|(_, s)| s.lb.key.uid.starts_with(NO_UID)) {
        let _ = writeln!(
            out,
            "# Names carry a hash of the Service's uid: those of Services not created yet differ once they are"
        );
    }
    for (name, spec) in &specs {
        match aws::describe(spec, cluster) {
            Ok(text) => {
                let _ = write!(out, "{name}:\n{text}");
            }
            Err(e) => refused.push((name.clone(), e.to_string())),
        }
    }
    for (name, e) in refused {
        let _ = writeln!(out, "{name}: not provisioned: {e}");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFESTS: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: n1}
status: {addresses: [{type: InternalIP, address: 10.0.0.11}]}
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Node
  metadata: {name: n2, labels: {node.kubernetes.io/exclude-from-external-load-balancers: ""}}
  status: {addresses: [{type: InternalIP, address: 10.0.0.12}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  type: LoadBalancer
  ports: [{port: 80, nodePort: 30080}, {name: dns, port: 53, protocol: UDP, nodePort: 30053}]
---
apiVersion: v1
kind: Service
metadata: {name: kept, namespace: shop}
spec: {type: LoadBalancer, ports: [{port: 80, nodePort: 30081}]}
status: {loadBalancer: {ingress: [{ip: 192.0.2.10}]}}
---
apiVersion: v1
kind: Service
metadata: {name: bad, namespace: shop, annotations: {ferrylb.io/haproxy-balance: static-rr}}
spec: {type: LoadBalancer, ports: [{port: 80, nodePort: 30082}]}
---
apiVersion: v1
kind: Service
metadata: {name: elsewhere, namespace: shop}
spec: {type: LoadBalancer, loadBalancerClass: example.com/other, ports: [{port: 80, nodePort: 30083}]}
"#;

    #[test]
    fn plans_addresses_and_configuration() {
        let out = plan(
            MANIFESTS,
            "ferrylb.io/haproxy",
            "192.0.2.10-192.0.2.20".parse().unwrap(),
        )
        .unwrap();
        assert!(out.contains("# 1 eligible node(s): n1"), "{out}");
        assert!(
            out.contains("shop/kept: 192.0.2.10 "),
            "the status address is kept: {out}"
        );
        assert!(
            out.contains("shop/web: 192.0.2.11 ports 80/TCP->30080,53/UDP->30053"),
            "{out}"
        );
        assert!(out.contains("warning: port 53/UDP is not served"), "{out}");
        assert!(
            out.contains(
                "shop/bad: not provisioned: ferrylb.io/haproxy-balance: invalid value \"static-rr\""
            ),
            "{out}"
        );
        assert!(
            out.contains(
                "shop/elsewhere: not provisioned: its spec.loadBalancerClass \"example.com/other\" is not the class planned here"
            ),
            "a Service of another class is named, not silently left out: {out}"
        );
        assert!(!out.contains("fe_fl-shop-elsewher"), "{out}");
        assert!(
            out.contains("bind 192.0.2.11:80") && out.contains("server n1 10.0.0.11:30080"),
            "{out}"
        );
        assert!(!out.contains("10.0.0.12"), "{out}");
    }

    #[test]
    fn plans_aws_resources_and_annotation_errors_offline() {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/aws.yaml"))
                .unwrap();
        let out = plan_aws(&text, "ferrylb.io/aws", "prod").unwrap();
        assert!(
            out.contains("# 2 eligible node(s): ip-10-0-1-11, ip-10-0-2-12"),
            "{out}"
        );
        assert!(
            !out.contains("i-0a1b2c3d4e5f60013"),
            "the excluded node: {out}"
        );
        // TLS only on the port named in ssl-ports, plain TCP behind it.
        assert!(
            out.contains("listener 443/TLS -> target group fl-"),
            "{out}"
        );
        assert!(
            out.contains("policy ELBSecurityPolicy-TLS13-1-2-2021-06"),
            "{out}"
        );
        assert!(out.contains("listener 80/TCP -> target group fl-"), "{out}");
        assert!(
            out.contains("allow tcp/443 from 203.0.113.0/24")
                && out.contains("health check: TCP on traffic-port, interval 10s"),
            "{out}"
        );
        // TCP and UDP on one port: one TCP_UDP listener, both rules.
        assert!(
            out.contains("listener 53/TCP_UDP")
                && out.contains("allow udp/53 from the VPC's CIDR blocks"),
            "{out}"
        );
        assert!(out.contains(": internal, ipv4"), "{out}");
        assert!(out.contains("kubernetes.io/cluster/prod=owned"), "{out}");
        assert!(
            out.contains(
                "shop/typo: not provisioned: service.beta.kubernetes.io/aws-load-balancer-healthcheck-interval: invalid value \"often\""
            ),
            "{out}"
        );
    }

    /// The AWS Load Balancer Controller's meanings: `external` without a
    /// scheme is internal and admits the VPC only; an IPv6 source range on
    /// an IPv4 load balancer, and more rules than a security group holds,
    /// are refused before any call, naming the range and the limit.
    #[test]
    fn plans_aws_annotations_as_the_load_balancer_controller_documents() {
        let node = "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\n\
                    spec: {providerID: \"aws:///us-east-1a/i-0a1b2c3d4e5f60011\"}\n\
                    status: {addresses: [{type: InternalIP, address: 10.0.1.11}]}\n";
        let svc = |name: &str, annotations: &str, extra: &str, ports: &str| {
            format!(
                "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: shop, annotations: {{{annotations}}}}}\n\
                 spec: {{type: LoadBalancer, loadBalancerClass: ferrylb.io/aws, {extra} ports: [{ports}]}}\n"
            )
        };
        let many: Vec<String> = (1..=61)
            .map(|i| {
                format!(
                    "{{name: p{i}, port: {}, nodePort: {}}}",
                    1000 + i,
                    30000 + i
                )
            })
            .collect();
        let text = [
            node.to_owned(),
            svc(
                "ext",
                "service.beta.kubernetes.io/aws-load-balancer-type: external",
                "",
                "{port: 80, nodePort: 30080}",
            ),
            svc(
                "six",
                "",
                "loadBalancerSourceRanges: [203.0.113.0/24, \"2001:db8::/32\"],",
                "{port: 80, nodePort: 30081}",
            ),
            svc("many", "", "", &many.join(", ")),
        ]
        .concat();
        let out = plan_aws(&text, "ferrylb.io/aws", "prod").unwrap();
        let ext = out.split("shop/ext:").nth(1).unwrap();
        assert!(ext.contains(": internal, ipv4"), "{out}");
        assert!(
            ext.contains("allow tcp/80 from the VPC's CIDR blocks") && !ext.contains("0.0.0.0/0"),
            "{out}"
        );
        assert!(
            out.contains("shop/six: not provisioned: spec.loadBalancerSourceRanges: invalid value \"2001:db8::/32\""),
            "{out}"
        );
        assert!(
            out.contains("shop/many: not provisioned: the load balancer's security group would need 61 IPv4 inbound rules")
                && out.contains("holds 60"),
            "{out}"
        );
    }

    /// `nlb-target-type: ip` targets the pods the manifests' EndpointSlices
    /// list (ready ones, on their own port), as the controller would; with
    /// no slice for the Service, the plan says none are known.
    #[test]
    fn plans_pod_targets_from_the_manifests_endpoint_slices() {
        let text = r#"
apiVersion: v1
kind: Node
metadata: {name: n1}
spec: {providerID: "aws:///us-east-1a/i-0a1b2c3d4e5f60011"}
status: {addresses: [{type: InternalIP, address: 10.0.1.11}]}
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  annotations:
    service.beta.kubernetes.io/aws-load-balancer-nlb-target-type: ip
    service.beta.kubernetes.io/aws-load-balancer-target-group-attributes: deregistration_delay.timeout_seconds=30
spec: {type: LoadBalancer, ports: [{name: http, port: 80, nodePort: 30080}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-x1, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [10.0.1.50], conditions: {ready: true}, nodeName: n1}
- {addresses: [10.0.1.51], conditions: {ready: false, terminating: true}, nodeName: n1}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-x2, namespace: other, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints: [{addresses: [10.9.9.9]}]
---
apiVersion: v1
kind: Service
metadata:
  name: api
  namespace: shop
  annotations: {service.beta.kubernetes.io/aws-load-balancer-nlb-target-type: ip}
spec: {type: LoadBalancer, ports: [{name: http, port: 80, nodePort: 30081}]}
"#;
        let out = plan_aws(text, "ferrylb.io/aws", "prod").unwrap();
        let web = out.split("shop/web:").nth(1).unwrap();
        assert!(web.contains("targets: 10.0.1.50:8080\n"), "{out}");
        assert!(web.contains("to each pod's own port, ip targets"), "{out}");
        assert!(
            web.contains("attributes: deregistration_delay.timeout_seconds=30\n"),
            "{out}"
        );
        assert!(
            !web.contains("10.0.1.51") && !web.contains("10.9.9.9"),
            "{out}"
        );
        let api = out.split("shop/api:").nth(1).unwrap();
        assert!(api.contains("targets: none"), "{out}");
        assert!(
            api.contains("warning: nlb-target-type ip registers the Service's pods"),
            "{out}"
        );
    }

    #[test]
    fn deep_or_huge_input_fails_fast_with_a_clear_message() {
        let deep_flow = format!("{}{}", "[".repeat(60_000), "]".repeat(60_000));
        let deep_block: String = (0..60_000).map(|_| "- ").collect::<String>() + "x\n";
        let deep_indent: String = (0..300)
            .map(|i| format!("{}a:\n", "  ".repeat(i)))
            .collect();
        for text in [deep_flow, deep_block, deep_indent] {
            let started = std::time::Instant::now();
            let err = parse_manifests(&text).unwrap_err().to_string();
            assert!(err.contains("nested deeper than 100"), "{err}");
            assert!(started.elapsed() < std::time::Duration::from_secs(1));
        }
        let huge = "#".repeat(MAX_INPUT_BYTES + 1);
        assert!(
            parse_manifests(&huge)
                .unwrap_err()
                .to_string()
                .contains("at most")
        );
    }
}
