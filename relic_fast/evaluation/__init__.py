"""Evaluation of a pretrained encoder: linear probe, kNN monitor, and the demo experiment.

- `features`: frozen-encoder feature extraction (`extract_features`);
- `knn`: the temperature-weighted cosine kNN classifier (`knn_classify`, `knn_accuracy`);
- `linear`: the linear-probe fitting (SGD) and top-k accuracy;
- `logistic`: the strong probe, standardized features + L-BFGS logistic regression (`eval.linear_mode = "logistic"`);
- `protocol`: dataset-level `linear_eval` and `knn_eval` over the DALI eval loaders;
- `session`: one linear evaluation as a job: ranks, stop signals, checkpoints and `--resume`, progress, cost;
- `classifier`: the trained head's file (`head.pt`) and encoder + head as one classifier (`export --head`);
- `runner`: what `relic-fast linear-eval` does (splits of a data root, checkpoint config, JSON report);
- `experiment`: the demo experiment (the default-init random baseline vs RELICv2 with/without saliency masking);
- `peer`: the experiment's peer row, lightly's SimCLR on the same encoder and budget (optional);
- `supervised`: the experiment's supervised reference.
"""

from relic_fast.evaluation.features import extract_features
from relic_fast.evaluation.knn import knn_accuracy, knn_classify
from relic_fast.evaluation.linear import evaluate_head, fit_linear_on_features, topk_accuracy
from relic_fast.evaluation.logistic import fit_logistic_on_features
from relic_fast.evaluation.protocol import knn_eval, linear_eval

__all__ = ["evaluate_head", "extract_features", "fit_linear_on_features", "fit_logistic_on_features", "knn_accuracy",
           "knn_classify", "knn_eval", "linear_eval", "topk_accuracy"]
