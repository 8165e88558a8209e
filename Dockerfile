# StreamBroker container image: `docker build -t stream-broker .`
# (docker-compose.yml builds it for its three brokers).

# ---------------------------------------------------------------------------------------------
# Build stage. Any Swift 6.x bookworm image whose toolchain is 6.2 or newer works
# (swift:6.2-bookworm, swift:6.3-bookworm, ...). Package.swift itself says tools 6.1, but the
# dependency versions it requires (hummingbird >= 2.28.1, swift-log >= 1.16.2,
# swift-collections >= 1.6.0, swift-service-lifecycle >= 2.13.0, ...) declare
# swift-tools-version 6.2, so swift:6.1-bookworm cannot resolve the package.
# Build and runtime stages must both be Debian 12 (bookworm): the binary links the distro's
# libmongoc/libbson/libsqlite3 dynamically.
FROM swift:6.2-bookworm AS build

RUN export DEBIAN_FRONTEND=noninteractive \
 && apt-get update -q \
 && apt-get install -y -q --no-install-recommends \
      libmongoc-dev libbson-dev libsqlite3-dev libssl-dev libgoogle-perftools-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src

# Manifest first (Package.swift, and Package.resolved when the context has one: SwiftPM keeps
# its pins unless the manifest needs something else) so that the dependency fetch is cached
# across source changes.
COPY Package.* ./
RUN swift package resolve

# Tests/ is copied because the manifest declares test targets and SwiftPM checks that every
# target's directory exists, even when only one product is built.
COPY Sources ./Sources
COPY Tests ./Tests
# The EmbedStaticFiles plugin builds the dashboard (web/) and the JavaScript client (clients/js/)
# into the executable.
COPY Plugins ./Plugins
COPY web ./web
COPY clients ./clients

# --static-swift-stdlib links the Swift runtime, Foundation and Foundation's ICU data into the
# binary, so the runtime image needs no Swift toolchain.
# swift-backtrace-static is the toolchain's crash backtracer for static-stdlib binaries.
RUN swift build -c release --product stream-broker --static-swift-stdlib \
 && install -D -m 0755 "$(swift build -c release --show-bin-path)/stream-broker" /out/stream-broker \
 && install -D -m 0755 /usr/libexec/swift/linux/swift-backtrace-static /out/swift-backtrace-static

# ---------------------------------------------------------------------------------------------
# Runtime stage.
FROM debian:bookworm-slim

# What the binary needs at run time (checked with `ldd` on a --static-swift-stdlib build):
#   libmongoc-1.0-0, libbson-1.0-0  MongoDB store (apt pulls their own dependencies:
#                                   libssl3, libsasl2-2, libsnappy1v5, libzstd1, zlib1g,
#                                   libicu72, libmongocrypt0)
#   libsqlite3-0                    embedded store
#   libtcmalloc-minimal4            the broker's allocator (tcmalloc, linked in Package.swift)
#   libstdc++6, libgcc-s1, libc6    all a static-stdlib Swift binary still links dynamically
#                                   (already in bookworm-slim; listed so that the dependency is
#                                   explicit). No libcurl4 / libxml2: the broker does not use
#                                   FoundationNetworking or FoundationXML.
#   ca-certificates                 TLS to MongoDB (mongodb+srv://, tls=true)
#   wget                            the HEALTHCHECK below (smaller than curl + libcurl4)
RUN export DEBIAN_FRONTEND=noninteractive \
 && apt-get update -q \
 && apt-get install -y -q --no-install-recommends \
      libmongoc-1.0-0 libbson-1.0-0 libsqlite3-0 libtcmalloc-minimal4 \
      libstdc++6 libgcc-s1 \
      ca-certificates wget \
 && rm -rf /var/lib/apt/lists/*

# Unprivileged user; its home holds the SQLite data directory when MONGO_URL is unset.
RUN groupadd --system --gid 10001 broker \
 && useradd --system --uid 10001 --gid broker --home-dir /var/lib/stream-broker --create-home \
      --shell /usr/sbin/nologin broker

COPY --from=build /out/stream-broker /usr/local/bin/stream-broker
COPY --from=build /out/swift-backtrace-static /usr/local/libexec/swift-backtrace-static

USER broker
WORKDIR /var/lib/stream-broker
ENV BUS_HOST=0.0.0.0 \
    BUS_PORT=7070 \
    BUS_DATA_DIR=/var/lib/stream-broker/data \
    SWIFT_BACKTRACE=enable=yes,sanitize=yes,threads=all,images=all,interactive=no,swift-backtrace=/usr/local/libexec/swift-backtrace-static

EXPOSE 7070

# /readyz is 200 once the store is open (and, on MongoDB, reachable with its indexes in place),
# 503 otherwise; wget exits non-zero on both 503 and a refused connection.
HEALTHCHECK --interval=5s --timeout=3s --start-period=30s --retries=3 \
  CMD wget -q --tries=1 --timeout=2 -O /dev/null "http://127.0.0.1:${BUS_PORT}/readyz" || exit 1

ENTRYPOINT ["/usr/local/bin/stream-broker"]
