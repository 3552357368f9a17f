"""Long-context evaluation: engines (forced scoring, perplexity, generation), RoPE variants, tasks.

`EvalError` is the one error type for bad evaluation input (a missing checkpoint, a prompt longer
than the model/variant holds, an unknown task or variant); its message names the input and what to
do. The package never imports megatron-core at import time (engines import it when built).
"""


class EvalError(ValueError):
    """Evaluation input that cannot be used; the message says which and what to do."""
