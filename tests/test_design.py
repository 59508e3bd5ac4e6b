import numpy as np
import pytest

from stride_assets.engine.design import draw_design
from stride_assets.engine.errors import StrideConfigError


def test_every_example_in_exactly_d_subsets():
    design = draw_design(n=1000, K=64, d=5, seed=3)
    M = design.membership
    assert M.shape == (64, 1000)
    assert set(np.asarray(M.sum(axis=0)).ravel().tolist()) == {5.0}
    assert M.max() == 1.0 and M.nnz == 5000
    assert design.d == 5 and design.K == 64 and design.n == 1000
    assert design.subset_sizes().min() > 0


def test_seed_determinism_and_variation():
    a = draw_design(300, 32, 4, seed=0).membership
    b = draw_design(300, 32, 4, seed=0).membership
    c = draw_design(300, 32, 4, seed=1).membership
    assert (a != b).nnz == 0
    assert (a != c).nnz > 0


def test_subsets_are_roughly_balanced():
    design = draw_design(n=4000, K=100, d=10, seed=0)
    sizes = design.subset_sizes()
    assert abs(sizes.mean() - 400) < 1e-9
    assert sizes.min() > 300 and sizes.max() < 500


def test_chunked_draw_matches_degrees():
    design = draw_design(n=5000, K=50, d=3, seed=0, chunk=777)
    assert set(np.asarray(design.membership.sum(axis=0)).ravel().tolist()) == {3.0}


@pytest.mark.parametrize(
    "n,K,d,match",
    [
        (100, 1, 1, "K >= 2"),
        (100, 10, 10, "d < K"),
        (100, 10, 0, "1 <= d"),
        (100, 10, 11, "d < K"),
        (5, 100, 2, "too large"),
        (1, 4, 2, "at least 2"),
    ],
)
def test_bad_designs_are_rejected(n, K, d, match):
    with pytest.raises(StrideConfigError, match=match):
        draw_design(n, K, d, seed=0)


def test_member_table_round_trip():
    design = draw_design(200, 20, 3, seed=5)
    subsets, examples = design.member_table()
    assert len(subsets) == 600
    for i in (0, 57, 199):
        assert sorted(subsets[examples == i].tolist()) == design.members_of(i).tolist()
