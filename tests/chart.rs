//! The Helm chart: it lints and renders for the default, AWS and HAProxy
//! values; its schema refuses bad values; installed into the real API
//! server, its ServiceAccount's own token is enough for a whole Service
//! lifecycle and not for more.

mod support;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Node, Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{Api, DeleteParams, PostParams};
use support::aws;
use support::harness::ingress_hostname;
use support::process::ChildGuard;
use support::{env, kube as k, wait};

const CHART: &str = "charts/ferrylb";

/// helm, built from its pinned Go module (cached after the first build).
fn helm() -> PathBuf {
    let out = Command::new(env::repo_root().join("tests/env/build-helm"))
        .output()
        .expect("running tests/env/build-helm (needs go)");
    assert!(
        out.status.success(),
        "building helm failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim()).join("helm")
}

fn run_helm(args: &[&str]) -> Output {
    Command::new(helm())
        .args(args)
        .current_dir(env::repo_root())
        .output()
        .expect("running helm")
}

fn values_files() -> [Vec<&'static str>; 4] {
    [
        vec![],
        vec!["-f", "charts/ferrylb/ci/aws-values.yaml"],
        vec!["-f", "charts/ferrylb/ci/haproxy-values.yaml"],
        vec!["-f", "charts/ferrylb/ci/bgp-values.yaml"],
    ]
}

#[test]
fn chart_lints_strictly_and_renders_for_default_aws_and_haproxy_values() {
    for values in values_files() {
        let lint = run_helm(&[&["lint", "--strict", CHART][..], &values].concat());
        assert!(
            lint.status.success(),
            "helm lint {values:?}:\n{}",
            String::from_utf8_lossy(&lint.stdout)
        );
        let out = run_helm(&[&["template", "ferrylb", CHART][..], &values].concat());
        assert!(
            out.status.success(),
            "helm template {values:?}:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        for kind in [
            "Deployment",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "PodDisruptionBudget",
            "Service",
        ] {
            assert!(
                text.contains(&format!("kind: {kind}\n")),
                "{values:?}: no {kind}"
            );
        }
        assert!(text.contains("readOnlyRootFilesystem: true"));
        assert!(text.contains("runAsNonRoot: true"));
    }
    let haproxy = run_helm(&[
        "template",
        "ferrylb",
        CHART,
        "-f",
        "charts/ferrylb/ci/haproxy-values.yaml",
    ]);
    let text = String::from_utf8(haproxy.stdout).unwrap();
    assert!(
        text.contains("hostNetwork: true")
            && text.contains("NET_ADMIN")
            && text.contains("- name: haproxy")
            && text.contains("- --haproxy-threads=2\n")
    );
    let aws = run_helm(&[
        "template",
        "ferrylb",
        CHART,
        "-f",
        "charts/ferrylb/ci/aws-values.yaml",
    ]);
    let text = String::from_utf8(aws.stdout).unwrap();
    assert!(text.contains("eks.amazonaws.com/role-arn") && text.contains("kind: ServiceMonitor"));
    assert!(!text.contains("hostNetwork") && !text.contains("NET_ADMIN"));
    let bgp = run_helm(&[
        "template",
        "ferrylb",
        CHART,
        "-f",
        "charts/ferrylb/ci/bgp-values.yaml",
    ]);
    let text = String::from_utf8(bgp.stdout).unwrap();
    for want in [
        "- --haproxy-bgp\n",
        "- --haproxy-bgp-router-id=$(HOST_IP)\n",
        "- --haproxy-bgp-communities=64512:100\n",
        "- --haproxy-bgp-peer=address=10.0.0.1,asn=64500,bfd=true,hold=9s\n",
        "- --haproxy-bgp-peer=address=fd00::1,asn=64500,bfd=false,hold=30s,password-file=/etc/ferrylb/bgp/peer-1/password\n",
        "secretName: bgp\n",
        "add: [NET_ADMIN, NET_RAW, NET_BIND_SERVICE]",
        "node-role.example.com/lb: \"true\"",
        "maxSurge: 0",
        "requiredDuringSchedulingIgnoredDuringExecution",
    ] {
        assert!(text.contains(want), "bgp values: no {want:?} in\n{text}");
    }
}

#[test]
fn values_that_break_the_schema_are_refused() {
    for (set, field) in [
        ("replicaCount=two", "/replicaCount"),
        ("providers={gcp}", "/providers/0"),
        ("controller.logFormat=xml", "/controller/logFormat"),
        ("haproxy.mode=inline", "/haproxy/mode"),
        ("haproxy.threads=0", "/haproxy/threads"),
        (
            "haproxy.bgp.communities={65536:1}",
            "/haproxy/bgp/communities/0",
        ),
        ("haproxy.bgp.peers[0].asn=0", "/haproxy/bgp/peers/0"),
    ] {
        let out = run_helm(&["template", "ferrylb", CHART, "--set", set]);
        assert!(!out.status.success(), "--set {set} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(field), "--set {set}: {err}");
    }
    let out = run_helm(&["template", "ferrylb", CHART, "--set", "providers={haproxy}"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("haproxy.pool is required"));
    let out = run_helm(&[
        "template",
        "ferrylb",
        CHART,
        "-f",
        "charts/ferrylb/ci/bgp-values.yaml",
        "--set",
        "haproxy.vrrp.enabled=true",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("choose one"));
}

/// A kubeconfig that authenticates with `token` against the test API server.
fn token_kubeconfig(token: &str, path: &std::path::Path) {
    let admin = std::fs::read_to_string(env::shared().kubeconfig()).unwrap();
    let field = |key: &str| {
        admin
            .lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .unwrap_or_else(|| panic!("{key} in the admin kubeconfig"))
            .trim()
            .to_owned()
    };
    let (server, ca) = (field("server:"), field("certificate-authority:"));
    std::fs::write(
        path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\n\
             users:\n- name: ferrylb\n  user:\n    token: {token}\ncontexts:\n- name: ferrylb\n  context:\n    cluster: test\n    user: ferrylb\n\
             current-context: ferrylb\n"
        ),
    )
    .unwrap();
}

#[tokio::test]
async fn installed_chart_grants_exactly_what_a_service_lifecycle_needs() {
    let env = env::shared();
    let admin = k::client(env).await;
    let conf = aws::sdk_config(env).await;
    let seed = aws::seed(&conf, 1).await;
    let ns = k::namespace(&admin, "chart").await;
    let release = ns.clone();
    let fullname = format!("{release}-ferrylb");
    let kubeconfig = env.kubeconfig();
    let install = run_helm(&[
        "install",
        &release,
        CHART,
        "--namespace",
        &ns,
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "-f",
        "charts/ferrylb/ci/aws-values.yaml",
        "--set",
        &format!("aws.clusterName={}", seed.cluster),
        // No Prometheus Operator (and so no ServiceMonitor kind) here.
        "--set",
        "metrics.serviceMonitor.enabled=false",
    ]);
    assert!(
        install.status.success(),
        "helm install:\n{}",
        String::from_utf8_lossy(&install.stderr)
    );

    // Every object is there.
    assert!(
        Api::<Deployment>::namespaced(admin.clone(), &ns)
            .get_opt(&fullname)
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        Api::<ServiceAccount>::namespaced(admin.clone(), &ns)
            .get_opt(&fullname)
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        Api::<PodDisruptionBudget>::namespaced(admin.clone(), &ns)
            .get_opt(&fullname)
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        Api::<Service>::namespaced(admin.clone(), &ns)
            .get_opt(&format!("{fullname}-metrics"))
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        Api::<ClusterRole>::all(admin.clone())
            .get_opt(&fullname)
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        Api::<ClusterRoleBinding>::all(admin.clone())
            .get_opt(&fullname)
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        Api::<Role>::namespaced(admin.clone(), &ns)
            .get_opt(&format!("{fullname}-leader"))
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        Api::<RoleBinding>::namespaced(admin.clone(), &ns)
            .get_opt(&format!("{fullname}-leader"))
            .await
            .unwrap()
            .is_some()
    );

    // The chart's ServiceAccount's own token.
    let token = Api::<ServiceAccount>::namespaced(admin.clone(), &ns)
        .create_token_request(
            &fullname,
            &PostParams::default(),
            &TokenRequest {
                spec: TokenRequestSpec {
                    audiences: vec!["https://kubernetes.default.svc".into()],
                    expiration_seconds: Some(3600),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .expect("TokenRequest")
        .status
        .expect("a token")
        .token;
    let dir = env::tempdir("chart");
    let sa_kubeconfig = dir.join("kubeconfig");
    token_kubeconfig(&token, &sa_kubeconfig);

    // A node and the controller, running as that ServiceAccount.
    let label = format!("test.ferrylb.io/{ns}");
    let node = format!("{ns}-n0");
    let mut n = k::node(&node, "127.0.5.1");
    n.metadata.labels = Some([(label.clone(), "true".to_owned())].into());
    n.spec.get_or_insert_default().provider_id = Some(seed.provider_id(0));
    Api::<Node>::all(admin.clone())
        .create(&PostParams::default(), &n)
        .await
        .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferrylb"));
    cmd.args([
        "controller",
        "--providers",
        "aws",
        "--default-provider",
        "aws",
    ])
    .args(["--kubeconfig", sa_kubeconfig.to_str().unwrap()])
    .args([
        "--namespace",
        &ns,
        "--node-selector",
        &format!("{label}=true"),
    ])
    .args(["--metrics-address", "127.0.0.1:0"])
    .args([
        "--leader-elect",
        "--leader-election-namespace",
        &ns,
        "--leader-election-lease",
        &fullname,
    ])
    .args([
        "--aws-cluster-name",
        &seed.cluster,
        "--aws-vpc-id",
        &seed.vpc,
    ])
    .args([
        "--aws-region",
        "us-east-1",
        "--aws-endpoint-url",
        &env.aws_endpoint(),
    ])
    .args(["--aws-api-rate-scale", "1000"])
    .env("POD_NAME", "chart-test")
    .env("AWS_ACCESS_KEY_ID", "testing")
    .env("AWS_SECRET_ACCESS_KEY", "testing")
    .env("AWS_EC2_METADATA_DISABLED", "true");
    let _ctl = ChildGuard::spawn("ferrylb", &mut cmd, &dir.join("ferrylb.log"));

    // A whole lifecycle under exactly those permissions, pod targets (and
    // so the EndpointSlice watch) included.
    let services = Api::<Service>::namespaced(admin.clone(), &ns);
    Api::<k8s_openapi::api::discovery::v1::EndpointSlice>::namespaced(admin.clone(), &ns)
        .create(
            &PostParams::default(),
            &k::endpoint_slice("web-a", "web", 80, 8080, &["10.0.9.5"], &[]),
        )
        .await
        .unwrap();
    let mut web = k::lb_service("web", &[80]);
    web.metadata.annotations = Some(
        [(
            "service.beta.kubernetes.io/aws-load-balancer-nlb-target-type".to_owned(),
            "ip".to_owned(),
        )]
        .into(),
    );
    services.create(&PostParams::default(), &web).await.unwrap();
    let log = dir.join("ferrylb.log");
    let within = Duration::from_secs(40);
    wait::until("web has a hostname", within, || async {
        services
            .get_opt("web")
            .await
            .ok()
            .flatten()
            .and_then(|s| ingress_hostname(&s))
    })
    .await;
    let targets = aws::inventory(&conf, &seed).await.targets;
    assert_eq!(
        targets
            .iter()
            .map(|(_, id, port)| (id.as_str(), *port))
            .collect::<Vec<_>>(),
        [("10.0.9.5", 8080)],
        "the pod is the target"
    );
    services
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    wait::until(
        "web deleted (finalizer removed by the controller)",
        within,
        || async {
            services
                .get_opt("web")
                .await
                .unwrap()
                .is_none()
                .then_some(())
        },
    )
    .await;
    assert!(aws::inventory(&conf, &seed).await.is_empty());
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !text.contains("forbidden"),
        "the controller was refused something:\n{text}"
    );

    // And nothing more: verbs and resources the chart does not grant.
    let sa = {
        let kc = kube::config::Kubeconfig::read_from(&sa_kubeconfig).unwrap();
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap();
        kube::Client::try_from(cfg).unwrap()
    };
    let forbidden =
        |r: Result<(), kube::Error>| matches!(r, Err(kube::Error::Api(s)) if s.code == 403);
    services
        .create(&PostParams::default(), &k::lb_service("other", &[81]))
        .await
        .unwrap();
    let sa_services = Api::<Service>::namespaced(sa.clone(), &ns);
    assert!(
        forbidden(
            sa_services
                .delete("other", &DeleteParams::default())
                .await
                .map(drop)
        ),
        "delete services"
    );
    assert!(
        forbidden(
            Api::<Secret>::namespaced(sa.clone(), &ns)
                .list(&Default::default())
                .await
                .map(drop)
        ),
        "list secrets"
    );
    assert!(
        forbidden(
            Api::<Node>::all(sa.clone())
                .delete(&node, &DeleteParams::default())
                .await
                .map(drop)
        ),
        "delete nodes"
    );
    // The created Service is served; delete it while the controller runs.
    services
        .delete("other", &DeleteParams::default())
        .await
        .unwrap();
    wait::until("other deleted", within, || async {
        services
            .get_opt("other")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;

    let uninstall = run_helm(&[
        "uninstall",
        &release,
        "--namespace",
        &ns,
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
    ]);
    assert!(
        uninstall.status.success(),
        "{}",
        String::from_utf8_lossy(&uninstall.stderr)
    );
    k::delete_node(&admin, &node).await;
}
