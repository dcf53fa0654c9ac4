import pytest

from models.rate import bits_per_pixel


def test_bits_per_pixel_counts_every_byte_against_the_original_size():
    assert bits_per_pixel(1000, 500, 400) == pytest.approx(0.04)
    assert bits_per_pixel(0, 3, 3) == 0
    with pytest.raises(ValueError):
        bits_per_pixel(10, 0, 5)
