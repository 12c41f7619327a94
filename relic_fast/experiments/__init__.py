"""Experiments that sit above the trainer and the evaluation code: the experiment (every row of `variants`
trained, then probed the same way), its summary table, the supervised reference and the lightly peer rows."""
