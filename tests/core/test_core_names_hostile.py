"""Names and identities: the whole string is checked (no trailing newline slips through),
identities refuse control characters."""

from __future__ import annotations

import pytest

from celery_leader import Election
from celery_leader.backends.file import FileBackend
from celery_leader.backends.file import validate_name as file_name
from celery_leader.core import validate_identity, validate_name
from celery_leader.errors import ConfigurationError


@pytest.mark.parametrize("name", ["beat\n", "beat\r\n", "be\nat", "beat\x00", " beat", "beat/..", ""])
def test_names_are_matched_whole(name: str) -> None:
    with pytest.raises(ConfigurationError):
        validate_name(name)
    with pytest.raises(ConfigurationError):
        file_name(name)


def test_a_trailing_newline_creates_no_file(tmp_path) -> None:
    with pytest.raises(ConfigurationError):
        FileBackend(tmp_path).lock("beat\n")
    with pytest.raises(ConfigurationError):
        Election("beat\n", url=f"file://{tmp_path}")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "identity", ["host\n", "a\x7fb", "a\x85b", "a\x9bb", "a\u2028b", "a\u2029b", "a\u202eb", "a\ud800b", "a\x1b[2Jb"]
)
def test_identities_refuse_control_characters(identity: str) -> None:
    with pytest.raises(ConfigurationError, match="printable"):
        validate_identity(identity)


@pytest.mark.parametrize("identity", ["host-1-abc", "web 1 (blue)", "hôte-é", "主机-1"])
def test_printable_identities_are_fine(identity: str) -> None:
    assert validate_identity(identity) == identity
