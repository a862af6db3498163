"""The training curve: the published one, a canary that warns early when a run leaves it, and the figure.

The study's model card publishes its training loss every 100 optimizer steps (``reference/
study_training_loss.csv``, 505 points over the 50,546-step epoch). A wrong recipe (missing prefixes, another
normalisation, a learning rate off by a factor) shows in that curve within the first thousand steps, long
before the 12-hour epoch ends. :class:`LossCanary` compares the run's loss, smoothed over ``window`` steps, with
the published loss smoothed alike, at every log, and warns (Python warning, the log's ``canary`` entries) the
first time the two part by more than ``tolerance`` (relative) and again each time the run comes back or leaves.
It never stops training: an ablation is expected to leave the band, and the warning says by how much.
`plot_training` draws the run's loss (and held-out metrics) over the published curve, canary verdicts marked.
"""

from __future__ import annotations

import csv
import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from transformers import TrainerCallback

from colbench.atomic import write_png
from colbench.errors import InputError

logger = logging.getLogger(__name__)

REFERENCES = {"study": "study_training_loss.csv"}


class CanaryWarning(UserWarning):
    """The training loss left (or came back into) the band around the published curve."""


def reference_curve(name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, losses)`` of a published training curve shipped with the package (``REFERENCES``)."""
    text = resources.files("colbench.reference").joinpath(REFERENCES[name]).read_text(encoding="utf-8")
    rows = list(csv.DictReader(line for line in text.splitlines() if not line.startswith("#")))
    return np.array([int(r["step"]) for r in rows]), np.array([float(r["loss"]) for r in rows])


def _smoothed(steps: np.ndarray, losses: np.ndarray, at: float, window: int) -> float | None:
    """Mean of the losses logged in (at - window, at]; None when none was."""
    inside = (steps > at - window) & (steps <= at)
    return float(losses[inside].mean()) if inside.any() else None


@dataclass
class LossCanary(TrainerCallback):
    """A trainer callback checking the logged loss against a published curve (see the module docstring).

    ``from_step``: no verdict before it (the first logs are noisy and warmup differs little between recipes).
    ``events`` collects every verdict change as ``{step, loss, reference, ratio, inside}``.
    """

    reference: str = "study"
    tolerance: float = 0.25
    window: int = 500
    from_step: int = 500
    events: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ref_steps, self.ref_losses = reference_curve(self.reference)
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.inside: bool | None = None

    def observe(self, step: int, loss: float) -> dict[str, Any] | None:
        """Record one logged loss; returns the event (and warns) when the verdict changes, else None."""
        self.steps.append(int(step))
        self.losses.append(float(loss))
        if step < self.from_step or step > self.ref_steps[-1]:
            return None
        ours = _smoothed(np.array(self.steps), np.array(self.losses), step, self.window)
        published = _smoothed(self.ref_steps, self.ref_losses, step, max(self.window, 100))
        if ours is None or published is None:
            return None
        ratio = ours / published
        inside = abs(ratio - 1) <= self.tolerance
        if inside == self.inside:
            return None
        first, self.inside = self.inside is None, inside
        event = {"step": int(step), "loss": ours, "reference": published, "ratio": ratio, "inside": inside}
        self.events.append(event)
        if inside and first:  # on the curve from the first check: nothing to say
            logger.info("canary: at step %d the training loss is within %.0f%% of the %s curve", step,
                        100 * self.tolerance, self.reference)
            return event
        if inside:
            message = (f"canary: at step {step} the training loss ({ours:.4g}, mean over {self.window} steps) is back "
                       f"within {self.tolerance:.0%} of the {self.reference} curve ({published:.4g}).")
        else:
            message = (f"canary: at step {step} the training loss ({ours:.4g}, mean over {self.window} steps) is "
                       f"{ratio:.2f}x the {self.reference} curve's ({published:.4g}), outside the +-{self.tolerance:.0%} "
                       "band: if this run should reproduce the study, check its recipe before spending more GPU time.")
        logger.warning(message)
        warnings.warn(message, CanaryWarning, stacklevel=2)
        return event

    def on_train_begin(self, args, state, control, **kwargs):
        # A resumed run restores the earlier log: those losses count in the smoothing window again.
        if state.is_world_process_zero and not self.steps:
            for entry in state.log_history:
                if "loss" in entry and "step" in entry:
                    self.observe(entry["step"], entry["loss"])
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs and "loss" in logs:
            self.observe(state.global_step, logs["loss"])
        return control


def plot_training(log: Sequence[Mapping[str, Any]], path: str | Path, *, checkpoint: str | None = None,
                  eval_keys: Sequence[str] | None = None, reference: tuple[np.ndarray, np.ndarray] | None = None,
                  canary: Sequence[Mapping[str, Any]] = (), reference_label: str = "published study") -> Path:
    """Training loss per step (raw and smoothed) with the learning rate on a second axis; a lower panel
    with the held-out metrics (x100) per step when the log has any.

    ``log`` is the trainer's log history: dicts with ``step`` and some of ``loss``, ``learning_rate``
    and ``eval_...`` keys; ``eval_keys`` picks the held-out metrics to plot (default: every ``eval_*``
    score). ``reference`` = (steps, losses) of a published curve, drawn under the run's loss;
    ``canary`` events (`colbench.training_curve.LossCanary.events`) outside its band are marked. With
    ``checkpoint`` (an existing checkpoint evaluated, nothing trained) and an empty log, the figure says so.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only
    import matplotlib.pyplot as plt

    train = [e for e in log if "loss" in e and "step" in e]
    if not train and checkpoint and not log:
        fig, ax = plt.subplots(figsize=(8, 1.6))
        ax.axis("off")
        ax.text(0.5, 0.5, f"No training in this run: it evaluates the existing checkpoint\n{checkpoint}",
                ha="center", va="center", fontsize=11)
        return write_png(fig, path)
    if not train:
        raise InputError("training log has no entries with 'step' and 'loss': was training run with logging?")
    present = {k for e in log for k in e if k.startswith("eval_") and _is_score_key(k)}
    evals = sorted(present if eval_keys is None else present & set(eval_keys))
    steps = np.array([e["step"] for e in train], float)
    loss = np.array([e["loss"] for e in train], float)
    rows = 2 if evals else 1
    fig, axes = plt.subplots(rows, 1, figsize=(8, 3.6 * rows), sharex=True, squeeze=False)
    ax = axes[0, 0]
    if reference is not None:
        ax.plot(*reference, color="tab:gray", lw=1.5, label=f"{reference_label} (model card)")
    window = len(loss) // 10
    if window > 1:
        ax.plot(steps, loss, color="tab:blue", alpha=0.3, lw=1, label="loss")
        smooth = pd.Series(loss).rolling(window, min_periods=1).mean()
        ax.plot(steps, smooth, color="tab:blue", lw=2, label=f"loss, mean of {window} logs")
    else:  # under 20 logs: each one shown, not a "mean" of one
        ax.plot(steps, loss, color="tab:blue", lw=2, marker=".", label="loss")
    outside = [(e["step"], e["loss"]) for e in canary if not e["inside"]]
    if outside:
        ax.plot(*zip(*outside, strict=True), "x", color="tab:red", ms=9, mew=2, label="canary: outside the band")
    ax.set_ylabel("training loss (KL divergence)")
    ax.set_title("Training")
    ax.grid(alpha=0.3)
    handles, names = ax.get_legend_handles_labels()
    lr = [(e["step"], e["learning_rate"]) for e in train if "learning_rate" in e]
    if lr:
        twin = ax.twinx()
        twin.plot(*zip(*lr, strict=True), color="tab:red", lw=1.2, ls="--", label="learning rate")
        twin.set_ylabel("learning rate", color="tab:red")
        twin.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
        more, more_names = twin.get_legend_handles_labels()
        handles, names = handles + more, names + more_names
    ax.legend(handles, names, loc="upper right", fontsize=8)
    if evals:
        ev = axes[1, 0]
        for key in evals:
            points = [(e["step"], 100 * float(e[key])) for e in log if key in e and "step" in e]
            ev.plot(*zip(*points, strict=True), marker="o", label=key.removeprefix("eval_"))
            ev.annotate(f"{points[-1][1]:.1f}", points[-1], textcoords="offset points", xytext=(4, 4), fontsize=8)
        ev.margins(x=0.08, y=0.15)
        ev.set_ylabel("held-out metric (x100)")
        ev.legend(fontsize=8)
        ev.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("optimizer step")
    return write_png(fig, path)


TRAINING_LOG_COLUMNS = ("loss", "learning_rate", "grad_norm")


def log_table(log: Sequence[Mapping[str, Any]], eval_keys: Sequence[str] | None = None) -> pd.DataFrame:
    """The trainer's log history as the train notebook shows it: one row per logged step (index ``step``) with the
    training loss, learning rate and gradient norm and the held-out scores ``eval_keys`` (default: every ``eval_*``
    score), never the evaluator's runtime and throughput. A step logged by training and by the held-out evaluation
    is one row; a value the step did not log is NaN; a column no step logged is left out."""
    def shown(key: str) -> bool:
        if key in TRAINING_LOG_COLUMNS:
            return True
        return key in eval_keys if eval_keys is not None else key.startswith("eval_") and _is_score_key(key)

    rows: dict[int, dict[str, Any]] = {}
    for entry in log:
        if "step" in entry:
            rows.setdefault(int(entry["step"]), {}).update({k: v for k, v in entry.items() if shown(k)})
    logged = {key for row in rows.values() for key in row}
    scores = list(eval_keys) if eval_keys is not None else list(dict.fromkeys(k for row in rows.values() for k in row))
    columns = [c for c in TRAINING_LOG_COLUMNS if c in logged]
    columns += [k for k in scores if k in logged and k not in columns]
    return pd.DataFrame.from_dict(rows, orient="index", columns=columns).sort_index().rename_axis("step")


def _is_score_key(key: str) -> bool:
    # eval_* also holds loss, runtime and throughput: plot only retrieval scores.
    return any(m in key for m in ("ndcg", "mrr", "map", "recall", "accuracy", "precision"))
