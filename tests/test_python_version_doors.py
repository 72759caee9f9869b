"""``python_version`` through the front doors that parse text: the CLI's and the magic's
option (``--python-version``, ``--python``) and a ``%%coiled`` cell's YAML."""

from __future__ import annotations

import pytest

from coiled_lab.options import build_parser, describe_error, spec_fields
from coiled_lab.spec import SUPPORTED_PYTHONS, ClusterSpecError, parse_spec


@pytest.mark.parametrize("cli", [True, False])
@pytest.mark.parametrize("flag", ["--python-version", "--python"])
def test_the_option_reaches_the_spec(cli, flag):
    ns = build_parser("x", cli=cli).parse_args(["start", "--backend", "aws", flag, "3.12"])
    assert spec_fields(ns) == {"backend": "aws", "python_version": "3.12"}
    assert parse_spec(spec_fields(ns)).python_version == "3.12"


def test_a_refusal_names_the_option():
    ns = build_parser("x", cli=True).parse_args(["start", "--backend", "aws", "--python-version", "3.9"])
    with pytest.raises(ClusterSpecError) as info:
        parse_spec(spec_fields(ns))
    assert describe_error(info.value) == (f"--python-version: '3.9' is not allowed: Python 3.9 is not supported; "
                                          f"supported: {', '.join(SUPPORTED_PYTHONS)}")


def test_a_coiled_cell_reads_yaml_numbers_unless_they_lost_a_digit():
    from IPython.core.error import UsageError

    from coiled_lab.magic import coiled

    with pytest.raises(UsageError, match=r"^--python-version: 3\.1 is not allowed: .*3\.10 reads as 3\.1"):
        coiled("", "backend: aws\npython_version: 3.10\n")
    with pytest.raises(UsageError, match=r"^--python-version: '3\.9' is not allowed"):
        coiled("", "backend: aws\npython_version: '3.9'\n")
    import yaml

    assert parse_spec(yaml.safe_load("backend: aws\npython_version: 3.12\n")).python_version == "3.12"
