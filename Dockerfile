# megaindex on an NGC PyTorch image: the container's CUDA build of torch, Transformer Engine, apex,
# flash-attn, NCCL and cuDNN are used as they are; only megatron-core and megaindex are added.
#
#   docker build -t megaindex:latest .
#   docker run --rm --gpus all megaindex:latest                  # megaindex doctor
#   enroot import -o megaindex.sqsh dockerd://megaindex:latest    # for MEGAINDEX_CONTAINER=pyxis
#   apptainer build megaindex.sif docker-daemon://megaindex:latest  # for MEGAINDEX_CONTAINER=apptainer
#
# NGC_TAG must ship torch >= 2.11 (setup.py) and Python >= 3.12 (megatron-core 0.19); check the
# result with `megaindex doctor`, which prints the versions and the attention path in use.
ARG NGC_TAG=26.04
FROM nvcr.io/nvidia/pytorch:${NGC_TAG}-py3

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# megatron-core and megaindex go in with --no-deps: NGC's torch is a pre-release build (e.g.
# 2.11.0a0+...), which does not satisfy `torch>=2.11`, so a normal install would download a
# generic torch over the container's (and fight /etc/pip/constraint.txt). Their other
# dependencies are listed here instead; most are already in the image and are kept.
RUN pip install --no-cache-dir --no-deps megatron-core==0.19.2 \
 && pip install --no-cache-dir "packaging>=24.2" "sentencepiece>=0.2" "tensorboard>=2.15" \
      "safetensors>=0.4" "pyyaml>=6" "psutil>=5.9" "einops>=0.7" "matplotlib>=3.8"

# Training runs as an unprivileged user. (pyxis/enroot and apptainer run as the submitting user
# anyway; this is for docker.)
# A fixed numeric id, so file ownership means the same on the host (bind-mounted runs/, logs/).
ARG UID=10001
RUN useradd --create-home --shell /bin/bash --uid "${UID}" --user-group megaindex
WORKDIR /opt/megaindex
COPY --chown=${UID}:${UID} . .
RUN pip install --no-cache-dir --no-deps . \
 && python -c "import megaindex.cli"

# Same as the launch scripts: megatron's TP/SP overlap needs in-order kernel issue.
ENV CUDA_DEVICE_MAX_CONNECTIONS=1 \
    PYTHONUNBUFFERED=1 \
    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
USER ${UID}:${UID}
CMD ["megaindex", "doctor"]
