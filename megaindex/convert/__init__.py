"""HF <-> megatron-core state-dict mapping (used by tools/convert_*.py)."""
