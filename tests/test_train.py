from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import fit_mlp
from sklearn import metrics as skm

from hpo import data
from hpo import training as train
from hpo.settings import ModelConfig, OptimConfig, TrainConfig
from hpo.tasks import Classification
from hpo.training.loop import predict_outputs


@pytest.fixture(scope="module")
def tensors(small_prepared: data.Prepared) -> train.TensorData:
    split = small_prepared.split
    scaler = small_prepared.scaler
    f, y = small_prepared.features, small_prepared.labels
    return train.TensorData.from_numpy(
        scaler.transform(f[split.train]), y[split.train], scaler.transform(f[split.val]), y[split.val]
    )


SMALL = ModelConfig(hidden=(32, 32))


def test_training_is_deterministic(tensors: train.TensorData) -> None:
    cfg = TrainConfig(epochs=2, batch_size=64, seed=3)
    a = fit_mlp(SMALL, OptimConfig(), cfg, tensors)
    b = fit_mlp(SMALL, OptimConfig(), cfg, tensors)
    assert a.history == b.history
    for pa, pb in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(pa, pb)
    c = fit_mlp(SMALL, OptimConfig(), TrainConfig(epochs=2, batch_size=64, seed=4), tensors)
    assert c.history != a.history


def test_learns_beyond_the_majority_class(tensors: train.TensorData) -> None:
    result = fit_mlp(
        ModelConfig(hidden=(64, 64)),
        OptimConfig(lr=3e-3),
        TrainConfig(epochs=6, batch_size=64),
        tensors,
    )
    majority = (tensors.y_val == 8).double().mean().item()
    assert result.history[-1].train_loss < result.history[0].train_loss
    assert max(r.val_score for r in result.history) > majority + 0.01


def test_max_batches_with_evaluation_every_five(tensors: train.TensorData) -> None:
    """The write-up's baseline: 15 batches, evaluating every 5."""
    seen: list[train.EvalRecord] = []
    cfg = TrainConfig(epochs=10, batch_size=128, max_batches=15, eval_every=5)
    result = fit_mlp(SMALL, OptimConfig(), cfg, tensors, callbacks=[seen.append])
    assert [r.step for r in result.history] == [5, 10, 15]
    assert seen == result.history
    assert all(r.epoch == 1 for r in result.history)


def test_max_batches_not_a_multiple_of_eval_every(tensors: train.TensorData) -> None:
    cfg = TrainConfig(epochs=10, batch_size=128, max_batches=12, eval_every=5)
    assert [r.step for r in fit_mlp(SMALL, OptimConfig(), cfg, tensors).history] == [5, 10, 12]


def test_early_stopping_restores_the_best_weights(tensors: train.TensorData) -> None:
    # 300 training rows with shuffled labels: a wide model memorises them, so the validation loss
    # rises after an epoch or two, steadily and without diverging.
    g = torch.Generator().manual_seed(0)
    y_noise = tensors.y_train[:300][torch.randperm(300, generator=g)]
    memorise = train.TensorData(tensors.x_train[:300], y_noise, tensors.x_val, tensors.y_val)
    cfg = TrainConfig(epochs=60, batch_size=32, patience=3)
    result = fit_mlp(ModelConfig(hidden=(256, 256)), OptimConfig(lr=3e-3), cfg, memorise)
    assert result.stopped_early and not result.diverged
    assert len(result.history) < 60
    assert len(result.history) - 1 - result.best_index == 3  # stopped after `patience` worse evaluations
    assert result.history[-1].val_loss > result.best.val_loss
    logits = predict_outputs(result.model, tensors.x_val)
    loss = torch.nn.functional.cross_entropy(logits, tensors.y_val).item()
    assert loss == pytest.approx(result.best.val_loss, rel=1e-5)  # the best weights, not the last


def test_callbacks_can_stop_and_raise(tensors: train.TensorData) -> None:
    cfg = TrainConfig(epochs=5, batch_size=256)
    stopped = fit_mlp(SMALL, OptimConfig(), cfg, tensors, callbacks=[lambda r: r.epoch >= 2])
    assert len(stopped.history) == 2

    class Pruned(Exception):
        pass

    def prune(record: train.EvalRecord) -> None:
        raise Pruned

    with pytest.raises(Pruned):
        fit_mlp(SMALL, OptimConfig(), cfg, tensors, callbacks=[prune])


def test_evaluate_matches_scikit_learn(tensors: train.TensorData) -> None:
    result = fit_mlp(SMALL, OptimConfig(), TrainConfig(epochs=1, batch_size=64), tensors)
    names = [f"{1920 + 10 * d}s" for d in range(10)]
    out = predict_outputs(result.model, tensors.x_val)
    m = Classification(tuple(names)).test_metrics(out, tensors.y_val)
    pred = out.argmax(1).numpy()
    y = tensors.y_val.numpy()
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro", labels=list(range(10))))
    confusion = np.array(m["confusion"])
    assert confusion.sum() == y.size and np.trace(confusion) == (pred == y).sum()
    assert set(m["per_class"]) == set(names)
    assert m["loss"] == pytest.approx(result.history[-1].val_loss, rel=1e-6)


def test_train_config_validation() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValidationError, match="patience"):
        TrainConfig(patience=0)


def test_fit_flushes_denormals(tensors: train.TensorData) -> None:
    """Weight decay drives values into float32 denormals, which the CPU computes slowly."""
    torch.set_flush_denormal(False)
    fit_mlp(SMALL, OptimConfig(), TrainConfig(epochs=1, max_batches=1), tensors)
    tiny = torch.tensor([1e-39], dtype=torch.float32) * 1.0
    assert tiny.item() == 0.0
