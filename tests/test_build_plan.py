"""The plan: exact mask ratio overall, spread per identity and per demographic group."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import pytest

from maskgen.pipelines import plan as P


def _dataset(n_ids: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Identities with a long-tailed image count, like LFW (many singletons, a few large)."""
    rng = np.random.default_rng(seed)
    sizes = np.minimum(rng.zipf(1.8, n_ids), 60)
    keys, idents = [], []
    for i, s in enumerate(sizes):
        for j in range(int(s)):
            keys.append(f"{i:06d}-{j:04d}")
            idents.append(f"person_{i:04d}")
    return keys, idents


@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.25, 0.5, 0.9, 1.0])
def test_ratio_exact_overall_and_per_identity(ratio: float) -> None:
    keys, idents = _dataset(400)
    masked = P.allocate_masked(keys, idents, ratio, seed=3)
    n = len(keys)
    assert abs(int(masked.sum()) - ratio * n) <= 0.5 + 1e-9  # within one sample (round half up)
    assert int(masked.sum()) == P.masked_count(n, ratio)
    per_id: dict[str, list[bool]] = defaultdict(list)
    for m, i in zip(masked, idents):
        per_id[i].append(bool(m))
    for ident, ms in per_id.items():
        q = ratio * len(ms)
        assert np.floor(q + 1e-9) <= sum(ms) <= np.ceil(q - 1e-9), (ident, len(ms), sum(ms))


def test_singletons_share_exactly() -> None:
    keys = [f"{i:06d}-0000" for i in range(1000)]
    masked = P.allocate_masked(keys, keys, 0.1, seed=0)
    assert masked.sum() == 100


def test_deterministic_and_seed_dependent() -> None:
    keys, idents = _dataset(200)
    a = P.allocate_masked(keys, idents, 0.3, seed=1)
    b = P.allocate_masked(keys, idents, 0.3, seed=1)
    c = P.allocate_masked(keys, idents, 0.3, seed=2)
    assert (a == b).all()
    assert (a != c).any() and a.sum() == c.sum()


def test_groups_get_their_share() -> None:
    keys, idents = _dataset(300, seed=5)
    rng = np.random.default_rng(0)
    # a group label per identity (as FairFace-style labels are per person)
    gid = {i: str(rng.choice(["a", "b", "c"], p=[0.6, 0.3, 0.1])) for i in set(idents)}
    groups = [gid[i] for i in idents]
    ratio = 0.37
    masked = P.allocate_masked(keys, idents, ratio, seed=0, groups=groups)
    assert masked.sum() == P.masked_count(len(keys), ratio)
    size = Counter(groups)
    got = Counter(g for g, m in zip(groups, masked) if m)
    for g, n_g in size.items():
        q = masked.sum() * n_g / len(keys)
        assert np.floor(q) <= got[g] <= np.ceil(q)


def test_largest_remainder_bounds() -> None:
    rng = np.random.default_rng(0)
    q = rng.random(50) * 7
    total = int(round(q.sum()))
    q = q * total / q.sum()
    n = P.largest_remainder(q, total, rng)
    assert n.sum() == total
    assert (n >= np.floor(q + 1e-9)).all() and (n <= np.ceil(q - 1e-9)).all()


def test_shards_and_keys() -> None:
    ranks = np.arange(25)
    sh = P.shard_of(ranks, 25, seed=0, shuffle=True, per_shard=10)
    assert np.bincount(sh).tolist() == [10, 10, 5]
    assert (sh != ranks // 10).any()  # identities mixed across shards
    assert (P.shard_of(ranks, 25, seed=0, shuffle=False, per_shard=10) == ranks // 10).all()
    assert P.num_shards(25, 10) == 3
    assert P.shard_name("train", 3) == "train-000003.tar"
    assert P.brace_pattern("train", 3) == "train-{000000..000002}.tar"
    assert P.key_seed(0, "a") == P.key_seed(0, "a") != P.key_seed(1, "a")


@pytest.mark.parametrize("n", [1, 2, 3, 10, 257, 10_000, 70_001])
@pytest.mark.parametrize("explicit", [True, False])
def test_shuffle_is_a_permutation_any_task_can_compute(n: int, explicit: bool, monkeypatch) -> None:
    """The shard order is a bijection of the global ranks; a task holding only some ranks
    gets the same positions as one holding all (the Feistel form beyond EXPLICIT_ORDER)."""
    if not explicit:
        monkeypatch.setattr(P, "EXPLICIT_ORDER", 0)
    pos = P.permute(np.arange(n), n, seed=5)
    assert sorted(pos.tolist()) == list(range(n))
    part = np.arange(n)[n // 3 : n // 2]
    assert (P.permute(part, n, seed=5) == pos[part]).all()
    if n >= 257:
        assert not (P.permute(np.arange(n), n, seed=6) == pos).all()
        # a shuffle, not a rotation: neighbouring ranks land far apart
        assert np.median(np.abs(np.diff(pos))) > n / 20


def test_cells_match_the_per_sample_allocation() -> None:
    """allocate_cells over (group, identity) cells gives floor/ceil per cell, exact overall."""
    rng = np.random.default_rng(1)
    sizes = rng.integers(1, 30, 500)
    groups = rng.integers(0, 4, 500)
    order = np.lexsort((np.arange(500), groups))
    m = P.allocate_cells(groups[order], sizes[order], 0.3, seed=2)
    assert m.sum() == P.masked_count(int(sizes.sum()), 0.3)
    for g in range(4):
        sel = groups[order] == g
        q = m.sum() * sizes[order][sel].sum() / sizes.sum()
        assert np.floor(q) <= m[sel].sum() <= np.ceil(q)


def test_landmark_cache_tag_names_the_aligned_model(tmp_path, monkeypatch) -> None:
    """Landmarks from dlib's model and from the compact aligned-crop model never share a cache."""
    from maskgen.pipelines.analyze import cache_tag

    monkeypatch.setenv("MASKGEN_MODEL_DIR", str(tmp_path))
    assert cache_tag("auto") == "auto:cnn2" and cache_tag("aligned") == "aligned" and cache_tag("dlib") == "dlib"
    (tmp_path / "aligned68.dat").write_bytes(b"x")
    assert cache_tag("auto") == "auto:cnn2+compact" and cache_tag("aligned") == "aligned+compact"
    assert cache_tag("dlib") == "dlib" and cache_tag("aligned-full") == "aligned-full"
