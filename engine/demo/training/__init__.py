"""How the bundled demo weights were made: training scripts for the target, drafter, tree head, MAR
models and the quality classifier, each runnable with ``python -m specar.demo.training.<script>``.
Nothing here is imported when sampling."""
