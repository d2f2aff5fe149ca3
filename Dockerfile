# Multi-stage build of the two binaries: `logcluster` (every data-plane role and the client
# commands) and `logcluster-operator`. The runtime image is distroless (no shell, no package
# manager) and runs as an unprivileged user.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p logcluster -p logcluster-operator \
 && mkdir /out \
 && cp target/release/logcluster target/release/logcluster-operator /out/

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/logcluster /out/logcluster-operator /usr/local/bin/
USER 10001:10001
# Ingest (TLS), UDP, syslog, syslog over TLS, HTTP, cluster RPC.
EXPOSE 3001 3002/udp 5514 5514/udp 6514 3100 7000
ENTRYPOINT ["logcluster"]
