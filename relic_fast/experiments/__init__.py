"""Experiments that sit above the trainer and the evaluation code: the demo experiment (pretrain, then
probe every variant the same way), the supervised reference and the peer-library row."""
