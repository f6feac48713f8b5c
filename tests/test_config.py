"""src.config: --name=value overrides of a script's constants."""

import pytest

from src.config import apply_overrides
from src.errors import UserError


def namespace():
    return {"MODEL_ID": "m", "MAX_SAMPLES": 10, "LR": 1e-4, "USE_4BIT": True, "TARGET_MODULES": ["q_proj"],
            "ADAPTER_DIR": "", "lower": 1, "_PRIVATE": 2}


def test_overrides_are_case_insensitive_and_typed():
    ns = namespace()
    cfg = apply_overrides(ns, ["--model_id=a/b", "--MAX_SAMPLES=5", "--lr=3", "--use_4bit=False",
                               "--target_modules=['q_proj','v_proj']", "--adapter_dir=outputs/x"])
    assert ns["MODEL_ID"] == "a/b" and ns["MAX_SAMPLES"] == 5 and ns["LR"] == 3.0 and isinstance(ns["LR"], float)
    assert ns["USE_4BIT"] is False and ns["TARGET_MODULES"] == ["q_proj", "v_proj"] and ns["ADAPTER_DIR"] == "outputs/x"
    assert cfg == {"model_id": "a/b", "max_samples": 5, "lr": 3.0, "use_4bit": False,
                   "target_modules": ["q_proj", "v_proj"], "adapter_dir": "outputs/x"}


def test_comma_list_and_numeric_string():
    ns = namespace()
    apply_overrides(ns, ["--target_modules=q_proj,v_proj", "--model_id=123"])
    assert ns["TARGET_MODULES"] == ["q_proj", "v_proj"] and ns["MODEL_ID"] == "123"


def test_unknown_name_lists_valid_ones():
    with pytest.raises(UserError) as e:
        apply_overrides(namespace(), ["--max_sample=5"])
    assert "--max_sample" in str(e.value) and "--max_samples" in str(e.value) and "--model_id" in str(e.value)
    assert "--lower" not in str(e.value) and "_private" not in str(e.value).lower()


@pytest.mark.parametrize("arg", ["--max_samples=ten", "--max_samples=1.5", "--use_4bit=maybe", "--lr=[1]"])
def test_wrong_type_is_an_error(arg):
    with pytest.raises(UserError) as e:
        apply_overrides(namespace(), [arg])
    assert "expected" in str(e.value)


def test_positional_argument_is_an_error():
    with pytest.raises(UserError):
        apply_overrides(namespace(), ["max_samples=5"])
