"""The reproduction canary: a training loss that leaves the published curve is reported early."""

import warnings
from pathlib import Path

import pytest

from colbench.training_curve import CanaryWarning, LossCanary, log_table, reference_curve


def feed(canary: LossCanary, steps, losses) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step, loss in zip(steps, losses, strict=True):
            canary.observe(step, loss)
    return [str(w.message) for w in caught if issubclass(w.category, CanaryWarning)]


def test_the_published_curve_ships_with_the_package():
    steps, losses = reference_curve("study")
    assert (steps[0], steps[-1], len(steps)) == (100, 50500, 505)  # every 100 steps of the 50,546-step epoch
    assert losses[0] == pytest.approx(0.0524) and losses[-1] == pytest.approx(0.006)


def test_a_run_on_the_published_curve_raises_no_warning():
    steps, losses = reference_curve("study")
    canary = LossCanary()
    assert feed(canary, steps, losses * 1.1) == []  # 10 % above it, inside the 25 % band
    assert canary.events and all(e["inside"] for e in canary.events)


def test_a_diverging_run_is_reported_at_the_first_check_and_again_when_it_returns():
    steps, losses = reference_curve("study")
    diverging = losses.copy()
    diverging[:20] *= 1.8  # a wrong recipe for the first 2,000 steps, then back on the curve
    canary = LossCanary(window=500, from_step=500)
    messages = feed(canary, steps, diverging)
    assert len(messages) == 2, messages
    assert "at step 500" in messages[0] and "1.80x the study curve" in messages[0] and "outside" in messages[0]
    assert "back within 25%" in messages[1]
    outside = [e for e in canary.events if not e["inside"]]
    assert outside[0]["step"] == 500 and outside[0]["ratio"] == pytest.approx(1.8)


def test_the_canary_reads_the_trainers_log_and_its_resumed_history():
    from transformers import TrainerState

    steps, losses = reference_curve("study")
    state = TrainerState()
    state.log_history = [{"step": int(s), "loss": float(v) * 2} for s, v in zip(steps[:5], losses[:5], strict=True)]
    canary = LossCanary(window=500, from_step=500)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        canary.on_train_begin(None, state, None)  # a resumed run: its earlier losses count again
        state.global_step = 600
        canary.on_log(None, state, None, logs={"loss": float(losses[5])})
    assert [e["step"] for e in canary.events] == [500] and not canary.events[0]["inside"]
    assert any("2.00x the study curve" in str(w.message) for w in caught)


def test_the_train_stage_records_the_canary_in_its_log(tmp_path, study_settings, monkeypatch):
    # Wired through the trainer: a run far from the reference curve is reported at the first step it is checked,
    # in the log and in the model's record. The reference is made to start at step 1 (the study's starts at 100).
    import numpy as np

    from colbench.atomic import read_json
    from colbench.train import train

    monkeypatch.setattr("colbench.training_curve.reference_curve", lambda name: (np.array([1, 2]), np.array([50.0, 50.0])))
    fixtures = Path(__file__).parent / "fixtures"
    settings = study_settings(max_steps=2, per_device_train_batch_size=2, gradient_accumulation_steps=1)
    settings["loss_kwargs"]["n_ways"] = 4
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        output = train(kd_dir=fixtures / "kd_tiny", output_dir=tmp_path / "model", checkpoints_dir=tmp_path / "ckpt",
                       log_path=tmp_path / "log.json", base_model=str(fixtures / "pylate" / "bert" / "base"), seed=0,
                       canary={"reference": "study", "tolerance": 0.25, "window": 1, "from_step": 1}, **settings)
    events = read_json(tmp_path / "log.json")["canary"]
    assert [(e["step"], e["inside"]) for e in events] == [(1, False)] and events[0]["reference"] == 50.0
    assert read_json(output / "colbench_train.json")["canary"] == events
    assert any("the study curve" in str(w.message) for w in caught)


def test_the_log_table_shows_training_and_held_out_scores_per_step():
    log = [  # the shape of the trainer's log history (the demo's reports/train/log.json)
        {"step": 0, "eval_pydocs_ndcg@10": 0.52, "eval_pydocs_recall@100": 0.88, "eval_runtime": 25.7,
         "eval_samples_per_second": 0.0, "eval_steps_per_second": 0.0, "epoch": 0},
        {"step": 2, "loss": 0.019, "grad_norm": 0.71, "learning_rate": 1e-4, "epoch": 0.08},
        {"step": 4, "loss": 0.021, "grad_norm": 0.32, "learning_rate": 1.9e-4, "epoch": 0.16},
        {"step": 4, "eval_pydocs_ndcg@10": 0.61, "eval_pydocs_recall@100": 0.95, "eval_runtime": 23.5, "epoch": 0.16},
        {"train_runtime": 250.0},  # the trainer's closing summary has no step
    ]
    table = log_table(log)
    assert table.index.name == "step" and table.index.tolist() == [0, 2, 4]
    assert table.columns.tolist() == ["loss", "learning_rate", "grad_norm", "eval_pydocs_ndcg@10",
                                      "eval_pydocs_recall@100"]  # no runtime, throughput or epoch
    assert table.loc[4].tolist() == [0.021, 1.9e-4, 0.32, 0.61, 0.95]  # one row for a step logged twice
    assert table.loc[0, ["loss", "eval_pydocs_ndcg@10"]].isna().tolist() == [True, False]
    # Chosen held-out keys, in their order; one that no step logged is left out.
    chosen = log_table(log, eval_keys=["eval_pydocs_recall@100", "eval_pydocs_map@100"])
    assert chosen.columns.tolist() == ["loss", "learning_rate", "grad_norm", "eval_pydocs_recall@100"]
    assert log_table(log, eval_keys=[]).columns.tolist() == ["loss", "learning_rate", "grad_norm"]
