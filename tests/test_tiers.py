"""The tier list names real tests, and the README's command keeps every script's end-to-end run."""

import re

from helpers import REPO
from tiers import ALL, FULL_TIER


def test_every_name_in_the_full_tier_is_a_test_of_its_module():
    for module, tests in FULL_TIER.items():
        source = (REPO / "tests" / module).read_text(encoding="utf-8")
        for name in () if tests == ALL else tests:
            assert re.search(rf"^def {name.split('[')[0]}\(", source, re.M), (module, name)
        assert tests == ALL or tests, module


def test_the_readme_tier_keeps_the_quick_start_merge_and_demo_modules():
    for module in ("test_readme.py", "test_pipeline.py", "test_merge.py", "test_demo.py", "test_scripts.py"):
        assert FULL_TIER.get(module) != ALL, module
