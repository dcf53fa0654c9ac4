import numpy as np
import pytest

from models.config import load_config
from models.encode.captioning import BlipCaptioner


@pytest.fixture(scope="module")
def images():
    rng = np.random.RandomState(0)
    return [rng.randint(0, 255, (h, w, 3), dtype=np.uint8) for h, w in ((40, 60), (33, 33), (80, 20))]


def make_captioner(tiny_config, **overrides):
    config = load_config(tiny_config).captioning
    for key, value in overrides.items():
        setattr(config, key, value)
    return BlipCaptioner.from_config(config)


def test_batched_captions_are_deterministic_and_equal_single_ones(tiny_config, images):
    captioner = make_captioner(tiny_config)
    batched = captioner.caption(images)
    assert len(batched) == 3 and all(isinstance(c, str) and c for c in batched)
    assert captioner.caption(images) == batched
    assert [captioner.caption([image])[0] for image in images] == batched
    assert len(set(batched)) > 1  # captions depend on the image


def test_prefix_and_maximum_length(tiny_config, images):
    captioner = make_captioner(tiny_config, prefix="a photo of", max_length=4)
    for caption in captioner.caption(images):
        assert caption.startswith("a photo of")
        new_tokens = captioner.processor.tokenizer(caption[len("a photo of"):],
                                                   add_special_tokens=False)["input_ids"]
        assert len(new_tokens) <= 4


def test_greedy_decoding_is_available(tiny_config, images):
    assert len(make_captioner(tiny_config, num_beams=1).caption(images)) == 3


def test_missing_model_is_a_clear_error(tmp_path):
    from models.config import CaptioningConfig

    with pytest.raises(OSError, match="cannot load the BLIP captioner"):
        BlipCaptioner.from_config(CaptioningConfig(model=str(tmp_path / "nothing-here")))
