//! The test environment's AWS is moto serving ELBv2 and EC2, driven by the
//! official Rust SDK: an NLB with a target group, a listener and registered
//! targets is created and deleted, and nothing is left behind.

mod support;

use aws_sdk_ec2::types::{InstanceStateName, InstanceType};
use aws_sdk_elasticloadbalancingv2::types::{
    Action, ActionTypeEnum, LoadBalancerTypeEnum, ProtocolEnum, TargetDescription, TargetTypeEnum,
};
use support::{aws, env};

#[tokio::test]
async fn nlb_with_target_group_listener_and_targets_is_created_and_fully_deleted() {
    let conf = aws::sdk_config(env::shared()).await;
    let ec2 = aws_sdk_ec2::Client::new(&conf);
    let elb = aws_sdk_elasticloadbalancingv2::Client::new(&conf);

    // A VPC with one subnet in each of two zones, and two instances.
    let vpc = ec2
        .create_vpc()
        .cidr_block("10.0.0.0/16")
        .send()
        .await
        .unwrap();
    let vpc_id = vpc.vpc().and_then(|v| v.vpc_id()).unwrap().to_owned();
    let mut subnets = Vec::new();
    for (cidr, zone) in [("10.0.1.0/24", "us-east-1a"), ("10.0.2.0/24", "us-east-1b")] {
        let s = ec2
            .create_subnet()
            .vpc_id(&vpc_id)
            .cidr_block(cidr)
            .availability_zone(zone)
            .send()
            .await
            .unwrap();
        subnets.push(s.subnet().and_then(|s| s.subnet_id()).unwrap().to_owned());
    }
    let run = ec2
        .run_instances()
        .image_id("ami-12345678")
        .instance_type(InstanceType::T3Micro)
        .subnet_id(&subnets[0])
        .min_count(2)
        .max_count(2)
        .send()
        .await
        .unwrap();
    let instances: Vec<String> = run
        .instances()
        .iter()
        .map(|i| i.instance_id().unwrap().to_owned())
        .collect();
    assert_eq!(instances.len(), 2);

    // NLB, target group on a nodePort, targets, listener.
    let lb = elb
        .create_load_balancer()
        .name("ferrylb-env-test")
        .r#type(LoadBalancerTypeEnum::Network)
        .set_subnets(Some(subnets.clone()))
        .send()
        .await
        .unwrap();
    let lb_arn = lb.load_balancers()[0]
        .load_balancer_arn()
        .unwrap()
        .to_owned();
    let tg = elb
        .create_target_group()
        .name("ferrylb-env-test-tg")
        .protocol(ProtocolEnum::Tcp)
        .port(31080)
        .vpc_id(&vpc_id)
        .target_type(TargetTypeEnum::Instance)
        .send()
        .await
        .unwrap();
    let tg_arn = tg.target_groups()[0].target_group_arn().unwrap().to_owned();
    let mut register = elb.register_targets().target_group_arn(&tg_arn);
    for id in &instances {
        register = register.targets(TargetDescription::builder().id(id).port(31080).build());
    }
    register.send().await.unwrap();
    let listener = elb
        .create_listener()
        .load_balancer_arn(&lb_arn)
        .protocol(ProtocolEnum::Tcp)
        .port(80)
        .default_actions(
            Action::builder()
                .r#type(ActionTypeEnum::Forward)
                .target_group_arn(&tg_arn)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let listener_arn = listener.listeners()[0].listener_arn().unwrap().to_owned();

    // Everything reads back as created.
    let health = elb
        .describe_target_health()
        .target_group_arn(&tg_arn)
        .send()
        .await
        .unwrap();
    let mut registered: Vec<String> = health
        .target_health_descriptions()
        .iter()
        .filter_map(|d| d.target().and_then(|t| t.id()).map(str::to_owned))
        .collect();
    registered.sort();
    let mut expected = instances.clone();
    expected.sort();
    assert_eq!(registered, expected);
    let listeners = elb
        .describe_listeners()
        .load_balancer_arn(&lb_arn)
        .send()
        .await
        .unwrap();
    assert_eq!(listeners.listeners().len(), 1);
    assert_eq!(listeners.listeners()[0].port(), Some(80));

    // Delete in the order ELBv2 requires, then find nothing left.
    elb.delete_listener()
        .listener_arn(&listener_arn)
        .send()
        .await
        .unwrap();
    elb.delete_load_balancer()
        .load_balancer_arn(&lb_arn)
        .send()
        .await
        .unwrap();
    elb.delete_target_group()
        .target_group_arn(&tg_arn)
        .send()
        .await
        .unwrap();
    ec2.terminate_instances()
        .set_instance_ids(Some(instances.clone()))
        .send()
        .await
        .unwrap();

    // moto is shared by every test running alongside: look in this VPC.
    let lbs = elb
        .describe_load_balancers()
        .names("ferrylb-env-test")
        .send()
        .await;
    let left: Vec<_> = lbs
        .iter()
        .flat_map(|r| r.load_balancers())
        .filter(|l| l.vpc_id() == Some(vpc_id.as_str()))
        .collect();
    assert!(left.is_empty(), "load balancers left: {left:?}");
    let tgs = elb
        .describe_target_groups()
        .names("ferrylb-env-test-tg")
        .send()
        .await;
    let left: Vec<_> = tgs
        .iter()
        .flat_map(|r| r.target_groups())
        .filter(|t| t.vpc_id() == Some(vpc_id.as_str()))
        .collect();
    assert!(left.is_empty(), "target groups left: {left:?}");
    let live = ec2
        .describe_instances()
        .set_instance_ids(Some(instances.clone()))
        .send()
        .await
        .unwrap();
    let running: Vec<_> = live
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter(|i| i.state().and_then(|s| s.name()) != Some(&InstanceStateName::Terminated))
        .collect();
    assert!(running.is_empty(), "instances left running: {running:?}");
}
