"""Research tooling kept apart from the product: benchmarks (``specar bench``, ``specar forward-bench``),
speed/quality statistics (``specar pareto``), token fidelity, condition evidence by teacher forcing and the
demo's quality evaluator. Only the CLI's lab commands, the demo's training scripts and the tests import it."""
