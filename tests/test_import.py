"""``import coiled_lab`` and ``%load_ext coiled_lab`` stay cheap: nothing heavy is imported
until it is used (benchmarks/import_time.py prints the time)."""

import subprocess
import sys

HEAVY = ("distributed", "dask", "pydantic", "boto3", "botocore", "cryptography", "tornado", "rich")

CHECK = """
import sys
import coiled_lab
{extra}
loaded = [m for m in {heavy!r} if m in sys.modules]
print(",".join(loaded))
"""


def loaded_after(extra: str = "") -> list[str]:
    out = subprocess.run([sys.executable, "-c", CHECK.format(extra=extra, heavy=HEAVY)],
                         capture_output=True, text=True, check=True).stdout.strip()
    return [m for m in out.split(",") if m]


def test_import_loads_nothing_heavy():
    assert loaded_after() == []


def test_load_ext_loads_nothing_heavy():
    extra = (
        "from IPython.core.interactiveshell import InteractiveShell\n"
        "shell = InteractiveShell.instance()\n"
        "shell.run_line_magic('load_ext', 'coiled_lab')\n"
        "assert 'coiled' in shell.magics_manager.magics['line']\n"
    )
    assert [m for m in loaded_after(extra) if m != "tornado"] == []  # IPython itself may bring tornado


def test_lazy_attributes_resolve():
    import coiled_lab

    assert coiled_lab.Cluster.__module__ == "coiled_lab.cluster"
    assert coiled_lab.ClusterSpec.__module__ == "coiled_lab.spec"
