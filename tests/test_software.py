"""``software``: a requirements file read and checked before any cloud call."""

from __future__ import annotations

import os

import pytest

from coiled_lab.software import MAX_BYTES, requirements
from coiled_lab.spec import ClusterSpecError, parse_spec


def write(tmp_path, text: str, name: str = "requirements.txt"):
    path = tmp_path / name
    path.write_text(text)
    return path


def refused(software, cloud: str = "aws") -> ClusterSpecError:
    with pytest.raises(ClusterSpecError) as info:
        requirements(str(software), cloud)
    assert info.value.field == "software" and info.value.message.startswith("software: ")
    return info.value


def test_nothing_given_is_nothing_to_install():
    assert requirements(None, "aws") is None and requirements("", "gcp") is None


def test_a_good_file_is_returned_as_written(tmp_path):
    text = (
        "# pinned for the cluster\n"
        "\n"
        "pandas==2.2.3  # the frames\n"
        "dask[dataframe]>=2024.8\n"
        'tomli>=2 ; python_version < "3.11"\n'
        "mylib @ https://example.org/wheels/mylib-1.0-py3-none-any.whl#sha256=00ff\n"
        "numpy==2.1.0 \\\n"
        "    --hash=sha256:0123456789abcdef \\\n"
        "    --hash=sha256:fedcba9876543210\n"
    )
    assert requirements(str(write(tmp_path, text)), "aws") == text


def test_a_syntax_error_names_the_file_the_line_number_and_the_line(tmp_path):
    path = write(tmp_path, "pandas==2.2.3\n\n# fine so far\nnumpy>=>2\nscipy\n")
    err = refused(path)
    assert err.message.startswith(f"software: {path}, line 4: 'numpy>=>2' is not allowed: not a PEP 508 requirement")


def test_a_continued_line_is_reported_at_its_first_line(tmp_path):
    path = write(tmp_path, "pandas\nnumpy==2.1.0 \\\n    --hash=sha256:00 --no-deps\n")
    err = refused(path)
    assert f"{path}, line 2: " in err.message and "--no-deps is not supported" in err.message


def test_a_missing_file_says_where_it_was_looked_for(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = refused("nowhere/requirements.txt")
    assert err.message == (f"software: 'nowhere/requirements.txt' is not allowed: no such file: "
                           f"{tmp_path}/nowhere/requirements.txt (a relative path is read from the Jupyter "
                           "server's working directory)")


@pytest.mark.parametrize("image", ["ghcr.io/org/image:1", "python:3.11-slim", "requirements.in", "conda.yaml"])
def test_a_container_image_or_other_file_is_refused_with_what_is_allowed(image):
    err = refused(image, "gcp")
    assert err.message == (f"software: {image!r} is not allowed: the gcp backend takes a requirements file: the "
                           "path of a .txt file of PEP 508 requirements on the Jupyter server; container images "
                           "are not supported on it")


@pytest.mark.parametrize("line, why", [
    ("-e ./mylib", "editable install"),
    ("--editable=git+https://github.com/org/lib#egg=lib", "editable install"),
    ("-r base.txt", "only this file is sent"),
    ("-cconstraints.txt", "only this file is sent"),
    ("--index-url https://pypi.example.org/simple", "PyPI only"),
    ("-i https://user:secret@pypi.example.org/simple", "PyPI only"),
    ("--extra-index-url https://download.pytorch.org/whl/cpu", "PyPI only"),
    ("--find-links /srv/wheels", "PyPI only"),
    ("--pre", "--pre is not supported"),
    ("./mylib", "a local path"),
    ("/srv/wheels/mylib-1.0-py3-none-any.whl", "a local path"),
    ("mylib-1.0-py3-none-any.whl", "a local path"),
    ("~/src/mylib", "a local path"),
    ("mylib @ file:///home/me/src/mylib", "file: URL"),
    ("https://example.org/mylib.tar.gz", "not a PEP 508 requirement: a URL needs the package's name"),
    ("file:///home/me/mylib.whl", "file: URL"),
    ("pandas>=2 --no-deps", "--no-deps is not supported"),
])
def test_what_a_vm_cannot_install_is_refused_with_the_reason(tmp_path, line, why):
    path = write(tmp_path, f"pandas\n{line}\n")
    err = refused(path)
    assert f"{path}, line 2: {line!r} is not allowed: " in err.message and why in err.message


def test_size_encoding_and_kind_of_path(tmp_path):
    big = write(tmp_path, "pandas\n" * (MAX_BYTES // 7 + 1), "big.txt")
    assert f"at most {MAX_BYTES}" in refused(big).message
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00pandas")
    assert "not UTF-8 text" in refused(binary).message
    folder = tmp_path / "folder.txt"
    folder.mkdir()
    assert "is not a file" in refused(folder).message


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_file_is_refused(tmp_path):
    path = write(tmp_path, "pandas\n")
    path.chmod(0)
    assert "cannot read" in refused(path).message


def test_both_cloud_backends_check_it_without_a_cloud_call(tmp_path):
    """check_spec of AWS and GCP reads the file; neither backend's client is ever made."""
    from coiled_lab.backends.aws import AWSBackend
    from coiled_lab.backends.gcp import GCPBackend

    bad = write(tmp_path, "pandas\n-e .\n")
    good = write(tmp_path, "pandas\n", "good.txt")
    for backend in (AWSBackend(session=object()), GCPBackend(credentials=object())):
        spec = parse_spec(backend=backend.name, software=str(bad), package_sync=False)
        with pytest.raises(ClusterSpecError) as info:
            backend.check_spec(spec)
        assert info.value.field == "software" and "line 2" in info.value.message
        backend.check_spec(parse_spec(backend=backend.name, software=str(good), package_sync=False))


def test_both_cloud_backends_refuse_an_interpreter_the_vms_cannot_run(monkeypatch):
    from coiled_lab.backends.aws import AWSBackend
    from coiled_lab.backends.gcp import GCPBackend

    monkeypatch.setattr("coiled_lab.spec.running_python", lambda: "3.9")
    for backend in (AWSBackend(session=object()), GCPBackend(credentials=object())):
        with pytest.raises(ClusterSpecError) as info:
            backend.check_spec(parse_spec(backend=backend.name))
        assert info.value.field == "python_version"
        backend.check_spec(parse_spec(backend=backend.name, python_version="3.12"))


def test_what_the_vms_are_given_is_what_was_checked(tmp_path):
    """config.json's requirements and python_version come from the same checks as check_spec:
    the text as requirements() reads it (a byte-order mark dropped) and cluster_python()."""
    from coiled_lab.backends import bootconfig
    from coiled_lab.spec import cluster_python
    from coiled_lab.tls import TLSMaterial

    tls = TLSMaterial.generate("c1")
    path = tmp_path / "requirements.txt"
    path.write_text("\ufeffpandas==2.2.3\n", encoding="utf-8")
    for cloud in ("aws", "gcp"):
        spec = parse_spec(backend=cloud, software=str(path), package_sync=False)
        config = bootconfig.bootstrap_config(cloud, "c1", spec, tls, "worker")
        assert config["requirements"] == requirements(str(path), cloud) == "pandas==2.2.3\n"
        assert config["python_version"] == cluster_python(spec)
        pinned = parse_spec(backend=cloud, python_version="3.13")
        assert bootconfig.bootstrap_config(cloud, "c1", pinned, tls, "worker")["python_version"] == "3.13"
    bad = write(tmp_path, "pandas\n-e .\n", "bad.txt")
    with pytest.raises(ClusterSpecError, match="line 2"):
        bootconfig.bootstrap_config("aws", "c1", parse_spec(backend="aws", software=str(bad), package_sync=False),
                                    tls, "worker")
