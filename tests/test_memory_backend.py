import contextlib
import uuid

import pytest

from celery_leader.backends.memory import MemoryBackend
from celery_leader.testing import LockContract


class TestMemoryLock(LockContract):
    @pytest.fixture
    def backend(self):
        return MemoryBackend.from_url(f"memory://{uuid.uuid4().hex}")

    @pytest.fixture
    def backend_url(self, backend):
        return f"memory://{backend.namespace}"  # backends of one namespace share its locks

    @pytest.fixture
    def write_raw(self, backend):
        return lambda name, raw: backend.lock(name).write_raw(raw)

    @pytest.fixture
    def stalled_lock(self, backend):
        @contextlib.contextmanager
        def stalled(name):
            with backend.stalled():
                yield backend.lock(name)

        return stalled
