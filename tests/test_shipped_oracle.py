"""The oracle shipped for the embedded model: present, small, path-free, and answering offline."""

from __future__ import annotations

import json
import math

import pytest

import activation_oracles as ao
from activation_oracles.loading import shipped_oracle_dir

FOLDER = shipped_oracle_dir("smollm2-135m")
pytestmark = pytest.mark.skipif(not (FOLDER / "oracle_config.json").is_file(),
                                reason="no shipped oracle in this installation")


def test_shipped_files_are_small_and_carry_no_machine_paths():
    size_mb = (FOLDER / "adapter_model.safetensors").stat().st_size / 2**20
    assert size_mb <= 25
    config = json.loads((FOLDER / "oracle_config.json").read_text())
    assert config["base_model"] == "smollm2-135m" and config["d_model"] == 576 and config["n_layers"] == 30
    text = (FOLDER / "oracle_config.json").read_text() + (FOLDER / "adapter_config.json").read_text()
    for prefix in ('"/work', '"/root', '"/home', '"/tmp'):
        assert prefix not in text


@pytest.mark.slow
def test_shipped_oracle_answers(smollm):
    oracle = ao.load_oracle("smollm2-135m", base=smollm)
    acts = ao.capture(smollm, "I absolutely loved this film!", layer_percent=50)
    answer = oracle.ask(acts, "What is the sentiment of this text?", max_new_tokens=12)
    assert isinstance(answer, str) and answer.strip()
    probs = oracle.choose(acts, "Is the sentiment positive?", ["Yes", "No"])
    assert math.isclose(sum(probs.values()), 1.0, abs_tol=1e-9)
    # The shared base still behaves as the base model for the target.
    again = ao.capture(smollm, "I absolutely loved this film!", layer_percent=50)
    assert (again.vectors[15] - acts.vectors[15]).abs().max() == 0
