# One image with the four services, gps-setup and loadgen; docker-compose.yml picks the binary.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --workspace --bins \
 && mkdir -p /out \
 && for b in ingest processor fanout query-api gps-setup loadgen; do \
      if [ -f target/release/$b ]; then cp target/release/$b /out/; fi; done

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 gps
COPY --from=build /out/ /usr/local/bin/
USER gps
