import subprocess
import sys

import pytest

from retrain.errors import BusyError
from retrain.locks import cycle_lock, exclusive


def test_a_held_lock_refuses_a_second_holder_and_names_the_first(tmp_path):
    with (cycle_lock(tmp_path),
          pytest.raises(BusyError, match=r"a retraining cycle is already"),
          cycle_lock(tmp_path)):
        pass
    with cycle_lock(tmp_path):  # released on exit: free again
        pass


def test_a_lock_dies_with_its_process(tmp_path):
    path = tmp_path / "x.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\nfrom retrain.locks import exclusive\n"
         f"with exclusive({str(path)!r}, 'x'):\n    print('held', flush=True)\n"
         "    time.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with (pytest.raises(BusyError, match=rf"held by .*\"pid\": {holder.pid}"),
              exclusive(path, "x")):
            pass
    finally:
        holder.kill()  # a crash: no cleanup code runs in the holder
        holder.wait()
    with exclusive(path, "x"):
        pass
