# mathrl on a CPU:  docker build -t mathrl .
#   docker run --rm -v "$PWD/runs:/home/mathrl/runs" mathrl quickstart
#   docker run --rm -v "$PWD/runs:/home/mathrl/runs" mathrl train -c countdown/smoke --out runs/smoke
# tests/test_install.py runs this file's `RUN pip ...` lines, in order, in a fresh venv (it
# reads them from here), so the image and the tested install cannot drift apart.

# Stage 1: the wheel, built from the package sources alone (no tests, no checkout).
FROM python:3.11-slim AS wheel
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip wheel --no-deps --wheel-dir /dist .

# Stage 2: torch (CPU build) and the wheel; no compiler, no sources.
FROM python:3.11-slim
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore \
    PYTHONUNBUFFERED=1
# torch first, from the CPU index: PyPI's torch for Linux is the multi-GB CUDA build.
RUN pip install --index-url "$TORCH_INDEX_URL" "torch==$TORCH_VERSION"
COPY --from=wheel /dist /dist
RUN pip install /dist/mathrl-*.whl && rm -rf /dist

RUN useradd --create-home --uid 1000 --user-group mathrl && mkdir /home/mathrl/runs \
    && chown mathrl:mathrl /home/mathrl/runs
# numeric, so a runtime that only allows non-root users (runAsNonRoot) can check it
USER 1000:1000
# Model and tokenizer downloads (hub ids in the prod presets) and mathrl's GGUF / GSM8K cache
# stay in the user's home; mount a volume on ~/.cache to keep them between containers.
ENV HF_HOME=/home/mathrl/.cache/huggingface MATHRL_CACHE=/home/mathrl/.cache/mathrl
# Relative --out paths (the default runs/<stamp>, runs/quickstart) land in the volume.
WORKDIR /home/mathrl
VOLUME /home/mathrl/runs
ENTRYPOINT ["mathrl"]
CMD ["--help"]
