"""Verification metrics, identification and groups on synthetic data with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from maskgen.eval.groups import breakdown
from maskgen.eval.identification import (knn_accuracy, rank_k_accuracy, ranks_per_probe,
                                         split_gallery_probes)
from maskgen.eval.mask_usage import evaluate_mask_classifier, mask_usage_accuracy
from maskgen.eval.metrics import (accuracy_at, auc, best_threshold, cosine_scores, kfold_accuracy,
                                  l2_scores, predictions_kfold, roc_curve, tar_at_far)


def _lfw_like(n_folds: int = 10, per: int = 30) -> tuple[np.ndarray, np.ndarray]:
    issame = np.tile(np.r_[np.ones(per, bool), np.zeros(per, bool)], n_folds)
    folds = np.repeat(np.arange(n_folds), 2 * per)
    return issame, folds


def test_separable_scores_give_100_percent_in_every_fold():
    issame, folds = _lfw_like()
    rng = np.random.default_rng(0)
    scores = np.where(issame, rng.uniform(0.6, 1.0, issame.size), rng.uniform(-0.2, 0.4, issame.size))
    res = kfold_accuracy(scores, issame, folds)
    assert res.accuracies == [1.0] * 10
    assert res.mean == 1.0 and res.std == 0.0
    assert all(0.4 <= t <= 0.6 for t in res.thresholds)


def test_threshold_is_chosen_on_the_other_folds():
    # every fold separable at 0.5, except fold 0, whose own best threshold would be 0.85;
    # fold 0 must be tested at the threshold learnt on folds 1..9 (~0.5), not its own
    issame, folds = _lfw_like(per=10)
    scores = np.where(issame, 0.7, 0.3).astype(float)
    f0 = folds == 0
    scores[f0 & ~issame] = 0.8  # fold 0 impostors score 0.8, genuine 0.9
    scores[f0 & issame] = 0.9
    res = kfold_accuracy(scores, issame, folds)
    assert res.thresholds[0] == pytest.approx(0.5)
    assert res.accuracies[0] == 0.5  # all its impostors accepted
    assert res.accuracies[1:] == [1.0] * 9
    assert res.mean == pytest.approx(0.95)
    assert res.std == pytest.approx(np.std([0.5] + [1.0] * 9))
    # the per-pair decisions agree with the fold accuracies
    pred = predictions_kfold(scores, issame, folds, res.thresholds)
    assert np.mean(pred[f0] == issame[f0]) == 0.5


def test_best_threshold_known_answer_and_accuracy_at():
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.35, 0.8])
    issame = np.array([0, 0, 0, 0, 1, 1, 1, 1], bool)
    t, acc = best_threshold(scores, issame)
    # one genuine pair (0.35) lies among the impostors: best is 7/8 with t in (0.4, 0.6)
    assert acc == pytest.approx(7 / 8)
    assert 0.4 < t < 0.6
    assert accuracy_at(scores, issame, t) == pytest.approx(7 / 8)


def test_l2_scores_and_cosine_agree_on_normalized_embeddings():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(50, 16)), rng.normal(size=(50, 16))
    cos = cosine_scores(a, b)
    d = -l2_scores(a, b, normalize=True)
    np.testing.assert_allclose(d ** 2, 2 - 2 * cos, atol=1e-9)
    assert np.all(l2_scores(a, a) == 0)


def test_roc_and_tar_at_far_on_synthetic_distributions():
    # 10,000 impostors uniform on [0, 1) on a grid, genuine scores known: TAR at FAR f is the
    # fraction of genuine scores above the (1 - f) quantile of impostors
    neg = (np.arange(10_000) + 0.5) / 10_000
    pos = np.r_[np.full(500, 0.95), np.full(300, 0.995), np.full(200, 0.99995)]
    scores = np.r_[pos, neg]
    issame = np.r_[np.ones(pos.size, bool), np.zeros(neg.size, bool)]
    t = tar_at_far(scores, issame)
    assert t["1e-01"]["tar"] == 1.0  # threshold ~0.9
    assert t["1e-02"]["tar"] == pytest.approx(0.5)  # threshold ~0.99: 0.995 and 0.99995 pass
    assert t["1e-03"]["tar"] == pytest.approx(0.2)  # threshold ~0.999
    assert t["1e-04"]["tar"] == pytest.approx(0.2)  # one impostor allowed: threshold 0.99985
    for k, f in [("1e-01", 0.1), ("1e-02", 0.01), ("1e-03", 1e-3), ("1e-04", 1e-4)]:
        assert t[k]["far"] <= f
    far, tar, thr = roc_curve(scores, issame)
    assert far[0] == 0 and tar[-1] == 1 and far[-1] == 1
    assert np.all(np.diff(far) >= 0) and np.all(np.diff(tar) >= 0)
    assert 0.9 < auc(far, tar) <= 1.0


def test_tar_at_unmeasurable_far_is_none_not_extrapolated():
    scores = np.r_[np.ones(10), np.zeros(100)]
    issame = np.r_[np.ones(10, bool), np.zeros(100, bool)]
    t = tar_at_far(scores, issame, fars=(1e-1, 1e-3))
    assert t["1e-01"]["tar"] == 1.0
    assert t["1e-03"]["tar"] is None


def test_gaussian_scores_match_the_analytic_accuracy():
    # genuine ~ N(1, 1), impostor ~ N(-1, 1): the Bayes threshold is 0, accuracy Phi(1) = 0.8413
    rng = np.random.default_rng(3)
    issame, folds = _lfw_like(per=2000)
    scores = rng.normal(np.where(issame, 1.0, -1.0), 1.0)
    res = kfold_accuracy(scores, issame, folds)
    assert res.mean == pytest.approx(0.8413, abs=0.01)
    assert all(abs(t) < 0.15 for t in res.thresholds)


def test_rank_k_and_knn_on_a_tiny_gallery():
    # 4 identities on orthogonal axes; probes are noisy copies, one probe is closest to the wrong id
    basis = np.eye(4)
    gallery = basis.copy()
    gids = ["a", "b", "c", "d"]
    probes = np.array([basis[0] + 0.1 * basis[1], basis[1], basis[2] + 0.9 * basis[3] + 0.0,
                       0.5 * basis[2] + basis[3]])
    pids = ["a", "b", "c", "c"]  # the last probe is 'c' but looks like 'd'
    r = rank_k_accuracy(gallery, gids, probes, pids, ks=(1, 2))
    assert r["rank1"] == pytest.approx(3 / 4)
    assert r["rank2"] == 1.0
    np.testing.assert_array_equal(ranks_per_probe(gallery, gids, probes, pids), [0, 0, 0, 1])
    # unknown identity is never found
    assert rank_k_accuracy(gallery, gids, probes[:1], ["zzz"], ks=(1, 4))["rank4"] == 0.0
    # kNN: queries are the references themselves under other keys; self-match excluded
    refs = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [0.95, 0.05]], float)
    ids = ["x", "x", "y", "y", "y"]  # the last 'y' sits among the x's
    keys = ["k0", "k1", "k2", "k3", "k4"]
    acc = knn_accuracy(refs, ids, keys, refs, ids, keys, k=1)
    # k0 and k1 both find k4 ('y') nearest, k4 finds an 'x': only k2 and k3 are right
    assert acc == pytest.approx(2 / 5)


def test_split_gallery_probes():
    keys = ["A/A_2.jpg", "A/A_1.jpg", "B/B_1.jpg", "C/C_1.jpg", "C/C_3.jpg", "C/C_2.jpg"]
    ids = ["A", "A", "B", "C", "C", "C"]
    s = split_gallery_probes(keys, ids)
    assert s.gallery == ["A/A_1.jpg", "B/B_1.jpg", "C/C_1.jpg"]
    assert s.probes == ["A/A_2.jpg", "C/C_2.jpg", "C/C_3.jpg"]
    assert s.probe_ids == ["A", "C", "C"]


def test_group_breakdown_and_gap():
    values = np.array([1, 1, 0, 1, 0, 0, 1], float)
    groups = ["f", "f", "f", "m", "m", None, "m"]
    b = breakdown(values, groups)
    assert b["groups"]["f"] == {"value": pytest.approx(2 / 3), "count": 3}
    assert b["groups"]["m"] == {"value": pytest.approx(2 / 3), "count": 3}
    assert b["unlabelled"] == 1
    b2 = breakdown(np.array([1, 1, 0, 0], float), ["a", "a", "b", "b"])
    assert b2["gap"] == {"best": "a", "worst": "b", "gap": 1.0}
    assert breakdown(np.array([1.0]), ["a"])["gap"] is None


def test_mask_usage_accuracy_from_any_callable():
    imgs = [np.full((4, 4, 3), v, np.uint8) for v in (0, 10, 200, 250)]
    is_masked = [False, False, True, True]
    res = evaluate_mask_classifier(lambda batch: [float(b.mean() > 100) for b in batch], imgs,
                                   is_masked, batch_size=3)
    assert res["accuracy"] == 1.0 and res["n"] == 4 and res["n_masked"] == 2
    r2 = mask_usage_accuracy(np.array([0.9, 0.2, 0.4, 0.6]), np.array([1, 0, 1, 0], bool))
    assert r2["accuracy"] == 0.5 and r2["masked_recall"] == 0.5 and r2["unmasked_specificity"] == 0.5
