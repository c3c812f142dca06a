# FerryLB's container image: a static-ish release build on Debian, run as a
# non-root user on a small Debian base. HAProxy runs in its own container
# (the chart's sidecar), so the image carries only the ferrylb binary.
#
#   docker build -t ferrylb .

FROM rust:1.88-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin ferrylb \
 && strip target/release/ferrylb

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/ferrylb /usr/local/bin/ferrylb
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/ferrylb"]
CMD ["controller", "--help"]
