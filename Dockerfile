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

# The dashboard's two npm packages (basemap data, QR encoder), pinned by web/package-lock.json.
FROM node:20-bookworm-slim AS web
WORKDIR /web
COPY web/package.json web/package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund
COPY web/ ./

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 gps
COPY --from=build /out/ /usr/local/bin/
COPY --from=web /web/ /usr/share/gps-telemetry/web/
ENV WEB_DIR=/usr/share/gps-telemetry/web
USER gps
