"""The auto search: preflight, candidate trials, the successive-halving order and the answer.
Plain Python over model descriptions and measured results: the service runs each trial as a
child job and asks this package what to run next (docs/auto.md). No torch, no onnxruntime."""

from optimizers.auto.answer import answer
from optimizers.auto.preflight import Preflight, preflight
from optimizers.auto.search import TrialOutcome, TrialPlan, next_trials

__all__ = ["Preflight", "TrialOutcome", "TrialPlan", "answer", "next_trials", "preflight"]
