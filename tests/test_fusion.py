import numpy as np
import pandas as pd
import pytest

from busi_study.evaluation.fusion import late_fusion
from busi_study.info import PROBA_COLUMNS

LABELS = np.array(["normal", "benign", "malignant"])


def _pred(y, quality, rng, n_folds=5):
    n = len(y)
    logits = rng.normal(0, 1, (n, 3))
    logits[np.arange(n), y] += quality
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    t = pd.DataFrame(p, columns=list(PROBA_COLUMNS))
    return t.assign(image_id=[f"i{i:03d}" for i in range(n)], fold=np.arange(n) % n_folds, label=LABELS[y],
                    group_id=[f"g{i // 2}" for i in range(n)])


def test_weight_is_chosen_on_validation_and_a_useless_model_is_not_fused():
    rng = np.random.default_rng(0)
    y_val, y_oof = rng.integers(0, 3, 300), rng.integers(0, 3, 400)
    base_val, base_oof = _pred(y_val, 2.0, rng), _pred(y_oof, 2.0, rng)
    noise_val, noise_oof = _pred(y_val, 0.0, rng), _pred(y_oof, 0.0, rng)  # carries no signal
    fu = late_fusion(base_val, base_oof, noise_val, noise_oof, n_resamples=200)
    assert fu.weight == 1.0 and fu.validation["chosen"].sum() == 1
    assert np.allclose(fu.oof[list(PROBA_COLUMNS)].to_numpy(), base_oof.sort_values(["image_id", "fold"])[list(PROBA_COLUMNS)])
    assert (fu.paired["diff"].abs() < 1e-12).all()


def test_a_complementary_model_gets_weight_and_the_fusion_is_compared_paired():
    rng = np.random.default_rng(1)
    y_val, y_oof = rng.integers(0, 3, 600), rng.integers(0, 3, 600)
    a_val, a_oof = _pred(y_val, 1.0, rng), _pred(y_oof, 1.0, rng)
    b_val, b_oof = _pred(y_val, 1.0, rng), _pred(y_oof, 1.0, rng)  # as good, independent errors
    fu = late_fusion(a_val, a_oof, b_val, b_oof, n_resamples=300)
    assert 0.3 <= fu.weight <= 0.7
    acc = fu.paired.set_index("metric").loc["accuracy"]
    assert acc["diff"] > 0 and acc["ci_low"] > 0  # averaging two independent equal models helps


def test_models_on_other_splits_are_refused():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 50)
    a, b = _pred(y, 1.0, rng), _pred(y, 1.0, rng, n_folds=3)
    with pytest.raises(ValueError, match="same images and folds"):
        late_fusion(a, a, a, b)


def test_late_fusion_with_s0_reads_the_runs_results_and_says_why_it_cannot_run(tmp_path):
    from busi_study.params import BootstrapParams
    from busi_study.results import ResultsStore
    from busi_study.studies.lesion_aware import late_fusion_with_s0

    rng = np.random.default_rng(3)
    y_val, y_oof = rng.integers(0, 3, 200), rng.integers(0, 3, 300)
    store = ResultsStore(tmp_path / "run")
    boot = BootstrapParams(resamples=100, seed=0)
    store.write_trained("lesion_aware-x", {"oof": _pred(y_oof, 1.0, rng), "val": _pred(y_val, 1.0, rng)}, {"model": "x"})
    val, paired, text = late_fusion_with_s0(store, "lesion_aware-x", bootstrap=boot)
    assert val.empty and paired.empty and "notebook 04 not run" in text
    store.write_trained("s0_finetune-m", {"oof": _pred(y_oof, 1.5, rng), "val": _pred(y_val, 1.5, rng)}, {"model": "s0"})
    val, paired, text = late_fusion_with_s0(store, "lesion_aware-x", bootstrap=boot)
    assert val["chosen"].sum() == 1 and "w_s0" in val and set(paired["metric"]) >= {"accuracy", "macro_auc"}
    assert (paired["w_s0"] == val.loc[val["chosen"], "w_s0"].iloc[0]).all() and "fused − S0" in text
