use super::*;

fn parse(pairs: &[(&str, &str)]) -> Result<AwsOptions, ProviderError> {
    AwsOptions::parse(
        &pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    )
}

#[test]
fn no_annotations_give_aws_defaults() {
    let o = parse(&[]).unwrap();
    assert_eq!(o, AwsOptions::default());
    assert_eq!(o.scheme, Scheme::InternetFacing);
    assert_eq!(o.target_type, TargetType::Instance);
}

#[test]
fn the_names_users_already_write_are_understood() {
    let o = parse(&[
        (TYPE, "external"),
        (SCHEME, "internal"),
        (TARGET_TYPE, "ip"),
        (SUBNETS, "subnet-1, subnet-2"),
        (HC_PROTOCOL, "HTTP"),
        (HC_PORT, "8080"),
        (HC_PATH, "/ready"),
        (HC_INTERVAL, "10"),
        (ATTRIBUTES, "load_balancing.cross_zone.enabled=true"),
        (EXTRA_TAGS, "team=payments, env = prod"),
        (
            SSL_CERT,
            "arn:aws:acm:us-east-1:123456789012:certificate/abc",
        ),
        (SSL_PORTS, "443,https"),
        (PROXY_PROTOCOL, "*"),
    ])
    .unwrap();
    assert_eq!(o.scheme, Scheme::Internal);
    assert_eq!(o.target_type, TargetType::Ip);
    assert_eq!(o.subnets, Some(vec!["subnet-1".into(), "subnet-2".into()]));
    assert_eq!(o.health.protocol, Some(HealthProtocol::Http));
    assert_eq!(o.health.port, Some(HealthPort::Port(8080)));
    assert_eq!(o.health.path.as_deref(), Some("/ready"));
    assert_eq!(o.health.interval, Some(10));
    assert_eq!(o.cross_zone, Some(true));
    assert_eq!(o.extra_tags.get("env").map(String::as_str), Some("prod"));
    let tls = o.tls.unwrap();
    assert_eq!(tls.policy, DEFAULT_SSL_POLICY);
    assert!(tls.ports.unwrap().contains("https"));
    assert!(o.proxy_protocol);
    assert!(o.warnings.is_empty());
}

#[test]
fn legacy_internal_annotation_and_its_conflicts() {
    assert_eq!(
        parse(&[(INTERNAL, "true")]).unwrap().scheme,
        Scheme::Internal
    );
    let e = parse(&[(SCHEME, "internet-facing"), (INTERNAL, "true")]).unwrap_err();
    assert!(e.message.contains(INTERNAL), "{}", e.message);
}

#[test]
fn every_bad_value_names_the_annotation_the_value_and_what_is_allowed() {
    for (key, value, allowed) in [
        (SCHEME, "public", "internet-facing, internal"),
        (TYPE, "clb", "nlb, external, nlb-ip"),
        (TARGET_TYPE, "pod", "instance, ip"),
        (IP_ADDRESS_TYPE, "ipv6", "ipv4, dualstack"),
        (HC_PROTOCOL, "udp", "tcp, http, https"),
        (HC_PORT, "70000", "traffic-port"),
        (HC_INTERVAL, "1", "from 5 to 300"),
        (HC_HEALTHY, "eleven", "from 2 to 10"),
        (HC_PATH, "healthz", "starting with /"),
        (CROSS_ZONE, "yes", "true or false"),
        (
            ATTRIBUTES,
            "deletion_protection.enabled=true",
            "load_balancing.cross_zone.enabled",
        ),
        (EXTRA_TAGS, "aws:owner=me", "key=value"),
        (EXTRA_TAGS, "a=b\nc", "key=value"),
        (SSL_CERT, "not-an-arn", "certificate ARN"),
        (PROXY_PROTOCOL, "v1", "\"*\""),
        (SUBNETS, "subnet-1;rm -rf", "subnet ids"),
        (SSL_PORTS, "443", "together with"),
    ] {
        let e = parse(&[(key, value)]).expect_err(value);
        assert_eq!(e.kind, ferrylb_model::ErrorKind::Permanent);
        assert_eq!(e.reason, "InvalidAnnotation");
        assert!(e.message.contains(key), "{key}: {}", e.message);
        assert!(
            e.message.contains(&format!("{value:?}")),
            "{key}: {}",
            e.message
        );
        assert!(e.message.contains(allowed), "{key}: {}", e.message);
    }
}

#[test]
fn unknown_annotations_of_the_family_are_reported_not_ignored() {
    let o = parse(&[(
        "service.beta.kubernetes.io/aws-load-balancer-eip-allocations",
        "eipalloc-1",
    )])
    .unwrap();
    assert_eq!(o.warnings.len(), 1);
    assert!(o.warnings[0].message.contains("eip-allocations"));
}

#[test]
fn external_without_a_scheme_is_internal_as_the_load_balancer_controller_documents() {
    assert_eq!(
        parse(&[(TYPE, "external")]).unwrap().scheme,
        Scheme::Internal
    );
    assert_eq!(
        parse(&[(TYPE, "nlb")]).unwrap().scheme,
        Scheme::InternetFacing
    );
    assert_eq!(
        parse(&[(TYPE, "external"), (SCHEME, "internet-facing")])
            .unwrap()
            .scheme,
        Scheme::InternetFacing
    );
    assert_eq!(
        parse(&[(TYPE, "external"), (INTERNAL, "false")])
            .unwrap()
            .scheme,
        Scheme::InternetFacing
    );
}

#[test]
fn an_invalid_subnet_entry_is_named() {
    let e = parse(&[(SUBNETS, "subnet-1, bad subnet!, subnet-3")]).unwrap_err();
    assert!(
        e.message.contains("entry \"bad subnet!\" is not valid"),
        "{e}"
    );
}

#[test]
fn ssl_cert_takes_a_list_the_first_as_the_default() {
    let t = parse(&[(SSL_CERT, "arn:aws:acm:x:1:certificate/b, arn:aws:acm:x:1:certificate/a, arn:aws:acm:x:1:certificate/c")])
        .unwrap()
        .tls
        .unwrap();
    assert_eq!(t.certificate_arn, "arn:aws:acm:x:1:certificate/b");
    assert_eq!(
        t.extra_certificates,
        [
            "arn:aws:acm:x:1:certificate/a",
            "arn:aws:acm:x:1:certificate/c"
        ]
    );
    let e = parse(&[(SSL_CERT, "arn:aws:acm:x:1:certificate/b,oops")]).unwrap_err();
    assert!(e.message.contains("entry \"oops\" is not an ARN"), "{e}");
}

/// `target-group-attributes`, the AWS Load Balancer Controller's
/// annotation: each key checked, with its allowed values named.
#[test]
fn target_group_attributes_are_checked_key_by_key() {
    let o = parse(&[(
        TARGET_GROUP_ATTRIBUTES_ANNOTATION,
        "deregistration_delay.timeout_seconds=30, preserve_client_ip.enabled=false,stickiness.type=source_ip",
    )])
    .unwrap();
    assert_eq!(
        o.target_group_attributes
            .get(DEREGISTRATION_DELAY)
            .map(String::as_str),
        Some("30")
    );
    assert_eq!(o.target_group_attributes.len(), 3);
    assert!(o.warnings.is_empty(), "a known annotation");
    for (value, says) in [
        (
            "deregistration_delay.timeout_seconds=3601",
            "an integer 0-3600",
        ),
        (
            "deregistration_delay.timeout_seconds=-1",
            "an integer 0-3600",
        ),
        ("preserve_client_ip.enabled=yes", "true or false"),
        ("stickiness.type=lb_cookie", "source_ip"),
        (
            "slow_start.duration_seconds=30",
            "key \"slow_start.duration_seconds\" is not supported",
        ),
        ("deregistration_delay.timeout_seconds", "is not key=value"),
    ] {
        let e = parse(&[(TARGET_GROUP_ATTRIBUTES_ANNOTATION, value)]).unwrap_err();
        assert!(
            e.message.starts_with(TARGET_GROUP_ATTRIBUTES_ANNOTATION),
            "{}",
            e.message
        );
        assert!(e.message.contains(says), "{value}: {}", e.message);
    }
    let e = parse(&[
        (PROXY_PROTOCOL, "*"),
        (
            TARGET_GROUP_ATTRIBUTES_ANNOTATION,
            "proxy_protocol_v2.enabled=false",
        ),
    ])
    .unwrap_err();
    assert!(e.message.contains("set only one"), "{}", e.message);
}
