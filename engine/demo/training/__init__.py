"""How the bundled demo weights were made: training scripts for the target, drafter, MAR models and the
quality classifier, each runnable with ``python -m specar.demo.training.<script>`` (the tree head comes
from ``specar train-head``, which trains one for any discrete model). Nothing here is imported when
sampling."""
