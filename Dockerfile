# syntax=docker/dockerfile:1
# An example image: a static-ish release build on Debian, run as a non-root user on distroless.
# Build with `docker build -t tessera .`; see README, "Running in production".

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    TESSERA_PACK_RELOCS=1 cargo build --release --locked --bin tessera \
 && cp target/release/tessera /tessera \
 && mkdir -p /data /config \
 && printf 'listen = "0.0.0.0:8080"\n\n[database]\nurl = "sqlite:///data/tessera.db"\n' > /config/tessera.toml

# distroless/cc: glibc, CA certificates and nothing else (no shell); `nonroot` is uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /tessera /usr/local/bin/tessera
COPY --from=build --chown=65532:65532 /data /data
# The image's defaults are a config file, not variables: variables win over any file, so a file
# the operator mounts here (or names with TESSERA_CONFIG) would otherwise be overridden.
COPY --from=build /config/tessera.toml /etc/tessera/tessera.toml
ENV TESSERA_CONFIG=/etc/tessera/tessera.toml
VOLUME /data
# A relative database path (the binary's default, `sqlite://tessera.db`, when a mounted file
# names none) lands on the volume, not in the container's writable layer.
WORKDIR /data
EXPOSE 8080
USER nonroot
ENTRYPOINT ["/usr/local/bin/tessera"]
CMD ["serve"]
