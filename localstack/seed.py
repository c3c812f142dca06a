"""Creates a VPC, tagged subnets and instances for FerryLB's AWS provider.

See localstack/seed for how to run it.
"""

import argparse
import os

import boto3

ZONES = ("a", "b")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--endpoint", default=os.environ.get("AWS_ENDPOINT_URL", "http://127.0.0.1:4566"))
    p.add_argument("--region", default=os.environ.get("AWS_REGION", "us-east-1"))
    p.add_argument("--cluster", default="demo")
    p.add_argument("--nodes", type=int, default=3)
    a = p.parse_args()

    session = boto3.session.Session(
        aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "test"),
        aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "test"),
        region_name=a.region,
    )
    ec2 = session.client("ec2", endpoint_url=a.endpoint)

    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    ec2.create_tags(Resources=[vpc], Tags=[{"Key": "Name", "Value": f"{a.cluster}-vpc"}])
    subnets = []
    for i, z in enumerate(ZONES):
        zone = f"{a.region}{z}"
        s = ec2.create_subnet(
            VpcId=vpc,
            CidrBlock=f"10.0.{i + 1}.0/24",
            AvailabilityZone=zone,
            TagSpecifications=[
                {
                    "ResourceType": "subnet",
                    "Tags": [
                        {"Key": "Name", "Value": f"{a.cluster}-{zone}"},
                        {"Key": "kubernetes.io/role/elb", "Value": "1"},
                        {"Key": "kubernetes.io/role/internal-elb", "Value": "1"},
                        {"Key": f"kubernetes.io/cluster/{a.cluster}", "Value": "shared"},
                    ],
                }
            ],
        )["Subnet"]
        subnets.append((s["SubnetId"], zone))

    print(f"vpc {vpc}")
    for sid, zone in subnets:
        print(f"subnet {sid} {zone}")
    for n in range(a.nodes):
        sid, zone = subnets[n % len(subnets)]
        inst = ec2.run_instances(
            ImageId="ami-12345678",
            InstanceType="t3.micro",
            SubnetId=sid,
            MinCount=1,
            MaxCount=1,
            TagSpecifications=[
                {"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": f"{a.cluster}-node-{n}"}]}
            ],
        )["Instances"][0]
        print(f"node {a.cluster}-node-{n} {inst['PrivateIpAddress']} aws:///{zone}/{inst['InstanceId']}")


if __name__ == "__main__":
    main()
