"""elastix's Mersenne Twister stream and ITK's variates (docs/design.md §E14)."""
import numpy as np
import pytest

from elastix_bridge.engine.random import ElastixRandom, as_elastix_random


@pytest.mark.parametrize("seed", [0, 1, 121212, 4294967295])
def test_stream_is_mt19937_with_init_genrand(seed):
    """numpy's legacy RandomState is MT19937 seeded by init_genrand: its doubles from our raw words."""
    raw = ElastixRandom(seed).raw(2000).reshape(-1, 2)
    ours = ((raw[:, 0] >> 5) * 67108864.0 + (raw[:, 1] >> 6)) / 9007199254740992.0
    np.testing.assert_array_equal(ours, np.random.RandomState(seed).random_sample(1000))


def test_rewind_gives_back_the_same_draws_across_refills():
    rng = ElastixRandom(3)
    rng.raw(65530)
    ahead = rng.raw(20)  # crosses the buffer refill
    rng.rewind(12)
    np.testing.assert_array_equal(rng.raw(12), ahead[8:])
    with pytest.raises(ValueError, match="cannot rewind"):
        ElastixRandom(3).rewind(1)


def test_uniform_is_itk_formula_in_axis_order():
    raw = ElastixRandom(9).raw(6).astype(float).reshape(3, 2) / 2.0**32
    low, high = np.array([-1.0, 10.0]), np.array([2.0, 11.0])
    np.testing.assert_array_equal(ElastixRandom(9).uniform(low, high, 3), (1 - raw) * low + raw * high)


def test_normal_uses_two_draws_and_has_unit_moments():
    rng = ElastixRandom(5)
    r = ElastixRandom(5).raw(2).astype(float)
    first = np.sqrt(-2 * np.log(1 - (r[0] + 0.5) / 2.0**32)) * np.cos(2 * np.pi * r[1] / 2.0**32)
    z = rng.normal(200000)
    assert z[0] == first
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01


def test_integer_variate_is_uniform_and_consumes_only_what_it_accepts():
    rng = ElastixRandom(11)
    values = rng.integer(4, 50000)  # mask 7: 3 of 8 raw values are rejected
    assert values.min() == 0 and values.max() == 4
    np.testing.assert_allclose(np.bincount(values) / values.size, 0.2, atol=0.01)
    # The stream position equals the draws elastix makes: accepted ones plus rejected ones before them.
    again = ElastixRandom(11)
    masked = again.raw(200000) & 7
    used = int(np.flatnonzero(masked <= 4)[49999]) + 1
    np.testing.assert_array_equal(rng.raw(5), ElastixRandom(11).raw(used + 5)[used:])


def test_as_elastix_random_accepts_seeds_and_torch_generators():
    torch = pytest.importorskip("torch")
    np.testing.assert_array_equal(as_elastix_random(torch.Generator().manual_seed(7)).raw(3), ElastixRandom(7).raw(3))
    np.testing.assert_array_equal(as_elastix_random(7).raw(3), ElastixRandom(7).raw(3))
    with pytest.raises(ValueError, match="never global"):
        as_elastix_random(None)
