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


def test_identities_from_counts_match_a_group_by() -> None:
    """The identity table merged from the units' sorted counts equals a hash group-by of all
    of them, whether the units hold consecutive names (no sort) or interleaved ones."""
    import pyarrow as pa

    from maskgen.pipelines.scan import Identities

    rng = np.random.default_rng(3)
    names = np.array(sorted(f"id{i:05d}" for i in rng.choice(100_000, 3_000, replace=False)))

    def unit(sel):
        sel = np.unique(sel)
        return pa.table({"identity": pa.array(names[sel]), "n": pa.array(rng.integers(1, 9, len(sel))),
                         "n_usable": pa.array(rng.integers(0, 3, len(sel)))})

    cuts = [0, 700, 1500, 1501, 3000]  # consecutive ranges, two of them sharing a name
    consecutive = [unit(np.arange(a, min(b + 1, 3000))) for a, b in zip(cuts, cuts[1:])]
    interleaved = [unit(rng.choice(3000, 900)) for _ in range(5)] + [unit(np.zeros(0, int))]
    for counts in (consecutive, interleaved):
        given = list(counts)
        ids = Identities.from_counts(given)
        assert given == []  # consumed: the caller's tables are freed as they are read
        ref = pa.concat_tables(counts).group_by("identity").aggregate([("n", "sum"), ("n_usable", "sum")])
        ref = ref.sort_by("identity")
        assert ids.names.to_pylist() == ref.column("identity").to_pylist()
        assert ids.n_rows.tolist() == ref.column("n_sum").to_pylist()
        assert ids.n_usable.tolist() == ref.column("n_usable_sum").to_pylist()
        assert ids.n_rows.dtype == ids.n_usable.dtype == np.int64
    assert len(Identities.from_counts([])) == 0


def test_reasons_keep_the_first_and_expand_in_the_task() -> None:
    from maskgen.pipelines.scan import Reasons, expand_reasons

    r = Reasons(6)
    r.mark(np.array([1, 0, 0, 0, 0, 1], bool), "in exclude list")
    counts = np.array([5, 1, 2, 1, 9, 1])
    r.mark(counts < 3, (counts, lambda v: f"fewer than 3 ({v} < 3)"))  # the first reason stays
    assert r.free.tolist() == [False, False, False, False, True, False]
    r.mark_beyond(r.free, 0, "beyond max_identities (0)")
    assert expand_reasons(r.part(0, 6)).tolist() == [
        "in exclude list", "fewer than 3 (1 < 3)", "fewer than 3 (2 < 3)", "fewer than 3 (1 < 3)",
        "beyond max_identities (0)", "in exclude list"]
    assert expand_reasons(r.part(1, 3)).tolist() == ["fewer than 3 (1 < 3)", "fewer than 3 (2 < 3)"]
    assert r.codes.dtype == np.int32 and len(r.texts) == 5  # one text per distinct value
    assert expand_reasons(Reasons(3).part(0, 3)).tolist() == [None, None, None]


def _allocate_cells_by_sorting(cell_group, cell_size, ratio, seed):
    """allocate_cells as it was written first: always through the stable sort's index arrays."""
    from maskgen.allocation import largest_remainder, masked_count, tie_rng

    cell_group, cell_size = np.asarray(cell_group, np.int64), np.asarray(cell_size, np.int64)
    out = np.zeros(len(cell_size), np.int64)
    n = int(cell_size.sum())
    total = masked_count(n, ratio)
    rng = tie_rng(seed)
    order = np.argsort(cell_group, kind="stable")
    g = cell_group[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    ends = np.r_[starts[1:], len(order)]
    gsizes = np.add.reduceat(cell_size[order], starts).astype(np.float64)
    for a, b, size, m_g in zip(starts, ends, gsizes, largest_remainder(gsizes * total / n, total, rng)):
        if m_g:
            idx = order[a:b]
            out[idx] = largest_remainder(cell_size[idx] * (m_g / size), int(m_g), rng)
    return out


def test_allocate_cells_in_group_order_or_not_gives_the_same_counts() -> None:
    """Cells already in group order take slices (no index arrays), one group may come as a
    byte per cell; the counts are those of the stable sort's index arrays, cell for cell."""
    rng = np.random.default_rng(5)
    size = rng.integers(1, 12, 5_000)
    for groups in (np.zeros(len(size), np.int8), np.zeros(len(size), np.int64),
                   np.sort(rng.integers(0, 4, len(size))), rng.integers(0, 4, len(size))):
        for ratio, seed in ((0.1, 7), (0.3, 1), (0.5, 0)):
            got = P.allocate_cells(groups, size, ratio, seed)
            assert np.array_equal(got, _allocate_cells_by_sorting(groups, size, ratio, seed))
            assert got.sum() == round(ratio * size.sum())
