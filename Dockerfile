# FerryLB's container image: a release build on Debian, run as a non-root
# user on a small Debian base.
#
#   docker build -t ferrylb .
#
# The image holds the ferrylb binary at /usr/local/bin/ferrylb, the user
# 65532:65532, the CA bundle, and what the HAProxy provider runs at run time:
# `haproxy` (every configuration is checked with `haproxy -c` before it is
# installed; HAProxy itself runs in its own container, the chart's sidecar),
# `ip` and `arping` (--haproxy-vip-interface adds VIPs to an interface
# and announces them), and `keepalived` (--haproxy-vrrp runs it to move the
# VIPs between replicas) with `nft` (nftables: a replica handing its VIPs
# over pauses new handshakes to them first), and `bird` and `birdc` (BIRD 2:
# --haproxy-bgp runs it to announce the VIPs over BGP). The lab builds the same layout without a registry
# from this machine's Debian files: tests/lab/images/build.

FROM rust:1.88-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin ferrylb \
 && strip target/release/ferrylb

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates haproxy iproute2 iputils-arping bird2 keepalived nftables \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/ferrylb /usr/local/bin/ferrylb
RUN printf 'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >>/etc/passwd \
 && printf 'nonroot:x:65532:\n' >>/etc/group
# glibc raises its mmap threshold each time a large block is freed, after
# which the multi-megabyte HAProxy configurations FerryLB renders come from
# the heap and fragment it: peak memory at 2,000 load balancers was
# 145-174 MiB, 109 MiB with the threshold fixed (BENCHMARKS.md).
ENV MALLOC_MMAP_THRESHOLD_=131072
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/ferrylb"]
CMD ["controller", "--help"]
