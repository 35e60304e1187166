"""S3, retraining: the options and presets (:mod:`.options`), the :class:`Trainer` with evaluation,
size report and export (:mod:`.trainer`), and evaluating a trained run's files (:mod:`.evaluate`).
``fastnas train`` (``python -m fastnas.train``) is its command line."""

from fastnas.space.genotype import resolve_genotype
from fastnas.train.options import PRESETS, TrainConfig
from fastnas.train.trainer import Trainer, evaluate_model, export_model, model_report

__all__ = ["TrainConfig", "PRESETS", "Trainer", "evaluate_model", "export_model", "model_report", "resolve_genotype"]
