"""bench/gpu.py runs end to end: its dry run (tiny components, CPU) goes through every section."""

import json
import sys

from tests.conftest import REPO

sys.path.insert(0, str(REPO))

from bench import gpu  # noqa: E402


def test_the_dry_run_measures_every_section_and_writes_the_table(tiny_config, tmp_path, capsys):
    out = tmp_path / "gpu.json"
    assert gpu.main(["--dry_run", "--out", str(out), "--config_path", str(tiny_config)]) == 0
    results = json.loads(out.read_text())
    flop = results["floor"]["flop"]
    assert flop["guided_step"] == flop["controlnet"] + flop["unet"] > 0 and flop["vae_decode_per_image"] > 0
    assert set(results["floor"]["peak_flop_per_s"]) == {"32", "bf16"}
    decode = results["decode"]["rows"] + results["decode"]["ablation"] + results["compile"]["rows"]
    assert [(row["precision"], row["batch"]) for row in results["decode"]["rows"]] == [
        ("32", 1), ("32", 2), ("bf16", 1), ("bf16", 2)]
    assert all(row["ours_img_per_s"] > 0 and row["stock_img_per_s"] > 0 and row["match"]["passed"] for row in decode)
    assert all(row["match"]["max_abs_diff"] <= 1 for row in decode if row["precision"] == "32")
    assert results["decode"]["host_syncs_per_call"]["ours"] is None  # counted on CUDA only
    assert results["compile"]["rows"][0]["compile_s"] is not None
    train = results["train"]["rows"]
    assert [row["checkpointing"] for row in train] == [False, True]
    assert all(row["ours"]["steps_per_s"] > 0 and row["reference"]["step_flop"] > 0 for row in train)
    assert results["encode"]["rows"][0]["encode_img_per_s"] > 0
    table = capsys.readouterr().out
    for section in ("| decode |", "| decode ablation |", "| train |", "| encode |", "| compile |"):
        assert section in table
    assert results["meta"]["dry_run"] and "card" in results["meta"] and set(results["seconds"]) == set(gpu.SECTIONS)
