# TrendStory container image.
#
# The build stage compiles the release binary and fetches the pinned ONNX Runtime library
# (from the onnxruntime wheel on PyPI, checked by sha256). The model is not baked in: mount
# an exported folder (scripts/fetch-model.sh or scripts/export_onnx.py) at /models/current.
#   docker build -t trendstory .
#   docker run -p 8080:8080 -v $PWD/onnx/tinyllama-1.1b-chat-int4:/models/current:ro trendstory
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-pip \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY scripts/fetch-onnxruntime.sh ./scripts/
RUN PYTHON=python3 ./scripts/fetch-onnxruntime.sh && cargo build --release --locked

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 trendstory
COPY --from=build /src/target/release/trendstory /usr/local/bin/trendstory
COPY --from=build /src/.cache/onnxruntime/libonnxruntime.so.1.32.0 /opt/onnxruntime/
ENV ORT_DYLIB_PATH=/opt/onnxruntime/libonnxruntime.so.1.32.0 \
    TRENDSTORY_MODEL__DIR=/models/current \
    TRENDSTORY_SERVER__HOST=0.0.0.0 \
    TRENDSTORY_SERVER__PORT=8080
USER trendstory
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/trendstory"]
CMD ["serve"]
